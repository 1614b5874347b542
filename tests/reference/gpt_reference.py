#!/usr/bin/python3
"""An independent float64 reference for GPT-Neo and GPT-2, in eager PyTorch.

Written only from the documented semantics (../shared/DESIGN.md and the READMEs of the fixtures
tiny-neo-a and tiny-gpt2-a), not from the C++ framework or any upstream code, so that tests can
check the framework on shapes, prompt lengths and local windows the fixtures do not cover.

Validated against the Hugging Face fixtures (`check-fixture`): on every prompt of tiny-neo-a and
tiny-gpt2-a the attention patterns agree within 1e-5, the logits within 1e-4, the hidden states
within 1e-5, and greedy generation (full recomputation) gives the same ids and per-step attention.

Commands (several may be chained in one process with `+`, which saves the torch start-up):
  create DIR --arch gpt_neo|gpt2 [shape options] [--seed N]   a random model directory
  run MODEL_DIR OUT.safetensors --ids 1,2,3 [--generate N]      the reference outputs
  check-fixture FIXTURE_DIR                                     compare with reference_*.safetensors

Keys written by `run` (floats are F64, ids I64):
  input_ids [1,T]; embed [1,T,D] (token + position embedding); attn.L{l} [1,H,T,T];
  resid_post.L{l} [1,T,D] (output of block l); ln_final [1,T,D]; logits [1,T,V];
  with --generate N (greedy, EOS ignored, every step recomputed from scratch without a cache):
  gen.ids [1,T+N]; gen.step{s}.attn.L{l}: s = 0 the prefill pattern [1,H,T,T], s > 0 the last
  query row [1,H,1,T+s]; gen.step{s}.logits [1,V]; gen.min_gap [1]: the smallest top-1 minus
  top-2 logit gap over the steps (a near tie would make a float32 implementation's choice moot).
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

def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def linear(x, weight, bias=None):  # nn.Linear: weight [out, in]
    y = x @ weight.T
    return y if bias is None else y + bias


def conv1d(x, weight, bias):  # GPT-2's Conv1D: weight [in, out]
    return x @ weight + bias


def expand_attention_types(types):
    """[[["global","local"],2]] -> global, local, global, local."""
    return [kind for kinds, repeat in types for _ in range(repeat) for kind in kinds]


class Gpt:
    """GPT-Neo or GPT-2 from a Hugging Face directory (config.json + model.safetensors)."""

    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.arch = cfg["model_type"]
        tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        self.w = {name[len("transformer."):] if name.startswith("transformer.") else name: t.double()
                  for name, t in tensors.items()}
        if cfg.get("activation_function", "gelu_new") != "gelu_new":
            raise SystemExit(f"{model_dir}: only gelu_new is implemented")
        self.eps = cfg.get("layer_norm_epsilon", 1e-5)
        if self.arch == "gpt_neo":
            self.d_model, self.n_heads = cfg["hidden_size"], cfg["num_heads"]
            self.n_ctx = cfg["max_position_embeddings"]
            self.kinds = expand_attention_types(cfg["attention_types"])
            if "attention_layers" in cfg and cfg["attention_layers"] != self.kinds:
                raise SystemExit(f"{model_dir}: attention_layers disagrees with attention_types")
            self.window = cfg["window_size"]
            self.scale = 1.0  # GPT-Neo does not scale its scores
        elif self.arch == "gpt2":
            self.d_model, self.n_heads = cfg["n_embd"], cfg["n_head"]
            self.n_ctx = cfg["n_positions"]
            self.kinds = ["global"] * cfg["n_layer"]
            self.window = None
            self.scale = 1.0 / math.sqrt(self.d_model // self.n_heads) if cfg.get("scale_attn_weights", True) else 1.0
        else:
            raise SystemExit(f"{model_dir}: model_type {self.arch!r} is neither gpt_neo nor gpt2")
        self.n_layers = len(self.kinds)
        self.d_head = self.d_model // self.n_heads

    def _allowed(self, kind, T):
        i = torch.arange(T).unsqueeze(1)  # query
        j = torch.arange(T).unsqueeze(0)  # key
        allowed = j <= i
        if kind == "local":
            allowed &= (i - j) < self.window
        return allowed

    def _attend(self, q, k, v, kind):
        """q, k, v [T, D] -> (z [T, D], pattern [H, T, T])."""
        T, H, dh = q.shape[0], self.n_heads, self.d_head
        heads = lambda t: t.view(T, H, dh).transpose(0, 1)  # [H, T, dh]
        scores = heads(q) @ heads(k).transpose(1, 2) * self.scale
        scores = scores.masked_fill(~self._allowed(kind, T), float("-inf"))
        pattern = torch.softmax(scores, -1)
        z = (pattern @ heads(v)).transpose(0, 1).reshape(T, H * dh)
        return z, pattern

    def _block(self, l, x):
        w = lambda name: self.w[f"h.{l}.{name}"]
        h = layer_norm(x, w("ln_1.weight"), w("ln_1.bias"), self.eps)
        if self.arch == "gpt_neo":
            a = "attn.attention."
            q, k, v = (linear(h, w(a + n + "_proj.weight")) for n in "qkv")  # no q/k/v bias
            z, pattern = self._attend(q, k, v, self.kinds[l])
            x = x + linear(z, w(a + "out_proj.weight"), w(a + "out_proj.bias"))
            h = layer_norm(x, w("ln_2.weight"), w("ln_2.bias"), self.eps)
            x = x + linear(gelu_new(linear(h, w("mlp.c_fc.weight"), w("mlp.c_fc.bias"))),
                           w("mlp.c_proj.weight"), w("mlp.c_proj.bias"))
        else:
            q, k, v = conv1d(h, w("attn.c_attn.weight"), w("attn.c_attn.bias")).split(self.d_model, -1)
            z, pattern = self._attend(q, k, v, self.kinds[l])
            x = x + conv1d(z, w("attn.c_proj.weight"), w("attn.c_proj.bias"))
            h = layer_norm(x, w("ln_2.weight"), w("ln_2.bias"), self.eps)
            x = x + conv1d(gelu_new(conv1d(h, w("mlp.c_fc.weight"), w("mlp.c_fc.bias"))),
                           w("mlp.c_proj.weight"), w("mlp.c_proj.bias"))
        return x, pattern

    def forward(self, ids, last_logits_only=False):
        T = len(ids)
        if T > self.n_ctx:
            raise SystemExit(f"{T} tokens exceed the context of {self.n_ctx}")
        x = self.w["wte.weight"][torch.tensor(ids)] + self.w["wpe.weight"][:T]
        out = {"embed": x, "attn": [], "resid_post": []}
        for l in range(self.n_layers):
            x, pattern = self._block(l, x)
            out["attn"].append(pattern)
            out["resid_post"].append(x)
        out["ln_final"] = layer_norm(x, self.w["ln_f.weight"], self.w["ln_f.bias"], self.eps)
        # lm_head is tied to wte and has no bias.
        out["logits"] = linear(out["ln_final"][-1:] if last_logits_only else out["ln_final"], self.w["wte.weight"])
        return out

    def generate(self, ids, n_new):
        """Greedy, recomputing the whole sequence at every step (no cache)."""
        ids, steps, min_gap = list(ids), [], float("inf")
        for s in range(n_new):
            out = self.forward(ids, last_logits_only=True)
            logits = out["logits"][0]
            top2 = torch.topk(logits, 2).values
            min_gap = min(min_gap, float(top2[0] - top2[1]))
            rows = [p if s == 0 else p[:, -1:, :] for p in out["attn"]]
            steps.append((rows, logits))
            ids.append(int(logits.argmax()))
        return ids, steps, min_gap


# ---------------------------------------------------------------------------------------------
# Commands.

def cmd_run(args):
    model = Gpt(args.model)
    ids = [int(t) for t in args.ids.split(",")]
    out = model.forward(ids)
    result = {"input_ids": torch.tensor([ids]), "embed": out["embed"][None]}
    for l in range(model.n_layers):
        result[f"attn.L{l}"] = out["attn"][l][None]
        result[f"resid_post.L{l}"] = out["resid_post"][l][None]
    result["ln_final"] = out["ln_final"][None]
    result["logits"] = out["logits"][None]
    if args.generate:
        seq, steps, min_gap = model.generate(ids, args.generate)
        result["gen.ids"] = torch.tensor([seq])
        for s, (rows, logits) in enumerate(steps):
            for l, row in enumerate(rows):
                result[f"gen.step{s}.attn.L{l}"] = row[None]
            result[f"gen.step{s}.logits"] = logits[None]
        result["gen.min_gap"] = torch.tensor([min_gap], dtype=torch.float64)
    write_safetensors(args.out, result, {"model": args.model})


def _sharpness(model, ids):
    """Mean max-probability of the attention rows: near 1/keys would mean uniform attention."""
    return [float(p.max(-1).values.mean()) for p in model.forward(ids)["attn"]]


def cmd_create(args):
    g = torch.Generator().manual_seed(args.seed)
    normal = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    D, F, V, P, L = args.hidden, args.intermediate, args.vocab, args.positions, args.layers
    # As the fixtures were made: N(0, 0.02) weights, LayerNorm gains 1 + 0.2 N, biases 0.01 N,
    # q/k scaled up so attention is sharp, v/mlp/output scaled so every layer matters.
    w = {"transformer.wte.weight": 0.02 * normal(V, D) * 2, "transformer.wpe.weight": 0.02 * normal(P, D) * 2}
    ln = lambda prefix: {prefix + ".weight": 1 + 0.2 * normal(D), prefix + ".bias": 0.01 * normal(D)}
    bias = lambda n: 0.01 * normal(n)
    for l in range(L):
        p = f"transformer.h.{l}."
        w.update(ln(p + "ln_1"))
        if args.arch == "gpt_neo":
            a = p + "attn.attention."
            w[a + "q_proj.weight"] = 0.02 * normal(D, D) * 8
            w[a + "k_proj.weight"] = 0.02 * normal(D, D) * 8
            w[a + "v_proj.weight"] = 0.02 * normal(D, D) * 3
            w[a + "out_proj.weight"], w[a + "out_proj.bias"] = 0.02 * normal(D, D) * 10, bias(D)
            w.update(ln(p + "ln_2"))
            w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = 0.02 * normal(F, D) * 3, bias(F)
            w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = 0.02 * normal(D, F) * 10, bias(D)
        else:  # Conv1D weights are [in, out]; c_attn's output columns are q, k, v
            qkv = 0.02 * normal(D, 3 * D)
            qkv[:, :2 * D] *= 12
            qkv[:, 2 * D:] *= 3
            w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = qkv, bias(3 * D)
            w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = 0.02 * normal(D, D) * 10, bias(D)
            w.update(ln(p + "ln_2"))
            w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"] = 0.02 * normal(D, F) * 3, bias(F)
            w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"] = 0.02 * normal(F, D) * 10, bias(D)
    w.update(ln("transformer.ln_f"))

    common = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "vocab_size": V,
              "bos_token_id": V - 1, "eos_token_id": V - 1, "initializer_range": 0.02, "use_cache": True}
    if args.arch == "gpt_neo":
        types = json.loads(args.attention_types)
        if len(expand_attention_types(types)) != L:
            raise SystemExit(f"--attention-types names {len(expand_attention_types(types))} layers, not {L}")
        cfg = {"architectures": ["GPTNeoForCausalLM"], "model_type": "gpt_neo", "hidden_size": D,
               "num_layers": L, "num_heads": args.heads, "attention_types": types, "window_size": args.window,
               "max_position_embeddings": P, "intermediate_size": F, "attention_dropout": 0.0,
               "embed_dropout": 0.0, "resid_dropout": 0.0, **common}
    else:
        cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": D, "n_layer": L,
               "n_head": args.heads, "n_positions": P, "n_inner": F, "scale_attn_weights": True,
               "attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0, **common}
    os.makedirs(args.dir, exist_ok=True)
    with open(os.path.join(args.dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    write_safetensors(os.path.join(args.dir, "model.safetensors"), {n: t.float() for n, t in w.items()},
                      {"format": "pt"})
    if args.verbose:
        ids = [(i * 7919 + 13) % V for i in range(min(P, 64))]
        print(f"{args.dir}: attention mean max-probability per layer", _sharpness(Gpt(args.dir), ids))


def cmd_check_fixture(args):
    """Compares with the Hugging Face references of a fixture directory; exits 1 on a mismatch."""
    model = Gpt(args.fixture)
    worst = {"attn": 0.0, "logits": 0.0, "hidden": 0.0, "gen.attn": 0.0, "gen.logits": 0.0}
    diff = lambda a, b: float((a.double() - b.double()).abs().max())
    ids_ok = True
    files = sorted(f for f in os.listdir(args.fixture) if f.startswith("reference_"))
    for name in files:
        ref = read_safetensors(os.path.join(args.fixture, name))
        ids = ref["input_ids"][0].tolist()
        out = model.forward(ids)
        for l in range(model.n_layers):
            worst["attn"] = max(worst["attn"], diff(out["attn"][l][None], ref[f"attn.L{l}"]))
        worst["logits"] = max(worst["logits"], diff(out["logits"][None], ref["logits"]))
        if "hidden.0" in ref:  # HF: embeddings, blocks 0..L-2, then ln_f of the last block
            hidden = [out["embed"]] + out["resid_post"][:-1] + [out["ln_final"]]
            for i, h in enumerate(hidden):
                worst["hidden"] = max(worst["hidden"], diff(h[None], ref[f"hidden.{i}"]))
        if "gen.ids" in ref:
            expected = ref["gen.ids"][0].tolist()
            seq, steps, _ = model.generate(ids, len(expected) - len(ids))
            ids_ok &= seq == expected
            for s, (rows, logits) in enumerate(steps):
                for l, row in enumerate(rows):
                    worst["gen.attn"] = max(worst["gen.attn"], diff(row[None], ref[f"gen.step{s}.attn.L{l}"]))
                if f"gen.step{s}.logits" in ref:
                    worst["gen.logits"] = max(worst["gen.logits"], diff(logits[None], ref[f"gen.step{s}.logits"]))
    tolerance = {"attn": 1e-5, "logits": 1e-4, "hidden": 1e-5, "gen.attn": 1e-5, "gen.logits": 1e-4}
    ok = ids_ok and all(worst[k] < tolerance[k] for k in worst)
    print(f"{args.fixture}: {len(files)} references, generated ids {'equal' if ids_ok else 'DIFFER'}, "
          f"max abs diff {json.dumps(worst)} -> {'ok' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit(1)


def parser():
    p = argparse.ArgumentParser(prog="gpt_reference.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="write a random model directory")
    c.add_argument("dir")
    c.add_argument("--arch", choices=["gpt_neo", "gpt2"], required=True)
    c.add_argument("--hidden", type=int, default=48)
    c.add_argument("--layers", type=int, default=3)
    c.add_argument("--heads", type=int, default=6)
    c.add_argument("--intermediate", type=int, default=100)
    c.add_argument("--positions", type=int, default=96)
    c.add_argument("--vocab", type=int, default=1000)
    c.add_argument("--window", type=int, default=4, help="GPT-Neo local window")
    c.add_argument("--attention-types", default='[[["local","global"],1],[["local"],1]]', help="GPT-Neo, JSON")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--verbose", action="store_true", help="print how sharp the attention is")
    c.set_defaults(func=cmd_create)
    r = sub.add_parser("run", help="write the reference outputs for token ids")
    r.add_argument("model")
    r.add_argument("out")
    r.add_argument("--ids", required=True, help="comma-separated token ids")
    r.add_argument("--generate", type=int, default=0, help="greedy new tokens")
    r.set_defaults(func=cmd_run)
    f = sub.add_parser("check-fixture", help="compare with a fixture's Hugging Face references")
    f.add_argument("fixture")
    f.set_defaults(func=cmd_check_fixture)
    return p


def main(argv):
    torch.set_grad_enabled(False)
    run_chained(argv, parser)


if __name__ == "__main__":
    main(sys.argv[1:])
