// The figures renderer: runs made with build/bin/hooklens (capture and generate on tiny-neo-a, masked
// diffusion on llada-tiny-a) drawn as PNG, SVG and PDF through the plugin interface. Pixels are checked
// against values the test computes itself from the captures (RunReader), not against the drawing code.
// Text is read back from the PDFs with pdftotext (poppler-utils): Cairo draws an SVG's text as glyphs.
#include "png_util.h"
#include "test_util.h"

#include <hooklens/error.h>
#include <hooklens/plugin.h>
#include <hooklens/renderer.h>
#include <hooklens/run.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::distinct_colours;
using test::Png;

constexpr std::array<int, 3> kViridisLow{68, 1, 84}, kViridisHigh{253, 231, 37};

// Runs the hooklens CLI; REQUIREs success.
// The runs every test case draws, made once per process.
struct Runs {
  test::TempDir dir;
  fs::path capture = dir / "capture", generate = dir / "generate", diffusion = dir / "diffusion", long_run = dir / "long";
  fs::path diffusion_tok = dir / "diffusion_tok";  // the same run with a tokenizer: token strings in the manifest
  Runs() {
    const fs::path neo = test::fixtures() / "tiny-neo-a", llada = test::fixtures() / "llada-tiny-a";
    test::require_hooklens(fmt::format("capture --model '{}' --prompt 'The cat sat on the mat' --prompt 'Hello world' --out '{}'",
                                       neo.string(), capture.string()),
                           dir / "capture.log");
    test::require_hooklens(fmt::format("generate --model '{}' --prompt 'The cat sat' --max-new-tokens 6 --out '{}'", neo.string(),
                                       generate.string()),
                           dir / "generate.log");
    test::require_hooklens(fmt::format("generate --model '{}' --prompt-ids 85,294,223,181 --gen-length 8 --steps 4 "
                                       "--block-length 4 --out '{}'",
                                       llada.string(), diffusion.string()),
                           dir / "diffusion.log");
    test::require_hooklens(fmt::format("generate --model '{}' --tokenizer '{}' --prompt-ids 85,294,223,181 --gen-length 8 "
                                       "--steps 4 --block-length 4 --out '{}'",
                                       llada.string(), neo.string(), diffusion_tok.string()),
                           dir / "diffusion_tok.log");
    std::string text;  // ~128 tokens: the model's whole context
    for (int i = 0; i < 30; ++i) text += "one cat sat. ";
    test::require_hooklens(fmt::format("capture --model '{}' --prompt '{}' --layers 0 --out '{}'", neo.string(), text,
                                       long_run.string()),
                           dir / "long.log");
  }
};
Runs& runs() {
  static Runs r;
  return r;
}

std::shared_ptr<hooklens::Renderer> renderer() {
  return std::static_pointer_cast<hooklens::Renderer>(
      hooklens::PluginRegistry::create_from(test::plugin_file("figures"), "renderer"));
}

bool has_file(const json& result, const std::string& name) {
  for (const json& f : result.at("files"))
    if (f.at("file") == name) return true;
  return false;
}
const json& entry(const json& result, const std::string& name) {
  for (const json& f : result.at("files"))
    if (f.at("file") == name) return f;
  FAIL("no figure " << name << " in " << result.dump(1));
  throw std::logic_error("unreachable");
}

// Every PNG of `result`: decodable, the size its entry says, not blank; heatmaps many-coloured.
void check_pngs(const fs::path& out, const json& result) {
  for (const json& f : result.at("files")) {
    const std::string name = f.at("file");
    INFO(name);
    const Png png = Png::load(out / name);
    CHECK(png.width == f.at("width").get<int>());
    CHECK(png.height == f.at("height").get<int>());
    const bool heatmap = name.find("_mean") != std::string::npos || name.find("_heads") != std::string::npos ||
                         name.find("_evolution") != std::string::npos;
    CHECK(distinct_colours(png) >= (heatmap ? 10u : 3u));
  }
}

// The head mean of capture `key` of a run, computed here.
std::vector<std::vector<double>> head_mean(const fs::path& run, const std::string& key) {
  hooklens::RunReader reader(run);
  for (std::size_t i = 0; i < reader.capture_count(); ++i) {
    if (reader.capture(i).at("key") != key) continue;
    const at::Tensor t = reader.load(i).to(at::kFloat).contiguous();
    const std::int64_t H = t.size(1), Q = t.size(2), K = t.size(3);
    std::vector<std::vector<double>> m(std::size_t(Q), std::vector<double>(std::size_t(K), 0.0));
    const float* d = t.data_ptr<float>();
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t q = 0; q < Q; ++q)
        for (std::int64_t k = 0; k < K; ++k) m[q][k] += d[(h * Q + q) * K + k] / double(H);
    return m;
  }
  FAIL("no capture " << key);
  return {};
}

// The (row, col) of the largest value.
std::pair<int, int> argmax(const std::vector<std::vector<double>>& m) {
  std::pair<int, int> best{0, 0};
  for (std::size_t r = 0; r < m.size(); ++r)
    for (std::size_t c = 0; c < m[r].size(); ++c)
      if (m[r][c] > m[best.first][best.second]) best = {int(r), int(c)};
  return best;
}

// The centre pixel of cell (r, c) of a figure entry's first panel.
std::array<int, 2> cell_centre(const json& figure, int r, int c) {
  const json& m = figure.at("panels").at(0).at("matrix");
  return {m.at("x").get<int>() + c * m.at("cell_width").get<int>() + m.at("cell_width").get<int>() / 2,
          m.at("y").get<int>() + r * m.at("cell_height").get<int>() + m.at("cell_height").get<int>() / 2};
}

std::vector<std::uint8_t> base64_decode(const std::string& s) {
  std::vector<std::uint8_t> out;
  std::uint32_t bits = 0;
  int n = 0;
  for (char ch : s) {
    const auto pos = std::string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/").find(ch);
    if (pos == std::string::npos) break;  // '=' padding
    bits = bits << 6 | std::uint32_t(pos);
    if ((n += 6) >= 8) out.push_back(std::uint8_t(bits >> (n -= 8)));
  }
  return out;
}

// The text of a PDF as pdftotext reads it (one line per text line; rotated labels on lines of their own).
std::string pdf_text(const fs::path& pdf) {
  const fs::path txt = fs::path(pdf).replace_extension(".txt");
  const int status = std::system(fmt::format("pdftotext -enc UTF-8 '{}' '{}' 2>'{}.log'", pdf.string(), txt.string(),
                                             txt.string()).c_str());
  INFO("pdftotext " << pdf << " (Debian's poppler-utils; scripts/setup.sh installs it): " << test::read_file(txt.string() + ".log"));
  REQUIRE(status == 0);
  return test::read_file(txt);
}
// Its lines, and separately its words: labels (which have no spaces) are compared whole.
std::vector<std::string> pdf_lines(const fs::path& pdf) {
  std::vector<std::string> lines;
  std::istringstream in(pdf_text(pdf));
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}
std::set<std::string> pdf_words(const fs::path& pdf) {
  std::set<std::string> words;
  std::istringstream in(pdf_text(pdf));
  for (std::string w; in >> w;) words.insert(w);
  return words;
}
bool has_text(const std::vector<std::string>& texts, const std::string& needle) {
  for (const auto& t : texts)
    if (t.find(needle) != std::string::npos) return true;
  return false;
}

// XML-ish checks: the prologue, one root, text drawn (as glyph symbols), no unescaped '&'.
void check_svg_syntax(const std::string& svg) {
  REQUIRE(svg.rfind("<?xml", 0) == 0);
  CHECK(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\"") != std::string::npos);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("<symbol") != std::string::npos);
  static const std::regex kBareAmp("&(?!(amp|lt|gt|quot|apos);)");
  CHECK_FALSE(std::regex_search(svg, kBareAmp));
}

// A figure's first panel's cells, decoded from the PNG that `svg` embeds for them.
Png embedded_cells(const std::string& svg, const std::string& what) {
  const std::string marker = "href=\"data:image/png;base64,";
  const std::size_t at = svg.find(marker);
  REQUIRE(at != std::string::npos);
  const std::size_t start = at + marker.size();
  const auto bytes = base64_decode(svg.substr(start, svg.find('"', start) - start));
  return Png::decode(bytes.data(), bytes.size(), what);
}

}  // namespace

TEST_CASE("a single-forward capture renders as PNG with the expected cells", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir out;
  const json result = renderer()->render(r.capture, "png", out.path, json::object());
  for (const char* name : {"p0_layer0_mean.png", "p0_layer3_heads.png", "p0_overview.png", "p0_layer_entropy.png",
                           "p0_rollout.png", "p1_layer2_mean.png"})
    CHECK(has_file(result, name));
  CHECK_FALSE(has_file(result, "p0_layer0_head1.png"));  // single heads only when asked for
  check_pngs(out.path, result);

  // figures.json indexes the same files.
  const json index = json::parse(test::read_file(out / "figures.json"));
  CHECK(index.at("files").size() == result.at("files").size());
  CHECK(index.at("format") == "png");

  SECTION("the largest head-mean weight is the colour bar's top, a masked (future) key its bottom") {
    const auto mean = head_mean(r.capture, "p0.s0.blocks.0.attn.hook_pattern");
    REQUIRE(mean.size() == 6);
    const json& fig = entry(result, "p0_layer0_mean.png");
    const Png png = Png::load(out / "p0_layer0_mean.png");
    const auto [br, bc] = argmax(mean);
    const auto hot = cell_centre(fig, br, bc);
    CHECK(png.pixel(hot[0], hot[1]) == kViridisHigh);
    const auto cold = cell_centre(fig, 0, 5);  // query 0 cannot see key 5 (causal)
    CHECK(png.pixel(cold[0], cold[1]) == kViridisLow);
    CHECK(fig.at("panels").at(0).at("scale").at("max").get<double>() == Approx(mean[br][bc]).epsilon(1e-6));
  }
}

TEST_CASE("PDF figures carry the token labels, titles and captions as text, on a page the figure's size", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir out;
  const json result = renderer()->render(r.capture, "pdf", out.path, {{"heads", {1}}});
  REQUIRE(has_file(result, "p0_layer0_mean.pdf"));
  REQUIRE(has_file(result, "p0_layer0_head1.pdf"));
  CHECK(json::parse(test::read_file(out / "figures.json")).at("format") == "pdf");
  const std::string pdf = test::read_file(out / "p0_layer0_mean.pdf");
  CHECK(pdf.rfind("%PDF-", 0) == 0);
  CHECK(pdf.find("%%EOF") != std::string::npos);
  // One page, in points, the size figures.json gives in pixels.
  const json& fig = entry(result, "p0_layer0_mean.pdf");
  CHECK_THAT(pdf, Catch::Contains(fmt::format("/MediaBox [ 0 0 {} {} ]", fig.at("width").get<int>(), fig.at("height").get<int>())));
  CHECK_THAT(pdf, Catch::Contains("/Count 1"));
  const auto words = pdf_words(out / "p0_layer0_mean.pdf");
  for (const char* label : {"0:The", "1:_cat", "2:_sat", "5:_mat"}) CHECK(words.count(label));
  const auto lines = pdf_lines(out / "p0_layer0_mean.pdf");
  CHECK(has_text(lines, "layer 0, mean of 4 heads"));
  CHECK(has_text(lines, "GPTNeoForCausalLM (tiny-neo-a), \"The cat sat on the mat\""));
  CHECK(has_text(pdf_lines(out / "p0_layer0_head1.pdf"), "layer 0, head 1"));
}

TEST_CASE("SVG figures: glyphs for text and the cells as a PNG the heatmap's size", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir out;
  const json result = renderer()->render(r.capture, "svg", out.path, {{"heads", {1}}});
  REQUIRE(has_file(result, "p0_layer0_mean.svg"));
  REQUIRE(has_file(result, "p0_layer0_head1.svg"));
  for (const json& f : result.at("files")) {
    INFO(f.at("file"));
    check_svg_syntax(test::read_file(out.path / f.at("file").get<std::string>()));
  }
  const std::string svg = test::read_file(out / "p0_layer0_mean.svg");
  const json& fig = entry(result, "p0_layer0_mean.svg");
  CHECK_THAT(svg, Catch::Contains(fmt::format("width=\"{}px\" height=\"{}px\"", fig.at("width").get<int>(),
                                              fig.at("height").get<int>())));

  SECTION("the embedded cells image is the heatmap at its drawn size, the largest weight at the top of viridis") {
    // Embedded at the size it is drawn, so a browser has nothing to smooth between cells.
    const Png cells = embedded_cells(svg, "embedded in p0_layer0_mean.svg");
    const json& m = fig.at("panels").at(0).at("matrix");
    const int cw = m.at("cell_width").get<int>(), ch = m.at("cell_height").get<int>();
    REQUIRE(cells.width == 6 * cw);
    REQUIRE(cells.height == 6 * ch);
    const auto mean = head_mean(r.capture, "p0.s0.blocks.0.attn.hook_pattern");
    const auto [br, bc] = argmax(mean);
    CHECK(cells.pixel(bc * cw + cw / 2, br * ch + ch / 2) == kViridisHigh);
    CHECK(cells.pixel(5 * cw, 0) == kViridisLow);
    CHECK(cells.pixel(6 * cw - 1, ch - 1) == kViridisLow);  // a cell is one colour to its edges
  }
}

TEST_CASE("an SVG figure in headless Chromium looks like the PNG of the same figure", "[figures][fixtures]") {
  std::string chromium;
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
    if (std::system(fmt::format("command -v {} >/dev/null 2>&1", name).c_str()) == 0) {
      chromium = name;
      break;
    }
  if (chromium.empty()) {
    test::skip("no chromium binary on PATH: the SVG was not compared with the PNG (scripts/setup.sh installs it)");
    return;
  }
  const Runs& r = runs();
  test::TempDir out;
  const json options = {{"layers", {0}}, {"prompts", {0}}};
  const json png_result = renderer()->render(r.capture, "png", out.path / "png", options);
  const json svg_result = renderer()->render(r.capture, "svg", out.path / "svg", options);
  const json& fig = entry(png_result, "p0_layer0_mean.png");
  CHECK(fig.at("panels") == entry(svg_result, "p0_layer0_mean.svg").at("panels"));
  const int width = fig.at("width").get<int>(), height = fig.at("height").get<int>();
  const fs::path shot = out / "shot.png", log = out / "chromium.log";
  const int status = std::system(fmt::format(
      "timeout 60 {} --headless --no-sandbox --disable-gpu --no-first-run --disable-extensions --hide-scrollbars "
      "--user-data-dir='{}' --force-device-scale-factor=1 --window-size={},{} --screenshot='{}' 'file://{}' >'{}' 2>&1",
      chromium, (out / "profile").string(), width, height, shot.string(), (out / "svg" / "p0_layer0_mean.svg").string(),
      log.string()).c_str());
  INFO("chromium: " << test::read_file(log));
  REQUIRE(status == 0);
  const Png browser = Png::load(shot), png = Png::load(out / "png" / "p0_layer0_mean.png");
  REQUIRE(browser.width == png.width);
  REQUIRE(browser.height == png.height);
  // Cells: every cell's centre is the colour the PNG has there (the SVG's cells are not smoothed).
  const json& m = fig.at("panels").at(0).at("matrix");
  int cells_off = 0;
  for (int row = 0; row < m.at("rows").get<int>(); ++row)
    for (int col = 0; col < m.at("cols").get<int>(); ++col) {
      const auto c = cell_centre(fig, row, col);
      const auto a = browser.pixel(c[0], c[1]), b = png.pixel(c[0], c[1]);
      for (int k = 0; k < 3; ++k) cells_off += std::abs(a[k] - b[k]) > 2;
    }
  CHECK(cells_off == 0);
  // The whole figure: only glyph edges differ (Skia and Cairo antialias the same outlines a little
  // differently). Measured: 0.30 (of 255, per channel). Glyphs off by half a pixel (fractional glyph
  // positions, which Cairo's PNG rounds and the browser does not) measured 1.75; a missing label or
  // panel costs more. 1.0 allows three times the measured difference.
  double total = 0;
  for (std::size_t i = 0; i < png.rgb.size(); ++i) total += std::abs(int(browser.rgb[i]) - int(png.rgb[i]));
  const double mean = total / double(png.rgb.size());
  INFO("mean absolute difference " << mean);
  CHECK(mean < 1.0);
}

TEST_CASE("autoregressive generation: attention to each prompt token from every generated token", "[figures][fixtures]") {
  const Runs& r = runs();
  for (const std::string format : {"png", "svg", "pdf"}) {
    test::TempDir out;
    const json result = renderer()->render(r.generate, format, out.path, json::object());
    INFO(result.dump(1));
    REQUIRE(has_file(result, "p0_prompt_attention." + format));
    CHECK(has_file(result, "p0_layer0_mean." + format));  // step 0 (the prefill) is a full pass
    CHECK_FALSE(has_file(result, "p0_s1_layer0_mean." + format));
    if (format == "png") {
      check_pngs(out.path, result);
      // One chart per prompt token, stacked vertically.
      const json& panels = entry(result, "p0_prompt_attention.png").at("panels");
      REQUIRE(panels.size() == 3);
      CHECK(panels[0].at("plot").at("y").get<int>() < panels[1].at("plot").at("y").get<int>());
    } else if (format == "svg") {
      check_svg_syntax(test::read_file(out / "p0_prompt_attention.svg"));
    } else {
      const auto texts = pdf_lines(out / "p0_prompt_attention.pdf");
      for (const char* title : {"attention to 0:The", "attention to 1:_cat", "attention to 2:_sat"})
        CHECK(has_text(texts, title));
      // Bars are generated tokens 3.. (the last generated token is never fed back, so 5 bars).
      const json manifest = json::parse(test::read_file(r.generate / "manifest.json"));
      const auto steps = manifest.at("generation").at("steps");
      std::string first = steps.at(0).at("token_string").get<std::string>().substr(0, 6);
      std::replace(first.begin(), first.end(), ' ', '_');  // labels show spaces as '_'
      CHECK(pdf_words(out / "p0_prompt_attention.pdf").count("3:" + first));
      CHECK(has_text(texts, "heads and layers averaged"));
    }
  }
}

TEST_CASE("masked diffusion: heatmaps per chosen step and the attention evolution", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir out;
  const json result = renderer()->render(r.diffusion, "png", out.path, json::object());
  INFO(result.dump(1));
  for (const char* name : {"p0_s0_layer0_mean.png", "p0_s3_layer1_mean.png", "p0_layer0_evolution.png",
                           "p0_layer1_evolution.png", "p0_s3_rollout.png"})
    CHECK(has_file(result, name));
  CHECK_FALSE(has_file(result, "p0_s1_layer0_mean.png"));  // default: first and last step
  check_pngs(out.path, result);
  const json& evolution = entry(result, "p0_layer0_evolution.png");
  REQUIRE(evolution.at("panels").size() == 3);
  CHECK(evolution.at("panels")[2].at("scale").at("colormap") == "blue-white-red");

  test::TempDir pdf_out;
  const json pdf = renderer()->render(r.diffusion, "pdf", pdf_out.path, {{"steps", {1, 2}}, {"layers", {1}}});
  CHECK(has_file(pdf, "p0_s1_layer1_mean.pdf"));
  CHECK_FALSE(has_file(pdf, "p0_s1_layer0_mean.pdf"));
  CHECK(has_text(pdf_lines(pdf_out / "p0_layer1_evolution.pdf"), "step 2 minus step 1"));
  const auto words = pdf_words(pdf_out / "p0_layer1_evolution.pdf");
  CHECK(words.count("0:85"));
  CHECK(words.count("11:[mask]"));  // still masked before step 2 (committed in step 3)

  // Generated tokens are labelled with the manifest's token strings, or by id in a run without them.
  const std::set<std::string> by_id = pdf_words(pdf_out / "p0_s2_layer1_mean.pdf");
  test::TempDir tok_out;
  renderer()->render(r.diffusion_tok, "pdf", tok_out.path, {{"steps", {2}}, {"layers", {1}}});
  const std::set<std::string> by_string = pdf_words(tok_out / "p0_s2_layer1_mean.pdf");
  const json plain = json::parse(test::read_file(r.diffusion / "manifest.json"))["generation"];
  const json gen = json::parse(test::read_file(r.diffusion_tok / "manifest.json"))["generation"];
  const json& input = gen["steps"][1]["ids"];  // the sequence the forward pass of step 2 saw
  REQUIRE(input == plain["steps"][1]["ids"]);
  int printable = 0;
  for (std::size_t i = 4; i < input.size(); ++i) {
    if (input[i] == gen["mask_id"]) continue;
    const std::string id = input[i].dump(), text = gen["token_strings"].at(id);
    INFO("position " << i << ", id " << id << ", token '" << text << "'");
    CHECK(by_id.count(fmt::format("{}:#{}", i, id)));
    CHECK_FALSE(by_string.count(fmt::format("{}:#{}", i, id)));
    // Labels show a space as '_' (as "1:_cat" above) and escape the rest: compare printable ASCII tokens.
    if (text.size() > 8 || !std::all_of(text.begin(), text.end(), [](unsigned char c) { return c >= ' ' && c < 127; }))
      continue;
    std::string label = text;
    std::replace(label.begin(), label.end(), ' ', '_');
    CHECK(by_string.count(fmt::format("{}:{}", i, label)));
    ++printable;
  }
  CHECK(printable > 0);
}

TEST_CASE("128 tokens stay labelled", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir out;
  const json result = renderer()->render(r.long_run, "pdf", out.path, json::object());
  const json& fig = entry(result, "p0_layer0_mean.pdf");
  const json& m = fig.at("panels").at(0).at("matrix");
  const int T = m.at("rows").get<int>();
  CHECK(T > 100);
  CHECK(m.at("cell_height").get<int>() >= 14);  // a label fits every row
  const auto texts = pdf_lines(out / "p0_layer0_mean.pdf");
  CHECK(has_text(texts, fmt::format("{}:", T - 1)));
  CHECK(has_text(texts, "64:"));
  CHECK(result.at("skipped").size() > 0);  // layers 1-3 were not captured
}

TEST_CASE("analyzer reports with per-head records are drawn as layer x head matrices", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir copy, out;
  fs::copy(r.capture, copy.path / "run", fs::copy_options::recursive);
  fs::create_directories(copy.path / "run" / "reports");
  json heads = json::array();
  for (int l = 0; l < 4; ++l)
    for (int h = 0; h < 4; ++h) heads.push_back({{"layer", l}, {"head", h}, {"entropy", 0.1 * (l * 4 + h)}, {"score", nullptr}});
  std::ofstream(copy.path / "run" / "reports" / "attention_stats.json") << json{{"analyzer", "attention_stats"}, {"heads", heads}}.dump();
  const json result = renderer()->render(copy.path / "run", "png", out.path, {{"layers", {0}}});
  REQUIRE(has_file(result, "report_attention_stats.png"));
  const json& fig = entry(result, "report_attention_stats.png");
  REQUIRE(fig.at("panels").size() == 2);
  const Png png = Png::load(out / "report_attention_stats.png");
  // Panels are in score-name order: "entropy" first; L3H3 holds its largest value, L0H0 zero.
  const auto hot = cell_centre(fig, 3, 3), cold = cell_centre(fig, 0, 0);
  CHECK(png.pixel(hot[0], hot[1]) == kViridisHigh);
  CHECK(png.pixel(cold[0], cold[1]) == kViridisLow);

  std::ofstream(copy.path / "run" / "reports" / "attention_stats.json") << "{\"heads\": [";
  const std::string message = test::error_of([&] { renderer()->render(copy.path / "run", "png", out.path, {}); });
  CHECK(message.find("attention_stats.json") != std::string::npos);
}

TEST_CASE("damaged runs and bad options", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir copy, out;
  const fs::path run = copy.path / "run";
  fs::copy(r.capture, run, fs::copy_options::recursive);
  auto figures = renderer();

  SECTION("bad options are usage errors") {
    const auto usage = [&](const json& options, const std::string& format = "png") {
      INFO(options.dump());
      CHECK_THROWS_AS(figures->render(run, format, out.path, options), hooklens::UsageError);
    };
    usage({{"layers", {7}}});
    usage({{"heads", {-1}}});
    usage({{"prompts", {2}}});
    usage({{"steps", {5}}});
    usage({{"layers", "x"}});
    usage({{"target", 99}});
    usage({{"colour", "red"}});
    usage(json::object(), "jpg");
    CHECK_NOTHROW(figures->render(run, "png", out.path, {{"layers", "1,2"}, {"target", 1}}));
    CHECK(fs::exists(out / "p0_attention_to_1.png"));
  }
  SECTION("a truncated shard is an error naming the shard") {
    const fs::path shard = run / "captures-00000.safetensors";
    fs::resize_file(shard, fs::file_size(shard) / 2);
    const std::string message = test::error_of([&] { figures->render(run, "png", out.path, {}); });
    CHECK(message.find("captures-00000.safetensors") != std::string::npos);
  }
  SECTION("a missing manifest is an error naming it") {
    fs::remove(run / "manifest.json");
    const std::string message = test::error_of([&] { figures->render(run, "svg", out.path, {}); });
    CHECK(message.find("manifest.json") != std::string::npos);
  }
}

// ---- semantically broken runs (issue 13): refused by RunReader with one line, never a crash ------

namespace {

// A copy of `run` in `dir` / `name` whose manifest `edit` changed.
fs::path mutated(const fs::path& run, const fs::path& dir, const std::string& name, const std::function<void(json&)>& edit) {
  const fs::path copy = dir / name;
  fs::copy(run, copy, fs::copy_options::recursive);
  json m = json::parse(test::read_file(copy / "manifest.json"));
  edit(m);
  std::ofstream(copy / "manifest.json", std::ios::trunc) << m.dump();
  return copy;
}

// Index of the first capture of `hook`'s suffix (and `step` when >= 0) in manifest `m`.
std::size_t first_capture(const json& m, const std::string& suffix, int step = -1) {
  for (std::size_t i = 0; i < m["captures"].size(); ++i) {
    const std::string hook = m["captures"][i]["hook"];
    if (hook.size() >= suffix.size() && hook.compare(hook.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        (step < 0 || m["captures"][i]["step"] == step))
      return i;
  }
  FAIL("no capture of " << suffix);
  return 0;
}

// `hooklens render RUN --format F` for png, svg and pdf refuses with one line naming every culprit.
void render_refuses(const fs::path& run, const fs::path& out, const std::vector<std::string>& culprits) {
  for (const char* format : {"png", "svg", "pdf"}) {
    const std::string line = test::hooklens_refusal(
        fmt::format("render '{}' --format {} --out '{}'", run.string(), format, (out / format).string()), out / "log");
    for (const std::string& culprit : culprits) CHECK_THAT(line, Catch::Contains(culprit));
  }
}

}  // namespace

TEST_CASE("negative query_offset or key_offset: png and svg refuse with one line", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir tmp;
  const json m = json::parse(test::read_file(r.capture / "manifest.json"));
  const std::size_t i = first_capture(m, ".attn.hook_pattern");
  const std::string key = m["captures"][i]["key"];
  for (const char* field : {"query_offset", "key_offset"}) {
    const fs::path run = mutated(r.capture, tmp.path, field, [&](json& j) { j["captures"][i][field] = -3; });
    render_refuses(run, tmp.path, {run.string(), fmt::format("capture {}", i), key, fmt::format("'{}'", field)});
  }
}

TEST_CASE("masked diffusion whose output_ids is shorter than its steps: png refuses", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir tmp;
  const fs::path run = mutated(r.diffusion, tmp.path, "short", [](json& j) {
    json& ids = j["generation"]["output_ids"];
    ids.erase(ids.begin() + 2, ids.end());  // shorter than the prompt of 4 and the 8 generated positions
  });
  render_refuses(run, tmp.path, {run.string(), "output_ids"});
}

TEST_CASE("key_offset off by one and a huge mask_id: refused, each alone and together", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir tmp;
  const json m = json::parse(test::read_file(r.diffusion / "manifest.json"));
  const std::size_t i = first_capture(m, ".attn.hook_pattern");
  const std::string key = m["captures"][i]["key"];
  const auto off_by_one = [&](json& j) { j["captures"][i]["key_offset"] = 1; };  // keys span every position already
  const auto huge_mask = [](json& j) { j["generation"]["mask_id"] = std::int64_t(1) << 62; };
  render_refuses(mutated(r.diffusion, tmp.path, "offset", off_by_one), tmp.path, {key, "'key_offset' 1 + 12 keys"});
  render_refuses(mutated(r.diffusion, tmp.path, "mask", huge_mask), tmp.path, {"'mask_id'"});
  render_refuses(mutated(r.diffusion, tmp.path, "both", [&](json& j) { off_by_one(j), huge_mask(j); }), tmp.path,
                 {"manifest.json"});
}

TEST_CASE("rollout: a model of zero layers is refused; a run missing a layer draws without rollout", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir tmp;
  const fs::path none = mutated(r.capture, tmp.path, "zero_layers", [](json& j) {
    j["model"]["n_layers"] = 0;
    j["model"]["layer_attention"] = json::array();
  });
  render_refuses(none, tmp.path, {"'layer'", "0 layer(s)"});

  // Valid, but no layer-complete set of patterns: everything else is drawn and the rollout is skipped.
  const fs::path partial = mutated(r.capture, tmp.path, "no_layer_2", [](json& j) {
    json kept = json::array();
    for (const json& c : j["captures"])
      if (c["layer"] != 2) kept.push_back(c);
    j["captures"] = kept;
  });
  const json result = renderer()->render(partial, "png", tmp.path / "out", {});
  CHECK(has_file(result, "p0_overview.png"));
  CHECK_FALSE(has_file(result, "p0_rollout.png"));
  bool skipped = false;
  for (const json& s : result.at("skipped")) skipped = skipped || s.at("what") == "p0 rollout";
  CHECK(skipped);
}

// Found by fuzz_run_directory: the figures' head bookkeeping was quadratic in the model's heads, so a
// manifest claiming 2^20 heads (then accepted) kept `render` busy for days; the reader now bounds them.
TEST_CASE("a manifest claiming a million heads or layers is refused at once", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir tmp;
  for (const char* field : {"n_heads", "n_layers"}) {
    const fs::path run = mutated(r.capture, tmp.path, field, [&](json& j) {
      j["model"][field] = 1 << 20;
      j["model"].erase("layer_attention");
      j["captures"] = json::array();
    });
    const auto start = std::chrono::steady_clock::now();
    render_refuses(run, tmp.path, {run.string(), fmt::format("'{}' is 1048576", field)});
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
  }
}

// Reports are drawn as one layer x head matrix per numeric score: a report with more scores than
// fit one figure once allocated a matrix for each of them (and then refused the whole render).
TEST_CASE("a report with more scores than fit one figure draws the first ones and says so", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir tmp;
  const fs::path run = tmp.path / "run";
  fs::copy(r.capture, run, fs::copy_options::recursive);
  json record = {{"layer", 1}, {"head", 2}};
  for (int i = 0; i < 2000; ++i) record[fmt::format("score_{:04}", i)] = i;
  fs::create_directories(run / "reports");
  std::ofstream(run / "reports" / "many.json") << json{{"heads", {record}}}.dump();
  const json result = renderer()->render(run, "png", tmp.path / "out", {});
  REQUIRE(has_file(result, "report_many.png"));
  const json& figure = entry(result, "report_many.png");
  CHECK(figure.at("panels").size() < 2000);
  CHECK(figure.at("panels").size() >= 4);
  bool said = false;
  for (const json& s : result.at("skipped")) said = said || s.at("what").get<std::string>().find("scores past the first") != std::string::npos;
  CHECK(said);
}

TEST_CASE("shard names outside the run directory and captures of unknown prompts are refused", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir tmp;
  render_refuses(mutated(r.capture, tmp.path, "absolute", [](json& j) { j["captures"][0]["file"] = "/etc/passwd"; }),
                 tmp.path, {"outside the run directory"});
  render_refuses(mutated(r.capture, tmp.path, "prompt", [](json& j) { j["captures"][0]["prompt"] = 2; }), tmp.path,
                 {"'prompt' is 2", "2 prompt(s)"});
}

// Issue 17: a figure of a run whose model was changed says so in its caption line, whatever figure it is.
TEST_CASE("figures of an intervened run end their caption with the interventions, shortened", "[figures][fixtures]") {
  const Runs& r = runs();
  test::TempDir tmp;
  const auto changed_copy = [&](const std::string& name, const json& interventions) {
    const fs::path run = tmp / name;
    fs::copy(r.capture, run, fs::copy_options::recursive);
    json m = json::parse(test::read_file(run / "manifest.json"));
    m["interventions"] = interventions;
    std::ofstream(run / "manifest.json", std::ios::trunc) << m.dump();
    return run;
  };
  const auto intervention = [](const std::string& text) {
    return json{{"kind", "patch"}, {"site", "blocks.1.attn.hook_z[head=3]"}, {"hook", "blocks.1.attn.hook_z"},
                {"source", "runs/clean"}, {"applied", 2}, {"text", text}};
  };

  // A plain run: no mention.
  renderer()->render(r.capture, "pdf", tmp / "plain", json::object());
  CHECK_FALSE(has_text(pdf_lines(tmp / "plain" / "p0_layer0_heads.pdf"), "intervened"));

  const fs::path two = changed_copy("two", {intervention("patched head 1.3 from runs/clean"),
                                            intervention("steered blocks.0.hook_resid_post by 4")});
  renderer()->render(two, "pdf", tmp / "two-out", json::object());
  const std::string both = "intervened: patched head 1.3 from runs/clean; steered blocks.0.hook_resid_post by 4";
  // A figure with a caption line: the interventions end it.
  CHECK(has_text(pdf_lines(tmp / "two-out" / "p0_layer0_heads.pdf"),
                 "GPTNeoForCausalLM (tiny-neo-a), \"The cat sat on the mat\"; " + both));
  CHECK(has_text(pdf_lines(tmp / "two-out" / "p0_overview.pdf"), "rows: layers, columns: heads; " + both));
  // A figure that had none gets one.
  CHECK(has_text(pdf_lines(tmp / "two-out" / "p0_layer0_mean.pdf"), both));
  CHECK(has_text(pdf_lines(tmp / "two-out" / "p0_layer_entropy.pdf"), both));

  // Many long lines: as many whole lines as fit, then how many more; the figure stays its width.
  json many = json::array();
  for (int i = 0; i < 6; ++i) many.push_back(intervention(fmt::format("patched blocks.{}.attn.hook_z[head=3,pos=5] from runs/a-rather-long-run-name", i)));
  const fs::path lots = changed_copy("lots", many);
  const json result = renderer()->render(lots, "pdf", tmp / "lots-out", json::object());
  const auto lines = pdf_lines(tmp / "lots-out" / "p0_layer0_heads.pdf");
  CHECK(has_text(lines, "intervened: patched blocks.0.attn.hook_z[head=3,pos=5] from runs/a-rather-long-run-name; +5 more"));
  const json plain_result = renderer()->render(r.capture, "pdf", tmp / "plain2", json::object());
  CHECK(entry(result, "p0_layer0_mean.pdf").at("width").get<int>() <
        entry(plain_result, "p0_layer0_mean.pdf").at("width").get<int>() + 1000);
}
