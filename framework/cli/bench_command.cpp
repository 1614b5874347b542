// `hooklens bench`: what capture costs. A 128-token forward pass and a 64-token greedy generation,
// each with no hooks, with every attention pattern captured to memory, and with every attention
// pattern captured to a run directory on disk; medians over repeats and ratios to "no hooks".
#include "cli.h"

#include <hooklens/error.h>
#include <hooklens/generate.h>
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
#include <iostream>
#include <random>

#include <unistd.h>

namespace hooklens::cli {
namespace {

namespace fs = std::filesystem;

struct BenchOptions {
  std::string model;
  int repeats = 5, threads = 0, forward_tokens = 128, new_tokens = 64, prompt_tokens = 16;
};

enum class Capture { none, memory, disk };
const char* capture_name(Capture c) { return c == Capture::none ? "no hooks" : c == Capture::memory ? "patterns -> memory" : "patterns -> disk"; }

struct Timing {
  double median_ms, min_ms;  // the whole run, including the sink's finish (last shard, manifest, fsync)
  double model_ms;           // median time until the model's work returned: what capture cost the model
  double captured_mib;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

class Bench {
 public:
  Bench(std::shared_ptr<Model> model, const PluginRegistry& registry, fs::path scratch)
      : model_(std::move(model)), registry_(registry), scratch_(std::move(scratch)) {}

  // Runs `work(hooks)` `repeats` times (after one warm-up) under the given capture.
  template <class Work>
  Timing measure(Capture capture, int repeats, Work work) {
    std::vector<double> ms, model_ms;
    double mib = 0;
    for (int r = -1; r < repeats; ++r) {
      HookSet hooks;
      std::vector<at::Tensor> kept;
      std::shared_ptr<CaptureSink> sink;
      std::size_t bytes = 0;
      if (capture == Capture::disk) {
        sink = registry_.create_sink("run_writer");
        sink->open({{"out", (scratch_ / "run").string()}, {"overwrite", true}});
      }
      if (capture != Capture::none)
        hooks.add({{"*hook_pattern"}}, [&](std::string_view name, const CaptureContext& ctx, at::Tensor& t) {
          bytes += t.numel() * t.element_size();
          if (sink) sink->capture(name, ctx, t);
          else kept.push_back(t);  // memory capture keeps a reference: adapters never reuse fired tensors
        });
      using clock = std::chrono::steady_clock;
      auto since = [](clock::time_point t) { return std::chrono::duration<double, std::milli>(clock::now() - t).count(); };
      const auto start = clock::now();
      work(hooks);
      const double model_elapsed = since(start);
      if (sink) sink->finish(nlohmann::json{{"generation", {{"mode", "bench"}}}});
      if (r >= 0) {
        ms.push_back(since(start));
        model_ms.push_back(model_elapsed);
      }
      mib = double(bytes) / (1 << 20);
    }
    return {median(ms), *std::min_element(ms.begin(), ms.end()), median(model_ms), mib};
  }

 private:
  std::shared_ptr<Model> model_;
  const PluginRegistry& registry_;
  fs::path scratch_;
};

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
  auto model = open_model(registry, model_dir);
  const ModelInfo& info = model->info();
  if (o.forward_tokens > info.n_ctx || o.prompt_tokens + o.new_tokens > info.n_ctx)
    throw UsageError(fmt::format("the model's context of {} tokens is too short for this bench", info.n_ctx));

  if (info.vocab_size == 0)  // e.g. TorchScript: known only after a forward
    model->forward(at::zeros({1, 1}, at::kLong), HookSet(), {}, nullptr);
  if (info.vocab_size <= 0) throw Error(fmt::format("{}: the model does not report its vocabulary size", info.path));

  std::mt19937_64 rng(1);
  std::vector<std::int64_t> ids(o.forward_tokens);
  for (auto& id : ids) id = std::int64_t(rng() % std::uint64_t(info.vocab_size));
  const at::Tensor forward_ids = at::tensor(ids, at::kLong).unsqueeze(0);
  const std::vector<std::int64_t> prompt(ids.begin(), ids.begin() + std::min(o.prompt_tokens, o.forward_tokens));
  SamplingOptions greedy;
  greedy.max_new_tokens = o.new_tokens;
  greedy.stop_at_eos = false;

  Bench bench(model, registry, scratch);
  std::cout << fmt::format("model: {} ({} layers, {} heads, d_model {}, vocab {}), {} threads, median of {} runs\n",
                           info.path, info.n_layers, info.n_heads, info.d_model, info.vocab_size, at::get_num_threads(),
                           o.repeats);
  std::cout << fmt::format("{:<46} {:>9} {:>9} {:>7} {:>9} {:>7} {:>8}\n", "case", "median ms", "min ms", "ratio",
                           "model ms", "ratio", "MiB");
  auto report = [&](const std::string& what, auto work) {
    double base = 0;
    for (Capture c : {Capture::none, Capture::memory, Capture::disk}) {
      const Timing t = bench.measure(c, o.repeats, work);
      if (c == Capture::none) base = t.median_ms;
      std::cout << fmt::format("{:<46} {:>9.1f} {:>9.1f} {:>7.3f} {:>9.1f} {:>7.3f} {:>8.2f}\n",
                               what + ", " + capture_name(c), t.median_ms, t.min_ms, t.median_ms / base, t.model_ms,
                               t.model_ms / base, t.captured_mib)
                << std::flush;
    }
  };
  report(fmt::format("forward {} tokens", o.forward_tokens),
         [&](const HookSet& hooks) { model->forward(forward_ids, hooks, {}, nullptr); });
  report(fmt::format("generate {} tokens (greedy)", o.new_tokens),
         [&](const HookSet& hooks) { generate_autoregressive(*model, prompt, greedy, hooks); });
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Measure capture overhead: forward and greedy generation with no hooks, patterns to memory, to disk");
  cmd->add_option("--model", o->model, "Model directory (default: a random GPT-Neo of TinyStories-33M's shape)");
  cmd->add_option("--repeats", o->repeats, "Timed runs per case (after one warm-up)")->capture_default_str()->check(CLI::Range(1, 1000));
  cmd->add_option("--tokens", o->forward_tokens, "Tokens in the forward pass")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--new-tokens", o->new_tokens, "Tokens to generate")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--threads", o->threads, "Compute threads (0 = one per core)")->capture_default_str();
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace hooklens::cli
