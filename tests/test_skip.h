// Skipping, which Catch2 v2 lacks, reported to ctest (catch_main.cpp; SKIP_RETURN_CODE in
// tests/CMakeLists.txt). Torch-free: the text tests use it too.
#pragma once
#include <filesystem>
#include <string>

namespace test {

// The exit status of a test program that skipped something and failed nothing.
constexpr int kSkipExitCode = 77;

// The shared reference fixtures: $HOOKLENS_FIXTURES when set, else the folder configured as
// HOOKLENS_FIXTURES_DIR (../shared/fixtures beside the checkout). Cases that read them are tagged
// [fixtures]; when the folder is missing those cases are not run and the program reports the skip.
std::filesystem::path fixtures();

// Skips what is left of the running case (the caller returns right after) because of `reason`,
// which names what is missing and how to get it. The reason shows as a warning in the case and
// again when the program ends, and the program exits with kSkipExitCode if nothing failed.
void skip(const std::string& reason);

}  // namespace test
