// `hooklens capture` (one forward pass per prompt) and `hooklens generate` (every generation step),
// both writing a run directory through the run_writer sink plugin.
#include "cli.h"

#include <hooklens/analysis.h>
#include <hooklens/capture_slice.h>
#include <hooklens/chat_template.h>
#include <hooklens/error.h>
#include <hooklens/generate.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/renderer.h>
#include <hooklens/runtime.h>
#include <hooklens/sink.h>

#include <ATen/ATen.h>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <set>
#include <unordered_map>

namespace hooklens::cli {
namespace {

namespace fs = std::filesystem;

struct RunOptions {
  std::string model, adapter, tokenizer, spec, out, dtype = "F32";
  std::vector<std::string> prompts, prompt_ids, hooks{"blocks.*.attn.hook_pattern"}, ablate;
  std::vector<std::string> analyze, analyze_options, render;
  std::string text_file;
  std::int64_t seq_len = 0;
  int max_sequences = 8;
  std::vector<int> layers, heads, capture_steps, capture_blocks;
  std::string query_range, key_range;
  int threads = 0;
  std::uint64_t resident_weights_mib = LoadOptions{}.resident_weights_bytes >> 20;
  bool overwrite = false, chat = false;
  int batch_size = 1;  // capture: prompts per forward pass
  std::size_t queue_mib = 256;
  SamplingOptions sampling;
  bool greedy = false, no_stop_at_eos = false;
  DiffusionOptions diffusion;
  std::string remasking = "low_confidence", confidence_dtype = "float32";
  std::int64_t mask_id = -1;
};

struct Prompt {
  std::string text;  // empty for --prompt-ids
  std::vector<std::int64_t> ids;
  std::string source = "prompt";  // or "text-file FILE sequence N (tokens A-B)", or an analyzer's extra prompt
};

// --text-file: consecutive non-overlapping --seq-len token sequences cut from the file's text.
std::vector<Prompt> text_file_prompts(const RunOptions& o, const Model& model) {
  if (o.seq_len <= 0) throw UsageError("--text-file needs --seq-len N (tokens per sequence)");
  if (!model.tokenizer())
    throw UsageError(fmt::format("{} has no tokenizer: --text-file needs one (--tokenizer DIR)", model.info().path));
  std::ifstream in(o.text_file, std::ios::binary);
  if (!in) throw UsageError(fmt::format("--text-file {}: cannot open it", o.text_file));
  std::stringstream buffer;
  buffer << in.rdbuf();
  // Enough text for the sequences asked for (a WikiText split is megabytes; tokenizing all of it is waste).
  const std::size_t bytes = std::size_t(o.seq_len) * std::size_t(o.max_sequences) * 16 + 4096;
  std::string text = buffer.str().substr(0, bytes);
  const auto ids = model.tokenizer()->encode(text);
  std::vector<Prompt> prompts;
  for (std::int64_t start = 0; start + o.seq_len <= std::int64_t(ids.size()) && int(prompts.size()) < o.max_sequences;
       start += o.seq_len) {
    Prompt p;
    p.ids.assign(ids.begin() + start, ids.begin() + start + o.seq_len);
    p.source = fmt::format("text-file {} sequence {} (tokens {}-{})", o.text_file, prompts.size(), start,
                           start + o.seq_len - 1);
    prompts.push_back(std::move(p));
  }
  if (prompts.empty())
    throw UsageError(fmt::format("--text-file {}: {} tokens, fewer than one --seq-len {} sequence", o.text_file,
                                 ids.size(), o.seq_len));
  return prompts;
}

std::vector<std::int64_t> parse_ids(const std::string& list) {
  std::vector<std::int64_t> ids;
  std::size_t pos = 0;
  while (pos <= list.size()) {
    const std::size_t comma = std::min(list.find(',', pos), list.size());
    const std::string item = list.substr(pos, comma - pos);
    std::size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(item, &used);
    } catch (const std::exception&) {
    }
    if (item.empty() || used != item.size() || id < 0)
      throw UsageError(fmt::format("--prompt-ids '{}': '{}' is not a token id", list, item));
    ids.push_back(id);
    pos = comma + 1;
  }
  return ids;
}

std::vector<Prompt> read_prompts(const RunOptions& o, const Model& model) {
  const ModelInfo& info = model.info();
  std::vector<Prompt> prompts;
  if (o.chat && o.prompts.empty()) throw UsageError("--chat applies to --prompt TEXT");
  for (const auto& text : o.prompts) {
    if (!model.tokenizer())
      throw UsageError(fmt::format("{} has no tokenizer: pass --prompt-ids, or --tokenizer DIR", info.path));
    if (!o.chat) {
      prompts.push_back({text, model.tokenizer()->encode(text)});
      continue;
    }
    // As apply_chat_template(tokenize=True): the template writes its own BOS, so the tokenizer's
    // post-processor adds none.
    const std::string chat = chat_prompt(*model.tokenizer(), text);
    prompts.push_back({chat, model.tokenizer()->encode(chat, false)});
  }
  for (const auto& list : o.prompt_ids) prompts.push_back({"", parse_ids(list)});
  if (!o.text_file.empty()) {
    auto more = text_file_prompts(o, model);
    prompts.insert(prompts.end(), more.begin(), more.end());
  }
  if (prompts.empty()) throw UsageError("give at least one --prompt TEXT, --prompt-ids 1,2,3 or --text-file FILE");
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    if (p.ids.empty()) throw UsageError(fmt::format("prompt {} has no tokens", i));
    if (std::int64_t(p.ids.size()) > info.n_ctx)
      throw UsageError(fmt::format("prompt {} has {} tokens, more than the model's context of {} tokens", i,
                                   p.ids.size(), info.n_ctx));
    for (auto id : p.ids)
      if (info.vocab_size > 0 && id >= info.vocab_size)  // 0: not known before a forward (TorchScript)
        throw UsageError(fmt::format("prompt {}: token id {} is outside the vocabulary of {}", i, id, info.vocab_size));
  }
  return prompts;
}

nlohmann::json prompt_json(const Prompt& p, const Model& model) {
  const Tokenizer* tok = model.tokenizer();
  nlohmann::json tokens = nlohmann::json::array();
  for (auto id : p.ids) tokens.push_back(tok ? tok->token_string(id) : std::to_string(id));
  return {{"text", tok && p.text.empty() ? tok->decode(p.ids) : p.text},
          {"ids", p.ids},
          {"tokens", tokens},
          {"source", p.source}};
}

// Every --layers entry must be a layer of the model, and every pattern must name at least one hook
// point of this model in those layers: a filter that can never fire is a mistake, not an empty run.
void check_hook_patterns(const std::vector<std::string>& patterns, const std::vector<int>& layers, const Model& model) {
  const int n_layers = model.info().n_layers;
  for (int layer : layers)
    if (layer < 0 || layer >= n_layers)
      throw UsageError(fmt::format("--layers {}: the model has layers 0-{}", layer, n_layers - 1));
  const auto points = model.hook_points();
  const auto selected = [&](const HookPointInfo& p) {
    return layers.empty() || std::find(layers.begin(), layers.end(), p.layer) != layers.end();
  };
  for (const auto& pattern : patterns) {
    const bool any = std::any_of(points.begin(), points.end(), [&](const HookPointInfo& p) {
      return selected(p) && hook_name_matches(pattern, p.name);
    });
    if (any) continue;
    // Show each per-layer name once, as blocks.{L}.name.
    std::vector<std::string> names;
    std::set<std::string> seen;
    for (const auto& p : points) {
      std::string name = p.name;
      if (p.layer >= 0) name.replace(name.find('.') + 1, std::to_string(p.layer).size(), "{L}");
      if (seen.insert(name).second) names.push_back(name);
    }
    throw UsageError(fmt::format("--hooks '{}' matches no hook point of this model{}; valid names: {}", pattern,
                                 layers.empty() ? "" : fmt::format(" in --layers {}", fmt::join(layers, ",")),
                                 fmt::join(names, ", ")));
  }
}

// --ablate L.H zero-ablates head H of layer L by replacing its slice of blocks.L.attn.hook_z.
// Zero-ablates heads: their hook_z slice, or for models without hook_z (TorchScript) their
// pattern, which gives the same z = pattern @ v = 0.
void add_ablations(HookSet& hooks, const std::vector<std::string>& specs, const Model& model) {
  const ModelInfo& info = model.info();
  std::set<std::string> points;
  for (const auto& p : model.hook_points()) points.insert(p.name);
  for (const auto& spec : specs) {
    int layer = -1, head = -1;
    char dot = 0, extra = 0;
    if (std::sscanf(spec.c_str(), "%d%c%d%c", &layer, &dot, &head, &extra) != 3 || dot != '.')
      throw UsageError(fmt::format("--ablate '{}': expected LAYER.HEAD, e.g. 1.3", spec));
    const bool heads_known = info.n_heads > 0;  // TorchScript: known after the first forward
    if (layer < 0 || layer >= info.n_layers || head < 0 || (heads_known && head >= info.n_heads))
      throw UsageError(fmt::format("--ablate '{}': the model has layers 0-{} and heads 0-{}", spec, info.n_layers - 1,
                                   heads_known ? fmt::format("{}", info.n_heads - 1) : std::string("?")));
    const std::string z = fmt::format("blocks.{}.attn.hook_z", layer);
    const std::string pattern = fmt::format("blocks.{}.attn.hook_pattern", layer);
    const bool by_z = points.count(z) > 0;
    if (!by_z && !points.count(pattern))
      throw UsageError(fmt::format("--ablate '{}': the model has neither {} nor {}", spec, z, pattern));
    const int head_dim = by_z ? 2 : 1;  // hook_z [batch, pos, head, d_head]; pattern [batch, head, query, key]
    hooks.add({{by_z ? z : pattern}}, [spec, head, head_dim](std::string_view, const CaptureContext&, at::Tensor& t) {
      if (t.dim() <= head_dim || head >= t.size(head_dim))
        throw UsageError(fmt::format("--ablate '{}': the model has {} heads", spec, t.dim() > head_dim ? t.size(head_dim) : 0));
      t = t.clone();
      t.select(head_dim, head).zero_();
    });
  }
}

// A rate for the timing line (0 when nothing was timed).
double per_second(double amount, double seconds) { return seconds > 0 ? amount / seconds : 0.0; }

std::string default_out(const std::string& command) {
  return fmt::format("runs/{}-{:%Y%m%d-%H%M%S}", command, fmt::localtime(std::time(nullptr)));
}

// Shows progress on stderr: rewritten in place on a terminal, every 10% otherwise.
class Progress {
 public:
  Progress(std::string what, int total) : what_(std::move(what)), total_(total), tty_(isatty(2)) {}
  void update(int done, const std::string& detail = {}) {
    const bool milestone = total_ < 10 || done == total_ || done % std::max(1, (total_ + 9) / 10) == 0;
    if (!tty_ && !milestone) return;
    std::cerr << (tty_ ? "\r\033[K" : "") << fmt::format("{} {}/{}{}", what_, done, total_, detail)
              << (tty_ && done < total_ ? "" : "\n") << std::flush;
  }

 private:
  std::string what_;
  int total_;
  bool tty_;
};

class RunSession {
 public:
  RunSession(const RunOptions& o, const std::string& command) : options_(o) {
    init_runtime(o.threads);
    LoadOptions load;
    load.tokenizer = o.tokenizer;
    load.spec = o.spec;
    load.resident_weights_bytes = o.resident_weights_mib << 20;
    model_ = open_model(registry_, o.model, o.adapter, load);
    load_seconds_ = seconds_since(started_);
    prompts_ = read_prompts(o, *model_);
    start_analyzers(command);
    for (const auto& format : o.render) renderers_.emplace_back(format, renderer_for(registry_, format));
    capture_ = !(o.hooks.size() == 1 && o.hooks[0] == "none");
    if (capture_) check_hook_patterns(o.hooks, o.layers, *model_);
    else if (!o.layers.empty() || !o.heads.empty() || !o.query_range.empty() || !o.key_range.empty() ||
             !o.capture_steps.empty() || !o.capture_blocks.empty())
      throw UsageError("--hooks none captures nothing: capture slicing options do not apply");
    if (o.dtype != "F32" && o.dtype != "F16") throw UsageError("--dtype must be F32 or F16");
    add_ablations(hooks_, o.ablate, *model_);
    slice_.heads = o.heads;
    for (int h : o.heads)
      if (h < 0 || h >= model_->info().n_heads)
        throw UsageError(fmt::format("--heads {}: the model has heads 0-{}", h, model_->info().n_heads - 1));
    if (!o.query_range.empty()) slice_.queries = CaptureSlice::parse_range(o.query_range);
    if (!o.key_range.empty()) slice_.keys = CaptureSlice::parse_range(o.key_range);
    out_ = o.out.empty() ? default_out(command) : o.out;
  }

  // --analyze: analyzers see every capture of their hook points, whatever --hooks stores. On
  // `capture` their extra prompts (e.g. head_detectors' repeated random tokens) join the run.
  void start_analyzers(const std::string& command) {
    if (options_.analyze.empty()) {
      if (!options_.analyze_options.empty()) throw UsageError("--analyze-option needs --analyze NAME");
      return;
    }
    analyzers_ = std::make_unique<AnalyzerSet>(registry_, options_.analyze, options_.analyze_options);
    if (command == "capture")
      for (auto& extra : analyzers_->extra_prompts(model_->info())) prompts_.push_back({"", extra.ids, extra.source});
    const ModelInfo& info = model_->info();
    const bool diffusion = std::all_of(info.layer_attention.begin(), info.layer_attention.end(),
                                       [](AttentionKind k) { return k == AttentionKind::bidirectional; });
    nlohmann::json run = {{"model", info.to_json()},
                          {"prompts", prompts_json()},
                          {"mode", command == "capture" ? "none" : diffusion ? "masked_diffusion" : "autoregressive"}};
    analyzers_->begin(run);
  }

  nlohmann::json prompts_json() const {
    nlohmann::json prompts = nlohmann::json::array();
    for (const auto& p : prompts_) prompts.push_back(prompt_json(p, *model_));
    return prompts;
  }

  // Opens the sink and hooks it up: from here on, every failure must abort the sink.
  void open_sink() {
    sink_ = registry_.create_sink("run_writer");
    sink_->open({{"out", out_}, {"dtype", options_.dtype}, {"overwrite", options_.overwrite},
                 {"queue_bytes", options_.queue_mib << 20}});
    if (analyzers_) analyzers_->attach(hooks_);  // after the ablations: they see what the model computes
    if (!capture_) return;
    HookFilter filter;
    filter.names = options_.hooks;
    filter.layers = options_.layers;
    filter.steps = options_.capture_steps;
    filter.blocks = options_.capture_blocks;
    if (slice_.empty()) {
      hooks_.add(filter, [this](std::string_view name, const CaptureContext& ctx, at::Tensor& t) {
        sink_->capture(name, ctx, t);
        ++captures_;
        captured_bytes_ += t.nbytes();
      });
      return;
    }
    for (auto& point : model_->hook_points()) points_.emplace(point.name, std::move(point));
    hooks_.add(filter, [this](std::string_view name, const CaptureContext& ctx, at::Tensor& t) {
      auto sliced = slice_capture(points_.at(std::string(name)), t, ctx, slice_);
      if (!sliced) return;  // nothing of this event lies in the slice
      sink_->capture(name, sliced->second, sliced->first);
      ++captures_;
      captured_bytes_ += sliced->first.nbytes();
    });
  }

  // What was asked to be captured, for the manifest.
  nlohmann::json capture_json() const {
    auto range = [](const std::string& r) { return r.empty() ? nlohmann::json() : nlohmann::json(r); };
    return {{"hooks", options_.hooks},         {"layers", options_.layers},
            {"heads", options_.heads},         {"query_range", range(options_.query_range)},
            {"key_range", range(options_.key_range)}, {"steps", options_.capture_steps},
            {"blocks", options_.capture_blocks}, {"dtype", options_.dtype}};
  }

  template <class Work>
  void run(Work work) {
    const auto work_started = clock::now();
    double work_seconds = 0;
    try {
      nlohmann::json manifest = work();
      work_seconds = seconds_since(work_started);
      manifest["model"] = model_->info().to_json();
      manifest["prompts"] = prompts_json();
      manifest["hooks"] = options_.hooks;
      manifest["analyzers"] = options_.analyze;
      manifest["capture"] = capture_json();
      manifest["ablations"] = options_.ablate;
      sink_->finish(manifest);
      manifest_ = std::move(manifest);
    } catch (const std::exception& e) {
      sink_->abort(e.what());
      throw;
    }
    const double finish_seconds = seconds_since(work_started) - work_seconds;
    std::cout << fmt::format("run directory: {}\n  {} captures of [{}] from {} prompt(s); manifest {}\n",
                             sink_->location(), captures_, fmt::join(options_.hooks, ", "), prompts_.size(),
                             (fs::path(sink_->location()) / "manifest.json").string());
    // What the run cost, as llama.cpp prints its timings: on stderr, so stdout stays the results.
    const double mib = double(captured_bytes_) / (1 << 20);
    std::cerr << fmt::format("timing: load {:.2f} s; {}; captured {:.2f} MiB ({:.1f} MiB/s of model time); "
                             "finishing the run directory {:.2f} s; total {:.2f} s\n",
                             load_seconds_, work_timing_, mib, per_second(mib, work_seconds),
                             finish_seconds, seconds_since(started_));
    if (analyzers_)  // the run is complete; a report that cannot be written fails the command only
      for (const auto& file : analyzers_->finish(manifest_, sink_->location()))
        std::cout << "report: " << file.string() << "\n";
    for (const auto& [format, renderer] : renderers_) {
      const fs::path out = default_render_dir(sink_->location(), format);
      const auto files = renderer->render(sink_->location(), format, out, nlohmann::json::object());
      std::cout << fmt::format("{}: {} file(s) in {}\n", format, files.value("files", nlohmann::json::array()).size(),
                               out.string());
    }
  }

  Model& model() { return *model_; }
  const std::vector<Prompt>& prompts() const { return prompts_; }
  const HookSet& hooks() const { return hooks_; }
  // The model's part of the timing line, e.g. "prefill 12 tokens 45 ms (267 tok/s); decode ...".
  void set_work_timing(std::string text) { work_timing_ = std::move(text); }

 private:
  using clock = std::chrono::steady_clock;
  static double seconds_since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }

  clock::time_point started_ = clock::now();
  double load_seconds_ = 0;
  std::string work_timing_ = "model";
  std::uint64_t captured_bytes_ = 0;
  bool capture_ = true;  // false with --hooks none
  RunOptions options_;
  PluginRegistry registry_;
  std::shared_ptr<Model> model_;
  std::vector<Prompt> prompts_;
  HookSet hooks_;
  std::shared_ptr<CaptureSink> sink_;
  std::unique_ptr<AnalyzerSet> analyzers_;
  std::vector<std::pair<std::string, std::shared_ptr<Renderer>>> renderers_;  // --render, after the run
  nlohmann::json manifest_;
  CaptureSlice slice_;
  std::unordered_map<std::string, HookPointInfo> points_;  // for slicing: each point's dims
  std::string out_;
  std::size_t captures_ = 0;
};

// --capture-steps / --capture-blocks that no event of this run can match are mistakes.
void check_capture_schedule(const RunOptions& o, int steps, int blocks) {
  for (int s : o.capture_steps)
    if (s < 0 || s >= steps)
      throw UsageError(fmt::format("--capture-steps {}: this run has steps 0-{}", s, steps - 1));
  for (int b : o.capture_blocks)
    if (b < 0 || b >= blocks)
      throw UsageError(blocks ? fmt::format("--capture-blocks {}: this run has blocks 0-{}", b, blocks - 1)
                              : std::string("--capture-blocks is for masked-diffusion runs"));
}

void generate_tokens(RunSession& session, const RunOptions& o) {
  const SamplingOptions& s = o.sampling;
  s.validate();
  const auto& prompt = session.prompts().at(0).ids;
  const ModelInfo& info = session.model().info();
  if (std::int64_t(prompt.size()) + s.max_new_tokens > info.n_ctx)
    throw UsageError(fmt::format("prompt of {} tokens + --max-new-tokens {} exceeds the model's context of {} tokens",
                                 prompt.size(), s.max_new_tokens, info.n_ctx));
  check_capture_schedule(o, s.max_new_tokens, 0);
  session.open_sink();
  session.run([&] {
    Progress progress("generate: token", s.max_new_tokens);
    const Tokenizer* tok = session.model().tokenizer();
    nlohmann::json steps = nlohmann::json::array();
    using clock = std::chrono::steady_clock;
    const auto started = clock::now();
    double prefill_seconds = 0;
    auto result = generate_autoregressive(session.model(), prompt, s, session.hooks(), 0, [&](int step, std::int64_t token) {
      if (step == 0) prefill_seconds = std::chrono::duration<double>(clock::now() - started).count();
      steps.push_back({{"step", step},
                       {"phase", step == 0 ? "prefill" : "decode"},
                       {"query_offset", step == 0 ? 0 : std::int64_t(prompt.size()) + step - 1},
                       {"token", token},
                       {"token_string", tok ? tok->token_string(token) : std::to_string(token)}});
      release_free_memory();
      progress.update(step + 1);
    });
    const double decode_seconds = std::chrono::duration<double>(clock::now() - started).count() - prefill_seconds;
    const std::size_t decoded = result.new_ids.size() - 1;  // tokens chosen after the prefill's
    session.set_work_timing(fmt::format("prefill {} tokens {:.0f} ms ({:.0f} tok/s); decode {} tokens {:.2f} s ({:.1f} tok/s)",
                                        prompt.size(), 1000 * prefill_seconds, per_second(prompt.size(), prefill_seconds),
                                        decoded, decode_seconds, per_second(decoded, decode_seconds)));
    nlohmann::json g = {{"mode", "autoregressive"},
                        {"max_new_tokens", s.max_new_tokens},
                        {"greedy", s.greedy},
                        {"temperature", s.temperature},
                        {"top_k", s.top_k},
                        {"top_p", s.top_p},
                        {"seed", s.seed},
                        {"stop_at_eos", s.stop_at_eos},
                        {"output_ids", result.output_ids},
                        {"new_ids", result.new_ids},
                        {"stopped_on_eos", result.stopped_on_eos},
                        {"steps", steps}};
    if (tok) {
      g["text"] = tok->decode(result.new_ids);
      std::cout << "generated: " << tok->decode(result.new_ids) << "\n";
    }
    return nlohmann::json{{"generation", g}};
  });
}

// The display string of every id a diffusion run's sequences hold (the prompt and each step's ids),
// keyed by the id as text, so readers of the manifest show tokens without a tokenizer. The mask has
// no entry (readers show it as a mask), nor has an id past the tokenizer's vocabulary.
nlohmann::json diffusion_token_strings(const Tokenizer& tok, const std::vector<std::int64_t>& prompt,
                                       const nlohmann::json& steps, std::int64_t mask_id) {
  std::set<std::int64_t> ids(prompt.begin(), prompt.end());
  for (const auto& step : steps)
    for (const auto& id : step.at("ids")) ids.insert(id.get<std::int64_t>());
  nlohmann::json out = nlohmann::json::object();
  for (auto id : ids)
    if (id != mask_id && id >= 0 && id < tok.vocab_size()) out[std::to_string(id)] = tok.token_string(id);
  return out;
}

void generate_diffusion(RunSession& session, RunOptions& o) {
  DiffusionOptions& d = o.diffusion;
  d.seed = o.sampling.seed;
  const auto remasking = parse_remasking(o.remasking);
  if (!remasking) throw UsageError(fmt::format("--remasking must be low_confidence or random, not '{}'", o.remasking));
  d.remasking = *remasking;
  if (o.confidence_dtype != "float32" && o.confidence_dtype != "float64")
    throw UsageError(fmt::format("--confidence-dtype must be float32 or float64, not '{}'", o.confidence_dtype));
  d.confidence_float64 = o.confidence_dtype == "float64";
  if (o.mask_id >= 0) d.mask_id = o.mask_id;
  d.validate();
  const auto& prompt = session.prompts().at(0).ids;
  const ModelInfo& info = session.model().info();
  if (std::int64_t(prompt.size()) + d.gen_length > info.n_ctx)
    throw UsageError(fmt::format("prompt of {} tokens + --gen-length {} exceeds the model's context of {} tokens",
                                 prompt.size(), d.gen_length, info.n_ctx));
  if (!d.mask_id && !info.mask_id) throw UsageError(fmt::format("{} names no mask token: give --mask-id", info.path));
  check_capture_schedule(o, d.steps, d.gen_length / d.block_length_or_all());
  session.open_sink();
  session.run([&] {
    Progress progress("generate: denoising step", d.steps);
    nlohmann::json steps = nlohmann::json::array();
    const auto started = std::chrono::steady_clock::now();
    auto result = generate_masked_diffusion(session.model(), prompt, d, session.hooks(), 0, [&](const DiffusionStep& s) {
      steps.push_back({{"step", s.step}, {"block", s.block}, {"ids", s.ids}, {"committed", s.committed},
                       {"confidences", s.confidences}});
      release_free_memory();
      progress.update(s.step + 1, fmt::format(" (block {})", s.block));
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    session.set_work_timing(fmt::format("{} denoising steps over {} positions {:.2f} s ({:.3f} s a step)", result.steps.size(),
                                        result.output_ids.size(), seconds, seconds / double(std::max<std::size_t>(1, result.steps.size()))));
    const std::vector<std::int64_t> generated(result.output_ids.begin() + std::ptrdiff_t(prompt.size()), result.output_ids.end());
    nlohmann::json g = {{"mode", "masked_diffusion"},
                        {"prompt_length", prompt.size()},
                        {"gen_length", d.gen_length},
                        {"steps_total", d.steps},
                        {"block_length", d.block_length_or_all()},
                        {"temperature", d.temperature},
                        {"cfg_scale", d.cfg_scale},
                        {"remasking", remasking_name(d.remasking)},
                        {"confidence_dtype", o.confidence_dtype},
                        {"mask_id", result.mask_id},
                        {"seed", d.seed},
                        {"stop_at_eos", d.stop_at_eos},
                        {"stopped_on_eos", result.stopped_on_eos},
                        {"output_ids", result.output_ids},
                        {"new_ids", generated},
                        {"steps", steps}};
    if (const Tokenizer* tok = session.model().tokenizer()) {
      std::vector<std::int64_t> shown;  // mask tokens left (if any) are not text
      for (auto id : generated)
        if (id != result.mask_id && id < tok->vocab_size()) shown.push_back(id);
      g["text"] = tok->decode(shown);
      g["token_strings"] = diffusion_token_strings(*tok, prompt, steps, result.mask_id);
      std::cout << "generated: " << tok->decode(shown) << "\n";
    }
    return nlohmann::json{{"generation", g}};
  });
}

void add_common_options(CLI::App& cmd, RunOptions& o) {
  cmd.add_option("--model", o.model, "Model directory (or file) to load")->required();
  cmd.add_option("--adapter", o.adapter, "Adapter plugin to use instead of the one chosen from config.json");
  cmd.add_option("--tokenizer", o.tokenizer, "Tokenizer: a directory with tokenizer.json or vocab.json + merges.txt, or a llama2.c tokenizer file");
  cmd.add_option("--spec", o.spec, "Architecture spec of a state dict (.pt/.pth, .safetensors, a weight index file or a directory): a JSON file or a shipped spec name such as raschka-gpt or nanogpt");
  cmd.add_option("--prompt", o.prompts, "Prompt text (repeatable: one run per prompt)");
  cmd.add_option("--prompt-ids", o.prompt_ids, "Prompt as token ids, e.g. 464,3797,318 (repeatable)");
  cmd.add_flag("--chat", o.chat,
               "Each --prompt is one user message in the model's chat template (tokenizer_config.json), followed by "
               "the assistant's turn; the manifest records the rendered text");
  cmd.add_option("--hooks", o.hooks, "Hook points to capture: globs or re:REGEX, comma-separated; 'none' captures nothing "
                                    "(the run directory still records prompts and generation)")
      ->delimiter(',')
      ->capture_default_str();
  cmd.add_option("--layers", o.layers, "Capture only these layers (comma-separated)")->delimiter(',');
  const std::string slicing = "Capture slicing (cuts what is stored, not what is computed)";
  cmd.add_option("--heads", o.heads, "Capture only these heads (comma-separated)")->delimiter(',')->group(slicing);
  cmd.add_option("--query-range", o.query_range, "Capture only query (and pos) positions A:B, A: or :B")->group(slicing);
  cmd.add_option("--key-range", o.key_range, "Capture only key positions A:B, A: or :B")->group(slicing);
  cmd.add_option("--capture-steps", o.capture_steps, "Capture only at these generation steps")->delimiter(',')->group(slicing);
  cmd.add_option("--capture-blocks", o.capture_blocks, "Capture only in these diffusion blocks")->delimiter(',')->group(slicing);
  cmd.add_option("--ablate", o.ablate, "Zero-ablate head H of layer L (LAYER.HEAD, repeatable)");
  cmd.add_option("--analyze", o.analyze,
                 "Run analyzer plugins live (comma-separated, e.g. attention_stats,head_detectors); reports go to "
                 "RUN/reports/NAME.json ('hooklens plugins' lists them)")
      ->delimiter(',');
  cmd.add_option("--analyze-option", o.analyze_options, "An analyzer's option, NAME.KEY=VALUE (repeatable)");
  cmd.add_option("--render", o.render,
                 "After the run, draw it: png, svg, pdf (RUN/figures) and/or html (RUN/report/report.html), comma-separated")
      ->delimiter(',');
  const std::string text = "Input from a text file";
  cmd.add_option("--text-file", o.text_file, "Feed sequences cut from this text file (e.g. WikiText's wiki.valid.raw) as prompts")
      ->group(text);
  cmd.add_option("--seq-len", o.seq_len, "Tokens per --text-file sequence")->group(text)->check(CLI::Range(1, 1 << 20));
  cmd.add_option("--max-sequences", o.max_sequences, "Most --text-file sequences")
      ->capture_default_str()
      ->group(text)
      ->check(CLI::Range(1, 1 << 20));
  cmd.add_option("--out", o.out, "Run directory to write (default runs/COMMAND-DATE-TIME)");
  cmd.add_flag("--overwrite", o.overwrite, "Replace an existing run directory");
  cmd.add_option("--dtype", o.dtype, "Stored dtype of captures: F32 or F16")->capture_default_str();
  cmd.add_option("--queue-mib", o.queue_mib, "Most MiB of captures waiting for the disk before the model waits")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd.add_option("--threads", o.threads, "Compute threads (0 = one per core)")->capture_default_str();
  cmd.add_option("--resident-weights", o.resident_weights_mib,
                 "MiB: a model whose weight matrices take at most this as float32 converts them once and keeps them "
                 "(fastest); a larger one uses float32 weights in place from the mapped files and converts BF16/F16 "
                 "ones chunk by chunk just before use (memory stays near the file size)")
      ->capture_default_str()
      ->check(CLI::Range(std::uint64_t(0), std::uint64_t(1) << 30));
}

}  // namespace

void add_run_commands(CLI::App& app) {
  auto capture = std::make_shared<RunOptions>();
  CLI::App* cap = app.add_subcommand("capture", "Run one forward pass per prompt and capture hook points to a run directory");
  add_common_options(*cap, *capture);
  cap->add_option("--batch-size", capture->batch_size,
                  "Prompts of the same length run through the model together, up to this many (captures are the same "
                  "as one at a time)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cap->callback([capture] {
    RunSession session(*capture, "capture");
    check_capture_schedule(*capture, 1, 0);
    session.open_sink();
    session.run([&] {
      Progress progress("capture: prompt", int(session.prompts().size()));
      const auto started = std::chrono::steady_clock::now();
      const auto& prompts = session.prompts();
      std::size_t tokens = 0;
      // Consecutive prompts of one length go through the model together, up to --batch-size; each
      // row's hooks fire as in an unbatched pass (per_batch_row), so the captures are the same.
      for (std::size_t first = 0; first < prompts.size();) {
        std::size_t end = first + 1;
        while (end < prompts.size() && end - first < std::size_t(capture->batch_size) &&
               prompts[end].ids.size() == prompts[first].ids.size())
          ++end;
        std::vector<at::Tensor> rows;
        for (std::size_t i = first; i < end; ++i) {
          rows.push_back(at::tensor(at::ArrayRef<std::int64_t>(prompts[i].ids), at::kLong));
          tokens += prompts[i].ids.size();
        }
        CaptureContext ctx;
        ctx.prompt = int(first);
        const HookSet batch_hooks = per_batch_row(session.hooks(), int(first), int(end - first));
        const HookSet& hooks = end - first == 1 ? session.hooks() : batch_hooks;
        session.model().forward(at::stack(rows), hooks, ctx, nullptr, Logits::none);  // hooks are the output
        release_free_memory();  // resident memory stays bounded, however many prompts
        first = end;
        progress.update(int(first));
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      session.set_work_timing(fmt::format("forward {} prompt(s), {} tokens {:.2f} s ({:.0f} tok/s)", session.prompts().size(),
                                          tokens, seconds, per_second(tokens, seconds)));
      return nlohmann::json{{"generation", {{"mode", "none"}}}};
    });
  });

  auto gen = std::make_shared<RunOptions>();
  CLI::App* g = app.add_subcommand(
      "generate",
      "Generate and capture hook points at every step. Causal models generate token by token (step 0 = "
      "prefill); bidirectional models (LLaDA, MMaDA) by masked diffusion (every denoising step of every block)");
  add_common_options(*g, *gen);
  auto* temp = g->add_option("--temperature", gen->sampling.temperature,
                             "Sampling temperature (autoregressive), or Gumbel-noise temperature (diffusion; default 0)");
  g->add_option("--seed", gen->sampling.seed, "Random seed")->capture_default_str();
  const std::string ar = "Autoregressive", md = "Masked diffusion";
  std::vector<CLI::Option*> ar_only{
      g->add_option("--max-new-tokens", gen->sampling.max_new_tokens, "Tokens to generate")->capture_default_str()->group(ar),
      g->add_flag("--greedy", gen->greedy, "Pick the most likely token (the default)")->group(ar),
      g->add_option("--top-k", gen->sampling.top_k, "Sample from the k most likely tokens")->group(ar),
      g->add_option("--top-p", gen->sampling.top_p, "Sample from the smallest set with this probability")->group(ar),
      g->add_flag("--no-stop-at-eos", gen->no_stop_at_eos, "Keep generating after the end-of-text token")->group(ar)};
  ar_only[1]->excludes(temp)->excludes(ar_only[2])->excludes(ar_only[3]);
  DiffusionOptions& d = gen->diffusion;
  std::vector<CLI::Option*> md_only{
      g->add_option("--gen-length", d.gen_length, "Tokens to generate (mask tokens after the prompt)")->capture_default_str()->group(md),
      g->add_option("--steps", d.steps, "Denoising steps in all (a multiple of the number of blocks)")->capture_default_str()->group(md),
      g->add_option("--block-length", d.block_length, "Semi-autoregressive block length (default: gen length, one block)")->group(md),
      g->add_option("--cfg-scale", d.cfg_scale, "Classifier-free guidance scale (0 = off)")->capture_default_str()->group(md),
      g->add_option("--remasking", gen->remasking, "Which positions to commit: low_confidence | random")->capture_default_str()->group(md),
      g->add_option("--confidence-dtype", gen->confidence_dtype, "Confidence softmax in float32 (LLaDA) or float64 (MMaDA)")->capture_default_str()->group(md),
      g->add_option("--mask-id", gen->mask_id, "Mask token id (default: config.json's mask_token_id)")->group(md),
      g->add_flag("--stop-at-eos", d.stop_at_eos, "Stop after the first block in which end-of-text was committed")->group(md)};
  g->callback([gen, temp, topk = ar_only[2], topp = ar_only[3], ar_only, md_only] {
    if (gen->prompts.size() + gen->prompt_ids.size() > 1)
      throw UsageError("generate takes one prompt (--prompt or --prompt-ids)");
    RunSession session(*gen, "generate");
    const ModelInfo& info = session.model().info();
    const bool diffusion = std::all_of(info.layer_attention.begin(), info.layer_attention.end(),
                                       [](AttentionKind k) { return k == AttentionKind::bidirectional; });
    for (const auto* opt : diffusion ? ar_only : md_only)
      if (opt->count())
        throw UsageError(fmt::format("{} is for {} models; {} is {}", opt->get_name(), diffusion ? "autoregressive" : "masked-diffusion",
                                     info.path, diffusion ? "a masked-diffusion model" : "autoregressive"));
    if (diffusion) {
      gen->diffusion.temperature = temp->count() ? gen->sampling.temperature : 0.0;
      return generate_diffusion(session, *gen);
    }
    gen->sampling.greedy = !(temp->count() || topk->count() || topp->count());
    gen->sampling.stop_at_eos = !gen->no_stop_at_eos;
    generate_tokens(session, *gen);
  });
}

}  // namespace hooklens::cli
