// Errors every front end turns into one line "hooklens: error: ..." and an exit code.
#pragma once
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

}  // namespace hooklens
