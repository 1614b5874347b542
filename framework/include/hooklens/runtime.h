// Process-wide settings a front end (CLI, viewer, example) makes once at start-up.
#pragma once

namespace hooklens {

// Sets libtorch's compute threads (0 = one per core; throws UsageError when negative) and tunes
// glibc's allocator for tensor work: by default glibc hands every freed multi-megabyte buffer
// (attention patterns, logits) back to the kernel and faults it in again on the next forward pass;
// a 128-step masked-diffusion run spent 6x its compute time doing that (43 s instead of 6 s).
void init_runtime(int threads);

// Hands the heap's free pages back to the kernel (glibc malloc_trim) once more than 256 MiB of the
// heap is free; cheap otherwise. Long-lived small allocations made between forward passes (e.g.
// analyzers' per-prompt state) fragment the heap, so with the tuning above a long run would keep
// every pass's freed tensor memory resident. Front ends call this after each forward pass.
void release_free_memory();

// True when libhooklens was compiled with optimisation. An -O0 build loads a model 3x slower
// (8.7 s instead of 2.6 s measured: JSON lexing, hash maps, the tokenizer) and slows the
// framework's own per-step work; the test suite fails on one unless it is a Debug build.
bool built_with_optimisation();

}  // namespace hooklens
