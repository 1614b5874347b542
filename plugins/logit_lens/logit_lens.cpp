// The logit_lens analyzer: what the residual stream predicts after each layer (the model's own final
// norm and unembedding applied to it, Model::unembed), and the direct logit attribution of a target
// token to each head, each attention output bias, each MLP and the embeddings, with the final norm's
// scale frozen at the final residual. It needs the model (Analyzer::use_model).
//
// Per forward pass (conditional pass only) it keeps the chosen positions' rows of the residual
// stream and of the components until hook_logits ends the pass, then turns them into one entry per
// position: numbers only (top-k ids and probabilities per layer, attributions), so the state is
// bounded by positions x layers x (top_k + heads). Definitions, options, report: docs/analyzers-logit-lens.md.
#include "position_tokens.h"

#include <hooklens/analyzer.h>
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace hooklens {
namespace {

using nlohmann::json;
namespace hn = hook_names;
constexpr const char* kName = "logit_lens";
constexpr std::int64_t kMaxTopK = 100;

// One position of one forward pass.
struct Key {
  int prompt = 0, block = -1, step = 0;
  Phase phase = Phase::prefill;
  std::int64_t position = 0;
  bool operator<(const Key& o) const {
    return std::tie(prompt, block, step, phase, position) < std::tie(o.prompt, o.block, o.step, o.phase, o.position);
  }
};

struct LensLayer {
  int layer = -1;  // -1: the embeddings (blocks.0.hook_resid_pre)
  std::vector<std::int64_t> top_ids;
  std::vector<double> top_probs;
  std::int64_t final_rank = 0;  // tokens whose lens logit is above the final prediction's
  double final_prob = 0;
};

struct LayerDla {
  std::vector<double> heads;  // per head
  double attn_bias = 0, mlp = 0;
};

struct Dla {
  std::int64_t target = 0;
  double logit = 0, constant = 0, embeddings = 0;
  std::vector<LayerDla> layers;
};

struct Entry {
  std::int64_t final_id = 0;
  double final_prob = 0, final_logit = 0;
  std::vector<LensLayer> lens;  // embeddings (when captured), then layers 0..L-1
  std::optional<Dla> dla;
  std::string dla_missing;  // why there is no attribution
};

// What one forward pass has shown so far, at its chosen positions.
struct Pass {
  Key key;  // position unused
  std::vector<std::int64_t> positions;
  at::Tensor embed;                                          // [P, D]
  std::vector<at::Tensor> resid_post, result, attn_out, mlp_out;  // per layer [P, D] ([P, H, D] for result)
};

class LogitLens : public Analyzer {
 public:
  std::vector<std::string> hooks() const override {
    return {hn::in_layer(0, hn::resid_pre), hn::every_layer(hn::resid_post), hn::every_layer(hn::result),
            hn::every_layer(hn::attn_out), hn::every_layer(hn::mlp_out), std::string(hn::logits)};
  }

  void use_model(const Model& model) override { model_ = &model; }

  void begin(const json& run) override {
    const PluginOptions options(kName, run.value("options", json::object()), {"positions", "top_k", "target"});
    if (!model_)
      throw UsageError("logit_lens needs the model's weights: run it live (capture|generate --analyze logit_lens) or "
                       "give the model to `hooklens analyze RUN --analyze logit_lens --model DIR`");
    info_ = ModelInfo::from_json(run.at("model"));
    const ModelInfo& mine = model_->info();
    if (mine.n_layers != info_.n_layers || mine.d_model != info_.d_model || mine.vocab_size != info_.vocab_size)
      throw UsageError(fmt::format("logit_lens: the model given ({} layers, d_model {}) is not the run's ({} layers, d_model {})",
                                   mine.n_layers, mine.d_model, info_.n_layers, info_.d_model));
    // Fails here, not at the first pass, for a model that cannot (TorchScript).
    model_->unembed(at::zeros({1, info_.d_model}, at::kFloat));
    top_k_ = options.integer("top_k", 5, 1, kMaxTopK);
    positions_all_ = false;
    positions_.clear();
    const json& positions = options.value("positions");
    if (positions.is_string() && positions.get<std::string>() == "all") positions_all_ = true;
    else if (!(positions.is_string() && positions.get<std::string>() == "last") && !positions.is_null())
      positions_ = *options.int_list("positions", 0);
    target_.reset();
    if (options.value("target").is_string()) target_ = parse_target(*options.string("target"));
    else target_ = options.optional_integer("target", 0, info_.vocab_size - 1);
    options_json_ = {{"positions", positions_all_ ? json("all") : positions_.empty() ? json("last") : json(positions_)},
                     {"top_k", top_k_},
                     {"target", target_ ? json(*target_) : json("final top-1")}};
    entries_.clear();
    passes_.clear();
  }

  void observe(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor) override {
    if (ctx.pass != 0) return;  // classifier-free guidance's unconditional pass
    if (tensor.dim() < 3 || tensor.size(0) != 1)
      throw Error(fmt::format("logit_lens: {} should be [1, pos, ...], got {} dims", hook, tensor.dim()));
    // Passes of a batch of prompts fire layer by layer, row by row: one pending pass per prompt.
    const Key key{ctx.prompt, ctx.block, ctx.step, ctx.phase, 0};
    auto it = passes_.find(key);
    if (it == passes_.end()) it = start_pass(key, ctx, tensor.size(1));
    Pass& pass = it->second;
    if (hook == hn::logits) {
      if (!pass.positions.empty()) finish_pass(pass, rows_of(pass, hook, ctx, tensor));
      passes_.erase(it);
      return;
    }
    if (pass.positions.empty()) return;  // none of the chosen positions is in this pass
    const at::Tensor rows = rows_of(pass, hook, ctx, tensor);
    const auto layer = [&](std::string_view suffix) { return hn::layer_of(hook, suffix); };
    if (const auto l = layer(hn::resid_pre)) {
      if (*l == 0) pass.embed = rows;
    } else if (const auto l = layer(hn::resid_post)) {
      slot(pass.resid_post, *l, hook) = rows;
    } else if (const auto l = layer(hn::result)) {
      if (rows.size(1) != info_.n_heads) throw Error(fmt::format("logit_lens: {} has {} heads, the model {}", hook, rows.size(1), info_.n_heads));
      slot(pass.result, *l, hook) = rows;
    } else if (const auto l = layer(hn::attn_out)) {
      slot(pass.attn_out, *l, hook) = rows;
    } else if (const auto l = layer(hn::mlp_out)) {
      slot(pass.mlp_out, *l, hook) = rows;
    }
  }

  // Entries are keyed by (prompt, block, step, phase, position): another rank's join ours.
  bool merges_state() const override { return true; }

  json save_state() const override {
    json entries = json::array();
    for (const auto& [key, e] : entries_) entries.push_back(entry_state(key, e));
    return {{"entries", std::move(entries)}};
  }

  void merge_state(const json& state) override {
    std::map<Key, Entry> theirs;
    read_state(kName, [&] {
      for (const json& s : state_array(state.at("entries"), "entries")) {
        Key key;
        Entry e = read_entry(s, key);
        if (entries_.count(key) || theirs.count(key))
          throw Error(fmt::format("prompt {} step {} position {} was observed by both ranks", key.prompt, key.step, key.position));
        theirs.emplace(key, std::move(e));
      }
    });
    entries_.merge(theirs);
  }

  json finish(const json& manifest) override {
    if (!model_) throw UsageError("logit_lens needs the model's weights: see `hooklens analyze --help` (--model DIR)");
    if (!passes_.empty()) no_logits(passes_.begin()->first);
    json report = {{"analyzer", kName}, {"options", options_json_}, {"definitions", definitions()}};
    json entries = json::array(), headline = json::array();
    std::map<std::pair<int, int>, std::pair<double, int>> head_sums;  // (layer, head) -> sum, count
    std::map<int, bool> headlined;  // prompt -> has its line
    for (const auto& [key, e] : entries_) {
      json j = entry_json(key, e, manifest);
      if (e.dla)
        for (int l = 0; l < int(e.dla->layers.size()); ++l)
          for (int h = 0; h < int(e.dla->layers[size_t(l)].heads.size()); ++h) {
            auto& [sum, count] = head_sums[{l, h}];
            sum += e.dla->layers[size_t(l)].heads[size_t(h)], ++count;
          }
      // One line per prompt (its first pass's last position), for the first few prompts.
      if (!headlined.count(key.prompt) && headlined.size() < 8) {
        const auto next = entries_.upper_bound(key);
        const bool last_of_pass = next == entries_.end() || next->first.prompt != key.prompt ||
                                  next->first.step != key.step || next->first.block != key.block;
        if (last_of_pass) headline.push_back(headline_of(key, j)), headlined[key.prompt] = true;
      }
      entries.push_back(std::move(j));
    }
    json heads = json::array();
    for (const auto& [lh, sc] : head_sums)
      heads.push_back({{"layer", lh.first}, {"head", lh.second}, {"dla_mean", sc.first / sc.second}});
    report["entries"] = std::move(entries);
    report["heads"] = std::move(heads);
    report["headline"] = std::move(headline);
    return report;
  }

 private:
  std::int64_t parse_target(const std::string& text) const {
    if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) {
      const std::int64_t id = text.size() > 18 ? -1 : std::stoll(text);
      if (id < 0 || id >= info_.vocab_size)
        throw UsageError(fmt::format("{}.target={}: not a token id in [0, {})", kName, text, info_.vocab_size));
      return id;
    }
    const Tokenizer* tokenizer = model_->tokenizer();
    if (!tokenizer) throw UsageError(fmt::format("{}.target='{}': the model has no tokenizer; give a token id", kName, text));
    const std::vector<std::int64_t> ids = tokenizer->encode(text, /*add_special_tokens=*/false);
    if (ids.size() != 1)
      throw UsageError(fmt::format("{}.target='{}' is {} tokens, not one; give a single token or its id", kName, text, ids.size()));
    return ids[0];
  }

  // A prompt's passes come one after the other: one still pending when the next starts never saw hook_logits.
  [[noreturn]] static void no_logits(const Key& key) {
    throw Error(fmt::format("logit_lens: prompt {} step {} has no hook_logits capture: capture hook_logits (or run it live "
                            "with --analyze logit_lens)", key.prompt, key.step));
  }

  std::map<Key, Pass>::iterator start_pass(const Key& key, const CaptureContext& ctx, std::int64_t length) {
    for (const auto& [other, pending] : passes_)
      if (other.prompt == key.prompt) no_logits(other);
    Pass& pass = passes_[key];
    pass.key = key;
    const std::int64_t first = ctx.query_offset, end = ctx.query_offset + length;
    if (positions_all_) {
      for (std::int64_t p = first; p < end; ++p) pass.positions.push_back(p);
    } else if (!positions_.empty()) {
      for (int p : positions_)
        if (p >= first && p < end) pass.positions.push_back(p);
    } else {
      pass.positions.push_back(end - 1);
    }
    const size_t L = size_t(info_.n_layers);
    pass.resid_post.resize(L), pass.result.resize(L), pass.attn_out.resize(L), pass.mlp_out.resize(L);
    return passes_.find(key);
  }

  // The chosen positions' rows of a capture [1, pos, ...] (copied: captures live for the call only).
  static at::Tensor rows_of(const Pass& pass, std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor) {
    std::vector<std::int64_t> rows;
    for (std::int64_t p : pass.positions) {
      const std::int64_t r = p - ctx.query_offset;
      if (r < 0 || r >= tensor.size(1))
        throw Error(fmt::format("logit_lens: {} of prompt {} step {} does not cover position {}", hook, ctx.prompt, ctx.step, p));
      rows.push_back(r);
    }
    return tensor.select(0, 0).index_select(0, at::tensor(rows, at::kLong)).to(at::kFloat).contiguous();
  }

  at::Tensor& slot(std::vector<at::Tensor>& per_layer, int layer, std::string_view hook) const {
    if (layer < 0 || layer >= info_.n_layers) throw Error(fmt::format("logit_lens: {} is not a layer of the model", hook));
    return per_layer[size_t(layer)];
  }

  static std::string missing_of(const std::vector<at::Tensor>& per_layer, std::string_view suffix) {
    for (size_t l = 0; l < per_layer.size(); ++l)
      if (!per_layer[l].defined()) return hn::in_layer(int(l), suffix);
    return "";
  }

  void finish_pass(const Pass& pass, const at::Tensor& logits) {
    if (const std::string missing = missing_of(pass.resid_post, hn::resid_post); !missing.empty())
      throw Error(fmt::format("logit_lens: prompt {} step {} has no {} capture: capture blocks.*.hook_resid_post "
                              "(or run it live with --analyze logit_lens)", pass.key.prompt, pass.key.step, missing));
    const std::int64_t P = std::int64_t(pass.positions.size()), L = info_.n_layers, H = info_.n_heads;
    // Lens: [P, rows, D] with rows = embeddings (when captured) and every layer's resid_post.
    std::vector<at::Tensor> streams;
    if (pass.embed.defined()) streams.push_back(pass.embed);
    for (const auto& t : pass.resid_post) streams.push_back(t);
    const at::Tensor stacked = at::stack(streams, 1);
    const at::Tensor lens_logits = model_->unembed(stacked);      // [P, rows, V]
    const at::Tensor lens_probs = at::softmax(lens_logits.to(at::kDouble), -1);
    const at::Tensor final_probs = at::softmax(logits.to(at::kDouble), -1);  // [P, V]
    const auto top = at::topk(lens_probs, std::min<std::int64_t>(top_k_, info_.vocab_size), -1);
    const at::Tensor top_probs = std::get<0>(top), top_ids = std::get<1>(top);

    std::string dla_missing;
    for (const auto& [per_layer, suffix] : {std::pair{&pass.result, hn::result}, {&pass.attn_out, hn::attn_out},
                                           {&pass.mlp_out, hn::mlp_out}})
      if (dla_missing.empty()) dla_missing = missing_of(*per_layer, suffix);
    if (dla_missing.empty() && !pass.embed.defined()) dla_missing = hn::in_layer(0, hn::resid_pre);
    at::Tensor components, constant;
    if (dla_missing.empty()) {
      // [P, C, D]: embeddings, then per layer its heads, its output bias (attn_out - sum of heads), its MLP.
      std::vector<at::Tensor> parts{pass.embed.unsqueeze(1)};
      for (std::int64_t l = 0; l < L; ++l) {
        const at::Tensor& heads = pass.result[size_t(l)];
        parts.push_back(heads);
        parts.push_back((pass.attn_out[size_t(l)] - heads.sum(1)).unsqueeze(1));
        parts.push_back(pass.mlp_out[size_t(l)].unsqueeze(1));
      }
      components = at::cat(parts, 1);
      constant = model_->unembed(at::zeros({1, info_.d_model}, at::kFloat)).select(0, 0);  // beta W_U + b_U
    }
    for (std::int64_t p = 0; p < P; ++p) {
      Entry e;
      const at::Tensor final_logits = logits.select(0, p);
      e.final_id = final_logits.argmax().item<std::int64_t>();
      e.final_logit = final_logits[e.final_id].item<double>();
      e.final_prob = final_probs[p][e.final_id].item<double>();
      const std::int64_t rows = stacked.size(1);
      for (std::int64_t r = 0; r < rows; ++r) {
        LensLayer layer;
        layer.layer = int(r) - (pass.embed.defined() ? 1 : 0);
        const at::Tensor ids = top_ids[p][r].contiguous(), probs = top_probs[p][r].contiguous();
        layer.top_ids.assign(ids.data_ptr<std::int64_t>(), ids.data_ptr<std::int64_t>() + ids.numel());
        layer.top_probs.assign(probs.data_ptr<double>(), probs.data_ptr<double>() + probs.numel());
        const at::Tensor row = lens_logits[p][r];
        layer.final_rank = (row > row[e.final_id]).sum().item<std::int64_t>();
        layer.final_prob = lens_probs[p][r][e.final_id].item<double>();
        e.lens.push_back(std::move(layer));
      }
      if (components.defined()) {
        Dla d;
        d.target = target_.value_or(e.final_id);
        // The linear part of the final norm and unembedding, the scale frozen at the final residual.
        const at::Tensor by_part = model_->unembed(components[p], pass.resid_post.back()[p].unsqueeze(0))
                                       .select(1, d.target).to(at::kDouble).contiguous();
        const double* v = by_part.data_ptr<double>();
        d.logit = final_logits[d.target].item<double>();
        d.constant = constant[d.target].item<double>();
        d.embeddings = v[0];
        std::int64_t i = 1;
        for (std::int64_t l = 0; l < L; ++l) {
          LayerDla layer;
          layer.heads.assign(v + i, v + i + H);
          layer.attn_bias = v[i + H];
          layer.mlp = v[i + H + 1];
          i += H + 2;
          d.layers.push_back(std::move(layer));
        }
        e.dla = std::move(d);
      } else {
        e.dla_missing = dla_missing;
      }
      Key key = pass.key;
      key.position = pass.positions[size_t(p)];
      entries_[key] = std::move(e);
    }
  }

  // ---- state ----------------------------------------------------------------------------------

  static json entry_state(const Key& key, const Entry& e) {
    json lens = json::array();
    for (const LensLayer& l : e.lens)
      lens.push_back({{"layer", l.layer}, {"top_ids", l.top_ids}, {"top_probs", l.top_probs},
                      {"final_rank", l.final_rank}, {"final_prob", l.final_prob}});
    json dla;
    if (e.dla) {
      json layers = json::array();
      for (size_t l = 0; l < e.dla->layers.size(); ++l)
        layers.push_back({{"layer", int(l)}, {"heads", e.dla->layers[l].heads}, {"attn_bias", e.dla->layers[l].attn_bias},
                          {"mlp", e.dla->layers[l].mlp}});
      dla = {{"target", e.dla->target}, {"logit", e.dla->logit}, {"constant", e.dla->constant},
             {"embeddings", e.dla->embeddings}, {"layers", std::move(layers)}};
    }
    return {{"prompt", key.prompt}, {"block", key.block}, {"step", key.step}, {"phase", phase_name(key.phase)},
            {"position", key.position}, {"final_id", e.final_id}, {"final_prob", e.final_prob},
            {"final_logit", e.final_logit}, {"lens", std::move(lens)}, {"dla", std::move(dla)},
            {"dla_missing", e.dla_missing}};
  }

  Entry read_entry(const json& s, Key& key) const {
    constexpr int kBig = std::numeric_limits<int>::max();
    key.prompt = state_index(s.at("prompt"), kBig, "prompt");
    key.block = s.at("block") == -1 ? -1 : state_index(s.at("block"), kBig, "block");
    key.step = state_index(s.at("step"), kBig, "step");
    const auto phase = parse_phase(s.at("phase").get<std::string>());
    if (!phase) throw Error("an entry's phase is not prefill, decode or denoise");
    key.phase = *phase;
    key.position = state_index(s.at("position"), info_.n_ctx, "position");
    Entry e;
    e.final_id = state_index(s.at("final_id"), info_.vocab_size, "token id");
    e.final_prob = state_number(s.at("final_prob"), "probability");
    e.final_logit = state_number(s.at("final_logit"), "logit");
    const json& lens = state_array(s.at("lens"), "lens");
    if (lens.size() != size_t(info_.n_layers) && lens.size() != size_t(info_.n_layers) + 1)
      throw Error(fmt::format("an entry's lens has {} layers, the model {}", lens.size(), info_.n_layers));
    int expected = int(info_.n_layers) - int(lens.size());  // -1 with the embeddings' row
    for (const json& l : lens) {
      LensLayer layer;
      layer.layer = l.at("layer") == -1 ? -1 : state_index(l.at("layer"), info_.n_layers, "layer");
      if (layer.layer != expected++) throw Error("an entry's lens layers are out of order");
      const json& ids = state_array(l.at("top_ids"), "top_ids");
      if (ids.empty() || ids.size() > size_t(top_k_)) throw Error(fmt::format("{} top tokens, more than top_k {}", ids.size(), top_k_));
      for (const json& id : ids) layer.top_ids.push_back(state_index(id, info_.vocab_size, "token id"));
      layer.top_probs = state_numbers(l.at("top_probs"), ids.size(), "top_probs");
      layer.final_rank = state_index(l.at("final_rank"), info_.vocab_size, "rank");
      layer.final_prob = state_number(l.at("final_prob"), "probability");
      e.lens.push_back(std::move(layer));
    }
    const json& dla = s.at("dla");
    if (!dla.is_null()) {
      Dla d;
      d.target = state_index(dla.at("target"), info_.vocab_size, "token id");
      d.logit = state_number(dla.at("logit"), "logit");
      d.constant = state_number(dla.at("constant"), "constant");
      d.embeddings = state_number(dla.at("embeddings"), "embeddings");
      const json& layers = state_array(dla.at("layers"), "dla layers");
      if (layers.size() != size_t(info_.n_layers)) throw Error(fmt::format("attribution of {} layers, the model has {}", layers.size(), info_.n_layers));
      for (size_t l = 0; l < layers.size(); ++l) {
        if (state_index(layers[l].at("layer"), info_.n_layers, "layer") != int(l)) throw Error("attribution layers out of order");
        LayerDla layer;
        layer.heads = state_numbers(layers[l].at("heads"), size_t(info_.n_heads), "heads");
        layer.attn_bias = state_number(layers[l].at("attn_bias"), "attn_bias");
        layer.mlp = state_number(layers[l].at("mlp"), "mlp");
        d.layers.push_back(std::move(layer));
      }
      e.dla = std::move(d);
    }
    e.dla_missing = s.at("dla_missing").get<std::string>();
    return e;
  }

  // ---- report ---------------------------------------------------------------------------------

  std::string token_text(std::int64_t id) const {
    const Tokenizer* tokenizer = model_ ? model_->tokenizer() : nullptr;
    return tokenizer ? tokenizer->token_string(id) : fmt::format("#{}", id);
  }

  json entry_json(const Key& key, const Entry& e, const json& manifest) const {
    const std::vector<std::string> tokens = analysis::position_tokens(manifest, key.prompt);
    // The token at the position, when the manifest shows it (generated ones too; "<mask>" in diffusion).
    const json input = size_t(key.position) < tokens.size() ? json(tokens[size_t(key.position)]) : json();
    json lens = json::array();
    json first_top1 = nullptr;
    for (const LensLayer& l : e.lens) {
      json top = json::array();
      for (size_t i = 0; i < l.top_ids.size(); ++i)
        top.push_back({{"id", l.top_ids[i]}, {"token", token_text(l.top_ids[i])}, {"prob", l.top_probs[i]}});
      if (first_top1.is_null() && l.final_rank == 0) first_top1 = l.layer;
      lens.push_back({{"layer", l.layer}, {"top", std::move(top)}, {"final_rank", l.final_rank}, {"final_prob", l.final_prob}});
    }
    json j = {{"prompt", key.prompt}, {"phase", phase_name(key.phase)}, {"step", key.step}, {"block", key.block},
              {"position", key.position}, {"input_token", input},
              {"final", {{"id", e.final_id}, {"token", token_text(e.final_id)}, {"prob", e.final_prob}, {"logit", e.final_logit}}},
              {"first_top1_layer", first_top1}, {"lens", std::move(lens)}};
    if (!e.dla) {
      j["dla"] = nullptr;
      j["dla_missing"] = e.dla_missing;
      return j;
    }
    const Dla& d = *e.dla;
    json heads = json::array(), bias = json::array(), mlp = json::array();
    double sum = d.embeddings, best = 0;
    json top_head = nullptr;
    for (size_t l = 0; l < d.layers.size(); ++l) {
      heads.push_back(d.layers[l].heads);
      bias.push_back(d.layers[l].attn_bias);
      mlp.push_back(d.layers[l].mlp);
      sum += d.layers[l].attn_bias + d.layers[l].mlp;
      for (size_t h = 0; h < d.layers[l].heads.size(); ++h) {
        const double v = d.layers[l].heads[h];
        sum += v;
        if (top_head.is_null() || std::abs(v) > std::abs(best))
          best = v, top_head = {{"layer", int(l)}, {"head", int(h)}, {"value", v}};
      }
    }
    j["dla"] = {{"target", {{"id", d.target}, {"token", token_text(d.target)}}},
                {"logit", d.logit},
                {"constant", d.constant},
                {"embeddings", d.embeddings},
                {"heads", std::move(heads)},
                {"attn_bias", std::move(bias)},
                {"mlp", std::move(mlp)},
                {"sum", sum},
                {"error", d.logit - d.constant - sum},
                {"largest_head", std::move(top_head)}};
    return j;
  }

  static std::string headline_of(const Key& key, const json& j) {
    std::string where = key.phase == Phase::prefill ? "" : fmt::format(" step {}", key.step);
    std::string line = fmt::format("prompt {}{} position {}: final top-1 '{}' (p {:.3f})", key.prompt, where, key.position,
                                   j["final"]["token"].get<std::string>(), j["final"]["prob"].get<double>());
    const json& first = j["first_top1_layer"];
    line += first.is_null() ? "" : first.get<int>() < 0 ? ", already top-1 from the embeddings"
                                                         : fmt::format(", first top-1 at layer {}", first.get<int>());
    if (j["dla"].is_object() && j["dla"]["largest_head"].is_object()) {
      const json& h = j["dla"]["largest_head"];
      line += fmt::format("; largest direct contribution head L{}.H{} ({:+.3f})", h["layer"].get<int>(), h["head"].get<int>(),
                          h["value"].get<double>());
    }
    return line;
  }

  static json definitions() {
    return {
        {"lens", "per layer (-1: the embeddings, blocks.0.hook_resid_pre; L: blocks.L.hook_resid_post), the model's "
                 "final norm and unembedding applied to the residual stream at the position: its top_k tokens with "
                 "their probabilities, and the rank (0 = top) and probability there of the final prediction"},
        {"final", "the model's prediction at the position: top-1 of hook_logits, its probability and logit"},
        {"first_top1_layer", "the first lens layer whose top-1 is the final prediction (null: none)"},
        {"dla", "direct logit attribution to the target token: each part of the final residual stream (embeddings, "
                "each head's blocks.L.attn.hook_result, each attention output bias = hook_attn_out - the heads' sum, "
                "each hook_mlp_out) through the final norm with its scale frozen at the final residual stream "
                "(LayerNorm: centred, divided by the final residual's standard deviation; RMSNorm: divided by its "
                "rms), times its weight, then W_U; no norm bias, no unembedding bias"},
        {"dla.constant", "what no part contributes: the norm bias and unembedding bias at the target (unembed(0))"},
        {"dla.error", "logit - constant - sum of every part: zero up to float rounding"},
        {"heads.dla_mean", "per (layer, head): dla heads averaged over the entries"}};
  }

  const Model* model_ = nullptr;
  ModelInfo info_;
  std::int64_t top_k_ = 5;
  bool positions_all_ = false;
  std::vector<int> positions_;
  std::optional<std::int64_t> target_;
  json options_json_;
  std::map<Key, Entry> entries_;
  std::map<Key, Pass> passes_;  // forward passes begun and not yet ended by hook_logits
};

}  // namespace
}  // namespace hooklens

HOOKLENS_DEFINE_PLUGIN(hooklens::Analyzer, hooklens::LogitLens, "analyzer", "logit_lens", "1.0",
                       "logit lens per layer and direct logit attribution per head and MLP (needs the model)")
