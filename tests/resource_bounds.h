// Bounds on time and memory in the tests are the release build's. Under AddressSanitizer
// (scripts/sanitize.sh) everything runs several times slower and the shadow memory and quarantine
// count in a process's resident size: time bounds are multiplied by kSlowdown there, and peak-RSS
// bounds are not checked (ASan checks memory its own way). Torch-free.
#pragma once

namespace test {

#ifdef __SANITIZE_ADDRESS__
constexpr bool kSanitized = true;
constexpr int kSlowdown = 10;
#else
constexpr bool kSanitized = false;
constexpr int kSlowdown = 1;
#endif

}  // namespace test
