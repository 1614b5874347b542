// The message a refusal carries, for tests that compare it exactly (no libtorch here; test_util.h
// includes it).
#pragma once
#include <hooklens/error.h>

#include <functional>
#include <string>

namespace test {

// The message of the `Refusal` (hooklens::Error or UsageError) `f` throws, or `none`.
template <class Refusal>
std::string message_of(const std::function<void()>& f, const char* none) {
  try {
    f();
  } catch (const Refusal& e) {
    return e.what();
  }
  return none;
}

// The UsageError's message when `f` throws one, or "(no usage error)".
inline std::string usage_error_of(const std::function<void()>& f) {
  return message_of<hooklens::UsageError>(f, "(no usage error)");
}

// The message of the hooklens::Error `f` throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) { return message_of<hooklens::Error>(f, "(no error)"); }

}  // namespace test
