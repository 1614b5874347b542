// TorchScript models: any torch.jit.script/trace archive whose forward maps token ids to logits.
//
// Attention patterns are captured without changing the model: forward's graph is copied and
// inlined, the `aten::softmax` nodes whose result feeds an `aten::matmul`/`aten::bmm` (directly or
// through dropout and shape-only ops) are taken as attention patterns and added to the graph's
// outputs, and that graph is run as a new function with the module as `self`. Pattern i is named
// `blocks.{i}.attn.hook_pattern`, i being the ModuleList index in the node's inlined call stack
// (the first integer module instance name: scripting records `self.blocks[3]`, `self.h[3]` or
// `self.layers[3]` as the instance "3"), or the pattern's graph order when no such index exists or
// two patterns share one. Patterns are listed in graph order.
//
// Limits of this first step:
//  - only softmax nodes at the top level of the inlined graph are seen; those inside if/loop
//    blocks cannot be added as graph outputs and are skipped;
//  - hooks may read patterns but not replace them (a replacement throws Error); hook_logits may
//    be replaced;
//  - no KV cache (new_state() is null: generation recomputes every position), n_ctx is unknown
//    (set to 1 << 20: the model itself refuses what it cannot take), and n_heads and vocab_size
//    are 0 until the first forward reveals them.
#include "torchscript.h"

#include <hooklens/error.h>

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/script.h>

#include <algorithm>
#include <cctype>
#include <set>

namespace hooklens {
namespace {

namespace fs = std::filesystem;
using torch::jit::Node;
using torch::jit::Value;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// Ops a pattern may pass through on its way to the matmul without ceasing to be the pattern.
bool passes_pattern_through(c10::Symbol kind) {
  static const std::set<std::string> kinds = {"aten::dropout", "aten::feature_dropout", "aten::alpha_dropout",
                                              "aten::contiguous", "aten::view", "aten::reshape",
                                              "aten::to", "aten::clone", "aten::detach"};
  return kinds.count(kind.toQualString()) > 0;
}

// True if `value` reaches the first operand of aten::matmul/aten::bmm (pattern @ values).
bool feeds_matmul(const Value* value, int depth = 0) {
  if (depth > 8) return false;
  for (const auto& use : value->uses()) {
    const c10::Symbol kind = use.user->kind();
    if ((kind == c10::aten::matmul || kind == c10::aten::bmm) && use.offset == 0) return true;
    if (passes_pattern_through(kind) && use.offset == 0 && feeds_matmul(use.user->output(0), depth + 1))
      return true;
  }
  return false;
}

// The first all-digit component of a dotted module instance name ("3", "blocks.3"), or -1.
int integer_component(const std::string& name) {
  const auto digit = [](unsigned char c) { return std::isdigit(c) != 0; };
  for (std::size_t begin = 0; begin <= name.size();) {
    const std::size_t end = std::min(name.find('.', begin), name.size());
    const std::string part = name.substr(begin, end - begin);
    if (!part.empty() && part.size() < 9 && std::all_of(part.begin(), part.end(), digit)) return std::stoi(part);
    begin = end + 1;
  }
  return -1;
}

// The ModuleList index in the node's inlined call stack (instances "3" -> "attn"), or -1.
int layer_of(Node* node) {
  auto stack = node->callstack();
  if (!stack) return -1;
  for (const auto& entry : (*stack)->vec()) {
    const auto& module = std::get<torch::jit::kModuleInstanceInfo>(entry);
    if (!module) continue;
    const int layer = integer_component(module->instance_name());
    if (layer >= 0) return layer;
  }
  return -1;
}

struct Pattern {
  std::string name;
  int layer = 0;
};

class TorchScriptModel final : public Model {
 public:
  TorchScriptModel(const fs::path& file, torch::jit::Module module, std::unique_ptr<Tokenizer> tokenizer)
      : file_(file.string()), module_(std::move(module)), tokenizer_(std::move(tokenizer)) {
    module_.eval();
    build_function();
    info_.adapter = "custom";
    info_.architecture = "torchscript";
    info_.path = file_;
    info_.n_layers = int(patterns_.size());
    info_.n_ctx = std::int64_t(1) << 20;
    info_.layer_attention.assign(patterns_.size(), AttentionKind::causal);  // assumed: not inspected
  }

  const ModelInfo& info() const override { return info_; }
  const Tokenizer* tokenizer() const override { return tokenizer_.get(); }
  std::unique_ptr<ModelState> new_state() const override { return nullptr; }

  std::vector<HookPointInfo> hook_points() const override {
    std::vector<HookPointInfo> points;
    for (const Pattern& p : patterns_) points.push_back({p.name, {"batch", "head", "query", "key"}, p.layer});
    points.push_back({"hook_logits", {"batch", "pos", "vocab"}, -1});
    return points;
  }

  at::Tensor forward(const at::Tensor& ids, const HookSet& hooks, CaptureContext ctx, ModelState* state,
                     bool last_logits_only) override {
    if (state) throw UsageError(fmt::format("{}: TorchScript models keep no KV cache; pass no state", file_));
    check_ids(ids);
    ctx.query_offset = 0;
    ctx.key_offset = 0;
    std::vector<c10::IValue> outputs = run(ids);
    at::Tensor logits = logits_of(outputs[0], ids);
    for (std::size_t i = 0; i < patterns_.size(); ++i) fire_pattern(patterns_[i], outputs[i + 1], hooks, ctx);
    ctx.layer = -1;
    hooks.fire("hook_logits", ctx, logits);
    return last_logits_only ? logits.slice(1, -1) : logits;
  }

 private:
  // Copies forward's graph, inlines it, and makes it return (original output, patterns...).
  void build_function() {
    auto graph = module_.get_method("forward").graph()->copy();
    torch::jit::Inline(*graph);
    std::vector<Node*> found;
    for (Node* node : graph->nodes())  // top level only: see the file comment
      if (node->kind() == c10::aten::softmax && feeds_matmul(node->output())) found.push_back(node);
    take_defaults();
    if (graph->outputs().size() != 1)
      throw Error(fmt::format("{}: forward has {} outputs, expected one", file_, graph->outputs().size()));
    name_patterns(found);
    std::vector<Value*> outputs = {graph->outputs()[0]};
    for (Node* node : found) outputs.push_back(node->output());
    Node* tuple = graph->appendNode(graph->createTuple(outputs));
    graph->eraseOutput(0);
    graph->registerOutput(tuple->output());
    function_ = std::make_unique<torch::jit::GraphFunction>("hooklens_forward_with_patterns", graph, nullptr);
  }

  // forward(self, ids, ...): the arguments after the ids must have defaults (e.g. nanoGPT's targets=None).
  void take_defaults() {
    const auto& args = module_.get_method("forward").function().getSchema().arguments();
    if (args.size() < 2) throw Error(fmt::format("{}: forward takes no token ids", file_));
    for (std::size_t i = 2; i < args.size(); ++i) {
      if (!args[i].default_value())
        throw Error(fmt::format("{}: forward's argument '{}' has no default; only the token ids are passed", file_,
                                args[i].name()));
      defaults_.push_back(*args[i].default_value());
    }
  }

  // Names by call-stack layer index, or by graph order if any index is missing or repeated.
  void name_patterns(const std::vector<Node*>& nodes) {
    std::vector<int> layers;
    std::set<int> distinct;
    for (Node* node : nodes) {
      layers.push_back(layer_of(node));
      distinct.insert(layers.back());
    }
    const bool use_order = distinct.count(-1) > 0 || distinct.size() != layers.size();
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      const int layer = use_order ? int(i) : layers[i];
      patterns_.push_back({fmt::format("blocks.{}.attn.hook_pattern", layer), layer});
    }
  }

  void check_ids(const at::Tensor& ids) const {
    if (ids.dim() != 2 || ids.scalar_type() != at::kLong)
      throw UsageError(fmt::format("{}: token ids must be int64 [batch, positions]", file_));
    if (ids.numel() == 0) throw UsageError(fmt::format("{}: no token ids given", file_));
    const std::int64_t lo = ids.min().item<std::int64_t>(), hi = ids.max().item<std::int64_t>();
    if (lo < 0 || (info_.vocab_size > 0 && hi >= info_.vocab_size))
      throw UsageError(fmt::format("{}: token id {} is outside the vocabulary of {}", file_, lo < 0 ? lo : hi,
                                   info_.vocab_size));
  }

  // Runs the function: element 0 is forward's own output, then one pattern per hook point.
  std::vector<c10::IValue> run(const at::Tensor& ids) {
    torch::NoGradGuard no_grad;
    torch::jit::Stack stack = {module_._ivalue(), ids};
    stack.insert(stack.end(), defaults_.begin(), defaults_.end());
    try {
      function_->run(stack);
    } catch (const std::exception& e) {
      throw Error(fmt::format("{}: forward failed: {}", file_, first_line(e.what())));
    }
    return stack.back().toTupleRef().elements().vec();
  }

  at::Tensor logits_of(const c10::IValue& output, const at::Tensor& ids) {
    c10::IValue value = output;
    if (value.isTuple() && !value.toTupleRef().elements().empty()) value = value.toTupleRef().elements()[0];
    if (!value.isTensor()) throw Error(fmt::format("{}: forward returned no logits tensor", file_));
    at::Tensor logits = value.toTensor();
    if (logits.dim() != 3 || logits.size(0) != ids.size(0) || logits.size(1) != ids.size(1))
      throw Error(fmt::format("{}: forward returned logits of shape {}, expected [batch, positions, vocab]", file_,
                              fmt::join(logits.sizes(), "x")));
    info_.vocab_size = logits.size(2);
    return logits.to(at::kFloat);
  }

  void fire_pattern(const Pattern& p, const c10::IValue& value, const HookSet& hooks, CaptureContext ctx) {
    const at::Tensor pattern = value.toTensor();
    if (info_.n_heads == 0 && pattern.dim() == 4) info_.n_heads = int(pattern.size(1));
    ctx.layer = p.layer;
    if (!hooks.wants(p.name, ctx)) return;
    at::Tensor fired = pattern.to(at::kFloat);
    const at::Tensor before = fired;
    hooks.fire(p.name, ctx, fired);
    if (!fired.is_same(before))
      throw Error(fmt::format("{}: replacing {} is not supported for TorchScript models yet", file_, p.name));
  }

  std::string file_;
  torch::jit::Module module_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<torch::jit::GraphFunction> function_;
  std::vector<c10::IValue> defaults_;  // forward's arguments after the ids
  std::vector<Pattern> patterns_;
  ModelInfo info_;
};

}  // namespace

bool is_torchscript(const fs::path& file) {
  const std::string ext = file.extension().string();
  std::error_code ec;
  if ((ext != ".pt" && ext != ".pth" && ext != ".ts") || !fs::is_regular_file(file, ec)) return false;
  try {
    caffe2::serialize::PyTorchStreamReader reader(file.string());
    for (const std::string& record : reader.getAllRecords())
      if (record == "constants.pkl" || record.rfind("code/", 0) == 0) return true;
  } catch (const std::exception&) {
  }
  return false;
}

std::unique_ptr<Model> load_torchscript(const fs::path& file, const LoadOptions& options) {
  torch::jit::Module module;
  try {
    module = torch::jit::load(file.string(), at::kCPU);
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: not a loadable TorchScript model: {}", file.string(), first_line(e.what())));
  }
  // Only a tokenizer named explicitly: a directory beside a .pt file need not belong to it.
  std::unique_ptr<Tokenizer> tokenizer;
  if (!options.tokenizer.empty()) tokenizer = load_model_tokenizer(file.parent_path(), options);
  try {
    return std::make_unique<TorchScriptModel>(file, std::move(module), std::move(tokenizer));
  } catch (const c10::Error& e) {  // e.g. no forward method
    throw Error(fmt::format("{}: cannot prepare forward for capture: {}", file.string(), first_line(e.what())));
  }
}

}  // namespace hooklens
