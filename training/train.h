// Training hooklens' toy models (`hooklens train`): a corpus from toy_corpus.h, a tokenizer from
// bpe_trainer.h, and a small GPT-Neo or LLaDA trained with libtorch's autograd and AdamW, written as
// an ordinary Hugging Face model directory. The model trained is the one the adapter makes of the
// directory (its config and tensor names, the framework's forward pass): the parameters are handed
// to the adapter through LoadOptions::weights, so no private model definition exists to drift.
// No torch header here: train.cpp is the one torch-heavy file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <string>
#include <vector>

namespace hooklens {
class PluginRegistry;
}

namespace hooklens::training {

enum class ToyArchitecture {
  gpt_neo,  // autoregressive, next-token loss; layers alternate global and local attention
  llada,    // bidirectional, LLaDA's masked-diffusion loss
};

struct ToyShape {
  int layers = 4, heads = 4, d_model = 128, d_mlp = 512;
  int context = 256;  // positions (GPT-Neo's learned table; LLaDA's max_sequence_length)
  int window = 64;    // GPT-Neo's local attention window (layers alternate local and global, local first)
};

struct TrainOptions {
  ToyArchitecture architecture = ToyArchitecture::gpt_neo;
  ToyShape shape;
  std::uint64_t seed = 1;  // corpus, initial weights and batches all follow from it
  // The corpus: stories from the grammar and documents with a repeated random segment.
  std::size_t stories = 6000, segment_documents = 3000;
  std::size_t merges = 600;  // BPE merges learned on the corpus
  int steps = 1000, batch = 16, sequence = 128;
  // Autoregressive models also see, every step, about this many tokens of random token ids in short
  // rows (16 to copy_length tokens), each row one segment repeated. Copying is the only way to predict them,
  // which makes previous-token and induction heads form that work on any tokens, as head_detectors
  // tests them. The rows are short because on long ones attention starts spread over every key, the
  // gradient towards the one that pays is diluted, and the heads took far longer to form (none in
  // 2000 steps of 128-token rows; train.cpp). 0 turns this off.
  int copy_tokens = 1024, copy_length = 32;
  double learning_rate = 3e-3, min_learning_rate = 3e-4;  // cosine decay to the minimum after warm-up
  int warmup_steps = 50;
  double weight_decay = 0.1;  // on matrices and embeddings, not on norms and biases
  double clip_norm = 1.0;
  int log_every = 50;  // progress line and held-out loss every this many steps
};

// The presets `hooklens train --preset` names: "toy-neo" and "toy-llada" (the committed models'
// settings). Throws UsageError naming them for any other name.
TrainOptions toy_preset(const std::string& name);
std::vector<std::string> toy_preset_names();

struct TrainResult {
  double first_loss = 0, final_loss = 0;  // training loss of the first and the last step
  double held_out_loss = 0;               // on held-out documents, the model reloaded from disk
  std::int64_t vocab_size = 0, parameters = 0, tokens_seen = 0;
};

// Trains and writes `out`: config.json, vocab.json, merges.txt, model.safetensors and
// training.json (the options and losses; no timings, so that a retraining is byte-identical).
// Progress lines go to `progress`. Deterministic for given options and libtorch thread count.
// Throws UsageError for options out of range, Error when `out` cannot be written.
TrainResult train_toy_model(const TrainOptions& options, const std::filesystem::path& out,
                            const PluginRegistry& plugins, std::ostream& progress);

}  // namespace hooklens::training
