#include <hooklens/analysis.h>
#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/renderer.h>
#include <hooklens/run.h>

#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>

#include <unistd.h>

namespace hooklens {

namespace fs = std::filesystem;

struct AnalyzerSet::Entry {
  std::string name;
  std::shared_ptr<Analyzer> analyzer;
  nlohmann::json options = nlohmann::json::object();
  HookFilter filter;
  std::string error;  // set once it failed: disabled from then on
};

AnalyzerSet::AnalyzerSet(const PluginRegistry& registry, const std::vector<std::string>& names,
                         const std::vector<std::string>& options) {
  std::map<std::string, Entry*> by_name;
  for (const std::string& name : names) {
    if (by_name.count(name)) continue;
    auto entry = std::make_unique<Entry>();
    entry->name = name;
    try {
      entry->analyzer = registry.create_analyzer(name);
    } catch (const Error& e) {
      throw UsageError(fmt::format("--analyze {}: {}", name, e.what()));
    }
    entry->filter.names = entry->analyzer->hooks();
    by_name[name] = entry.get();
    entries_.push_back(std::move(entry));
  }
  for (const std::string& option : options) {
    const auto dot = option.find('.'), eq = option.find('=');
    if (dot == std::string::npos || eq == std::string::npos || dot > eq || dot == 0 || eq == dot + 1)
      throw UsageError(fmt::format("--analyze-option '{}': expected NAME.KEY=VALUE", option));
    const std::string name = option.substr(0, dot), key = option.substr(dot + 1, eq - dot - 1);
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw UsageError(fmt::format("--analyze-option '{}': '{}' is not among the --analyze analyzers", option, name));
    it->second->options[key] = option.substr(eq + 1);
  }
}

AnalyzerSet::~AnalyzerSet() = default;

void AnalyzerSet::fail(Entry& entry, const std::string& what) noexcept {
  entry.error = what;
  std::cerr << fmt::format("hooklens: warning: analyzer {} failed and is disabled (the run goes on): {}\n",
                           entry.name, what);
}

std::vector<Analyzer::ExtraPrompt> AnalyzerSet::extra_prompts(const ModelInfo& model) const {
  std::vector<Analyzer::ExtraPrompt> extra;
  for (const auto& entry : entries_) {
    auto more = entry->analyzer->extra_prompts(model, entry->options);
    extra.insert(extra.end(), more.begin(), more.end());
  }
  return extra;
}

void AnalyzerSet::use_model(const Model& model) {
  for (auto& entry : entries_) entry->analyzer->use_model(model);
}

void AnalyzerSet::begin(const nlohmann::json& run) {
  for (auto& entry : entries_) {
    nlohmann::json mine = run;
    mine["options"] = entry->options;
    try {
      entry->analyzer->begin(mine);
    } catch (const UsageError& e) {
      throw UsageError(fmt::format("analyzer {}: {}", entry->name, e.what()));
    } catch (const std::exception& e) {
      fail(*entry, e.what());
    }
  }
}

void AnalyzerSet::attach(HookSet& hooks) {
  for (auto& entry : entries_) {
    Entry* e = entry.get();
    hooks.add(e->filter, [this, e](std::string_view name, const CaptureContext& ctx, at::Tensor& tensor) {
      if (!e->error.empty()) return;
      try {
        e->analyzer->observe(name, ctx, tensor.scalar_type() == at::kFloat ? tensor : tensor.to(at::kFloat));
      } catch (const std::exception& ex) {
        fail(*e, ex.what());
      }
    });
  }
}

void AnalyzerSet::observe(std::string_view hook, const CaptureContext& ctx, const at::Tensor& tensor) {
  at::Tensor as_float;  // converted once, for the first analyzer that wants it
  for (auto& entry : entries_) {
    if (!entry->error.empty() || !entry->filter.matches(hook, ctx)) continue;
    if (!as_float.defined()) as_float = tensor.scalar_type() == at::kFloat ? tensor : tensor.to(at::kFloat);
    try {
      entry->analyzer->observe(hook, ctx, as_float);
    } catch (const std::exception& e) {
      fail(*entry, e.what());
    }
  }
}

std::string AnalyzerSet::reader_of(std::string_view name) const {
  for (const auto& entry : entries_)
    if (entry->filter.matches_name(name)) return entry->name;
  return "";
}

void AnalyzerSet::require_mergeable() const {
  std::vector<std::string> cannot;
  for (const auto& entry : entries_)
    if (!entry->analyzer->merges_state()) cannot.push_back(entry->name);
  if (!cannot.empty())
    throw UsageError(fmt::format("--analyze {}: cannot merge its state across processes; run it on the finished run "
                                 "with `hooklens analyze RUN --analyze NAME`",
                                 fmt::join(cannot, ",")));
}

std::string AnalyzerSet::save_states() const {
  nlohmann::json states = nlohmann::json::object();
  for (const auto& entry : entries_) {
    std::string error = entry->error;
    if (error.empty()) {
      try {
        states[entry->name] = {{"state", entry->analyzer->save_state()}};
        continue;
      } catch (const std::exception& e) {
        error = e.what();
      }
    }
    states[entry->name] = {{"error", error}};
  }
  const std::vector<std::uint8_t> bytes = nlohmann::json::to_cbor(states);
  return std::string(bytes.begin(), bytes.end());
}

void AnalyzerSet::merge_states(const std::string& bytes, int rank) {
  nlohmann::json states;
  try {
    states = nlohmann::json::from_cbor(bytes);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("the analyzer states of rank {} are not valid CBOR: {}", rank, e.what()));
  }
  for (auto& entry : entries_) {
    if (!entry->error.empty()) continue;
    const auto it = states.is_object() ? states.find(entry->name) : states.end();
    if (it == states.end()) {
      fail(*entry, fmt::format("rank {} sent no state", rank));
    } else if (!it->is_object()) {
      fail(*entry, fmt::format("rank {} sent {} instead of its state", rank, brief_json(*it)));
    } else if (it->contains("error")) {
      const nlohmann::json& error = (*it)["error"];
      fail(*entry, fmt::format("on rank {}: {}", rank, error.is_string() ? error.get<std::string>() : brief_json(error)));
    } else {
      try {
        entry->analyzer->merge_state(it->value("state", nlohmann::json()));
      } catch (const std::exception& e) {
        fail(*entry, fmt::format("merging the state of rank {}: {}", rank, e.what()));
      }
    }
  }
}

namespace {

// Replaces non-finite numbers by null: reports are strict JSON.
void make_finite(nlohmann::json& j) {
  if (j.is_number_float() && !std::isfinite(j.get<double>())) j = nullptr;
  if (j.is_structured())
    for (auto& child : j) make_finite(child);
}

void write_report(const fs::path& file, const nlohmann::json& report) {
  fs::create_directories(file.parent_path());
  const fs::path tmp = fs::path(file) += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << report.dump(1) << "\n";
    if (!out.flush()) throw Error(fmt::format("{}: cannot write the report", tmp.string()));
  }
  fs::rename(tmp, file);
}

// A report's "headline": a list of strings (anything else is no headline: it is the analyzer's to get right).
std::vector<std::string> headline_of(const nlohmann::json& report) {
  std::vector<std::string> lines;
  const auto it = report.find("headline");
  if (it == report.end() || !it->is_array()) return lines;
  for (const auto& line : *it)
    if (line.is_string()) lines.push_back(line.get<std::string>());
  return lines;
}

}  // namespace

void print_reports(const std::vector<WrittenReport>& reports, std::ostream& out) {
  for (const auto& report : reports) {
    out << "report: " << report.file.string() << "\n";
    for (const auto& line : report.headline) out << "  " << line << "\n";
  }
}

std::vector<WrittenReport> AnalyzerSet::finish(const nlohmann::json& manifest, const fs::path& run_dir) {
  std::vector<WrittenReport> files;
  for (auto& entry : entries_) {
    nlohmann::json report;
    if (entry->error.empty()) {
      try {
        report = entry->analyzer->finish(manifest);
      } catch (const std::exception& e) {
        fail(*entry, e.what());
      }
    }
    if (!entry->error.empty()) report = {{"analyzer", entry->name}, {"error", entry->error}};
    if (!report.is_object()) report = {{"analyzer", entry->name}, {"report", report}};
    make_finite(report);
    const fs::path file = run_dir / "reports" / (entry->name + ".json");
    write_report(file, report);
    files.push_back({file, headline_of(report)});
  }
  return files;
}

std::vector<WrittenReport> analyze_run(const fs::path& run_dir, AnalyzerSet& analyzers, bool show_progress) {
  // Checked once here, against the model, prompts and generation: analyzers index with these fields.
  RunReader run(run_dir, /*allow_incomplete=*/false, RunCheck::consistent);
  const nlohmann::json& manifest = run.manifest();
  // Analyzers number heads by their index in a pattern: a run that kept some heads only would be misread.
  const nlohmann::json heads = manifest.contains("capture") ? manifest["capture"].value("heads", nlohmann::json::array())
                                                            : nlohmann::json::array();
  if (!heads.empty())
    throw UsageError(fmt::format("{}: the run kept heads {} only (--heads); analyzers need every head: capture again "
                                 "without --heads, or run them live with --analyze",
                                 run_dir.string(), heads.dump()));
  for (const char* section : {"model", "prompts"})
    if (!manifest.contains(section))
      throw Error(fmt::format("{}: the run manifest has no \"{}\"", (run_dir / "manifest.json").string(), section));
  nlohmann::json begin = {{"model", manifest.at("model")}, {"prompts", manifest.at("prompts")}};
  begin["mode"] = generation_mode_name(run.generation().mode);
  analyzers.begin(begin);
  const std::size_t n = run.capture_count();
  const bool tty = isatty(2);
  for (std::size_t i = 0; i < n; ++i) {
    const CaptureEntry& entry = run.entry(i);
    analyzers.observe(entry.hook, entry.context, run.load(i));
    if (show_progress && (tty || (i + 1) % std::max<std::size_t>(1, n / 10) == 0 || i + 1 == n))
      std::cerr << (tty ? "\r\033[K" : "") << fmt::format("analyze: capture {}/{}", i + 1, n)
                << (tty && i + 1 < n ? "" : "\n") << std::flush;
  }
  return analyzers.finish(manifest, run_dir);
}

std::shared_ptr<Renderer> renderer_for(const PluginRegistry& registry, const std::string& format) {
  std::vector<std::string> known;
  for (const auto& record : registry.plugins()) {
    if (record.kind != "renderer") continue;
    auto renderer = registry.create_renderer(record.name);
    const auto formats = renderer->formats();
    if (std::find(formats.begin(), formats.end(), format) != formats.end()) return renderer;
    known.insert(known.end(), formats.begin(), formats.end());
  }
  throw UsageError(fmt::format("format {}: no renderer plugin writes it (formats found: {})", format,
                               known.empty() ? std::string("none") : fmt::format("{}", fmt::join(known, ", "))));
}

fs::path default_render_dir(const fs::path& run_dir, const std::string& format) {
  return run_dir / (format == "html" ? "report" : "figures");
}

}  // namespace hooklens
