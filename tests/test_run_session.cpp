// RunSession used directly (no CLI): the manifest it writes against the CLI's, the context check of
// both kinds of generation, and --ablate's zero ablation of one head.
#include "refusal_util.h"
#include "test_util.h"

#include <ATen/ATen.h>

#include <hooklens/error.h>
#include <hooklens/generate.h>
#include <hooklens/hook_names.h>
#include <hooklens/model.h>
#include <hooklens/run.h>
#include <hooklens/run_session.h>

#include <nlohmann/json.hpp>

#include <set>

namespace {

namespace fs = std::filesystem;
namespace names = hooklens::hook_names;
using hooklens::RunSession;
using hooklens::RunSettings;
using nlohmann::json;

fs::path neo() { return test::fixtures() / "tiny-neo-a"; }      // causal, context 128, 4 layers x 4 heads
fs::path llada() { return test::fixtures() / "llada-tiny-a"; }  // bidirectional, context 256

RunSettings settings_for(const fs::path& model, const fs::path& out) {
  RunSettings s;
  s.model = model.string();
  s.out = out.string();
  s.threads = 1;
  return s;
}

std::set<std::string> keys(const json& object) {
  std::set<std::string> out;
  for (const auto& item : object.items()) out.insert(item.key());
  return out;
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The manifests of the session's run (tmp/session) and of `hooklens ARGS` (run into tmp/cli), after
// checking that the session's lists "hooks" once and has the CLI's top-level sections.
std::pair<json, json> session_and_cli(const fs::path& tmp, const std::string& args) {
  test::require_hooklens(fmt::format("{} --threads 1 --out '{}'", args, (tmp / "cli").string()), tmp / "cli.log");
  const std::string text = test::read_file(tmp / "session" / "manifest.json");
  CHECK(count_of(text, "\"hooks\"") == 1);
  json session = json::parse(text), cli = json::parse(test::read_file(tmp / "cli" / "manifest.json"));
  CHECK(keys(session) == keys(cli));
  return {std::move(session), std::move(cli)};
}

}  // namespace

TEST_CASE("a session's manifest has the CLI's sections, and \"hooks\" once", "[fixtures]") {
  test::TempDir tmp;
  SECTION("capture") {
    RunSettings s = settings_for(neo(), tmp / "session");
    s.prompt_ids = {"464,3797,318", "40,588"};
    s.hooks = {names::every_layer(names::pattern), names::every_layer(names::z)};
    s.layers = {0, 1};
    s.interventions.ablate = {"1.2"};
    RunSession(s, RunSession::Kind::capture).capture();
    const auto [session, cli] =
        session_and_cli(tmp.path, fmt::format("capture --model '{}' --prompt-ids 464,3797,318 --prompt-ids 40,588 --hooks "
                                              "'blocks.*.attn.hook_pattern,blocks.*.attn.hook_z' --layers 0,1 --ablate 1.2",
                                              neo().string()));
    CHECK(keys(session) == std::set<std::string>{"ablations", "analyzers", "capture", "captures", "complete", "format",
                                                 "generation", "interventions", "model", "prompts", "version"});
    CHECK_FALSE(session.contains("hooks"));
    CHECK(session["capture"]["hooks"] == json({"blocks.*.attn.hook_pattern", "blocks.*.attn.hook_z"}));
    CHECK(session["capture"]["layers"] == json({0, 1}));
    CHECK(session["ablations"] == json({"1.2"}));
    CHECK(session["generation"] == json({{"mode", "none"}}));
    for (const char* section : {"capture", "generation", "model", "prompts", "ablations", "analyzers"}) {
      INFO(section);
      CHECK(session[section] == cli[section]);
    }
    // 2 prompts x 2 points x layers 0 and 1.
    CHECK(session["captures"].size() == 8);
    CHECK(session["captures"].size() == cli["captures"].size());
  }
  SECTION("autoregressive generation: the same generation block as hooklens generate") {
    RunSettings s = settings_for(neo(), tmp / "session");
    s.prompt_ids = {"464,3797,318"};
    s.autoregressive.max_new_tokens = 5;
    RunSession session(s, RunSession::Kind::generate);
    CHECK(session.mode() == hooklens::GenerationMode::autoregressive);
    session.generate();
    const auto [m, cli] = session_and_cli(
        tmp.path, fmt::format("generate --model '{}' --prompt-ids 464,3797,318 --max-new-tokens 5", neo().string()));
    CHECK(m["generation"] == cli["generation"]);
    CHECK(m["generation"]["mode"] == "autoregressive");
    CHECK(m["generation"]["new_ids"].size() == 5);
    CHECK(m["generation"]["greedy"] == true);
    CHECK(m["capture"] == cli["capture"]);
  }
  SECTION("masked diffusion: the same generation block as hooklens generate") {
    RunSettings s = settings_for(llada(), tmp / "session");
    s.prompt_ids = {"85,294,223,181"};
    s.diffusion.gen_length = 8;
    s.diffusion.steps = 4;
    s.diffusion.block_length = 4;
    s.hooks = {"none"};
    RunSession session(s, RunSession::Kind::generate);
    CHECK(session.mode() == hooklens::GenerationMode::masked_diffusion);
    session.generate();
    const auto [m, cli] = session_and_cli(tmp.path, fmt::format("generate --model '{}' --prompt-ids 85,294,223,181 "
                                                                "--gen-length 8 --steps 4 --block-length 4 --hooks none",
                                                                llada().string()));
    CHECK(m["generation"] == cli["generation"]);
    CHECK(m["generation"]["mode"] == "masked_diffusion");
    CHECK(m["generation"]["steps"].size() == 4);
    CHECK(m["captures"].empty());
  }
}

TEST_CASE("the context check refuses prompt + new positions past the context, for both kinds", "[fixtures]") {
  test::TempDir tmp;
  SECTION("check_context itself: the last position that fits, and one more") {
    hooklens::ModelInfo info;
    info.n_ctx = 128;
    CHECK_NOTHROW(hooklens::check_context(info, 4, 124, "--max-new-tokens"));
    CHECK(test::usage_error_of([&] { hooklens::check_context(info, 4, 125, "--max-new-tokens"); }) ==
          "prompt of 4 tokens + --max-new-tokens 125 exceeds the model's context of 128 tokens");
  }
  SECTION("autoregressive (tiny-neo-a, context 128)") {
    RunSettings s = settings_for(neo(), tmp / "run");
    s.prompt_ids = {"464,3797,318,257"};
    s.autoregressive.max_new_tokens = 125;
    RunSession session(s, RunSession::Kind::generate);
    const std::string message = "prompt of 4 tokens + --max-new-tokens 125 exceeds the model's context of 128 tokens";
    CHECK(test::usage_error_of([&] { session.check_generation(); }) == message);
    CHECK(test::usage_error_of([&] { session.generate(); }) == message);
    CHECK_FALSE(fs::exists(tmp / "run"));  // refused before the run directory
  }
  SECTION("masked diffusion (llada-tiny-a, context 256)") {
    RunSettings s = settings_for(llada(), tmp / "run");
    s.prompt_ids = {"85,294,223,181"};
    s.diffusion.gen_length = 256;
    s.diffusion.steps = 256;
    RunSession session(s, RunSession::Kind::generate);
    const std::string message = "prompt of 4 tokens + --gen-length 256 exceeds the model's context of 256 tokens";
    CHECK(test::usage_error_of([&] { session.check_generation(); }) == message);
    CHECK(test::usage_error_of([&] { session.generate(); }) == message);
    CHECK_FALSE(fs::exists(tmp / "run"));
    // 252 new positions fit exactly.
    s.diffusion.gen_length = 252;
    s.diffusion.steps = 252;
    CHECK_NOTHROW(RunSession(s, RunSession::Kind::generate).check_generation());
  }
}

TEST_CASE("--ablate L.H zeroes that head's z and nothing else of the layer", "[fixtures]") {
  test::TempDir tmp;
  const std::string z = names::in_layer(1, names::z), pattern = names::in_layer(1, names::pattern);
  const std::string later = names::in_layer(2, names::pattern);
  const auto capture = [&](const std::string& name, std::vector<std::string> ablate) {
    RunSettings s = settings_for(neo(), tmp / name);
    s.prompt_ids = {"464,3797,318,257,3290"};
    s.hooks = {z, pattern, later};
    s.interventions.ablate = std::move(ablate);
    RunSession(s, RunSession::Kind::capture).capture();
    hooklens::RunReader run(tmp / name);
    std::map<std::string, at::Tensor> out;
    for (std::size_t i = 0; i < run.capture_count(); ++i) out[run.entry(i).hook] = run.load(i);
    REQUIRE(out.size() == 3);
    return out;
  };
  auto plain = capture("plain", {}), ablated = capture("ablated", {"1.2"});
  const at::Tensor& z0 = plain.at(z);  // [batch, pos, head, d_head]
  const at::Tensor& z1 = ablated.at(z);
  REQUIRE(z0.size(2) == 4);
  CHECK(z0.select(2, 2).abs().max().item<float>() > 0);
  CHECK(z1.select(2, 2).abs().max().item<float>() == 0);  // the ablated head
  for (int h : {0, 1, 3}) {
    INFO("head " << h);
    CHECK(at::equal(z0.select(2, h), z1.select(2, h)));
  }
  CHECK(at::equal(plain.at(pattern), ablated.at(pattern)));  // z is after the pattern: the layer's pattern stays
  CHECK_FALSE(at::equal(plain.at(later), ablated.at(later)));  // what the head wrote is missing downstream
}
