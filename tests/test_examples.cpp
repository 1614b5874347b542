// The example programs as users run them: build/bin/diffusion_attention as a subprocess, on run
// directories written here with the run_writer sink (synthetic patterns with known answers, and the
// upstream LLaDA fixture's attention), checked for the PNGs (decoded with stb_image), the influence
// tables, summary.json, and one-line errors with exit codes 1 / 2 on bad input.
#include "resource_bounds.h"
#include "png_util.h"
#include "test_util.h"

#include <hooklens/plugin.h>
#include <hooklens/run.h>
#include <hooklens/sink.h>
#include <hooklens/weights.h>

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

namespace {

namespace fs = std::filesystem;
using hooklens::CaptureContext;
using hooklens::Phase;
using nlohmann::json;
using test::distinct_colours;
using test::Png;
using test::TempDir;

const fs::path kProgram = HOOKLENS_BUILD_DIR "/bin/diffusion_attention";

// ---- running the program --------------------------------------------------------------------------

struct Outcome {
  int code = -1;
  std::string out, err, command;
  std::string describe() const {
    return fmt::format("{}\nexit {}\n--- stdout ---\n{}--- stderr ---\n{}", command, code, out, err);
  }
};

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Child {
  pid_t pid;
  fs::path logs;
  std::string command;
};

// posix_spawn (no fork of this multi-threaded process); stdout and stderr go to files in `logs`.
Child start_program(const std::vector<std::string>& args, const fs::path& logs, const fs::path& program = kProgram) {
  fs::create_directories(logs);
  std::vector<std::string> all{program.string()};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string out = (logs / "stdout").string(), err = (logs / "stderr").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  Child child{0, logs, ""};
  const int spawned = posix_spawn(&child.pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(spawned == 0);
  for (const auto& a : all) child.command += a + " ";
  return child;
}

// Waits for the child; one still running after 60 s is killed, so a hang fails the test.
Outcome wait_program(const Child& child) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60 * test::kSlowdown);
  int status = 0;
  while (waitpid(child.pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) kill(child.pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Outcome o;
  o.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  o.out = read_text(child.logs / "stdout");
  o.err = read_text(child.logs / "stderr");
  o.command = child.command;
  return o;
}

Outcome run_program(const std::vector<std::string>& args, const fs::path& logs, const fs::path& program = kProgram) {
  return wait_program(start_program(args, logs, program));
}

// Independent invocations two at a time: each one spends most of its time loading libtorch.
std::vector<Outcome> run_programs(const std::vector<std::vector<std::string>>& invocations, const fs::path& logs,
                                  const fs::path& program = kProgram) {
  std::vector<Outcome> outcomes;
  for (std::size_t i = 0; i < invocations.size(); i += 2) {
    const Child a = start_program(invocations[i], logs / std::to_string(i), program);
    if (i + 1 < invocations.size()) {
      const Child b = start_program(invocations[i + 1], logs / std::to_string(i + 1), program);
      outcomes.push_back(wait_program(a));
      outcomes.push_back(wait_program(b));
    } else {
      outcomes.push_back(wait_program(a));
    }
  }
  return outcomes;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// ---- writing runs ---------------------------------------------------------------------------------

struct Capture {
  std::string hook;
  CaptureContext ctx;
  at::Tensor tensor;
};

std::string pattern_hook(int layer) { return fmt::format("blocks.{}.attn.hook_pattern", layer); }

void write_run(const fs::path& dir, const json& fields, const std::vector<Capture>& captures, bool finish = true) {
  auto sink = std::static_pointer_cast<hooklens::CaptureSink>(
      hooklens::PluginRegistry::create_from(test::plugin_file("run_writer").string(), "sink"));
  sink->open({{"out", dir.string()}});
  for (const auto& c : captures) sink->capture(c.hook, c.ctx, c.tensor);
  if (finish) sink->finish(fields);
  else sink->abort("stopped by the test");
}

// A [1, heads, queries, keys] pattern whose rows are uniform over the keys.
at::Tensor uniform(std::int64_t heads, std::int64_t queries, std::int64_t keys) {
  return at::full({1, heads, queries, keys}, 1.0 / double(keys));
}

// Generated rows (>= first_row) of `head` (-1: every head) attend only to `key`.
void one_hot_rows(at::Tensor& pattern, int head, std::int64_t first_row, std::int64_t key) {
  auto a = pattern.accessor<float, 4>();
  for (std::int64_t h = 0; h < pattern.size(1); ++h) {
    if (head >= 0 && h != head) continue;
    for (std::int64_t r = first_row; r < pattern.size(2); ++r)
      for (std::int64_t k = 0; k < pattern.size(3); ++k) a[0][h][r][k] = k == key ? 1.0f : 0.0f;
  }
}

// The synthetic diffusion run: prompt P = 4, 4 generated positions (T = 8), 2 heads, 2 layers,
// 4 denoising steps in 2 blocks, pass 0 and the CFG pass 1. Every row is uniform (1/8) except:
// at the last step (3), layer 0's generated rows attend only to prompt position 1 in both heads,
// layer 1's head 0 to position 1 and head 1 to position 2; in pass 1 the generated rows attend only
// to position 3 at every step.
constexpr std::int64_t kP = 4, kT = 8, kHeads = 2;
constexpr int kLayers = 2, kSteps = 4;
const std::vector<std::string> kTokens{"The", " cat", ",", "\"x"};

json diffusion_fields() {
  json steps = json::array();
  for (int s = 0; s < kSteps; ++s)
    steps.push_back({{"step", s}, {"block", s / 2}, {"ids", std::vector<int>(kT, 9)},
                     {"committed", {kP + s}}, {"confidences", {0.5}}});
  return {{"model", {{"adapter", "test"}, {"n_layers", kLayers}, {"n_heads", kHeads}}},
          {"prompts", {{{"text", "The cat,\"x"}, {"ids", {1, 2, 3, 4}}, {"tokens", kTokens}}}},
          {"generation", {{"mode", "masked_diffusion"}, {"prompt_length", kP}, {"gen_length", kT - kP},
                          {"mask_id", 9}, {"steps", steps}, {"output_ids", std::vector<int>(kT, 5)}}}};
}

std::vector<Capture> diffusion_captures() {
  std::vector<Capture> captures;
  for (int s = 0; s < kSteps; ++s)
    for (int pass = 0; pass < 2; ++pass) {
      for (int l = 0; l < kLayers; ++l) {
        at::Tensor p = uniform(kHeads, kT, kT);
        if (pass == 1) one_hot_rows(p, -1, kP, 3);
        else if (s == kSteps - 1 && l == 0) one_hot_rows(p, -1, kP, 1);
        else if (s == kSteps - 1) one_hot_rows(p, 0, kP, 1), one_hot_rows(p, 1, kP, 2);
        captures.push_back({pattern_hook(l), test::context(0, Phase::denoise, s, s / 2, l, 0, pass), p});
      }
      captures.push_back({"hook_logits", test::context(0, Phase::denoise, s, s / 2, -1, 0, pass), at::zeros({1, kT, 10})});
    }
  return captures;
}

// ---- reading the outputs --------------------------------------------------------------------------

// The colour at the centre of cell (row, col) of the panel's matrix (geometry from summary.json).
std::array<int, 3> cell(const Png& png, const json& panel, int row, int col) {
  const json& m = panel.at("matrix");
  return png.pixel(m.at("x").get<int>() + col * m.at("cell_width").get<int>() + m.at("cell_width").get<int>() / 2,
                   m.at("y").get<int>() + row * m.at("cell_height").get<int>() + m.at("cell_height").get<int>() / 2);
}

// Viridis' ends (low #440154, high #fde725) and the diverging map's white and red end.
const std::array<int, 3> kLow{68, 1, 84}, kHigh{253, 231, 37}, kWhite{247, 247, 247}, kRed{178, 24, 43};

json load_json(const fs::path& file) {
  INFO(file.string());
  REQUIRE(fs::exists(file));
  return json::parse(read_text(file));
}

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// summary.json's entries by file name, checked to list exactly the files in the directory.
std::map<std::string, json> summary_files(const fs::path& dir) {
  const json summary = load_json(dir / "summary.json");
  std::map<std::string, json> files;
  for (const auto& f : summary.at("files")) {
    CHECK(f.at("shows").is_string());
    CHECK(f.contains("kind"));
    files[f.at("file")] = f;
  }
  std::set<std::string> listed{"summary.json"};
  for (const auto& [name, entry] : files) listed.insert(name);
  CHECK(listed == files_in(dir));
  return files;
}

struct InfluenceRow {
  int step, layer, pos;
  std::string token;
  double mass;
};

// influence.csv: header "step,layer,prompt_pos,token,mass"; the token is an RFC 4180 quoted field.
std::vector<InfluenceRow> load_influence_csv(const fs::path& file) {
  const std::string text = read_text(file);
  std::vector<std::vector<std::string>> records(1, std::vector<std::string>(1));
  bool quoted = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    auto& record = records.back();
    if (quoted && c == '"' && i + 1 < text.size() && text[i + 1] == '"') record.back() += '"', ++i;
    else if (c == '"') quoted = !quoted;
    else if (!quoted && c == ',') record.emplace_back();
    else if (!quoted && c == '\n') records.emplace_back(1);
    else record.back() += c;
  }
  REQUIRE(records.back() == std::vector<std::string>{""});  // the file ends with a newline
  records.pop_back();
  REQUIRE(records.front() == std::vector<std::string>{"step", "layer", "prompt_pos", "token", "mass"});
  std::vector<InfluenceRow> rows;
  for (std::size_t i = 1; i < records.size(); ++i) {
    const auto& r = records[i];
    REQUIRE(r.size() == 5);
    rows.push_back({std::stoi(r[0]), std::stoi(r[1]), std::stoi(r[2]), r[3], std::stod(r[4])});
  }
  return rows;
}

std::map<std::tuple<int, int, int>, double> mass_by_key(const std::vector<InfluenceRow>& rows) {
  std::map<std::tuple<int, int, int>, double> mass;
  for (const auto& r : rows) mass[{r.step, r.layer, r.pos}] = r.mass;
  return mass;
}

struct Fixture {
  TempDir tmp;
  fs::path run = tmp.path / "run";
  Fixture() { write_run(run, diffusion_fields(), diffusion_captures()); }
  Outcome invoke(std::vector<std::string> args) {
    args.insert(args.begin(), run.string());
    return run_program(args, tmp.path);
  }
};

void check_success(const Outcome& r) {
  INFO(r.describe());
  REQUIRE(r.code == 0);
  CHECK(r.err.empty());
}

}  // namespace

TEST_CASE("diffusion_attention draws a synthetic diffusion run with known patterns") {
  Fixture f;
  const fs::path out = f.tmp.path / "figures";
  check_success(f.invoke({"--out", out.string(), "--cell", "8"}));
  const auto files = summary_files(out);
  CHECK(files_in(out) == std::set<std::string>{"heatmap_step0_layer0_mean.png", "heatmap_step0_layer1_mean.png",
                                              "heatmap_step3_layer0_mean.png", "heatmap_step3_layer1_mean.png",
                                              "evolution_layer0.png", "evolution_layer1.png", "influence.csv",
                                              "influence.json", "influence.png", "summary.json"});
  const json summary = load_json(out / "summary.json");
  CHECK(summary.at("steps") == json{0, 3});
  CHECK(summary.at("layers") == json{0, 1});
  CHECK(summary.at("prompt_length") == kP);
  CHECK(summary.at("sequence_length") == kT);

  {  // heatmaps: the last step's generated rows are bright only at prompt position 1
    const json& entry = files.at("heatmap_step3_layer0_mean.png");
    CHECK(entry.at("kind") == "heatmap");
    CHECK(entry.at("layer") == 0);
    CHECK(entry.at("step") == 3);
    CHECK(entry.at("block") == 1);
    CHECK(entry.at("heads") == "mean");
    const Png png = Png::load(out / "heatmap_step3_layer0_mean.png");
    CHECK(png.width == entry.at("width"));
    CHECK(png.height == entry.at("height"));
    const json& panel = entry.at("panels").at(0);
    const json& m = panel.at("matrix");
    CHECK(m.at("rows") == kT);
    CHECK(m.at("cols") == kT);
    CHECK(m.at("cell_width") == 8);  // --cell 8: a 64 x 64 pixel matrix inside the image
    CHECK(m.at("x").get<int>() + 8 * kT <= png.width);
    CHECK(m.at("y").get<int>() + 8 * kT <= png.height);
    CHECK(panel.at("scale").at("max") == Approx(1.0));
    CHECK(panel.at("scale").at("colormap") == "viridis");
    for (int row = kP; row < kT; ++row) {
      CHECK(cell(png, panel, row, 1) == kHigh);
      for (int col : {0, 2, 3, 4, 7}) CHECK(cell(png, panel, row, col) == kLow);
    }
    // Prompt rows stay uniform: one colour, neither end of the map.
    const auto prompt_colour = cell(png, panel, 0, 0);
    CHECK(prompt_colour != kLow);
    CHECK(prompt_colour != kHigh);
    for (int col = 0; col < kT; ++col) CHECK(cell(png, panel, 2, col) == prompt_colour);
    CHECK(distinct_colours(png) > 10);  // matrix, colour bar, text

    // Step 0 is uniform everywhere: the whole matrix in one colour.
    const json& first = files.at("heatmap_step0_layer1_mean.png").at("panels").at(0);
    const Png png0 = Png::load(out / "heatmap_step0_layer1_mean.png");
    for (int row = 0; row < kT; ++row)
      for (int col = 0; col < kT; ++col) CHECK(cell(png0, first, row, col) == cell(png0, first, 0, 0));
  }

  {  // evolution: first and last step on a shared scale, and their signed difference
    const json& entry = files.at("evolution_layer0.png");
    CHECK(entry.at("kind") == "evolution");
    CHECK(entry.at("layer") == 0);
    CHECK(entry.at("steps") == json{0, 3});
    const Png png = Png::load(out / "evolution_layer0.png");
    CHECK(png.width == entry.at("width"));
    CHECK(png.height == entry.at("height"));
    const json& panels = entry.at("panels");
    REQUIRE(panels.size() == 3);
    CHECK(cell(png, panels[1], 5, 1) == kHigh);
    CHECK(cell(png, panels[0], 5, 1) == cell(png, panels[1], 0, 0));  // both 1/8 on the shared scale
    CHECK(panels[2].at("scale").at("min") == Approx(-0.875));
    CHECK(panels[2].at("scale").at("max") == Approx(0.875));
    CHECK(cell(png, panels[2], 5, 1) == kRed);    // 1 - 1/8: the largest increase
    CHECK(cell(png, panels[2], 1, 6) == kWhite);  // prompt rows did not change
    const auto fell = cell(png, panels[2], 5, 0);  // 0 - 1/8: a decrease, bluish
    CHECK(fell[2] > fell[0]);
  }

  {  // influence: mass 1 on prompt position 1 at the last step, 1/8 everywhere before
    const auto rows = load_influence_csv(out / "influence.csv");
    CHECK(rows.size() == std::size_t(kSteps * kLayers * kP));
    const auto mass = mass_by_key(rows);
    for (int s = 0; s < kSteps - 1; ++s)
      for (int l = 0; l < kLayers; ++l)
        for (int j = 0; j < kP; ++j) CHECK(mass.at({s, l, j}) == Approx(0.125).margin(1e-7));
    const std::vector<double> layer0{0, 1, 0, 0}, layer1{0, 0.5, 0.5, 0};
    for (int j = 0; j < kP; ++j) {
      CHECK(mass.at({3, 0, j}) == Approx(layer0[j]).margin(1e-7));
      CHECK(mass.at({3, 1, j}) == Approx(layer1[j]).margin(1e-7));
    }
    for (const auto& r : rows) CHECK(r.token == kTokens[r.pos]);  // including the quoted '"x'

    const json inf = load_json(out / "influence.json");
    CHECK(inf.at("tokens") == kTokens);
    CHECK(inf.at("prompt_length") == kP);
    REQUIRE(inf.at("entries").size() == std::size_t(kSteps * kLayers));
    for (const auto& e : inf.at("entries"))
      for (int j = 0; j < kP; ++j)
        CHECK(e.at("mass").at(j).get<double>() ==
              Approx(mass.at({e.at("step").get<int>(), e.at("layer").get<int>(), j})).margin(1e-7));
    const json& last = inf.at("layer_mean").at(3);
    CHECK(last.at("step") == 3);
    CHECK(last.at("block") == 1);
    CHECK(last.at("mass").get<std::vector<double>>() ==
          std::vector<double>{0, 0.75, 0.25, 0});  // exact: sums of halves and quarters

    // influence.png: steps x prompt positions, layer-averaged: (3, 1) is the maximum, (3, 0) zero.
    const json& entry = files.at("influence.png");
    CHECK(entry.at("row_steps") == json{0, 1, 2, 3});
    const Png png = Png::load(out / "influence.png");
    const json& panel = entry.at("panels").at(0);
    CHECK(panel.at("matrix").at("rows") == kSteps);
    CHECK(panel.at("matrix").at("cols") == kP);
    CHECK(cell(png, panel, 3, 1) == kHigh);
    CHECK(cell(png, panel, 3, 0) == kLow);
    CHECK(cell(png, panel, 0, 0) == cell(png, panel, 2, 3));
  }
}

TEST_CASE("diffusion_attention options: --heads, --layers, --steps, --pass, default output, reruns") {
  Fixture f;
  const fs::path out = f.run / "figures" / "diffusion";  // the default

  SECTION("every head of one layer at one step; evolution needs two steps") {
    const Outcome r = f.invoke({"--heads", "--layers", "1", "--steps", "last"});
    check_success(r);
    CHECK_THAT(r.out, Catch::Contains("evolution needs two steps"));
    const auto files = summary_files(out);
    CHECK(files_in(out) == std::set<std::string>{"heatmap_step3_layer1_mean.png", "heatmap_step3_layer1_head0.png",
                                                "heatmap_step3_layer1_head1.png", "influence.csv", "influence.json",
                                                "influence.png", "summary.json"});
    CHECK(files.at("heatmap_step3_layer1_head1.png").at("heads") == 1);
    const Png png = Png::load(out / "heatmap_step3_layer1_head1.png");
    const json& panel = files.at("heatmap_step3_layer1_head1.png").at("panels").at(0);
    CHECK(cell(png, panel, 6, 2) == kHigh);
    CHECK(cell(png, panel, 6, 1) == kLow);
    const Png head0 = Png::load(out / "heatmap_step3_layer1_head0.png");
    CHECK(cell(head0, files.at("heatmap_step3_layer1_head0.png").at("panels").at(0), 6, 1) == kHigh);
    const auto rows = load_influence_csv(out / "influence.csv");
    CHECK(rows.size() == std::size_t(kSteps * kP));
    for (const auto& row : rows) CHECK(row.layer == 1);

    // A second run into the same directory replaces the first one's files.
    check_success(f.invoke({"--steps", "1,2", "--layers", "0"}));
    CHECK(files_in(out) == std::set<std::string>{"heatmap_step1_layer0_mean.png", "heatmap_step2_layer0_mean.png",
                                                "evolution_layer0.png", "influence.csv", "influence.json",
                                                "influence.png", "summary.json"});
    summary_files(out);
  }
  SECTION("files that are not ours are never removed") {
    fs::create_directories(out);
    std::ofstream(out / "keep.txt") << "mine";
    std::ofstream(out / "summary.json") << R"({"files": [{"file": "keep.txt"}]})";
    check_success(f.invoke({}));
    CHECK(read_text(out / "keep.txt") == "mine");
    CHECK(load_json(out / "summary.json").at("format") == "hooklens-diffusion-attention");
  }
  SECTION("the unconditional CFG pass") {
    check_success(f.invoke({"--pass", "1", "--steps", "all"}));
    const auto files = summary_files(out);
    CHECK(files.size() == std::size_t(kSteps * kLayers + kLayers + 3));
    const auto mass = mass_by_key(load_influence_csv(out / "influence.csv"));
    for (int s = 0; s < kSteps; ++s)
      for (int l = 0; l < kLayers; ++l) {
        CHECK(mass.at({s, l, 3}) == Approx(1.0).margin(1e-7));
        CHECK(mass.at({s, l, 0}) == Approx(0.0).margin(1e-7));
      }
    CHECK(load_json(out / "summary.json").at("pass") == 1);
  }
}

TEST_CASE("diffusion_attention on an autoregressive run: prefill heatmaps, decode-step influence") {
  TempDir tmp;
  const fs::path run = tmp.path / "run", out = tmp.path / "out";
  // Prompt of 3 tokens, 3 decode steps; each decode row attends only to prompt position 2.
  std::vector<Capture> captures;
  for (int l = 0; l < 2; ++l)
    captures.push_back({pattern_hook(l), test::context(0, Phase::prefill, 0, -1, l, 0), uniform(2, 3, 3)});
  for (int s = 1; s <= 3; ++s)
    for (int l = 0; l < 2; ++l) {
      at::Tensor p = uniform(2, 1, 3 + s);
      one_hot_rows(p, -1, 0, 2);
      captures.push_back({pattern_hook(l), test::context(0, Phase::decode, s, -1, l, 3 + s - 1), p});
    }
  write_run(run,
            {{"model", {{"adapter", "test"}}},
             {"prompts", {{{"text", "abc"}, {"ids", {1, 2, 3}}, {"tokens", {"a", "b", "c"}}}}},
             {"generation", {{"mode", "autoregressive"}, {"output_ids", {1, 2, 3, 4, 5, 6}}}}},
            captures);
  const Outcome r = run_program({run.string(), "--out", out.string()}, tmp.path);
  check_success(r);
  CHECK_THAT(r.out, Catch::Contains("evolution across steps needs a masked-diffusion run"));
  const auto files = summary_files(out);
  CHECK(files_in(out) == std::set<std::string>{"heatmap_step0_layer0_mean.png", "heatmap_step0_layer1_mean.png",
                                              "influence.csv", "influence.json", "influence.png", "summary.json"});
  CHECK_THAT(load_json(out / "summary.json").at("notes").at(0).get<std::string>(), Catch::Contains("masked-diffusion"));
  const auto rows = load_influence_csv(out / "influence.csv");
  CHECK(rows.size() == 3 * 2 * 3);
  for (const auto& row : rows) {
    CHECK(row.step >= 1);
    CHECK(row.mass == Approx(row.pos == 2 ? 1.0 : 0.0).margin(1e-7));
  }
  const Outcome bad = run_program({run.string(), "--out", out.string(), "--steps", "2"}, tmp.path);
  INFO(bad.describe());
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("autoregressive run has them only at the prefill"));
}

TEST_CASE("diffusion_attention on sliced captures (heads, query and key windows)") {
  TempDir tmp;
  const fs::path out = tmp.path / "out";
  // Only pass 0, head 1, and either generated queries over prompt keys, or every query over keys 1..T-1.
  auto sliced = [](std::int64_t query_from, std::int64_t key_from, std::int64_t key_to) {
    std::vector<Capture> captures;
    for (auto c : diffusion_captures()) {
      if (c.ctx.pass != 0 || c.ctx.layer < 0) continue;
      c.tensor = c.tensor.slice(1, 1, 2).slice(2, query_from).slice(3, key_from, key_to).contiguous();
      c.ctx.query_offset = query_from;
      c.ctx.key_offset = key_from;
      captures.push_back(c);
    }
    return captures;
  };
  json fields = diffusion_fields();
  fields["capture"] = {{"heads", {1}}};

  SECTION("generated queries over prompt keys: the README's cut for big models") {
    const fs::path run = tmp.path / "run";
    write_run(run, fields, sliced(kP, 0, kP));
    check_success(run_program({run.string(), "--out", out.string(), "--heads", "--cell", "8"}, tmp.path));
    const auto files = summary_files(out);
    const json& entry = files.at("heatmap_step3_layer1_head1.png");  // the model's head number
    CHECK(entry.at("heads") == 1);
    const json& m = entry.at("panels").at(0).at("matrix");
    CHECK(m.at("rows") == kT - kP);
    CHECK(m.at("cols") == kP);
    CHECK(m.at("first_row") == kP);
    CHECK(m.at("first_col") == 0);
    const Png png = Png::load(out / "heatmap_step3_layer1_head1.png");
    CHECK(cell(png, entry.at("panels").at(0), 0, 2) == kHigh);  // position P attends to prompt position 2
    CHECK(cell(png, entry.at("panels").at(0), 0, 1) == kLow);
    CHECK_THAT(files.at("heatmap_step3_layer1_mean.png").at("panels").at(0).at("title").get<std::string>(),
               Catch::Contains("mean of heads 1"));
    CHECK(files.count("evolution_layer1.png"));
    const auto mass = mass_by_key(load_influence_csv(out / "influence.csv"));
    CHECK(mass.size() == std::size_t(kSteps * kLayers * kP));
    CHECK(mass.at({3, 0, 1}) == Approx(1.0).margin(1e-7));
    CHECK(mass.at({3, 1, 2}) == Approx(1.0).margin(1e-7));
    CHECK(mass.at({0, 1, 2}) == Approx(0.125).margin(1e-7));
    const json inf = load_json(out / "influence.json");
    CHECK(inf.at("entries").at(0).at("query_positions") == json{kP, kT - 1});
  }
  SECTION("keys that miss part of the prompt: heatmaps, but no influence") {
    const fs::path run = tmp.path / "run";
    write_run(run, fields, sliced(0, 1, kT));
    const Outcome r = run_program({run.string(), "--out", out.string()}, tmp.path);
    check_success(r);
    CHECK_THAT(r.out, Catch::Contains("keys do not cover the whole prompt (0-3)"));
    CHECK(files_in(out) == std::set<std::string>{"heatmap_step0_layer0_mean.png", "heatmap_step0_layer1_mean.png",
                                                "heatmap_step3_layer0_mean.png", "heatmap_step3_layer1_mean.png",
                                                "evolution_layer0.png", "evolution_layer1.png", "summary.json"});
    const auto files = summary_files(out);
    const json& panel = files.at("heatmap_step3_layer0_mean.png").at("panels").at(0);
    CHECK(panel.at("matrix").at("first_col") == 1);
    CHECK(cell(Png::load(out / "heatmap_step3_layer0_mean.png"), panel, 5, 0) == kHigh);  // column 0 is key 1
  }
}

TEST_CASE("diffusion_attention on the LLaDA fixture's attention matches masses computed here") {
  const fs::path fixture = test::fixtures() / "llada-tiny-a";
  if (!fs::exists(fixture / "reference_0.safetensors")) {
    test::skip("no llada-tiny-a fixture in " + test::fixtures().string());
    return;
  }
  const auto reference = hooklens::read_safetensors(fixture / "reference_0.safetensors");
  constexpr std::int64_t P = 12;
  std::vector<Capture> captures;
  for (int s = 0; s < 8; ++s)
    for (int l = 0; l < 2; ++l)
      captures.push_back({pattern_hook(l), test::context(0, Phase::denoise, s, s / 4, l, 0),
                          reference.at(fmt::format("step{}.attn.L{}", s, l))});
  TempDir tmp;
  const fs::path run = tmp.path / "run", out = tmp.path / "out";
  write_run(run,
            {{"model", {{"adapter", "llada"}}},
             {"prompts", {{{"ids", std::vector<int>(P, 1)}, {"tokens", std::vector<std::string>(P, "t")}}}},
             {"generation", {{"mode", "masked_diffusion"}, {"prompt_length", P}, {"gen_length", 16}}}},
            captures);
  check_success(run_program({run.string(), "--out", out.string()}, tmp.path));
  summary_files(out);
  const auto mass = mass_by_key(load_influence_csv(out / "influence.csv"));
  CHECK(mass.size() == std::size_t(8 * 2 * P));
  for (int s = 0; s < 8; ++s)
    for (int l = 0; l < 2; ++l) {
      // Independent reference: mean over heads and generated query rows, in double precision.
      const at::Tensor a = reference.at(fmt::format("step{}.attn.L{}", s, l)).to(at::kDouble);
      const at::Tensor expected = a.select(0, 0).slice(1, P).slice(2, 0, P).mean(at::IntArrayRef{0, 1});
      for (int j = 0; j < P; ++j) CHECK(mass.at({s, l, j}) == Approx(expected[j].item<double>()).margin(1e-6));
    }
  for (const char* name : {"heatmap_step0_layer0_mean.png", "heatmap_step7_layer1_mean.png", "evolution_layer1.png"})
    CHECK(distinct_colours(Png::load(out / name)) > 20);
}

TEST_CASE("diffusion_attention refuses bad runs and options with one error line") {
  Fixture f;
  const fs::path incomplete = f.tmp.path / "incomplete", no_patterns = f.tmp.path / "no_patterns";
  write_run(incomplete, diffusion_fields(), diffusion_captures(), /*finish=*/false);
  write_run(no_patterns, diffusion_fields(),
            {{"hook_logits", test::context(0, Phase::denoise, 0, 0, -1, 0), at::zeros({1, kT, 10})}});
  auto nan_captures = diffusion_captures();
  nan_captures[0].tensor[0][0][0][0] = NAN;
  const fs::path nan_run = f.tmp.path / "nan";
  write_run(nan_run, diffusion_fields(), nan_captures);
  // A manifest whose first capture entry lost its step.
  const fs::path no_step = f.tmp.path / "no_step";
  fs::copy(f.run, no_step);
  json manifest = load_json(no_step / "manifest.json");
  manifest["captures"][0].erase("step");
  std::ofstream(no_step / "manifest.json") << manifest.dump();

  struct Case {
    std::vector<std::string> args;
    int code;
    std::vector<std::string> culprits;
  };
  const std::string run = f.run.string();
  const std::vector<Case> cases{
      {{(f.tmp.path / "missing").string()}, 1, {"manifest.json"}},
      {{incomplete.string()}, 1, {"incomplete", incomplete.string()}},
      {{no_patterns.string()}, 1, {"no hook_pattern captures"}},
      {{no_step.string()}, 1, {(no_step / "manifest.json").string(), "capture 0 has no integer field 'step'"}},
      {{run, "--steps", "9"}, 2, {"--steps 9", "step 9", "0,1,2,3"}},
      {{run, "--steps", "0,x"}, 2, {"'x'"}},
      {{run, "--layers", "5"}, 2, {"layer 5"}},
      {{run, "--layers", "-1"}, 2, {"'-1'"}},
      {{run, "--pass", "2"}, 2, {"--pass 2"}},
      {{run, "--prompt", "3"}, 2, {"--prompt 3"}},
      {{run, "--cell", "5000"}, 2, {"--cell 5000"}},
      {{run, "--bogus"}, 2, {"--bogus"}},
      {{}, 2, {"RUN"}},
      // Found while reading, after the output directory was made.
      {{nan_run.string()}, 1, {(nan_run / "manifest.json").string(), "'p0.s0.b0.blocks.0.attn.hook_pattern'",
                               "holds NaN or infinite values"}},
  };
  std::vector<std::vector<std::string>> invocations;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    invocations.push_back(cases[i].args);
    invocations.back().insert(invocations.back().end(), {"--out", (f.tmp.path / fmt::format("out{}", i)).string()});
  }
  invocations.push_back({"--help"});
  const auto outcomes = run_programs(invocations, f.tmp.path / "logs");
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Outcome& r = outcomes[i];
    INFO(r.describe());
    CHECK(r.code == cases[i].code);
    const auto lines = lines_of(r.err);
    REQUIRE(lines.size() == 1);
    CHECK_THAT(lines[0], Catch::StartsWith("diffusion_attention: error: "));
    for (const auto& culprit : cases[i].culprits) CHECK_THAT(lines[0], Catch::Contains(culprit));
    if (i + 1 < cases.size()) CHECK_FALSE(fs::exists(f.tmp.path / fmt::format("out{}", i)));  // nothing written
  }
  const Outcome& help = outcomes.back();
  INFO(help.describe());
  CHECK(help.code == 0);
  for (const char* option : {"RUN", "--out", "--steps", "--layers", "--pass", "--heads"})
    CHECK_THAT(help.out, Catch::Contains(option));
}

// ---- analyze_attention ------------------------------------------------------------------------------

using Square = std::vector<std::vector<double>>;
Square square(std::int64_t n) { return Square(std::size_t(n), std::vector<double>(std::size_t(n), 0.0)); }

// analyze_attention makes its example model (a short training: --train-steps 30), and its outputs are
// checked against tests/reference/attention_reference.py, which recomputes the patterns from the
// model's weights with its own forward pass (and checks its logits against the scripted model's).
// One test case without SECTIONs: Catch2 reruns a case per section, which would train the model again.
TEST_CASE("analyze_attention on the example model it makes agrees with an eager recomputation") {
  if (!test::python_has("torch")) {
    test::skip(fmt::format("{} has no torch (apt install python3-torch)", test::kPython));
    return;
  }
  const fs::path program = HOOKLENS_BUILD_DIR "/bin/analyze_attention";
  TempDir tmp;
  const std::string prompt = "The cat sat on the mat. The cat";
  const int top = 3;
  const fs::path out = tmp / "out";
  const Outcome made = run_program({"--out", out.string(), "--train-steps", "30", "--prompt", prompt, "--top",
                                    std::to_string(top)},
                                   tmp / "logs-made", program);
  INFO(made.describe());
  REQUIRE(made.code == 0);
  CHECK(made.err.empty());

  const fs::path model = out / "model" / "model.pt";
  const json shape = load_json(out / "model" / "example_model.json");
  const int layers = shape.at("layers"), heads = shape.at("heads");
  const std::int64_t T = std::int64_t(prompt.size());  // byte-level: one token per byte

  const json summary = load_json(out / "summary.json");
  CHECK(summary.at("format") == "hooklens-analyze-attention");
  CHECK(summary.at("prompt") == prompt);
  CHECK(summary.at("ids") == json(std::vector<int>(prompt.begin(), prompt.end())));
  CHECK(summary.at("tokens").at(4) == "c");
  CHECK(summary.at("model").at("adapter") == "custom");
  CHECK(summary.at("model").at("example_model").at("train_steps") == 30);
  std::set<std::string> expected{"top_attended.txt", "top_attended.json", "attention_flow.png", "attention_flow.json"};
  for (int l = 0; l < layers; ++l)
    expected.insert({fmt::format("heatmap_layer{}.png", l), fmt::format("heads_layer{}.png", l)});
  std::map<std::string, json> listed;
  for (const json& f : summary.at("files")) listed[f.at("file").get<std::string>()] = f;
  for (const auto& name : expected) {
    INFO(name);
    REQUIRE(listed.count(name));
    CHECK(fs::is_regular_file(out / name));
    CHECK_FALSE(listed[name].at("shows").get<std::string>().empty());
  }
  CHECK(listed.size() == expected.size());

  {  // the PNGs decode to the size summary.json gives and show the patterns
    for (const auto& [name, entry] : listed) {
      if (fs::path(name).extension() != ".png") continue;
      INFO(name);
      const Png png = Png::load(out / name);
      CHECK(png.width == entry.at("width").get<int>());
      CHECK(png.height == entry.at("height").get<int>());
      CHECK(distinct_colours(png) > 20);  // not blank: cells in many colours, text, colour bar
    }
    const json heads0 = listed.at("heads_layer0.png");
    REQUIRE(heads0.at("panels").size() == std::size_t(heads));
    CHECK(heads0.at("panels").at(heads - 1).at("title") == fmt::format("L0H{}", heads - 1));
    // Query 0 can attend only to itself: weight 1 (the top of the scale); a future key gets 0.
    const json& panel = listed.at("heatmap_layer1.png").at("panels").at(0);
    CHECK(panel.at("matrix").at("rows") == T);
    CHECK(panel.at("scale").at("max").get<double>() == Approx(1.0).margin(1e-6));
    const Png png = Png::load(out / "heatmap_layer1.png");
    CHECK(cell(png, panel, 0, 0) == kHigh);
    CHECK(cell(png, panel, 0, int(T) - 1) == kLow);
    CHECK(cell(png, panel, 3, 5) == kLow);
  }

  {  // top_attended.json and attention_flow.json match patterns recomputed in Python
    const fs::path ref_file = tmp / "reference.json";
    const int status = test::run_python(HOOKLENS_SOURCE_DIR "/tests/reference/attention_reference.py",
                                        fmt::format("'{}' '{}' '{}'", model.string(), prompt, ref_file.string()),
                                        tmp / "reference.log");
    INFO(test::read_file(tmp / "reference.log"));
    REQUIRE(status == 0);
    const json ref = load_json(ref_file);
    CHECK(ref.at("ids") == summary.at("ids"));
    // ref patterns [layer][head][query][key] -> head means [layer][query][key]
    std::vector<Square> mean(std::size_t(layers), square(T));
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < heads; ++h)
        for (std::int64_t q = 0; q < T; ++q)
          for (std::int64_t k = 0; k < T; ++k)
            mean[l][q][k] += ref["patterns"][l][h][q][k].get<double>() / heads;

    const json top_json = load_json(out / "top_attended.json");
    REQUIRE(top_json.at("layers").size() == std::size_t(layers));
    for (const json& layer : top_json.at("layers")) {
      const int l = layer.at("layer");
      REQUIRE(layer.at("queries").size() == std::size_t(T));
      for (const json& query : layer.at("queries")) {
        const std::int64_t q = query.at("query");
        INFO("layer " << l << " query " << q);
        const json& listed_top = query.at("top");
        REQUIRE(listed_top.size() == std::size_t(top));
        std::set<std::int64_t> keys;
        double lowest = 2.0;
        for (const json& e : listed_top) {
          const std::int64_t k = e.at("key");
          keys.insert(k);
          CHECK(e.at("weight").get<double>() == Approx(mean[l][q][k]).margin(1e-5));
          CHECK(e.at("token") == std::string(1, prompt[std::size_t(k)]));
          lowest = std::min(lowest, mean[l][q][k]);
        }
        CHECK(keys.size() == std::size_t(top));
        for (std::int64_t k = 0; k < T; ++k)  // nothing left out weighs more than what was listed
          if (!keys.count(k)) CHECK(mean[l][q][k] <= lowest + 1e-5);
        for (const json& e : query.at("by_head")) {
          const int h = e.at("head");
          double best = 0.0;
          for (std::int64_t k = 0; k < T; ++k) best = std::max(best, ref["patterns"][l][h][q][k].get<double>());
          CHECK(ref["patterns"][l][h][q][e.at("key").get<std::int64_t>()].get<double>() == Approx(best).margin(1e-5));
        }
      }
    }
    CHECK_THAT(read_text(out / "top_attended.txt"), Catch::Contains(fmt::format("L{}H{}:", layers - 1, heads - 1)));

    // Rollout of the recomputed head means: R_l = A_l R_(l-1), A = (0.5 W + 0.5 I) with rows renormalised.
    Square rolled;
    for (int l = 0; l < layers; ++l) {
      auto a = square(T);
      for (std::int64_t i = 0; i < T; ++i) {
        double sum = 0;
        for (std::int64_t j = 0; j < T; ++j) sum += a[i][j] = 0.5 * mean[l][i][j] + (i == j ? 0.5 : 0.0);
        for (auto& v : a[i]) v /= sum;
      }
      if (l > 0) {
        auto r = square(T);
        for (std::int64_t i = 0; i < T; ++i)
          for (std::int64_t m = 0; m < T; ++m)
            for (std::int64_t j = 0; j < T; ++j) r[i][j] += a[i][m] * rolled[m][j];
        a = r;
      }
      rolled = a;
      const json flow = load_json(out / "attention_flow.json");
      for (std::int64_t k = 0; k < T; ++k) {
        INFO("layer " << l << " key " << k);
        CHECK(flow.at("last_token_rollout").at(std::size_t(l * T + k)).get<double>() ==
              Approx(rolled[T - 1][k]).margin(1e-5));
        CHECK(flow.at("last_token_attention").at(std::size_t(l * T + k)).get<double>() ==
              Approx(mean[l][T - 1][k]).margin(1e-5));
      }
    }
  }

  {  // a second run reuses the model; --layers draws only those layers
    const fs::path again = tmp / "again";
    fs::create_directories(again);
    fs::create_symlink(out / "model", again / "model");
    const Outcome r = run_program({"--out", again.string(), "--train-steps", "30", "--prompt", "ab", "--layers", "1"},
                                  tmp / "logs-again", program);
    INFO(r.describe());
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Catch::Contains("using the example model already in"));
    CHECK(fs::exists(again / "heatmap_layer1.png"));
    CHECK_FALSE(fs::exists(again / "heatmap_layer0.png"));
    CHECK(load_json(again / "summary.json").at("layers") == json({1}));
  }

  {  // bad input: one error line, exit 1 or 2
    struct Case {
      std::vector<std::string> args;
      int code;
      std::vector<std::string> culprits;
    };
    const std::string missing = (tmp / "missing.pt").string();
    const std::vector<Case> cases{
        {{"--model", missing}, 1, {missing, "no such model file"}},
        {{"--model", model.string(), "--layers", "7"}, 2, {"--layers 7", model.string(), "layer 7"}},
        {{"--model", model.string(), "--layers", "0,x"}, 2, {"'x'"}},
        {{"--model", model.string(), "--top", "0"}, 2, {"--top 0"}},
        {{"--model", model.string(), "--prompt", ""}, 2, {"--prompt"}},
        {{"--model", model.string(), "--prompt", std::string(200, 'a')}, 2, {"--prompt: 200 tokens, at most 128"}},
        {{"--tokenizer", tmp.path.string()}, 2, {"--tokenizer needs --model"}},
    };
    std::vector<std::vector<std::string>> invocations;
    for (std::size_t i = 0; i < cases.size(); ++i) {
      invocations.push_back(cases[i].args);
      invocations.back().insert(invocations.back().end(), {"--out", (tmp / fmt::format("bad{}", i)).string()});
    }
    const auto outcomes = run_programs(invocations, tmp / "logs-bad", program);
    for (std::size_t i = 0; i < cases.size(); ++i) {
      const Outcome& r = outcomes[i];
      INFO(r.describe());
      CHECK(r.code == cases[i].code);
      const auto lines = lines_of(r.err);
      REQUIRE(lines.size() == 1);
      CHECK_THAT(lines[0], Catch::StartsWith("analyze_attention: error: "));
      for (const auto& culprit : cases[i].culprits) CHECK_THAT(lines[0], Catch::Contains(culprit));
      CHECK_FALSE(fs::exists(tmp / fmt::format("bad{}", i)));  // nothing written
    }
  }
}

// ---- issue 5's examples: compare_phrasings, word_attention, validation_heads, attention_distance ----
// Each program runs on tiny-neo-a (GPT-2 BPE tokenizer); its numbers are recomputed here from patterns
// recorded directly through the library.

#include "model_util.h"

#include <hooklens/analyzer.h>
#include <hooklens/attention_stats.h>
#include <hooklens/generate.h>

#include <ATen/ops/from_blob.h>
#include <ATen/ops/mean.h>

namespace {

const fs::path kTinyNeo = test::fixtures() / "tiny-neo-a";
fs::path example_program(const std::string& name) { return fs::path(HOOKLENS_BUILD_DIR) / "bin" / name; }

at::Tensor ids_tensor(std::vector<std::int64_t> ids) {
  return at::from_blob(ids.data(), {1, std::int64_t(ids.size())}, at::kLong).clone();
}

// The layer's pattern of one forward pass over `ids`, recorded here.
std::map<int, at::Tensor> forward_patterns(hooklens::Model& model, const std::vector<std::int64_t>& ids) {
  std::map<int, at::Tensor> patterns;
  hooklens::HookSet hooks;
  hooks.add({{"blocks.*.attn.hook_pattern"}}, [&](std::string_view, const CaptureContext& ctx, at::Tensor& t) {
    patterns[ctx.layer] = t.clone();
  });
  model.forward(ids_tensor(ids), hooks, {}, nullptr);
  return patterns;
}

// Mean over heads (that count rows) of each head's mean row entropy, from summarize_heads.
double mean_head_entropy(const at::Tensor& pattern, int layer, const hooklens::ModelInfo& info) {
  CaptureContext ctx;
  ctx.layer = layer;
  double sum = 0;
  int n = 0;
  for (const auto& s : hooklens::summarize_heads(pattern, hooklens::PatternRows::of(pattern, ctx, info)))
    if (s.rows > 0) sum += s.mean().entropy, ++n;
  return sum / n;
}

}  // namespace

TEST_CASE("compare_phrasings writes both reports per set and a table that matches a direct computation", "[fixtures]") {
  TempDir tmp;
  const std::string a = "The cat is black.", b = "Is the cat black?";
  const Outcome r = run_program({"--model", kTinyNeo.string(), "--set", "all", "--pair", a, b, "--top", "3", "--out",
                                 (tmp / "out").string()},
                                tmp / "logs", example_program("compare_phrasings"));
  INFO(r.describe());
  REQUIRE(r.code == 0);
  const std::map<std::string, std::size_t> sets{{"simple", 3}, {"questions", 3}, {"sentiment", 4}, {"custom", 2}};
  for (const auto& [set, phrasings] : sets) {
    INFO(set);
    const fs::path dir = tmp / "out" / set;
    const json compare = load_json(dir / "reports" / "compare_prompts.json");
    const json stats = load_json(dir / "reports" / "attention_stats.json");
    CHECK(compare.at("analyzer") == "compare_prompts");
    CHECK(stats.at("analyzer") == "attention_stats");
    CHECK(compare.at("prompts").size() == phrasings);
    CHECK(compare.at("most_different_heads").size() == 3);
    CHECK(compare.at("neurons").at("layers").size() == 4);  // tiny-neo-a has mlp.hook_post in its 4 layers
    CHECK(stats.at("heads").size() == 16);
    const std::string table = test::read_file(dir / "table.txt");
    CHECK_THAT(r.out, Catch::Contains(table));
    CHECK_THAT(table, Catch::Contains("most different heads") && Catch::Contains("top neuron differences"));
  }

  // The custom pair's per-layer mean entropies, recomputed from patterns recorded here.
  auto model = test::load_model("gpt_neo", kTinyNeo);
  const json compare = load_json(tmp / "out" / "custom" / "reports" / "compare_prompts.json");
  CHECK(compare.at("prompts").at(0).at("text") == a);
  CHECK(compare.at("prompts").at(1).at("text") == b);
  const std::string table = test::read_file(tmp / "out" / "custom" / "table.txt");
  std::vector<std::map<int, at::Tensor>> patterns;
  for (const auto& text : {a, b}) patterns.push_back(forward_patterns(*model, model->tokenizer()->encode(text)));
  for (int l = 0; l < 4; ++l) {
    std::string row = fmt::format("  {:>5}", l);
    for (std::size_t p = 0; p < 2; ++p) {
      const double expected = mean_head_entropy(patterns[p].at(l), l, model->info());
      const json& layer = compare.at("per_prompt").at(p).at("layers").at(l);
      REQUIRE(layer.at("layer") == l);
      CHECK(layer.at("head_mean").at("entropy").get<double>() == Approx(expected).epsilon(1e-5));
      row += fmt::format("  {:>8}", fmt::format("{:.4f}", expected));
    }
    CHECK_THAT(table, Catch::Contains(row + "\n"));
  }
}

TEST_CASE("word_attention's word sums agree with patterns recorded through the library", "[fixtures]") {
  TempDir tmp;
  const std::string prompt = "The cat sat on the mat, and";
  const int N = 4;
  const fs::path out = tmp / "out";
  const Outcome r = run_program({"--model", kTinyNeo.string(), "--prompt", prompt, "--max-new-tokens",
                                 std::to_string(N), "--out", out.string()},
                                tmp / "logs", example_program("word_attention"));
  INFO(r.describe());
  REQUIRE(r.code == 0);
  const json report = load_json(out / "word_attention.json");
  REQUIRE(fs::is_regular_file(out / "word_attention.png"));
  CHECK(Png::load(out / "word_attention.png").width > 0);

  // The same greedy generation, its decode-step patterns recorded here.
  auto model = test::load_model("gpt_neo", kTinyNeo);
  const auto& tok = *model->tokenizer();
  const auto ids = tok.encode(prompt);
  const std::int64_t P = std::int64_t(ids.size());
  test::Recorder rec({"blocks.*.attn.hook_pattern"});
  hooklens::SamplingOptions sampling;
  sampling.max_new_tokens = N + 1;
  sampling.stop_at_eos = false;
  const auto result = hooklens::generate_autoregressive(*model, ids, sampling, rec.hooks);
  std::vector<std::string> generated;
  for (int i = 0; i < N; ++i) generated.push_back(tok.token_string(result.new_ids[std::size_t(i)]));
  CHECK(report.at("generated_tokens") == json(generated));

  // The words partition the positions, and each starts exactly where the documented rule says.
  const auto check_words = [&](const json& words, std::int64_t first, const std::vector<std::string>& tokens) {
    std::int64_t next = first;
    for (const json& w : words)
      for (std::size_t i = 0; i < w.at("positions").size(); ++i) {
        const std::int64_t pos = w.at("positions").at(i);
        REQUIRE(pos == next++);
        const std::string& t = tokens[std::size_t(pos - first)];
        const bool starts = !t.empty() && (t[0] == ' ' || std::ispunct(static_cast<unsigned char>(t[0])));
        CHECK((i == 0) == (pos == first || starts));
      }
    CHECK(next == first + std::int64_t(tokens.size()));
  };
  std::vector<std::string> prompt_tokens;
  for (auto id : ids) prompt_tokens.push_back(tok.token_string(id));
  check_words(report.at("prompt_words"), 0, prompt_tokens);
  check_words(report.at("generated_words"), P, generated);

  const json& prompt_words = report.at("prompt_words");
  REQUIRE(report.at("layers") == json({0, 1, 2, 3}));
  std::size_t csv_rows = 0;
  for (const json& g : report.at("generated_words")) {
    std::vector<double> mean(prompt_words.size(), 0.0);
    for (int l = 0; l < 4; ++l)
      for (std::size_t w = 0; w < prompt_words.size(); ++w) {
        double expected = 0;  // mean over the word's tokens of the head-mean attention summed over w's tokens
        for (const json& t : g.at("positions")) {
          const at::Tensor row = rec.at(fmt::format("blocks.{}.attn.hook_pattern", l), int(t.get<std::int64_t>() - P + 1))
                                     .to(at::kDouble)[0].mean(0)[0];  // the step's one query row, head mean
          for (const json& k : prompt_words.at(w).at("positions")) expected += row[k.get<std::int64_t>()].item<double>();
        }
        expected /= double(g.at("positions").size());
        CHECK(g.at("per_layer").at(l).at(w).get<double>() == Approx(expected).margin(1e-6));
        mean[w] += expected / 4;
      }
    for (std::size_t w = 0; w < prompt_words.size(); ++w)
      CHECK(g.at("attention").at(w).get<double>() == Approx(mean[w]).margin(1e-6));
    csv_rows += prompt_words.size() * 5;
  }
  CHECK(lines_of(test::read_file(out / "word_attention.csv")).size() == csv_rows + 1);
}

TEST_CASE("validation_heads cuts sequences as the CLI does and agrees with the attention_stats analyzer", "[fixtures]") {
  TempDir tmp;
  const fs::path text = tmp / "valid.txt";
  {
    std::ofstream f(text);
    f << "The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
         "structure in Paris. Its base is square, measuring 125 metres on each side.\n";
  }
  const int seq_len = 8, sequence = 2, layer = 1;
  const fs::path out = tmp / "out";
  const Outcome r = run_program({"--model", kTinyNeo.string(), "--text-file", text.string(), "--seq-len",
                                 std::to_string(seq_len), "--sequence", std::to_string(sequence), "--layer",
                                 std::to_string(layer), "--out", out.string()},
                                tmp / "logs", example_program("validation_heads"));
  INFO(r.describe());
  REQUIRE(r.code == 0);
  const json summary = load_json(out / "summary.json");
  CHECK(summary.at("text_file") == text.string());
  CHECK(summary.at("sequence") == sequence);
  CHECK(fs::is_regular_file(out / summary.at("figure").get<std::string>()));
  CHECK_THAT(r.out, Catch::Contains("valid.txt sequence 2"));

  // The sequence the CLI's --text-file makes.
  REQUIRE(test::run_hooklens(fmt::format("capture --model '{}' --text-file '{}' --seq-len {} --max-sequences {} "
                                         "--hooks blocks.0.attn.hook_pattern --out '{}'",
                                         kTinyNeo.string(), text.string(), seq_len, sequence + 1,
                                         (tmp / "run").string()),
                             tmp / "capture.log") == 0);
  const json manifest = load_json(tmp / "run" / "manifest.json");
  const auto ids = manifest.at("prompts").at(sequence).at("ids").get<std::vector<std::int64_t>>();
  CHECK(summary.at("ids") == json(ids));

  // attention_stats on that sequence, fed here.
  auto model = test::load_model("gpt_neo", kTinyNeo);
  auto stats = std::static_pointer_cast<hooklens::Analyzer>(
      hooklens::PluginRegistry::create_from(test::plugin_file("attention_stats"), "analyzer"));
  stats->begin({{"model", model->info().to_json()}, {"prompts", json::array()}, {"mode", "none"}, {"options", json::object()}});
  hooklens::HookSet hooks;
  hooks.add({{fmt::format("blocks.{}.attn.hook_pattern", layer)}},
            [&](std::string_view name, const CaptureContext& ctx, at::Tensor& t) { stats->observe(name, ctx, t); });
  model->forward(ids_tensor(ids), hooks, {}, nullptr);
  const json report = stats->finish(json::object());
  REQUIRE(report.at("heads").size() == summary.at("heads").size());
  for (std::size_t h = 0; h < report.at("heads").size(); ++h) {
    const json& expected = report.at("heads").at(h);
    const json& got = summary.at("heads").at(h);
    INFO("head " << h);
    for (const char* stat : {"entropy", "normalized_entropy", "row_std", "max_weight", "self_mass"})
      CHECK(got.at(stat).get<double>() == Approx(expected.at(stat).get<double>()).epsilon(1e-9));
    CHECK(got.at("label") == expected.at("label"));
    const json& same_label = summary.at("labels").at(got.at("label").get<std::string>());
    CHECK(std::find(same_label.begin(), same_label.end(), json(h)) != same_label.end());
  }
  const json& layer_stats = report.at("layers").at(0);
  CHECK(summary.at("head_averaged").at("entropy").get<double>() ==
        Approx(layer_stats.at("head_averaged").at("entropy").get<double>()).epsilon(1e-9));
  CHECK(summary.at("averaging_hides") == layer_stats.at("averaging_hides"));
}

TEST_CASE("attention_distance (the custom analyzer template) on hand-made patterns and in a capture", "[fixtures]") {
  auto analyzer = std::static_pointer_cast<hooklens::Analyzer>(
      hooklens::PluginRegistry::create_from(test::plugin_file("attention_distance"), "analyzer"));
  hooklens::ModelInfo info;
  info.n_layers = 2;
  info.n_heads = 2;
  info.layer_attention = {hooklens::AttentionKind::causal, hooklens::AttentionKind::bidirectional};
  analyzer->begin({{"model", info.to_json()}, {"prompts", json::array()}, {"mode", "none"}, {"options", json::object()}});
  const auto tensor = [](std::vector<float> v, std::vector<std::int64_t> shape) {
    return at::from_blob(v.data(), shape, at::kFloat).clone();
  };
  // Layer 0, causal, heads 0 and 1 over 3 positions.
  analyzer->observe("blocks.0.attn.hook_pattern", test::context(0, Phase::prefill, 0, -1, 0, 0),
                    tensor({1, 0, 0, .25f, .75f, 0, .5f, .25f, .25f,  //
                            1, 0, 0, 1, 0, 0, 0, 0, 1},
                           {1, 2, 3, 3}));
  // Layer 0 again, a decode step sliced to keys 1-2: query 3 sees keys 1..3, captured 1..2.
  CaptureContext sliced = test::context(0, Phase::decode, 1, -1, 0, 3);
  sliced.key_offset = 1;
  analyzer->observe("blocks.0.attn.hook_pattern", sliced, tensor({.5f, .5f, 1, 0}, {1, 2, 1, 2}));
  // Layer 1, bidirectional: query 0 looks ahead.
  analyzer->observe("blocks.1.attn.hook_pattern", test::context(0, Phase::prefill, 0, -1, 1, 0),
                    tensor({.5f, .5f, .5f, .5f, 0, 1, 0, 1}, {1, 2, 2, 2}));
  const json report = analyzer->finish(json::object());
  CHECK(report.at("analyzer") == "attention_distance");
  CHECK(report.at("definitions").contains("mean_distance"));
  const json& heads = report.at("heads");
  REQUIRE(heads.size() == 4);
  const auto head = [&](int l, int h) { return heads.at(std::size_t(l * 2 + h)); };
  // Head (0,0): rows 0, .25, .5*2+.25, then the sliced row .5*2+.5*1: (0 + .25 + 1.25 + 1.5) / 4.
  CHECK(head(0, 0).at("mean_distance").get<double>() == Approx(3.0 / 4));
  CHECK(head(0, 0).at("rows") == 4);
  // Head (0,1): rows 0, 1, 0, then the sliced row 1*2: 3 / 4.
  CHECK(head(0, 1).at("mean_distance").get<double>() == Approx(3.0 / 4));
  // Layer 1: head 0 rows -.5 and .5; head 1 rows -1 and 0.
  CHECK(head(1, 0).at("mean_distance").get<double>() == Approx(0).margin(1e-12));
  CHECK(head(1, 1).at("mean_distance").get<double>() == Approx(-0.5));
  // Entropy of head (0,0): rows with >= 2 visible keys (rows 1, 2 and the sliced row).
  const auto h = [](std::vector<double> w) {
    double e = 0;
    for (double v : w) e -= v > 0 ? v * std::log(v) : 0;
    return e;
  };
  CHECK(head(0, 0).at("entropy").get<double>() == Approx((h({.25, .75, 0}) + h({.5, .25, .25}) + h({.5, .5})) / 3));
  CHECK_THROWS_AS(analyzer->begin({{"model", info.to_json()}, {"options", {{"window", "3"}}}}), hooklens::UsageError);

  // Through the hooklens command, found in build/plugins like any analyzer.
  TempDir tmp;
  REQUIRE(test::run_hooklens(fmt::format("capture --model '{}' --prompt 'The cat sat on the mat' --hooks "
                                         "blocks.0.attn.hook_pattern --analyze attention_distance --out '{}'",
                                         kTinyNeo.string(), (tmp / "run").string()),
                             tmp / "capture.log") == 0);
  const json live = load_json(tmp / "run" / "reports" / "attention_distance.json");
  CHECK(live.at("heads").size() == 16);
  for (const json& entry : live.at("heads")) CHECK(entry.at("mean_distance").get<double>() >= 0);  // causal model
}

TEST_CASE("issue 5 examples refuse bad arguments with exit 2 and one error line", "[fixtures]") {
  TempDir tmp;
  const std::string model = kTinyNeo.string(), text = (tmp / "short.txt").string();
  { std::ofstream(text) << "A few words only.\n"; }
  struct Case {
    std::string program;
    std::vector<std::string> args, culprits;
  };
  const std::vector<Case> cases{
      {"compare_phrasings", {"--model", model, "--set", "custom"}, {"--set custom needs --pair"}},
      {"compare_phrasings", {"--model", model, "--set", "simple", "--pair", "a", "b"}, {"--pair"}},
      {"compare_phrasings", {"--model", model, "--set", "poems"}, {"--set"}},
      {"compare_phrasings", {"--model", (tmp / "nowhere").string()}, {"nowhere", "models/toy-neo"}},
      {"word_attention", {"--model", model, "--max-new-tokens", "0"}, {"--max-new-tokens"}},
      {"word_attention", {"--model", model, "--max-new-tokens", "200"}, {"context"}},
      {"validation_heads", {"--model", model, "--seq-len", "8"}, {"--text-file"}},
      {"validation_heads", {"--model", model, "--text-file", text, "--seq-len", "4", "--sequence", "5"},
       {"--sequence 5", "short.txt"}},
      {"validation_heads", {"--model", model, "--text-file", text, "--seq-len", "4", "--layer", "9"}, {"--layer 9"}},
      {"validation_heads", {"--model", model, "--text-file", (tmp / "missing.txt").string(), "--seq-len", "4"},
       {"missing.txt"}},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    std::vector<std::string> args = cases[i].args;
    args.insert(args.end(), {"--out", (tmp / fmt::format("out{}", i)).string()});
    const Outcome r = run_program(args, tmp / fmt::format("logs{}", i), example_program(cases[i].program));
    INFO(r.describe());
    CHECK(r.code == 2);
    const auto lines = lines_of(r.err);
    REQUIRE(lines.size() == 1);
    CHECK_THAT(lines[0], Catch::StartsWith(cases[i].program + ": error: "));
    for (const auto& culprit : cases[i].culprits) CHECK_THAT(lines[0], Catch::Contains(culprit));
  }
}
