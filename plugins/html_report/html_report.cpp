// The interactive HTML report (renderer "html_report", format "html"): one self-contained
// OUT/report.html per run, viewable offline. The page (template/report.{html,css,js}) gets two
// embedded data blocks:
//   <script type="application/json" id="hl-meta">  model, prompts, generation steps, the list of
//       embedded attention patterns, the analyzers' reports, notes;
//   <script type="text/plain" id="hl-patterns">     one line per pattern of hl-meta's "captures":
//       base64 of uint8 weights round(255 w), laid out [head, query, key].
// Patterns are read one capture at a time and streamed to the file, so memory stays at one capture
// plus the metadata. The embedded data is limited (max_mib, default 64): generation steps are
// subsampled with a visible note when that is enough, otherwise render() refuses with advice.
// A run whose model was changed (its "interventions", or an older run's "ablations") says so in the
// page header, and its Interventions section lists them; both are written here as escaped HTML, so
// they show without the script.
#include <hooklens/error.h>
#include <hooklens/hook_names.h>
#include <hooklens/json_read.h>
#include <hooklens/plugin_define.h>
#include <hooklens/plugin_options.h>
#include <hooklens/renderer.h>
#include <hooklens/run.h>

#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string_view>

#include "html_template.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace hooklens {
namespace {

constexpr double kDefaultMaxMib = 64;

struct Options {
  std::optional<std::set<int>> layers, heads, prompts, steps;
  double max_mib = kDefaultMaxMib;
};

// The options through PluginOptions (hooklens/plugin_options.h): integer lists as 2, [0, 2] or "0,2".
Options parse_options(const json& options) {
  // "target" is for static figures; the page picks tokens interactively, so it is accepted and unused.
  const hooklens::PluginOptions given("html_report", options, {"layers", "heads", "prompts", "steps", "target", "max_mib"});
  const auto set_of = [&](const char* key) -> std::optional<std::set<int>> {
    const std::optional<std::vector<int>> list = given.int_list(key, 0);
    if (!list) return std::nullopt;
    return std::set<int>(list->begin(), list->end());
  };
  Options parsed;
  parsed.layers = set_of("layers");
  parsed.heads = set_of("heads");
  parsed.prompts = set_of("prompts");
  parsed.steps = set_of("steps");
  parsed.max_mib = given.positive_number("max_mib").value_or(kDefaultMaxMib);
  return parsed;
}

// Manifest fields the renderer relies on, checked so that a damaged run gives one clear line.
struct ManifestView {
  fs::path file;
  const json& m;

  [[noreturn]] void fail(const std::string& what) const { throw Error(fmt::format("{}: {}", file.string(), what)); }
};

// One embedded pattern: a pass-0 attention pattern capture, restricted to the selected heads.
struct Pattern {
  std::size_t index = 0;  // in the manifest's captures
  int prompt = 0, step = 0, block = -1, layer = 0;
  std::string phase;
  std::int64_t query_offset = 0, key_offset = 0, queries = 0, keys = 0, captured_heads = 0;
  std::vector<int> head_columns, head_ids;  // tensor head index -> model head id, selected only
  std::uint64_t bytes() const { return std::uint64_t(head_columns.size()) * queries * keys; }
};

bool is_pattern_hook(const std::string& hook) { return hook_names::layer_of(hook, hook_names::pattern).has_value(); }

// Model head ids of a capture's head dimension: the run's --heads slice when there was one.
std::vector<int> captured_head_ids(const ManifestView& mv, std::int64_t tensor_heads) {
  std::vector<int> ids;
  const json& capture = mv.m.value("capture", json::object());
  if (capture.is_object() && capture.contains("heads") && capture["heads"].is_array() && !capture["heads"].empty()) {
    for (const json& h : capture["heads"]) {
      if (!h.is_number_integer()) mv.fail("\"capture\".\"heads\" must list integers");
      ids.push_back(h.get<int>());
    }
  } else {
    for (int h = 0; h < tensor_heads; ++h) ids.push_back(h);
  }
  if (std::int64_t(ids.size()) != tensor_heads)
    mv.fail(fmt::format("attention patterns have {} heads but \"capture\".\"heads\" lists {}", tensor_heads, ids.size()));
  return ids;
}

struct Selection {
  std::vector<Pattern> patterns;
  std::vector<std::string> notes;
};

// The entries were checked by RunReader (RunCheck::consistent): offsets, prompt, layer and step
// are within the run, so only what the page needs of a pattern is checked here.
Selection select_patterns(const RunReader& reader, const ManifestView& mv, const Options& options,
                          std::int64_t prompt_count) {
  Selection sel;
  std::size_t other_passes = 0;
  bool any_pattern = false;
  for (std::size_t i = 0; i < reader.capture_count(); ++i) {
    const CaptureEntry& c = reader.entry(i);
    if (!is_pattern_hook(c.hook)) continue;
    any_pattern = true;
    const std::string where = fmt::format("capture {} ('{}')", i, c.key);
    const std::vector<std::int64_t>& shape = c.shape;
    if (shape.size() != 4 || shape[0] != 1 || shape[1] < 1)
      mv.fail(fmt::format("{} has shape {}, expected [1, head, query, key]", where, brief_json(json(shape))));
    Pattern p;
    p.index = i;
    p.prompt = c.context.prompt;
    p.step = c.context.step;
    p.block = c.context.block;
    p.layer = c.context.layer;
    p.query_offset = c.context.query_offset;
    p.key_offset = c.context.key_offset;
    p.phase = phase_name(c.context.phase);
    if (p.prompt < 0 || p.prompt >= prompt_count) mv.fail(fmt::format("{} names prompt {} of {}", where, p.prompt, prompt_count));
    if (c.context.pass != 0) {  // classifier-free guidance's unconditional copy
      ++other_passes;
      continue;
    }
    if (options.layers && !options.layers->count(p.layer)) continue;
    if (options.prompts && !options.prompts->count(p.prompt)) continue;
    if (options.steps && !options.steps->count(p.step)) continue;
    p.captured_heads = shape[1];
    p.queries = shape[2];
    p.keys = shape[3];
    const std::vector<int> ids = captured_head_ids(mv, p.captured_heads);
    for (std::size_t h = 0; h < ids.size(); ++h)
      if (!options.heads || options.heads->count(ids[h])) {
        p.head_columns.push_back(int(h));
        p.head_ids.push_back(ids[h]);
      }
    if (!p.head_columns.empty()) sel.patterns.push_back(std::move(p));
  }
  if (other_passes)
    sel.notes.push_back(fmt::format("{} patterns of classifier-free guidance's unconditional pass are not shown", other_passes));
  const bool filtered = options.layers || options.heads || options.prompts || options.steps;
  if (sel.patterns.empty() && filtered && any_pattern)
    throw UsageError(fmt::format("html report: no attention pattern of {} matches the layers/heads/prompts/steps options",
                                 mv.file.string()));
  if (!any_pattern)
    sel.notes.push_back("the run has no attention patterns (capture blocks.*.attn.hook_pattern to see heatmaps)");
  return sel;
}

std::uint64_t base64_size(std::uint64_t bytes) { return (bytes + 2) / 3 * 4 + 1; }  // + the line break

// Keeps evenly spaced generation steps (first and last included) until the patterns fit `budget`.
// Returns the steps kept, or nullopt when even a single step is too large.
std::optional<std::set<int>> fit_steps(const std::vector<Pattern>& patterns, std::uint64_t budget) {
  std::map<int, std::uint64_t> per_step;
  std::uint64_t total = 0;
  for (const Pattern& p : patterns) {
    per_step[p.step] += base64_size(p.bytes());
    total += base64_size(p.bytes());
  }
  std::vector<int> steps;
  for (const auto& [step, size] : per_step) steps.push_back(step);
  std::set<int> all(steps.begin(), steps.end());
  if (total <= budget) return all;
  const std::size_t n = steps.size();
  std::size_t k = std::min<std::size_t>(n - 1, std::size_t(double(n) * double(budget) / double(total)) + 1);
  for (; k >= 1; --k) {
    std::set<int> kept;
    std::uint64_t size = 0;
    for (std::size_t i = 0; i < k; ++i) {
      const std::size_t at = k == 1 ? 0 : (i * (n - 1) + (k - 1) / 2) / (k - 1);
      if (kept.insert(steps[at]).second) size += per_step[steps[at]];
    }
    if (size <= budget) return kept;
  }
  return std::nullopt;
}

// Display strings of the ids the run names: prompt tokens and generated tokens.
json known_tokens(const RunReader& reader) {
  std::map<std::int64_t, std::string> vocab;
  for (const RunPrompt& prompt : reader.prompts())
    for (std::size_t i = 0; i < prompt.ids.size() && i < prompt.tokens.size(); ++i) vocab[prompt.ids[i]] = prompt.tokens[i];
  const RunGeneration& generation = reader.generation();
  for (const TokenStep& step : generation.token_steps)
    if (step.token && step.token_string) vocab[*step.token] = *step.token_string;
  json out = json::object();
  for (const auto& [id, text] : vocab) out[std::to_string(id)] = text;
  // A masked-diffusion run made with a tokenizer maps the ids of its sequences to their strings.
  if (generation.token_strings)
    for (const auto& [id, text] : *generation.token_strings) out[std::to_string(id)] = text;
  return out;
}

// The generation record the page needs, for the steps kept: autoregressive steps as they are;
// masked-diffusion steps with "input" (the sequence the step's forward pass saw) added.
json generation_view(const RunReader& reader, const std::set<int>& steps_kept) {
  const RunGeneration& decoded = reader.generation();
  const json& generation = reader.manifest().value("generation", json::object());
  json view = json::object();
  for (const auto& [key, value] : generation.items())
    if (key != "steps" && key != "token_strings") view[key] = value;  // token strings go to "vocab"
  view["mode"] = generation_mode_name(decoded.mode);
  json steps = json::array();
  const bool diffusion = decoded.mode == GenerationMode::masked_diffusion;
  json previous_ids;
  if (diffusion && !decoded.denoise_steps.empty()) {
    const std::vector<std::int64_t>& prompt_ids = reader.prompts().at(0).ids;
    previous_ids = prompt_ids;
    const std::int64_t masks = std::int64_t(decoded.denoise_steps[0].ids.size()) - std::int64_t(prompt_ids.size());
    for (std::int64_t i = 0; i < masks; ++i) previous_ids.push_back(decoded.mask_id ? json(*decoded.mask_id) : json());
  }
  const std::size_t count = decoded.mode == GenerationMode::none ? 0 : decoded.step_count();
  for (std::size_t i = 0; i < count; ++i) {
    json entry = generation["steps"][i];
    const int number = diffusion ? decoded.denoise_steps[i].step : decoded.token_steps[i].step;
    if (diffusion) {
      entry["input"] = previous_ids;
      previous_ids = decoded.denoise_steps[i].ids;
    }
    if (steps_kept.count(number)) steps.push_back(std::move(entry));
  }
  view["steps"] = std::move(steps);
  return view;
}

json read_reports(const fs::path& run) {
  json reports = json::array();
  const fs::path dir = run / "reports";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return reports;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  if (ec) throw Error(fmt::format("{}: cannot list the reports: {}", dir.string(), ec.message()));
  std::sort(files.begin(), files.end());
  for (const fs::path& file : files) {
    json report = read_json_file(file);
    if (!report.is_object()) throw Error(fmt::format("{}: an analyzer report must be a JSON object", file.string()));
    reports.push_back({{"file", "reports/" + file.filename().string()}, {"report", std::move(report)}});
  }
  return reports;
}

json pattern_json(const Pattern& p) {
  return {{"prompt", p.prompt}, {"step", p.step},           {"block", p.block},       {"layer", p.layer},
          {"phase", p.phase},   {"query_offset", p.query_offset}, {"key_offset", p.key_offset},
          {"queries", p.queries}, {"keys", p.keys},         {"heads", p.head_ids}};
}

// JSON safe inside <script>: '<' only occurs in strings, where \u003c means the same.
std::string script_json(const json& value) {
  const std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  std::string out;
  out.reserve(text.size());
  for (char c : text) out += c == '<' ? std::string("\\u003c") : std::string(1, c);
  return out;
}

void write_base64(std::ostream& out, const std::vector<std::uint8_t>& bytes) {
  static const char* const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string line;
  line.reserve(base64_size(bytes.size()));
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::uint32_t b0 = bytes[i], b1 = i + 1 < bytes.size() ? bytes[i + 1] : 0, b2 = i + 2 < bytes.size() ? bytes[i + 2] : 0;
    const std::uint32_t v = (b0 << 16) | (b1 << 8) | b2;
    line += alphabet[(v >> 18) & 63];
    line += alphabet[(v >> 12) & 63];
    line += i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=';
    line += i + 2 < bytes.size() ? alphabet[v & 63] : '=';
  }
  line += '\n';
  out << line;
}

// round(255 w) per weight of the selected heads; counts weights that were not finite (stored as 0).
std::vector<std::uint8_t> quantise(const at::Tensor& stored, const Pattern& p, std::size_t* non_finite) {
  const at::Tensor t = stored.to(at::kFloat).contiguous();
  const float* data = t.data_ptr<float>();
  const std::int64_t plane = p.queries * p.keys;
  std::vector<std::uint8_t> out;
  out.reserve(p.bytes());
  for (int column : p.head_columns)
    for (std::int64_t i = 0; i < plane; ++i) {
      const float w = data[column * plane + i];
      if (!std::isfinite(w)) ++*non_finite;
      out.push_back(std::isfinite(w) ? std::uint8_t(std::lround(std::clamp(w, 0.0f, 1.0f) * 255.0f)) : 0);
    }
  return out;
}

// Text as HTML element content or attribute value.
std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// The header's note: the figures below show the changed model.
std::string intervened_note(const std::vector<RunIntervention>& interventions) {
  if (interventions.empty()) return "";
  const std::size_t n = interventions.size();
  return fmt::format("<p id=\"hl-intervened\" data-count=\"{}\">this run was changed by {} intervention{}: its figures "
                     "show the changed model (see Interventions below)</p>\n", n, n, n == 1 ? "" : "s");
}

// The Interventions section: each one's line, and what it changed where.
std::string interventions_section(const std::vector<RunIntervention>& interventions) {
  if (interventions.empty()) return "";
  std::string html = "<section id=\"hl-interventions\">\n  <h2>Interventions</h2>\n  <ol id=\"hl-interventions-list\">\n";
  for (const RunIntervention& i : interventions) {
    std::string detail = fmt::format("kind {}, site {}", i.kind, i.site);
    if (i.source) detail += ", source " + *i.source;
    if (i.scale) detail += fmt::format(", scale {}", *i.scale);
    if (i.applied) detail += fmt::format(", applied to {} hook event{}", *i.applied, *i.applied == 1 ? "" : "s");
    html += fmt::format("    <li data-kind=\"{}\"><span class=\"text\">{}</span><br><span class=\"detail\">{}</span></li>\n",
                        html_escape(i.kind), html_escape(i.text), html_escape(detail));
  }
  return html + "  </ol>\n</section>\n";
}

// The template's markers split it into pieces: before the style, the header's intervention note,
// the Interventions section, the data and the script.
std::vector<std::string_view> template_pieces() {
  std::string_view page = kTemplate_page;
  std::vector<std::string_view> pieces;
  for (std::string_view marker : {"<!--HL:STYLE-->", "<!--HL:INTERVENED-->", "<!--HL:INTERVENTIONS-->",
                                  "<!--HL:DATA-->", "<!--HL:SCRIPT-->"}) {
    const std::size_t at = page.find(marker);
    if (at == std::string_view::npos) throw Error(fmt::format("html report: the page template lacks {}", marker));
    pieces.push_back(page.substr(0, at));
    page.remove_prefix(at + marker.size());
  }
  pieces.push_back(page);
  return pieces;
}

class HtmlReport final : public Renderer {
 public:
  std::vector<std::string> formats() const override { return {"html"}; }

  json render(const fs::path& run, const std::string& format, const fs::path& out, const json& options) override {
    if (format != "html") throw UsageError(fmt::format("html report: cannot write format '{}' (only html)", format));
    const Options opts = parse_options(options);
    try {
      // Every field the page indexes with is checked once here (RunCheck::consistent).
      RunReader reader(run, /*allow_incomplete=*/false, RunCheck::consistent);
      return render_run(reader, out, opts);
    } catch (const json::exception& e) {  // a manifest field of the wrong type
      throw Error(fmt::format("{}: malformed run manifest: {}", (run / "manifest.json").string(), e.what()));
    }
  }

 private:
  static json render_run(RunReader& reader, const fs::path& out, const Options& opts) {
    const fs::path& run = reader.directory();
    const ManifestView mv{run / "manifest.json", reader.manifest()};
    // RunCheck::consistent decoded every prompt (its ids and tokens) and the generation block.
    if (reader.prompts().empty()) mv.fail("has no \"prompts\"");
    const json& prompts = mv.m.at("prompts");
    check_option_ranges(mv, opts, std::int64_t(prompts.size()));

    Selection sel = select_patterns(reader, mv, opts, std::int64_t(prompts.size()));
    json meta = {{"run", fs::absolute(run).lexically_normal().string()},
                 {"model", mv.m.value("model", json::object())},
                 {"prompts", prompts},
                 {"vocab", known_tokens(reader)},
                 {"reports", read_reports(run)},
                 {"limit_mib", opts.max_mib}};
    const std::set<int> all_steps = steps_of(sel.patterns);
    meta["generation"] = generation_view(reader, all_steps.empty() ? std::set<int>{0} : all_steps);
    fit_limit(mv, opts, meta, sel);

    std::vector<json> listed;
    for (const Pattern& p : sel.patterns) listed.push_back(pattern_json(p));
    meta["captures"] = listed;
    meta["generation"] = generation_view(reader, steps_of(sel.patterns));
    write_page(reader, out, meta, sel);
    return {{"files", json::array({{{"file", "report.html"},
                                    {"shows", "interactive report: tokens, attention heatmaps per layer/head/step, analyzer tables"}}})}};
  }

  static std::set<int> steps_of(const std::vector<Pattern>& patterns) {
    std::set<int> steps;
    for (const Pattern& p : patterns) steps.insert(p.step);
    return steps;
  }

  static void check_option_ranges(const ManifestView& mv, const Options& opts, std::int64_t prompt_count) {
    const json& model = mv.m.value("model", json::object());
    auto check = [&](const std::optional<std::set<int>>& values, const char* name, std::int64_t count) {
      if (!values || count <= 0) return;
      for (int v : *values)
        if (v >= count)
          throw UsageError(fmt::format("html report: option {} has {}, but the run {} has {} 0-{}", name, v, mv.file.parent_path().string(), name, count - 1));
    };
    check(opts.layers, "layers", model.value("n_layers", std::int64_t(0)));
    check(opts.heads, "heads", model.value("n_heads", std::int64_t(0)));
    check(opts.prompts, "prompts", prompt_count);
  }

  // Subsamples steps (with a note) so that patterns + metadata fit max_mib, or refuses.
  static void fit_limit(const ManifestView& mv, const Options& opts, json& meta, Selection& sel) {
    const std::uint64_t limit = std::uint64_t(opts.max_mib * 1024 * 1024);
    const std::uint64_t meta_size = script_json(meta).size() + sel.patterns.size() * 200;  // + each pattern's entry
    std::uint64_t total = meta_size;
    for (const Pattern& p : sel.patterns) total += base64_size(p.bytes());
    if (total <= limit) return;
    const std::optional<std::set<int>> kept = meta_size < limit ? fit_steps(sel.patterns, limit - meta_size) : std::nullopt;
    const std::set<int> all = steps_of(sel.patterns);
    if (!kept || kept->size() == all.size())
      throw UsageError(fmt::format(
          "html report: {} would embed {:.1f} MiB of data, over the limit of {} MiB; restrict it with the layers, heads, "
          "prompts or steps options, or raise max_mib",
          mv.file.parent_path().string(), double(total) / (1024 * 1024), opts.max_mib));
    sel.patterns.erase(std::remove_if(sel.patterns.begin(), sel.patterns.end(), [&](const Pattern& p) { return !kept->count(p.step); }),
                       sel.patterns.end());
    sel.notes.push_back(fmt::format(
        "generation steps subsampled: showing {} of {} steps to keep the embedded data under {} MiB (choose steps with "
        "the steps option, or raise max_mib)", kept->size(), all.size(), opts.max_mib));
  }

  static void write_page(RunReader& reader, const fs::path& out, json& meta, const Selection& sel) {
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) throw Error(fmt::format("{}: cannot create the output directory: {}", out.string(), ec.message()));
    const fs::path file = out / "report.html", partial = out / "report.html.tmp";
    try {
      write_partial(reader, partial, meta, sel);
    } catch (...) {
      fs::remove(partial, ec);  // never leave half a report behind
      throw;
    }
    fs::rename(partial, file, ec);
    if (ec) throw Error(fmt::format("{}: cannot move the report into place: {}", file.string(), ec.message()));
  }

  static void write_partial(RunReader& reader, const fs::path& partial, json& meta, const Selection& sel) {
    std::ofstream html(partial, std::ios::binary | std::ios::trunc);
    if (!html) throw Error(fmt::format("{}: cannot write the report", partial.string()));
    const std::vector<std::string_view> pieces = template_pieces();
    const std::vector<RunIntervention>& interventions = reader.interventions();
    html << pieces[0] << kTemplate_style << pieces[1] << intervened_note(interventions) << pieces[2]
         << interventions_section(interventions) << pieces[3];

    // Patterns first into the file, so the notes about them are known when hl-meta is written last.
    html << "<script type=\"text/plain\" id=\"hl-patterns\">";
    std::size_t non_finite = 0;
    for (const Pattern& p : sel.patterns) {
      const at::Tensor t = reader.load(p.index);
      if (t.dim() != 4 || t.size(1) != p.captured_heads || t.size(2) != p.queries || t.size(3) != p.keys)
        throw Error(fmt::format("{}: capture {} does not have the shape the manifest lists", (reader.directory() / "manifest.json").string(), p.index));
      write_base64(html, quantise(t, p, &non_finite));
    }
    html << "</script>\n";
    json notes = sel.notes;
    if (non_finite) notes.push_back(fmt::format("{} attention weights were not finite (NaN or infinite) and are drawn as 0", non_finite));
    meta["notes"] = notes;
    html << "<script type=\"application/json\" id=\"hl-meta\">" << script_json(meta) << "</script>\n";
    html << pieces[4] << kTemplate_script << pieces[5];
    html.close();
    if (!html) throw Error(fmt::format("{}: writing the report failed", partial.string()));
  }
};

}  // namespace
}  // namespace hooklens

HOOKLENS_DEFINE_PLUGIN(hooklens::Renderer, hooklens::HtmlReport, "renderer", "html_report", "1.0",
                       "interactive HTML report: token strip, attention heatmaps per layer/head/step, analyzer tables")
