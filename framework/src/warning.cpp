// hooklens::warn: one place where warnings go, so front ends can redirect them.
#include "hooklens/error.h"

#include <iostream>
#include <mutex>

namespace hooklens {
namespace {

std::mutex& warning_mutex() {
  static std::mutex m;
  return m;
}
std::function<void(const std::string&)>& warning_handler() {
  static std::function<void(const std::string&)> handler;
  return handler;
}

}  // namespace

void warn(const std::string& message) {
  std::lock_guard<std::mutex> lock(warning_mutex());
  if (warning_handler()) return warning_handler()(message);
  std::cerr << "hooklens: warning: " << message << "\n" << std::flush;
}

void set_warning_handler(std::function<void(const std::string&)> handler) {
  std::lock_guard<std::mutex> lock(warning_mutex());
  warning_handler() = std::move(handler);
}

}  // namespace hooklens
