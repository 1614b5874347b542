// The hooklens::capture(Tensor x, str name) -> Tensor operator, for TorchScript model authors who
// want to name their own hook points. libhooklens_ops.so registers it; Python loads the same
// library with torch.ops.load_library(...) before scripting, calls torch.ops.hooklens.capture(x, "name")
// wherever a tensor should be observable, and outside hooklens the op returns x unchanged. Inside
// hooklens, the thread running a forward installs a CaptureHandler and every call goes through it
// (the handler fires the hook point and may return a replacement). The custom adapter also inserts
// this op itself where it instruments a graph, so automatic and explicit hook points share one path.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace hooklens::ops {

// Schema name of the operator, as it appears in TorchScript graphs.
inline constexpr const char* kCaptureOp = "hooklens::capture";

class CaptureHandler {
 public:
  virtual ~CaptureHandler() = default;
  // Returns `x` or the tensor that replaces it in the rest of the forward pass.
  virtual at::Tensor capture(const at::Tensor& x, const std::string& name) = 0;
};

// Routes this thread's capture calls to `handler` while the scope lives (scopes nest).
class ScopedCaptureHandler {
 public:
  explicit ScopedCaptureHandler(CaptureHandler& handler);
  ~ScopedCaptureHandler();
  ScopedCaptureHandler(const ScopedCaptureHandler&) = delete;
  ScopedCaptureHandler& operator=(const ScopedCaptureHandler&) = delete;

 private:
  CaptureHandler* previous_;
};

}  // namespace hooklens::ops
