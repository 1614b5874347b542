// Analyzers over several processes (Analyzer::merges_state): every analyzer plugin, run over real
// runs of the committed toy models with its captures split over three "ranks" (contiguous and
// interleaved splits, merged in rank order and in another order), must write the report one
// analyzer observing every capture writes. Also the refusals of bad states, and AnalyzerSet's
// save_states / merge_states / require_mergeable.
#include "report_util.h"
#include "test_util.h"

#include <hooklens/analysis.h>
#include <hooklens/analyzer.h>
#include <hooklens/generation_mode.h>
#include <hooklens/json_read.h>
#include <hooklens/plugin.h>
#include <hooklens/run.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <functional>
#include <memory>
#include <set>
#include <vector>

namespace {

using hooklens::Analyzer;
using hooklens::CaptureContext;
using nlohmann::json;

// The analyzer plugins of the build, and the tests' failing analyzer (which does not merge).
const hooklens::PluginRegistry& registry() {
  static const hooklens::PluginRegistry plugins(
      {test::build_dir() / "plugins", test::fs::path(HOOKLENS_TEST_PLUGIN_DIR) / "analyzers"});
  return plugins;
}

const test::fs::path kToyNeo = test::fs::path(HOOKLENS_SOURCE_DIR) / "models/toy-neo";
const test::fs::path kToyLlada = test::fs::path(HOOKLENS_SOURCE_DIR) / "models/toy-llada";

struct Capture {
  std::string hook;
  CaptureContext ctx;
  at::Tensor tensor;
};

// A run written by bin/hooklens, its captures loaded once.
struct Run {
  json manifest;
  json begin;  // what Analyzer::begin gets, but its "options"
  std::vector<Capture> captures;
  std::shared_ptr<hooklens::Model> model;  // what Analyzer::use_model gets (logit_lens computes with it)
};

Run record_run(const std::string& command, const test::TempDir& dir) {
  const test::fs::path out = dir / "run";
  // Patterns and neurons, and what logit_lens reads.
  test::require_hooklens(fmt::format("{} --hooks 'blocks.*.attn.hook_pattern,blocks.*.mlp.hook_post,blocks.0.hook_resid_pre,"
                                     "blocks.*.hook_resid_post,blocks.*.attn.hook_result,blocks.*.hook_attn_out,"
                                     "blocks.*.hook_mlp_out,hook_logits' --out '{}'",
                                     command, out.string()),
                         dir / "log.txt");
  hooklens::RunReader reader(out, /*allow_incomplete=*/false, hooklens::RunCheck::consistent);
  Run run;
  run.manifest = reader.manifest();
  run.begin = {{"model", run.manifest.at("model")},
               {"prompts", run.manifest.at("prompts")},
               {"mode", hooklens::generation_mode_name(reader.generation().mode)}};
  for (std::size_t i = 0; i < reader.capture_count(); ++i)
    run.captures.push_back({reader.entry(i).hook, reader.entry(i).context, reader.load(i).to(at::kFloat)});
  run.model = hooklens::open_model(registry(), run.manifest.at("model").at("path").get<std::string>());
  return run;
}

// Which rank observes a capture.
using RankOf = std::function<int(const CaptureContext&)>;
constexpr int kRanks = 3;

// `name` begun with the whole run, having observed (in manifest order) the captures of `rank`
// (every capture when rank < 0).
std::shared_ptr<Analyzer> observed(const std::string& name, const Run& run, const json& options, const RankOf& rank_of,
                                   int rank) {
  auto analyzer = registry().create_analyzer(name);
  analyzer->use_model(*run.model);
  json begin = run.begin;
  begin["options"] = options;
  analyzer->begin(begin);
  const hooklens::HookFilter filter{analyzer->hooks()};
  for (const Capture& c : run.captures)
    if (filter.matches(c.hook, c.ctx) && (rank < 0 || rank_of(c.ctx) == rank)) analyzer->observe(c.hook, c.ctx, c.tensor);
  return analyzer;
}

json report_of(Analyzer& analyzer, const Run& run) {
  json report = analyzer.finish(run.manifest);
  hooklens::null_non_finite(report);  // as AnalyzerSet writes it
  return report;
}

// What a state looks like after the trip between processes.
json sent(const json& state) { return json::from_cbor(json::to_cbor(state)); }

// The report of rank 0 after merging the other ranks' states in `order`, through the Analyzer interface.
json merged_report(const std::string& name, const Run& run, const json& options, const RankOf& rank_of,
                   const std::vector<int>& order) {
  std::vector<std::shared_ptr<Analyzer>> ranks;
  for (int r = 0; r < kRanks; ++r) ranks.push_back(observed(name, run, options, rank_of, r));
  for (int r : order) ranks[0]->merge_state(sent(ranks[std::size_t(r)]->save_state()));
  return report_of(*ranks[0], run);
}

// The same through AnalyzerSet (CBOR bytes, report written to a run directory and read back).
json merged_report_of_sets(const std::string& name, const Run& run, const json& options, const RankOf& rank_of,
                           const std::vector<int>& order) {
  std::vector<std::string> option_args;
  for (const auto& [key, value] : options.items()) option_args.push_back(fmt::format("{}.{}={}", name, key, value.get<std::string>()));
  std::vector<std::unique_ptr<hooklens::AnalyzerSet>> ranks;
  for (int r = 0; r < kRanks; ++r) {
    ranks.push_back(std::make_unique<hooklens::AnalyzerSet>(registry(), std::vector<std::string>{name}, option_args));
    ranks.back()->require_mergeable();
    ranks.back()->use_model(*run.model);
    ranks.back()->begin(run.begin);
    for (const Capture& c : run.captures)
      if (rank_of(c.ctx) == r) ranks.back()->observe(c.hook, c.ctx, c.tensor);
  }
  for (int r : order) ranks[0]->merge_states(ranks[std::size_t(r)]->save_states(), r);
  test::TempDir dir;
  const auto written = ranks[0]->finish(run.manifest, dir.path);
  REQUIRE(written.size() == 1);
  return hooklens::read_json_file(written[0].file);
}

// Splits of a run's captures by `key` (prompt index, or step) into kRanks ranks, `keys` keys in all.
RankOf contiguous(std::function<int(const CaptureContext&)> key, int keys) {
  return [=](const CaptureContext& ctx) { return key(ctx) * kRanks / keys; };
}
RankOf interleaved(std::function<int(const CaptureContext&)> key) {
  return [=](const CaptureContext& ctx) { return key(ctx) % kRanks; };
}
int prompt_of(const CaptureContext& ctx) { return ctx.prompt; }
int step_of(const CaptureContext& ctx) { return ctx.step; }

// Every split and merge order against the single-process report; `nonempty` is a list of the
// report that must not be empty (so that the comparison compares something), or "" for a report
// that reads nothing of the run.
void check_merges(const std::string& name, const Run& run, const json& options, std::function<int(const CaptureContext&)> key,
                  int keys, const std::string& nonempty) {
  auto single = observed(name, run, options, nullptr, -1);
  const json expected = report_of(*single, run);
  INFO(name << " " << options.dump());
  if (!nonempty.empty()) {
    REQUIRE(expected.contains(nonempty));
    REQUIRE(!expected[nonempty].empty());
  }
  const std::vector<std::pair<std::string, RankOf>> splits = {{"contiguous", contiguous(key, keys)},
                                                              {"interleaved", interleaved(key)}};
  for (const auto& [split, rank_of] : splits) {
    INFO(split << " split");
    std::vector<int> captures(kRanks, 0);
    for (const Capture& c : run.captures) ++captures[std::size_t(rank_of(c.ctx))];
    for (int r = 0; r < kRanks; ++r) REQUIRE(captures[std::size_t(r)] > 0);  // every rank has a share
    // Rank 0 alone is not the whole run: the comparison can fail.
    if (!nonempty.empty()) CHECK(!test::report_difference(report_of(*observed(name, run, options, rank_of, 0), run), expected).empty());
    for (const std::vector<int>& order : {std::vector<int>{1, 2}, std::vector<int>{2, 1}}) {
      INFO("merged in order " << order[0] << ", " << order[1]);
      CHECK(test::report_difference(merged_report(name, run, options, rank_of, order), expected) == "");
    }
  }
  CHECK(test::report_difference(merged_report_of_sets(name, run, options, interleaved(key), {2, 1}), expected) == "");
}

// ---- states that must be refused ----------------------------------------------------------

// Shortens the first array of two numbers or more in `state`; false when there is none.
bool shorten_first_numbers(json& state) {
  if (state.is_array() && state.size() >= 2 && state[0].is_number() && state[1].is_number()) {
    state.erase(state.size() - 1);
    return true;
  }
  if (state.is_structured())
    for (auto& item : state)
      if (shorten_first_numbers(item)) return true;
  return false;
}

// Sets every `key` of an object in `state` to `value`; the number of places changed.
int set_every(json& state, const std::string& key, int value) {
  int changed = 0;
  if (state.is_object() && state.contains(key)) state[key] = value, ++changed;
  if (state.is_structured())
    for (auto& item : state) changed += set_every(item, key, value);
  return changed;
}

// Bad states are refused with a one-line Error and leave the analyzer as it was.
void check_refusals(const std::string& name, const Run& run, const json& options, const RankOf& rank_of) {
  INFO(name);
  const json state = sent(observed(name, run, options, rank_of, 1)->save_state());
  auto victim = observed(name, run, options, rank_of, 0);
  json short_numbers = state, wrong_layers = state, wrong_heads = state;
  REQUIRE(shorten_first_numbers(short_numbers));
  // Layers and heads the model does not have (the state of a rank that ran another model).
  REQUIRE(set_every(wrong_layers, "layer", run.begin["model"]["n_layers"].get<int>()) > 0);
  std::vector<json> refused = {json("garbage"), json(nullptr), json::object(), json::array(), short_numbers, wrong_layers};
  if (set_every(wrong_heads, "head", run.begin["model"]["n_heads"].get<int>()) > 0) refused.push_back(wrong_heads);
  else CHECK((name == "neurons" || name == "logit_lens"));  // the analyzers without head records in their state
  for (const json& bad : refused) {
    INFO(hooklens::brief_json(bad));
    const std::string error = test::error_of([&] { victim->merge_state(bad); });
    CHECK(error.rfind(name + ": cannot merge another rank's state: ", 0) == 0);
    CHECK(error.find('\n') == std::string::npos);
  }
  CHECK(test::report_difference(report_of(*victim, run), report_of(*observed(name, run, options, rank_of, 0), run)) == "");
}

// The runs every case reads: seven prompts of 1 to 65 tokens (the last head_detectors' repeated
// random sequence, added by --analyze head_detectors), an autoregressive and a masked-diffusion run.
const Run& prompts_run() {
  static const test::TempDir dir;
  static const Run run = record_run(
      fmt::format("capture --model '{}' --prompt 'Once upon a time, there was a little cat named Tom.' --prompt 'Tom' "
                  "--prompt 'The dog ran to the park and the dog sat.' --prompt 'Sam liked to play.' "
                  "--prompt 'One morning, Tom found a blue key in the field. Tom said, hi.' --prompt 'Lucy and Sam' "
                  "--analyze head_detectors",
                  kToyNeo.string()),
      dir);
  return run;
}
const Run& autoregressive_run() {
  static const test::TempDir dir;
  static const Run run = record_run(
      fmt::format("generate --model '{}' --prompt 'Once upon a time, there was' --max-new-tokens 7", kToyNeo.string()), dir);
  return run;
}
const Run& diffusion_run() {
  static const test::TempDir dir;
  static const Run run = record_run(fmt::format("generate --model '{}' --prompt 'Once upon a time' --gen-length 8 "
                                                "--steps 6 --block-length 4",
                                                kToyLlada.string()),
                                    dir);
  return run;
}

const std::vector<std::string> kAnalyzers = {"attention_stats", "compare_prompts",    "head_detectors", "neurons",
                                             "token_influence", "attention_distance", "logit_lens"};

}  // namespace

TEST_CASE("the runs: seven prompts with head_detectors' extra one, two generation runs") {
  const Run& run = prompts_run();
  REQUIRE(run.manifest["prompts"].size() == 7);
  std::set<std::size_t> lengths;
  for (const json& p : run.manifest["prompts"]) lengths.insert(p["ids"].size());
  CHECK(lengths.size() == 7);
  CHECK(run.manifest["prompts"][6]["source"].get<std::string>().rfind("head_detectors:", 0) == 0);
  CHECK(autoregressive_run().begin["mode"] == "autoregressive");
  CHECK(diffusion_run().begin["mode"] == "masked_diffusion");
}

TEST_CASE("every analyzer plugin merges its state") {
  for (const std::string& name : kAnalyzers) CHECK(registry().create_analyzer(name)->merges_state());
  hooklens::AnalyzerSet all(registry(), kAnalyzers, {});
  CHECK_NOTHROW(all.require_mergeable());
}

TEST_CASE("merged reports equal the single-process report: prompts split over ranks") {
  const Run& run = prompts_run();
  const int prompts = int(run.manifest["prompts"].size());
  check_merges("attention_stats", run, json::object(), prompt_of, prompts, "heads");
  check_merges("compare_prompts", run, {{"k", "4"}, {"top", "5"}}, prompt_of, prompts, "per_prompt");
  check_merges("head_detectors", run, json::object(), prompt_of, prompts, "heads");
  check_merges("neurons", run, {{"k", "3"}}, prompt_of, prompts, "per_prompt");
  check_merges("attention_distance", run, json::object(), prompt_of, prompts, "heads");
  check_merges("token_influence", run, json::object(), prompt_of, prompts, "");  // mode none: it reads nothing
  check_merges("logit_lens", run, json::object(), prompt_of, prompts, "entries");
  check_merges("logit_lens", run, {{"positions", "all"}, {"top_k", "3"}, {"target", "5"}}, prompt_of, prompts, "entries");
}

TEST_CASE("merged reports equal the single-process report: generation steps split over ranks") {
  const Run& ar = autoregressive_run();
  const int steps = int(ar.manifest["generation"]["steps"].size());
  check_merges("token_influence", ar, {{"target", "1"}}, step_of, steps, "generated");
  check_merges("attention_stats", ar, json::object(), step_of, steps, "heads");
  check_merges("attention_stats", ar, {{"steps", "0,4"}}, step_of, steps, "layers");
  check_merges("head_detectors", ar, json::object(), step_of, steps, "heads");
  check_merges("attention_distance", ar, json::object(), step_of, steps, "heads");
  check_merges("logit_lens", ar, json::object(), step_of, steps, "entries");
  const Run& md = diffusion_run();
  check_merges("token_influence", md, {{"target", "6"}}, step_of, int(md.manifest["generation"]["steps"].size()), "steps");
  check_merges("attention_stats", md, json::object(), step_of, int(md.manifest["generation"]["steps"].size()), "heads");
  check_merges("logit_lens", md, json::object(), step_of, int(md.manifest["generation"]["steps"].size()), "entries");
}

TEST_CASE("merge_state refuses bad states with one line and changes nothing") {
  const Run& run = prompts_run();
  for (const std::string& name : {"attention_stats", "compare_prompts", "head_detectors", "neurons", "attention_distance"})
    check_refusals(name, run, json::object(), interleaved(prompt_of));
  check_refusals("logit_lens", run, json::object(), interleaved(prompt_of));
  check_refusals("token_influence", autoregressive_run(), {{"target", "1"}}, interleaved(step_of));
}

TEST_CASE("a prompt (or generation step) observed by two ranks is refused where it would count twice") {
  const Run& run = prompts_run();
  for (const std::string& name : {"neurons", "compare_prompts", "logit_lens"}) {
    INFO(name);
    const json state = sent(observed(name, run, json::object(), interleaved(prompt_of), 1)->save_state());
    auto twice = observed(name, run, json::object(), interleaved(prompt_of), 0);
    twice->merge_state(state);
    CHECK(test::error_of([&] { twice->merge_state(state); }).find("was observed by both ranks") != std::string::npos);
  }
  const Run& ar = autoregressive_run();
  const json state = sent(observed("token_influence", ar, json::object(), interleaved(step_of), 1)->save_state());
  auto twice = observed("token_influence", ar, json::object(), interleaved(step_of), 0);
  twice->merge_state(state);
  CHECK(test::error_of([&] { twice->merge_state(state); }).find("was observed by both ranks") != std::string::npos);
}

TEST_CASE("AnalyzerSet: a rank's error or bad state disables the analyzer; require_mergeable") {
  const Run& run = prompts_run();
  const std::vector<std::string> names = {"attention_stats", "head_detectors", "neurons"};
  hooklens::AnalyzerSet other(registry(), names, {});
  other.begin(run.begin);
  for (const Capture& c : run.captures)
    if (c.ctx.prompt == 1) other.observe(c.hook, c.ctx, c.tensor);
  json states = json::from_cbor(other.save_states());
  REQUIRE(states["head_detectors"].contains("state"));
  states["attention_stats"] = {{"error", "out of memory"}};
  states["neurons"] = {{"error", 5}};  // not a string: still one line, not a crash

  hooklens::AnalyzerSet set(registry(), names, {});
  set.begin(run.begin);
  const auto bytes = json::to_cbor(states);
  set.merge_states(std::string(bytes.begin(), bytes.end()), 2);
  test::TempDir dir;
  set.finish(run.manifest, dir.path);
  const json stats = hooklens::read_json_file(dir / "reports/attention_stats.json");
  CHECK(stats["error"] == "on rank 2: out of memory");
  CHECK(hooklens::read_json_file(dir / "reports/neurons.json")["error"] == "on rank 2: 5");
  const json heads = hooklens::read_json_file(dir / "reports/head_detectors.json");
  CHECK(!heads.contains("error"));
  CHECK(heads["scored_captures"] == 4);  // prompt 1's four layers, merged

  hooklens::AnalyzerSet garbage(registry(), {"attention_stats"}, {});
  garbage.begin(run.begin);
  CHECK(test::error_of([&] { garbage.merge_states("\x9f", 1); }).find("the analyzer states of rank 1 are not valid CBOR") == 0);
  const auto wrong = json::to_cbor({{"attention_stats", "garbage"}});
  hooklens::AnalyzerSet bad(registry(), {"attention_stats"}, {});
  bad.begin(run.begin);
  bad.merge_states(std::string(wrong.begin(), wrong.end()), 1);
  test::TempDir bad_dir;
  bad.finish(run.manifest, bad_dir.path);
  CHECK(hooklens::read_json_file(bad_dir / "reports/attention_stats.json")["error"] == "rank 1 sent \"garbage\" instead of its state");

  hooklens::AnalyzerSet with_failing(registry(), {"attention_stats", "failing"}, {});
  const std::string refusal = test::usage_error_of([&] { with_failing.require_mergeable(); });
  CHECK(refusal.find("--analyze failing: cannot merge") == 0);
}
