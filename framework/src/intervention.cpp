// Applying interventions (interventions.h): each one is a hook that replaces the part of a fired
// tensor its site selects, with values from another run, a vector file or a dataset's statistics.
#include "interventions.h"

#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/hooks.h>
#include <hooklens/model.h>
#include <hooklens/run.h>
#include <hooklens/run_format.h>
#include <hooklens/runtime.h>
#include <hooklens/safetensors.h>
#include <hooklens/tokenizer.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <tuple>

namespace hooklens {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// One narrowing of a fired tensor: dim `dim`, elements [start, start + length).
struct Narrow {
  std::int64_t dim, start, length;
};

at::Tensor narrowed(at::Tensor t, const std::vector<Narrow>& region) {
  for (const Narrow& n : region) t = t.narrow(n.dim, n.start, n.length);
  return t;
}

// A selected dim of a hook point and how its indices are counted: positions from the event's
// offset (a cached generation step holds only the new positions), other dims from 0.
struct Axis {
  enum class Kind { query, key, other } kind;
  std::int64_t dim;
  std::string name;
  IndexRange range;
};

std::string shape_text(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

std::string event_text(const CaptureContext& ctx) {
  std::string s = fmt::format("prompt {} step {}", ctx.prompt, ctx.step);
  if (ctx.block >= 0) s += fmt::format(" block {}", ctx.block);
  if (ctx.pass) s += " (unconditional pass)";
  return s;
}

// The size a dim of the model's points has, when the model says (0: not known before a forward).
std::int64_t dim_size(const std::string& hook, const std::string& dim, const ModelInfo& info) {
  if (dim == "head") {
    const bool kv = hook_names::is_point(hook, hook_names::k) || hook_names::is_point(hook, hook_names::v) ||
                    hook_names::is_point(hook, hook_names::rot_k);
    return kv && info.n_kv_heads > 0 ? info.n_kv_heads : info.n_heads;
  }
  if (dim == "d_head") return info.d_head;
  if (dim == "d_model") return info.d_model;
  if (dim == "d_mlp") return info.d_mlp;
  if (dim == "vocab") return info.vocab_size;
  return 0;
}

// Reads FILE or FILE:TENSOR as a float32 vector.
at::Tensor read_vector_file(const std::string& spec, const std::string& option) {
  const auto [file, name] = split_tensor_file(spec);
  TensorMap tensors;
  try {
    tensors = read_safetensors(file);
  } catch (const std::exception& e) {
    throw UsageError(fmt::format("{}: cannot read the vector file {}: {}", option, file, e.what()));
  }
  at::Tensor v;
  if (!name.empty()) {
    const auto it = tensors.find(name);
    if (it == tensors.end()) throw UsageError(fmt::format("{}: {} holds no tensor '{}'", option, file, name));
    v = it->second;
  } else {
    if (tensors.size() != 1)
      throw UsageError(fmt::format("{}: {} holds {} tensors: name one as {}:NAME", option, file, tensors.size(), file));
    v = tensors.begin()->second;
  }
  if (v.dim() != 1 || v.numel() == 0 || !at::isFloatingType(v.scalar_type()))
    throw UsageError(fmt::format("{}: {} is not a vector of floats (shape {}, {})", option, spec, shape_text(v),
                                 std::string(c10::toString(v.scalar_type()))));
  v = v.to(at::kFloat).contiguous().clone();
  if (!at::isfinite(v).all().item<bool>()) throw UsageError(fmt::format("{}: {} holds a NaN or infinity", option, spec));
  return v;
}

}  // namespace

std::vector<std::vector<std::int64_t>> text_file_sequences(const std::string& file, const Tokenizer& tokenizer,
                                                           std::int64_t seq_len, int max_sequences,
                                                           const std::string& option) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw UsageError(fmt::format("{} {}: cannot open it", option, file));
  std::stringstream buffer;
  buffer << in.rdbuf();
  // Enough text for the sequences asked for (a WikiText split is megabytes; tokenizing all of it is waste).
  const std::size_t bytes = std::size_t(seq_len) * std::size_t(max_sequences) * 16 + 4096;
  const auto ids = tokenizer.encode(buffer.str().substr(0, bytes));
  std::vector<std::vector<std::int64_t>> sequences;
  for (std::int64_t start = 0; start + seq_len <= std::int64_t(ids.size()) && int(sequences.size()) < max_sequences;
       start += seq_len)
    sequences.emplace_back(ids.begin() + start, ids.begin() + start + seq_len);
  if (sequences.empty())
    throw UsageError(fmt::format("{} {}: {} tokens, fewer than one --seq-len {} sequence", option, file, ids.size(), seq_len));
  return sequences;
}

// A run directory (patching, or a dataset) or a text file's sequences (a dataset).
struct Interventions::Source {
  std::string description;
  std::optional<RunReader> run;
  int prompts = 0;
  std::map<std::tuple<std::string, int, int, int, int>, std::size_t> by_event;  // hook, prompt, step, block, pass
  std::map<std::string, std::vector<std::size_t>> sequences_of;  // a run's forward pass of each prompt, per hook
  std::map<std::string, std::vector<at::Tensor>> recorded;       // a text file's, per hook

  static std::unique_ptr<Source> of_run(const std::string& dir, const std::string& option, const Model& model) {
    auto s = std::make_unique<Source>();
    s->description = dir;
    try {
      s->run.emplace(dir);
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("{} {}: {}", option, dir, e.what()));
    }
    const json& m = s->run->manifest();
    const ModelInfo& info = model.info();
    ModelInfo theirs;
    try {
      theirs = ModelInfo::from_json(m.at("model"));
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("{} {}: its model section is unreadable: {}", option, dir, e.what()));
    }
    if (theirs.n_layers != info.n_layers || theirs.d_model != info.d_model ||
        (theirs.vocab_size && info.vocab_size && theirs.vocab_size != info.vocab_size))
      throw UsageError(fmt::format("{} {}: captured from another model ({} layers, d_model {}), this one has {} "
                                   "layers, d_model {}",
                                   option, dir, theirs.n_layers, theirs.d_model, info.n_layers, info.d_model));
    s->prompts = int(m.value("prompts", json::array()).size());
    for (std::size_t i = 0; i < s->run->capture_count(); ++i) {
      const CaptureEntry& e = s->run->entry(i);
      const CaptureContext& c = e.context;
      s->by_event.emplace(std::make_tuple(e.hook, c.prompt, c.step, c.block, c.pass), i);
      if (c.step == 0 && c.pass == 0 && c.block <= 0) s->sequences_of[e.hook].push_back(i);
    }
    return s;
  }

  // Whether the source holds `hook` at all (at any event).
  bool has(const std::string& hook) const {
    return recorded.count(hook) ||
           std::any_of(by_event.begin(), by_event.end(), [&](const auto& e) { return std::get<0>(e.first) == hook; });
  }
  std::size_t sequence_count(const std::string& hook) const {
    if (run) return sequences_of.count(hook) ? sequences_of.at(hook).size() : 0;
    return recorded.count(hook) ? recorded.at(hook).size() : 0;
  }
  // The forward pass of sequence `i` at `hook`: [1, positions, ...] float32.
  at::Tensor sequence(const std::string& hook, std::size_t i) {
    if (!run) return recorded.at(hook).at(i);
    return run->load(sequences_of.at(hook).at(i)).to(at::kFloat);
  }
  // The capture at `hook` of the event `ctx` (of prompt `prompt` of the source run).
  at::Tensor capture(const std::string& hook, const CaptureContext& ctx, int prompt) {
    const auto it = by_event.find(std::make_tuple(hook, prompt, ctx.step, ctx.block, ctx.pass));
    CaptureContext theirs = ctx;
    theirs.prompt = prompt;
    if (it == by_event.end())
      throw Error(fmt::format("--patch-from {}: no capture of {} at {}: capture it there at every event patched "
                              "(e.g. --hooks {} without slicing)",
                              description, hook, event_text(theirs), hook));
    const CaptureContext& c = run->entry(it->second).context;
    if (c.query_offset != ctx.query_offset || c.key_offset != ctx.key_offset)
      throw Error(fmt::format("--patch-from {}: {} at {} was captured from position {} (keys from {}), this run's "
                              "from {} (keys from {}): the runs must have the same positions",
                              description, hook, event_text(theirs), c.query_offset, c.key_offset, ctx.query_offset,
                              ctx.key_offset));
    return run->load(it->second);
  }
};

struct Interventions::Applied {
  InterventionSpec spec;
  HookPointInfo point;
  std::vector<Axis> axes;
  InterventionScope scope;
  std::string source;  // what the manifest names as the values' origin ("" for none)
  std::string text;    // one line for people
  at::Tensor vector;   // steer: scale * vector; an ablation along a direction: the unit direction
  at::Tensor mean;     // mean-ablate: [1, 1, rest...], or along a direction the mean component (a scalar)
  Source* from = nullptr;
  std::uint64_t seed = 0;
  std::int64_t applied = 0;

  // The spec's vector file, checked against the point: its length must be the point's last dim
  // where the model states it and the site keeps all of it (else when the point fires).
  at::Tensor read_vector(const std::string& where, const ModelInfo& info, const char* what) const {
    at::Tensor v = read_vector_file(spec.vector, where);
    const std::int64_t last = point.dims.empty() ? 0 : dim_size(point.name, point.dims.back(), info);
    const bool last_selected = std::any_of(axes.begin(), axes.end(),
                                           [&](const Axis& x) { return x.dim == std::int64_t(point.dims.size()) - 1; });
    if (last > 0 && !last_selected && v.numel() != last)
      throw UsageError(fmt::format("{}: the {} has {} elements, {}'s {} is {}", where, what, v.numel(), point.name,
                                   point.dims.back(), last));
    return v;
  }

  bool in_schedule(const CaptureContext& ctx) const {
    const auto inside = [](const std::optional<IndexRange>& r, int value, int total) {
      if (!r) return true;
      const auto [first, last] = r->absolute(total);
      return value >= first && value < last;
    };
    return inside(spec.site.steps, ctx.step, scope.steps) && inside(spec.site.blocks, ctx.block, scope.blocks);
  }

  // The part of `t` the site selects in this event, or nothing when the event holds none of it.
  std::optional<std::vector<Narrow>> region(const at::Tensor& t, const CaptureContext& ctx) const {
    std::vector<Narrow> out;
    for (const Axis& a : axes) {
      if (a.dim >= t.dim())
        throw Error(fmt::format("{} '{}': {} fired a {}-d tensor, without its {} dim", spec.option(), spec.site.text(),
                                point.name, t.dim(), a.name));
      const std::int64_t size = t.size(a.dim);
      const std::int64_t offset =
          a.kind == Axis::Kind::query ? ctx.query_offset : a.kind == Axis::Kind::key ? ctx.key_offset : 0;
      const auto [first, last] = a.range.resolve(offset, size, offset + size);
      if (first == last) {
        if (a.kind == Axis::Kind::other)
          throw Error(fmt::format("{} '{}': {} has {} {} ({}), none selected", spec.option(), spec.site.text(),
                                  point.name, size, a.name, shape_text(t)));
        return std::nullopt;
      }
      out.push_back({a.dim, first, last - first});
    }
    return out;
  }

  // Another sequence of the dataset for this prompt: the same one at every hook and step of it.
  std::size_t resample_choice(int prompt, std::size_t count) const {
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + std::uint64_t(prompt));
    return std::uniform_int_distribution<std::size_t>(0, count - 1)(rng);
  }

  // The dataset's value for this event: its forward pass at the same positions.
  at::Tensor resampled(const at::Tensor& t, const CaptureContext& ctx) const {
    const std::size_t count = from->sequence_count(point.name);
    const std::size_t j = resample_choice(ctx.prompt, count);
    at::Tensor src = from->sequence(point.name, j);
    const std::int64_t need = ctx.query_offset + t.size(1);
    if (src.dim() != t.dim() || src.size(1) < need)
      throw Error(fmt::format("{} '{}': sequence {} of {} has {} at {} positions, this run needs {} ({})", spec.option(),
                              spec.site.text(), j, from->description, point.name, src.dim() > 1 ? src.size(1) : 0, need,
                              event_text(ctx)));
    return src.narrow(1, ctx.query_offset, t.size(1));
  }

  void apply(const CaptureContext& ctx, at::Tensor& t) {
    if (!in_schedule(ctx)) return;
    const auto where = region(t, ctx);
    if (!where) return;
    at::Tensor replacement;  // the values the region takes from a whole tensor shaped like t
    switch (spec.kind) {
      case InterventionKind::zero_ablate:
        break;
      case InterventionKind::patch: {
        const int prompt = from->prompts == 1 ? 0 : ctx.prompt;
        replacement = from->capture(point.name, ctx, prompt);
        break;
      }
      case InterventionKind::steer:
        break;
      case InterventionKind::mean_ablate:
        if (!vector.defined()) {
          if (mean.dim() != t.dim() || !std::equal(mean.sizes().begin() + 2, mean.sizes().end(), t.sizes().begin() + 2))
            throw Error(fmt::format("{} '{}': the means are {}, {} fired {}", spec.option(), spec.site.text(),
                                    shape_text(mean), point.name, shape_text(t)));
          replacement = mean.expand(t.sizes());
        }
        break;
      case InterventionKind::resample_ablate:
        replacement = resampled(t, ctx);
        break;
    }
    if (replacement.defined() && replacement.sizes() != t.sizes())
      throw Error(fmt::format("{} '{}': {} at {} is {} in {}, {} here", spec.option(), spec.site.text(), point.name,
                              event_text(ctx), shape_text(replacement), source, shape_text(t)));
    at::Tensor changed = t.clone();
    at::Tensor part = narrowed(changed, *where);
    if (vector.defined() && part.size(-1) != vector.numel())  // a point whose dims the model does not state
      throw Error(fmt::format("{} '{}': the {} has {} elements, {}'s last dim {} ({})", spec.option(), spec.site.text(),
                              spec.kind == InterventionKind::steer ? "vector" : "direction", vector.numel(), point.name,
                              part.size(-1), shape_text(t)));
    if (spec.kind == InterventionKind::zero_ablate) {
      part.zero_();
    } else if (spec.kind == InterventionKind::steer) {
      part.add_(vector);
    } else if (vector.defined()) {  // along a direction: only that component changes
      const at::Tensor now = (part * vector).sum(-1, true);
      const at::Tensor target =
          spec.kind == InterventionKind::mean_ablate ? mean : (narrowed(replacement, *where).to(at::kFloat) * vector).sum(-1, true);
      part.add_((target - now) * vector);
    } else {
      part.copy_(narrowed(replacement, *where));
    }
    t = changed;
    ++applied;
  }
};

namespace {

// The hook point `name` of the model, or a refusal naming the option.
HookPointInfo find_point(const Model& model, const InterventionSpec& spec) {
  const auto points = model.hook_points();
  const auto it = std::find_if(points.begin(), points.end(), [&](const auto& p) { return p.name == spec.site.hook; });
  if (it == points.end())
    throw UsageError(fmt::format("{} '{}': the model has no hook point {} (`hooklens info --model DIR` lists them)",
                                 spec.option(), spec.site.text(), spec.site.hook));
  return *it;
}

bool positions_first(const HookPointInfo& p) { return p.dims.size() >= 2 && p.dims[0] == "batch" && p.dims[1] == "pos"; }

}  // namespace

InterventionSpec zero_ablation(const std::string& text, const Model& model) {
  int layer = -1, head = -1;
  char dot = 0, extra = 0;
  if (std::sscanf(text.c_str(), "%d%c%d%c", &layer, &dot, &head, &extra) != 3 || dot != '.') {
    if (!text.empty() && (text[0] >= '0' && text[0] <= '9'))
      throw UsageError(fmt::format("--ablate '{}': expected LAYER.HEAD (e.g. 1.3) or a site HOOK[...]", text));
    InterventionSpec s;
    s.kind = InterventionKind::zero_ablate;
    s.site = InterventionSite::parse(text, "--ablate");
    return s;
  }
  const ModelInfo& info = model.info();
  const bool heads_known = info.n_heads > 0;  // TorchScript: known after the first forward
  if (layer < 0 || layer >= info.n_layers || head < 0 || (heads_known && head >= info.n_heads))
    throw UsageError(fmt::format("--ablate '{}': the model has layers 0-{} and heads 0-{}", text, info.n_layers - 1,
                                 heads_known ? fmt::format("{}", info.n_heads - 1) : std::string("?")));
  // hook_z's head, or for models without hook_z (TorchScript) its pattern: z = pattern @ v = 0 alike.
  const std::string z = hook_names::in_layer(layer, hook_names::z);
  const auto points = model.hook_points();
  const bool by_z = std::any_of(points.begin(), points.end(), [&](const auto& p) { return p.name == z; });
  InterventionSpec s;
  s.kind = InterventionKind::zero_ablate;
  s.site.hook = by_z ? z : hook_names::in_layer(layer, hook_names::pattern);
  s.site.select.emplace_back("head", IndexRange{head, head + 1});
  return s;
}

Interventions::Interventions(Model& model, std::vector<InterventionSpec> specs, InterventionSources sources,
                             InterventionScope scope) {
  const ModelInfo& info = model.info();
  bool patches = false, ablations = false;
  for (const auto& s : specs) {
    patches |= s.kind == InterventionKind::patch;
    ablations |= s.kind == InterventionKind::mean_ablate || s.kind == InterventionKind::resample_ablate;
  }
  if (patches && sources.patch_from.empty()) throw UsageError("--patch needs --patch-from RUN, the run whose captures it patches in");
  if (!patches && !sources.patch_from.empty()) throw UsageError("--patch-from applies to --patch SITE");
  if (ablations && sources.ablate_from.empty())
    throw UsageError("--mean-ablate and --resample-ablate need --ablate-from RUN or TEXT_FILE, the data their values come from");
  if (!ablations && !sources.ablate_from.empty()) throw UsageError("--ablate-from applies to --mean-ablate and --resample-ablate");

  for (auto& spec : specs) {
    auto a = std::make_unique<Applied>();
    a->spec = std::move(spec);
    a->scope = scope;
    a->seed = sources.seed;
    const InterventionSite& site = a->spec.site;
    const std::string option = a->spec.option(), where = fmt::format("{} '{}'", option, site.text());
    a->point = find_point(model, a->spec);
    const HookPointInfo& point = a->point;
    if (!site.select.empty() && point.dims.empty())
      throw UsageError(fmt::format("{}: the dims of {} are not known (a TorchScript point): intervene on all of it", where,
                                   point.name));
    for (const auto& [key, range] : site.select) {
      const std::string dim = InterventionSite::dim_of(key, point.dims);
      if (dim.empty())
        throw UsageError(fmt::format("{}: {} has no dim '{}'; its dims are {}", where, point.name, key,
                                     fmt::join(point.dims.begin() + (point.dims.empty() ? 0 : 1), point.dims.end(), ", ")));
      const auto index = std::int64_t(std::find(point.dims.begin(), point.dims.end(), dim) - point.dims.begin());
      Axis axis{dim == "key" ? Axis::Kind::key : (dim == "pos" || dim == "query") ? Axis::Kind::query : Axis::Kind::other,
                index, dim, range};
      if (std::any_of(a->axes.begin(), a->axes.end(), [&](const Axis& x) { return x.dim == index; }))
        throw UsageError(fmt::format("{}: dim {} is selected twice", where, dim));
      if (axis.kind == Axis::Kind::other) {
        const std::int64_t size = dim_size(point.name, dim, info);
        if (size > 0 && range.absolute(size).first == range.absolute(size).second)
          throw UsageError(fmt::format("{}: {} of {} are 0-{}", where, dim, point.name, size - 1));
      } else {
        for (std::size_t p = 0; p < scope.positions.size(); ++p) {
          const std::int64_t n = scope.positions[p];
          const auto [first, last] = range.absolute(n);
          if (first == last)
            throw UsageError(fmt::format("{}: prompt {} reaches {} position{} (0-{}): {} {} lies outside", where, p, n,
                                         n == 1 ? "" : "s", n - 1, key, range.text()));
        }
      }
      a->axes.push_back(std::move(axis));
    }
    if (site.steps && site.steps->absolute(scope.steps).first == site.steps->absolute(scope.steps).second)
      throw UsageError(fmt::format("{}: this run has steps 0-{}", where, scope.steps - 1));
    if (site.blocks) {
      if (scope.blocks == 0) throw UsageError(fmt::format("{}: block= is for masked-diffusion generation", where));
      if (site.blocks->absolute(scope.blocks).first == site.blocks->absolute(scope.blocks).second)
        throw UsageError(fmt::format("{}: this run has blocks 0-{}", where, scope.blocks - 1));
    }
    switch (a->spec.kind) {
      case InterventionKind::zero_ablate:
        a->text = fmt::format("zero-ablated {}", site.text());
        break;
      case InterventionKind::patch:
        a->source = sources.patch_from;
        a->text = fmt::format("patched {} with the captures of {}", site.text(), sources.patch_from);
        break;
      case InterventionKind::steer: {
        const at::Tensor v = a->read_vector(where, info, "vector");
        a->source = a->spec.vector;
        a->text = fmt::format("steered {} by {} x {} (norm {:.4g})", site.text(), a->spec.scale, a->spec.vector,
                              v.norm().item<double>());
        a->vector = v * a->spec.scale;
        break;
      }
      case InterventionKind::mean_ablate:
      case InterventionKind::resample_ablate: {
        if (!positions_first(point) || std::find(point.dims.begin(), point.dims.end(), "key") != point.dims.end())
          throw UsageError(fmt::format("{}: {} is not a point of positions ([batch, pos, ...]): its dims are [{}]", where,
                                       point.name, fmt::join(point.dims, ", ")));
        if (!a->spec.vector.empty()) {
          if (point.dims.size() != 3)
            throw UsageError(fmt::format("{}: a direction applies to a point [batch, pos, d] (the residual stream, an "
                                         "MLP's neurons), not {} [{}]",
                                         where, point.name, fmt::join(point.dims, ", ")));
          const at::Tensor d = a->read_vector(where, info, "direction");
          const double norm = d.norm().item<double>();
          if (!(norm > 0)) throw UsageError(fmt::format("{}: the direction {} is zero", where, a->spec.vector));
          a->vector = d / norm;
        }
        break;
      }
    }
    applied_.push_back(std::move(a));
  }

  // The sources, each read once, for every intervention that uses it.
  if (patches) {
    patch_source_ = Source::of_run(sources.patch_from, "--patch-from", model);
    const std::size_t prompts = scope.positions.size();
    if (patch_source_->prompts != 1 && std::size_t(patch_source_->prompts) != prompts)
      throw UsageError(fmt::format("--patch-from {}: it has {} prompts, this run {}: prompt i is patched from its "
                                   "prompt i (or every prompt from a run of one prompt)",
                                   sources.patch_from, patch_source_->prompts, prompts));
    for (auto& a : applied_)
      if (a->spec.kind == InterventionKind::patch) {
        if (!patch_source_->has(a->point.name))
          throw UsageError(fmt::format("--patch '{}': {} has no capture of {} (capture it there with --hooks {})",
                                       a->spec.site.text(), sources.patch_from, a->point.name, a->point.name));
        a->from = patch_source_.get();
      }
  }
  if (ablations) {
    std::vector<std::string> hooks;
    for (auto& a : applied_)
      if (a->spec.kind == InterventionKind::mean_ablate || a->spec.kind == InterventionKind::resample_ablate)
        if (std::find(hooks.begin(), hooks.end(), a->point.name) == hooks.end()) hooks.push_back(a->point.name);
    std::error_code ec;
    if (fs::is_directory(sources.ablate_from, ec)) {
      ablate_source_ = Source::of_run(sources.ablate_from, "--ablate-from", model);
    } else {
      if (!model.tokenizer())
        throw UsageError(fmt::format("--ablate-from {}: a text file needs the model's tokenizer (--tokenizer DIR)",
                                     sources.ablate_from));
      ablate_source_ = std::make_unique<Source>();
      const auto sequences = text_file_sequences(sources.ablate_from, *model.tokenizer(), sources.ablate_seq_len,
                                                 sources.ablate_sequences, "--ablate-from");
      ablate_source_->description = fmt::format("{} ({} sequences of {} tokens)", sources.ablate_from, sequences.size(),
                                                sources.ablate_seq_len);
      std::cerr << fmt::format("ablate-from: {} forward passes over {}\n", sequences.size(), ablate_source_->description);
      HookSet record;
      auto& recorded = ablate_source_->recorded;
      record.add({hooks}, [&recorded](std::string_view name, const CaptureContext&, at::Tensor& t) {
        recorded[std::string(name)].push_back(t.to(at::kFloat).clone());
      });
      for (const auto& ids : sequences) {
        model.forward(at::tensor(at::ArrayRef<std::int64_t>(ids), at::kLong).unsqueeze(0), record, CaptureContext{},
                      nullptr, Logits::none);
        release_free_memory();
      }
    }
    for (auto& a : applied_) {
      if (a->spec.kind != InterventionKind::mean_ablate && a->spec.kind != InterventionKind::resample_ablate) continue;
      Source& src = *ablate_source_;
      const std::string& hook = a->point.name;
      const std::size_t count = src.sequence_count(hook);
      if (count == 0)
        throw UsageError(fmt::format("{} '{}': {} has no capture of {} (capture it there with --hooks {})",
                                     a->spec.option(), a->spec.site.text(), src.description, hook, hook));
      a->from = &src;
      a->source = sources.ablate_from;
      if (a->spec.kind == InterventionKind::resample_ablate) {
        a->text = fmt::format("resample-ablated {}{} from one of {} sequences of {} (seed {})", a->spec.site.text(),
                              a->spec.vector.empty() ? "" : " along " + a->spec.vector, count, src.description,
                              sources.seed);
        continue;
      }
      // The mean over every position of every sequence: of the values, or of their component.
      at::Tensor sum;
      std::int64_t positions = 0;
      for (std::size_t i = 0; i < count; ++i) {
        at::Tensor x = src.sequence(hook, i).to(at::kDouble);
        if (a->vector.defined()) x = (x * a->vector.to(at::kDouble)).sum(-1);
        if (x.dim() < 2) throw Error(fmt::format("--ablate-from {}: {} is {}-d", src.description, hook, x.dim()));
        at::Tensor s = x.sum(at::IntArrayRef{0, 1});
        if (sum.defined() && s.sizes() != sum.sizes())
          throw UsageError(fmt::format("--mean-ablate '{}': the captures of {} in {} differ in shape (sliced?)",
                                       a->spec.site.text(), hook, src.description));
        sum = sum.defined() ? sum + s : s;
        positions += x.size(0) * x.size(1);
      }
      at::Tensor mean = (sum / double(positions)).to(at::kFloat);
      a->mean = a->vector.defined() ? mean : mean.unsqueeze(0).unsqueeze(0);
      a->text = fmt::format("mean-ablated {}{} (means of {} positions of {})", a->spec.site.text(),
                            a->spec.vector.empty() ? "" : " along " + a->spec.vector, positions, src.description);
    }
  }
}

Interventions::~Interventions() = default;

bool Interventions::empty() const { return applied_.empty(); }

void Interventions::attach(HookSet& hooks) {
  for (auto& a : applied_) {
    Applied* applied = a.get();
    hooks.add({{a->point.name}}, [applied](std::string_view, const CaptureContext& ctx, at::Tensor& t) {
      applied->apply(ctx, t);
    });
  }
}

json Interventions::manifest(bool counted) const {
  json out = json::array();
  for (const auto& a : applied_) {
    RunIntervention entry;
    entry.kind = intervention_kind_name(a->spec.kind);
    entry.site = a->spec.site.text();
    entry.hook = a->point.name;
    entry.text = a->text;
    if (!a->source.empty()) entry.source = a->source;
    if (a->spec.kind == InterventionKind::steer) entry.scale = a->spec.scale;
    if (counted) entry.applied = a->applied;
    out.push_back(encode_intervention(entry));
  }
  return out;
}

std::vector<std::string> Interventions::unapplied() const {
  std::vector<std::string> out;
  for (const auto& a : applied_)
    if (a->applied == 0)
      out.push_back(fmt::format("{} '{}' changed nothing: no event of this run reached it", a->spec.option(),
                                a->spec.site.text()));
  return out;
}

}  // namespace hooklens
