// RunSession: the capture flow of `hooklens capture|generate` and the viewer's live mode.
#include <hooklens/run_session.h>

#include <hooklens/analysis.h>
#include <hooklens/capture_slice.h>
#include <hooklens/chat_template.h>
#include <hooklens/error.h>
#include <hooklens/distributed.h>
#include <hooklens/generate.h>
#include <hooklens/hook_names.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/renderer.h>
#include <hooklens/json_read.h>
#include <hooklens/run_format.h>
#include <hooklens/run_parts.h>
#include <hooklens/runtime.h>
#include <hooklens/sink.h>
#include <hooklens/text.h>

#include "interventions.h"

#include <ATen/ATen.h>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

namespace hooklens {

namespace fs = std::filesystem;
using json = nlohmann::json;

RunSettings::RunSettings()
    : resident_weights_mib(LoadOptions{}.resident_weights_bytes >> 20), hooks{hook_names::every_layer(hook_names::pattern)} {
  const SamplingOptions sampling;
  seed = sampling.seed;
  autoregressive.max_new_tokens = sampling.max_new_tokens;
  const DiffusionOptions d;
  diffusion.gen_length = d.gen_length;
  diffusion.steps = d.steps;
  diffusion.block_length = d.block_length;
  diffusion.cfg_scale = d.cfg_scale;
  diffusion.remasking = remasking_name(d.remasking);
  diffusion.stop_at_eos = d.stop_at_eos;
}

namespace {

// --text-file: consecutive non-overlapping --seq-len token sequences cut from the file's text.
std::vector<SessionPrompt> text_file_prompts(const RunSettings& o, const Model& model) {
  if (o.seq_len <= 0) throw UsageError("--text-file needs --seq-len N (tokens per sequence)");
  if (!model.tokenizer())
    throw UsageError(fmt::format("{} has no tokenizer: --text-file needs one (--tokenizer DIR)", model.info().path));
  std::vector<SessionPrompt> prompts;
  for (auto& ids : text_file_sequences(o.text_file, *model.tokenizer(), o.seq_len, o.max_sequences, "--text-file")) {
    const std::int64_t start = std::int64_t(prompts.size()) * o.seq_len;
    SessionPrompt p;
    p.ids = std::move(ids);
    p.source = fmt::format("text-file {} sequence {} (tokens {}-{})", o.text_file, prompts.size(), start,
                           start + o.seq_len - 1);
    prompts.push_back(std::move(p));
  }
  return prompts;
}

std::vector<SessionPrompt> read_prompts(const RunSettings& o, const Model& model) {
  const ModelInfo& info = model.info();
  std::vector<SessionPrompt> prompts;
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
  for (const auto& list : o.prompt_ids) prompts.push_back({"", parse_token_ids(list, "--prompt-ids")});
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

// A prompt as the manifest lists it: its text (decoded from the ids when it has none) and each id's
// display string.
json prompt_json(const SessionPrompt& p, const Model& model) {
  const Tokenizer* tok = model.tokenizer();
  RunPrompt out{tok && p.text.empty() ? tok->decode(p.ids) : p.text, p.ids, {}, p.source};
  for (auto id : p.ids) out.tokens.push_back(tok ? tok->token_string(id) : std::to_string(id));
  return encode_prompt(out);
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
    throw UsageError(fmt::format("--hooks '{}' matches no hook point of this model{}; valid names: {}", pattern,
                                 layers.empty() ? "" : fmt::format(" in --layers {}", fmt::join(layers, ",")),
                                 fmt::join(listed_names(points), ", ")));
  }
}

// A rate for the timing line (0 when nothing was timed).
double per_second(double amount, double seconds) { return seconds > 0 ? amount / seconds : 0.0; }

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

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The display string of every id a diffusion run's sequences hold (the prompt and each step's ids),
// so readers of the manifest show tokens without a tokenizer. The mask has no entry (readers show it
// as a mask), nor has an id past the tokenizer's vocabulary.
std::map<std::int64_t, std::string> diffusion_token_strings(const Tokenizer& tok, const std::vector<std::int64_t>& prompt,
                                                            const std::vector<DenoiseStep>& steps, std::int64_t mask_id) {
  std::set<std::int64_t> ids(prompt.begin(), prompt.end());
  for (const auto& step : steps) ids.insert(step.ids.begin(), step.ids.end());
  std::map<std::int64_t, std::string> out;
  for (auto id : ids)
    if (id != mask_id && id >= 0 && id < tok.vocab_size()) out[id] = tok.token_string(id);
  return out;
}

// The manifest's "generation" block of an autoregressive run (run_format.h encodes it).
RunGeneration autoregressive_generation(const SamplingOptions& s, const GenerationResult& result,
                                        std::vector<TokenStep> steps, const Tokenizer* tok) {
  RunGeneration g;
  g.mode = GenerationMode::autoregressive;
  g.max_new_tokens = s.max_new_tokens;
  g.greedy = s.greedy;
  g.temperature = s.temperature;
  g.top_k = s.top_k;
  g.top_p = s.top_p;
  g.seed = s.seed;
  g.stop_at_eos = s.stop_at_eos;
  g.output_ids = result.output_ids;
  g.new_ids = result.new_ids;
  g.stopped_on_eos = result.stopped_on_eos;
  g.token_steps = std::move(steps);
  if (tok) g.text = tok->decode(result.new_ids);
  return g;
}

// The manifest's "generation" block of a masked-diffusion run (run_format.h encodes it).
RunGeneration diffusion_generation(const DiffusionOptions& d, const std::string& confidence_dtype,
                                   const std::vector<std::int64_t>& prompt, const DiffusionResult& result,
                                   const Tokenizer* tok) {
  RunGeneration g;
  g.mode = GenerationMode::masked_diffusion;
  g.prompt_length = std::int64_t(prompt.size());
  g.gen_length = d.gen_length;
  g.steps_total = d.steps;
  g.block_length = d.block_length_or_all();
  g.temperature = d.temperature;
  g.cfg_scale = d.cfg_scale;
  g.remasking = remasking_name(d.remasking);
  g.confidence_dtype = confidence_dtype;
  g.mask_id = result.mask_id;
  g.seed = d.seed;
  g.stop_at_eos = d.stop_at_eos;
  g.stopped_on_eos = result.stopped_on_eos;
  g.output_ids = result.output_ids;
  g.new_ids.assign(result.output_ids.begin() + std::ptrdiff_t(prompt.size()), result.output_ids.end());
  for (const DiffusionStep& s : result.steps) g.denoise_steps.push_back({s.step, s.block, s.ids, s.committed, s.confidences});
  if (tok) {
    std::vector<std::int64_t> shown;  // mask tokens left (if any) are not text
    for (auto id : g.new_ids)
      if (id != result.mask_id && id < tok->vocab_size()) shown.push_back(id);
    g.text = tok->decode(shown);
    g.token_strings = diffusion_token_strings(*tok, prompt, g.denoise_steps, result.mask_id);
  }
  return g;
}

}  // namespace

// The run directory's side of a session: created with the session (its clock times the load).
struct RunSession::Run {
  Clock::time_point started = Clock::now();
  double load_seconds = 0;
  std::string work_timing = "model";  // the model's part of the timing line
  std::uint64_t captured_bytes = 0;
  std::size_t captures = 0;
  std::shared_ptr<CaptureSink> sink;
  std::vector<std::pair<std::string, std::shared_ptr<Renderer>>> renderers;  // --render, after the run
  CaptureSlice slice;
  std::unordered_map<std::string, HookPointInfo> points;  // for slicing: each point's dims
};

RunSession::RunSession(RunSettings settings, Kind kind)
    : settings_(std::move(settings)),
      kind_(kind),
      registry_(std::make_unique<PluginRegistry>()),
      run_(std::make_unique<Run>()),
      hooks_(std::make_unique<HookSet>()) {
  const RunSettings& o = settings_;
  if (kind == Kind::generate && o.prompts.size() + o.prompt_ids.size() > 1)
    throw UsageError("generate takes one prompt (--prompt or --prompt-ids)");
  if (auto env = DistributedEnv::from_environment()) env_ = std::make_unique<DistributedEnv>(*env);
  if (env_ || o.resume || o.local_out) {
    if (kind == Kind::generate)
      throw UsageError(env_ ? "generate runs one prompt: only `hooklens capture` runs over several processes (unset RANK "
                              "and WORLD_SIZE)"
                            : "--resume and --local-out are for `hooklens capture`");
    if (o.local_out && !env_)
      throw UsageError("--local-out is for runs over several processes (RANK and WORLD_SIZE set, as scripts/launch.sh does)");
    if (o.local_out && o.resume)
      throw UsageError("--resume needs the run on storage every rank shares, not --local-out: copy the parts into one "
                       "directory every rank can write, and resume there");
    if (o.out.empty())
      throw UsageError(env_ ? "a run over several processes needs --out DIR, the same for every rank"
                            : "--resume needs --out DIR, the run to resume");
    if (o.timeout_seconds < 1) throw UsageError("--timeout must be at least 1 second");
    group_ = env_ ? join_process_group(*env_, std::chrono::seconds(o.timeout_seconds)) : single_process_group();
  }
  try {
    load();
  } catch (const std::exception& e) {
    if (group_) group_->fail(e.what());  // the other ranks stop at once, naming this one
    throw;
  }
}

void RunSession::load() {
  const RunSettings& o = settings_;
  const Kind kind = kind_;
  init_runtime(o.threads);
  LoadOptions load;
  load.tokenizer = o.tokenizer;
  load.spec = o.spec;
  load.resident_weights_bytes = o.resident_weights_mib << 20;
  model_ = open_model(*registry_, o.model, o.adapter, load);
  run_->load_seconds = seconds_since(run_->started);
  if (kind == Kind::generate) mode_ = generation_mode_of(model_->info());
  prompts_ = read_prompts(o, *model_);
  start_analyzers();
  for (const auto& format : o.render) run_->renderers.emplace_back(format, renderer_for(*registry_, format));
  if (o.captures()) check_hook_patterns(o.hooks, o.layers, *model_);
  else if (!o.layers.empty() || !o.heads.empty() || !o.query_range.empty() || !o.key_range.empty() ||
           !o.capture_steps.empty() || !o.capture_blocks.empty())
    throw UsageError("--hooks none captures nothing: capture slicing options do not apply");
  if (o.dtype != "F32" && o.dtype != "F16") throw UsageError("--dtype must be F32 or F16");
  start_interventions();
  run_->slice.heads = o.heads;
  for (int h : o.heads)
    if (h < 0 || h >= model_->info().n_heads)
      throw UsageError(fmt::format("--heads {}: the model has heads 0-{}", h, model_->info().n_heads - 1));
  if (!o.query_range.empty()) run_->slice.queries = CaptureSlice::parse_range(o.query_range);
  if (!o.key_range.empty()) run_->slice.keys = CaptureSlice::parse_range(o.key_range);
  if (group_ && analyzers_) {
    if (o.resume) check_resumable_analyzers();
    else analyzers_->require_mergeable();
  }
}

RunSession::~RunSession() = default;

// Every intervention checked against the model and what this run will reach, with its values read
// (vectors, another run's captures) or computed (a text file's means) before anything is written.
void RunSession::start_interventions() {
  const RunSettings::InterventionOptions& o = settings_.interventions;
  std::vector<InterventionSpec> specs;
  for (const auto& text : o.ablate) specs.push_back(zero_ablation(text, *model_));
  for (const auto& text : o.patch) specs.push_back(InterventionSpec::patch(text));
  for (const auto& text : o.steer) specs.push_back(InterventionSpec::steer(text));
  for (const auto& text : o.mean_ablate) specs.push_back(InterventionSpec::ablation(InterventionKind::mean_ablate, text));
  for (const auto& text : o.resample_ablate)
    specs.push_back(InterventionSpec::ablation(InterventionKind::resample_ablate, text));
  const Schedule run = schedule();
  InterventionScope scope;
  scope.steps = run.steps;
  scope.blocks = run.blocks;
  for (const auto& p : prompts_) scope.positions.push_back(std::int64_t(p.ids.size()) + run.new_tokens);
  InterventionSources sources{o.patch_from, o.ablate_from, o.ablate_seq_len, o.ablate_sequences, settings_.seed};
  interventions_ = std::make_unique<Interventions>(*model_, std::move(specs), std::move(sources), std::move(scope));
  interventions_->attach(*hooks_);
}

// --analyze: analyzers see every capture of their hook points, whatever --hooks stores. On
// `capture` their extra prompts (e.g. head_detectors' repeated random tokens) join the run.
void RunSession::start_analyzers() {
  if (settings_.analyze.empty()) {
    if (!settings_.analyze_options.empty()) throw UsageError("--analyze-option needs --analyze NAME");
    return;
  }
  analyzers_ = std::make_unique<AnalyzerSet>(*registry_, settings_.analyze, settings_.analyze_options);
  analyzers_->use_model(*model_);
  if (kind_ == Kind::capture)
    for (auto& extra : analyzers_->extra_prompts(model_->info())) prompts_.push_back({"", extra.ids, extra.source});
  analyzers_->begin({{"model", model_->info().to_json()}, {"prompts", prompts_json()}, {"mode", generation_mode_name(mode_)}});
}

json RunSession::prompts_json() const {
  json prompts = json::array();
  for (const auto& p : prompts_) prompts.push_back(prompt_json(p, *model_));
  return prompts;
}

json RunSession::manifest(const json& generation, bool counted) const {
  const RunSettings& o = settings_;
  auto range = [](const std::string& r) { return r.empty() ? json() : json(r); };
  json capture = {{"hooks", o.hooks},         {"layers", o.layers},
                  {"heads", o.heads},         {"query_range", range(o.query_range)},
                  {"key_range", range(o.key_range)}, {"steps", o.capture_steps},
                  {"blocks", o.capture_blocks}, {"dtype", o.dtype}};
  return {{"generation", generation},
          {"model", model_->info().to_json()},
          {"prompts", prompts_json()},
          {"analyzers", o.analyze},
          {"capture", std::move(capture)},  // what was asked to be captured
          {"ablations", o.interventions.ablate},  // as given (older readers); "interventions" says what each did
          {"interventions", interventions_->manifest(counted)}};
}

SamplingOptions RunSession::sampling() const {
  const RunSettings& o = settings_;
  SamplingOptions s;
  s.max_new_tokens = o.autoregressive.max_new_tokens;
  // Greedy (the default, and --greedy) unless a sampling option was given.
  s.greedy = !(o.temperature || o.autoregressive.top_k || o.autoregressive.top_p);
  s.temperature = o.temperature.value_or(s.temperature);
  s.top_k = o.autoregressive.top_k.value_or(s.top_k);
  s.top_p = o.autoregressive.top_p.value_or(s.top_p);
  s.seed = o.seed;
  s.stop_at_eos = !o.autoregressive.no_stop_at_eos;
  return s;
}

DiffusionOptions RunSession::diffusion() const {
  const RunSettings::Diffusion& o = settings_.diffusion;
  DiffusionOptions d;
  d.gen_length = o.gen_length;
  d.steps = o.steps;
  d.block_length = o.block_length;
  d.temperature = settings_.temperature.value_or(0.0);  // no Gumbel noise unless asked
  d.cfg_scale = o.cfg_scale;
  d.seed = settings_.seed;
  const auto remasking = parse_remasking(o.remasking);
  if (!remasking) throw UsageError(fmt::format("--remasking must be low_confidence or random, not '{}'", o.remasking));
  d.remasking = *remasking;
  if (o.confidence_dtype != "float32" && o.confidence_dtype != "float64")
    throw UsageError(fmt::format("--confidence-dtype must be float32 or float64, not '{}'", o.confidence_dtype));
  d.confidence_float64 = o.confidence_dtype == "float64";
  if (o.mask_id >= 0) d.mask_id = o.mask_id;
  d.stop_at_eos = o.stop_at_eos;
  return d;
}

RunSession::Schedule RunSession::schedule() const {
  Schedule out;
  if (mode_ == GenerationMode::autoregressive) {
    out.new_tokens = std::max(0, settings_.autoregressive.max_new_tokens);
    out.steps = std::max(1, settings_.autoregressive.max_new_tokens);
  } else if (mode_ == GenerationMode::masked_diffusion) {
    const DiffusionOptions d = diffusion();
    out.new_tokens = std::max(0, d.gen_length);
    out.steps = std::max(1, d.steps);
    out.blocks = std::max(1, d.gen_length / std::max(1, d.block_length_or_all()));
  }
  return out;
}

// --capture-steps / --capture-blocks that no event of this run can match are mistakes.
void RunSession::check_capture_schedule() const {
  const Schedule run = schedule();
  const int steps = run.steps, blocks = run.blocks;
  for (int s : settings_.capture_steps)
    if (s < 0 || s >= steps) throw UsageError(fmt::format("--capture-steps {}: this run has steps 0-{}", s, steps - 1));
  for (int b : settings_.capture_blocks)
    if (b < 0 || b >= blocks)
      throw UsageError(blocks ? fmt::format("--capture-blocks {}: this run has blocks 0-{}", b, blocks - 1)
                              : std::string("--capture-blocks is for masked-diffusion runs"));
}

void RunSession::check_generation() const {
  const ModelInfo& info = model_->info();
  const std::size_t prompt = prompts_.at(0).ids.size();
  switch (mode_) {
    case GenerationMode::none:
      return check_capture_schedule();
    case GenerationMode::autoregressive: {
      const SamplingOptions s = sampling();
      s.validate();
      check_context(info, prompt, s.max_new_tokens, "--max-new-tokens");
      return check_capture_schedule();
    }
    case GenerationMode::masked_diffusion: {
      const DiffusionOptions d = diffusion();
      d.validate();
      check_context(info, prompt, d.gen_length, "--gen-length");
      if (!d.mask_id && !info.mask_id) throw UsageError(fmt::format("{} names no mask token: give --mask-id", info.path));
      return check_capture_schedule();
    }
  }
}

// Opens the run writer with `options` besides the run's own (a rank's part: "rank", "prepare",
// "resume"): from here on, every failure must abort the sink.
void RunSession::open_sink(json options) {
  const RunSettings& o = settings_;
  const std::string out = !o.out.empty() ? o.out
                                         : fmt::format("runs/{}-{:%Y%m%d-%H%M%S}", kind_ == Kind::capture ? "capture" : "generate",
                                                       fmt::localtime(std::time(nullptr)));
  options.update({{"out", out}, {"dtype", o.dtype}, {"overwrite", o.overwrite}, {"queue_bytes", o.queue_mib << 20}});
  run_->sink = registry_->create_sink("run_writer");
  run_->sink->open(options);
}

// Hooks the analyzers and the sink up to the model.
void RunSession::attach_sink() {
  const RunSettings& o = settings_;
  Run& run = *run_;
  // After the ablations: they see what the model computes. A resumed run is analyzed at its end.
  if (analyzers_ && !(group_ && o.resume)) analyzers_->attach(*hooks_);
  if (!o.captures()) return;
  HookFilter filter;
  filter.names = o.hooks;
  filter.layers = o.layers;
  filter.steps = o.capture_steps;
  filter.blocks = o.capture_blocks;
  if (run.slice.empty()) {
    hooks_->add(filter, [&run](std::string_view name, const CaptureContext& ctx, at::Tensor& t) {
      run.sink->capture(name, ctx, t);
      ++run.captures;
      run.captured_bytes += t.nbytes();
    });
    return;
  }
  for (auto& point : model_->hook_points()) run.points.emplace(point.name, std::move(point));
  hooks_->add(filter, [&run](std::string_view name, const CaptureContext& ctx, at::Tensor& t) {
    auto sliced = slice_capture(run.points.at(std::string(name)), t, ctx, run.slice);
    if (!sliced) return;  // nothing of this event lies in the slice
    run.sink->capture(name, sliced->second, sliced->first);
    ++run.captures;
    run.captured_bytes += sliced->first.nbytes();
  });
}

// Runs `work` (which returns the "generation" block) into the open sink, finishes the run
// directory, then the analyzers' reports and the figures.
template <class Work>
void RunSession::run(Work work) {
  Run& run = *run_;
  const auto work_started = Clock::now();
  double work_seconds = 0;
  json manifest;
  try {
    const json generation = work();
    work_seconds = seconds_since(work_started);
    manifest = this->manifest(generation);
    run.sink->finish(manifest);
  } catch (const std::exception& e) {
    run.sink->abort(e.what());
    throw;
  }
  const double finish_seconds = seconds_since(work_started) - work_seconds;
  for (const auto& message : interventions_->unapplied()) warn(message);
  std::cout << fmt::format("run directory: {}\n  {} captures of [{}] from {} prompt(s); manifest {}\n",
                           run.sink->location(), run.captures, fmt::join(settings_.hooks, ", "), prompts_.size(),
                           (fs::path(run.sink->location()) / "manifest.json").string());
  // What the run cost, as llama.cpp prints its timings: on stderr, so stdout stays the results.
  const double mib = double(run.captured_bytes) / (1 << 20);
  std::cerr << fmt::format("timing: load {:.2f} s; {}; captured {:.2f} MiB ({:.1f} MiB/s of model time); "
                           "finishing the run directory {:.2f} s; total {:.2f} s\n",
                           run.load_seconds, run.work_timing, mib, per_second(mib, work_seconds), finish_seconds,
                           seconds_since(run.started));
  if (analyzers_)  // the run is complete; a report that cannot be written fails the command only
    print_reports(analyzers_->finish(manifest, run.sink->location()), std::cout);
  render(run.sink->location());
}

// --render: each format drawn from the complete run directory `out`.
void RunSession::render(const std::string& out) {
  for (const auto& [format, renderer] : run_->renderers) {
    const fs::path dir = default_render_dir(out, format);
    const auto files = renderer->render(out, format, dir, json::object());
    std::cout << fmt::format("{}: {} file(s) in {}\n", format, files.value("files", json::array()).size(), dir.string());
  }
}

void RunSession::capture() {
  if (kind_ != Kind::capture) throw Error("RunSession::capture() on a generate session");
  check_generation();
  if (group_) return capture_across_ranks();
  open_sink(json::object());
  attach_sink();
  run([&] {
    Progress progress("capture: prompt", int(prompts_.size()));
    const auto started = Clock::now();
    std::vector<std::size_t> all(prompts_.size());
    std::iota(all.begin(), all.end(), std::size_t(0));
    const std::size_t tokens =
        forward_prompts(all, [&](std::size_t, std::size_t end, std::size_t) { progress.update(int(end)); });
    const double seconds = seconds_since(started);
    run_->work_timing = fmt::format("forward {} prompt(s), {} tokens {:.2f} s ({:.0f} tok/s)", prompts_.size(), tokens,
                                    seconds, per_second(tokens, seconds));
    return json{{"mode", generation_mode_name(GenerationMode::none)}};
  });
}

template <class Done>
std::size_t RunSession::forward_prompts(const std::vector<std::size_t>& indices, Done done) {
  std::size_t tokens = 0;
  const std::size_t batch_size = std::size_t(std::max(1, settings_.batch_size));
  // Consecutive prompts of one length go through the model together, up to --batch-size; each
  // row's hooks fire as in an unbatched pass (per_batch_row), so the captures are the same.
  for (std::size_t at = 0; at < indices.size();) {
    const std::size_t first = indices[at];
    std::size_t n = 1;
    while (at + n < indices.size() && n < batch_size && indices[at + n] == first + n &&
           prompts_[first + n].ids.size() == prompts_[first].ids.size())
      ++n;
    std::vector<at::Tensor> rows;
    std::size_t batch_tokens = 0;
    for (std::size_t i = first; i < first + n; ++i) {
      rows.push_back(at::tensor(at::ArrayRef<std::int64_t>(prompts_[i].ids), at::kLong));
      batch_tokens += prompts_[i].ids.size();
    }
    CaptureContext ctx;
    ctx.prompt = int(first);
    const HookSet batch_hooks = per_batch_row(*hooks_, int(first), int(n));
    const HookSet& hooks = n == 1 ? *hooks_ : batch_hooks;
    model_->forward(at::stack(rows), hooks, ctx, nullptr, Logits::none);  // hooks are the output
    release_free_memory();  // resident memory stays bounded, however many prompts
    tokens += batch_tokens;
    at += n;
    done(first, first + n, batch_tokens);
  }
  return tokens;
}

namespace {

// FNV-1a, 64 bits: the same on every machine (std::hash need not be).
std::uint64_t fingerprint(std::string_view text) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string cbor_bytes(const json& value) {
  const std::vector<std::uint8_t> bytes = json::to_cbor(value);
  return std::string(bytes.begin(), bytes.end());
}

json from_cbor_bytes(const std::string& bytes, int rank) {
  try {
    return json::from_cbor(bytes);
  } catch (const json::exception& e) {
    throw Error(fmt::format("rank {} sent a malformed message: {}", rank, e.what()));
  }
}

}  // namespace

// A resumed run's analyzers read the finished run directory (the captures kept from the failed run
// were never seen live): every hook point they read must be captured whole.
void RunSession::check_resumable_analyzers() const {
  const RunSettings& o = settings_;
  if (!o.captures() || !run_->slice.empty() || !o.capture_steps.empty() || !o.capture_blocks.empty())
    throw UsageError("--resume with --analyze: the analyzers read the finished run, so it must capture their hook points "
                     "whole (no --hooks none, --heads, --query-range, --key-range)");
  HookFilter captured;
  captured.names = o.hooks;
  captured.layers = o.layers;
  for (const auto& point : model_->hook_points()) {
    CaptureContext ctx;
    ctx.layer = point.layer;
    const std::string reader = analyzers_->reader_of(point.name);
    if (!reader.empty() && !captured.matches(point.name, ctx))
      throw UsageError(fmt::format("--resume with --analyze {}: it reads {}, which this run does not capture (the "
                                   "analyzers of a resumed run read the run directory): add it to --hooks",
                                   reader, point.name));
  }
}

std::vector<std::size_t> RunSession::resume_parts(const json& mine) {
  const fs::path out = settings_.out;
  std::error_code ec;
  if (!fs::is_directory(out, ec)) throw UsageError(fmt::format("--resume: {} is not a run directory", out.string()));
  json written;
  try {
    written = read_json_file(out / kRunManifestName);
  } catch (const Error&) {
    // checked below: without this run's sections it is not this run
  }
  if (written.is_object() && written.value("complete", json()) == json(true))
    throw UsageError(fmt::format("--resume: {} is complete already", out.string()));
  const std::vector<RunPart> parts = read_run_parts(out);
  if (parts.empty())
    throw UsageError(fmt::format("--resume: {} holds no part of a run over several processes (part-rank*.json): "
                                 "nothing to resume",
                                 out.string()));
  for (const char* section : kRunSections)
    if (!written.is_object() || written.value(section, json()) != mine.value(section, json()))
      throw UsageError(fmt::format("--resume: {} was written by another run (its \"{}\" differs from this one's): give "
                                   "the same arguments and files, or another --out",
                                   out.string(), section));
  RunPart kept;
  kept.file = kResumedPartName;
  kept.complete = true;
  kept.manifest = json::object();
  for (const char* section : kRunSections) kept.manifest[section] = mine[section];
  for (const auto& part : parts) {
    std::map<int, std::vector<CaptureEntry>> by_prompt;
    for (const auto& e : part.captures)
      if (part.prompts_done.count(e.context.prompt)) by_prompt[e.context.prompt].push_back(e);
    for (int p : part.prompts_done) {
      if (std::size_t(p) >= prompts_.size() || kept.prompts_done.count(p)) continue;
      const std::vector<CaptureEntry>& entries = by_prompt[p];
      const std::vector<std::string> problems = check_shards(out, entries);
      const auto problem = std::find_if(problems.begin(), problems.end(), [](const std::string& s) { return !s.empty(); });
      if (problem != problems.end()) {
        std::cerr << fmt::format("resume: prompt {} is captured again: {}\n", p, *problem);
        continue;
      }
      kept.prompts_done.insert(p);
      kept.captures.insert(kept.captures.end(), entries.begin(), entries.end());
    }
  }
  write_run_part(out, kept);  // first, so that a failure now loses nothing
  for (const auto& part : parts)
    if (part.file.filename() != kResumedPartName) fs::remove(part.file, ec);
  // Shards the failed run's ranks never finished (each rank removes its own, but the run may
  // now have fewer ranks). No rank writes yet: only rank 0's writer is open, with no shard.
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code removed;
    if (name.rfind("captures-rank", 0) == 0 && ends_with(name, ".safetensors.tmp")) fs::remove(it->path(), removed);
  }
  std::cerr << fmt::format("resume: {} of {} prompts verified in {} ({} captures kept); capturing the other {}\n",
                           kept.prompts_done.size(), prompts_.size(), out.string(), kept.captures.size(),
                           prompts_.size() - kept.prompts_done.size());
  return {kept.prompts_done.begin(), kept.prompts_done.end()};
}

// Each rank captures its share of the prompts into its part of --out; rank 0 then joins the parts
// into the run's manifest.json, merges the analyzers' states and writes the reports.
void RunSession::capture_across_ranks() {
  ProcessGroup& group = *group_;
  const RunSettings& o = settings_;
  const int rank = group.rank(), ranks = group.size();
  const bool first = rank == 0;
  const bool prepares = o.local_out ? env_->local_rank == 0 : first;  // who creates --out
  bool sink_open = false;
  json started_manifest;  // rank 0's manifest.json until the run is complete
  try {
    // The run's sections, made once (prompts_json decodes every prompt's tokens).
    const json sections = manifest(json{{"mode", generation_mode_name(GenerationMode::none)}}, false);
    // Every rank must run the same thing (a path may differ between machines; the model may not).
    json identity = sections;
    identity["model"].erase("path");
    const std::string mine = std::to_string(fingerprint(identity.dump()));
    const std::vector<std::string> theirs = group.all_gather(mine);
    for (int r = 0; r < ranks; ++r)
      if (theirs[std::size_t(r)] != theirs[0])
        throw Error(fmt::format("rank {} runs other prompts, options or model than rank 0: every process needs the "
                                "same arguments, files and model",
                                r));
    // The run directory: prepared (created, or emptied with --overwrite; with --resume locked as it
    // is) before any rank writes.
    if (prepares) {
      open_sink(json{{"rank", rank}, {"prepare", true}, {"resume", o.resume}});
      sink_open = true;
    }
    // What is left to do: all of it, or what --resume did not keep (rank 0 decides).
    std::vector<std::size_t> done;
    if (first && o.resume) done = resume_parts(sections);
    done = from_cbor_bytes(group.all_gather(first ? cbor_bytes(done) : std::string())[0], 0).get<std::vector<std::size_t>>();
    std::vector<std::size_t> todo, tokens;
    for (std::size_t p = 0, d = 0; p < prompts_.size(); ++p) {
      if (d < done.size() && done[d] == p) {
        ++d;
        continue;
      }
      todo.push_back(p);
      tokens.push_back(prompts_[p].ids.size());
    }
    std::vector<std::size_t> share;
    const std::vector<std::vector<std::size_t>> shares = split_by_tokens(tokens, ranks);
    for (std::size_t i : shares[std::size_t(rank)]) share.push_back(todo[i]);
    if (prepares && !o.local_out) {  // incomplete until the end; what a --resume compares (read above)
      started_manifest = sections;
      started_manifest.update({{"format", kRunFormatName}, {"version", kRunFormatVersion}, {"complete", false},
                               {"captures", json::array()}});
      write_manifest_file(fs::path(run_->sink->location()) / kRunManifestName, started_manifest);
    }
    group.barrier();
    if (!prepares) {
      open_sink(json{{"rank", rank}, {"prepare", false}});
      sink_open = true;
    }
    attach_sink();
    // The work, with rank 0 showing everyone's progress.
    const auto started = Clock::now();
    std::size_t my_sequences = 0, my_tokens = 0;
    Progress progress(fmt::format("capture: {} rank{}: sequence", ranks, ranks == 1 ? "" : "s"), int(todo.size()));
    auto last_shown = Clock::now() - std::chrono::seconds(10);
    const auto show = [&](std::optional<RankProgress> total) {
      if (!first || (!total && Clock::now() - last_shown < std::chrono::seconds(1))) return;
      last_shown = Clock::now();
      if (!total) {
        total.emplace();
        for (const auto& p : group.progress()) total->sequences += p.sequences, total->tokens += p.tokens;
      }
      progress.update(int(total->sequences), fmt::format(" ({:.0f} tok/s over all ranks)",
                                                          per_second(double(total->tokens), seconds_since(started))));
    };
    forward_prompts(share, [&](std::size_t begin, std::size_t end, std::size_t batch_tokens) {
      for (std::size_t p = begin; p < end; ++p) run_->sink->end_prompt(int(p));
      my_sequences += end - begin;
      my_tokens += batch_tokens;
      group.set_progress({std::int64_t(my_sequences), std::int64_t(my_tokens)});
      group.check_peers();
      show(std::nullopt);
    });
    const double work_seconds = seconds_since(started);
    json fields = sections;
    fields["distributed"] = {{"world_size", ranks}, {"resumed", o.resume}};
    run_->sink->finish(fields);
    sink_open = false;
    // Every rank reports; rank 0 completes the run.
    const std::string states = analyzers_ && !o.resume ? analyzers_->save_states() : std::string();
    const std::vector<std::string> reports = group.all_gather(
        cbor_bytes({{"sequences", my_sequences}, {"tokens", my_tokens}, {"states", json::binary(
            std::vector<std::uint8_t>(states.begin(), states.end()))}}));
    std::string failure;
    std::size_t sequences = 0, all_tokens = 0;
    json joined;  // the complete manifest.json rank 0 wrote
    if (first) {
      try {
        std::vector<json> from(reports.size());
        for (int r = 0; r < ranks; ++r) {
          from[std::size_t(r)] = from_cbor_bytes(reports[std::size_t(r)], r);
          sequences += from[std::size_t(r)].at("sequences").get<std::size_t>();
          all_tokens += from[std::size_t(r)].at("tokens").get<std::size_t>();
        }
        if (analyzers_ && !o.resume)
          for (int r = 1; r < ranks; ++r) {
            const auto& bytes = from[std::size_t(r)].at("states").get_binary();
            analyzers_->merge_states(std::string(bytes.begin(), bytes.end()), r);
          }
        if (!o.local_out) {
          const fs::path out = run_->sink->location();
          for (int r = 0; r < ranks; ++r)  // every rank reported its part finished: rank 0 must see it
            if (!fs::exists(out / rank_part_name(r)))
              throw Error(fmt::format("{}: rank {}'s part {} is not there: every rank needs --out on storage they all "
                                      "share (or --local-out, then `hooklens merge`)",
                                      out.string(), r, rank_part_name(r)));
          joined = join_run_parts({out}, out);
        }
      } catch (const std::exception& e) {
        failure = e.what();
      }
      show(RankProgress{std::int64_t(sequences), std::int64_t(all_tokens)});
    }
    const std::string verdict = group.all_gather(failure)[0];
    if (!verdict.empty()) throw Error(first ? verdict : fmt::format("rank 0 could not complete the run: {}", verdict));
    const std::string out = run_->sink->location();
    if (!first) {
      std::cout << fmt::format("rank {}: {} captures of {} sequence(s) in {}; rank 0 completes the run\n", rank,
                               run_->captures, my_sequences, out);
      return;
    }
    const double seconds = seconds_since(started);
    if (o.local_out) {
      std::cout << fmt::format("every rank finished its part in its --out {}: copy those directories to one machine and "
                               "join them with `hooklens merge --out RUN DIR...`\n",
                               out);
    } else {
      std::cout << fmt::format("run directory: {}\n  {} captures of [{}] from {} prompt(s) on {} rank{}; manifest {}\n",
                               out, joined.at("captures").size(), fmt::join(o.hooks, ", "), prompts_.size(), ranks,
                               ranks == 1 ? "" : "s",
                               (fs::path(out) / kRunManifestName).string());
    }
    std::cerr << fmt::format("timing: load {:.2f} s; {} sequence(s), {} tokens over {} rank{} {:.2f} s ({:.2f} "
                             "sequences/s, {:.0f} tok/s); rank 0's share {:.2f} s\n",
                             run_->load_seconds, sequences, all_tokens, ranks, ranks == 1 ? "" : "s", seconds, per_second(double(sequences), seconds),
                             per_second(double(all_tokens), seconds), work_seconds);
    if (analyzers_)
      print_reports(o.resume ? analyze_run(out, *analyzers_) : analyzers_->finish(o.local_out ? fields : joined, out),
                    std::cout);
    if (!o.local_out) render(out);
  } catch (const std::exception& e) {
    if (sink_open) run_->sink->abort(e.what());
    group.fail(e.what());
    if (!started_manifest.is_null()) {  // readers quote why the run is incomplete
      try {
        started_manifest["error"] = e.what();
        write_manifest_file(fs::path(settings_.out) / kRunManifestName, started_manifest);
      } catch (const std::exception&) {
        // the parts still say what happened
      }
    }
    throw;
  }
}

void RunSession::generate() {
  if (kind_ != Kind::generate) throw Error("RunSession::generate() on a capture session");
  check_generation();
  if (mode_ == GenerationMode::masked_diffusion) return generate_diffusion();
  generate_tokens();
}

void RunSession::generate_tokens() {
  const SamplingOptions s = sampling();
  const auto& prompt = prompts_.at(0).ids;
  open_sink(json::object());
  attach_sink();
  run([&] {
    Progress progress("generate: token", s.max_new_tokens);
    const Tokenizer* tok = model_->tokenizer();
    std::vector<TokenStep> steps;
    const auto started = Clock::now();
    double prefill_seconds = 0;
    auto result = generate_autoregressive(*model_, prompt, s, *hooks_, 0, [&](int step, std::int64_t token) {
      if (step == 0) prefill_seconds = seconds_since(started);
      steps.push_back(TokenStep::chose(step, std::int64_t(prompt.size()), token,
                                       tok ? tok->token_string(token) : std::to_string(token)));
      release_free_memory();
      progress.update(step + 1);
    });
    const double decode_seconds = seconds_since(started) - prefill_seconds;
    const std::size_t decoded = result.new_ids.size() - 1;  // tokens chosen after the prefill's
    run_->work_timing = fmt::format("prefill {} tokens {:.0f} ms ({:.0f} tok/s); decode {} tokens {:.2f} s ({:.1f} tok/s)",
                                    prompt.size(), 1000 * prefill_seconds, per_second(prompt.size(), prefill_seconds),
                                    decoded, decode_seconds, per_second(decoded, decode_seconds));
    const RunGeneration g = autoregressive_generation(s, result, std::move(steps), tok);
    if (g.text) std::cout << "generated: " << *g.text << "\n";
    return encode_generation(g);
  });
}

void RunSession::generate_diffusion() {
  const DiffusionOptions d = diffusion();
  const auto& prompt = prompts_.at(0).ids;
  open_sink(json::object());
  attach_sink();
  run([&] {
    Progress progress("generate: denoising step", d.steps);
    const auto started = Clock::now();
    auto result = generate_masked_diffusion(*model_, prompt, d, *hooks_, 0, [&](const DiffusionStep& s) {
      release_free_memory();
      progress.update(s.step + 1, fmt::format(" (block {})", s.block));
    });
    const double seconds = seconds_since(started);
    run_->work_timing = fmt::format("{} denoising steps over {} positions {:.2f} s ({:.3f} s a step)", result.steps.size(),
                                    result.output_ids.size(), seconds,
                                    seconds / double(std::max<std::size_t>(1, result.steps.size())));
    const Tokenizer* tok = model_->tokenizer();
    const RunGeneration g = diffusion_generation(d, settings_.diffusion.confidence_dtype, prompt, result, tok);
    if (g.text) std::cout << "generated: " << *g.text << "\n";
    return encode_generation(g);
  });
}

}  // namespace hooklens
