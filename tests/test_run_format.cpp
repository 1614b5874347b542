// hooklens/run_format.h: the run-directory contract's encoders and decoders. Round trips of capture
// entries, prompts and both kinds of generation block, the defaults a decoder fills in, one-line
// refusals of malformed blocks, and (with the fixtures) that re-encoding what `hooklens generate`
// and `capture` wrote gives back exactly their manifest sections.
#include "test_util.h"

#include <hooklens/error.h>
#include <hooklens/run.h>
#include <hooklens/run_format.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <limits>

namespace fs = std::filesystem;
using hooklens::CaptureEntry;
using hooklens::DenoiseStep;
using hooklens::GenerationMode;
using hooklens::Phase;
using hooklens::RunGeneration;
using hooklens::RunPrompt;
using hooklens::TokenStep;
using nlohmann::json;
using test::error_of;

namespace {

CaptureEntry sample_entry() {
  CaptureEntry e;
  e.key = "p1.s3.b1.blocks.2.attn.hook_pattern.u";
  e.hook = "blocks.2.attn.hook_pattern";
  e.file = "captures-00002.safetensors";
  e.dtype = "F16";
  e.shape = {1, 4, 2, 9};
  e.context = test::context(1, Phase::denoise, 3, 1, 2, 5, 1);
  e.context.key_offset = 7;
  return e;
}

void require_same(const CaptureEntry& a, const CaptureEntry& b) {
  CHECK(a.key == b.key);
  CHECK(a.hook == b.hook);
  CHECK(a.file == b.file);
  CHECK(a.dtype == b.dtype);
  CHECK(a.shape == b.shape);
  const hooklens::CaptureContext &x = a.context, &y = b.context;
  CHECK(x.prompt == y.prompt);
  CHECK(x.phase == y.phase);
  CHECK(x.step == y.step);
  CHECK(x.block == y.block);
  CHECK(x.layer == y.layer);
  CHECK(x.query_offset == y.query_offset);
  CHECK(x.key_offset == y.key_offset);
  CHECK(x.pass == y.pass);
}

// An autoregressive block as `hooklens generate` fills it for a causal model.
RunGeneration autoregressive() {
  RunGeneration g;
  g.mode = GenerationMode::autoregressive;
  g.max_new_tokens = 2;
  g.greedy = false;
  g.temperature = 0.7;
  g.top_k = 40;
  g.top_p = 0.9;
  g.seed = 12345678901234ull;
  g.stop_at_eos = true;
  g.stopped_on_eos = false;
  g.output_ids = {5, 6, 7, 8};
  g.new_ids = {7, 8};
  g.token_steps = {{0, Phase::prefill, 0, 7, " cat"}, {1, Phase::decode, 2, 8, " sat"}};
  g.text = " cat sat";
  return g;
}

// A masked-diffusion block with a tokenizer's token strings.
RunGeneration diffusion() {
  RunGeneration g;
  g.mode = GenerationMode::masked_diffusion;
  g.prompt_length = 2;
  g.gen_length = 4;
  g.steps_total = 2;
  g.block_length = 2;
  g.temperature = 0;
  g.cfg_scale = 1.5;
  g.remasking = "low_confidence";
  g.confidence_dtype = "float64";
  g.mask_id = 99;
  g.seed = 3;
  g.stop_at_eos = false;
  g.stopped_on_eos = false;
  g.output_ids = {1, 2, 10, 11, 12, 13};
  g.new_ids = {10, 11, 12, 13};
  g.denoise_steps = {{0, 0, {1, 2, 10, 11, 99, 99}, {2, 3}, {0.25, 0.125}},
                     {1, 1, {1, 2, 10, 11, 12, 13}, {4, 5}, {0.5, 1.0}}};
  g.token_strings = std::map<std::int64_t, std::string>{{1, "a"}, {2, "b"}, {10, "c"}, {11, "d"}, {12, "e"}, {13, "f"}};
  g.text = "cdef";
  return g;
}

json manifest_with(const json& generation) { return {{"generation", generation}}; }

// The refusal decode_generation gives for this block ("(no error)" if none).
std::string generation_error(const json& generation) {
  return error_of([&] { hooklens::decode_generation(manifest_with(generation)); });
}

}  // namespace

TEST_CASE("a capture entry encodes every field and decodes back to the same entry") {
  const CaptureEntry e = sample_entry();
  const json j = hooklens::encode_capture_entry(e);
  CHECK(j == json::parse(R"({"key": "p1.s3.b1.blocks.2.attn.hook_pattern.u", "hook": "blocks.2.attn.hook_pattern",
    "prompt": 1, "phase": "denoise", "step": 3, "block": 1, "layer": 2, "query_offset": 5, "key_offset": 7, "pass": 1,
    "shape": [1, 4, 2, 9], "dtype": "F16", "file": "captures-00002.safetensors"})"));
  require_same(hooklens::decode_capture_entry(j, 0), e);
}

TEST_CASE("a capture entry's optional fields take their defaults") {
  const json j = json::parse(R"({"key": "k", "hook": "hook_embed", "prompt": 0, "phase": "prefill", "step": 0,
    "shape": [1, 3, 8], "dtype": "F32", "file": "captures-00000.safetensors"})");
  const CaptureEntry e = hooklens::decode_capture_entry(j, 0);
  CHECK(e.context.block == -1);
  CHECK(e.context.layer == -1);
  CHECK(e.context.query_offset == 0);
  CHECK(e.context.key_offset == 0);  // runs written before capture slicing have none
  CHECK(e.context.pass == 0);
}

TEST_CASE("malformed capture entries are refused in one line naming the entry and the field") {
  const json good = hooklens::encode_capture_entry(sample_entry());
  const auto refusal = [&](const std::function<void(json&)>& damage) {
    json j = good;
    damage(j);
    return error_of([&] { hooklens::decode_capture_entry(j, 4); });
  };
  struct Case {
    std::function<void(json&)> damage;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](json& j) { j.erase("step"); }, "capture 4 has no integer field 'step' (capture key "},
      {[](json& j) { j["block"] = -2; }, "capture 4 field 'block' is -2, not an integer in [-1, "},
      {[](json& j) { j["block"] = "0"; }, "capture 4 has no integer field 'block'"},
      {[](json& j) { j["pass"] = 2; }, "capture 4 field 'pass' is 2, not an integer in [0, 1]"},
      {[](json& j) { j["key_offset"] = -1; }, "capture 4 field 'key_offset' is -1"},
      {[](json& j) { j["phase"] = "warmup"; }, "capture 4 field 'phase' is 'warmup', not prefill, decode or denoise"},
      {[](json& j) { j["dtype"] = "F33"; }, "capture 4 field 'dtype' is 'F33', not a safetensors dtype"},
      {[](json& j) { j["file"] = "../x.safetensors"; }, "capture 4 names a shard outside the run directory"},
      {[](json& j) { j["shape"] = {1, -3}; }, "capture 4 has a malformed 'shape' [1,-3]"},
      {[](json& j) { j["shape"] = {std::int64_t(1) << 40, std::int64_t(1) << 40}; }, "is impossibly large"},
      {[](json& j) { j.erase("hook"); }, "capture 4 has no string field 'hook'"},
      {[](json& j) { j = json::array(); }, "capture 4 is not an object"},
  };
  for (const Case& c : cases) {
    const std::string message = refusal(c.damage);
    INFO(message);
    CHECK(message.find(c.message) != std::string::npos);
    CHECK(message.find('\n') == std::string::npos);
  }
}

TEST_CASE("a prompt round-trips and its optional fields take their defaults") {
  const RunPrompt p{"The cat", {464, 3797}, {"The", " cat"}, "text-file wiki.raw sequence 0 (tokens 0-1)"};
  const json j = hooklens::encode_prompt(p);
  CHECK(j == json::parse(R"J({"text": "The cat", "ids": [464, 3797], "tokens": ["The", " cat"],
    "source": "text-file wiki.raw sequence 0 (tokens 0-1)"})J"));
  const RunPrompt back = hooklens::decode_prompt(j, 0);
  CHECK(back.text == p.text);
  CHECK(back.ids == p.ids);
  CHECK(back.tokens == p.tokens);
  CHECK(back.source == p.source);

  const RunPrompt bare = hooklens::decode_prompt(json::parse(R"({"ids": [1], "tokens": ["x"]})"), 0);
  CHECK(bare.text.empty());
  CHECK(bare.source == "prompt");
  CHECK(hooklens::decode_prompts(json::object()).empty());
  CHECK(hooklens::decode_prompts(json{{"prompts", {j, j}}}).size() == 2);

  CHECK(error_of([] { hooklens::decode_prompt(json::parse(R"({"ids": [1, 2], "tokens": ["x"]})"), 3); }) ==
        "prompt 3 lists 1 tokens for 2 ids");
  CHECK(error_of([] { hooklens::decode_prompt(json::parse(R"({"tokens": []})"), 0); }) == "prompt 0 has no 'ids' array");
  CHECK(error_of([] { hooklens::decode_prompt(json::parse(R"({"ids": [-1], "tokens": ["x"]})"), 0); })
            .rfind("prompt 0 field 'ids' [0] is -1, not an integer in [0, ", 0) == 0);
  CHECK(error_of([] { hooklens::decode_prompts(json{{"prompts", json::object()}}); }) == "\"prompts\" is not an array");
}

TEST_CASE("the generation mode is decided in one place: none without a block or a mode") {
  CHECK(hooklens::decode_generation_mode(json::object()) == GenerationMode::none);
  CHECK(hooklens::decode_generation_mode(manifest_with(json::object())) == GenerationMode::none);
  CHECK(hooklens::decode_generation_mode(manifest_with({{"mode", "none"}})) == GenerationMode::none);
  CHECK(hooklens::decode_generation_mode(manifest_with({{"mode", "autoregressive"}})) == GenerationMode::autoregressive);
  CHECK(hooklens::decode_generation_mode(manifest_with({{"mode", "masked_diffusion"}})) == GenerationMode::masked_diffusion);
  CHECK(generation_error({{"mode", "beam"}}) ==
        "\"generation\" field 'mode' is 'beam', not none, autoregressive or masked_diffusion");
  CHECK(generation_error({{"mode", 1}}) == "\"generation\" field 'mode' is not a string");
  CHECK(error_of([] { hooklens::decode_generation(json{{"generation", json::array()}}); }) == "\"generation\" is not an object");

  // A capture run's block, as `hooklens capture` writes it.
  RunGeneration none;
  CHECK(hooklens::encode_generation(none).dump() == R"({"mode":"none"})");
  CHECK(hooklens::decode_generation(json::object()).mode == GenerationMode::none);
  CHECK(hooklens::decode_generation(json::object()).step_count() == 0);
}

TEST_CASE("an autoregressive block encodes as hooklens generate writes it and round-trips") {
  const json j = hooklens::encode_generation(autoregressive());
  // The keys and values of generate_tokens (framework/cli/run_commands.cpp).
  const json expected = json::parse(R"({"mode": "autoregressive", "max_new_tokens": 2, "greedy": false,
    "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 12345678901234, "stop_at_eos": true,
    "output_ids": [5, 6, 7, 8], "new_ids": [7, 8], "stopped_on_eos": false, "text": " cat sat",
    "steps": [{"step": 0, "phase": "prefill", "query_offset": 0, "token": 7, "token_string": " cat"},
              {"step": 1, "phase": "decode", "query_offset": 2, "token": 8, "token_string": " sat"}]})");
  CHECK(j.dump() == expected.dump());

  const RunGeneration g = hooklens::decode_generation(manifest_with(j));
  CHECK(hooklens::encode_generation(g).dump() == j.dump());
  CHECK(g.mode == GenerationMode::autoregressive);
  CHECK(g.step_count() == 2);
  CHECK(g.token_steps[1].phase == Phase::decode);
  CHECK(g.token_steps[1].query_offset == 2);
  CHECK(g.token_steps[1].token == 8);
  CHECK(g.seed == 12345678901234ull);

  // Without a tokenizer there is no "text"; steps' phase and offset default from the step.
  RunGeneration plain = autoregressive();
  plain.text.reset();
  CHECK_FALSE(hooklens::encode_generation(plain).contains("text"));
  const RunGeneration sparse = hooklens::decode_generation(
      manifest_with(json::parse(R"({"mode": "autoregressive", "steps": [{"step": 0}, {"step": 1}]})")));
  CHECK(sparse.token_steps[0].phase == Phase::prefill);
  CHECK(sparse.token_steps[1].phase == Phase::decode);
  CHECK_FALSE(sparse.token_steps[1].token.has_value());
  CHECK_FALSE(sparse.token_steps[1].token_string.has_value());
  CHECK(sparse.greedy);
  CHECK(sparse.top_p == 1.0);
}

TEST_CASE("a masked-diffusion block encodes as hooklens generate writes it and round-trips") {
  const json j = hooklens::encode_generation(diffusion());
  // The keys and values of generate_diffusion (framework/cli/run_commands.cpp).
  const json expected = json::parse(R"({"mode": "masked_diffusion", "prompt_length": 2, "gen_length": 4,
    "steps_total": 2, "block_length": 2, "temperature": 0.0, "cfg_scale": 1.5, "remasking": "low_confidence",
    "confidence_dtype": "float64", "mask_id": 99, "seed": 3, "stop_at_eos": false, "stopped_on_eos": false,
    "output_ids": [1, 2, 10, 11, 12, 13], "new_ids": [10, 11, 12, 13], "text": "cdef",
    "token_strings": {"1": "a", "2": "b", "10": "c", "11": "d", "12": "e", "13": "f"},
    "steps": [{"step": 0, "block": 0, "ids": [1, 2, 10, 11, 99, 99], "committed": [2, 3], "confidences": [0.25, 0.125]},
              {"step": 1, "block": 1, "ids": [1, 2, 10, 11, 12, 13], "committed": [4, 5], "confidences": [0.5, 1.0]}]})");
  CHECK(j.dump() == expected.dump());

  const RunGeneration g = hooklens::decode_generation(manifest_with(j));
  CHECK(hooklens::encode_generation(g).dump() == j.dump());
  CHECK(g.mode == GenerationMode::masked_diffusion);
  CHECK(g.step_count() == 2);
  CHECK(g.denoise_steps[0].block == 0);
  CHECK(g.denoise_steps[1].committed == std::vector<std::int64_t>{4, 5});
  CHECK(g.mask_id == 99);
  CHECK(g.display(99) == "[mask]");
  CHECK(g.display(12) == "e");
  CHECK(g.display(7) == "#7");  // an id without a token string

  // A NaN confidence is written as null and read back as NaN.
  RunGeneration odd = diffusion();
  odd.denoise_steps[0].confidences[0] = std::numeric_limits<double>::quiet_NaN();
  const json written = json::parse(hooklens::encode_generation(odd).dump());  // as the file holds it
  CHECK(written["steps"][0]["confidences"][0].is_null());
  CHECK(std::isnan(hooklens::decode_generation(manifest_with(written)).denoise_steps[0].confidences[0]));

  // Without a tokenizer: no text, no token strings; "#ID" for every id but the mask.
  RunGeneration plain = diffusion();
  plain.text.reset();
  plain.token_strings.reset();
  const json bare = hooklens::encode_generation(plain);
  CHECK_FALSE(bare.contains("text"));
  CHECK_FALSE(bare.contains("token_strings"));
  CHECK(hooklens::decode_generation(manifest_with(bare)).display(12) == "#12");
}

TEST_CASE("malformed generation blocks are refused in one line") {
  const json ar = hooklens::encode_generation(autoregressive()), dif = hooklens::encode_generation(diffusion());
  const auto damaged = [](json j, const std::function<void(json&)>& damage) {
    damage(j);
    return generation_error(j);
  };
  struct Case {
    const json& block;
    std::function<void(json&)> damage;
    std::string message;
  };
  const std::vector<Case> cases = {
      {ar, [](json& j) { j["steps"] = json::object(); }, "\"generation\" field 'steps' is not an array"},
      {ar, [](json& j) { j["steps"][1].erase("step"); }, "generation step 1 has no integer field 'step'"},
      {ar, [](json& j) { j["steps"][0]["token"] = -4; }, "generation step 0 field 'token' is -4, not an integer in [0, "},
      {ar, [](json& j) { j["steps"][0]["token_string"] = 5; }, "generation step 0 field 'token_string' is not a string"},
      {ar, [](json& j) { j["steps"][1]["phase"] = "denoise"; }, "generation step 1 field 'phase' is 'denoise', not prefill or decode"},
      {ar, [](json& j) { j["steps"][0] = 3; }, "generation step 0 is not an object"},
      {ar, [](json& j) { j["greedy"] = "yes"; }, "\"generation\" field 'greedy' is \"yes\", not true or false"},
      {ar, [](json& j) { j["temperature"] = "hot"; }, "\"generation\" field 'temperature' is \"hot\", not a number"},
      {ar, [](json& j) { j["seed"] = -1; }, "\"generation\" field 'seed' is -1, not an integer >= 0"},
      {ar, [](json& j) { j["output_ids"] = "1,2"; }, "\"generation\" field 'output_ids' is not an array"},
      {ar, [](json& j) { j["text"] = json::array(); }, "\"generation\" field 'text' is not a string"},
      {dif, [](json& j) { j["steps"][1].erase("block"); }, "generation step 1 has no integer field 'block'"},
      {dif, [](json& j) { j["steps"][0].erase("ids"); }, "generation step 0 has no 'ids' array"},
      {dif, [](json& j) { j["steps"][0]["ids"][2] = "c"; }, "generation step 0 field 'ids' [2] is \"c\", not an integer in [0, "},
      {dif, [](json& j) { j["steps"][0]["committed"] = {-1}; }, "generation step 0 field 'committed' [0] is -1"},
      {dif, [](json& j) { j["steps"][0]["confidences"] = {"high"}; }, "generation step 0 field 'confidences' holds \"high\""},
      {dif, [](json& j) { j["mask_id"] = -5; }, "\"generation\" field 'mask_id' is -5, not an integer in [0, "},
      {dif, [](json& j) { j["prompt_length"] = 1.5; }, "\"generation\" has no integer field 'prompt_length'"},
      {dif, [](json& j) { j["token_strings"] = json::array(); }, "\"generation\" field 'token_strings' is not an object"},
      {dif, [](json& j) { j["token_strings"]["7"] = 7; }, "\"generation\" field 'token_strings' maps '7' to a non-string"},
      {dif, [](json& j) { j["token_strings"]["x7"] = "x"; }, "\"generation\" field 'token_strings' has the key 'x7', not a token id"},
  };
  for (const Case& c : cases) {
    const std::string message = damaged(c.block, c.damage);
    INFO(message);
    CHECK(message.rfind(c.message, 0) == 0);
    CHECK(message.find('\n') == std::string::npos);
  }
}

// What the CLI writes today, read back and written again by the module: byte for byte the same.
TEST_CASE("re-encoding the manifests hooklens writes gives them back exactly", "[fixtures]") {
  const fs::path neo = test::fixtures() / "tiny-neo-a", llada = test::fixtures() / "llada-tiny-a";
  test::TempDir dir;
  const std::vector<std::pair<std::string, fs::path>> runs = {
      {fmt::format("generate --model '{}' --prompt 'The cat sat' --max-new-tokens 4 --temperature 0.8 "
                   "--top-k 20 --seed 7 --threads 1",
                   neo.string()),
       dir / "generate"},
      {fmt::format("generate --model '{}' --tokenizer '{}' --prompt-ids 85,294,223,181,193,390,258,97 --gen-length 8 "
                   "--steps 4 --block-length 4 --threads 1",
                   llada.string(), neo.string()),
       dir / "diffusion"},
      {fmt::format("capture --model '{}' --prompt 'The cat sat on the mat' --prompt 'a b' --threads 1", neo.string()),
       dir / "capture"},
  };
  for (const auto& [args, out] : runs) {
    const fs::path log = fs::path(out) += ".log";
    const int status = test::run_hooklens(fmt::format("{} --out '{}'", args, out.string()), log);
    INFO(args << "\n" << test::read_file(log));
    REQUIRE(status == 0);
    const json manifest = json::parse(test::read_file(out / "manifest.json"));
    REQUIRE(manifest.contains("generation"));
    const RunGeneration g = hooklens::decode_generation(manifest);
    CHECK(hooklens::encode_generation(g).dump() == manifest["generation"].dump());
    CHECK(g.mode == hooklens::parse_generation_mode(manifest["generation"]["mode"].get<std::string>()));
    const std::vector<RunPrompt> prompts = hooklens::decode_prompts(manifest);
    REQUIRE(prompts.size() == manifest["prompts"].size());
    for (std::size_t i = 0; i < prompts.size(); ++i)
      CHECK(hooklens::encode_prompt(prompts[i]).dump() == manifest["prompts"][i].dump());
    REQUIRE_FALSE(manifest["captures"].empty());
    for (std::size_t i = 0; i < manifest["captures"].size(); ++i) {
      const json& entry = manifest["captures"][i];
      CHECK(hooklens::encode_capture_entry(hooklens::decode_capture_entry(entry, i)).dump() == entry.dump());
    }
  }
}

// RunReader decodes the prompts and the generation once, with the module, when it checks a whole run.
TEST_CASE("RunReader decodes the prompts and the generation block with the module") {
  test::TempDir dir;
  const auto write = [&](const json& manifest) {
    std::ofstream(dir / "manifest.json") << manifest.dump();
  };
  json manifest = {{"format", "hooklens-run"}, {"version", 1}, {"complete", true}, {"captures", json::array()},
                   {"prompts", {hooklens::encode_prompt({"ab", {1, 2}, {"a", "b"}, "prompt"})}}};
  write(manifest);  // a capture run written without a generation block: mode none
  hooklens::RunReader reader(dir.path, false, hooklens::RunCheck::consistent);
  CHECK(reader.generation().mode == GenerationMode::none);
  REQUIRE(reader.prompts().size() == 1);
  CHECK(reader.prompts()[0].tokens == std::vector<std::string>{"a", "b"});

  RunGeneration g = autoregressive();
  g.output_ids = {1, 2, 7, 8};
  manifest["generation"] = hooklens::encode_generation(g);
  write(manifest);
  reader.open(dir.path, false, hooklens::RunCheck::consistent);
  CHECK(reader.generation().mode == GenerationMode::autoregressive);
  CHECK(reader.generation().token_steps.at(1).token_string == " sat");

  // What only the decoder refuses is named with the manifest, like the checker's refusals.
  manifest["generation"]["steps"][1]["phase"] = "denoise";
  write(manifest);
  const std::string file = (dir / "manifest.json").string();
  CHECK(error_of([&] { reader.open(dir.path, false, hooklens::RunCheck::consistent); }) ==
        file + ": generation step 1 field 'phase' is 'denoise', not prefill or decode");
  manifest["generation"]["mode"] = "beam";
  write(manifest);
  CHECK(error_of([&] { reader.open(dir.path, false, hooklens::RunCheck::consistent); }) ==
        file + ": \"generation\" field 'mode' is 'beam', not none, autoregressive or masked_diffusion");

  // Checked entry by entry only: the sections are not decoded, and asking for them is an error.
  hooklens::RunReader entries(dir.path, false, hooklens::RunCheck::entries);
  CHECK(error_of([&] { entries.generation(); }) == file + ": the generation is decoded by RunCheck::consistent only");
}

// ---- interventions

namespace {

hooklens::RunIntervention patch_intervention() {
  hooklens::RunIntervention i;
  i.kind = "patch";
  i.site = "blocks.1.attn.hook_z[head=3,pos=5]";
  i.hook = "blocks.1.attn.hook_z";
  i.source = "runs/clean";
  i.applied = 12;
  i.text = "patched blocks.1.attn.hook_z[head=3,pos=5] from runs/clean";
  return i;
}

hooklens::RunIntervention steer_intervention() {
  hooklens::RunIntervention i;
  i.kind = "steer";
  i.site = "blocks.0.hook_resid_post";
  i.hook = "blocks.0.hook_resid_post";
  i.source = "vec.safetensors:steering";
  i.scale = 4.0;
  i.applied = 3;
  i.text = "steered blocks.0.hook_resid_post by 4 x vec.safetensors:steering";
  return i;
}

void require_same(const hooklens::RunIntervention& a, const hooklens::RunIntervention& b) {
  CHECK(a.kind == b.kind);
  CHECK(a.site == b.site);
  CHECK(a.hook == b.hook);
  CHECK(a.text == b.text);
  CHECK(a.source == b.source);
  CHECK(a.scale == b.scale);
  CHECK(a.applied == b.applied);
}

}  // namespace

TEST_CASE("interventions encode in the fixed format and round-trip") {
  CHECK(hooklens::encode_intervention(patch_intervention()) == json::parse(R"J({"kind": "patch",
    "site": "blocks.1.attn.hook_z[head=3,pos=5]", "hook": "blocks.1.attn.hook_z", "source": "runs/clean",
    "applied": 12, "text": "patched blocks.1.attn.hook_z[head=3,pos=5] from runs/clean"})J"));
  hooklens::RunIntervention mean;
  mean.kind = "mean_ablate";
  mean.site = mean.hook = "blocks.0.hook_mlp_out";
  mean.text = "mean-ablated blocks.0.hook_mlp_out";
  const json encoded = hooklens::encode_intervention(mean);
  CHECK(encoded["source"].is_null());  // written as null, not left out
  CHECK_FALSE(encoded.contains("scale"));  // steer only

  const json manifest = {{"interventions", {hooklens::encode_intervention(patch_intervention()),
                                            hooklens::encode_intervention(steer_intervention()), encoded}}};
  const auto decoded = hooklens::decode_interventions(manifest);
  REQUIRE(decoded.size() == 3);
  require_same(decoded[0], patch_intervention());
  require_same(decoded[1], steer_intervention());
  require_same(decoded[2], mean);
  CHECK(hooklens::intervention_summary(decoded) ==
        "patched blocks.1.attn.hook_z[head=3,pos=5] from runs/clean; steered blocks.0.hook_resid_post by 4 x "
        "vec.safetensors:steering; mean-ablated blocks.0.hook_mlp_out");
  CHECK(hooklens::decode_interventions(json::object()).empty());  // absent: none
  CHECK(hooklens::decode_interventions(json{{"interventions", json::array()}, {"ablations", json::array()}}).empty());
}

TEST_CASE("a run written before interventions decodes its --ablate heads as zero ablations") {
  const auto old = hooklens::decode_interventions(json{{"ablations", {"1.3", "0.12"}}});
  REQUIRE(old.size() == 2);
  CHECK(old[0].kind == "zero_ablate");
  CHECK(old[0].site == "blocks.1.attn.hook_z[head=3]");
  CHECK(old[0].hook == "blocks.1.attn.hook_z");
  CHECK(old[0].text == "zero-ablated head 1.3");
  CHECK_FALSE(old[0].source);
  CHECK_FALSE(old[0].scale);
  CHECK_FALSE(old[0].applied);  // not recorded then
  CHECK(old[1].site == "blocks.0.attn.hook_z[head=12]");
  CHECK(old[1].text == "zero-ablated head 0.12");

  // A newer run's "interventions" is the whole list: its "ablations" repeats --ablate's values as
  // given (a head or a site), so they are not read again.
  hooklens::RunIntervention zero = old[0];
  zero.applied = 4;
  zero.text = "zero-ablated blocks.1.attn.hook_z[head=3]";
  const auto both = hooklens::decode_interventions(
      json{{"interventions", {hooklens::encode_intervention(zero)}}, {"ablations", {"1.3", "blocks.2.mlp.hook_post[neuron=1]"}}});
  REQUIRE(both.size() == 1);
  require_same(both[0], zero);
  // Runs over several processes do not count: no "applied".
  zero.applied.reset();
  const json uncounted = hooklens::encode_intervention(zero);
  CHECK_FALSE(uncounted.contains("applied"));
  CHECK_FALSE(hooklens::decode_interventions(json{{"interventions", {uncounted}}}).at(0).applied);
}

TEST_CASE("malformed interventions are refused in one line naming the entry and the field") {
  const json good = hooklens::encode_intervention(steer_intervention());
  struct Case {
    json manifest;
    std::string message;
  };
  const auto damaged = [&](const std::function<void(json&)>& damage) {
    json entry = good;
    damage(entry);
    return json{{"interventions", {hooklens::encode_intervention(patch_intervention()), entry}}};
  };
  const std::vector<Case> cases = {
      {json{{"interventions", json::object()}}, "\"interventions\" is not an array"},
      {json{{"interventions", {1}}}, "intervention 0 is not an object"},
      {damaged([](json& j) { j["kind"] = "amplify"; }),
       "intervention 1 field 'kind' is 'amplify', not zero_ablate, patch, steer, mean_ablate or resample_ablate"},
      {damaged([](json& j) { j["kind"] = std::string("x\ny") + std::string(200, 'z'); }), "field 'kind' is 'x\\ny"},
      {damaged([](json& j) { j.erase("kind"); }), "intervention 1 has no string field 'kind'"},
      {damaged([](json& j) { j["site"] = 7; }), "intervention 1 has no string field 'site'"},
      {damaged([](json& j) { j.erase("hook"); }), "intervention 1 has no string field 'hook'"},
      {damaged([](json& j) { j["text"] = json::array(); }), "intervention 1 has no string field 'text'"},
      {damaged([](json& j) { j["source"] = {1, 2}; }), "intervention 1 field 'source' is [1,2], not a string or null"},
      {damaged([](json& j) { j["scale"] = "4"; }), "intervention 1 field 'scale' is \"4\", not a number"},
      {damaged([](json& j) { j.erase("scale"); }), "intervention 1 (steer) has no number field 'scale'"},
      {damaged([](json& j) { j["applied"] = -1; }), "intervention 1 field 'applied' is -1, not an integer in [0, "},
      {damaged([](json& j) { j["applied"] = 1.5; }), "intervention 1 has no integer field 'applied'"},
      {damaged([](json& j) { j["applied"] = std::numeric_limits<std::uint64_t>::max(); }),
       "intervention 1 field 'applied' is 18446744073709551615, not an integer in [0, "},
      {json{{"ablations", "1.3"}}, "\"ablations\" is not an array"},
      {json{{"ablations", {"1.3", 13}}}, "\"ablations\" [1] is 13, not a string LAYER.HEAD"},
      {json{{"ablations", {"1.-3"}}}, "\"ablations\" [0] is '1.-3', not LAYER.HEAD"},
      {json{{"ablations", {"13"}}}, "\"ablations\" [0] is '13', not LAYER.HEAD"},
      {json{{"ablations", {"1.3.4"}}}, "\"ablations\" [0] is '1.3.4', not LAYER.HEAD"},
      {json{{"ablations", {"99999999999.1"}}}, "\"ablations\" [0] is '99999999999.1', not LAYER.HEAD"},
  };
  for (const Case& c : cases) {
    const std::string message = error_of([&] { hooklens::decode_interventions(c.manifest); });
    INFO(message);
    CHECK(message.find(c.message) != std::string::npos);
    CHECK(message.find('\n') == std::string::npos);
    CHECK(message.size() < 300);
  }
}

TEST_CASE("RunReader decodes the interventions when it checks a whole run") {
  test::TempDir dir;
  json manifest = {{"format", "hooklens-run"}, {"version", 1}, {"complete", true}, {"captures", json::array()},
                   {"ablations", {"0.1"}}};
  std::ofstream(dir / "manifest.json") << manifest.dump();
  hooklens::RunReader reader(dir.path, false, hooklens::RunCheck::consistent);
  REQUIRE(reader.interventions().size() == 1);
  CHECK(reader.interventions()[0].text == "zero-ablated head 0.1");

  manifest["interventions"] = {hooklens::encode_intervention(patch_intervention())};
  manifest["interventions"][0]["applied"] = "12";
  std::ofstream(dir / "manifest.json") << manifest.dump();
  const std::string file = (dir / "manifest.json").string();
  CHECK(error_of([&] { reader.open(dir.path, false, hooklens::RunCheck::consistent); }) ==
        file + ": intervention 0 has no integer field 'applied'");
  // Entry by entry only: not decoded (so not refused), and asking for them is an error.
  hooklens::RunReader entries(dir.path, false, hooklens::RunCheck::entries);
  CHECK(error_of([&] { entries.interventions(); }) == file + ": the interventions are decoded by RunCheck::consistent only");
}
