// The html_report renderer on real runs made with build/bin/hooklens (a capture of tiny-neo-a with
// two prompts, an autoregressive generation, and a masked-diffusion generation of llada-tiny-a):
// the embedded patterns against the run's captures, the options and the size limit, errors on
// damaged runs, and the page itself in headless Chromium (no script errors, the tokens, the report
// table rows, the committed tokens, and heatmap pixels against the colour ramp the docs describe).
#include "png_util.h"
#include "refusal_util.h"
#include "test_util.h"

#include <hooklens/plugin.h>
#include <hooklens/renderer.h>
#include <hooklens/run.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <fstream>
#include <functional>
#include <map>
#include <cmath>
#include <regex>
#include <set>
#include <sstream>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::Png;
using test::TempDir;

const fs::path kCli = HOOKLENS_BUILD_DIR "/bin/hooklens";
const std::string kTrickyPrompt = "a </script><b>&amp; x";
const std::vector<std::int64_t> kLladaPrompt = {85, 294, 223, 181, 193, 390, 258, 97, 335, 300, 120, 241};

// Runs `hooklens ARGS` for each entry at once (they are independent), each with its log and exit
// status beside it; requires every one to succeed.
void hooklens_all(const std::vector<std::pair<std::string, fs::path>>& runs) {
  std::string script;
  for (const auto& [args, log] : runs)
    script += fmt::format("('{}' {} >'{}' 2>&1; echo $? >'{}.rc') & ", kCli.string(), args, log.string(), log.string());
  REQUIRE(std::system((script + "wait").c_str()) == 0);
  for (const auto& [args, log] : runs) {
    INFO("hooklens " << args << "\n" << test::read_file(log));
    REQUIRE(test::read_file(fs::path(log) += ".rc") == "0\n");
  }
}

// The three runs, made once for all test cases.
struct Runs {
  TempDir dir;
  fs::path capture = dir / "capture", generate = dir / "generate", diffusion = dir / "diffusion", sliced = dir / "sliced";
  fs::path diffusion_tok = dir / "diffusion_tok";  // the diffusion run with a tokenizer: token strings in the manifest
  Runs() {
    const fs::path neo = test::fixtures() / "tiny-neo-a", llada = test::fixtures() / "llada-tiny-a";
    hooklens_all({{fmt::format("capture --model '{}' --prompt 'The cat sat on the mat' --prompt '{}' "
                               "--hooks 'blocks.*.attn.hook_pattern,blocks.*.mlp.hook_post' --threads 1 --out '{}'",
                               neo.string(), kTrickyPrompt, capture.string()),
                   dir / "capture.log"},
                  {fmt::format("generate --model '{}' --prompt 'The cat sat' --max-new-tokens 6 --threads 1 --out '{}'",
                               neo.string(), generate.string()),
                   dir / "generate.log"},
                  {fmt::format("generate --model '{}' --prompt-ids 85,294,223,181,193,390,258,97,335,300,120,241 "
                               "--gen-length 16 --steps 8 --block-length 8 --threads 1 --out '{}'",
                               llada.string(), diffusion.string()),
                   dir / "diffusion.log"},
                  {fmt::format("generate --model '{}' --tokenizer '{}' --prompt-ids 85,294,223,181,193,390,258,97,335,300,"
                               "120,241 --gen-length 16 --steps 8 --block-length 8 --threads 1 --out '{}'",
                               llada.string(), neo.string(), diffusion_tok.string()),
                   dir / "diffusion_tok.log"},
                  {fmt::format("capture --model '{}' --prompt 'The cat sat on the mat' --heads 3,1 --query-range 2: "
                               "--threads 1 --out '{}'", neo.string(), sliced.string()),
                   dir / "sliced.log"}});
  }
};
Runs& runs() {
  static Runs made;
  return made;
}

std::shared_ptr<hooklens::Renderer> renderer() {
  return std::static_pointer_cast<hooklens::Renderer>(
      hooklens::PluginRegistry::create_from(test::plugin_file("html_report"), "renderer"));
}

json manifest(const fs::path& run) { return json::parse(test::read_file(run / "manifest.json")); }

// The page's two data blocks.
struct Page {
  std::string html;
  json meta;
  std::vector<std::string> patterns;  // base64 lines
};

std::string element_text(const std::string& html, const std::string& open) {
  const std::size_t start = html.find(open);
  REQUIRE(start != std::string::npos);
  const std::size_t end = html.find("</script>", start);
  REQUIRE(end != std::string::npos);
  return html.substr(start + open.size(), end - start - open.size());
}

Page read_page(const fs::path& file) {
  Page page;
  page.html = test::read_file(file);
  page.meta = json::parse(element_text(page.html, "<script type=\"application/json\" id=\"hl-meta\">"));
  std::istringstream lines(element_text(page.html, "<script type=\"text/plain\" id=\"hl-patterns\">"));
  for (std::string line; std::getline(lines, line);) page.patterns.push_back(line);
  return page;
}

std::vector<std::uint8_t> base64_decode(const std::string& text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
  };
  std::vector<std::uint8_t> out;
  std::uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    if (c == '=') break;
    if (value(c) < 0) FAIL("not base64: " << c);
    bits = (bits << 6) | std::uint32_t(value(c));
    if ((count += 6) >= 8) {
      count -= 8;
      out.push_back(std::uint8_t(bits >> count));
    }
  }
  return out;
}

json render(const fs::path& run, const fs::path& out, const json& options = json::object()) {
  return renderer()->render(run, "html", out, options);
}

// The manifest's capture for an embedded pattern.
std::size_t capture_index(const json& manifest, const json& pattern) {
  const json& captures = manifest["captures"];
  for (std::size_t i = 0; i < captures.size(); ++i) {
    const json& c = captures[i];
    if (c["prompt"] == pattern["prompt"] && c["step"] == pattern["step"] && c["layer"] == pattern["layer"] &&
        c["hook"].get<std::string>().find("attn.hook_pattern") != std::string::npos && c.value("pass", 0) == 0)
      return i;
  }
  FAIL("no capture for " << pattern.dump());
  return 0;
}

// Checks every embedded pattern against round(255 w) of the run's capture for the heads listed
// (model head ids: the capture's head dimension holds the run's capture.heads when it sliced heads).
void check_patterns(const fs::path& run, const Page& page) {
  hooklens::RunReader reader(run);
  std::vector<int> captured = reader.manifest()["capture"]["heads"];
  if (captured.empty()) captured = {0, 1, 2, 3};
  REQUIRE(page.patterns.size() == page.meta["captures"].size());
  for (std::size_t i = 0; i < page.patterns.size(); ++i) {
    const json& p = page.meta["captures"][i];
    const at::Tensor t = reader.load(capture_index(reader.manifest(), p)).to(at::kFloat).contiguous();
    const std::vector<std::uint8_t> bytes = base64_decode(page.patterns[i]);
    const std::int64_t q = p["queries"], k = p["keys"];
    REQUIRE(t.size(2) == q);
    REQUIRE(t.size(3) == k);
    REQUIRE(bytes.size() == p["heads"].size() * q * k);
    const float* w = t.data_ptr<float>();
    std::size_t at = 0;
    int worst = 0;
    for (int head : p["heads"].get<std::vector<int>>()) {
      const auto column = std::find(captured.begin(), captured.end(), head) - captured.begin();
      REQUIRE(column < t.size(1));
      for (std::int64_t j = 0; j < q * k; ++j, ++at)
        worst = std::max(worst, std::abs(int(bytes[at]) - int(std::lround(w[column * q * k + j] * 255.0))));
    }
    CHECK(worst == 0);
  }
}

// ---- the renderer through its interface -------------------------------------------------------

TEST_CASE("html report embeds every pattern of a run, quantised to 1/255", "[fixtures]") {
  Runs& r = runs();
  TempDir out;
  const json files = render(r.capture, out.path);
  REQUIRE(files == json::parse(R"({"files": [{"file": "report.html", "shows": "interactive report: tokens, attention heatmaps per layer/head/step, analyzer tables"}]})"));
  const Page page = read_page(out / "report.html");
  const json m = manifest(r.capture);
  CHECK(page.meta["captures"].size() == 8);  // 2 prompts x 4 layers of hook_pattern; hook_post is not a pattern
  CHECK(page.meta["prompts"] == m["prompts"]);
  CHECK(page.meta["model"] == m["model"]);
  check_patterns(r.capture, page);
  // Text from the run cannot close a script element early: every <script has exactly one </script>.
  std::size_t opens = 0, closes = 0;
  for (std::size_t at = 0; (at = page.html.find("<script", at)) != std::string::npos; ++at) ++opens;
  for (std::size_t at = 0; (at = page.html.find("</script", at)) != std::string::npos; ++at) ++closes;
  CHECK(opens == closes);
  CHECK(page.html.find("<!--HL:") == std::string::npos);

  SECTION("autoregressive runs embed each step, with the step's chosen token") {
    TempDir gen_out;
    render(r.generate, gen_out.path);
    const Page gen = read_page(gen_out / "report.html");
    check_patterns(r.generate, gen);
    CHECK(gen.meta["captures"].size() == 4 * 6);
    CHECK(gen.meta["generation"]["steps"] == manifest(r.generate)["generation"]["steps"]);
  }
  SECTION("masked-diffusion steps carry the sequence before and after the step") {
    TempDir dif_out;
    render(r.diffusion, dif_out.path);
    const Page dif = read_page(dif_out / "report.html");
    check_patterns(r.diffusion, dif);
    const json steps = manifest(r.diffusion)["generation"]["steps"];
    const json& embedded = dif.meta["generation"]["steps"];
    REQUIRE(embedded.size() == 8);
    std::vector<std::int64_t> initial = kLladaPrompt;
    initial.resize(28, 500);
    CHECK(embedded[0]["input"] == json(initial));
    for (std::size_t s = 1; s < 8; ++s) {
      CHECK(embedded[s]["input"] == steps[s - 1]["ids"]);
      CHECK(embedded[s]["ids"] == steps[s]["ids"]);
      CHECK(embedded[s]["committed"] == steps[s]["committed"]);
    }
    // Without a tokenizer the generated ids have no strings (the page shows them as #ID).
    for (const json& id : steps[7]["ids"])
      if (std::find(kLladaPrompt.begin(), kLladaPrompt.end(), id.get<std::int64_t>()) == kLladaPrompt.end())
        CHECK_FALSE(dif.meta["vocab"].contains(id.dump()));
  }
  SECTION("a masked-diffusion run's token strings become the page's vocabulary") {
    TempDir tok_out;
    render(r.diffusion_tok, tok_out.path);
    const Page page = read_page(tok_out / "report.html");
    const json strings = manifest(r.diffusion_tok)["generation"]["token_strings"];
    REQUIRE(strings.size() > kLladaPrompt.size());
    for (const auto& [id, text] : strings.items()) CHECK(page.meta["vocab"].value(id, json()) == text);
    CHECK_FALSE(page.meta["generation"].contains("token_strings"));  // embedded once, as the vocabulary
  }
}

TEST_CASE("html report options select layers, heads, prompts and steps", "[fixtures]") {
  Runs& r = runs();
  TempDir out;
  render(r.capture, out.path, {{"layers", {1, 3}}, {"heads", {2}}, {"prompts", {1}}});
  const Page page = read_page(out / "report.html");
  REQUIRE(page.meta["captures"].size() == 2);
  for (const json& p : page.meta["captures"]) {
    CHECK(p["prompt"] == 1);
    CHECK((p["layer"] == 1 || p["layer"] == 3));
    CHECK(p["heads"] == json({2}));
  }
  check_patterns(r.capture, page);

  SECTION("a head- and query-sliced run keeps its model head ids and row offsets") {
    render(r.sliced, out.path, {{"heads", {1}}});
    const Page sliced = read_page(out / "report.html");
    REQUIRE(sliced.meta["captures"].size() == 4);
    for (const json& p : sliced.meta["captures"]) {
      CHECK(p["heads"] == json({1}));
      CHECK(p["query_offset"] == 2);
      CHECK(p["queries"] == 4);
    }
    check_patterns(r.sliced, sliced);
    CHECK_THAT(test::error_of([&] { render(r.sliced, out.path, {{"heads", {0}}}); }), Catch::Contains("no attention pattern"));
  }

  render(r.diffusion, out.path, {{"steps", {2, 5}}});
  const Page dif = read_page(out / "report.html");
  std::set<int> steps;
  for (const json& p : dif.meta["captures"]) steps.insert(p["step"].get<int>());
  CHECK(steps == std::set<int>{2, 5});
  REQUIRE(dif.meta["generation"]["steps"].size() == 2);
  CHECK(dif.meta["generation"]["steps"][1]["input"] == manifest(r.diffusion)["generation"]["steps"][4]["ids"]);
}

TEST_CASE("html report keeps the embedded data under max_mib", "[fixtures]") {
  Runs& r = runs();
  TempDir out;
  SECTION("generation steps are subsampled with a visible note") {
    // 8 steps x 2 layers x 4 heads x 28 x 28 bytes = 50 KB of weights (67 KB as base64): allow ~40 KB.
    render(r.diffusion, out.path, {{"max_mib", 40.0 / 1024}});
    const Page page = read_page(out / "report.html");
    CHECK(page.html.size() < 40 * 1024 + 64 * 1024);  // + the page template itself
    std::set<int> steps;
    for (const json& p : page.meta["captures"]) steps.insert(p["step"].get<int>());
    CHECK(steps.size() >= 2);
    CHECK(steps.size() < 8);
    CHECK(steps.count(0));
    CHECK(steps.count(7));
    REQUIRE(page.meta["notes"].size() == 1);
    CHECK_THAT(page.meta["notes"][0].get<std::string>(), Catch::Contains(fmt::format("showing {} of 8 steps", steps.size())));
    check_patterns(r.diffusion, page);
  }
  SECTION("a run that cannot fit is refused with advice") {
    const std::string error = test::error_of([&] { render(r.diffusion, out.path, {{"max_mib", 1.0 / 1024}}); });
    CHECK_THAT(error, Catch::Contains("over the limit") && Catch::Contains("max_mib") && Catch::Contains(r.diffusion.string()));
    CHECK_THROWS_AS(render(r.capture, out.path, {{"max_mib", 2.0 / 1024}}), hooklens::UsageError);
    CHECK_FALSE(fs::exists(out / "report.html"));
  }
}

TEST_CASE("html report refuses bad options and damaged runs with one clear line", "[fixtures]") {
  Runs& r = runs();
  TempDir out;
  auto usage = [&](const fs::path& run, const json& options, const std::string& format = "html") {
    return test::usage_error_of([&] { renderer()->render(run, format, out.path, options); });
  };
  CHECK_THAT(usage(r.capture, json::object(), "png"), Catch::Contains("format 'png'"));
  CHECK_THAT(usage(r.capture, {{"colour", "red"}}), Catch::Contains("unknown option 'colour'"));
  CHECK_THAT(usage(r.capture, {{"layers", {7}}}), Catch::Contains("layers 0-3"));
  CHECK_THAT(usage(r.capture, {{"heads", "one"}}), Catch::Contains("'heads' must be a list"));
  // Lists in any spelling PluginOptions accepts (as figures does): one integer, or "0,1".
  CHECK(usage(r.capture, {{"heads", "1"}, {"layers", "0,1"}, {"prompts", 0}}) == "(no usage error)");
  CHECK_THAT(usage(r.capture, {{"steps", {3}}}), Catch::Contains("no attention pattern"));
  CHECK_THAT(usage(r.capture, {{"max_mib", -1}}), Catch::Contains("positive number"));

  // Damaged copies of the capture run.
  const fs::path copy = out / "run";
  fs::copy(r.capture, copy, fs::copy_options::recursive);
  const fs::path manifest_file = copy / "manifest.json";
  json m = manifest(copy);
  CHECK_THAT(test::error_of([&] { render(out / "missing", out / "o"); }), Catch::Contains("manifest.json"));

  fs::create_directories(copy / "reports");
  std::ofstream(copy / "reports" / "broken.json") << "{\"heads\": [";
  CHECK_THAT(test::error_of([&] { render(copy, out / "o"); }), Catch::Contains("broken.json") && Catch::Contains("malformed"));
  fs::remove(copy / "reports" / "broken.json");

  json bad = m;
  bad["captures"][0]["layer"] = "zero";
  std::ofstream(manifest_file, std::ios::trunc) << bad.dump();
  CHECK_THAT(test::error_of([&] { render(copy, out / "o"); }), Catch::Contains(manifest_file.string()) && Catch::Contains("'layer'"));

  bad = m;
  bad["complete"] = false;
  std::ofstream(manifest_file, std::ios::trunc) << bad.dump();
  CHECK_THAT(test::error_of([&] { render(copy, out / "o"); }), Catch::Contains("incomplete"));

  std::ofstream(manifest_file, std::ios::trunc) << m.dump();
  fs::resize_file(copy / m["captures"][0]["file"].get<std::string>(), 100);
  CHECK_THAT(test::error_of([&] { render(copy, out / "o"); }), Catch::Contains(m["captures"][0]["file"].get<std::string>()));
  CHECK_FALSE(fs::exists(out / "o" / "report.html"));
}

// ---- the page in headless Chromium -------------------------------------------------------------

std::string find_chromium() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
    if (std::system(fmt::format("command -v {} >/dev/null 2>&1", name).c_str()) == 0) return name;
  return "";
}

struct Browse {
  fs::path page;
  std::string fragment;
  fs::path png, dom, log;
};

// Loads every page at once (the calls run in parallel; each has a deadline), keeping its DOM after
// the scripts ran, a 1200x900 screenshot, and the browser's log.
void browse(const std::string& chromium, const fs::path& profile_root, std::vector<Browse>& calls) {
  std::string script;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const Browse& c = calls[i];
    script += fmt::format(
        "(timeout 25 {} --headless --no-sandbox --disable-gpu --no-first-run --disable-extensions "
        "--user-data-dir='{}' --window-size=1200,900 --hide-scrollbars --virtual-time-budget=10000 "
        "--enable-logging=stderr --screenshot='{}' --dump-dom "
        "'file://{}#{}' >'{}' 2>'{}') & ",
        chromium, (profile_root / std::to_string(i)).string(), c.png.string(), c.page.string(), c.fragment, c.dom.string(),
        c.log.string());
  }
  script += "wait";
  REQUIRE(std::system(script.c_str()) == 0);
}

// The canvas's page rectangle, which the page writes into data-rect.
std::array<double, 4> heatmap_rect(const std::string& dom) {
  std::smatch match;
  REQUIRE(std::regex_search(dom, match, std::regex("id=\"hl-heatmap\"[^>]*data-rect=\"(\\d+),(\\d+),(\\d+),(\\d+)\"")));
  return {std::stod(match[1]), std::stod(match[2]), std::stod(match[3]), std::stod(match[4])};
}

// The documented ramp (docs/html-report.md): 0 -> (68,1,84), 0.25 -> (59,82,139), 0.5 -> (33,145,140),
// 0.75 -> (94,201,98), 1 -> (253,231,37), linear in between.
std::array<int, 3> ramp(double w) {
  static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  const double x = std::clamp(w, 0.0, 1.0) * 4;
  const int k = std::min(3, int(x));
  std::array<int, 3> rgb;
  for (int ch = 0; ch < 3; ++ch) rgb[ch] = int(std::lround(stops[k][ch] + (x - k) * (stops[k + 1][ch] - stops[k][ch])));
  return rgb;
}

int colour_distance(const std::array<int, 3>& a, const std::array<int, 3>& b) {
  return std::max({std::abs(a[0] - b[0]), std::abs(a[1] - b[1]), std::abs(a[2] - b[2])});
}

std::string html_text(const std::string& text) {
  std::string out;
  for (char c : text) out += c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;" : std::string(1, c);
  return out;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

void check_loaded(const Browse& call) {
  const std::string dom = test::read_file(call.dom), log = test::read_file(call.log);
  INFO(call.page << "#" << call.fragment << "\n--- browser log ---\n" << log.substr(0, 4000));
  REQUIRE_THAT(dom, Catch::Contains("data-ready=\"1\""));
  CHECK_THAT(dom, Catch::Contains("id=\"hl-errors\" data-count=\"0\""));
  CHECK_THAT(log, !Catch::Contains("Uncaught"));
}

// The reports of the three runs (the capture run with a report of known rows, as an analyzer would
// write it) loaded once in headless Chromium; empty `calls` when there is no browser.
struct Pages {
  TempDir out;
  std::vector<Browse> calls;
  Pages() {
    const std::string chromium = find_chromium();
    if (chromium.empty()) return;
    Runs& r = runs();
    const json report = {{"analyzer", "test_stats"},
                         {"definitions", {{"entropy", "mean row entropy in nats"}}},
                         {"heads", {{{"layer", 0}, {"head", 1}, {"entropy", 0.5}},
                                    {{"layer", 2}, {"head", 3}, {"entropy", 1.25}},
                                    {{"layer", 3}, {"head", 0}, {"entropy", nullptr}}}},
                         {"summary", {{"rows", 42}}}};
    const fs::path run = out / "capture";
    fs::copy(r.capture, run, fs::copy_options::recursive);
    fs::create_directories(run / "reports");
    std::ofstream(run / "reports" / "test_stats.json") << report.dump();
    render(run, out / "capture-html");
    render(r.generate, out / "generate-html");
    render(r.diffusion_tok, out / "diffusion-html");
    auto call = [&](const std::string& name, const std::string& page, const std::string& fragment) {
      return Browse{out / page / "report.html", fragment, out / (name + ".png"), out / (name + ".html"), out / (name + ".log")};
    };
    calls = {call("a", "capture-html", "prompt=0&layer=0&head=0"), call("b", "capture-html", "prompt=1&layer=1&head=3"),
             call("g", "generate-html", "layer=2&head=mean&step=2"), call("d", "diffusion-html", "layer=1&head=mean&step=3")};
    browse(chromium, out.path, calls);
  }
};

TEST_CASE("html report pages load in headless Chromium and show the run", "[fixtures]") {
  static Pages pages;
  if (pages.calls.empty()) {
    test::skip("no chromium binary on PATH: the browser checks did not run (scripts/setup.sh installs it)");
    return;
  }
  Runs& r = runs();
  const std::vector<Browse>& calls = pages.calls;
  for (const Browse& c : calls) check_loaded(c);
  const std::string dom_a = test::read_file(calls[0].dom), dom_b = test::read_file(calls[1].dom);
  const std::string dom_g = test::read_file(calls[2].dom), dom_d = test::read_file(calls[3].dom);
  const json capture_manifest = manifest(r.capture);

  SECTION("the token strip shows the prompt's tokens, escaped") {
    for (int p = 0; p < 2; ++p) {
      const std::string& dom = p == 0 ? dom_a : dom_b;
      const json& tokens = capture_manifest["prompts"][p]["tokens"];
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        INFO("prompt " << p << " token " << i << ": " << tokens[i]);
        CHECK_THAT(dom, Catch::Contains(fmt::format("data-pos=\"{}\"", i)) &&
                            Catch::Contains(">" + html_text(tokens[i].get<std::string>()) + "</span>"));
      }
    }
    CHECK_THAT(dom_b, Catch::Contains("&lt;/"));  // the tricky prompt's "</script>" is text
  }
  SECTION("the analyzer table has one row per head record, and the other fields collapse") {
    std::smatch table;
    REQUIRE(std::regex_search(dom_a, table, std::regex("<table class=\"heads\" data-analyzer=\"test_stats\">.*?</table>")));
    const std::string rows = table.str();
    CHECK(count(rows, "<tr data-layer=") == 3);
    CHECK_THAT(rows, Catch::Contains("<td>1.250</td>") && Catch::Contains("<td>0.5000</td>") && Catch::Contains("\u2014"));
    CHECK_THAT(dom_a, Catch::Contains("<summary>summary</summary>") && Catch::Contains("mean row entropy in nats"));
  }
  SECTION("the generation page shows the step's chosen token") {
    const json steps = manifest(r.generate)["generation"]["steps"];
    CHECK_THAT(dom_g, Catch::Contains("chose " + html_text(steps[2]["token_string"].dump())));
    CHECK(count(dom_g, "class=\"tok next") == 1);
    CHECK(count(dom_g, "class=\"tok ") == 3 + 3);  // the prompt and the tokens of steps 0-2
  }
  SECTION("the diffusion page highlights the tokens committed at the step, shown by their strings") {
    const json generation = manifest(r.diffusion_tok)["generation"];
    const json& step = generation["steps"][3];
    std::set<int> shown;
    const std::regex committed("class=\"tok [^\"]*committed[^\"]*\" data-pos=\"(\\d+)\"");
    for (auto it = std::sregex_iterator(dom_d.begin(), dom_d.end(), committed); it != std::sregex_iterator(); ++it)
      shown.insert(std::stoi((*it)[1]));
    CHECK(shown == step["committed"].get<std::set<int>>());
    CHECK_THAT(dom_d, Catch::Contains(">[MASK]</span>"));
    CHECK_THAT(dom_d, Catch::Contains("block 0: committed positions 14, 15"));
    // The strip (#hl-tokens, not the input strip below it) shows the sequence after the step:
    // generated tokens by their manifest string, not #ID.
    std::smatch tokens;
    REQUIRE(std::regex_search(dom_d, tokens, std::regex("id=\"hl-tokens\"[^>]*>(.*?)</div>")));
    const std::string html = tokens[1];
    std::map<int, std::string> strip;
    const std::regex token("class=\"tok [^\"]*\" data-pos=\"(\\d+)\"[^>]*>([^<]*)</span>");
    for (auto it = std::sregex_iterator(html.begin(), html.end(), token); it != std::sregex_iterator(); ++it)
      strip[std::stoi((*it)[1])] = (*it)[2];
    const json& ids = step["ids"];
    REQUIRE(strip.size() == ids.size());
    int generated = 0;
    for (std::size_t i = kLladaPrompt.size(); i < ids.size(); ++i) {
      if (ids[i] == generation["mask_id"]) continue;
      INFO("position " << i << ", id " << ids[i]);
      CHECK(strip[int(i)] == html_text(generation["token_strings"].at(ids[i].dump()).get<std::string>()));
      ++generated;
    }
    CHECK(generated == 8);  // steps 0-3 committed all of block 0, two positions a step
  }
  SECTION("the heatmap is drawn with the weights of the selected layer and head") {
    hooklens::RunReader reader(r.capture);
    const Png a = Png::load(calls[0].png), b = Png::load(calls[1].png);
    const auto rect_a = heatmap_rect(dom_a), rect_b = heatmap_rect(dom_b);
    REQUIRE(rect_a[0] + rect_a[2] <= a.width);
    REQUIRE(rect_a[1] + rect_a[3] <= a.height);
    // Prompt 0 (6 tokens), layer 0, head 0: cells (query 0, any key) and (query 4, key 2); the
    // outlined query row (the last) is not sampled.
    const at::Tensor w = reader.load(0).to(at::kFloat);
    REQUIRE(capture_manifest["captures"][0]["layer"] == 0);
    const double cell = rect_a[2] / 6;
    for (auto [q, k] : {std::pair{0, 0}, std::pair{0, 3}, std::pair{4, 2}, std::pair{4, 0}, std::pair{3, 3}}) {
      const auto expected = ramp(w[0][0][q][k].item<double>());
      const auto got = a.pixel(int(rect_a[0] + (k + 0.5) * cell), int(rect_a[1] + (q + 0.5) * cell));
      INFO("query " << q << " key " << k << " weight " << w[0][0][q][k].item<double>());
      CHECK(colour_distance(got, expected) <= 3);
    }
    // Another prompt, layer and head give another picture in the same place.
    REQUIRE(rect_b[0] + rect_b[2] <= b.width);
    double difference = 0;
    int n = 0;
    for (double y = rect_a[1]; y < rect_a[1] + std::min(rect_a[3], rect_b[3]); y += 2)
      for (double x = rect_a[0]; x < rect_a[0] + std::min(rect_a[2], rect_b[2]); x += 2, ++n)
        difference += colour_distance(a.pixel(int(x), int(y)), b.pixel(int(x), int(y)));
    CHECK(difference / n > 10);
  }
  SECTION("the diffusion heatmap covers all 28 positions and is not blank") {
    const Png d = Png::load(calls[3].png);
    const auto rect = heatmap_rect(dom_d);
    REQUIRE(rect[0] + rect[2] <= d.width);
    REQUIRE(rect[1] + rect[3] <= d.height);
    std::set<int> colours;
    for (double y = rect[1] + 1; y < rect[1] + rect[3] - 1; y += 3)
      for (double x = rect[0] + 1; x < rect[0] + rect[2] - 1; x += 3) {
        const auto c = d.pixel(int(x), int(y));
        colours.insert(c[0] << 16 | c[1] << 8 | c[2]);
      }
    CHECK(colours.size() > 20);
    CHECK_THAT(dom_d, Catch::Contains("columns keys 0-27"));
  }
}

}  // namespace

// ---- semantically broken runs (issue 13): one clear line, never a crash ---------------------------

namespace {

// A copy of `run` in `dir` / `name` whose manifest `edit` changed; "@DEEP@" in the manifest becomes
// an array nested `depth` levels deep.
fs::path broken_copy(const fs::path& run, const fs::path& dir, const std::string& name,
                     const std::function<void(json&)>& edit, std::size_t depth = 0) {
  const fs::path copy = dir / name;
  fs::copy(run, copy, fs::copy_options::recursive);
  json m = json::parse(test::read_file(copy / "manifest.json"));
  edit(m);
  std::string text = m.dump();
  const std::size_t at = text.find("\"@DEEP@\"");
  if (at != std::string::npos) text.replace(at, 8, std::string(depth, '[') + std::string(depth, ']'));
  std::ofstream(copy / "manifest.json", std::ios::trunc) << text;
  return copy;
}

std::string html_refusal(const fs::path& run, const fs::path& dir) {
  return test::hooklens_refusal(
      fmt::format("render '{}' --format html --out '{}'", run.string(), (dir / "html").string()), dir / "log");
}

}  // namespace

TEST_CASE("html report: negative offsets are refused with one line naming the capture and field", "[fixtures]") {
  const Runs& r = runs();
  TempDir tmp;
  const json m = manifest(r.capture);
  std::size_t i = 0;
  while (m["captures"][i]["hook"] != "blocks.0.attn.hook_pattern") ++i;
  for (const char* field : {"query_offset", "key_offset"}) {
    const fs::path run = broken_copy(r.capture, tmp.path, field, [&](json& j) { j["captures"][i][field] = -1; });
    const std::string line = html_refusal(run, tmp.path);
    CHECK_THAT(line, Catch::Contains(run.string()) && Catch::Contains(m["captures"][i]["key"].get<std::string>()) &&
                         Catch::Contains(fmt::format("'{}'", field)));
  }
}

TEST_CASE("html report: deeply nested manifests and reports are refused, not recursed into", "[fixtures]") {
  const Runs& r = runs();
  TempDir tmp;
  // 100000 levels: dump() or a copy of it would overflow the stack.
  const fs::path deep = broken_copy(r.capture, tmp.path, "deep", [](json& j) { j["model"]["extra"] = "@DEEP@"; }, 100000);
  CHECK_THAT(html_refusal(deep, tmp.path), Catch::Contains("deeper than"));
  CHECK_THAT(test::hooklens_refusal(fmt::format("render '{}' --format png --out '{}'", deep.string(), (tmp / "png").string()),
                                    tmp / "log"),
             Catch::Contains("deeper than"));

  // A report the page would embed, nested as deep.
  const fs::path report = broken_copy(r.capture, tmp.path, "deep_report", [](json&) {});
  fs::create_directories(report / "reports");
  std::ofstream(report / "reports" / "deep.json")
      << "{\"heads\": [], \"deep\": " << std::string(100000, '[') << std::string(100000, ']') << "}";
  CHECK_THAT(html_refusal(report, tmp.path), Catch::Contains("deep.json") && Catch::Contains("deeper than"));
  // The figures renderer reads the same report through the same bounded reader: refused too.
  CHECK_THAT(test::hooklens_refusal(fmt::format("render '{}' --format png --out '{}'", report.string(),
                                                (tmp / "png2").string()),
                                    tmp / "log"),
             Catch::Contains("deep.json") && Catch::Contains("deeper than"));

  // Moderate nesting in a valid place is still a valid run.
  const fs::path fine = broken_copy(r.capture, tmp.path, "fine", [](json& j) { j["model"]["extra"] = "@DEEP@"; }, 20);
  test::require_hooklens(fmt::format("render '{}' --format html --out '{}'", fine.string(), (tmp / "fine_html").string()),
                         tmp / "log");
  CHECK(fs::exists(tmp / "fine_html" / "report.html"));
}

// ---- interventions (issue 17): the header says the model was changed, the section lists how ------

TEST_CASE("html report lists a run's interventions, escaped, and says so in the header", "[fixtures]") {
  const Runs& r = runs();
  TempDir tmp;
  const auto page_of = [&](const fs::path& run) {
    render(run, tmp / (run.filename().string() + "-html"));
    return test::read_file(tmp / (run.filename().string() + "-html") / "report.html");
  };
  const auto header_of = [](const std::string& html) {
    const std::size_t start = html.find("<header>"), end = html.find("</header>");
    REQUIRE(start != std::string::npos);
    REQUIRE(end != std::string::npos);
    return html.substr(start, end - start);
  };

  // A run nothing changed: no note, no section.
  const std::string plain = page_of(r.capture);
  CHECK(plain.find("id=\"hl-intervened\"") == std::string::npos);
  CHECK(plain.find("<section id=\"hl-interventions\">") == std::string::npos);

  const json patch = {{"kind", "patch"}, {"site", "blocks.1.attn.hook_z[head=3,pos=5]"}, {"hook", "blocks.1.attn.hook_z"},
                      {"source", "runs/<clean>"}, {"applied", 12},
                      {"text", "patched blocks.1.attn.hook_z[head=3,pos=5] from </script><b>&amp;"}};
  const json steer = {{"kind", "steer"}, {"site", "blocks.0.hook_resid_post"}, {"hook", "blocks.0.hook_resid_post"},
                      {"source", "vec.safetensors:steering"}, {"scale", 4.5}, {"applied", 1},
                      {"text", "steered blocks.0.hook_resid_post by 4.5 x vec.safetensors:steering"}};
  const fs::path changed = broken_copy(r.capture, tmp.path, "changed", [&](json& m) {
    json zero = {{"kind", "zero_ablate"}, {"site", "blocks.1.attn.hook_z[head=2]"}, {"hook", "blocks.1.attn.hook_z"},
                 {"source", nullptr}, {"text", "zero-ablated blocks.1.attn.hook_z[head=2]"}};  // not counted: no "applied"
    m["interventions"] = {patch, steer, zero};
    m["ablations"] = {"1.2"};  // --ablate's value as given: "interventions" lists it already
  });
  const std::string html = page_of(changed);
  const std::string header = header_of(html);
  CHECK_THAT(header, Catch::Contains("this run was changed by 3 interventions: its figures show the changed model"));
  std::smatch section;
  REQUIRE(std::regex_search(html, section, std::regex("<section id=\"hl-interventions\">[\\s\\S]*?</section>")));
  const std::string list = section.str();
  CHECK(count(list, "<li data-kind=") == 3);
  CHECK_THAT(list, Catch::Contains("<h2>Interventions</h2>"));
  CHECK_THAT(list, Catch::Contains(">patched blocks.1.attn.hook_z[head=3,pos=5] from &lt;/script&gt;&lt;b&gt;&amp;amp;</span>"));
  CHECK_THAT(list, Catch::Contains("kind patch, site blocks.1.attn.hook_z[head=3,pos=5], source runs/&lt;clean&gt;, "
                                   "applied to 12 hook events"));
  CHECK_THAT(list, Catch::Contains("kind steer, site blocks.0.hook_resid_post, source vec.safetensors:steering, scale 4.5, "
                                   "applied to 1 hook event<"));
  CHECK_THAT(list, Catch::Contains(">zero-ablated blocks.1.attn.hook_z[head=2]</span>"));
  CHECK_THAT(list, Catch::Contains("kind zero_ablate, site blocks.1.attn.hook_z[head=2]</span>"));
  CHECK(list.find("</script>") == std::string::npos);  // the text cannot end the page's script blocks early
  // Before the attention section: near the top.
  CHECK(html.find("<section id=\"hl-interventions\">") < html.find("<section id=\"hl-attention\">"));

  // A run written before "interventions", with one --ablate head: the note counts it in the singular.
  const fs::path ablated = broken_copy(r.capture, tmp.path, "ablated", [&](json& m) {
    m.erase("interventions");
    m["ablations"] = {"0.1"};
  });
  CHECK_THAT(header_of(page_of(ablated)), Catch::Contains("changed by 1 intervention: its figures"));

  // A malformed entry: one line naming the manifest and the field.
  const fs::path broken = broken_copy(r.capture, tmp.path, "broken", [&](json& m) {
    m["interventions"] = {patch};
    m["interventions"][0]["kind"] = "amplify";
  });
  const std::string line = html_refusal(broken, tmp.path);
  CHECK_THAT(line, Catch::Contains((broken / "manifest.json").string()) &&
                       Catch::Contains("intervention 0 field 'kind' is 'amplify'"));
}
