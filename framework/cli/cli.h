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
void add_analyze_commands(CLI::App& app);  // analyze, render
void add_bench_command(CLI::App& app);   // bench
void add_demo_model_command(CLI::App& app);  // demo-model

// The shape of a randomly initialised GPT-Neo written as a Hugging Face directory (demo, bench).
struct RandomNeoShape {
  int d_model = 64, n_layers = 4, n_heads = 4, window = 16, n_ctx = 256;
  std::int64_t vocab = 257;  // 257 = one token per byte + <|endoftext|>: the byte-level tokenizer
  std::uint64_t seed = 20261125;
};
// Writes config.json and model.safetensors, plus a byte-level vocab.json/merges.txt when
// shape.vocab == 257.
void write_random_gpt_neo(const std::filesystem::path& dir, const RandomNeoShape& shape);

}  // namespace hooklens::cli
