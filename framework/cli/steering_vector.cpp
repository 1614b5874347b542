// `hooklens steering-vector`: the difference of a hook point's mean activation over two sets of
// prompts (positive minus negative), written as one float32 tensor [d] to a safetensors file that
// `--steer` reads (docs/interventions.md, "Steering vectors").
#include "cli.h"

#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/plugin.h>
#include <hooklens/runtime.h>
#include <hooklens/safetensors.h>
#include <hooklens/text.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <set>

namespace hooklens::cli {
namespace {

struct SteeringOptions {
  std::string model, adapter, tokenizer, spec, hook, out, name = "steering", positions = "all";
  std::vector<std::string> positive, negative, positive_ids, negative_ids;
  bool normalize = false;
  int threads = 0;
};

// One prompt of a set: its ids, and how the metadata names it (the text, or the ids).
struct SetPrompt {
  std::vector<std::int64_t> ids;
  std::string label;
};

// The prompts of one set (`which` is "positive" or "negative"): texts through the model's
// tokenizer, as `hooklens capture --prompt` tokenizes them, then id lists; each checked against
// the model's vocabulary and context.
std::vector<SetPrompt> read_set(const std::string& which, const std::vector<std::string>& texts,
                                const std::vector<std::string>& id_lists, const Model& model) {
  const ModelInfo& info = model.info();
  std::vector<SetPrompt> prompts;
  for (const std::string& text : texts) {
    if (!model.tokenizer())
      throw UsageError(fmt::format("{} has no tokenizer: give --{}-ids 1,2,3, or --tokenizer DIR", info.path, which));
    SetPrompt p{model.tokenizer()->encode(text), text};
    if (p.ids.empty()) throw UsageError(fmt::format("--{} '{}' has no tokens", which, brief_text(text)));
    prompts.push_back(std::move(p));
  }
  for (const std::string& list : id_lists) {
    SetPrompt p{parse_token_ids(list, "--" + which + "-ids"), "ids " + list};
    if (p.ids.empty()) throw UsageError(fmt::format("--{}-ids '{}' has no tokens", which, brief_text(list)));
    prompts.push_back(std::move(p));
  }
  if (prompts.empty())
    throw UsageError(fmt::format("give at least one --{} TEXT or --{}-ids 1,2,3 (a steering vector is the mean over "
                                 "the positive prompts minus the mean over the negative ones)", which, which));
  for (const SetPrompt& p : prompts) {
    if (std::int64_t(p.ids.size()) > info.n_ctx)
      throw UsageError(fmt::format("--{} '{}' has {} tokens, more than the model's context of {}", which, brief_text(p.label),
                                   p.ids.size(), info.n_ctx));
    for (const std::int64_t id : p.ids)
      if (info.vocab_size > 0 && id >= info.vocab_size)
        throw UsageError(fmt::format("--{} '{}': token id {} is outside the vocabulary of {}", which, brief_text(p.label), id,
                                     info.vocab_size));
  }
  return prompts;
}

// The hook point named exactly `hook`, of dims [batch, pos, X]; UsageError naming the valid ones.
void check_hook(const Model& model, const std::string& hook) {
  const std::vector<HookPointInfo> points = model.hook_points();
  const auto found = std::find_if(points.begin(), points.end(), [&](const HookPointInfo& p) { return p.name == hook; });
  // Valid names, per-layer points shown once as blocks.{L}.NAME (as `hooklens info` lists them).
  const std::vector<std::string> names = listed_names(points, [](const HookPointInfo& p) {
    return p.dims.empty() || (p.dims.size() == 3 && p.dims[1] == "pos");
  });
  const int layers = model.info().n_layers;
  const std::string valid = fmt::format("{}{}", fmt::join(names, ", "), layers > 0 ? fmt::format(" ({{L}} = 0..{})", layers - 1) : "");
  if (found == points.end())
    throw UsageError(fmt::format("--hook '{}' is not a hook point of {} (an exact name, no pattern); valid: {}",
                                 brief_text(hook), model.info().path, valid));
  // TorchScript models state no dims: their tensor is checked when it fires.
  if (!found->dims.empty() && (found->dims.size() != 3 || found->dims[1] != "pos"))
    throw UsageError(fmt::format("--hook {} has dims [{}]: a steering vector needs a hook of dims [batch, pos, X]; valid: {}",
                                 hook, fmt::join(found->dims, ", "), valid));
}

// The mean over the prompts of each prompt's mean over its positions (all, or only the last) of
// `hook`, in float64: one forward pass per prompt, stopped after the hook (no logits, no KV cache).
at::Tensor set_mean(Model& model, const std::string& hook, const std::vector<SetPrompt>& prompts, bool last_only,
                    const std::string& which) {
  at::Tensor sum;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    at::Tensor mean;
    HookSet hooks;
    hooks.add({{hook}}, [&](std::string_view, const CaptureContext&, at::Tensor& t) {
      if (t.dim() != 3 || t.size(0) != 1 || t.size(1) != std::int64_t(prompts[i].ids.size()))
        throw UsageError(fmt::format("--hook {} fired a tensor of shape {}: a steering vector needs [batch, pos, X]", hook,
                                     nlohmann::json(t.sizes().vec()).dump()));
      const at::Tensor rows = last_only ? t[0].slice(0, t.size(1) - 1) : t[0];
      mean = rows.to(at::kDouble).mean(0);
    });
    const at::Tensor ids = at::tensor(prompts[i].ids, at::kLong).unsqueeze(0);
    CaptureContext ctx;
    ctx.prompt = int(i);
    model.forward(ids, hooks, ctx, nullptr, Logits::none);
    if (!mean.defined())
      throw Error(fmt::format("{}: the forward pass of --{} '{}' never reached hook {}", model.info().path, which,
                              brief_text(prompts[i].label), hook));
    sum = sum.defined() ? sum + mean : mean;
  }
  return sum / double(prompts.size());
}

void run(const SteeringOptions& o) {
  if (!ends_with(o.out, ".safetensors")) throw UsageError(fmt::format("--out '{}' must name a .safetensors file", o.out));
  if (o.name.empty() || o.name.find(':') != std::string::npos)
    throw UsageError(fmt::format("--name '{}' must be a non-empty tensor name without ':' (a vector is named FILE:NAME)", o.name));
  init_runtime(o.threads);
  PluginRegistry registry;
  LoadOptions load;
  load.tokenizer = o.tokenizer;
  load.spec = o.spec;
  const std::shared_ptr<Model> model = open_model(registry, o.model, o.adapter, load);
  check_hook(*model, o.hook);
  const std::vector<SetPrompt> positive = read_set("positive", o.positive, o.positive_ids, *model);
  const std::vector<SetPrompt> negative = read_set("negative", o.negative, o.negative_ids, *model);

  const bool last_only = o.positions == "last";
  at::Tensor vector = set_mean(*model, o.hook, positive, last_only, "positive") -
                      set_mean(*model, o.hook, negative, last_only, "negative");
  const double raw_norm = vector.norm().item<double>();
  if (!std::isfinite(raw_norm))
    throw Error(fmt::format("the steering vector of {} is not finite (the model's activations overflowed)", o.hook));
  if (o.normalize) {
    if (raw_norm == 0) throw UsageError("--normalize: the positive and negative means are equal, so there is no direction");
    vector = vector / raw_norm;
  }
  const at::Tensor stored = vector.to(at::kFloat).contiguous();
  const auto labels = [](const std::vector<SetPrompt>& set) {
    nlohmann::json out = nlohmann::json::array();
    for (const SetPrompt& p : set) out.push_back(p.label);
    return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  const std::map<std::string, std::string> metadata = {
      {"format", "hooklens-steering-vector"},
      {"hook", o.hook},
      {"model", model->info().path},
      {"positions", o.positions},
      {"normalized", o.normalize ? "true" : "false"},
      {"norm_before_normalize", fmt::format("{}", raw_norm)},
      {"positive", labels(positive)},
      {"negative", labels(negative)}};
  write_safetensors(o.out, {{o.name, stored}}, metadata);
  std::cout << fmt::format("steering vector at {}: mean over {} positive minus {} negative prompts ({} positions), d {}, "
                           "norm {:.6g}{}\n",
                           o.hook, positive.size(), negative.size(), o.positions, stored.size(0), stored.norm().item<double>(),
                           o.normalize ? fmt::format(" (normalized from {:.6g})", raw_norm) : "")
            << fmt::format("wrote {} (tensor '{}'): steer with --steer '{}={}:{}*SCALE'\n", o.out, o.name, o.hook, o.out, o.name);
}

}  // namespace

void add_steering_vector_command(CLI::App& app) {
  auto o = std::make_shared<SteeringOptions>();
  CLI::App* cmd = app.add_subcommand(
      "steering-vector",
      "Write a steering vector: a hook's mean activation over --positive prompts minus over --negative ones");
  cmd->footer(
      "The vector is mean(positive) - mean(negative): each prompt is first averaged over its positions (all, or the "
      "last only), then the prompts of a set are averaged, each weighing the same. It is written as one float32 tensor "
      "[X] named --name to --out, for steering a run at the same hook: --steer 'HOOK=FILE:NAME*SCALE'.\n"
      "Example: hooklens steering-vector --model models/toy-neo --hook blocks.1.hook_resid_post --positive 'Tom was happy' "
      "--negative 'Tom was sad' --out happy.safetensors\n"
      "The hook is an exact hook point name of dims [batch, pos, X] ('hooklens info --model DIR' lists them); the "
      "vector has the X entries. Its file's metadata records the hook, the model, the positions and the prompts.");
  cmd->add_option("--model", o->model, "Model directory (or file) to load")->required();
  cmd->add_option("--adapter", o->adapter, "Adapter plugin to use instead of the one chosen from config.json");
  cmd->add_option("--tokenizer", o->tokenizer, "Tokenizer: a directory with tokenizer.json or vocab.json + merges.txt, or a llama2.c tokenizer file");
  cmd->add_option("--spec", o->spec, "Architecture spec of a state dict: a JSON file or a shipped spec name");
  cmd->add_option("--hook", o->hook, "The hook point, an exact name of dims [batch, pos, X], e.g. blocks.1.hook_resid_post")->required();
  cmd->add_option("--positive", o->positive, "A prompt of the positive set (text; repeatable)");
  cmd->add_option("--negative", o->negative, "A prompt of the negative set (text; repeatable)");
  cmd->add_option("--positive-ids", o->positive_ids, "A positive prompt as token ids, e.g. 464,3797 (repeatable)");
  cmd->add_option("--negative-ids", o->negative_ids, "A negative prompt as token ids (repeatable)");
  cmd->add_option("--positions", o->positions, "Average each prompt over all its positions, or take only its last")
      ->capture_default_str()
      ->check(CLI::IsMember({"all", "last"}));
  cmd->add_flag("--normalize", o->normalize, "Scale the vector to norm 1 (the file's metadata keeps the norm before)");
  cmd->add_option("--out", o->out, "The safetensors file to write")->required();
  cmd->add_option("--name", o->name, "The tensor's name in the file")->capture_default_str();
  cmd->add_option("--threads", o->threads, "Compute threads (0 = one per core)")->capture_default_str();
  cmd->callback([o] { run(*o); });
}

}  // namespace hooklens::cli
