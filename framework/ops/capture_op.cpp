// Registration of hooklens::capture; see capture_op.h.
#include "capture_op.h"

#include <torch/library.h>

namespace hooklens::ops {
namespace {

thread_local CaptureHandler* current_handler = nullptr;

at::Tensor capture(const at::Tensor& x, c10::string_view name) {
  if (!current_handler) return x;
  return current_handler->capture(x, std::string(name));
}

}  // namespace

ScopedCaptureHandler::ScopedCaptureHandler(CaptureHandler& handler) : previous_(current_handler) {
  current_handler = &handler;
}
ScopedCaptureHandler::~ScopedCaptureHandler() { current_handler = previous_; }

}  // namespace hooklens::ops

// CONSERVATIVE: the op has an effect the JIT cannot see (hooks), so it must be neither removed as
// dead code nor reordered nor merged with another call. No dispatch key: one kernel serves every
// backend and autograd sees through it (x passes straight through outside hooklens).
TORCH_LIBRARY(hooklens, m) {
  m.def(torch::schema("capture(Tensor x, str name) -> Tensor", c10::AliasAnalysisKind::CONSERVATIVE),
        &hooklens::ops::capture);
}
