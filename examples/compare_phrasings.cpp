// compare_phrasings: what the phrasing-comparison script showed, for any model hooklens can open:
// does the model attend differently when the same content is phrased differently?
//
//   compare_phrasings [--model DIR] [--set simple|questions|sentiment|custom|all] [--pair "TEXT A" "TEXT B"]
//                     [--out DIR] [--top N]
//
// Built-in sets: simple (three statements), questions (the same statements asked as questions),
// sentiment (the same sentences with positive and with negative wording); custom is the --pair.
// "all" runs the three built-in sets, and custom too when --pair is given. For each set, one forward
// pass per phrasing with the compare_prompts and attention_stats analyzers listening live
// (hooklens::AnalyzerSet), and OUT/<set>/ then holds:
//   reports/compare_prompts.json, reports/attention_stats.json   the analyzers' reports
//   table.txt   the table printed: per layer the mean entropy of each phrasing (mean over heads of each
//               head's mean row entropy, nats), the heads whose entropy differs most between
//               phrasings, and, when the model has blocks.*.mlp.hook_post, the neurons whose mean
//               activation differs most.
// The default model is models/toy-neo (trained by `hooklens train`, in the repository).
// Exit status: 0 success, 1 error, 2 usage error.
#include <hooklens/analysis.h>
#include "example_main.h"

#include <hooklens/error.h>
#include <hooklens/json_read.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/run_format.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using hooklens::Error;
using hooklens::UsageError;
using nlohmann::json;

struct Options {
  fs::path model = "models/toy-neo", out = "runs/compare_phrasings";
  std::string set = "all";
  std::vector<std::string> pair;
  int top = 5;
};

struct PhrasingSet {
  std::string name;
  std::vector<std::string> texts;
};

const std::vector<PhrasingSet>& built_in_sets() {
  static const std::vector<PhrasingSet> sets = {
      {"simple", {"The cat sat on the mat.", "The dog chased the ball.", "The sun rises in the east."}},
      {"questions", {"Did the cat sit on the mat?", "Did the dog chase the ball?", "Does the sun rise in the east?"}},
      {"sentiment",
       {"The food was delicious and the staff were friendly.", "The food was disgusting and the staff were rude.",
        "I love this film; the story is wonderful.", "I hate this film; the story is terrible."}}};
  return sets;
}

std::vector<PhrasingSet> chosen_sets(const Options& o) {
  const bool custom = o.set == "custom" || (o.set == "all" && !o.pair.empty());
  if (o.set == "custom" && o.pair.empty()) throw UsageError("--set custom needs --pair \"TEXT A\" \"TEXT B\"");
  if (!o.pair.empty() && o.set != "custom" && o.set != "all")
    throw UsageError(fmt::format("--pair is for --set custom or all, not --set {}", o.set));
  std::vector<PhrasingSet> sets;
  for (const auto& s : built_in_sets())
    if (o.set == "all" || o.set == s.name) sets.push_back(s);
  if (custom) sets.push_back({"custom", o.pair});
  return sets;
}

// ---- running one set -----------------------------------------------------------------------------

json prompt_json(const std::string& text, const std::vector<std::int64_t>& ids, const hooklens::Tokenizer& tok) {
  hooklens::RunPrompt prompt{text, ids, {}, "prompt"};
  for (auto id : ids) prompt.tokens.push_back(tok.token_string(id));
  return hooklens::encode_prompt(prompt);
}

// One forward per phrasing with the analyzers listening; writes OUT/<set>/reports and returns the
// compare_prompts report.
json analyze_set(hooklens::Model& model, const PhrasingSet& set, const Options& o, const fs::path& dir) {
  const hooklens::Tokenizer& tok = *model.tokenizer();
  std::vector<std::vector<std::int64_t>> ids;
  json prompts = json::array();
  for (const auto& text : set.texts) {
    ids.push_back(tok.encode(text));
    if (ids.back().empty()) throw UsageError(fmt::format("set {}: the phrasing \"{}\" has no tokens", set.name, text));
    if (std::int64_t(ids.back().size()) > model.info().n_ctx)
      throw UsageError(fmt::format("set {}: \"{}\" is {} tokens, more than {}'s context of {}", set.name, text,
                                   ids.back().size(), model.info().path, model.info().n_ctx));
    prompts.push_back(prompt_json(text, ids.back(), tok));
  }
  hooklens::AnalyzerSet analyzers(hooklens::PluginRegistry(), {"compare_prompts", "attention_stats"},
                                  {fmt::format("compare_prompts.top={}", o.top), fmt::format("compare_prompts.k={}", o.top)});
  const json run = {{"model", model.info().to_json()}, {"prompts", prompts},
                    {"mode", hooklens::generation_mode_name(hooklens::GenerationMode::none)}};
  analyzers.begin(run);
  hooklens::HookSet hooks;
  analyzers.attach(hooks);
  for (std::size_t p = 0; p < ids.size(); ++p) {
    const at::Tensor input = at::from_blob(ids[p].data(), {1, std::int64_t(ids[p].size())}, at::kLong).clone();
    hooklens::CaptureContext ctx;
    ctx.prompt = int(p);
    model.forward(input, hooks, ctx, nullptr, hooklens::Logits::none);
  }
  json manifest = run;
  manifest["generation"] = hooklens::encode_generation(hooklens::RunGeneration());  // {"mode": "none"}
  json compare;
  for (const auto& written : analyzers.finish(manifest, dir)) {  // a failed analyzer's report holds "error"
    const fs::path& file = written.file;
    json report = hooklens::read_json_file(file);
    if (report.contains("error")) throw Error(fmt::format("{}: the analyzer failed: {}", file.string(),
                                                           hooklens::brief_json(report["error"], 200)));
    if (file.stem() == "compare_prompts") compare = std::move(report);
  }
  if (compare.is_null()) throw Error(fmt::format("{}: compare_prompts wrote no report", (dir / "reports").string()));
  return compare;
}

// ---- the table -----------------------------------------------------------------------------------

std::string number(const json& v) { return v.is_number() ? fmt::format("{:.4f}", v.get<double>()) : "-"; }

void layer_table(const json& report, std::size_t n, std::ostream& out) {
  out << "mean entropy per layer (nats; mean over heads of each head's mean row entropy)\n  layer";
  for (std::size_t p = 0; p < n; ++p) out << fmt::format("  {:>8}", fmt::format("P{}", p));
  out << "\n";
  std::vector<int> layers;
  for (const json& prompt : report["per_prompt"])
    for (const json& layer : prompt["layers"]) layers.push_back(layer["layer"].get<int>());
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  for (int l : layers) {
    out << fmt::format("  {:>5}", l);
    for (std::size_t p = 0; p < n; ++p) {
      json value;
      for (const json& prompt : report["per_prompt"])
        if (prompt["prompt"] == p)
          for (const json& layer : prompt["layers"])
            if (layer["layer"] == l) value = layer["head_mean"]["entropy"];
      out << fmt::format("  {:>8}", number(value));
    }
    out << "\n";
  }
}

void heads_table(const json& report, std::ostream& out) {
  out << "most different heads (entropy spread = max - min over phrasings)\n  layer  head    spread  entropy per phrasing\n";
  for (const json& h : report["most_different_heads"]) {
    std::string per;
    for (const json& e : h["entropy_per_prompt"]) per += " " + number(e);
    out << fmt::format("  {:>5}  {:>4}  {:>8} {}\n", h["layer"].get<int>(), h["head"].get<int>(),
                       number(h["entropy_spread"]), per);
  }
}

void neurons_table(const json& report, std::size_t top, std::ostream& out) {
  if (!report["neurons"].is_object()) {
    out << "neurons: " << report.value("neurons_note", json("none")).get<std::string>() << "\n";
    return;
  }
  std::vector<json> all;
  for (const json& layer : report["neurons"]["layers"])
    for (json n : layer["top"]) {
      n["layer"] = layer["layer"];
      all.push_back(std::move(n));
    }
  std::stable_sort(all.begin(), all.end(), [](const json& a, const json& b) {
    return a["difference"].is_number() && (!b["difference"].is_number() || a["difference"] > b["difference"]);
  });
  out << "top neuron differences (max - min over phrasings of the mean mlp.hook_post activation)\n"
         "  layer  neuron  difference  mean per phrasing\n";
  for (std::size_t i = 0; i < std::min(top, all.size()); ++i) {
    std::string per;
    for (const json& m : all[i]["means"]) per += " " + number(m);
    out << fmt::format("  {:>5}  {:>6}  {:>10} {}\n", all[i]["layer"].get<int>(), all[i]["neuron"].get<int>(),
                       number(all[i]["difference"]), per);
  }
}

std::string table(const PhrasingSet& set, const json& report, const Options& o) {
  std::ostringstream out;
  out << fmt::format("== set {}: {} phrasings\n", set.name, set.texts.size());
  for (std::size_t p = 0; p < set.texts.size(); ++p) out << fmt::format("  P{}: {}\n", p, set.texts[p]);
  layer_table(report, set.texts.size(), out);
  heads_table(report, out);
  neurons_table(report, std::size_t(o.top), out);
  return out.str();
}

void run(const Options& o) {
  const std::vector<PhrasingSet> sets = chosen_sets(o);
  if (!fs::exists(o.model))
    throw UsageError(fmt::format("--model {}: no such model (the default, models/toy-neo, is in the repository: run from its root)",
                                 o.model.string()));
  auto model = hooklens::open_model(hooklens::PluginRegistry(), o.model);
  if (!model->tokenizer()) throw UsageError(fmt::format("--model {}: the model has no tokenizer", o.model.string()));
  for (const auto& set : sets) {
    const fs::path dir = o.out / set.name;
    fs::create_directories(dir);
    const std::string text = table(set, analyze_set(*model, set, o, dir), o);
    std::ofstream file(dir / "table.txt", std::ios::binary);
    if (!(file << text)) throw Error(fmt::format("{}: cannot write it", (dir / "table.txt").string()));
    std::cout << text << fmt::format("reports: {}\n\n", (dir / "reports").string());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Compare the attention (and MLP neurons) of a model across phrasings of the same content, with the "
               "compare_prompts and attention_stats analyzers: per-layer entropy per phrasing, the most different "
               "heads and neurons. Writes OUT/<set>/reports/*.json and OUT/<set>/table.txt."};
  app.name("compare_phrasings");
  std::string model = o.model.string(), out = o.out.string();
  app.add_option("--model", model, "model directory or file")->capture_default_str();
  app.add_option("--set", o.set, "phrasing set")
      ->check(CLI::IsMember({"simple", "questions", "sentiment", "custom", "all"}))
      ->capture_default_str();
  app.add_option("--pair", o.pair, "two texts to compare (the custom set)")->expected(2);
  app.add_option("--out", out, "output directory")->capture_default_str();
  app.add_option("--top", o.top, "heads and neurons listed")->check(CLI::Range(1, 1000))->capture_default_str();
  app.footer("Exit status: 0 success, 1 error, 2 usage error.");
  return run_example(app, argc, argv, [&] {
    o.model = model;
    o.out = out;
    ::run(o);
  });
}
