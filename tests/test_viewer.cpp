// hooklens-view under Xvfb: runs made with build/bin/hooklens are opened with --screenshot, and the
// heatmap's pixels (its rectangle is printed on stdout) are compared cell by cell with colours the
// test computes itself from the captures (RunReader) and the viridis map. Damaged runs must show
// their error and exit 0. Skipped with a warning when xvfb-run is not installed.
#include "png_util.h"
#include "resource_bounds.h"

#include <hooklens/drawing.h>
#include <hooklens/run.h>
#include <prompt_bars.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <regex>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace drawing = hooklens::drawing;
using nlohmann::json;

const fs::path kViewer = HOOKLENS_BUILD_DIR "/bin/hooklens-view";
constexpr float kMissing = std::numeric_limits<float>::quiet_NaN();
// llada-tiny-a has no tokenizer; llama2.c's 512-token one fits its vocabulary (mask id 500).
const std::string kLiveDiffusion = fmt::format("--tokenizer '{}' --prompt 'Once upon a time' --gen-length 8 --steps 4 --block-length 4",
                                               (test::fixtures() / "llama2c" / "aidreams260K.tok512.bin").string());

// Under ASan, LeakSanitizer reports 240 bytes the OpenGL driver leaks (allocated in a library GLX
// loads and unloads, so the report cannot even name it): leak checking is off for the programs this
// test starts (the viewer and the hooklens runs it opens; the other tests check the CLI's leaks).
[[maybe_unused]] const bool kNoLeakChecksBelow = [] {
  if (test::kSanitized) {
    const char* options = std::getenv("ASAN_OPTIONS");
    setenv("ASAN_OPTIONS", (std::string(options ? options : "") + ":detect_leaks=0").c_str(), 1);
  }
  return true;
}();

bool have_xvfb() { return std::system("command -v xvfb-run >/dev/null 2>&1") == 0; }

struct Shot {
  int status = -1;
  std::string out, err;
  int x = 0, y = 0, w = 0, h = 0;  // the heatmap's rectangle in the PNG
  test::Png png;
  std::array<int, 3> pixel(int px, int py) const { return png.pixel(px, py); }
};

// Runs the viewer under Xvfb with --screenshot and `args`; decodes the PNG.
Shot screenshot(const fs::path& run, const std::string& args, const fs::path& dir, const std::string& name) {
  const fs::path png = dir / (name + ".png"), out = dir / (name + ".out"), err = dir / (name + ".err");
  const std::string cmd = fmt::format("xvfb-run -a -s '-screen 0 1280x800x24' '{}' '{}' --screenshot '{}' {} >'{}' 2>'{}'",
                                      kViewer.string(), run.string(), png.string(), args, out.string(), err.string());
  Shot shot;
  const int raw = std::system(cmd.c_str());
  shot.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  shot.out = test::read_file(out);
  shot.err = test::read_file(err);
  INFO(cmd << "\nstdout: " << shot.out << "\nstderr: " << shot.err);
  REQUIRE(shot.status == 0);
  std::smatch m;
  REQUIRE(std::regex_search(shot.out, m, std::regex(R"(heatmap: (\d+) (\d+) (\d+) (\d+))")));
  shot.x = std::stoi(m[1]), shot.y = std::stoi(m[2]), shot.w = std::stoi(m[3]), shot.h = std::stoi(m[4]);
  shot.png = test::Png::load(png);
  return shot;
}

// The matrix the viewer should show for `layer` at `step`: for autoregressive runs the rows of
// steps 0..step placed at their query offsets (NaN where nothing was captured). head < 0: mean.
struct Expected {
  int rows = 0, cols = 0;
  std::vector<float> values;
  float at(int r, int c) const { return values[std::size_t(r * cols + c)]; }
};
Expected expected(const fs::path& run, int layer, int head, int step, bool accumulate) {
  hooklens::RunReader reader(run);
  struct Piece {
    at::Tensor t;
    int q0;
  };
  std::vector<Piece> pieces;
  Expected e;
  for (std::size_t i = 0; i < reader.capture_count(); ++i) {
    const json& c = reader.capture(i);
    if (c.at("hook") != fmt::format("blocks.{}.attn.hook_pattern", layer) || c.at("prompt") != 0) continue;
    const int s = c.at("step");
    if (accumulate ? s > step : s != step) continue;
    at::Tensor t = reader.load(i).to(at::kFloat)[0];  // [head, q, k]
    t = head < 0 ? t.mean(0) : t[head];
    const int q0 = c.at("query_offset");
    e.rows = std::max(e.rows, q0 + int(t.size(0)));
    e.cols = std::max(e.cols, int(t.size(1)));
    pieces.push_back({t.contiguous(), q0});
  }
  e.values.assign(std::size_t(e.rows * e.cols), kMissing);
  for (const Piece& p : pieces)
    for (int r = 0; r < p.t.size(0); ++r)
      for (int c = 0; c < p.t.size(1); ++c) e.values[std::size_t((p.q0 + r) * e.cols + c)] = p.t[r][c].item<float>();
  return e;
}

// Every cell's centre pixel has the colour of its value on 0 .. max (grey where not captured).
void check_cells(const Shot& shot, const Expected& e) {
  REQUIRE(e.rows > 0);
  CHECK(std::abs(shot.w - shot.h * e.cols / e.rows) <= 2);  // the matrix keeps its aspect ratio
  float hi = 0;
  for (float v : e.values)
    if (std::isfinite(v)) hi = std::max(hi, v);
  for (int r = 0; r < e.rows; ++r)
    for (int c = 0; c < e.cols; ++c) {
      const int px = shot.x + int((c + 0.5) * shot.w / e.cols), py = shot.y + int((r + 0.5) * shot.h / e.rows);
      const float v = e.at(r, c);
      const drawing::Rgb want = std::isfinite(v) ? drawing::colour_at(drawing::kViridis, v / hi) : drawing::kMissing;
      const auto got = shot.pixel(px, py);
      INFO("cell " << r << "," << c << " value " << v << " at pixel " << px << "," << py);
      CHECK(std::abs(got[0] - want.r) <= 3);
      CHECK(std::abs(got[1] - want.g) <= 3);
      CHECK(std::abs(got[2] - want.b) <= 3);
    }
}

// Pixels of the heatmap rectangle that differ between two screenshots.
int differing_pixels(const Shot& a, const Shot& b) {
  REQUIRE(a.x == b.x);
  REQUIRE(a.w == b.w);
  int n = 0;
  for (int y = a.y; y < a.y + a.h; ++y)
    for (int x = a.x; x < a.x + a.w; ++x) n += a.pixel(x, y) != b.pixel(x, y);
  return n;
}

struct Runs {
  test::TempDir dir;
  fs::path capture = dir / "capture", generate = dir / "generate", diffusion = dir / "diffusion",
           diffusion_text = dir / "diffusion_text";
  Runs() {
    const fs::path neo = test::fixtures() / "tiny-neo-a", llada = test::fixtures() / "llada-tiny-a";
    test::require_hooklens(fmt::format("generate --model '{}' {} --out '{}'", llada.string(), kLiveDiffusion, diffusion_text.string()),
                           dir / "diffusion_text.log");
    test::require_hooklens(fmt::format("capture --model '{}' --prompt 'The cat sat on the mat' --analyze attention_stats --out '{}'",
                                       neo.string(), capture.string()),
                           dir / "capture.log");
    test::require_hooklens(fmt::format("generate --model '{}' --prompt 'The cat sat' --max-new-tokens 4 --out '{}'", neo.string(),
                                       generate.string()),
                           dir / "generate.log");
    test::require_hooklens(fmt::format("generate --model '{}' --prompt-ids 85,294,223,181 --gen-length 8 --steps 4 "
                                       "--block-length 4 --out '{}'",
                                       llada.string(), diffusion.string()),
                           dir / "diffusion.log");
  }
};
Runs& runs() {
  static Runs r;
  return r;
}

}  // namespace

TEST_CASE("hooklens-view screenshots show the selected head's pattern", "[viewer][fixtures]") {
  if (!have_xvfb()) {
    test::skip("xvfb-run is not installed: the viewer tests did not run");
    return;
  }
  Runs& r = runs();
  SECTION("capture run: --select changes the heatmap, and each shows its head's values") {
    const Shot a = screenshot(r.capture, "--select 0.0", r.dir.path, "cap00");
    const Shot b = screenshot(r.capture, "--select 2.1", r.dir.path, "cap21");
    REQUIRE(a.w > 100);
    check_cells(a, expected(r.capture, 0, 0, 0, false));
    check_cells(b, expected(r.capture, 2, 1, 0, false));
    CHECK(differing_pixels(a, b) > a.w * a.h / 10);
  }
  SECTION("the head mean") {
    check_cells(screenshot(r.capture, "--select 1.mean", r.dir.path, "cap1m"), expected(r.capture, 1, -1, 0, false));
  }
  SECTION("autoregressive generation: decode steps add query rows; keys nobody captured are grey") {
    const Shot s = screenshot(r.generate, "--select 3.2 --step 2", r.dir.path, "gen");
    const Expected e = expected(r.generate, 3, 2, 2, true);
    CHECK(e.rows == 5);  // 3 prompt tokens + the decode steps 1 and 2
    check_cells(s, e);
  }
  SECTION("masked diffusion: one step's pattern") {
    const Shot a = screenshot(r.diffusion, "--select 1.3 --step 1", r.dir.path, "diff1");
    const Shot b = screenshot(r.diffusion, "--select 1.3 --step 3", r.dir.path, "diff3");
    check_cells(a, expected(r.diffusion, 1, 3, 1, false));
    check_cells(b, expected(r.diffusion, 1, 3, 3, false));
  }
  SECTION("bad options are usage errors (status 2)") {
    for (const std::string args : {"--select 2", "--tab bogus", "--prompt-ids 1,2"}) {
      const std::string cmd = fmt::format("xvfb-run -a '{}' '{}' {} >/dev/null 2>&1", kViewer.string(), r.capture.string(), args);
      const int raw = std::system(cmd.c_str());
      INFO(cmd);
      CHECK((WIFEXITED(raw) && WEXITSTATUS(raw) == 2));
    }
  }
}

TEST_CASE("hooklens-view shows a damaged run's error instead of crashing", "[viewer][fixtures]") {
  if (!have_xvfb()) {
    test::skip("xvfb-run is not installed: the viewer tests did not run");
    return;
  }
  Runs& r = runs();
  static const Shot good = screenshot(r.capture, "--select 0.0", r.dir.path, "good");  // once, not per section
  SECTION("truncated shard") {
    const fs::path run = r.dir / "truncated";
    fs::copy(r.capture, run, fs::copy_options::recursive);
    fs::resize_file(run / "captures-00000.safetensors", 1500);
    const Shot s = screenshot(run, "--select 0.0", r.dir.path, "truncated");
    CHECK(s.err.find("captures-00000.safetensors") != std::string::npos);
    CHECK(s.w == 0);  // no heatmap drawn
    CHECK(s.png.rgb != good.png.rgb);
  }
  SECTION("garbled manifest") {
    const fs::path run = r.dir / "garbled";
    fs::copy(r.capture, run, fs::copy_options::recursive);
    std::ofstream(run / "manifest.json") << "{\"format\": \"hooklens-run\", ";
    const Shot s = screenshot(run, "", r.dir.path, "garbled");
    CHECK(s.err.find("manifest.json") != std::string::npos);
    CHECK(s.w == 0);
    CHECK(s.png.rgb != good.png.rgb);
  }
  SECTION("missing directory") {
    const Shot s = screenshot(r.dir / "nowhere", "", r.dir.path, "missing");
    CHECK(s.err.find("nowhere") != std::string::npos);
  }
}

TEST_CASE("hooklens-view live mode shows the patterns of a model generating now", "[viewer][fixtures]") {
  if (!have_xvfb()) {
    test::skip("xvfb-run is not installed: the viewer tests did not run");
    return;
  }
  Runs& r = runs();
  // screenshot() passes its first argument first: here the live model instead of a run directory.
  const std::string model = "--model=" + (test::fixtures() / "tiny-neo-a").string();
  const std::string live = "--prompt 'The cat sat' --max-new-tokens 4 ";
  const Shot a = screenshot(model, live + "--select 0.0", r.dir.path, "live00");
  const Shot b = screenshot(model, live + "--select 2.1", r.dir.path, "live21");
  CHECK(a.out.find("live: finished after 4 steps") != std::string::npos);
  REQUIRE(a.w > 100);
  // The screenshot waits for the whole generation: the last step shows every query row, exactly
  // what `hooklens generate` captured for the same prompt.
  check_cells(a, expected(r.generate, 0, 0, 3, true));
  check_cells(b, expected(r.generate, 2, 1, 3, true));
  CHECK(differing_pixels(a, b) > a.w * a.h / 10);

  // Interventions apply live as in `hooklens generate`: zeroing the residual stream of the first two
  // positions after layer 1 changes layer 2's patterns, exactly as the generated run captured them.
  const std::string site = "'blocks.1.hook_resid_post[pos=0:2]'";
  test::require_hooklens(fmt::format("generate --model '{}' --prompt 'The cat sat' --max-new-tokens 4 --ablate {} --out '{}'",
                                     (test::fixtures() / "tiny-neo-a").string(), site, (r.dir / "ablated").string()),
                         r.dir / "ablated.log");
  const Shot c = screenshot(model, live + "--select 2.1 --ablate " + site, r.dir.path, "live21ablated");
  check_cells(c, expected(r.dir / "ablated", 2, 1, 3, true));
  CHECK(differing_pixels(b, c) > 0);

  // --exit-after closes the window while the model still generates (slowed by --pace to 20 s): the
  // worker must stop and join (a hang fails through timeout's status), the status is that of a model
  // at work. 5 s leaves a loaded machine time for the first step (1.5 s did not, at load 7 on 2 cores).
  const fs::path out = r.dir.path / "exit_after.out";
  const std::string cmd = fmt::format("timeout 60 xvfb-run -a '{}' {} --prompt 'The cat' --max-new-tokens 40 --pace 0.5 "
                                      "--exit-after 5 >'{}' 2>&1", kViewer.string(), model, out.string());
  const int raw = std::system(cmd.c_str());
  const std::string text = test::read_file(out);
  INFO(cmd << "\n" << text);
  CHECK((WIFEXITED(raw) && WEXITSTATUS(raw) == 0));
  CHECK(text.find("live: generating: step ") != std::string::npos);
}

TEST_CASE("hooklens-view live mode: masked diffusion, Stop, analyzer tables", "[viewer][fixtures]") {
  if (!have_xvfb()) {
    test::skip("xvfb-run is not installed: the viewer tests did not run");
    return;
  }
  Runs& r = runs();
  const std::string model = "--model=" + (test::fixtures() / "llada-tiny-a").string();
  SECTION("each denoising step as it arrives; the last equals hooklens generate's") {
    const Shot s = screenshot(model, kLiveDiffusion + " --select 1.3", r.dir.path, "livediff");
    CHECK(s.out.find("live: finished after 4 steps") != std::string::npos);
    check_cells(s, expected(r.diffusion_text, 1, 3, 3, false));
    // The analyzers ran on the hooks: one row per head of the 2-layer x 4-head model in each table.
    CHECK(s.out.find("table attention_stats: 8 rows") != std::string::npos);
    CHECK(s.out.find("table head_detectors: 8 rows") != std::string::npos);
  }
  SECTION("Stop ends the generation cleanly after the step in view") {
    const Shot s = screenshot(model, kLiveDiffusion + " --select 1.3 --stop-after 2", r.dir.path, "livestop");
    CHECK(s.out.find("live: stopped after 2 steps") != std::string::npos);
    check_cells(s, expected(r.diffusion_text, 1, 3, 1, false));
  }
  SECTION("a prompt the model cannot take is a usage error naming the model") {
    for (const std::string args : {"--prompt 'no tokenizer'", "--prompt-ids 85,9999", "", "--prompt x --prompt-ids 1"}) {
      const fs::path err = r.dir / "live_usage.err";
      const std::string cmd = fmt::format("xvfb-run -a '{}' {} {} --screenshot '{}' >/dev/null 2>'{}'", kViewer.string(), model, args,
                                          (r.dir / "never.png").string(), err.string());
      const int raw = std::system(cmd.c_str());
      const std::string text = test::read_file(err);
      INFO(cmd << "\n" << text);
      CHECK((WIFEXITED(raw) && WEXITSTATUS(raw) == 2));
      CHECK(text.find("hooklens-view: error: ") != std::string::npos);
      CHECK(!fs::exists(r.dir / "never.png"));
    }
  }
  SECTION("prompt as ids, no analyzers") {
    const Shot s = screenshot(model, "--prompt-ids 85,294,223,181 --gen-length 8 --steps 4 --block-length 4 --analyze none --select 1.3",
                              r.dir.path, "liveids");
    check_cells(s, expected(r.diffusion, 1, 3, 3, false));
    CHECK(s.out.find("table ") == std::string::npos);
  }
}

TEST_CASE("prompt-token bars: attention from generated tokens to the prompt", "[viewer]") {
  // 2 heads, 5 positions, prompt of 3; row r's weight on key k is (h + 1) * (10 r + k) / 100.
  view::Grid g;
  g.heads = 2, g.rows = 5, g.cols = 5;
  g.values.assign(std::size_t(g.heads * g.rows * g.cols), kMissing);
  const auto w = [](int h, int r, int k) { return float(h + 1) * float(10 * r + k) / 100.0f; };
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < 5; ++r)
      for (int k = 0; k <= r; ++k) g.values[std::size_t((h * 5 + r) * 5 + k)] = w(h, r, k);
  SECTION("autoregressive: generated token i was chosen by row P + i - 1; the newest is singled out") {
    const view::PromptBars b = view::prompt_bars(g, 1, 3, true, -1);
    CHECK(b.rows == std::vector<int>{2, 3, 4});
    REQUIRE(b.mean.size() == 3);
    for (int k = 0; k < 3; ++k) CHECK(b.mean[std::size_t(k)] == Approx((w(1, 2, k) + w(1, 3, k) + w(1, 4, k)) / 3));
    CHECK(b.chosen_row == 4);
    CHECK(b.chosen[2] == Approx(w(1, 4, 2)));
    CHECK(view::prompt_bars(g, 1, 3, true, 4).chosen_row == 3);  // position 4 was chosen by row 3
    CHECK(view::prompt_bars(g, 1, 3, true, 1).chosen.empty());  // a prompt token is not generated
  }
  SECTION("head mean; diffusion takes the generated region's rows") {
    const view::PromptBars b = view::prompt_bars(g, -1, 3, false, 4);
    CHECK(b.rows == std::vector<int>{3, 4});
    CHECK(b.mean[1] == Approx(((w(0, 3, 1) + w(1, 3, 1)) / 2 + (w(0, 4, 1) + w(1, 4, 1)) / 2) / 2));
    CHECK(b.chosen_row == 4);
    CHECK(view::prompt_bars(g, -1, 3, false, -1).chosen.empty());
  }
  SECTION("rows missing a prompt key are left out") {
    g.values[std::size_t((0 * 5 + 3) * 5 + 0)] = kMissing;
    CHECK(view::prompt_bars(g, 0, 3, true, -1).rows == std::vector<int>{2, 4});
    CHECK(view::prompt_bars(g, 1, 3, true, -1).rows == std::vector<int>{2, 3, 4});
  }
}

// Issue 17: a run whose model was changed says so in the window title and the Run panel.
TEST_CASE("hooklens-view marks a run with interventions and lists them in the Run panel", "[viewer][fixtures]") {
  if (!have_xvfb()) {
    test::skip("xvfb-run is not installed: the viewer tests did not run");
    return;
  }
  Runs& r = runs();
  const fs::path run = r.dir / "intervened";
  fs::copy(r.capture, run, fs::copy_options::recursive);
  json m = json::parse(test::read_file(run / "manifest.json"));
  m["interventions"] = {{{"kind", "steer"}, {"site", "blocks.0.hook_resid_post"}, {"hook", "blocks.0.hook_resid_post"},
                         {"source", "vec.safetensors:steering"}, {"scale", 4.0}, {"applied", 1},
                         {"text", "steered blocks.0.hook_resid_post by 4 x vec.safetensors:steering %s%n"}}};
  m["interventions"].push_back({{"kind", "zero_ablate"}, {"site", "blocks.1.attn.hook_z[head=2]"},
                                {"hook", "blocks.1.attn.hook_z"}, {"source", nullptr}, {"applied", 1},
                                {"text", "zero-ablated blocks.1.attn.hook_z[head=2]"}});
  m["ablations"] = {"1.2"};  // --ablate's value as given: listed in "interventions" already
  std::ofstream(run / "manifest.json", std::ios::trunc) << m.dump();

  const Shot plain = screenshot(r.capture, "--select 0.0", r.dir.path, "plain_title");
  const Shot changed = screenshot(run, "--select 0.0", r.dir.path, "intervened");
  CHECK(plain.out.find(fmt::format("title: hooklens-view: {}\n", r.capture.string())) != std::string::npos);
  CHECK(changed.out.find(fmt::format("title: hooklens-view: {} [intervened: 2]\n", run.string())) != std::string::npos);
  CHECK(changed.err.find("error") == std::string::npos);  // ("%s%n" in a text: the panel never formats it)
  // The same heatmap, and the note in the Run panel (the top fifth of the window) in its orange
  // (255, 140, 64 drawn on a dark background): text no other line of that panel has.
  check_cells(changed, expected(run, 0, 0, 0, false));
  const auto orange = [](const Shot& s) {
    int n = 0;
    for (int y = 0; y < s.png.height / 5; ++y)
      for (int x = 0; x < s.png.width; ++x) {
        const auto c = s.pixel(x, y);
        n += c[0] > 180 && c[1] > 80 && c[1] < 170 && c[2] < 110 && c[0] - c[1] > 60;
      }
    return n;
  };
  CHECK(orange(plain) == 0);
  CHECK(orange(changed) > 100);
}
