// `hooklens capture` (one forward pass per prompt) and `hooklens generate` (every generation step),
// both writing a run directory: the options bind to RunSettings, and a RunSession does the work.
#include "cli.h"

#include <hooklens/error.h>
#include <hooklens/model.h>
#include <hooklens/run_session.h>

#include <fmt/format.h>

namespace hooklens::cli {
namespace {

void add_common_options(CLI::App& cmd, RunSettings& o) {
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
  const std::string changes =
      "Interventions (docs/interventions.md). A SITE is one hook point, whole or part: HOOK[KEY=RANGE,...] with KEY a "
      "dim of the point (pos, head, neuron, d_model, ...) or step/block, RANGE I, A:B, A: or :B (negative: from the "
      "end), e.g. 'blocks.1.attn.hook_z[head=3,pos=-1]'";
  cmd.add_option("--ablate", o.interventions.ablate, "Zero-ablate head H of layer L (LAYER.HEAD), or a SITE (repeatable)")->group(changes);
  cmd.add_option("--patch", o.interventions.patch,
                 "Activation patching: SITE takes the value --patch-from RUN captured there (same prompt, step, block; a "
                 "run of one prompt patches every prompt) (repeatable)")
      ->group(changes);
  cmd.add_option("--patch-from", o.interventions.patch_from, "The run directory --patch takes its values from")->group(changes);
  cmd.add_option("--steer", o.interventions.steer,
                 "Steering: SITE=FILE.safetensors[:TENSOR][*SCALE] adds SCALE times the vector (the point's last dim) "
                 "at every selected position (repeatable; `hooklens steering-vector` makes one)")
      ->group(changes);
  cmd.add_option("--mean-ablate", o.interventions.mean_ablate,
                 "SITE takes its mean over every position of --ablate-from's sequences; SITE@FILE[:TENSOR] replaces only "
                 "the component along that direction (repeatable)")
      ->group(changes);
  cmd.add_option("--resample-ablate", o.interventions.resample_ablate,
                 "SITE takes the value of one of --ablate-from's sequences (drawn per prompt with --seed) at the same "
                 "positions; SITE@FILE[:TENSOR]: only along that direction (repeatable)")
      ->group(changes);
  cmd.add_option("--ablate-from", o.interventions.ablate_from,
                 "The data of --mean-ablate / --resample-ablate: a run directory that captured their points, or a text "
                 "file cut into --ablate-seq-len token sequences")
      ->group(changes);
  cmd.add_option("--ablate-seq-len", o.interventions.ablate_seq_len, "Tokens per sequence of a text --ablate-from")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20))
      ->group(changes);
  cmd.add_option("--ablate-sequences", o.interventions.ablate_sequences, "Most sequences of a text --ablate-from")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20))
      ->group(changes);
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
  auto capture = std::make_shared<RunSettings>();
  CLI::App* cap = app.add_subcommand("capture", "Run one forward pass per prompt and capture hook points to a run directory");
  add_common_options(*cap, *capture);
  cap->add_option("--batch-size", capture->batch_size,
                  "Prompts of the same length run through the model together, up to this many (captures are the same "
                  "as one at a time)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cap->add_option("--seed", capture->seed, "Random seed (which sequence --resample-ablate draws)")->capture_default_str();
  const std::string ranks = "Over several processes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set, as scripts/launch.sh does)";
  cap->add_option("--timeout", capture->timeout_seconds,
                  "Seconds a rank may fail to join, or stay silent, before the run stops naming it")
      ->capture_default_str()
      ->check(CLI::Range(1, 7 * 24 * 3600))
      ->group(ranks);
  cap->add_flag("--resume", capture->resume,
                "Complete a failed run in --out: keep the sequences whose captures were written and verified, capture "
                "the rest")
      ->group(ranks);
  cap->add_flag("--local-out", capture->local_out,
                "--out is each machine's own storage: every machine keeps its ranks' parts there, and `hooklens merge` "
                "joins them")
      ->group(ranks);
  cap->callback([capture] { RunSession(*capture, RunSession::Kind::capture).capture(); });

  auto gen = std::make_shared<RunSettings>();
  CLI::App* g = app.add_subcommand(
      "generate",
      "Generate and capture hook points at every step. Causal models generate token by token (step 0 = "
      "prefill); bidirectional models (LLaDA, MMaDA) by masked diffusion (every denoising step of every block)");
  add_common_options(*g, *gen);
  auto* temp = g->add_option("--temperature", gen->temperature,
                             "Sampling temperature (autoregressive), or Gumbel-noise temperature (diffusion; default 0)");
  g->add_option("--seed", gen->seed, "Random seed")->capture_default_str();
  const std::string ar = "Autoregressive", md = "Masked diffusion";
  RunSettings::Autoregressive& a = gen->autoregressive;
  std::vector<CLI::Option*> ar_only{
      g->add_option("--max-new-tokens", a.max_new_tokens, "Tokens to generate")->capture_default_str()->group(ar),
      // Greedy is what no sampling option gives: the flag only refuses to be mixed with them.
      g->add_flag("--greedy", "Pick the most likely token (the default)")->group(ar),
      g->add_option("--top-k", a.top_k, "Sample from the k most likely tokens")->group(ar),
      g->add_option("--top-p", a.top_p, "Sample from the smallest set with this probability")->group(ar),
      g->add_flag("--no-stop-at-eos", a.no_stop_at_eos, "Keep generating after the end-of-text token")->group(ar)};
  ar_only[1]->excludes(temp)->excludes(ar_only[2])->excludes(ar_only[3]);
  RunSettings::Diffusion& d = gen->diffusion;
  std::vector<CLI::Option*> md_only{
      g->add_option("--gen-length", d.gen_length, "Tokens to generate (mask tokens after the prompt)")->capture_default_str()->group(md),
      g->add_option("--steps", d.steps, "Denoising steps in all (a multiple of the number of blocks)")->capture_default_str()->group(md),
      g->add_option("--block-length", d.block_length, "Semi-autoregressive block length (default: gen length, one block)")->group(md),
      g->add_option("--cfg-scale", d.cfg_scale, "Classifier-free guidance scale (0 = off)")->capture_default_str()->group(md),
      g->add_option("--remasking", d.remasking, "Which positions to commit: low_confidence | random")->capture_default_str()->group(md),
      g->add_option("--confidence-dtype", d.confidence_dtype, "Confidence softmax in float32 (LLaDA) or float64 (MMaDA)")->capture_default_str()->group(md),
      g->add_option("--mask-id", d.mask_id, "Mask token id (default: config.json's mask_token_id)")->group(md),
      g->add_flag("--stop-at-eos", d.stop_at_eos, "Stop after the first block in which end-of-text was committed")->group(md)};
  g->callback([gen, ar_only, md_only] {
    RunSession session(*gen, RunSession::Kind::generate);
    // Options of the other kind of generation are mistakes (the session cannot tell a default from a choice).
    const bool diffusion = session.mode() == GenerationMode::masked_diffusion;
    const std::string& path = session.model().info().path;
    for (const auto* opt : diffusion ? ar_only : md_only)
      if (opt->count())
        throw UsageError(fmt::format("{} is for {} models; {} is {}", opt->get_name(), diffusion ? "autoregressive" : "masked-diffusion",
                                     path, diffusion ? "a masked-diffusion model" : "autoregressive"));
    session.generate();
  });
}

}  // namespace hooklens::cli
