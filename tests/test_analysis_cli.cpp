// Analyzers from the command line: live (--analyze on capture/generate) and offline (hooklens analyze)
// give the same report; a failing analyzer is reported and disabled while the run completes; bad
// analyzer arguments are usage errors; --text-file feeds sequences cut from a text file.
#include "resource_bounds.h"
#include "test_util.h"

#include <hooklens/run.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kTestAnalyzers = "HOOKLENS_PLUGIN_PATH='" HOOKLENS_TEST_PLUGIN_DIR "/analyzers'";

fs::path neo() { return test::fixtures() / "tiny-neo-a"; }

json read_json(const fs::path& file) { return json::parse(test::read_file(file)); }

std::string capture_args(const fs::path& out, const std::string& extra) {
  return fmt::format("capture --model '{}' --prompt 'The cat sat on the mat.' --prompt 'Hello there, how are you?' "
                     "--out '{}' {}",
                     neo().string(), out.string(), extra);
}

}  // namespace

TEST_CASE("analyzers live and offline give the same report; a failing one is disabled, the run completes", "[fixtures]") {
  test::TempDir dir;
  const fs::path run = dir / "run";
  REQUIRE(test::run_hooklens(capture_args(run, "--analyze attention_stats,failing --analyze-option failing.fail_in=observe"),
                             dir / "log", kTestAnalyzers) == 0);
  const std::string log = test::read_file(dir / "log");
  INFO(log);
  CHECK_THAT(log, Catch::Contains("analyzer failing failed and is disabled") && Catch::Contains("failing in observe"));
  hooklens::RunReader reader(run);  // complete
  CHECK(reader.manifest()["analyzers"] == json({"attention_stats", "failing"}));
  CHECK(read_json(run / "reports/failing.json")["error"] == "failing in observe, as asked");

  const json live = read_json(run / "reports/attention_stats.json");
  REQUIRE(live["heads"].is_array());
  CHECK(live["heads"].size() == std::size_t(reader.manifest()["model"]["n_layers"].get<int>() *
                                            reader.manifest()["model"]["n_heads"].get<int>()));
  fs::remove(run / "reports/attention_stats.json");
  REQUIRE(test::run_hooklens(fmt::format("analyze '{}' --analyze attention_stats", run.string()), dir / "log2") == 0);
  const json offline = read_json(run / "reports/attention_stats.json");
  REQUIRE(offline["heads"].size() == live["heads"].size());
  for (std::size_t i = 0; i < live["heads"].size(); ++i) {
    INFO("head record " << i);
    CHECK(offline["heads"][i]["layer"] == live["heads"][i]["layer"]);
    CHECK(offline["heads"][i]["head"] == live["heads"][i]["head"]);
    CHECK(offline["heads"][i]["entropy"].get<double>() == Approx(live["heads"][i]["entropy"].get<double>()).margin(1e-9));
  }

  for (const std::string where : {"begin", "finish"}) {
    INFO(where);
    const fs::path other = dir / ("run-" + where);
    REQUIRE(test::run_hooklens(capture_args(other, "--analyze failing --analyze-option failing.fail_in=" + where),
                               dir / "log3", kTestAnalyzers) == 0);
    CHECK(read_json(other / "reports/failing.json")["error"] == "failing in " + where + ", as asked");
    CHECK_NOTHROW(hooklens::RunReader(other));
  }
}

TEST_CASE("head_detectors adds its repeated random sequence to a capture run", "[fixtures]") {
  test::TempDir dir;
  const fs::path run = dir / "run";
  REQUIRE(test::run_hooklens(capture_args(run, "--analyze head_detectors"), dir / "log") == 0);
  const json manifest = read_json(run / "manifest.json");
  REQUIRE(manifest["prompts"].size() == 3);
  CHECK(manifest["prompts"][0]["source"] == "prompt");
  CHECK_THAT(manifest["prompts"][2]["source"].get<std::string>(), Catch::Contains("repeated random"));
  const json report = read_json(run / "reports/head_detectors.json");
  CHECK(report["heads"].size() == 16);  // tiny-neo-a: 4 layers x 4 heads
}

TEST_CASE("bad analyzer arguments are usage errors that leave no run", "[fixtures]") {
  test::TempDir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--analyze no_such_analyzer", "no_such_analyzer"},
      {"--analyze attention_stats --analyze-option attention_stats", "NAME.KEY=VALUE"},
      {"--analyze attention_stats --analyze-option head_detectors.seq_len=4", "not among"},
      {"--analyze-option attention_stats.x=1", "needs --analyze"},
  };
  for (const auto& [args, culprit] : cases) {
    INFO(args);
    const fs::path run = dir / "run";
    CHECK(test::run_hooklens(capture_args(run, args), dir / "log") == 2);
    CHECK_THAT(test::read_file(dir / "log"), Catch::Contains(culprit));
    CHECK_FALSE(fs::exists(run / "manifest.json"));
  }
  CHECK(test::run_hooklens("analyze '" + (dir / "nothing").string() + "' --analyze attention_stats", dir / "log") == 1);
  CHECK_THAT(test::read_file(dir / "log"), Catch::Contains("nothing"));
  CHECK(test::run_hooklens("analyze '" + dir.path.string() + "'", dir / "log") == 2);  // --analyze is required
  CHECK(test::run_hooklens("render '" + dir.path.string() + "' --format bmp", dir / "log") == 2);
  CHECK_THAT(test::read_file(dir / "log"), Catch::Contains("bmp"));
}

TEST_CASE("--text-file feeds consecutive sequences cut from a text file", "[fixtures]") {
  test::TempDir dir;
  const std::string text =
      "The tower stood above the valley for three hundred years. Travellers counted its windows, and every "
      "count came out different, which the villagers found endlessly amusing.\n";
  std::ofstream(dir / "valid.raw") << text;
  const fs::path run = dir / "run";
  REQUIRE(test::run_hooklens(fmt::format("capture --model '{}' --text-file '{}' --seq-len 8 --max-sequences 3 --out '{}'",
                                         neo().string(), (dir / "valid.raw").string(), run.string()),
                             dir / "log") == 0);
  const json prompts = read_json(run / "manifest.json")["prompts"];
  REQUIRE(prompts.size() == 3);
  std::string joined;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    CHECK(prompts[i]["ids"].size() == 8);
    CHECK_THAT(prompts[i]["source"].get<std::string>(), Catch::Contains(fmt::format("sequence {}", i)) &&
                                                            Catch::Contains(fmt::format("tokens {}-{}", 8 * i, 8 * i + 7)));
    joined += prompts[i]["text"].get<std::string>();
  }
  CHECK(text.rfind(joined, 0) == 0);  // the sequences are the text's first 24 tokens, in order

  CHECK(test::run_hooklens(fmt::format("capture --model '{}' --text-file '{}' --seq-len 4096 --out '{}'", neo().string(),
                                       (dir / "valid.raw").string(), (dir / "r2").string()),
                           dir / "log") == 2);
  CHECK_THAT(test::read_file(dir / "log"), Catch::Contains("fewer than one --seq-len 4096 sequence"));
  CHECK(test::run_hooklens(fmt::format("capture --model '{}' --text-file '{}' --out '{}'", neo().string(),
                                       (dir / "valid.raw").string(), (dir / "r3").string()),
                           dir / "log") == 2);
  CHECK_THAT(test::read_file(dir / "log"), Catch::Contains("--seq-len"));
}

TEST_CASE("offline analysis refuses runs that kept some heads only", "[fixtures]") {
  test::TempDir dir;
  REQUIRE(test::run_hooklens(capture_args(dir / "run", "--heads 1"), dir / "log") == 0);
  CHECK(test::run_hooklens("analyze '" + (dir / "run").string() + "' --analyze attention_stats", dir / "log") == 2);
  CHECK_THAT(test::read_file(dir / "log"), Catch::Contains("--heads"));
}

TEST_CASE("--render draws the run when it is complete; an unknown format is refused before it starts", "[fixtures]") {
  test::TempDir dir;
  REQUIRE(test::run_hooklens(capture_args(dir / "run", "--render svg,html"), dir / "log") == 0);
  CHECK(fs::exists(dir / "run/report/report.html"));
  CHECK(fs::exists(dir / "run/figures/figures.json"));
  CHECK(fs::exists(dir / "run/figures/p0_layer0_mean.svg"));
  CHECK(test::run_hooklens(capture_args(dir / "run2", "--render bmp"), dir / "log") == 2);
  CHECK_THAT(test::read_file(dir / "log"), Catch::Contains("bmp"));
  CHECK_FALSE(fs::exists(dir / "run2/manifest.json"));
}

TEST_CASE("hooklens analyze refuses semantically broken runs with one line naming the capture and field", "[fixtures]") {
  test::TempDir dir;
  const fs::path good = dir / "good";
  test::require_hooklens(capture_args(good, "--hooks 'blocks.*.attn.hook_pattern'"), dir / "log");
  const json m = read_json(good / "manifest.json");
  REQUIRE(m["captures"].size() == 8);  // 2 prompts x 4 layers
  const std::string key = m["captures"][1]["key"];
  struct Case {
    std::string name;
    std::function<void(json&)> edit;
    std::vector<std::string> culprits;
  };
  const std::vector<Case> cases = {
      {"negative_query_offset", [](json& j) { j["captures"][1]["query_offset"] = -1; }, {"'query_offset'", key}},
      {"negative_key_offset", [](json& j) { j["captures"][1]["key_offset"] = -5; }, {"'key_offset'", key}},
      {"rows_past_the_prompt", [](json& j) { j["captures"][1]["query_offset"] = 1; }, {"'query_offset' 1 +", key}},
      {"prompt_out_of_range", [](json& j) { j["captures"][1]["prompt"] = 7; }, {"'prompt' is 7", key}},
      {"layer_out_of_range", [](json& j) { j["captures"][1]["layer"] = 4; }, {"'layer' is 4", "4 layer(s)"}},
      {"huge_layer", [](json& j) { j["captures"][1]["layer"] = std::uint64_t(1) << 63; }, {"'layer'"}},
      {"heads_of_another_model", [](json& j) { j["model"]["n_heads"] = 3; }, {"4 heads", "captured 3"}},
      {"id_past_the_vocabulary", [](json& j) { j["prompts"][0]["ids"][0] = 50257; }, {"prompt 0 field 'ids'"}},
      {"tokens_and_ids_disagree", [](json& j) { j["prompts"][1]["tokens"].erase(0); }, {"prompt 1"}},
      {"unknown_phase", [](json& j) { j["captures"][1]["phase"] = "later"; }, {"'phase'", key}},
      {"pass_2", [](json& j) { j["captures"][1]["pass"] = 2; }, {"'pass'", key}},
      {"dtype", [](json& j) { j["captures"][1]["dtype"] = "F33"; }, {"'dtype'", key}},
      // Found by fuzz_run_directory: without ids every analyzer failed on its own (a raw JSON
      // message, the run "analyzed"); without tokens the figures and the viewer did.
      {"prompt_without_ids", [](json& j) { j["prompts"][0].erase("ids"); }, {"prompt 0 has no 'ids'"}},
      {"prompt_without_tokens", [](json& j) { j["prompts"][1].erase("tokens"); }, {"prompt 1 has no 'tokens'"}},
      {"a_million_heads", [](json& j) { j["model"]["n_heads"] = 1 << 20; }, {"'n_heads' is 1048576"}},
      {"key_offset_of_activations",
       [](json& j) { j["captures"][1]["hook"] = "blocks.1.hook_resid_post", j["captures"][1]["key_offset"] = 2; },
       {"'key_offset' is 2", key}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    const fs::path run = dir / c.name;
    fs::copy(good, run, fs::copy_options::recursive);
    json broken = m;
    c.edit(broken);
    std::ofstream(run / "manifest.json", std::ios::trunc) << broken.dump();
    const std::string line = test::hooklens_refusal("analyze '" + run.string() + "' --analyze attention_stats", dir / "log");
    CHECK_THAT(line, Catch::Contains((run / "manifest.json").string()));
    for (const std::string& culprit : c.culprits) CHECK_THAT(line, Catch::Contains(culprit));
    CHECK_FALSE(fs::exists(run / "reports"));
  }
  // The untouched run still analyzes.
  test::require_hooklens("analyze '" + good.string() + "' --analyze attention_stats", dir / "log");
  CHECK(fs::exists(good / "reports" / "attention_stats.json"));
}

// Hostile JSON (issue 13): a manifest or report nested a few thousand levels deep once overflowed
// the stack of `analyze` and `render`; now it is one error line naming the file, at once.
TEST_CASE("analyze and render refuse a manifest or report nested 5000 levels deep in one line", "[fixtures]") {
  test::TempDir dir;
  const std::string deep = std::string(5000, '[') + "1" + std::string(5000, ']');
  const std::vector<std::pair<std::string, std::string>> manifests = {
      {"format", R"({"format": )" + deep + "}"},
      {"version", R"({"format": "hooklens-run", "version": )" + deep + "}"},
      {"model", R"({"format": "hooklens-run", "version": 1, "complete": true, "captures": [], "model": )" + deep + "}"},
      {"error", R"({"format": "hooklens-run", "version": 1, "complete": false, "error": )" + deep + "}"},
  };
  const auto check_refused = [&](const std::string& args, const fs::path& culprit) {
    INFO("hooklens " << args);
    const auto start = std::chrono::steady_clock::now();
    CHECK(test::run_hooklens(args, dir / "log") == 1);
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20 * test::kSlowdown));
    const std::string log = test::read_file(dir / "log");
    INFO(log);
    CHECK(log.rfind("hooklens: error: ", 0) == 0);
    CHECK(std::count(log.begin(), log.end(), '\n') == 1);
    CHECK_THAT(log, Catch::Contains(culprit.string()) && Catch::Contains("nested deeper than 128 levels"));
  };
  for (const auto& [field, text] : manifests) {
    INFO("deep " << field);
    const fs::path run = dir / ("run-" + field);
    fs::create_directories(run);
    std::ofstream(run / "manifest.json") << text;
    check_refused(fmt::format("analyze '{}' --analyze attention_stats", run.string()), run / "manifest.json");
    check_refused(fmt::format("render '{}' --format html", run.string()), run / "manifest.json");
    check_refused(fmt::format("render '{}' --format svg", run.string()), run / "manifest.json");
  }

  // An analyzer report read back by the renderers.
  const fs::path run = dir / "run";
  REQUIRE(test::run_hooklens(capture_args(run, "--layers 0"), dir / "log") == 0);
  fs::create_directories(run / "reports");
  std::ofstream(run / "reports/deep.json") << R"({"heads": )" + deep + "}";
  check_refused(fmt::format("render '{}' --format html", run.string()), run / "reports/deep.json");
  check_refused(fmt::format("render '{}' --format svg", run.string()), run / "reports/deep.json");
}
