// The `hooklens` command-line front end: each file adds its subcommands to the app.
#pragma once
#include <CLI/CLI.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace hooklens::cli {

void add_info_commands(CLI::App& app);   // info, plugins
void add_run_commands(CLI::App& app);    // capture, generate
void add_analyze_commands(CLI::App& app);  // analyze, render, merge
void add_bench_command(CLI::App& app);   // bench
void add_demo_model_command(CLI::App& app);  // demo-model
void add_bench_model_command(CLI::App& app);  // bench-model
void add_train_command(CLI::App& app);  // train
void add_patch_sweep_command(CLI::App& app);  // patch-sweep
void add_steering_vector_command(CLI::App& app);  // steering-vector

// The shape of a randomly initialised GPT-Neo written as a Hugging Face directory (demo, bench).
struct RandomNeoShape {
  int d_model = 64, n_layers = 4, n_heads = 4, window = 16, n_ctx = 256;
  std::int64_t vocab = 257;  // 257 = one token per byte + <|endoftext|>: the byte-level tokenizer
  std::uint64_t seed = 20261125;
};
// Writes config.json and model.safetensors, plus a byte-level vocab.json/merges.txt when
// shape.vocab == 257.
void write_random_gpt_neo(const std::filesystem::path& dir, const RandomNeoShape& shape);

// A randomly initialised LLaDA-8B-shaped model (d_model 4096, 32 heads, MLP 12288, vocabulary
// 126464, BF16) with `n_layers` layers, sharded like the real checkpoint.
struct RandomLladaShape {
  int n_layers = 32;
  std::uint64_t shard_bytes = std::uint64_t(2900) << 20;  // 32 layers: 6 shards, as LLaDA-8B-Instruct ships
  std::uint64_t seed = 20261206;
};
// Writes config.json, the shards and model.safetensors.index.json; streams (memory stays small).
void write_random_llada(const std::filesystem::path& dir, const RandomLladaShape& shape);

}  // namespace hooklens::cli
