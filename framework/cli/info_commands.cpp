// `hooklens info` (a model's shape and hook points) and `hooklens plugins` (what was found).
#include "cli.h"

#include <hooklens/model.h>
#include <hooklens/plugin.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <map>

namespace hooklens::cli {
namespace {

struct InfoOptions {
  std::string model, adapter, tokenizer, spec;
  bool json = false;
};

void print_info(const Model& model) {
  const ModelInfo& i = model.info();
  std::vector<std::string> kinds;
  for (auto k : i.layer_attention) kinds.push_back(attention_kind_name(k));
  // Sizes a model cannot state (TorchScript: only what a forward reveals) are 0.
  const auto size = [](std::int64_t v) { return v > 0 ? std::to_string(v) : std::string("unknown"); };
  std::cout << fmt::format(
      "model:        {}\nadapter:      {}\narchitecture: {}\nlayers:       {}\nheads:        {} ({} kv), d_head {}\n"
      "d_model:      {}\nd_mlp:        {}\nvocabulary:   {}\ncontext:      {} tokens\nattention:    {}{}\n"
      "weights:      {}\ntokenizer:    {}\n",
      i.path, i.adapter, i.architecture, i.n_layers, size(i.n_heads), size(i.n_kv_heads), size(i.d_head),
      size(i.d_model), size(i.d_mlp), size(i.vocab_size), i.n_ctx, fmt::join(kinds, ", "), i.window_size ? fmt::format(" (window {})", i.window_size) : "",
      i.weight_dtype, model.tokenizer() ? "yes" : "none (use --prompt-ids or --tokenizer)");
  // Per-layer points are shown once as blocks.{L}.NAME.
  std::cout << "hook points:\n";
  std::map<std::string, bool> shown;
  for (const auto& p : model.hook_points()) {
    const std::string name = listed_name(p);
    if (shown[name]) continue;
    shown[name] = true;
    const std::string dims = p.dims.empty() ? "shape as computed" : fmt::format("{}", fmt::join(p.dims, ", "));
    std::cout << fmt::format("  {:<34} [{}]\n", name, dims);
  }
  if (i.n_layers > 0) std::cout << fmt::format("  ({{L}} = 0..{})\n", i.n_layers - 1);
}

}  // namespace

void add_info_commands(CLI::App& app) {
  auto o = std::make_shared<InfoOptions>();
  CLI::App* info = app.add_subcommand("info", "Show a model's architecture, sizes and hook points");
  info->add_option("--model", o->model, "Model directory (or file)")->required();
  info->add_option("--adapter", o->adapter, "Adapter plugin to use instead of the one chosen from config.json");
  info->add_option("--tokenizer", o->tokenizer, "Tokenizer: a directory with tokenizer.json or vocab.json + merges.txt, or a llama2.c tokenizer file");
  info->add_option("--spec", o->spec, "Architecture spec of a state dict (.pt/.pth, .safetensors, a weight index file or a directory): a JSON file or a shipped spec name such as raschka-gpt or nanogpt");
  info->add_flag("--json", o->json, "Print JSON: {\"model\": {...}, \"hook_points\": [...]}");
  info->callback([o] {
    PluginRegistry registry;
    LoadOptions load;
    load.tokenizer = o->tokenizer;
    load.spec = o->spec;
    auto model = open_model(registry, o->model, o->adapter, load);
    if (!o->json) return print_info(*model);
    nlohmann::json points = nlohmann::json::array();
    for (const auto& p : model->hook_points()) points.push_back({{"name", p.name}, {"dims", p.dims}, {"layer", p.layer}});
    std::cout << nlohmann::json{{"model", model->info().to_json()}, {"hook_points", points}}.dump(2) << "\n";
  });

  CLI::App* plugins = app.add_subcommand("plugins", "List the plugins found (HOOKLENS_PLUGIN_PATH, build and install trees)");
  plugins->callback([] {
    PluginRegistry registry;
    std::cout << fmt::format("{:<9} {:<18} {:<8} {}\n", "KIND", "NAME", "VERSION", "PATH");
    for (const auto& p : registry.plugins())
      std::cout << fmt::format("{:<9} {:<18} {:<8} {}\n", p.kind, p.name, p.version, p.path.string());
    for (const auto& problem : registry.problems()) std::cerr << "hooklens: warning: " << problem << "\n";
    std::cout << "searched: ";
    for (const auto& dir : PluginRegistry::default_search_path()) std::cout << dir.string() << " ";
    std::cout << "\n";
  });
}

}  // namespace hooklens::cli
