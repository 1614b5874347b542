// The training loop (the one file with torch's optimiser headers).
#include "train.h"

#include "bpe_trainer.h"
#include "toy_architecture.h"
#include "toy_corpus.h"

#include <hooklens/error.h>
#include <hooklens/hooks.h>
#include <hooklens/model.h>
#include <hooklens/safetensors.h>
#include <hooklens/text.h>
#include <hooklens/tokenizer.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/optim/adamw.h>
#include <torch/types.h>
// clip_grad.h uses torch::Tensor without including its header.
#include <torch/nn/utils/clip_grad.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ostream>

namespace hooklens::training {
namespace fs = std::filesystem;

namespace {

constexpr const char* kMaskSymbol = "<|mdm_mask|>";
constexpr int kHeldOutBatches = 8;

const char* architecture_name(ToyArchitecture a) { return a == ToyArchitecture::gpt_neo ? "gpt_neo" : "llada"; }

// Tokens a batch row holds: a sequence, plus its last target for next-token prediction.
std::int64_t window_length(const TrainOptions& o) {
  return o.sequence + (o.architecture == ToyArchitecture::gpt_neo ? 1 : 0);
}

void check_options(const TrainOptions& o) {
  const ToyShape& s = o.shape;
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw UsageError(what);
  };
  require(s.layers >= 1 && s.heads >= 1 && s.d_model >= 2 && s.d_mlp >= 1, "layers, heads, d_model and d_mlp must be positive");
  require(s.d_model % s.heads == 0, fmt::format("d_model {} is not a multiple of the {} heads", s.d_model, s.heads));
  require(o.architecture != ToyArchitecture::llada || (s.d_model / s.heads) % 2 == 0,
          "LLaDA's rotary positions need an even head size (d_model / heads)");
  require(s.window >= 1, "the local attention window must be positive");
  require(o.sequence >= 2 && o.sequence <= s.context,
          fmt::format("the training sequence ({}) must be at least 2 and fit the context ({})", o.sequence, s.context));
  require(o.steps >= 1 && o.batch >= 1 && o.log_every >= 1, "steps, batch and log interval must be positive");
  require(o.stories + o.segment_documents >= 1, "the corpus needs at least one document");
  require(o.learning_rate > 0 && o.min_learning_rate >= 0 && o.min_learning_rate <= o.learning_rate,
          "learning rates must satisfy 0 <= minimum <= learning rate, learning rate > 0");
  require(o.copy_tokens >= 0, "the copy tokens per step must not be negative");
  require(o.architecture != ToyArchitecture::gpt_neo || o.copy_tokens == 0 ||
              (o.copy_length >= 16 && o.copy_length + 1 <= s.context),
          fmt::format("copy rows (up to {} tokens) must be 16 tokens or longer and shorter than the context ({})",
                      o.copy_length, s.context));
  require(o.warmup_steps >= 0 && o.weight_decay >= 0 && o.clip_norm > 0, "warm-up, weight decay and clip norm out of range");
}

// The corpus as one token stream: each document's tokens, then end-of-text. Stories and segment
// documents are shuffled together (a seeded Fisher-Yates), so every part of the stream mixes both.
struct TokenStream {
  std::vector<std::int64_t> ids;
  std::vector<std::int64_t> document_starts;
};

std::vector<std::string> corpus_documents(const TrainOptions& o, std::uint64_t seed, double scale) {
  const auto count = [&](std::size_t n) { return std::max<std::size_t>(n ? 1 : 0, std::size_t(double(n) * scale)); };
  std::vector<std::string> docs = toy_stories(seed, count(o.stories));
  SegmentOptions segments;
  segments.min_length = 4;
  segments.max_length = 24;
  for (auto& d : repeated_segments(seed ^ 0x5e9e47ULL, count(o.segment_documents), segments)) docs.push_back(std::move(d));
  SplitMix64 rng(seed ^ 0x5f0ffe1ULL);
  for (std::size_t i = docs.size(); i > 1; --i) std::swap(docs[i - 1], docs[rng.below(i)]);
  return docs;
}

TokenStream tokenize(const Tokenizer& tokenizer, const std::vector<std::string>& docs, std::int64_t end_of_text) {
  TokenStream s;
  for (const auto& d : docs) {
    s.document_starts.push_back(std::int64_t(s.ids.size()));
    const auto ids = tokenizer.encode(d, /*add_special_tokens=*/false);
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    s.ids.push_back(end_of_text);
  }
  return s;
}

// `batch` windows of `length` tokens: half start at a document's beginning (so the model learns how
// texts open, as a prompt does), half anywhere.
at::Tensor sample_windows(const TokenStream& s, int batch, std::int64_t length, SplitMix64& rng) {
  const std::int64_t n = std::int64_t(s.ids.size());
  if (n < length) throw UsageError(fmt::format("the corpus has {} tokens, fewer than one sequence ({})", n, length));
  at::Tensor out = at::empty({batch, length}, at::kLong);
  auto* p = out.data_ptr<std::int64_t>();
  for (int b = 0; b < batch; ++b) {
    std::int64_t start = std::int64_t(rng.below(std::size_t(n - length + 1)));
    if (rng.below(2) == 0) {
      const std::int64_t doc = s.document_starts[rng.below(s.document_starts.size())];
      if (doc + length <= n) start = doc;
    }
    std::copy_n(s.ids.begin() + start, length, p + std::int64_t(b) * length);
  }
  return out;
}

// Rows of random token ids below `id_limit` (the ordinary tokens: the specials come last), about
// `tokens` in all: each step one row length from 16 to max_length (+1 for the target), each row a segment
// of 4 to length/2 tokens repeated to its end.
at::Tensor random_repeats(int tokens, int max_length, std::int64_t id_limit, SplitMix64& rng) {
  const std::int64_t length = 16 + std::int64_t(rng.below(std::size_t(max_length - 15)));
  const std::int64_t rows = std::max<std::int64_t>(1, tokens / length);
  at::Tensor out = at::empty({rows, length + 1}, at::kLong);
  auto* p = out.data_ptr<std::int64_t>();
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t segment = 4 + std::int64_t(rng.below(std::size_t(length / 2 - 3)));
    std::int64_t* row = p + r * (length + 1);
    for (std::int64_t i = 0; i < segment; ++i) row[i] = std::int64_t(rng.below(std::size_t(id_limit)));
    for (std::int64_t i = segment; i <= length; ++i) row[i] = row[i - segment];
  }
  return out;
}

// The loss of one batch of windows. Autoregressive: next-token cross-entropy. Masked diffusion (the
// LLaDA paper's pre-training loss): per sequence a ratio t ~ U(eps, 1], each token masked with
// probability t, cross-entropy on the masked tokens weighted 1/t, summed and divided by all tokens.
at::Tensor batch_loss(Model& model, ToyArchitecture architecture, const at::Tensor& windows, std::int64_t mask_id,
                      at::Generator& gen) {
  const HookSet no_hooks;
  if (architecture == ToyArchitecture::gpt_neo) {
    const std::int64_t T = windows.size(1) - 1;
    at::Tensor logits = model.forward(windows.narrow(1, 0, T), no_hooks, CaptureContext{}, nullptr, Logits::all);
    return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), windows.narrow(1, 1, T).reshape({-1}));
  }
  constexpr double eps = 1e-3;
  const std::int64_t B = windows.size(0), L = windows.size(1);
  at::Tensor t = (1 - eps) * at::rand({B}, gen) + eps;
  at::Tensor p_mask = t.unsqueeze(1).expand({B, L});
  at::Tensor masked = at::rand({B, L}, gen) < p_mask;
  at::Tensor noisy = at::where(masked, at::full({}, mask_id, at::kLong), windows);
  at::Tensor logits = model.forward(noisy, no_hooks, CaptureContext{}, nullptr, Logits::all);
  at::Tensor ce = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), windows.reshape({-1}), {},
                                         at::Reduction::None)
                      .view({B, L});
  return (ce * masked.to(at::kFloat) / p_mask).sum() / double(B * L);
}

// The mean loss over fixed held-out batches (their own seeds: the same batches at every call).
double held_out_loss(Model& model, const TrainOptions& o, const TokenStream& held_out, std::int64_t mask_id) {
  at::NoGradGuard no_grad;
  SplitMix64 rng(o.seed ^ 0xe7a1ULL);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed ^ 0xe7a1ULL);
  const std::int64_t length = window_length(o);
  double sum = 0;
  for (int i = 0; i < kHeldOutBatches; ++i)
    sum += batch_loss(model, o.architecture, sample_windows(held_out, o.batch, length, rng), mask_id, gen).item<double>();
  return sum / kHeldOutBatches;
}

double learning_rate_at(const TrainOptions& o, int step) {  // step counts from 0
  if (step < o.warmup_steps) return o.learning_rate * double(step + 1) / double(o.warmup_steps);
  const double progress = double(step - o.warmup_steps) / double(std::max(1, o.steps - o.warmup_steps));
  const double cosine = 0.5 * (1 + std::cos(M_PI * std::min(1.0, progress)));
  return o.min_learning_rate + (o.learning_rate - o.min_learning_rate) * cosine;
}

std::string clock_text(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

}  // namespace

std::vector<std::string> toy_preset_names() { return {"toy-neo", "toy-llada"}; }

TrainOptions toy_preset(const std::string& name) {
  TrainOptions o;
  if (name == "toy-neo") {
    // Narrow (d_model 64) with a 4-token local window: the previous-token and induction heads
    // formed within 500 steps this way, and not in 1250 steps at d_model 128 (training/README.md).
    o.shape.d_model = 64;
    o.shape.d_mlp = 256;
    o.shape.window = 4;
    o.steps = 2500;
    o.batch = 8;
    o.copy_tokens = 2048;
    o.copy_length = 64;
    return o;
  }
  if (name == "toy-llada") {
    o.architecture = ToyArchitecture::llada;
    o.steps = 2000;
    o.shape.d_mlp = 384;  // gated: three matrices, as LLaDA's MLP
    o.shape.context = 128;
    return o;
  }
  throw UsageError(fmt::format("unknown preset '{}' (known: toy-neo, toy-llada)", name));
}

TrainResult train_toy_model(const TrainOptions& o, const fs::path& out, const PluginRegistry& plugins,
                            std::ostream& progress) {
  check_options(o);
  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
  std::error_code ec;
  fs::create_directories(out, ec);
  if (!fs::is_directory(out)) throw Error(fmt::format("{}: cannot create the directory", out.string()));

  // The corpus and its tokenizer; held-out documents come from another seed.
  const std::vector<std::string> docs = corpus_documents(o, o.seed, 1.0);
  BpeOptions bpe;
  bpe.merges = o.merges;
  BpeVocabulary bpe_vocabulary = train_bpe(docs, bpe);
  ToyVocabulary vocabulary;
  vocabulary.end_of_text_id = bpe_vocabulary.end_of_text_id;
  if (o.architecture == ToyArchitecture::llada) {
    vocabulary.mask_id = std::int64_t(bpe_vocabulary.symbols.size());
    bpe_vocabulary.symbols.push_back(kMaskSymbol);
  }
  vocabulary.size = std::int64_t(bpe_vocabulary.symbols.size());
  write_gpt2_tokenizer(bpe_vocabulary, out);
  write_text_file(out / "config.json", toy_config(o.architecture, o.shape, vocabulary).dump(2) + "\n");
  const auto tokenizer = load_hf_tokenizer(out);  // the tokenizer users get, as the model directory has it
  const TokenStream train = tokenize(*tokenizer, docs, vocabulary.end_of_text_id);
  const TokenStream held_out =
      tokenize(*tokenizer, corpus_documents(o, o.seed + 1000003, 0.05), vocabulary.end_of_text_id);
  progress << fmt::format("corpus: {} documents, {} tokens (vocabulary {}, {} merges); held out: {} tokens\n",
                          docs.size(), train.ids.size(), vocabulary.size, bpe_vocabulary.merges.size(),
                          held_out.ids.size())
           << std::flush;

  // The parameters, handed to the adapter: the model trained is the one its directory loads as.
  auto named = initial_weights(o.architecture, o.shape, vocabulary, o.seed);
  auto weights = std::make_shared<TensorMap>();
  std::vector<at::Tensor> decayed, not_decayed, all;
  std::int64_t parameters = 0;
  for (auto& [name, tensor] : named) {
    tensor.set_requires_grad(true);
    (*weights)[name] = tensor;
    (tensor.dim() >= 2 ? decayed : not_decayed).push_back(tensor);
    all.push_back(tensor);
    parameters += tensor.numel();
  }
  LoadOptions training_load;
  training_load.weights = weights;
  training_load.resident_weights_bytes = 0;  // compute with the parameters themselves, no fused copies
  std::shared_ptr<Model> model = open_model(plugins, out, "", training_load);
  const std::int64_t mask_id = vocabulary.mask_id.value_or(-1);
  progress << fmt::format("model: {} ({} layers, {} heads, d_model {}, d_mlp {}), {} parameters\n",
                          architecture_name(o.architecture), o.shape.layers, o.shape.heads, o.shape.d_model,
                          o.shape.d_mlp, parameters)
           << std::flush;

  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decayed, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(o.learning_rate).betas({0.9, 0.95}).weight_decay(o.weight_decay)));
  groups.emplace_back(not_decayed, std::make_unique<torch::optim::AdamWOptions>(
                                       torch::optim::AdamWOptions(o.learning_rate).betas({0.9, 0.95}).weight_decay(0.0)));
  torch::optim::AdamW optimizer(std::move(groups), torch::optim::AdamWOptions(o.learning_rate));

  TrainResult result;
  result.vocab_size = vocabulary.size;
  result.parameters = parameters;
  SplitMix64 batches(o.seed ^ 0xba7c4ULL);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed ^ 0xba7c4ULL);
  double loss_sum = 0, copy_loss_sum = 0;  // text, and the random repeats (GPT-Neo)
  int loss_count = 0;
  for (int step = 0; step < o.steps; ++step) {
    const double lr = learning_rate_at(o, step);
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    std::int64_t length = window_length(o);
    // LLaDA trains 1 % of its sequences at a random length; a toy model prompted with a short text
    // plus its answer needs short sequences more often: every fourth batch.
    if (o.architecture == ToyArchitecture::llada && o.sequence > 8 && batches.below(4) == 0)
      length = 8 + std::int64_t(batches.below(std::size_t(o.sequence - 8)));
    const at::Tensor windows = sample_windows(train, o.batch, length, batches);
    optimizer.zero_grad();
    const at::Tensor loss = batch_loss(*model, o.architecture, windows, mask_id, gen);
    at::Tensor copy_loss;
    if (o.architecture == ToyArchitecture::gpt_neo && o.copy_tokens > 0) {
      const at::Tensor copies = random_repeats(o.copy_tokens, o.copy_length, vocabulary.end_of_text_id, batches);
      copy_loss = batch_loss(*model, o.architecture, copies, mask_id, gen);
      result.tokens_seen += copies.numel();
    }
    (copy_loss.defined() ? loss + copy_loss : loss).backward();
    if (step == 0)  // a tensor the forward pass does not use would silently stay at its initial values
      for (const auto& [name, tensor] : named)
        if (!tensor.grad().defined())
          throw Error(fmt::format("{}: the model computes nothing from parameter {}", out.string(), name));
    torch::nn::utils::clip_grad_norm_(all, o.clip_norm);
    optimizer.step();
    const double value = loss.item<double>();
    if (!std::isfinite(value))
      throw Error(fmt::format("training diverged at step {} (loss {}); try a lower --learning-rate", step + 1, value));
    if (step == 0) result.first_loss = value;
    result.final_loss = value;
    result.tokens_seen += windows.numel();
    loss_sum += value;
    if (copy_loss.defined()) copy_loss_sum += copy_loss.item<double>();
    ++loss_count;
    if ((step + 1) % o.log_every == 0 || step + 1 == o.steps) {
      const double seconds = elapsed();
      progress << fmt::format("step {}/{}  loss {:.4f}{}  held-out {:.4f}  lr {:.2e}  {:.0f} tokens/s  {} elapsed, {} left\n",
                              step + 1, o.steps, loss_sum / loss_count,
                              copy_loss.defined() ? fmt::format("  copy loss {:.4f}", copy_loss_sum / loss_count) : "",
                              held_out_loss(*model, o, held_out, mask_id), lr, double(result.tokens_seen) / seconds,
                              clock_text(seconds), clock_text(seconds / (step + 1) * (o.steps - step - 1)));
      progress.flush();
      loss_sum = copy_loss_sum = 0;
      loss_count = 0;
    }
  }

  std::vector<std::pair<std::string, at::Tensor>> trained;
  for (auto& [name, tensor] : named) trained.emplace_back(name, tensor.detach());
  write_safetensors(out / "model.safetensors", trained, {{"format", "pt"}});
  const double trained_loss = held_out_loss(*model, o, held_out, mask_id);
  model.reset();
  // The final evaluation reads the directory back as users will (memory-mapped, the adapter's
  // usual path): what was written must be the model that was trained.
  std::shared_ptr<Model> reloaded = open_model(plugins, out);
  result.held_out_loss = held_out_loss(*reloaded, o, held_out, mask_id);
  if (!(std::abs(result.held_out_loss - trained_loss) <= 1e-3 * std::max(1.0, trained_loss)))
    throw Error(fmt::format("{}: the written model's held-out loss {:.6f} differs from the trained model's {:.6f}",
                            out.string(), result.held_out_loss, trained_loss));

  const nlohmann::json record = {
      {"trained_by", "hooklens train"},
      {"architecture", architecture_name(o.architecture)},
      {"seed", o.seed},
      {"shape", {{"layers", o.shape.layers}, {"heads", o.shape.heads}, {"d_model", o.shape.d_model},
                 {"d_mlp", o.shape.d_mlp}, {"context", o.shape.context}, {"window", o.shape.window}}},
      {"threads", at::get_num_threads()},
      {"corpus", {{"stories", o.stories}, {"segment_documents", o.segment_documents}, {"tokens", train.ids.size()}}},
      {"merges", o.merges},
      {"steps", o.steps},
      {"batch", o.batch},
      {"sequence", o.sequence},
      {"copy_tokens", o.architecture == ToyArchitecture::gpt_neo ? o.copy_tokens : 0},
      {"copy_length", o.copy_length},
      {"learning_rate", o.learning_rate},
      {"min_learning_rate", o.min_learning_rate},
      {"warmup_steps", o.warmup_steps},
      {"weight_decay", o.weight_decay},
      {"clip_norm", o.clip_norm},
      {"parameters", parameters},
      {"first_loss", result.first_loss},
      {"final_loss", result.final_loss},
      {"held_out_loss", result.held_out_loss}};
  write_text_file(out / "training.json", record.dump(2) + "\n");
  progress << fmt::format("done: {} steps, {} tokens in {}; held-out loss {:.4f} (first training loss {:.4f}); wrote {}\n",
                          o.steps, result.tokens_seen, clock_text(elapsed()), result.held_out_loss, result.first_loss,
                          out.string());
  return result;
}

}  // namespace hooklens::training
