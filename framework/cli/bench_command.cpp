// `hooklens bench`: what capture costs. A 128-token forward pass and a 64-token greedy generation,
// each with no hooks, with every attention pattern captured to memory, and with every attention
// pattern captured to a run directory on disk; medians over repeats and ratios to "no hooks".
// A masked-diffusion model gets denoising steps instead, timed against their bare matrix products,
// with the peak resident memory against the weight files.
#include "bench_peer.h"
#include "cli.h"

#include <hooklens/error.h>
#include <hooklens/generate.h>
#include <hooklens/generation_mode.h>
#include <hooklens/hf_config.h>
#include <hooklens/hook_names.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/runtime.h>
#include <hooklens/sink.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>

#include <unistd.h>

namespace hooklens::cli {
namespace {

namespace fs = std::filesystem;

struct BenchOptions {
  std::string model;
  int repeats = 5, threads = 0, forward_tokens = 128, new_tokens = 64, sequences = 16;
  int prompt_tokens = 0;  // 0: 128 for generation, 32 for masked diffusion
  // Masked-diffusion models (every layer bidirectional): an LLaDA-8B case by default.
  int gen_length = 32, steps = 2, block_length = 32;
  std::uint64_t resident_weights_mib = LoadOptions{}.resident_weights_bytes >> 20;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// One measured case: `run` does the work once and returns the milliseconds until the model's work
// returned (the whole run's time, including the sink's finish, is measured around it).
struct Case {
  std::string name;
  std::function<double()> run;
  double tokens = 0;  // tokens produced (generation) or consumed (forward passes) per run
  std::vector<double> total_ms, model_ms;
};

// Runs every case `repeats` times after one warm-up round, interleaved (case 1, 2, 3, 1, 2, 3, ...)
// so that a shared machine's drift hits every case alike.
void measure_interleaved(std::vector<Case>& cases, int repeats) {
  for (int r = -1; r < repeats; ++r)
    for (Case& c : cases) {
      const auto start = Clock::now();
      const double model = c.run();
      const double total = ms_since(start);
      if (r < 0) continue;
      c.total_ms.push_back(total);
      c.model_ms.push_back(model);
    }
}

// Every attention pattern to a run directory, as `hooklens capture|generate` writes it.
class DiskCapture {
 public:
  DiskCapture(const PluginRegistry& registry, const fs::path& out) : sink_(registry.create_sink("run_writer")) {
    sink_->open({{"out", out.string()}, {"overwrite", true}});
    hooks_.add({{"*" + std::string(hook_names::pattern)}}, [this](std::string_view name, const CaptureContext& ctx, at::Tensor& t) {
      sink_->capture(name, ctx, t);
      bytes_ += t.nbytes();
    });
  }
  const HookSet& hooks() const { return hooks_; }
  void finish() { sink_->finish(nlohmann::json{{"generation", {{"mode", "bench"}}}}); }
  std::uint64_t bytes() const { return bytes_; }

 private:
  std::shared_ptr<CaptureSink> sink_;
  HookSet hooks_;
  std::uint64_t bytes_ = 0;
};

// Bytes of the weight files a model directory (or file) holds: what "1.3x the weights" refers to.
std::uint64_t weight_file_bytes(const fs::path& model) {
  std::error_code ec;
  if (fs::is_regular_file(model, ec)) return fs::file_size(model, ec);
  std::uint64_t total = 0;
  for (const auto& entry : fs::directory_iterator(model, ec)) {
    const std::string ext = entry.path().extension().string();
    if (entry.is_regular_file(ec) && (ext == ".safetensors" || ext == ".bin" || ext == ".pt" || ext == ".pth"))
      total += entry.file_size(ec);
  }
  return total;
}

// The process's peak resident memory so far (VmHWM), in bytes; 0 where /proc cannot tell.
std::uint64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

// What one denoising step costs against the matrix products it is made of: the step (with no
// hooks, and with every attention pattern captured to disk) next to the same products in bare
// libtorch on float32 weights already in memory (q, k, v, o, gate, up, down per layer, and the
// LM head), at the same sequence length. The difference is hooklens's own cost: weight conversion,
// attention, norms, hooks, capture, the sampler.
void run_diffusion_bench(const BenchOptions& o, const std::shared_ptr<Model>& model, const PluginRegistry& registry,
                         const fs::path& scratch, double load_seconds) {
  const ModelInfo& info = model->info();
  DiffusionOptions d;
  d.gen_length = o.gen_length;
  d.steps = o.steps;
  d.block_length = o.block_length;
  d.validate();
  std::mt19937_64 rng(1);
  const int prompt_tokens = o.prompt_tokens > 0 ? o.prompt_tokens : 32;
  std::vector<std::int64_t> prompt(static_cast<std::size_t>(prompt_tokens));
  for (auto& id : prompt) id = std::int64_t(rng() % std::uint64_t(info.vocab_size));
  if (info.mask_id)
    for (auto& id : prompt) id = id == *info.mask_id ? (id + 1) % info.vocab_size : id;
  const std::int64_t T = prompt_tokens + o.gen_length;
  const std::uint64_t weights = weight_file_bytes(info.path);
  std::cout << fmt::format(
      "model: {} ({} layers, {} heads, d_model {}, d_mlp {}, vocab {}, {} weights: {:.2f} GiB), {} threads\n"
      "masked diffusion: prompt {} + gen length {} = {} positions, {} steps, block length {}; loaded in {:.2f} s\n",
      info.path, info.n_layers, info.n_heads, info.d_model, info.d_mlp, info.vocab_size, info.weight_dtype,
      double(weights) / (1 << 30), at::get_num_threads(), prompt_tokens, o.gen_length, T, o.steps, o.block_length,
      load_seconds);

  using clock = std::chrono::steady_clock;
  auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  std::vector<double> plain_steps, capture_steps;
  double first_step = -1;  // the very first step pages the weights in: reported on its own
  for (int r = 0; r < o.repeats; ++r) {
    for (const bool capture : {false, true}) {  // interleaved, so drift on a shared machine hits both
      HookSet hooks;
      std::shared_ptr<CaptureSink> sink;
      if (capture) {
        sink = registry.create_sink("run_writer");
        sink->open({{"out", (scratch / "run").string()}, {"overwrite", true}});
        hooks.add({{"*" + std::string(hook_names::pattern)}}, [&](std::string_view name, const CaptureContext& ctx, at::Tensor& t) { sink->capture(name, ctx, t); });
      }
      auto last = clock::now();
      generate_masked_diffusion(*model, prompt, d, hooks, 0, [&](const DiffusionStep&) {
        const double s = seconds_since(last);
        if (first_step < 0) first_step = s;
        else (capture ? capture_steps : plain_steps).push_back(s);
        last = clock::now();
      });
      if (sink) sink->finish(nlohmann::json{{"generation", {{"mode", "bench"}}}});
    }
  }
  const std::uint64_t peak = peak_rss_bytes();

  // The same products on float32 weights in memory, one layer's set timed and counted n_layers times.
  const std::int64_t D = info.d_model, F = info.d_mlp, V = info.vocab_size, HQ = std::int64_t(info.n_heads) * info.d_head,
                     HKV = std::int64_t(info.n_kv_heads) * info.d_head;
  at::Tensor x = at::randn({T, D}), xf = at::randn({T, F}), xh = at::randn({T, HQ});
  std::vector<std::pair<at::Tensor, const at::Tensor*>> layer_products = {
      {at::randn({HQ, D}), &x}, {at::randn({HKV, D}), &x}, {at::randn({HKV, D}), &x}, {at::randn({D, HQ}), &xh},
      {at::randn({F, D}), &x},  {at::randn({F, D}), &x},   {at::randn({D, F}), &xf}};
  std::vector<double> gemm_times;
  for (int r = 0; r < std::max(3, o.repeats); ++r) {
    const auto start = clock::now();
    for (const auto& [w, input] : layer_products) at::linear(*input, w);
    gemm_times.push_back(seconds_since(start) * info.n_layers);
  }
  layer_products.clear();
  at::Tensor unembed = at::randn({V, D});
  std::vector<double> head_times;
  for (int r = 0; r < std::max(3, o.repeats); ++r) {
    const auto start = clock::now();
    at::linear(x, unembed);
    head_times.push_back(seconds_since(start));
  }
  const double gemm = median(gemm_times) + median(head_times);
  const double plain = median(plain_steps), captured = median(capture_steps);
  std::cout << fmt::format("{:<58} {:>9} {:>9} {:>8}\n", "per denoising step", "median s", "min s", "vs GEMMs");
  auto row = [&](const std::string& what, const std::vector<double>& v) {
    std::cout << fmt::format("{:<58} {:>9.3f} {:>9.3f} {:>8.3f}\n", what, median(v), *std::min_element(v.begin(), v.end()),
                             median(v) / gemm);
  };
  std::cout << fmt::format("{:<58} {:>9.3f} {:>9} {:>8}\n", "first step (weights paged in from disk or page cache)", first_step, "", "");
  row("no hooks", plain_steps);
  row("every attention pattern to disk", capture_steps);
  std::cout << fmt::format("{:<58} {:>9.3f} {:>9} {:>8.3f}\n", "bare libtorch: the step's matrix products, float32 weights", gemm, "", 1.0);
  std::cout << fmt::format("hooklens's own cost (conversion, attention, norms, hooks, sampler): {:+.0f} % without capture, "
                           "{:+.0f} % with\n",
                           100 * (plain / gemm - 1), 100 * (captured / gemm - 1));
  std::cout << fmt::format("peak resident memory during the steps: {:.2f} GiB = {:.2f}x the weight files\n",
                           double(peak) / (1 << 30), weights ? double(peak) / double(weights) : 0.0);
}

void run_bench(const BenchOptions& o) {
  init_runtime(o.threads);
  const fs::path scratch = fs::temp_directory_path() / fmt::format("hooklens-bench-{}", ::getpid());
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{scratch};
  std::string model_dir = o.model;
  if (model_dir.empty()) {
    RandomNeoShape shape;  // TinyStories-33M's shape
    shape.d_model = 768;
    shape.n_layers = 4;
    shape.n_heads = 16;
    shape.window = 256;
    shape.vocab = 50257;
    shape.n_ctx = 2048;
    model_dir = (scratch / "model").string();
    std::cerr << "bench: writing a random GPT-Neo of TinyStories-33M's shape to " << model_dir << "\n";
    write_random_gpt_neo(model_dir, shape);
  }
  PluginRegistry registry;
  LoadOptions load;
  load.resident_weights_bytes = o.resident_weights_mib << 20;
  const auto load_start = std::chrono::steady_clock::now();
  auto model = open_model(registry, model_dir, {}, load);
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  const ModelInfo& info = model->info();
  if (generation_mode_of(info) == GenerationMode::masked_diffusion) return run_diffusion_bench(o, model, registry, scratch, load_seconds);
  const int prompt_tokens = o.prompt_tokens > 0 ? o.prompt_tokens : 128;
  if (o.forward_tokens > info.n_ctx || prompt_tokens + o.new_tokens > info.n_ctx)
    throw UsageError(fmt::format("the model's context of {} tokens is too short for this bench", info.n_ctx));
  if (info.vocab_size == 0)  // e.g. TorchScript: known only after a forward
    model->forward(at::zeros({1, 1}, at::kLong), HookSet(), {}, nullptr);
  if (info.vocab_size <= 0) throw Error(fmt::format("{}: the model does not report its vocabulary size", info.path));

  std::mt19937_64 rng(1);
  auto random_ids = [&](int n) {
    std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
    for (auto& id : ids) id = std::int64_t(rng() % std::uint64_t(info.vocab_size));
    return ids;
  };
  const std::vector<std::int64_t> prompt = random_ids(prompt_tokens);
  std::vector<std::vector<std::int64_t>> sequences;
  for (int i = 0; i < o.sequences; ++i) sequences.push_back(random_ids(o.forward_tokens));
  SamplingOptions greedy;
  greedy.max_new_tokens = o.new_tokens;
  greedy.stop_at_eos = false;
  const auto as_row = [](const std::vector<std::int64_t>& ids) { return at::tensor(ids, at::kLong).unsqueeze(0); };

  // The peer: Hugging Face's computation for the same model (GPT-Neo only), see bench_peer.h.
  std::unique_ptr<PeerGptNeo> peer;
  try {
    peer = std::make_unique<PeerGptNeo>(info, model_dir, HfConfig(model_dir).number("layer_norm_epsilon", 1e-5));
  } catch (const Error& e) {
    std::cerr << "bench: no peer comparison: " << e.what() << "\n";
  }
  std::vector<std::int64_t> hooklens_ids, peer_ids;
  const double total_sequence_tokens = double(o.sequences) * o.forward_tokens;
  std::vector<Case> cases;
  const std::size_t gen_plain = cases.size();
  cases.push_back({fmt::format("generate {} from {}, no hooks", o.new_tokens, prompt_tokens), [&] {
                     const auto start = Clock::now();
                     hooklens_ids = generate_autoregressive(*model, prompt, greedy, HookSet()).new_ids;
                     return ms_since(start);
                   }, double(o.new_tokens)});
  const std::size_t gen_disk = cases.size();
  cases.push_back({fmt::format("generate {} from {}, patterns -> disk", o.new_tokens, prompt_tokens), [&] {
                     DiskCapture disk(registry, scratch / "run");
                     const auto start = Clock::now();
                     generate_autoregressive(*model, prompt, greedy, disk.hooks());
                     const double model_ms = ms_since(start);
                     disk.finish();
                     return model_ms;
                   }, double(o.new_tokens)});
  const std::size_t gen_peer = cases.size();
  if (peer)
    cases.push_back({fmt::format("generate {} from {}, peer (output_attentions)", o.new_tokens, prompt_tokens), [&] {
                       std::vector<at::Tensor> attentions;  // kept, as generate() returns them
                       const auto start = Clock::now();
                       peer_ids = peer->generate(prompt, o.new_tokens, attentions);
                       return ms_since(start);
                     }, double(o.new_tokens)});
  cases.push_back({fmt::format("forward {} x {}, logits, no hooks", o.sequences, o.forward_tokens), [&] {
                     const auto start = Clock::now();
                     for (const auto& seq : sequences) model->forward(as_row(seq), HookSet(), {}, nullptr, Logits::all);
                     return ms_since(start);
                   }, total_sequence_tokens});
  const std::size_t cap_disk = cases.size();
  cases.push_back({fmt::format("capture {} x {}, patterns -> disk", o.sequences, o.forward_tokens), [&] {
                     DiskCapture disk(registry, scratch / "run");
                     const auto start = Clock::now();
                     for (std::size_t i = 0; i < sequences.size(); ++i) {
                       CaptureContext ctx;
                       ctx.prompt = int(i);
                       model->forward(as_row(sequences[i]), disk.hooks(), ctx, nullptr, Logits::none);  // as `capture`
                     }
                     const double model_ms = ms_since(start);
                     disk.finish();
                     return model_ms;
                   }, total_sequence_tokens});
  const std::size_t cap_peer = cases.size();
  if (peer)
    cases.push_back({fmt::format("forward {} x {}, peer (output_attentions)", o.sequences, o.forward_tokens), [&] {
                       const auto start = Clock::now();
                       for (const auto& seq : sequences) {
                         std::vector<at::Tensor> attentions;
                         peer->forward(seq, attentions);
                       }
                       return ms_since(start);
                     }, total_sequence_tokens});

  std::cout << fmt::format("model: {} ({} layers, {} heads, d_model {}, vocab {}), {} threads, {} interleaved runs "
                           "after a warm-up\n",
                           info.path, info.n_layers, info.n_heads, info.d_model, info.vocab_size, at::get_num_threads(),
                           o.repeats);
  measure_interleaved(cases, o.repeats);
  std::cout << fmt::format("{:<52} {:>9} {:>9} {:>9} {:>10}\n", "case (whole run; model's part)", "median ms", "min ms",
                           "model ms", "tokens/s");
  for (const Case& c : cases)
    std::cout << fmt::format("{:<52} {:>9.1f} {:>9.1f} {:>9.1f} {:>10.1f}\n", c.name, median(c.total_ms),
                             *std::min_element(c.total_ms.begin(), c.total_ms.end()), median(c.model_ms),
                             c.tokens / median(c.total_ms) * 1000);
  const auto whole = [&](std::size_t i) { return median(cases[i].total_ms); };
  std::cout << fmt::format("capture overhead, generation with every pattern to disk vs no hooks (whole run): {:+.1f} %\n",
                           100 * (whole(gen_disk) / whole(gen_plain) - 1));
  if (peer) {
    std::cout << fmt::format("vs the peer: generation with every pattern to disk {:.2f}x its tokens/s, capture of every "
                             "pattern {:.2f}x; greedy tokens {}\n",
                             whole(gen_peer) / whole(gen_disk), whole(cap_peer) / whole(cap_disk),
                             peer_ids == hooklens_ids ? "identical" : "DIFFER");
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Measure capture overhead: forward and greedy generation with no hooks, patterns to memory, to disk; "
               "for a masked-diffusion model, denoising steps against their bare matrix products, and peak memory");
  cmd->add_option("--model", o->model, "Model directory (default: a random GPT-Neo of TinyStories-33M's shape)");
  cmd->add_option("--repeats", o->repeats, "Timed runs per case (after one warm-up)")->capture_default_str()->check(CLI::Range(1, 1000));
  cmd->add_option("--tokens", o->forward_tokens, "Tokens in each forward pass of the capture case")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--sequences", o->sequences, "Sequences in the capture case")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--new-tokens", o->new_tokens, "Tokens to generate")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "Random prompt tokens (default 128; 32 for masked diffusion)")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--threads", o->threads, "Compute threads (0 = one per core)")->capture_default_str();
  cmd->add_option("--resident-weights", o->resident_weights_mib, "MiB of float32 weights converted once and kept (see 'hooklens generate --help')")
      ->capture_default_str();
  const std::string diffusion = "Masked-diffusion models (e.g. 'hooklens bench-model' output)";
  cmd->add_option("--gen-length", o->gen_length, "Masked positions to generate")->capture_default_str()->group(diffusion)->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--steps", o->steps, "Denoising steps per run")->capture_default_str()->group(diffusion)->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--block-length", o->block_length, "Block length")->capture_default_str()->group(diffusion)->check(CLI::Range(1, 1 << 20));
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace hooklens::cli
