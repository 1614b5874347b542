// `hooklens train`: trains a toy model (training/train.h) and writes it as a model directory.
#include "cli.h"

#include <hooklens/error.h>
#include <hooklens/plugin.h>
#include <hooklens/runtime.h>

#include <train.h>

#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <optional>

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
  cmd->add_option("--seed", v->seed, "Seed of the corpus, the initial weights and the batches (preset: 1)");
  cmd->add_option("--steps", v->steps, "Optimiser steps (presets: toy-neo 2500, toy-llada 2000)")->check(CLI::Range(1, 10000000));
  cmd->add_option("--batch", v->batch, "Text sequences per step (presets: toy-neo 8, toy-llada 16)")->check(CLI::Range(1, 65536));
  cmd->add_option("--sequence", v->sequence, "Tokens per sequence (preset: 128)")->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--layers", v->layers, "Layers (preset: 4; GPT-Neo alternates local and global, local first)")->check(CLI::Range(1, 64));
  cmd->add_option("--heads", v->heads, "Attention heads (preset: 4)")->check(CLI::Range(1, 64));
  cmd->add_option("--d-model", v->d_model, "Residual stream width (presets: toy-neo 64, toy-llada 128)")->check(CLI::Range(2, 8192));
  cmd->add_option("--d-mlp", v->d_mlp, "MLP width (presets: toy-neo 256, toy-llada 384)")->check(CLI::Range(1, 65536));
  cmd->add_option("--context", v->context, "Longest sequence the model takes (preset: 256 GPT-Neo, 128 LLaDA)")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--window", v->window, "GPT-Neo's local attention window (preset: 4)")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--stories", v->stories, "Stories in the corpus (preset: 6000)")->check(CLI::Range(0, 10000000));
  cmd->add_option("--segment-documents", v->segment_documents,
                  "Documents with a repeated random segment (preset: 3000)")
      ->check(CLI::Range(0, 10000000));
  cmd->add_option("--merges", v->merges, "BPE merges of the tokenizer (preset: 600)")->check(CLI::Range(0, 100000));
  cmd->add_option("--copy-tokens", v->copy_tokens,
                  "Tokens a step of short rows of repeated random token ids (GPT-Neo: what makes induction heads "
                  "form; preset: 2048, 0 = none)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--copy-length", v->copy_length, "Longest of those rows (preset: 64)")->check(CLI::Range(16, 1 << 20));
  cmd->add_option("--learning-rate", v->learning_rate, "Peak AdamW learning rate (preset: 3e-3)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--min-learning-rate", v->min_learning_rate, "Learning rate after the cosine decay (preset: 3e-4)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--warmup", v->warmup, "Warm-up steps (preset: 50)")->check(CLI::Range(0, 10000000));
  cmd->add_option("--log-every", v->log_every, "Progress line every this many steps (preset: 50)")
      ->check(CLI::Range(1, 10000000));
  cmd->callback([v] {
    const training::TrainOptions options = apply(*v);
    init_runtime(v->threads);
    const PluginRegistry plugins;
    training::train_toy_model(options, v->out, plugins, std::cout);
  });
}

}  // namespace hooklens::cli
