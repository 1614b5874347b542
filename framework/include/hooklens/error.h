// Errors every front end turns into one line "hooklens: error: ..." and an exit code.
#pragma once
#include <functional>
#include <stdexcept>
#include <string>

namespace hooklens {

// Something went wrong with the model, a file, or the run: exit code 1.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The user asked for something malformed (bad option, unknown hook, bad prompt ids): exit code 2.
struct UsageError : Error {
  using Error::Error;
};

// Something a user should know that does not stop the work, e.g. a config value the forward pass
// does not use. Goes to stderr as one line "hooklens: warning: ..." unless a front end (the viewer,
// a test) installs its own handler; set_warning_handler({}) restores stderr. Thread-safe.
void warn(const std::string& message);
void set_warning_handler(std::function<void(const std::string&)> handler);

}  // namespace hooklens
