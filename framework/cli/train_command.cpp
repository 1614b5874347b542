// `hooklens train`: trains a toy model (training/train.h) and writes it as a model directory.
#include "cli.h"

#include <hooklens/error.h>
#include <hooklens/plugin.h>
#include <hooklens/runtime.h>

#include <train.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hooklens::cli {

namespace {

// Options a user may set on top of the preset; unset ones keep the preset's value.
struct TrainOverrides {
  std::string preset, out;
  int threads = 1;
  std::optional<std::uint64_t> seed;
  std::optional<int> copy_tokens, copy_length, steps, batch, sequence, layers, heads, d_model, d_mlp, context, window, warmup, log_every;
  std::optional<std::size_t> stories, segment_documents, merges;
  std::optional<double> learning_rate, min_learning_rate;
};

training::TrainOptions apply(const TrainOverrides& v) {
  training::TrainOptions o = training::toy_preset(v.preset);
  auto set = [](auto& target, const auto& value) {
    if (value) target = *value;
  };
  set(o.seed, v.seed);
  set(o.steps, v.steps);
  set(o.batch, v.batch);
  set(o.sequence, v.sequence);
  set(o.shape.layers, v.layers);
  set(o.shape.heads, v.heads);
  set(o.shape.d_model, v.d_model);
  set(o.shape.d_mlp, v.d_mlp);
  set(o.shape.context, v.context);
  set(o.shape.window, v.window);
  set(o.warmup_steps, v.warmup);
  set(o.log_every, v.log_every);
  set(o.stories, v.stories);
  set(o.segment_documents, v.segment_documents);
  set(o.merges, v.merges);
  set(o.learning_rate, v.learning_rate);
  set(o.min_learning_rate, v.min_learning_rate);
  set(o.copy_tokens, v.copy_tokens);
  set(o.copy_length, v.copy_length);
  return o;
}

// A setting's preset values for --help, read from the presets themselves so that the help cannot
// drift from them: "(preset: 4)" when the presets agree, else "(presets: toy-neo 64, toy-llada 128)".
template <class Setting>
std::string presets_of(Setting setting) {
  std::vector<std::string> values;
  for (const auto& name : training::toy_preset_names())
    values.push_back(fmt::format("{}", setting(training::toy_preset(name))));
  if (std::all_of(values.begin(), values.end(), [&](const std::string& v) { return v == values[0]; }))
    return fmt::format("(preset: {})", values[0]);
  std::vector<std::string> named;
  for (const auto& name : training::toy_preset_names())
    named.push_back(name + " " + values[named.size()]);
  return fmt::format("(presets: {})", fmt::join(named, ", "));
}

// The same for a GPT-Neo-only setting: toy-neo's value.
template <class Setting>
std::string neo_preset_of(Setting setting) {
  return fmt::format("(toy-neo: {})", setting(training::toy_preset("toy-neo")));
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto v = std::make_shared<TrainOverrides>();
  CLI::App* cmd = app.add_subcommand(
      "train",
      "Train a toy model from a corpus and tokenizer that hooklens writes itself, and save it as a Hugging Face "
      "model directory (GPT-Neo or LLaDA) that the adapters load");
  cmd->footer(
      "Examples:\n"
      "  hooklens train --preset toy-neo --out models/toy-neo --threads 1\n"
      "  hooklens train --preset toy-llada --out models/toy-llada --threads 1 --steps 500\n"
      "Training is deterministic for given options and --threads: at --threads 1 a retraining reproduces the "
      "weights bit for bit (scripts/train-toy-models.sh --check).");
  const auto presets = training::toy_preset_names();
  cmd->add_option("--preset", v->preset, "Starting settings: toy-neo (GPT-Neo) or toy-llada (LLaDA masked diffusion)")
      ->required()
      ->check(CLI::IsMember(presets));
  cmd->add_option("--out", v->out, "Model directory to write (created; existing files in it are replaced)")->required();
  cmd->add_option("--threads", v->threads, "Compute threads (0 = one per core); results depend on it")->capture_default_str();
  cmd->add_option("--seed", v->seed, "Seed of the corpus, the initial weights and the batches " + presets_of([](const training::TrainOptions& o) { return o.seed; }));
  cmd->add_option("--steps", v->steps, "Optimiser steps " + presets_of([](const training::TrainOptions& o) { return o.steps; }))->check(CLI::Range(1, 10000000));
  cmd->add_option("--batch", v->batch, "Text sequences per step " + presets_of([](const training::TrainOptions& o) { return o.batch; }))->check(CLI::Range(1, 65536));
  cmd->add_option("--sequence", v->sequence, "Tokens per sequence " + presets_of([](const training::TrainOptions& o) { return o.sequence; }))->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--layers", v->layers, "Layers (GPT-Neo: local and global alternate, local first) " + presets_of([](const training::TrainOptions& o) { return o.shape.layers; }))->check(CLI::Range(1, 64));
  cmd->add_option("--heads", v->heads, "Attention heads " + presets_of([](const training::TrainOptions& o) { return o.shape.heads; }))->check(CLI::Range(1, 64));
  cmd->add_option("--d-model", v->d_model, "Residual stream width " + presets_of([](const training::TrainOptions& o) { return o.shape.d_model; }))->check(CLI::Range(2, 8192));
  cmd->add_option("--d-mlp", v->d_mlp, "MLP width " + presets_of([](const training::TrainOptions& o) { return o.shape.d_mlp; }))->check(CLI::Range(1, 65536));
  cmd->add_option("--context", v->context, "Longest sequence the model takes " + presets_of([](const training::TrainOptions& o) { return o.shape.context; }))
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--window", v->window, "GPT-Neo's local attention window " + neo_preset_of([](const training::TrainOptions& o) { return o.shape.window; }))->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--stories", v->stories, "Stories in the corpus " + presets_of([](const training::TrainOptions& o) { return o.stories; }))->check(CLI::Range(0, 10000000));
  cmd->add_option("--segment-documents", v->segment_documents,
                  "Documents with a repeated random segment " + presets_of([](const training::TrainOptions& o) { return o.segment_documents; }))
      ->check(CLI::Range(0, 10000000));
  cmd->add_option("--merges", v->merges, "BPE merges of the tokenizer " + presets_of([](const training::TrainOptions& o) { return o.merges; }))->check(CLI::Range(0, 100000));
  cmd->add_option("--copy-tokens", v->copy_tokens,
                  "Tokens a step of short rows of repeated random token ids, 0 = none (GPT-Neo: what makes "
                  "induction heads form) " + neo_preset_of([](const training::TrainOptions& o) { return o.copy_tokens; }))
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--copy-length", v->copy_length, "Longest of those rows " + neo_preset_of([](const training::TrainOptions& o) { return o.copy_length; }))->check(CLI::Range(16, 1 << 20));
  cmd->add_option("--learning-rate", v->learning_rate, "Peak AdamW learning rate " + presets_of([](const training::TrainOptions& o) { return o.learning_rate; }))
      ->check(CLI::PositiveNumber);
  cmd->add_option("--min-learning-rate", v->min_learning_rate, "Learning rate after the cosine decay " + presets_of([](const training::TrainOptions& o) { return o.min_learning_rate; }))
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--warmup", v->warmup, "Warm-up steps " + presets_of([](const training::TrainOptions& o) { return o.warmup_steps; }))->check(CLI::Range(0, 10000000));
  cmd->add_option("--log-every", v->log_every, "Progress line every this many steps " + presets_of([](const training::TrainOptions& o) { return o.log_every; }))
      ->check(CLI::Range(1, 10000000));
  cmd->callback([v] {
    const training::TrainOptions options = apply(*v);
    init_runtime(v->threads);
    const PluginRegistry plugins;
    training::train_toy_model(options, v->out, plugins, std::cout);
  });
}

}  // namespace hooklens::cli
