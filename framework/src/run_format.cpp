#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/json_read.h>
#include <hooklens/run_format.h>
#include <hooklens/text.h>
#include <hooklens/weights.h>

#include <c10/core/ScalarType.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

namespace hooklens {

void write_manifest_file(const std::filesystem::path& file, const nlohmann::json& manifest) {
  std::string text = "{";
  const char* separator = "\n";
  for (const auto& [key, value] : manifest.items()) {
    text += separator + std::string(" ") + nlohmann::json(key).dump() + ": ";
    separator = ",\n";
    if (key != "captures" || !value.is_array() || value.empty()) {
      text += value.dump();
      continue;
    }
    text += "[";
    for (std::size_t i = 0; i < value.size(); ++i) text += (i ? ",\n  " : "\n  ") + value[i].dump();
    text += "\n ]";
  }
  write_file_atomically(file, text + "\n}\n");
}

std::string rank_shard_prefix(int rank) { return fmt::format("captures-rank{:05d}-", rank); }
std::string rank_shard_name(int rank, int index) { return fmt::format("{}{:05d}.safetensors", rank_shard_prefix(rank), index); }
std::string rank_part_name(int rank) { return fmt::format("part-rank{:05d}.json", rank); }
namespace {

using nlohmann::json;

constexpr std::int64_t kMaxInt = std::numeric_limits<int>::max();

[[noreturn]] void fail(const std::string& what) { throw Error(what); }

// `v` (an integer) in [lo, hi]; `what` names it in the refusal, `suffix` ends it.
std::int64_t in_range(const json& v, const std::string& what, std::int64_t lo, std::int64_t hi,
                      const std::string& suffix = "") {
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t(hi)) ||
      v.get<std::int64_t>() < lo || v.get<std::int64_t>() > hi)
    fail(fmt::format("{} is {}, not an integer in [{}, {}]{}", what, brief_json(v), lo, hi, suffix));
  return v.get<std::int64_t>();
}

// Integer field `name` of `object` (described as `where`) in [lo, hi]; `fallback` when absent, or
// required when there is none.
std::int64_t integer(const json& object, const char* name, const std::string& where, std::int64_t lo, std::int64_t hi,
                     std::optional<std::int64_t> fallback = std::nullopt, const std::string& suffix = "") {
  const auto it = object.find(name);
  if (it == object.end() && fallback) return *fallback;
  if (it == object.end() || !it->is_number_integer())
    fail(fmt::format("{} has no integer field '{}'{}", where, name, suffix));
  return in_range(*it, fmt::format("{} field '{}'", where, name), lo, hi, suffix);
}

std::uint64_t unsigned_integer(const json& object, const char* name, const std::string& where, std::uint64_t fallback) {
  const auto it = object.find(name);
  if (it == object.end()) return fallback;
  if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<std::int64_t>() < 0))
    fail(fmt::format("{} field '{}' is {}, not an integer >= 0", where, name, brief_json(*it)));
  return it->get<std::uint64_t>();
}

double number(const json& object, const char* name, const std::string& where, double fallback) {
  const auto it = object.find(name);
  if (it == object.end()) return fallback;
  if (!it->is_number()) fail(fmt::format("{} field '{}' is {}, not a number", where, name, brief_json(*it)));
  return it->get<double>();
}

bool boolean(const json& object, const char* name, const std::string& where, bool fallback) {
  const auto it = object.find(name);
  if (it == object.end()) return fallback;
  if (!it->is_boolean()) fail(fmt::format("{} field '{}' is {}, not true or false", where, name, brief_json(*it)));
  return it->get<bool>();
}

std::optional<std::string> optional_string(const json& object, const char* name, const std::string& where) {
  const auto it = object.find(name);
  if (it == object.end()) return std::nullopt;
  if (!it->is_string()) fail(fmt::format("{} field '{}' is not a string", where, name));
  return it->get<std::string>();
}

// An array field of integers in [lo, hi]; empty when absent unless `required`.
std::vector<std::int64_t> ids(const json& object, const char* name, const std::string& where, std::int64_t lo,
                              std::int64_t hi, bool required = false) {
  const auto it = object.find(name);
  if (it == object.end()) {
    if (required) fail(fmt::format("{} has no '{}' array", where, name));
    return {};
  }
  if (!it->is_array()) fail(fmt::format("{} field '{}' is not an array", where, name));
  std::vector<std::int64_t> out;
  out.reserve(it->size());
  for (std::size_t i = 0; i < it->size(); ++i)
    out.push_back(in_range((*it)[i], fmt::format("{} field '{}' [{}]", where, name, i), lo, hi));
  return out;
}

const json* section(const json& manifest, const char* name) {
  if (!manifest.is_object()) return nullptr;
  const auto it = manifest.find(name);
  if (it == manifest.end()) return nullptr;
  if (!it->is_object()) fail(fmt::format("\"{}\" is not an object", name));
  return &*it;
}

// Token ids are not bounded by the model here (RunCheck::consistent does that); the mask and any
// other id are integers >= 0.
constexpr std::int64_t kMaxId = kMaxRunPositions;

TokenStep decode_token_step(const json& s, std::size_t index) {
  const std::string where = fmt::format("generation step {}", index);
  if (!s.is_object()) fail(where + " is not an object");
  TokenStep step;
  step.step = int(integer(s, "step", where, 0, kMaxInt));
  step.phase = step.step == 0 ? Phase::prefill : Phase::decode;
  if (const auto phase = optional_string(s, "phase", where)) {
    const auto parsed = parse_phase(*phase);
    if (!parsed || *parsed == Phase::denoise)
      fail(fmt::format("{} field 'phase' is '{}', not prefill or decode", where, brief_text(*phase, 40)));
    step.phase = *parsed;
  }
  step.query_offset = integer(s, "query_offset", where, 0, kMaxRunPositions, 0);
  if (s.contains("token")) step.token = integer(s, "token", where, 0, kMaxId);
  step.token_string = optional_string(s, "token_string", where);
  return step;
}

DenoiseStep decode_denoise_step(const json& s, std::size_t index) {
  const std::string where = fmt::format("generation step {}", index);
  if (!s.is_object()) fail(where + " is not an object");
  DenoiseStep step;
  step.step = int(integer(s, "step", where, 0, kMaxInt));
  step.block = int(integer(s, "block", where, 0, kMaxInt));
  step.ids = ids(s, "ids", where, 0, kMaxId, /*required=*/true);
  step.committed = ids(s, "committed", where, 0, kMaxRunPositions);
  if (const auto it = s.find("confidences"); it != s.end()) {
    if (!it->is_array()) fail(where + " field 'confidences' is not an array");
    for (const json& c : *it) {
      // A NaN confidence was written as null (JSON has no NaN).
      if (!c.is_number() && !c.is_null()) fail(fmt::format("{} field 'confidences' holds {}", where, brief_json(c)));
      step.confidences.push_back(c.is_null() ? std::nan("") : c.get<double>());
    }
  }
  return step;
}

}  // namespace

// ---- capture entries

json encode_capture_entry(const CaptureEntry& e) {
  const CaptureContext& c = e.context;
  return {{"key", e.key},
          {"hook", e.hook},
          {"prompt", c.prompt},
          {"phase", phase_name(c.phase)},
          {"step", c.step},
          {"block", c.block},
          {"layer", c.layer},
          {"query_offset", c.query_offset},
          {"key_offset", c.key_offset},
          {"pass", c.pass},
          {"shape", e.shape},
          {"dtype", e.dtype},
          {"file", e.file}};
}

CaptureEntry decode_capture_entry(const json& entry, std::size_t index) {
  namespace fs = std::filesystem;
  const std::string where = fmt::format("capture {}", index);
  if (!entry.is_object()) fail(where + " is not an object");
  for (const char* field : {"key", "hook", "file", "dtype"})
    if (!entry.contains(field) || !entry[field].is_string()) fail(fmt::format("{} has no string field '{}'", where, field));
  CaptureEntry e;
  e.key = entry["key"].get<std::string>();
  e.hook = entry["hook"].get<std::string>();
  e.file = entry["file"].get<std::string>();
  e.dtype = entry["dtype"].get<std::string>();
  if (e.file.empty() || e.file == "." || e.file == ".." || fs::path(e.file).filename().string() != e.file)
    fail(fmt::format("{} names a shard outside the run directory: '{}'", where, e.file));
  const std::string of = fmt::format(" (capture key '{}')", e.key);
  if (!entry.contains("shape") || !entry["shape"].is_array()) fail(fmt::format("{} has no 'shape' array{}", where, of));
  c10::ScalarType type{};
  try {
    type = parse_safetensors_dtype(e.dtype);
  } catch (const Error&) {
    fail(fmt::format("{} field 'dtype' is '{}', not a safetensors dtype{}", where, e.dtype, of));
  }
  // The bytes the shape needs, in 128 bits: a hostile shape cannot overflow past the check.
  unsigned __int128 bytes = c10::elementSize(type);
  for (const json& d : entry["shape"]) {
    if (!d.is_number_integer() || (d.is_number_unsigned() && d.get<std::uint64_t>() > std::uint64_t(INT64_MAX)) ||
        d.get<std::int64_t>() < 0)
      fail(fmt::format("{} has a malformed 'shape' {}{}", where, brief_json(entry["shape"]), of));
    e.shape.push_back(d.get<std::int64_t>());
    bytes = std::min<unsigned __int128>(bytes * std::uint64_t(e.shape.back()), std::uint64_t(1) << 62);
  }
  if (bytes >= std::uint64_t(1) << 62)
    fail(fmt::format("{} field 'shape' {} is impossibly large{}", where, brief_json(entry["shape"]), of));

  CaptureContext& ctx = e.context;
  ctx.prompt = int(integer(entry, "prompt", where, 0, kMaxInt, std::nullopt, of));
  if (!entry.contains("phase") || !entry["phase"].is_string()) fail(fmt::format("{} has no string field 'phase'{}", where, of));
  const auto phase = parse_phase(entry["phase"].get<std::string>());
  if (!phase)
    fail(fmt::format("{} field 'phase' is '{}', not prefill, decode or denoise{}", where,
                     brief_text(entry["phase"].get<std::string>(), 40), of));
  ctx.phase = *phase;
  ctx.step = int(integer(entry, "step", where, 0, kMaxInt, std::nullopt, of));
  ctx.block = int(integer(entry, "block", where, -1, kMaxInt, -1, of));
  ctx.layer = int(integer(entry, "layer", where, -1, kMaxInt, -1, of));
  ctx.query_offset = integer(entry, "query_offset", where, 0, kMaxRunPositions, 0, of);
  ctx.key_offset = integer(entry, "key_offset", where, 0, kMaxRunPositions, 0, of);  // absent before capture slicing
  ctx.pass = int(integer(entry, "pass", where, 0, 1, 0, of));
  return e;
}

// ---- prompts

json encode_prompt(const RunPrompt& p) {
  return {{"text", p.text}, {"ids", p.ids}, {"tokens", p.tokens}, {"source", p.source}};
}

RunPrompt decode_prompt(const json& prompt, std::size_t index) {
  const std::string where = fmt::format("prompt {}", index);
  if (!prompt.is_object()) fail(where + " is not an object");
  RunPrompt p;
  p.ids = ids(prompt, "ids", where, 0, kMaxId, /*required=*/true);
  p.text = optional_string(prompt, "text", where).value_or("");
  p.source = optional_string(prompt, "source", where).value_or("prompt");
  if (!prompt.contains("tokens") || !prompt["tokens"].is_array()) fail(where + " has no 'tokens' array");
  for (const json& t : prompt["tokens"]) {
    if (!t.is_string()) fail(where + " field 'tokens' holds a non-string");
    p.tokens.push_back(t.get<std::string>());
  }
  if (p.tokens.size() != p.ids.size())
    fail(fmt::format("{} lists {} tokens for {} ids", where, p.tokens.size(), p.ids.size()));
  return p;
}

std::vector<RunPrompt> decode_prompts(const json& manifest) {
  std::vector<RunPrompt> prompts;
  if (!manifest.is_object() || !manifest.contains("prompts")) return prompts;
  const json& all = manifest["prompts"];
  if (!all.is_array()) fail("\"prompts\" is not an array");
  for (std::size_t i = 0; i < all.size(); ++i) prompts.push_back(decode_prompt(all[i], i));
  return prompts;
}

// ---- the generation block

std::string RunGeneration::display(std::int64_t id) const {
  if (mask_id && id == *mask_id) return "[mask]";
  if (token_strings) {
    const auto it = token_strings->find(id);
    if (it != token_strings->end()) return it->second;
  }
  return "#" + std::to_string(id);
}

json encode_token_step(const TokenStep& s) {
  json out = {{"step", s.step}, {"phase", phase_name(s.phase)}, {"query_offset", s.query_offset}};
  if (s.token) out["token"] = *s.token;
  if (s.token_string) out["token_string"] = *s.token_string;
  return out;
}

json encode_denoise_step(const DenoiseStep& s) {
  return {{"step", s.step}, {"block", s.block}, {"ids", s.ids}, {"committed", s.committed}, {"confidences", s.confidences}};
}

json encode_generation(const RunGeneration& g) {
  json out = {{"mode", generation_mode_name(g.mode)}};
  if (g.mode == GenerationMode::none) return out;
  json steps = json::array();
  if (g.mode == GenerationMode::autoregressive) {
    out.update({{"max_new_tokens", g.max_new_tokens},
                {"greedy", g.greedy},
                {"temperature", g.temperature},
                {"top_k", g.top_k},
                {"top_p", g.top_p}});
    for (const TokenStep& s : g.token_steps) steps.push_back(encode_token_step(s));
  } else {
    out.update({{"prompt_length", g.prompt_length},
                {"gen_length", g.gen_length},
                {"steps_total", g.steps_total},
                {"block_length", g.block_length},
                {"temperature", g.temperature},
                {"cfg_scale", g.cfg_scale},
                {"remasking", g.remasking},
                {"confidence_dtype", g.confidence_dtype}});
    if (g.mask_id) out["mask_id"] = *g.mask_id;
    for (const DenoiseStep& s : g.denoise_steps) steps.push_back(encode_denoise_step(s));
    if (g.token_strings) {
      json strings = json::object();
      for (const auto& [id, text] : *g.token_strings) strings[std::to_string(id)] = text;
      out["token_strings"] = std::move(strings);
    }
  }
  out.update({{"seed", g.seed},
              {"stop_at_eos", g.stop_at_eos},
              {"stopped_on_eos", g.stopped_on_eos},
              {"output_ids", g.output_ids},
              {"new_ids", g.new_ids},
              {"steps", std::move(steps)}});
  if (g.text) out["text"] = *g.text;
  return out;
}

GenerationMode decode_generation_mode(const json& manifest) {
  const json* g = section(manifest, "generation");
  if (!g || !g->contains("mode")) return GenerationMode::none;
  const json& mode = (*g)["mode"];
  if (!mode.is_string()) fail("\"generation\" field 'mode' is not a string");
  const auto parsed = parse_generation_mode(mode.get<std::string>());
  if (!parsed)
    fail(fmt::format("\"generation\" field 'mode' is '{}', not none, autoregressive or masked_diffusion",
                     brief_text(mode.get<std::string>(), 40)));
  return *parsed;
}

RunGeneration decode_generation(const json& manifest) {
  RunGeneration g;
  g.mode = decode_generation_mode(manifest);
  const json* block = section(manifest, "generation");
  if (!block) return g;
  const json& b = *block;
  const std::string where = "\"generation\"";
  // A mask may stand in the sequences: ids are integers >= 0, the model's range is RunCheck's.
  g.output_ids = ids(b, "output_ids", where, 0, kMaxId);
  g.new_ids = ids(b, "new_ids", where, 0, kMaxId);
  g.text = optional_string(b, "text", where);
  g.temperature = number(b, "temperature", where, 0);
  g.seed = unsigned_integer(b, "seed", where, 0);
  g.stop_at_eos = boolean(b, "stop_at_eos", where, false);
  g.stopped_on_eos = boolean(b, "stopped_on_eos", where, false);
  if (g.mode == GenerationMode::none) return g;

  if (b.contains("steps") && !b["steps"].is_array()) fail(where + " field 'steps' is not an array");
  static const json kNoSteps = json::array();
  const json& steps = b.contains("steps") ? b["steps"] : kNoSteps;
  if (g.mode == GenerationMode::autoregressive) {
    g.max_new_tokens = int(integer(b, "max_new_tokens", where, 0, kMaxInt, 0));
    g.greedy = boolean(b, "greedy", where, true);
    g.top_k = int(integer(b, "top_k", where, 0, kMaxInt, 0));
    g.top_p = number(b, "top_p", where, 1);
    for (std::size_t s = 0; s < steps.size(); ++s) g.token_steps.push_back(decode_token_step(steps[s], s));
    return g;
  }
  g.prompt_length = integer(b, "prompt_length", where, 0, kMaxRunPositions, 0);
  g.gen_length = integer(b, "gen_length", where, 0, kMaxRunPositions, 0);
  g.block_length = integer(b, "block_length", where, 0, kMaxRunPositions, 0);
  g.steps_total = int(integer(b, "steps_total", where, 0, kMaxInt, 0));
  g.cfg_scale = number(b, "cfg_scale", where, 0);
  g.remasking = optional_string(b, "remasking", where).value_or("");
  g.confidence_dtype = optional_string(b, "confidence_dtype", where).value_or("");
  if (b.contains("mask_id")) g.mask_id = integer(b, "mask_id", where, 0, kMaxId);
  for (std::size_t s = 0; s < steps.size(); ++s) g.denoise_steps.push_back(decode_denoise_step(steps[s], s));
  if (const auto it = b.find("token_strings"); it != b.end()) {
    if (!it->is_object()) fail(where + " field 'token_strings' is not an object");
    auto& strings = g.token_strings.emplace();
    for (const auto& [id, text] : it->items()) {
      if (!text.is_string()) fail(fmt::format("{} field 'token_strings' maps '{}' to a non-string", where, brief_text(id, 40)));
      std::size_t used = 0;
      long long number = -1;
      try {
        number = std::stoll(id, &used);
      } catch (const std::exception&) {
      }
      if (id.empty() || used != id.size() || number < 0 || std::to_string(number) != id)
        fail(fmt::format("{} field 'token_strings' has the key '{}', not a token id", where, brief_text(id, 40)));
      strings[number] = text.get<std::string>();
    }
  }
  return g;
}

// ---- interventions

namespace {

constexpr const char* kInterventionKinds[] = {"zero_ablate", "patch", "steer", "mean_ablate", "resample_ablate"};

std::string required_string(const json& object, const char* name, const std::string& where) {
  const auto it = object.find(name);
  if (it == object.end() || !it->is_string()) fail(fmt::format("{} has no string field '{}'", where, name));
  return it->get<std::string>();
}

RunIntervention decode_intervention(const json& entry, std::size_t index) {
  const std::string where = fmt::format("intervention {}", index);
  if (!entry.is_object()) fail(where + " is not an object");
  RunIntervention i;
  i.kind = required_string(entry, "kind", where);
  if (std::find(std::begin(kInterventionKinds), std::end(kInterventionKinds), i.kind) == std::end(kInterventionKinds))
    fail(fmt::format("{} field 'kind' is '{}', not zero_ablate, patch, steer, mean_ablate or resample_ablate", where,
                     brief_text(i.kind, 40)));
  i.site = required_string(entry, "site", where);
  i.hook = required_string(entry, "hook", where);
  i.text = required_string(entry, "text", where);
  if (const auto it = entry.find("source"); it != entry.end() && !it->is_null()) {
    if (!it->is_string()) fail(fmt::format("{} field 'source' is {}, not a string or null", where, brief_json(*it)));
    i.source = it->get<std::string>();
  }
  if (const auto it = entry.find("scale"); it != entry.end() && !it->is_null()) {
    if (!it->is_number()) fail(fmt::format("{} field 'scale' is {}, not a number", where, brief_json(*it)));
    i.scale = it->get<double>();
  }
  if (i.kind == "steer" && !i.scale) fail(where + " (steer) has no number field 'scale'");
  if (entry.contains("applied")) i.applied = integer(entry, "applied", where, 0, std::numeric_limits<std::int64_t>::max());
  return i;
}

// An --ablate spec of a run written before "interventions": "L.H", both integers >= 0.
RunIntervention decode_old_ablation(const json& spec, std::size_t index) {
  const std::string where = fmt::format("\"ablations\" [{}]", index);
  if (!spec.is_string()) fail(fmt::format("{} is {}, not a string LAYER.HEAD", where, brief_json(spec)));
  const std::string s = spec.get<std::string>();
  const std::size_t dot = s.find('.');
  const auto number = [&](const std::string& part) {
    if (part.empty() || part.size() > 9 || part.find_first_not_of("0123456789") != std::string::npos)
      fail(fmt::format("{} is '{}', not LAYER.HEAD", where, brief_text(s, 40)));
    return std::stoi(part);
  };
  if (dot == std::string::npos) fail(fmt::format("{} is '{}', not LAYER.HEAD", where, brief_text(s, 40)));
  const int layer = number(s.substr(0, dot)), head = number(s.substr(dot + 1));
  RunIntervention i;
  i.kind = "zero_ablate";
  i.hook = hook_names::in_layer(layer, hook_names::z);
  i.site = fmt::format("{}[head={}]", i.hook, head);
  i.text = fmt::format("zero-ablated head {}.{}", layer, head);
  return i;
}

}  // namespace

json encode_intervention(const RunIntervention& i) {
  json out = {{"kind", i.kind}, {"site", i.site}, {"hook", i.hook}, {"source", nullptr}};
  if (i.source) out["source"] = *i.source;
  if (i.scale) out["scale"] = *i.scale;
  if (i.applied) out["applied"] = *i.applied;
  out["text"] = i.text;
  return out;
}

std::vector<RunIntervention> decode_interventions(const json& manifest) {
  std::vector<RunIntervention> out;
  if (!manifest.is_object()) return out;
  if (const auto it = manifest.find("interventions"); it != manifest.end()) {
    if (!it->is_array()) fail("\"interventions\" is not an array");
    for (std::size_t n = 0; n < it->size(); ++n) out.push_back(decode_intervention((*it)[n], n));
    return out;  // the whole list ("ablations" repeats --ablate's values as given)
  }
  if (const auto it = manifest.find("ablations"); it != manifest.end()) {
    if (!it->is_array()) fail("\"ablations\" is not an array");
    for (std::size_t n = 0; n < it->size(); ++n) out.push_back(decode_old_ablation((*it)[n], n));
  }
  return out;
}

std::string intervention_summary(const std::vector<RunIntervention>& interventions, const std::string& separator) {
  std::string out;
  for (const RunIntervention& i : interventions) out += (out.empty() ? "" : separator) + i.text;
  return out;
}

}  // namespace hooklens
