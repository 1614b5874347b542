// The message a refusal carries, for tests that compare it exactly (no libtorch here).
#pragma once
#include <hooklens/error.h>

#include <functional>
#include <string>

namespace test {

// The UsageError's message when `f` throws one, or "(no usage error)".
inline std::string usage_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const hooklens::UsageError& e) {
    return e.what();
  }
  return "(no usage error)";
}

}  // namespace test
