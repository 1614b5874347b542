// Process-wide settings a front end (CLI, viewer, example) makes once at start-up.
#pragma once

namespace hooklens {

// Sets libtorch's compute threads (0 = one per core; throws UsageError when negative) and tunes
// glibc's allocator for tensor work: by default glibc hands every freed multi-megabyte buffer
// (attention patterns, logits) back to the kernel and faults it in again on the next forward pass;
// a 128-step masked-diffusion run spent 6x its compute time doing that (43 s instead of 6 s).
void init_runtime(int threads);

}  // namespace hooklens
