#include <hooklens/error.h>
#include <hooklens/runtime.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <thread>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace hooklens {

void init_runtime(int threads) {
  if (threads < 0) throw UsageError("--threads must be 0 (one per core) or positive");
  at::set_num_threads(threads > 0 ? threads : int(std::max(1u, std::thread::hardware_concurrency())));
#ifdef __GLIBC__
  // Keep freed buffers up to 1 GiB in the heap instead of returning them to the kernel, and serve
  // allocations below 256 MiB from the heap (fixing the thresholds also stops glibc's dynamic
  // adjustment, which otherwise oscillates between mmap and heap for tensors of a few MiB).
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

bool built_with_optimisation() {
#ifdef __OPTIMIZE__
  return true;
#else
  return false;
#endif
}

void release_free_memory() {
#ifdef __GLIBC__
  constexpr std::size_t kMostFree = std::size_t(256) << 20;
  if (mallinfo2().fordblks > kMostFree) malloc_trim(0);
#endif
}

}  // namespace hooklens
