// Capture sinks: where captured tensors go (the run-directory writer, the live viewer's queue).
#pragma once
#include <hooklens/hooks.h>

#include <nlohmann/json_fwd.hpp>

#include <filesystem>
#include <string>

namespace hooklens {

class CaptureSink {
 public:
  virtual ~CaptureSink() = default;
  // Options are sink-specific (run writer: "out", "dtype": "F32"|"F16", "queue_bytes", "shard_bytes").
  virtual void open(const nlohmann::json& options) = 0;
  // Called from the model's thread. May block while the sink's bounded queue is full, so memory
  // stays bounded whatever the length of the run. The sink must not modify `tensor`.
  virtual void capture(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor) = 0;
  // Every capture of `prompt` has been given. A sink that writes a run over several processes
  // records the prompt as done once they are all on disk (what --resume keeps).
  virtual void end_prompt(int prompt) { (void)prompt; }
  // Ends the run successfully. `manifest` holds "model", "prompts", "generation" and any other
  // top-level fields; the sink adds its own ("captures", "format", "version", "complete").
  virtual void finish(const nlohmann::json& manifest) = 0;
  // Ends the run after a failure: whatever was written stays, and is never marked complete.
  virtual void abort(const std::string& reason) noexcept = 0;
  // Where the run went (for messages).
  virtual std::string location() const = 0;
};

}  // namespace hooklens
