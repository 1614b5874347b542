#include <hooklens/analyzer.h>
#include <hooklens/error.h>
#include <hooklens/json_read.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace hooklens {

nlohmann::json Analyzer::save_state() const {
  throw Error("this analyzer does not merge its state across processes (merges_state() is false)");
}

void Analyzer::merge_state(const nlohmann::json& state) {
  (void)state;
  throw Error("this analyzer does not merge its state across processes (merges_state() is false)");
}

void read_state(const std::string& who, const std::function<void()>& read) {
  try {
    read();
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: cannot merge another rank's state: {}", who, json_error_text(e)));
  } catch (const Error& e) {
    throw Error(fmt::format("{}: cannot merge another rank's state: {}", who, e.what()));
  }
}

int state_index(const nlohmann::json& v, std::int64_t end, const char* what) {
  if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() >= end)
    throw Error(fmt::format("{} {} is not in [0, {})", what, brief_json(v), end));
  return int(v.get<std::int64_t>());
}

std::int64_t state_count(const nlohmann::json& v, const char* what) {
  if (!v.is_number_integer() || v.get<std::int64_t>() < 0)
    throw Error(fmt::format("{} {} is not a count", what, brief_json(v)));
  return v.get<std::int64_t>();
}

double state_number(const nlohmann::json& v, const char* what) {
  if (v.is_null()) return std::numeric_limits<double>::quiet_NaN();
  if (!v.is_number()) throw Error(fmt::format("{} {} is not a number", what, brief_json(v)));
  return v.get<double>();
}

std::vector<double> state_numbers(const nlohmann::json& v, std::size_t size, const char* what) {
  if (!v.is_array() || v.size() != size)
    throw Error(fmt::format("{} should be an array of {} numbers, got {}", what, size, brief_json(v)));
  std::vector<double> out;
  out.reserve(size);
  for (const nlohmann::json& x : v) out.push_back(state_number(x, what));
  return out;
}

const nlohmann::json& state_array(const nlohmann::json& v, const char* what) {
  if (!v.is_array()) throw Error(fmt::format("{} should be an array, got {}", what, brief_json(v)));
  return v;
}

PatternRows PatternRows::of(const at::Tensor& pattern, const CaptureContext& ctx, const ModelInfo& model) {
  if (pattern.dim() < 2) throw Error(fmt::format("an attention pattern needs [query, key] dims, got {}", pattern.dim()));
  PatternRows p;
  p.rows = pattern.size(-2);
  p.cols = pattern.size(-1);
  p.query_offset = ctx.query_offset;
  p.key_offset = ctx.key_offset;
  if (ctx.layer >= 0 && std::size_t(ctx.layer) < model.layer_attention.size()) p.kind = model.layer_attention[ctx.layer];
  p.window = model.window_size;
  return p;
}

std::pair<std::int64_t, std::int64_t> PatternRows::visible(std::int64_t r) const {
  const std::int64_t q = query_position(r);
  std::int64_t first = 0, last = key_offset + cols;  // absolute, [first, last)
  if (kind != AttentionKind::bidirectional) last = std::min(last, q + 1);
  if (kind == AttentionKind::local) first = q - window + 1;
  first = std::max(first, key_offset) - key_offset;
  last = last - key_offset;
  if (last <= first) return {0, 0};
  return {first, last};
}

PatternRun PatternRun::of(const nlohmann::json& run, const std::string& who) {
  if (!run.is_object() || !run.contains("model"))
    throw Error(fmt::format("{}: the run has no \"model\" (begin() needs the run's description)", who));
  PatternRun r;
  r.model = ModelInfo::from_json(run.at("model"));
  const auto capture = run.find("capture");
  if (capture != run.end() && capture->is_object() && capture->contains("heads") && (*capture)["heads"].is_array())
    r.captured_heads = (*capture)["heads"].get<std::vector<int>>();
  return r;
}

std::vector<int> PatternRun::heads_of(std::int64_t count, const std::string& who) const {
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

at::Tensor PatternRun::check(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor,
                             const std::string& who) const {
  if (tensor.dim() != 3 && tensor.dim() != 4)
    throw Error(fmt::format("{}: {} is not an attention pattern [batch, head, query, key] ({} dims)", who, hook,
                            tensor.dim()));
  if (ctx.layer < 0 || ctx.layer >= model.n_layers)
    throw Error(fmt::format("{}: {} comes from layer {}, not a layer of the model", who, hook, ctx.layer));
  return tensor.dim() == 3 ? tensor.unsqueeze(0) : tensor;
}

nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

nlohmann::json finite_or_null(const std::vector<double>& values) {
  nlohmann::json out = nlohmann::json::array();
  for (double v : values) out.push_back(finite_or_null(v));
  return out;
}

void null_non_finite(nlohmann::json& report) {
  if (report.is_number_float() && !std::isfinite(report.get<double>())) report = nullptr;
  else if (report.is_structured())
    for (auto& item : report) null_non_finite(item);
}

}  // namespace hooklens
