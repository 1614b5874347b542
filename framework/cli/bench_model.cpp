// `hooklens bench-model`: a randomly initialised LLaDA-8B-shaped model written the way the real
// checkpoint ships (BF16 safetensors shards + model.safetensors.index.json, a layer's tensors may
// straddle two shards), with any number of layers. The large-model benchmark and the memory test
// run on it: with 32 layers it is the 16 GB of LLaDA-8B-Instruct / MMaDA-8B, with 2 layers 2.74 GiB.
#include "cli.h"

#include <hooklens/error.h>
#include <hooklens/text.h>
#include <hooklens/weights.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>

namespace hooklens::cli {

namespace fs = std::filesystem;

namespace {

// LLaDA-8B-Instruct's config.json (the published values), with n_layers as asked.
nlohmann::json llada_8b_config(int n_layers) {
  return {{"model_type", "llada"},
          {"architectures", {"LLaDAModelLM"}},
          {"activation_type", "silu"},
          {"alibi", false},
          {"attention_layer_norm", false},
          {"bias_for_layer_norm", false},
          {"block_type", "llama"},
          {"d_model", 4096},
          {"embedding_size", 126464},
          {"eos_token_id", 126081},
          {"include_bias", false},
          {"include_qkv_bias", false},
          {"input_emb_norm", false},
          {"layer_norm_type", "rms"},
          {"layer_norm_with_affine", true},
          {"mask_token_id", 126336},
          {"max_sequence_length", 4096},
          {"mlp_hidden_size", 12288},
          {"mlp_ratio", 4},
          {"n_heads", 32},
          {"n_kv_heads", 32},
          {"n_layers", n_layers},
          {"pad_token_id", 126081},
          {"rms_norm_eps", 1e-5},
          {"rope", true},
          {"rope_theta", 500000.0},
          {"scale_logits", false},
          {"vocab_size", 126464},
          {"weight_tying", false},
          {"torch_dtype", "bfloat16"},
          {"_comment", "random weights written by 'hooklens bench-model'"}};
}

// The tensors in state-dict order (embedding, blocks, final norm, LM head), all BF16.
std::vector<TensorLayout> llada_tensors(int n_layers) {
  const std::int64_t D = 4096, F = 12288, V = 126464;
  const std::string p = "model.transformer.";
  std::vector<TensorLayout> out{{p + "wte.weight", at::kBFloat16, {V, D}}};
  for (int l = 0; l < n_layers; ++l) {
    const std::string b = fmt::format("{}blocks.{}.", p, l);
    for (const auto& [name, shape] : std::vector<std::pair<const char*, std::vector<std::int64_t>>>{
             {"attn_out.weight", {D, D}}, {"ff_out.weight", {D, F}}, {"attn_norm.weight", {D}},
             {"ff_norm.weight", {D}},     {"q_proj.weight", {D, D}}, {"k_proj.weight", {D, D}},
             {"v_proj.weight", {D, D}},   {"ff_proj.weight", {F, D}}, {"up_proj.weight", {F, D}}})
      out.push_back({b + name, at::kBFloat16, shape});
  }
  out.push_back({p + "ln_f.weight", at::kBFloat16, {D}});
  out.push_back({p + "ff_out.weight", at::kBFloat16, {V, D}});
  return out;
}

std::uint64_t byte_size(const TensorLayout& t) {
  std::uint64_t n = c10::elementSize(t.type);
  for (auto d : t.shape) n *= std::uint64_t(d);
  return n;
}

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// BF16 bit patterns: norms are 1.0; matrices random with magnitudes in [2^-8, 2^-4) and random
// sign and mantissa (about the scale of trained weights), made straight as bits because float
// sampling would dominate writing 16 GB.
void fill_bf16(std::uint16_t* out, std::size_t n, bool vector, std::uint64_t seed) {
  if (vector) {
    std::fill(out, out + n, std::uint16_t(0x3F80));
    return;
  }
  std::uint64_t state = seed;
  for (std::size_t i = 0; i < n; i += 4) {
    std::uint64_t r = splitmix64(state);
    for (std::size_t j = i; j < std::min(n, i + 4); ++j, r >>= 16) {
      const auto bits = std::uint16_t(r);
      const std::uint16_t exponent = 0x77 + ((bits >> 7) & 3);
      out[j] = std::uint16_t((bits & 0x807F) | (exponent << 7));
    }
  }
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

void write_random_llada(const fs::path& dir, const RandomLladaShape& shape) {
  if (shape.n_layers < 1) throw UsageError("a model needs at least one layer");
  fs::create_directories(dir);
  const std::vector<TensorLayout> tensors = llada_tensors(shape.n_layers);

  // Shards as Hugging Face cuts them: tensors in order, a new shard when the next tensor would
  // push the current one past the limit (a tensor larger than the limit gets a shard of its own).
  std::vector<std::vector<std::size_t>> shards(1);
  std::uint64_t in_shard = 0, total = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const std::uint64_t bytes = byte_size(tensors[i]);
    if (!shards.back().empty() && in_shard + bytes > shape.shard_bytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(i);
    in_shard += bytes;
    total += bytes;
  }

  nlohmann::json weight_map = nlohmann::json::object();
  std::vector<std::uint16_t> buffer(std::size_t(1) << 23);  // 16 MiB of BF16 at a time
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    std::vector<TensorLayout> layout;
    for (std::size_t i : shards[s]) {
      layout.push_back(tensors[i]);
      weight_map[tensors[i].name] = name;
    }
    const fs::path file = dir / name;
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(file.c_str(), "wb"));
    if (!f) throw Error(fmt::format("{}: cannot open for writing", file.string()));
    const std::string preamble = safetensors_preamble(layout, {{"format", "pt"}});
    bool ok = std::fwrite(preamble.data(), 1, preamble.size(), f.get()) == preamble.size();
    for (std::size_t i : shards[s]) {
      const std::uint64_t n = byte_size(tensors[i]) / 2;
      const bool vector = tensors[i].shape.size() == 1;
      for (std::uint64_t done = 0, chunk = 0; done < n && ok; done += buffer.size(), ++chunk) {
        const std::size_t count = std::size_t(std::min<std::uint64_t>(buffer.size(), n - done));
        fill_bf16(buffer.data(), count, vector, shape.seed ^ (std::uint64_t(i) << 40) ^ chunk);
        ok = std::fwrite(buffer.data(), 2, count, f.get()) == count;
      }
    }
    if (!ok || std::fclose(f.release()) != 0) throw Error(fmt::format("{}: write failed (disk full?)", file.string()));
    std::cerr << fmt::format("bench-model: wrote {} ({}/{})\n", name, s + 1, shards.size()) << std::flush;
  }
  write_text_file(dir / "model.safetensors.index.json",
             nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2) + "\n");
  write_text_file(dir / "config.json", llada_8b_config(shape.n_layers).dump(2) + "\n");
}

void add_bench_model_command(CLI::App& app) {
  auto out = std::make_shared<std::string>();
  auto shape = std::make_shared<RandomLladaShape>();
  auto shard_mib = std::make_shared<std::uint64_t>(shape->shard_bytes >> 20);
  CLI::App* cmd = app.add_subcommand(
      "bench-model", "Write a random LLaDA-8B-shaped model (BF16 shards + index, as the real checkpoint) for benchmarks");
  cmd->add_option("--out", *out, "Directory to write")->required();
  cmd->add_option("--layers", shape->n_layers, "Layers (LLaDA-8B has 32: 16 GB; each layer is 0.4 GiB, plus 1.9 GiB of embedding and LM head)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--shard-mib", *shard_mib, "Largest shard before a new one starts")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--seed", shape->seed, "Random seed")->capture_default_str();
  cmd->callback([out, shape, shard_mib] {
    shape->shard_bytes = *shard_mib << 20;
    write_random_llada(*out, *shape);
    std::cout << fmt::format("wrote a random LLaDA-8B-shaped model with {} layers to {}\n", shape->n_layers, *out);
  });
}

}  // namespace hooklens::cli
