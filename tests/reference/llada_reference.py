#!/usr/bin/python3
"""An independent reference for LLaDA models and LLaDA's masked-diffusion sampler, in eager PyTorch.

Written only from the documented semantics (../shared/DESIGN.md, "LLaDA" and "LLaDA generation",
and the READMEs of ../shared/fixtures and llada-tiny-a), not from the C++ framework or any upstream
code, so that tests can check the framework on what the fixture does not cover: grouped kv heads,
another rope_theta, a padded embedding, several blocks, uneven schedules, classifier-free guidance,
Gumbel noise and random remasking.

The model runs in float32 like the upstream sampler's float32 checkpoints: the confidence softmax
runs in the logits' dtype, so float32 is what decides. `--check-float64` re-runs every step's
forward pass in float64 on the same input and prints how far float32 is from it.

Random draws all come from ONE torch.Generator().manual_seed(seed), in this order per step: the
Gumbel uniforms [1, T, V] float64 (only when temperature > 0), then the random-remasking uniforms
[1, T] float32 (only with --remasking random). hooklens draws from the same libtorch generator in
the same order, so the draws (written out as step{s}.gumbel_u / step{s}.remask_u) coincide exactly.

Validated against the upstream trace (`check-fixture`): on llada-tiny-a every step's sequence and
committed positions are identical, attention within 2.6e-6 and logits within 5.0e-6 (the check
requires 1e-5 and 5e-5).

Commands (several may be chained in one process with `+`, which saves the torch start-up):
  create DIR [shape options] [--seed N] [--mask-row-scale F]   a random LLaDA model directory
      (a negative --mask-row-scale makes the mask id the argmax where its logit was most negative)
  run MODEL_DIR OUT.safetensors --prompt 1,2,3 --gen-length N --block-length B --steps S
      [--temperature T] [--cfg-scale C] [--remasking low_confidence|random] [--seed N]
      [--confidence-float64] [--check-float64]
  check-fixture FIXTURE_DIR                 compare with the fixture's reference_0.safetensors

Keys written by `run` (T = prompt + gen_length, V = the LM head's rows, H heads):
  prompt_ids, x.init [1,T] I64; per step s: step{s}.x [1,T] I64 (the sequence after step s),
  step{s}.committed [n] I64 (positions step s unmasked, ascending: the k chosen ones minus those whose
  prediction is the mask id, which stay masked), step{s}.confidences [n] F64 (their confidences, or
  their random-remasking draws), step{s}.block [1] I64,
  step{s}.logits [1,T,V] F32 and step{s}.attn.L{l} [1,H,T,T] F32 (the conditional forward pass),
  with --cfg-scale > 0 also step{s}.un_logits / step{s}.un_attn.L{l} (the unconditional pass),
  step{s}.gumbel_u [1,T,V] F64 and step{s}.remask_u [1,T] F32 (the draws, when made);
  final.x [1,T] I64; margin.logit [1] F64: the smallest top-1 minus top-2 gap of the values the
  argmax ran on (logits, or log of the Gumbel-noised values) at committed positions; and
  margin.confidence [1] F64: the smallest gap between the k-th chosen and the best rejected
  confidence. A float32 implementation can only be required to make the same choices when both
  margins are well above float32 noise.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

import safetensors_io  # beside this script
from command_chain import run_chained

# ---------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, a JSON header, then the raw little-endian data.

def read_safetensors(path):
    return {name: torch.from_numpy(array) for name, array in safetensors_io.read(path).items()}


def write_safetensors(path, tensors, metadata=None):
    safetensors_io.write(path, {name: t.detach().contiguous().numpy() for name, t in tensors.items()}, metadata)


# ---------------------------------------------------------------------------------------------
# The model.

# config.json values this reference implements; anything else would be a different model.
_REQUIRED = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
             "alibi": False, "include_bias": False, "input_emb_norm": False, "scale_logits": False,
             "weight_tying": False, "attention_layer_norm": False}


class Llada:
    """A LLaDA directory (config.json + model.safetensors with model.transformer.* names)."""

    def __init__(self, model_dir, dtype=torch.float32):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        for key, value in _REQUIRED.items():
            if cfg.get(key, value) != value:
                raise SystemExit(f"{model_dir}: config {key}={cfg[key]!r} is not implemented here")
        self.dtype = dtype
        self.n_layers, self.n_heads, self.d_model = cfg["n_layers"], cfg["n_heads"], cfg["d_model"]
        self.n_kv_heads = 1 if cfg.get("multi_query_attention") else cfg.get("n_kv_heads") or self.n_heads
        self.d_head = self.d_model // self.n_heads
        self.eps = cfg.get("rms_norm_eps", 1e-5)
        self.theta = cfg["rope_theta"]
        self.mask_id = cfg["mask_token_id"]
        prefix = "model.transformer."
        self.w = {name[len(prefix):]: t.to(dtype) for name, t in
                  read_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
        # The embedding and the LM head have embedding_size rows (padded past vocab_size).
        rows = cfg.get("embedding_size") or cfg["vocab_size"]
        for name in ("wte.weight", "ff_out.weight"):
            if tuple(self.w[name].shape) != (rows, self.d_model):
                raise SystemExit(f"{model_dir}: {name} has shape {list(self.w[name].shape)}, not [{rows}, {self.d_model}]")
        self.vocab = rows

    def _rms_norm(self, x, weight):
        # In float32 (float64 when the whole model is), then the gain.
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * weight

    def _rope(self, t):
        """NeoX "rotate half" on [B, heads, T, hd]: dims [0, hd/2) pair with [hd/2, hd)."""
        T, hd = t.shape[-2], t.shape[-1]
        table = torch.promote_types(self.dtype, torch.float32)
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, hd, 2, dtype=table) / hd))
        freqs = torch.outer(torch.arange(T, dtype=table), inv_freq)
        angles = torch.cat([freqs, freqs], -1)
        half = hd // 2
        rotated = torch.cat([-t[..., half:], t[..., :half]], -1)
        return t * angles.cos().to(t.dtype) + rotated * angles.sin().to(t.dtype)

    def _block(self, l, x):
        w = lambda name: self.w[f"blocks.{l}.{name}.weight"]
        B, T, _ = x.shape
        H, HKV, hd = self.n_heads, self.n_kv_heads, self.d_head
        h = self._rms_norm(x, w("attn_norm"))
        split = lambda t, heads: t.view(B, T, heads, hd).transpose(1, 2)  # [B, heads, T, hd]
        q = self._rope(split(h @ w("q_proj").T, H))
        k = self._rope(split(h @ w("k_proj").T, HKV))
        v = split(h @ w("v_proj").T, HKV)
        kv_of_head = torch.arange(H) // (H // HKV)  # query head h reads kv head h // (H / HKV)
        k, v = k[:, kv_of_head], v[:, kv_of_head]
        pattern = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)  # bidirectional: no mask
        z = (pattern @ v).transpose(1, 2).reshape(B, T, H * hd)
        x = x + z @ w("attn_out").T
        h = self._rms_norm(x, w("ff_norm"))
        gate, up = h @ w("ff_proj").T, h @ w("up_proj").T  # ff_proj is the gate
        x = x + (torch.nn.functional.silu(gate) * up) @ w("ff_out").T
        return x, pattern

    def forward(self, ids):
        """ids [B, T] -> (logits [B, T, V], [attention [B, H, T, T] per layer])."""
        x = self.w["wte.weight"][ids]  # no embedding scaling
        patterns = []
        for l in range(self.n_layers):
            x, pattern = self._block(l, x)
            patterns.append(pattern)
        x = self._rms_norm(x, self.w["ln_f.weight"])
        return x @ self.w["ff_out.weight"].T, patterns  # untied head, no logit scaling


# ---------------------------------------------------------------------------------------------
# LLaDA's generate(): the sampler.

def transfer_counts(masked, steps):
    """Per step of a block: masked // steps, the first masked % steps steps one more."""
    return [masked // steps + (1 if i < masked % steps else 0) for i in range(steps)]


def top_gap(values):
    """Top-1 minus top-2 along the last dimension."""
    top2 = torch.topk(values, 2, -1).values
    return top2[..., 0] - top2[..., 1]


def generate(model, prompt, gen_length, block_length, steps, temperature=0.0, cfg_scale=0.0,
             remasking="low_confidence", seed=0, confidence_float64=False, mask_id=None, float64_model=None):
    """Runs the sampler; returns {key: tensor} as `run` writes them and, with float64_model, the
    largest float32-vs-float64 differences of every step's forward pass."""
    mask_id = model.mask_id if mask_id is None else mask_id
    if gen_length % block_length:
        raise SystemExit(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise SystemExit(f"steps {steps} is not a multiple of the number of blocks {num_blocks}")
    steps_per_block = steps // num_blocks
    g = torch.Generator().manual_seed(seed)
    P, T = len(prompt), len(prompt) + gen_length
    x = torch.full((1, T), mask_id, dtype=torch.long)
    x[0, :P] = torch.tensor(prompt, dtype=torch.long)
    prompt_index = x != mask_id  # what the unconditional copy masks
    out = {"prompt_ids": x[:, :P].clone(), "x.init": x.clone()}
    margin_logit = margin_confidence = math.inf
    drift = {"attn": 0.0, "logits": 0.0}
    s = 0
    for b in range(num_blocks):
        begin, end = P + b * block_length, P + (b + 1) * block_length
        counts = transfer_counts(int((x[:, begin:end] == mask_id).sum()), steps_per_block)
        for k in counts:
            mask_index = x == mask_id
            inputs = x if cfg_scale == 0 else torch.cat([x, x.masked_fill(prompt_index, mask_id)])
            both, patterns = model.forward(inputs)
            out[f"step{s}.logits"] = both[:1]
            for l, p in enumerate(patterns):
                out[f"step{s}.attn.L{l}"] = p[:1]
            logits = both[:1]
            if cfg_scale > 0:
                un = both[1:]
                out[f"step{s}.un_logits"] = un
                for l, p in enumerate(patterns):
                    out[f"step{s}.un_attn.L{l}"] = p[1:]
                logits = un + (cfg_scale + 1) * (logits - un)
            if float64_model is not None:
                logits64, patterns64 = float64_model.forward(inputs)
                drift["logits"] = max(drift["logits"], float((logits64 - both.double()).abs().max()))
                for p, p64 in zip(patterns, patterns64):
                    drift["attn"] = max(drift["attn"], float((p64 - p.double()).abs().max()))

            if temperature > 0:  # Gumbel noise in float64: exp(logits) / (-log u)^T
                l64 = logits.double()
                u = torch.rand(l64.shape, dtype=torch.float64, generator=g)
                out[f"step{s}.gumbel_u"] = u
                x0 = (l64.exp() / (-torch.log(u)) ** temperature).argmax(-1)
                decided_on = l64 - temperature * torch.log(-torch.log(u))  # the same order, in log space
            else:
                x0 = logits.argmax(-1)
                decided_on = logits
            if remasking == "low_confidence":  # softmax of the un-noised logits, at the chosen token
                p = torch.softmax(logits.double() if confidence_float64 else logits, -1)
                confidence = p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            else:
                confidence = torch.rand((1, T), generator=g)
                out[f"step{s}.remask_u"] = confidence.clone()
            confidence[:, end:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, confidence, torch.full_like(confidence, -math.inf))
            chosen = torch.topk(confidence[0], k).indices.sort().values
            x[0, chosen] = x0[0, chosen]

            if k > 0:
                margin_logit = min(margin_logit, float(top_gap(decided_on[0, chosen].double()).min()))
            candidates = confidence[0][torch.isfinite(confidence[0])].double().sort(descending=True).values
            if 0 < k < len(candidates):
                margin_confidence = min(margin_confidence, float(candidates[k - 1] - candidates[k]))
            out[f"step{s}.x"] = x.clone()
            # Committed = unmasked by this step: a chosen position whose prediction is the mask id stays
            # masked (as the fixture's step{s}.unmasked counts it: "1 where step s changed x").
            unmasked = x0[0, chosen] != mask_id
            out[f"step{s}.committed"] = chosen[unmasked]
            out[f"step{s}.confidences"] = confidence[0, chosen][unmasked].double()
            out[f"step{s}.block"] = torch.tensor([b])
            s += 1
    out["final.x"] = x.clone()
    out["margin.logit"] = torch.tensor([margin_logit], dtype=torch.float64)
    out["margin.confidence"] = torch.tensor([margin_confidence], dtype=torch.float64)
    return out, drift


# ---------------------------------------------------------------------------------------------
# Commands.

def cmd_run(args):
    model = Llada(args.model)
    prompt = [int(t) for t in args.prompt.split(",")]
    out, drift = generate(model, prompt, args.gen_length, args.block_length, args.steps, args.temperature,
                          args.cfg_scale, args.remasking, args.seed, args.confidence_float64,
                          float64_model=Llada(args.model, torch.float64) if args.check_float64 else None)
    write_safetensors(args.out, out, {"model": args.model})
    final = out["final.x"][0, len(prompt):].tolist()
    print(f"{args.out}: generated {final}; margins: logit {float(out['margin.logit']):.3g}, "
          f"confidence {float(out['margin.confidence']):.3g}"
          + (f"; float32 vs float64 max abs diff {json.dumps(drift)}" if args.check_float64 else ""))


def _stats(model, ids):
    """Mean max-probability of the attention rows per layer (1/T would be uniform) and max |logit|."""
    logits, patterns = model.forward(ids)
    return [round(float(p.max(-1).values.mean()), 3) for p in patterns], float(logits.abs().max())


def cmd_create(args):
    g = torch.Generator().manual_seed(args.seed)
    normal = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    D, F, L, H, HKV = args.d_model, args.mlp, args.layers, args.heads, args.kv_heads
    V = args.embedding_size or args.vocab
    hd = D // H
    # N(0, 1/fan_in) weights; q/k scaled up so attention is sharp; norm gains 1 + 0.2 N so a loader
    # that ignores them fails.
    linear = lambda out_dim, in_dim, scale=1.0: normal(out_dim, in_dim) * (scale / math.sqrt(in_dim))
    gain = lambda: 1 + 0.2 * normal(D)
    w = {"wte.weight": normal(V, D)}
    for l in range(L):
        p = f"blocks.{l}."
        w[p + "attn_norm.weight"] = gain()
        w[p + "q_proj.weight"] = linear(H * hd, D, args.qk_scale)
        w[p + "k_proj.weight"] = linear(HKV * hd, D, args.qk_scale)
        w[p + "v_proj.weight"] = linear(HKV * hd, D)
        w[p + "attn_out.weight"] = linear(D, H * hd)
        w[p + "ff_norm.weight"] = gain()
        w[p + "ff_proj.weight"] = linear(F, D)
        w[p + "up_proj.weight"] = linear(F, D)
        w[p + "ff_out.weight"] = linear(D, F)
    w["ln_f.weight"] = gain()
    w["ff_out.weight"] = linear(V, D, 2.0)
    w["ff_out.weight"][args.mask_id] *= args.mask_row_scale  # > 1: the mask id is often the argmax

    # LLaDA's config.json fields (as in llada-tiny-a), with this model's shape.
    cfg = {"activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
           "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
           "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": D,
           "embedding_dropout": 0.0, "embedding_size": V, "eos_token_id": args.eos, "flash_attention": False,
           "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
           "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
           "layer_norm_with_affine": True, "mask_token_id": args.mask_id, "max_sequence_length": args.context,
           "mlp_hidden_size": F, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
           "n_heads": H, "n_kv_heads": HKV, "n_layers": L, "pad_token_id": args.eos, "precision": "amp_bf16",
           "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
           "rope_theta": args.rope_theta, "scale_logits": False, "use_cache": False, "vocab_size": args.vocab,
           "weight_tying": False}
    os.makedirs(args.dir, exist_ok=True)
    with open(os.path.join(args.dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_safetensors(os.path.join(args.dir, "model.safetensors"),
                      {"model.transformer." + n: t.float() for n, t in w.items()}, {"format": "pt"})
    if args.verbose:
        ids = torch.tensor([[(i * 7919 + 13) % args.vocab for i in range(min(args.context, 32))]])
        sharpness, logit = _stats(Llada(args.dir), ids)
        print(f"{args.dir}: attention mean max-probability per layer {sharpness}, max |logit| {logit:.2f}")


def cmd_check_fixture(args):
    """Compares a full generate() with the upstream trace of a fixture; exits 1 on a mismatch."""
    model = Llada(args.fixture)
    ref = read_safetensors(os.path.join(args.fixture, "reference_0.safetensors"))
    with open(os.path.join(args.fixture, "generation.json")) as f:
        kw = json.load(f)["runs"][0]["generate_kwargs"]
    if kw["mask_id"] != model.mask_id:
        raise SystemExit(f"{args.fixture}: generation.json's mask_id differs from config.json's")
    out, drift = generate(model, ref["prompt_ids"][0].tolist(), kw["gen_length"], kw["block_length"], kw["steps"],
                          kw["temperature"], kw["cfg_scale"], kw["remasking"],
                          float64_model=Llada(args.fixture, torch.float64))
    worst = {"attn": 0.0, "logits": 0.0}
    diff = lambda a, b: float((a.double() - b.double()).abs().max())
    ids_ok = torch.equal(out["x.init"], ref["x.init"]) and torch.equal(out["final.x"], ref["final.x"])
    for s in range(kw["steps"]):
        ids_ok &= torch.equal(out[f"step{s}.x"], ref[f"step{s}.x"])
        ids_ok &= out[f"step{s}.committed"].tolist() == ref[f"step{s}.unmasked"][0].nonzero()[:, 0].tolist()
        worst["logits"] = max(worst["logits"], diff(out[f"step{s}.logits"], ref[f"step{s}.logits"]))
        for l in range(model.n_layers):
            worst["attn"] = max(worst["attn"], diff(out[f"step{s}.attn.L{l}"], ref[f"step{s}.attn.L{l}"]))
    ok = ids_ok and worst["attn"] < 1e-5 and worst["logits"] < 5e-5
    print(f"{args.fixture}: {kw['steps']} steps, sequences and committed positions "
          f"{'equal' if ids_ok else 'DIFFER'}, max abs diff {json.dumps(worst)} -> {'ok' if ok else 'MISMATCH'}; "
          f"own float32 vs float64 {json.dumps(drift)}")
    if not ok:
        raise SystemExit(1)


def parser():
    p = argparse.ArgumentParser(prog="llada_reference.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="write a random LLaDA model directory")
    c.add_argument("dir")
    c.add_argument("--d-model", type=int, default=48)
    c.add_argument("--layers", type=int, default=3)
    c.add_argument("--heads", type=int, default=6)
    c.add_argument("--kv-heads", type=int, default=2)
    c.add_argument("--mlp", type=int, default=96)
    c.add_argument("--vocab", type=int, default=300)
    c.add_argument("--embedding-size", type=int, default=0, help="padded rows of wte/ff_out (0: vocab)")
    c.add_argument("--mask-id", type=int, default=290)
    c.add_argument("--eos", type=int, default=291)
    c.add_argument("--context", type=int, default=64)
    c.add_argument("--rope-theta", type=float, default=10000.0)
    c.add_argument("--qk-scale", type=float, default=2.0)
    c.add_argument("--mask-row-scale", type=float, default=1.0, help="scales the mask id's LM head row")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--verbose", action="store_true", help="print attention sharpness and logit size")
    c.set_defaults(func=cmd_create)
    r = sub.add_parser("run", help="run the sampler and write every step")
    r.add_argument("model")
    r.add_argument("out")
    r.add_argument("--prompt", required=True, help="comma-separated token ids")
    r.add_argument("--gen-length", type=int, required=True)
    r.add_argument("--block-length", type=int, required=True)
    r.add_argument("--steps", type=int, required=True)
    r.add_argument("--temperature", type=float, default=0.0)
    r.add_argument("--cfg-scale", type=float, default=0.0)
    r.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--confidence-float64", action="store_true", help="MMaDA's float64 confidence softmax")
    r.add_argument("--check-float64", action="store_true", help="print float32 vs float64 forward differences")
    r.set_defaults(func=cmd_run)
    f = sub.add_parser("check-fixture", help="compare with a fixture's upstream generate() trace")
    f.add_argument("fixture")
    f.set_defaults(func=cmd_check_fixture)
    return p


def main(argv):
    torch.set_grad_enabled(False)
    run_chained(argv, parser)


if __name__ == "__main__":
    main(sys.argv[1:])
