#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/json_read.h>
#include <hooklens/run.h>
#include <hooklens/text.h>
#include <hooklens/weights.h>

#include <c10/core/ScalarType.h>
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <string_view>
#include <utility>
#include <vector>
#include <iterator>

namespace fs = std::filesystem;

namespace hooklens {
namespace {

using nlohmann::json;

constexpr std::int64_t kMaxPositions = kMaxRunPositions;
constexpr std::int64_t kMaxInt = std::numeric_limits<int>::max();
// Far past any model (the largest have ~128 layers and ~128 heads); renderers lay out and loop over
// layers x heads, so a manifest claiming a million of each made them run for days (found by fuzzing).
constexpr std::int64_t kMaxLayers = 4096, kMaxHeads = 4096;

// Checks a manifest, failing with one line "MANIFEST: WHERE ...".
class Checker {
 public:
  explicit Checker(fs::path file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& what) const { throw Error(fmt::format("{}: {}", file_.string(), what)); }

  // Integer field `name` of `object` (described as `where`) in [lo, hi]; `fallback` when absent, or
  // required when there is none. `suffix` ends the message (the capture key).
  std::int64_t integer(const json& object, const char* name, const std::string& where, std::int64_t lo, std::int64_t hi,
                       std::optional<std::int64_t> fallback = std::nullopt, const std::string& suffix = "") const {
    const auto it = object.find(name);
    if (it == object.end() && fallback) return *fallback;
    if (it == object.end() || !it->is_number_integer())
      fail(fmt::format("{} has no integer field '{}'{}", where, name, suffix));
    return in_range(*it, fmt::format("{} field '{}'", where, name), lo, hi, suffix);
  }

  // `v` (an integer) in [lo, hi].
  std::int64_t in_range(const json& v, const std::string& what, std::int64_t lo, std::int64_t hi,
                        const std::string& suffix = "") const {
    if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t(hi)) ||
        v.get<std::int64_t>() < lo || v.get<std::int64_t>() > hi)
      fail(fmt::format("{} is {}, not an integer in [{}, {}]{}", what, brief_json(v), lo, hi, suffix));
    return v.get<std::int64_t>();
  }

  // An array field of integers in [lo, hi] (or equal to `also`); nullopt when absent.
  std::optional<std::vector<std::int64_t>> ids(const json& object, const char* name, const std::string& where,
                                                std::int64_t lo, std::int64_t hi,
                                                std::optional<std::int64_t> also = std::nullopt) const {
    const auto it = object.find(name);
    if (it == object.end()) return std::nullopt;
    if (!it->is_array()) fail(fmt::format("{} field '{}' is not an array", where, name));
    std::vector<std::int64_t> out;
    out.reserve(it->size());
    for (std::size_t i = 0; i < it->size(); ++i) {
      const json& v = (*it)[i];
      if (also && v.is_number_integer() && v.get<std::int64_t>() == *also && !v.is_number_unsigned()) {
        out.push_back(*also);
        continue;
      }
      out.push_back(in_range(v, fmt::format("{} field '{}' [{}]", where, name, i), lo, hi));
    }
    return out;
  }

  void string_field(const json& object, const char* name, const std::string& where) const {
    const auto it = object.find(name);
    if (it != object.end() && !it->is_string()) fail(fmt::format("{} field '{}' is not a string", where, name));
  }

  const json* section(const json& manifest, const char* name) const {
    const auto it = manifest.find(name);
    if (it == manifest.end()) return nullptr;
    if (!it->is_object()) fail(fmt::format("\"{}\" is not an object", name));
    return &*it;
  }

 private:
  fs::path file_;
};

// True if `hook` ends in ".LEAF" for the last part LEAF of `point` (".hook_pattern" for
// "attn.hook_pattern"): TorchScript models name their points freely, their patterns included.
bool ends_in_leaf(std::string_view hook, std::string_view point) {
  const std::size_t dot = point.rfind('.');
  const std::string dot_leaf = "." + std::string(dot == std::string_view::npos ? point : point.substr(dot + 1));
  return hook.size() > dot_leaf.size() && ends_with(hook, dot_leaf);
}

// Hook points whose dimension 1 is the position ([batch, pos, ...]) in the models hooklens builds.
bool position_at_dim1(const std::string& hook) {
  namespace hn = hook_names;
  for (std::string_view point : {hn::embed, hn::pos_embed, hn::resid_pre, hn::resid_mid, hn::resid_post, hn::attn_out,
                                 hn::mlp_out, hn::q, hn::k, hn::v, hn::rot_q, hn::rot_k, hn::z, hn::mlp_pre,
                                 hn::mlp_pre_linear, hn::mlp_post, hn::final_norm, hn::logits})
    if (hn::is_point(hook, point)) return true;
  return false;
}

// The manifest as a whole (RunCheck::consistent): its sections, and each capture against them.
void check_consistency(const Checker& check, const json& manifest, const std::vector<CaptureEntry>& entries) {
  // ---- model
  std::int64_t n_layers = -1, n_heads = -1, vocab = 0, n_ctx = 0;  // -1 / 0: unknown
  bool torchscript = false;
  if (const json* model = check.section(manifest, "model")) {
    const std::string where = "\"model\"";
    auto size = [&](const char* name, std::int64_t hi) {
      return model->contains(name) ? check.integer(*model, name, where, 0, hi) : -1;
    };
    n_layers = size("n_layers", kMaxLayers);
    n_heads = size("n_heads", kMaxHeads);
    for (const char* name : {"n_kv_heads", "d_model", "d_head", "d_mlp", "window_size"}) size(name, kMaxInt);
    vocab = std::max<std::int64_t>(0, size("vocab_size", kMaxPositions));
    n_ctx = std::max<std::int64_t>(0, size("n_ctx", kMaxPositions));
    for (const char* name : {"adapter", "architecture", "path", "weight_dtype"}) check.string_field(*model, name, where);
    torchscript = model->value("architecture", json()) == "torchscript";
    if (model->contains("layer_attention")) {
      const json& kinds = (*model)["layer_attention"];
      if (!kinds.is_array() || (n_layers >= 0 && std::int64_t(kinds.size()) != n_layers))
        check.fail(fmt::format("\"model\" field 'layer_attention' is not a list of {} attention kinds", n_layers));
      for (const json& k : kinds)
        if (k != "causal" && k != "local" && k != "bidirectional")
          check.fail(fmt::format("\"model\" field 'layer_attention' has {}, not causal, local or bidirectional", brief_json(k)));
    }
    for (const char* name : {"bos_id", "eos_id", "mask_id"})
      if (model->contains(name) && !(*model)[name].is_null())
        check.integer(*model, name, where, 0, vocab > 0 ? vocab - 1 : kMaxPositions);
  }
  const std::int64_t id_max = vocab > 0 ? vocab - 1 : kMaxPositions;

  // ---- prompts
  std::vector<std::optional<std::int64_t>> prompt_length;  // per prompt, when it lists its ids
  const bool has_prompts = manifest.contains("prompts");
  if (has_prompts) {
    const json& prompts = manifest["prompts"];
    if (!prompts.is_array()) check.fail("\"prompts\" is not an array");
    for (std::size_t p = 0; p < prompts.size(); ++p) {
      const std::string where = fmt::format("prompt {}", p);
      const json& prompt = prompts[p];
      if (!prompt.is_object()) check.fail(where + " is not an object");
      // Every reader of a whole run indexes the ids (analyzers, the HTML report) or the tokens
      // (figures, the viewer), and a prompt's length bounds its captures' offsets: both required.
      const auto ids = check.ids(prompt, "ids", where, 0, id_max);
      if (!ids) check.fail(where + " has no 'ids' array");
      for (const char* name : {"text", "source"}) check.string_field(prompt, name, where);
      if (!prompt.contains("tokens") || !prompt["tokens"].is_array()) check.fail(where + " has no 'tokens' array");
      const json& tokens = prompt["tokens"];
      for (const json& t : tokens)
        if (!t.is_string()) check.fail(where + " field 'tokens' holds a non-string");
      if (tokens.size() != ids->size())
        check.fail(fmt::format("{} lists {} tokens for {} ids", where, tokens.size(), ids->size()));
      prompt_length.push_back(std::int64_t(ids->size()));
    }
  }

  // ---- capture (the slicing the run used)
  std::int64_t captured_heads = n_heads > 0 ? n_heads : -1;
  if (const json* capture = check.section(manifest, "capture")) {
    const auto heads = check.ids(*capture, "heads", "\"capture\"", 0, n_heads > 0 ? n_heads - 1 : kMaxInt);
    if (heads && !heads->empty()) {
      if (std::set<std::int64_t>(heads->begin(), heads->end()).size() != heads->size())
        check.fail("\"capture\" field 'heads' lists a head twice");
      captured_heads = std::int64_t(heads->size());
    }
  }

  // ---- generation
  GenerationMode mode = GenerationMode::none;
  std::int64_t steps = -1, generated = -1, blocks = -1;  // -1: the manifest does not say
  if (const json* g = check.section(manifest, "generation")) {
    const std::string where = "\"generation\"";
    try {
      mode = decode_generation_mode(manifest);
    } catch (const Error& e) {
      check.fail(e.what());
    }
    const std::int64_t P0 = prompt_length.empty() || !prompt_length[0] ? -1 : *prompt_length[0];
    if (g->contains("steps") && !(*g)["steps"].is_array()) check.fail(where + " field 'steps' is not an array");
    static const json kNoSteps = json::array();
    const json& all = g->contains("steps") ? (*g)["steps"] : kNoSteps;
    if (g->contains("steps")) steps = std::int64_t(all.size());
    for (std::size_t s = 0; s < all.size(); ++s)
      if (!all[s].is_object()) check.fail(fmt::format("generation step {} is not an object", s));
    if (mode == GenerationMode::masked_diffusion) {
      // The mask may stand anywhere in the sequences; other ids are within the vocabulary.
      const std::optional<std::int64_t> mask =
          g->contains("mask_id") ? std::optional<std::int64_t>(check.integer(*g, "mask_id", where, 0, id_max)) : std::nullopt;
      if (P0 >= 0 && g->contains("prompt_length")) check.integer(*g, "prompt_length", where, P0, P0);
      if (g->contains("gen_length")) generated = check.integer(*g, "gen_length", where, 1, kMaxPositions);
      const auto output = check.ids(*g, "output_ids", where, 0, id_max, mask);
      std::int64_t T = -1;  // positions of the sequence: the prompt and the generated region
      if (output) {
        T = std::int64_t(output->size());
        if (P0 >= 0 && generated >= 0 && T != P0 + generated)
          check.fail(fmt::format("{} field 'output_ids' has {} ids, not prompt 0's {} and 'gen_length' {}", where, T, P0,
                                 generated));
        if (P0 >= 0 && T < P0)
          check.fail(fmt::format("{} field 'output_ids' has {} ids, fewer than prompt 0's {}", where, T, P0));
        if (P0 >= 0) generated = T - P0;
      } else if (P0 >= 0 && generated >= 0) {
        T = P0 + generated;
      }
      if (g->contains("block_length") && generated > 0) {
        const std::int64_t block = check.integer(*g, "block_length", where, 1, std::max<std::int64_t>(1, generated));
        if (generated % block) check.fail(fmt::format("{} field 'block_length' {} does not divide the {} generated positions", where, block, generated));
        blocks = generated / block;
      }
      check.ids(*g, "new_ids", where, 0, id_max, mask);
      for (std::size_t s = 0; s < all.size(); ++s) {
        const std::string at = fmt::format("generation step {}", s);
        check.integer(all[s], "step", at, std::int64_t(s), std::int64_t(s));
        check.integer(all[s], "block", at, 0, blocks > 0 ? blocks - 1 : kMaxInt);
        const auto ids = check.ids(all[s], "ids", at, 0, id_max, mask);
        if (!ids) check.fail(fmt::format("{} has no 'ids'", at));
        if (T < 0) T = std::int64_t(ids->size());  // every step lists the whole sequence
        if (std::int64_t(ids->size()) != T)
          check.fail(fmt::format("{} field 'ids' has {} ids, not the {} positions of the sequence", at, ids->size(), T));
        if (P0 >= 0 && T < P0) check.fail(fmt::format("{} field 'ids' has {} ids, fewer than prompt 0's {}", at, T, P0));
        check.ids(all[s], "committed", at, 0, T - 1);
      }
      if (generated < 0 && T >= 0 && P0 >= 0) generated = T - P0;
      if (g->contains("token_strings")) {
        const json& strings = (*g)["token_strings"];
        if (!strings.is_object()) check.fail(where + " field 'token_strings' is not an object");
        for (const auto& [id, text] : strings.items())
          if (!text.is_string()) check.fail(fmt::format("{} field 'token_strings' maps '{}' to a non-string", where, id));
      }
    } else {
      const auto output = check.ids(*g, "output_ids", where, 0, id_max);
      const auto fresh = check.ids(*g, "new_ids", where, 0, id_max);
      if (mode == GenerationMode::autoregressive) {
        if (output && P0 >= 0 && steps >= 0 && std::int64_t(output->size()) != P0 + steps)
          check.fail(fmt::format("{} field 'output_ids' has {} ids, not prompt 0's {} and the {} steps' tokens", where,
                                 output->size(), P0, steps));
        if (fresh && steps >= 0 && std::int64_t(fresh->size()) != steps)
          check.fail(fmt::format("{} field 'new_ids' has {} ids for {} steps", where, fresh->size(), steps));
        for (std::size_t s = 0; s < all.size(); ++s) {
          const std::string at = fmt::format("generation step {}", s);
          check.integer(all[s], "step", at, std::int64_t(s), std::int64_t(s));
          if (all[s].contains("token")) check.integer(all[s], "token", at, 0, id_max);
          check.string_field(all[s], "token_string", at);
        }
      }
    }
  }

  // ---- each capture against the sections
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const CaptureEntry& e = entries[i];
    const CaptureContext& c = e.context;
    const std::string where = fmt::format("capture {}", i), of = fmt::format(" (capture key '{}')", e.key);
    auto bad = [&](const std::string& what) { check.fail(fmt::format("{} {}{}", where, what, of)); };
    if (has_prompts && std::size_t(c.prompt) >= prompt_length.size())
      bad(fmt::format("field 'prompt' is {}, but the run has {} prompt(s)", c.prompt, prompt_length.size()));
    if (n_layers >= 0 && c.layer >= n_layers)
      bad(fmt::format("field 'layer' is {}, but the model has {} layer(s)", c.layer, n_layers));
    if (mode != GenerationMode::none && steps >= 0 && c.step >= std::max<std::int64_t>(steps, 1))
      bad(fmt::format("field 'step' is {}, but the generation has {} step(s)", c.step, steps));
    if (mode == GenerationMode::masked_diffusion && blocks > 0 && c.block >= blocks)
      bad(fmt::format("field 'block' is {}, but the generation has {} block(s)", c.block, blocks));

    // Positions the forward pass saw: the prompt, and the tokens generated before this step.
    std::int64_t positions = -1;
    const std::optional<std::int64_t> P =
        std::size_t(c.prompt) < prompt_length.size() ? prompt_length[std::size_t(c.prompt)] : std::nullopt;
    if (P && mode == GenerationMode::autoregressive) positions = *P + c.step;
    else if (P && mode == GenerationMode::masked_diffusion) positions = generated >= 0 ? *P + generated : -1;
    else if (P) positions = *P;
    else if (!has_prompts && n_ctx > 0) positions = n_ctx;
    const bool pattern = ends_in_leaf(e.hook, hook_names::pattern) || ends_in_leaf(e.hook, hook_names::attn_scores);
    // Only patterns have a key dimension to slice; elsewhere the viewer would place columns by it.
    if (!pattern && c.key_offset != 0)
      bad(fmt::format("field 'key_offset' is {}, but only attention patterns have key positions", c.key_offset));
    if (pattern && e.shape.size() == 4) {  // [batch, head, query, key]
      const std::int64_t heads = e.shape[1], Q = e.shape[2], K = e.shape[3];
      if (captured_heads > 0 && heads != captured_heads)
        bad(fmt::format("has {} heads (shape {}), but the run captured {}", heads, brief_json(json(e.shape)), captured_heads));
      if (Q < 1 || K < 1) bad(fmt::format("field 'shape' {} holds no query or no key", brief_json(json(e.shape))));
      if (positions >= 0 && c.query_offset + Q > positions)
        bad(fmt::format("field 'query_offset' {} + {} queries passes the {} positions of its forward pass", c.query_offset, Q, positions));
      if (positions >= 0 && c.key_offset + K > positions)
        bad(fmt::format("field 'key_offset' {} + {} keys passes the {} positions of its forward pass", c.key_offset, K, positions));
    } else if (!torchscript && position_at_dim1(e.hook) && e.shape.size() >= 3) {
      if (positions >= 0 && c.query_offset + e.shape[1] > positions)
        bad(fmt::format("field 'query_offset' {} + {} positions passes the {} positions of its forward pass",
                        c.query_offset, e.shape[1], positions));
    }
  }
}

}  // namespace

void RunReader::open(const fs::path& dir, bool allow_incomplete, RunCheck check) {
  const fs::path file = dir / "manifest.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open run manifest (is {} a hooklens run directory?)", file.string(),
                                   dir.string()));
  nlohmann::json manifest = parse_json_text(std::string(std::istreambuf_iterator<char>(in), {}), file.string());

  if (!manifest.is_object() || manifest.value("format", "") != kRunFormatName)
    throw Error(fmt::format("{}: not a hooklens run manifest (no \"format\": \"hooklens-run\")", file.string()));
  if (!manifest.contains("version") || manifest["version"] != kRunFormatVersion)
    throw Error(fmt::format("{}: unsupported run format version {} (this hooklens reads version 1)", file.string(),
                            brief_json(manifest.value("version", nlohmann::json()))));
  if (!manifest.contains("complete") || !manifest["complete"].is_boolean())
    throw Error(fmt::format("{}: run manifest has no boolean \"complete\"", file.string()));
  if (!manifest["complete"].get<bool>() && !allow_incomplete) {
    const std::string error = manifest.contains("error") ? ": " + brief_json(manifest["error"], 200) : "";
    throw Error(fmt::format("{}: run {} is incomplete (its writer failed, was killed, or is still writing it){}",
                            file.string(), dir.string(), error));
  }
  if (!manifest.contains("captures")) manifest["captures"] = nlohmann::json::array();
  if (!manifest["captures"].is_array()) throw Error(fmt::format("{}: \"captures\" is not an array", file.string()));
  const Checker checker(file);
  std::vector<CaptureEntry> entries;
  entries.reserve(manifest["captures"].size());
  std::vector<RunPrompt> prompts;
  RunGeneration generation;
  std::vector<RunIntervention> interventions;
  try {
    for (std::size_t i = 0; i < manifest["captures"].size(); ++i)
      entries.push_back(decode_capture_entry(manifest["captures"][i], i));
    if (check == RunCheck::consistent) {
      check_consistency(checker, manifest, entries);
      prompts = decode_prompts(manifest);
      generation = decode_generation(manifest);
      interventions = decode_interventions(manifest);
    }
  } catch (const Error& e) {
    if (std::string_view(e.what()).rfind(file.string() + ": ", 0) == 0) throw;  // the checker's, named already
    checker.fail(e.what());
  }

  dir_ = dir;
  manifest_ = std::move(manifest);
  entries_ = std::move(entries);
  consistent_ = check == RunCheck::consistent;
  prompts_ = std::move(prompts);
  generation_ = std::move(generation);
  interventions_ = std::move(interventions);
  cached_file_.clear();
  cached_tensors_.clear();
}

const nlohmann::json& RunReader::capture(std::size_t index) const {
  entry(index);  // checks the index
  return manifest_["captures"][index];
}

const CaptureEntry& RunReader::entry(std::size_t index) const {
  if (index >= capture_count())
    throw Error(fmt::format("{}: capture index {} out of range (the run has {} captures)",
                            (dir_ / "manifest.json").string(), index, capture_count()));
  return entries_[index];
}

const std::vector<RunPrompt>& RunReader::prompts() const {
  if (!consistent_) throw Error(fmt::format("{}: the prompts are decoded by RunCheck::consistent only", (dir_ / "manifest.json").string()));
  return prompts_;
}

const RunGeneration& RunReader::generation() const {
  if (!consistent_) throw Error(fmt::format("{}: the generation is decoded by RunCheck::consistent only", (dir_ / "manifest.json").string()));
  return generation_;
}

const std::vector<RunIntervention>& RunReader::interventions() const {
  if (!consistent_) throw Error(fmt::format("{}: the interventions are decoded by RunCheck::consistent only", (dir_ / "manifest.json").string()));
  return interventions_;
}

at::Tensor RunReader::load(std::size_t index) {
  const CaptureEntry& e = entry(index);
  const fs::path shard = dir_ / e.file;
  if (e.file != cached_file_) {
    cached_tensors_.clear();  // free the previous shard before reading the next
    cached_file_.clear();
    cached_tensors_ = read_safetensors(shard);
    cached_file_ = e.file;
  }
  auto it = cached_tensors_.find(e.key);
  if (it == cached_tensors_.end())
    throw Error(fmt::format("{}: no tensor '{}' (listed as capture {} in the manifest)", shard.string(), e.key, index));
  const at::Tensor& tensor = it->second;
  if (tensor.sizes().vec() != e.shape || safetensors_dtype_name(tensor.scalar_type()) != e.dtype)
    throw Error(fmt::format("{}: tensor '{}' is {} {}, the manifest says {} {} (capture {})", shard.string(), e.key,
                            safetensors_dtype_name(tensor.scalar_type()), nlohmann::json(tensor.sizes().vec()).dump(),
                            e.dtype, nlohmann::json(e.shape).dump(), index));
  return tensor;
}

}  // namespace hooklens
