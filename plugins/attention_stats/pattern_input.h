// What the attention analyzers (attention_stats, head_detectors) share to read hook_pattern
// captures: the run's model, which model head each captured head is, and JSON-finite reports.
#pragma once
#include <hooklens/error.h>
#include <hooklens/hooks.h>
#include <hooklens/model.h>

#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace hooklens::attention_input {

struct PatternRun {
  ModelInfo model;
  std::vector<int> captured_heads;  // the run's "capture"."heads" (head slicing); empty = all heads

  // `who` names the analyzer in error messages.
  static PatternRun of(const nlohmann::json& run, const std::string& who) {
    if (!run.is_object() || !run.contains("model"))
      throw Error(fmt::format("{}: the run has no \"model\" (begin() needs the run's description)", who));
    PatternRun r;
    r.model = ModelInfo::from_json(run.at("model"));
    const auto capture = run.find("capture");
    if (capture != run.end() && capture->is_object() && capture->contains("heads") && (*capture)["heads"].is_array())
      r.captured_heads = (*capture)["heads"].get<std::vector<int>>();
    return r;
  }

  // The model head of each of the `count` heads of a capture. A capture with every head maps to
  // itself; a head-sliced one needs the run's capture.heads, else the heads cannot be named.
  std::vector<int> heads_of(std::int64_t count, const std::string& who) const {
    std::vector<int> heads;
    if (count == model.n_heads) {
      for (int h = 0; h < model.n_heads; ++h) heads.push_back(h);
      return heads;
    }
    if (std::int64_t(captured_heads.size()) != count)
      throw Error(fmt::format("{}: a pattern of {} heads from a model of {} heads, and the run does not say which "
                              "heads were captured",
                              who, count, model.n_heads));
    for (int h : captured_heads)
      if (h < 0 || h >= model.n_heads) throw Error(fmt::format("{}: captured head {} is not a head of the model", who, h));
    return captured_heads;
  }

  // Checks that `tensor` is a pattern [batch, head, query, key] (or [head, query, key]) of a layer
  // of the model, and returns it as [batch, head, query, key].
  at::Tensor check(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor,
                   const std::string& who) const {
    if (tensor.dim() != 3 && tensor.dim() != 4)
      throw Error(fmt::format("{}: {} is not an attention pattern [batch, head, query, key] ({} dims)", who, hook,
                              tensor.dim()));
    if (ctx.layer < 0 || ctx.layer >= model.n_layers)
      throw Error(fmt::format("{}: {} comes from layer {}, not a layer of the model", who, hook, ctx.layer));
    return tensor.dim() == 3 ? tensor.unsqueeze(0) : tensor;
  }
};

// Replaces every non-finite number of a report by null (reports are JSON: NaN is not a value).
inline void null_non_finite(nlohmann::json& j) {
  if (j.is_number_float() && !std::isfinite(j.get<double>())) j = nullptr;
  else if (j.is_structured())
    for (auto& item : j) null_non_finite(item);
}

}  // namespace hooklens::attention_input
