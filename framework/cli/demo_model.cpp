// `hooklens demo-model`: a small deterministic GPT-Neo written as a Hugging Face directory, so the
// README's first command works on a fresh machine with no model download. Its weights are random
// (seeded), scaled so that attention is far from uniform; its tokenizer is byte-level (one token
// per byte). The bench uses the same writer at TinyStories-33M's shape.
#include "cli.h"

#include <hooklens/error.h>
#include <hooklens/text.h>
#include <hooklens/tokenizer.h>
#include <hooklens/weights.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <iostream>

namespace hooklens::cli {

namespace fs = std::filesystem;

void write_random_gpt_neo(const fs::path& dir, const RandomNeoShape& s) {
  if (s.d_model % s.n_heads) throw UsageError("d_model must be a multiple of the number of heads");
  fs::create_directories(dir);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(s.seed);
  const std::int64_t D = s.d_model, F = 4 * D;
  // Base std 0.02 (Hugging Face's init); q and k are scaled up so heads attend sharply, and the
  // write-back projections so that every layer visibly changes the residual stream.
  auto normal = [&](std::vector<std::int64_t> shape, double std) { return at::normal(0.0, std, shape, gen); };
  std::vector<std::pair<std::string, at::Tensor>> tensors{{"transformer.wte.weight", normal({s.vocab, D}, 0.04)},
                                                          {"transformer.wpe.weight", normal({s.n_ctx, D}, 0.04)}};
  nlohmann::json layers = nlohmann::json::array();
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = fmt::format("transformer.h.{}.", l);
    auto add = [&](const std::string& name, at::Tensor t) { tensors.emplace_back(p + name, std::move(t)); };
    add("ln_1.weight", at::ones({D}));
    add("ln_1.bias", at::zeros({D}));
    add("attn.attention.q_proj.weight", normal({D, D}, 0.16));
    add("attn.attention.k_proj.weight", normal({D, D}, 0.16));
    add("attn.attention.v_proj.weight", normal({D, D}, 0.06));
    add("attn.attention.out_proj.weight", normal({D, D}, 0.2));
    add("attn.attention.out_proj.bias", at::zeros({D}));
    add("ln_2.weight", at::ones({D}));
    add("ln_2.bias", at::zeros({D}));
    add("mlp.c_fc.weight", normal({F, D}, 0.06));
    add("mlp.c_fc.bias", at::zeros({F}));
    add("mlp.c_proj.weight", normal({D, F}, 0.2));
    add("mlp.c_proj.bias", at::zeros({D}));
    layers.push_back(l % 2 ? "local" : "global");
  }
  tensors.emplace_back("transformer.ln_f.weight", at::ones({D}));
  tensors.emplace_back("transformer.ln_f.bias", at::zeros({D}));
  write_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});

  const nlohmann::json config = {{"model_type", "gpt_neo"},
                                 {"architectures", {"GPTNeoForCausalLM"}},
                                 {"hidden_size", D},
                                 {"num_layers", s.n_layers},
                                 {"num_heads", s.n_heads},
                                 {"attention_layers", layers},
                                 {"window_size", s.window},
                                 {"max_position_embeddings", s.n_ctx},
                                 {"vocab_size", s.vocab},
                                 {"intermediate_size", nullptr},
                                 {"activation_function", "gelu_new"},
                                 {"layer_norm_epsilon", 1e-5},
                                 {"bos_token_id", s.vocab - 1},
                                 {"eos_token_id", s.vocab - 1},
                                 {"tie_word_embeddings", true},
                                 {"_comment", "random weights written by 'hooklens demo-model'"}};
  write_text_file(dir / "config.json", config.dump(2) + "\n");
  if (s.vocab == 257) {  // byte-level tokenizer: 256 byte tokens, no merges, then <|endoftext|>
    nlohmann::json vocab = nlohmann::json::object();
    for (int b = 0; b < 256; ++b) vocab[gpt2_byte_symbol(static_cast<unsigned char>(b))] = b;
    vocab["<|endoftext|>"] = 256;
    write_text_file(dir / "vocab.json", vocab.dump() + "\n");
    write_text_file(dir / "merges.txt", "#version: 0.2\n");
  }
}

void add_demo_model_command(CLI::App& app) {
  auto out = std::make_shared<std::string>("models/demo-neo");
  auto shape = std::make_shared<RandomNeoShape>();
  CLI::App* cmd = app.add_subcommand(
      "demo-model", "Write a small deterministic random GPT-Neo (byte-level tokenizer) as a Hugging Face directory");
  cmd->add_option("--out", *out, "Directory to write")->capture_default_str();
  cmd->add_option("--layers", shape->n_layers, "Layers (alternating global and local attention)")->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--heads", shape->n_heads, "Attention heads")->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--d-model", shape->d_model, "Residual stream width")->capture_default_str()->check(CLI::Range(1, 8192));
  cmd->add_option("--window", shape->window, "Local attention window")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--context", shape->n_ctx, "Longest sequence")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--vocab", shape->vocab, "Vocabulary size (the byte-level tokenizer is written only for 257)")
      ->capture_default_str()
      ->check(CLI::Range(std::int64_t(2), std::int64_t(1) << 24));
  cmd->add_option("--seed", shape->seed, "Random seed")->capture_default_str();
  cmd->callback([out, shape] {
    write_random_gpt_neo(*out, *shape);
    std::cout << fmt::format("wrote a random GPT-Neo ({} layers, {} heads, d_model {}, {}) to {}\n", shape->n_layers,
                             shape->n_heads, shape->d_model,
                             shape->vocab == 257 ? "byte-level tokenizer" : fmt::format("vocabulary {}, no tokenizer", shape->vocab),
                             *out);
  });
}

}  // namespace hooklens::cli
