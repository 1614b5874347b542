// TorchScript models: any torch.jit.script/trace archive whose forward maps token ids to logits.
//
// The model needs no change. forward's graph is copied and every method and function call in it is
// inlined by hand, so that each node's module path is known (`transformer.h.3.attn`). While
// inlining, hooklens inserts its own `hooklens::capture(x, name)` op (framework/ops/capture_op.h)
// at three kinds of places, and at run time each call fires the named hook point, whose hooks may
// read or replace the tensor:
//  - the output of every submodule's forward, named by its module path (`blocks.3.attn`,
//    `blocks.3.mlp.fc`, `ln_f`); a block's own output is `blocks.{i}.hook_resid_post`;
//  - every `aten::softmax` whose result feeds the first operand of a matmul/bmm/einsum (directly or
//    through dropout and shape-only ops), also inside if/loop bodies: `blocks.{i}.attn.hook_pattern`
//    (when the branches of an if each compute the pattern, the if's result is captured once);
//  - the model author's own `torch.ops.hooklens.capture(x, "name")` calls, whose constant names are
//    prefixed with the calling module's path (`attn.hook_z` inside block 3 becomes
//    `blocks.3.attn.hook_z`); a softmax the author captures directly is not captured again.
// "blocks" stands for the model's outermost ModuleList, whatever its attribute is called (`h`,
// `layers`, `transformer.h`), and `i` for the index in it. Without exactly one outermost ModuleList
// module paths stay as they are, and patterns are numbered by their layer index if every one has
// one, else by graph order. Several patterns in one layer (e.g. a ModuleList of single-head
// attentions) are `blocks.{i}.attn.hook_pattern.{j}` in graph order.
//
// forward may return the logits of every position or, like nanoGPT at inference, of the last one only
// ([batch, 1, vocab]: hook_logits then has query_offset = positions - 1, and forward returns that row).
//
// Limits: no KV cache (new_state() is null: generation recomputes every position); n_ctx is unknown
// (set to 1 << 20: the model itself refuses what it cannot take); n_heads and vocab_size come from a
// one-token forward at load (0 if the model refuses one token, until the first forward); a module
// applied several times in one forward (a loop over one shared block) fires its hook point once per
// application, with the same name.
#include "torchscript.h"

#include <capture_op.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/message_text.h>

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/script.h>

#include <algorithm>
#include <cctype>
#include <exception>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace hooklens {
namespace {

namespace fs = std::filesystem;
using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

// What an exception from libtorch says, in one line (c10::Error's what() adds a backtrace; the
// compiler's first line ends in ':' before the source it quotes).
std::string reason(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string line = first_line(c10_error ? c10_error->what_without_backtrace() : e.what());
  while (line.size() > 1 && (line.back() == ':' || line.back() == ' ')) line.pop_back();
  return line;
}

c10::Symbol capture_symbol() {
  static const c10::Symbol symbol = c10::Symbol::fromQualString(ops::kCaptureOp);
  return symbol;
}

// Ops a pattern may pass through on its way to the matmul without ceasing to be the pattern.
bool passes_pattern_through(c10::Symbol kind) {
  static const std::set<std::string> kinds = {"aten::dropout", "aten::feature_dropout", "aten::alpha_dropout",
                                              "aten::contiguous", "aten::view", "aten::reshape",
                                              "aten::to", "aten::type_as", "aten::clone", "aten::detach",
                                              "aten::masked_fill", ops::kCaptureOp};
  return kinds.count(kind.toQualString()) > 0;
}

// True if `value` is the first operand of aten::matmul/aten::bmm or of an einsum (pattern @ values).
bool feeds_matmul(const Value* value, int depth = 0) {
  if (depth > 8) return false;
  for (const auto& use : value->uses()) {
    const c10::Symbol kind = use.user->kind();
    if ((kind == c10::aten::matmul || kind == c10::aten::bmm) && use.offset == 0) return true;
    if (kind == c10::prim::ListConstruct && use.offset == 0)
      for (const auto& list_use : use.user->output()->uses())
        if (list_use.user->kind() == c10::aten::einsum) return true;
    if (passes_pattern_through(kind) && use.offset == 0 && feeds_matmul(use.user->output(0), depth + 1))
      return true;
    const Node* owner = use.user->kind() == c10::prim::Return ? use.user->owningBlock()->owningNode() : nullptr;
    if (owner && owner->kind() == c10::prim::If && feeds_matmul(owner->output(use.offset), depth + 1)) return true;
  }
  return false;
}

// The value to capture for a softmax: its result, or the result of the if whose branch returns it
// (one hook point however many branches compute the pattern).
Value* merged_value(Value* value) {
  for (const auto& use : value->uses()) {
    Node* owner = use.user->kind() == c10::prim::Return ? use.user->owningBlock()->owningNode() : nullptr;
    if (owner && owner->kind() == c10::prim::If) return merged_value(owner->output(use.offset));
  }
  return value;
}

bool all_digits(const std::string& s) {
  return !s.empty() && s.size() < 9 &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  for (std::size_t begin = 0; begin < path.size();) {
    const std::size_t end = std::min(path.find('.', begin), path.size());
    parts.push_back(path.substr(begin, end - begin));
    begin = end + 1;
  }
  return parts;
}

std::string join_path(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }

// The first all-digit component of a dotted name ("blocks.3.attn" -> 3), or -1.
int integer_component(const std::string& name) {
  for (const std::string& part : split_path(name))
    if (all_digits(part)) return std::stoi(part);
  return -1;
}

// The layer of a hook point: i in "blocks.{i}...", else -1.
int layer_of_point(const std::string& name) {
  const std::vector<std::string> parts = split_path(name);
  return parts.size() >= 2 && parts[0] == "blocks" && all_digits(parts[1]) ? std::stoi(parts[1]) : -1;
}

// The module path of a module value: its prim::GetAttr chain back to the graph's `self`.
std::optional<std::string> module_path(Value* module, const Value* self) {
  std::vector<std::string> names;
  while (module != self) {
    if (module->node()->kind() != c10::prim::GetAttr) return std::nullopt;
    names.push_back(module->node()->s(c10::attr::name));
    module = module->node()->input(0);
  }
  std::string path;
  for (auto it = names.rbegin(); it != names.rend(); ++it) path = join_path(path, *it);
  return path;
}

// Maps module paths to hook point names: the outermost ModuleList becomes "blocks".
class PathNames {
 public:
  explicit PathNames(const torch::jit::Module& module) {
    std::set<std::string> lists;  // outermost paths whose children are numbered
    for (const auto& child : module.named_modules()) {
      std::string prefix;
      for (const std::string& part : split_path(child.name)) {
        if (all_digits(part)) {
          lists.insert(prefix);
          break;
        }
        prefix = join_path(prefix, part);
      }
    }
    if (lists.size() == 1 && !lists.begin()->empty()) list_ = *lists.begin();
  }

  // "transformer.h.3.attn" -> "blocks.3.attn" when transformer.h is the outermost ModuleList.
  std::string display(const std::string& path) const {
    if (list_.empty() || path.compare(0, list_.size(), list_) != 0) return path;
    if (path.size() == list_.size()) return "blocks";
    if (path[list_.size()] != '.') return path;
    return "blocks" + path.substr(list_.size());
  }

  // The hook point of a module's output: "blocks.{i}" itself is the residual stream after block i.
  std::string output_point(const std::string& path) const {
    const std::string name = display(path);
    const std::vector<std::string> parts = split_path(name);
    if (parts.size() == 2 && parts[0] == "blocks" && all_digits(parts[1])) return name + "." + std::string(hook_names::resid_post);
    return name;
  }

 private:
  std::string list_;
};

struct PointInfo {
  int layer = -1;
  bool pattern = false;
};

// Inlines forward's graph (a copy) and inserts hooklens::capture calls; see the file comment.
class Instrumenter {
 public:
  Instrumenter(Graph& graph, const PathNames& names) : graph_(graph), names_(names) {}

  // Returns every hook point the graph now fires whose name is a constant.
  std::map<std::string, PointInfo> run() {
    walk(graph_.block()->nodes().front(), graph_.block()->return_node(), "");
    capture_patterns();
    std::map<std::string, PointInfo> points;
    collect_points(graph_.block(), points);
    return points;
  }

 private:
  // Walks the nodes from `node` up to `end` (one block) that run in module `scope`, inlining calls.
  void walk(Node* node, Node* end, const std::string& scope) {
    while (node != end) {
      if (node->kind() == c10::prim::CallMethod || node->kind() == c10::prim::CallFunction) {
        node = inline_call(node, scope);
        continue;
      }
      scope_[node] = scope;
      if (node->kind() == capture_symbol() && !mine_.count(node)) name_user_capture(node, scope);
      for (Block* sub : node->blocks()) walk(sub->nodes().front(), sub->return_node(), scope);
      node = node->next();
    }
  }

  // Inlines one call and walks the inlined code; returns the node to continue with.
  Node* inline_call(Node* call, const std::string& scope) {
    std::string callee_scope = scope;  // a free function runs in its caller's module
    bool wrap = false;
    if (call->kind() == c10::prim::CallMethod) {
      const auto path = module_path(call->input(0), graph_.inputs()[0]);
      if (!path)
        throw Error(fmt::format("forward calls method '{}' of a module not reached through self's attributes",
                                call->s(c10::attr::name)));
      callee_scope = *path;
      wrap = !path->empty() && call->s(c10::attr::name) == "forward" && call->outputs().size() == 1 &&
             call->output()->type()->cast<c10::TensorType>();
    }
    // `marker` is the first node after the call that is not the callee's code.
    Node* marker = nullptr;
    Node* resume = nullptr;
    if (wrap) {
      Node* capture = insert_capture(call->output(), names_.output_point(callee_scope), call);
      marker = capture->input(1)->node();
      resume = capture->next();
    } else {
      marker = graph_.create(c10::prim::Constant, 1);
      marker->output()->setType(c10::NoneType::get());
      marker->insertAfter(call);
    }
    torch::jit::GraphFunction* callee = torch::jit::tryToGraphFunction(call);
    if (!callee) throw Error(fmt::format("cannot inline a call of kind {}", call->kind().toQualString()));
    if (call->kind() == c10::prim::CallFunction) call->removeInput(0);  // the function constant
    Node* before = call->prev();
    // The callee as written, not its optimized graph (already inlined, so without module paths).
    torch::jit::inlineCallTo(call, callee, callee->graph().get());
    walk(before->next(), marker, callee_scope);
    if (!wrap) {
      resume = marker->next();
      marker->destroy();
    }
    return resume;
  }

  // Inserts capture(value, name) after `after`; every later use of value reads the capture instead.
  Node* insert_capture(Value* value, const std::string& name, Node* after) {
    Node* capture = graph_.create(capture_symbol(), 1);
    capture->insertAfter(after);
    Value* constant = nullptr;
    {
      torch::jit::WithInsertPoint guard(capture);
      constant = graph_.insertConstant(c10::IValue(name));
    }
    capture->addInput(value);
    capture->addInput(constant);
    capture->output()->setType(value->type());
    value->replaceAllUsesAfterNodeWith(capture, capture->output());
    mine_.insert(capture);
    return capture;
  }

  // The author's torch.ops.hooklens.capture(x, "name") inside module `scope` fires "scope.name".
  void name_user_capture(Node* node, const std::string& scope) {
    mine_.insert(node);  // named once, by the module whose code contains it
    user_.insert(node);
    const auto name = torch::jit::toIValue(node->input(1));
    if (!name || !name->isString() || scope.empty()) return;
    torch::jit::WithInsertPoint guard(node);
    node->replaceInput(1, graph_.insertConstant(c10::IValue(join_path(names_.display(scope), name->toStringRef()))));
  }

  // The author's capture call taking `value`, if any.
  Node* author_capture(const Value* value) const {
    for (const auto& use : value->uses())
      if (user_.count(use.user)) return use.user;
    return nullptr;
  }

  // The attention patterns in graph order, each with the node whose module names it. A pattern
  // the author captures keeps the author's name, and that point is marked as a pattern.
  void find_patterns(Block* block, std::vector<std::pair<Value*, Node*>>& found, std::set<Value*>& seen) {
    for (Node* node : block->nodes()) {
      if (node->kind() == c10::aten::softmax && feeds_matmul(node->output())) {
        Value* pattern = merged_value(node->output());
        if (Node* author = author_capture(pattern))
          patterns_.insert(author);
        else if (seen.insert(pattern).second)
          found.emplace_back(pattern, node);
      }
      for (Block* sub : node->blocks()) find_patterns(sub, found, seen);
    }
  }

  // Names attention patterns by layer (or graph order if any lacks one) and captures them.
  void capture_patterns() {
    std::vector<std::pair<Value*, Node*>> found;
    std::set<Value*> seen;
    find_patterns(graph_.block(), found, seen);
    std::vector<int> layers;
    for (const auto& [pattern, softmax] : found) layers.push_back(integer_component(names_.display(scope_.at(softmax))));
    if (std::count(layers.begin(), layers.end(), -1) > 0)
      for (std::size_t i = 0; i < layers.size(); ++i) layers[i] = int(i);
    std::map<int, int> per_layer, numbered;
    for (int layer : layers) ++per_layer[layer];
    for (std::size_t i = 0; i < found.size(); ++i) {
      std::string name = fmt::format("blocks.{}.attn.hook_pattern", layers[i]);
      if (per_layer[layers[i]] > 1) name += fmt::format(".{}", numbered[layers[i]]++);
      patterns_.insert(insert_capture(found[i].first, name, found[i].first->node()));
    }
  }

  void collect_points(Block* block, std::map<std::string, PointInfo>& points) const {
    for (Node* node : block->nodes()) {
      if (node->kind() == capture_symbol()) {
        const auto name = torch::jit::toIValue(node->input(1));
        if (name && name->isString()) {
          PointInfo& info = points[name->toStringRef()];
          info.layer = layer_of_point(name->toStringRef());
          info.pattern = info.pattern || patterns_.count(node) > 0;
        }
      }
      for (Block* sub : node->blocks()) collect_points(sub, points);
    }
  }

  Graph& graph_;
  const PathNames& names_;
  std::unordered_map<const Node*, std::string> scope_;  // module path each node's code belongs to
  std::unordered_set<const Node*> mine_;                // capture calls already named
  std::unordered_set<const Node*> user_;                // the author's own capture calls
  std::unordered_set<const Node*> patterns_;
};

// Fires hook points for the capture calls of one forward (installed on the forward's thread).
class HookDispatch final : public ops::CaptureHandler {
 public:
  HookDispatch(const HookSet& hooks, const CaptureContext& ctx, const std::map<std::string, PointInfo>& points,
               ModelInfo& info)
      : hooks_(hooks), ctx_(ctx), points_(points), info_(info) {}

  at::Tensor capture(const at::Tensor& x, const std::string& name) override {
    const auto point = points_.find(name);
    if (point != points_.end() && point->second.pattern && info_.n_heads == 0 && x.dim() == 4)
      info_.n_heads = int(x.size(1));
    if (failure_) return x;  // a hook already failed: finish the forward quietly, then rethrow
    CaptureContext ctx = ctx_;
    ctx.layer = point != points_.end() ? point->second.layer : layer_of_point(name);
    try {
      if (!hooks_.wants(name, ctx)) return x;
      at::Tensor fired = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
      const at::Tensor before = fired;
      hooks_.fire(name, ctx, fired);
      return fired.is_same(before) ? x : fired.to(x.scalar_type());  // fire() checked the shape
    } catch (...) {
      failure_ = std::current_exception();
      return x;
    }
  }

  void rethrow_failure() const {
    if (failure_) std::rethrow_exception(failure_);
  }

 private:
  const HookSet& hooks_;
  const CaptureContext& ctx_;
  const std::map<std::string, PointInfo>& points_;
  ModelInfo& info_;
  std::exception_ptr failure_;
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
    int layers = 0;
    for (const auto& [name, point] : points_) layers = std::max(layers, point.layer + 1);
    info_.n_layers = layers;
    info_.n_ctx = std::int64_t(1) << 20;
    info_.layer_attention.assign(layers, AttentionKind::causal);  // assumed: not inspected
    probe_sizes();
  }

  const ModelInfo& info() const override { return info_; }
  const Tokenizer* tokenizer() const override { return tokenizer_.get(); }
  std::unique_ptr<ModelState> new_state() const override { return nullptr; }

  std::vector<HookPointInfo> hook_points() const override {
    std::vector<HookPointInfo> points;
    for (const auto& [name, point] : points_)
      points.push_back({name, point.pattern ? std::vector<std::string>{"batch", "head", "query", "key"}
                                            : std::vector<std::string>{},
                        point.layer});
    points.push_back({std::string(hook_names::logits), {"batch", "pos", "vocab"}, -1});
    return points;
  }

  at::Tensor forward(const at::Tensor& ids, const HookSet& hooks, CaptureContext ctx, ModelState* state,
                     Logits wanted) override {
    if (state) throw UsageError(fmt::format("{}: TorchScript models keep no KV cache; pass no state", file_));
    check_ids(ids);
    ctx.query_offset = 0;
    ctx.key_offset = 0;
    at::Tensor logits = logits_of(run(ids, hooks, ctx), ids);
    ctx.layer = -1;
    ctx.query_offset = ids.size(1) - logits.size(1);  // > 0 when the model returns the last position only
    hooks.fire(hook_names::logits, ctx, logits);
    return wanted == Logits::last ? logits.slice(1, -1) : logits;  // the graph runs whole: none gives all
  }

 private:
  void build_function() {
    auto graph = module_.get_method("forward").graph()->copy();
    take_defaults();
    if (graph->outputs().size() != 1)
      throw Error(fmt::format("{}: forward has {} outputs, expected one", file_, graph->outputs().size()));
    try {
      points_ = Instrumenter(*graph, PathNames(module_)).run();
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}", file_, e.what()));
    }
    function_ = std::make_unique<torch::jit::GraphFunction>("hooklens_instrumented_forward", graph, nullptr);
  }

  // The vocabulary and head count show only in a forward's results: one token (id 0) reveals them.
  // A model that cannot take it keeps them 0 until the first real forward.
  void probe_sizes() {
    try {
      logits_of(run(at::zeros({1, 1}, at::kLong), HookSet(), CaptureContext()), at::zeros({1, 1}, at::kLong));
    } catch (const std::exception&) {
    }
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

  void check_ids(const at::Tensor& ids) const {
    if (ids.dim() != 2 || ids.scalar_type() != at::kLong)
      throw UsageError(fmt::format("{}: token ids must be int64 [batch, positions]", file_));
    if (ids.numel() == 0) throw UsageError(fmt::format("{}: no token ids given", file_));
    const std::int64_t lo = ids.min().item<std::int64_t>(), hi = ids.max().item<std::int64_t>();
    if (lo < 0 || (info_.vocab_size > 0 && hi >= info_.vocab_size))
      throw UsageError(fmt::format("{}: token id {} is outside the vocabulary of {}", file_, lo < 0 ? lo : hi,
                                   info_.vocab_size));
  }

  // Runs the instrumented forward with `hooks` answering its capture calls; returns forward's output.
  c10::IValue run(const at::Tensor& ids, const HookSet& hooks, const CaptureContext& ctx) {
    torch::NoGradGuard no_grad;
    HookDispatch dispatch(hooks, ctx, points_, info_);
    torch::jit::Stack stack = {module_._ivalue(), ids};
    stack.insert(stack.end(), defaults_.begin(), defaults_.end());
    try {
      ops::ScopedCaptureHandler scope(dispatch);
      function_->run(stack);
    } catch (const std::exception& e) {
      dispatch.rethrow_failure();
      throw Error(fmt::format("{}: forward failed: {}", file_, reason(e)));
    }
    dispatch.rethrow_failure();
    return stack.back();
  }

  at::Tensor logits_of(const c10::IValue& output, const at::Tensor& ids) {
    c10::IValue value = output;
    if (value.isTuple() && !value.toTupleRef().elements().empty()) value = value.toTupleRef().elements()[0];
    if (!value.isTensor()) throw Error(fmt::format("{}: forward returned no logits tensor", file_));
    at::Tensor logits = value.toTensor();
    // [batch, 1, vocab] is the last position only, as nanoGPT returns at inference.
    if (logits.dim() != 3 || logits.size(0) != ids.size(0) || (logits.size(1) != ids.size(1) && logits.size(1) != 1))
      throw Error(fmt::format("{}: forward returned logits of shape {}, expected [batch, positions, vocab] or "
                              "[batch, 1, vocab]", file_, fmt::join(logits.sizes(), "x")));
    info_.vocab_size = logits.size(2);
    return logits.to(at::kFloat);
  }

  std::string file_;
  torch::jit::Module module_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<torch::jit::GraphFunction> function_;
  std::vector<c10::IValue> defaults_;  // forward's arguments after the ids
  std::map<std::string, PointInfo> points_;
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

std::unique_ptr<Model> load_torchscript(const fs::path& file, std::unique_ptr<Tokenizer> tokenizer) {
  torch::jit::Module module;
  try {
    module = torch::jit::load(file.string(), at::kCPU);
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: not a loadable TorchScript model: {}", file.string(), reason(e)));
  }
  try {
    return std::make_unique<TorchScriptModel>(file, std::move(module), std::move(tokenizer));
  } catch (const c10::Error& e) {  // e.g. no forward method
    throw Error(fmt::format("{}: cannot prepare forward for capture: {}", file.string(), reason(e)));
  }
}

}  // namespace hooklens
