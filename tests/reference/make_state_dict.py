"""State dicts of two from-scratch GPT layouts for tests/test_state_dict.cpp, with eager outputs.

Usage: make_state_dict.py OUT_DIR. For each NAME below writes OUT_DIR/NAME.pt (torch.save) and
OUT_DIR/NAME.safetensors: "ids" (int64 [2, 7]), "logits" (float32 [2, 7, vocab]), "pattern.{i}"
(block i's attention probabilities [batch, head, query, key]), "prompt" (int64 [5]) and "greedy"
(int64 [5 + 8]: the prompt and 8 tokens chosen greedily by re-running the whole sequence each step).
  - raschka / raschka_qkv_bias: the GPTModel of "LLMs from scratch" (tok_emb, pos_emb, trf_blocks
    with att.W_query/W_key/W_value, out_proj, a `mask` buffer, ff.layers.0/2 with GELU tanh
    approximation, norm1/norm2/final_norm with scale/shift, out_head without bias), qkv_bias False
    and True; saved as model.state_dict();
  - nanogpt_ckpt: karpathy/nanoGPT's GPT with bias=True (fused c_attn, exact GELU, lm_head tied to
    wte, the attn.bias mask buffer), saved as nanoGPT's train.py does from a torch.compile'd model:
    {"model": state dict with "_orig_mod." prefixes, "optimizer", "model_args", "iter_num",
    "best_val_loss", "config"};
  - nanogpt_nobias: the same with bias=False (no biases, LayerNorm without bias), a bare state dict.
All models have 4 heads; parameters are perturbed from their initial values so that norms are not 1/0.
"""
import math
import os
import sys

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

VOCAB, CTX, HEADS = 100, 32, 4


# ---------------------------------------------------------------- "LLMs from scratch" layout

class ScratchLayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(d))
        self.shift = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class TanhGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


class ScratchAttention(nn.Module):
    def __init__(self, d, ctx, heads, qkv_bias):
        super().__init__()
        self.heads, self.d_head = heads, d // heads
        self.W_query = nn.Linear(d, d, bias=qkv_bias)
        self.W_key = nn.Linear(d, d, bias=qkv_bias)
        self.W_value = nn.Linear(d, d, bias=qkv_bias)
        self.out_proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(0.1)
        self.register_buffer("mask", torch.triu(torch.ones(ctx, ctx), diagonal=1))
        self.pattern = None

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, self.d_head).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask.bool()[:t, :t], float("-inf"))
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        self.pattern = weights
        z = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(z)


class ScratchBlock(nn.Module):
    def __init__(self, d, ctx, heads, qkv_bias):
        super().__init__()
        self.att = ScratchAttention(d, ctx, heads, qkv_bias)
        self.ff = nn.Module()
        self.ff.layers = nn.Sequential(nn.Linear(d, 4 * d), TanhGELU(), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = ScratchLayerNorm(d), ScratchLayerNorm(d)
        self.drop_shortcut = nn.Dropout(0.1)

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff.layers(self.norm2(x)))


class ScratchGPT(nn.Module):
    def __init__(self, qkv_bias, d=32, layers=2):
        super().__init__()
        self.tok_emb = nn.Embedding(VOCAB, d)
        self.pos_emb = nn.Embedding(CTX, d)
        self.drop_emb = nn.Dropout(0.1)
        self.trf_blocks = nn.Sequential(*[ScratchBlock(d, CTX, HEADS, qkv_bias) for _ in range(layers)])
        self.final_norm = ScratchLayerNorm(d)
        self.out_head = nn.Linear(d, VOCAB, bias=False)

    def attentions(self):
        return [block.att for block in self.trf_blocks]

    def forward(self, ids):
        x = self.drop_emb(self.tok_emb(ids) + self.pos_emb(torch.arange(ids.shape[1])))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


# ---------------------------------------------------------------- nanoGPT layout

class NanoLayerNorm(nn.Module):
    def __init__(self, d, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoAttention(nn.Module):
    def __init__(self, d, heads, bias):
        super().__init__()
        self.heads, self.d = heads, d
        self.c_attn = nn.Linear(d, 3 * d, bias=bias)
        self.c_proj = nn.Linear(d, d, bias=bias)
        self.register_buffer("bias", torch.tril(torch.ones(CTX, CTX)).view(1, 1, CTX, CTX))
        self.pattern = None

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = [y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in self.c_attn(x).split(d, dim=2)]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = torch.softmax(att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf")), dim=-1)
        self.pattern = att
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(b, t, d))


class NanoMLP(nn.Module):
    def __init__(self, d, bias):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, d, heads, bias):
        super().__init__()
        self.ln_1, self.attn = NanoLayerNorm(d, bias), NanoAttention(d, heads, bias)
        self.ln_2, self.mlp = NanoLayerNorm(d, bias), NanoMLP(d, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, bias, d=48, layers=3):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(VOCAB, d), wpe=nn.Embedding(CTX, d), drop=nn.Dropout(0.0),
            h=nn.ModuleList([NanoBlock(d, HEADS, bias) for _ in range(layers)]), ln_f=NanoLayerNorm(d, bias)))
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied

    def attentions(self):
        return [block.attn for block in self.transformer.h]

    def forward(self, ids):
        t = self.transformer
        x = t.drop(t.wte(ids) + t.wpe(torch.arange(ids.shape[1])))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


# ---------------------------------------------------------------- outputs

def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))


def greedy(model, prompt, steps=8):
    ids = prompt.clone()
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids[None])[0, -1].argmax().view(1)])
    return ids


def references(model, out_dir, name):
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(ids)
    arrays = {"ids": ids.numpy(), "logits": logits.numpy().astype(np.float32)}
    for i, att in enumerate(model.attentions()):
        arrays[f"pattern.{i}"] = att.pattern.numpy().astype(np.float32)
    prompt = ids[0, :5]
    arrays["prompt"] = prompt.numpy()
    arrays["greedy"] = greedy(model, prompt).numpy()
    safetensors_io.write(os.path.join(out_dir, f"{name}.safetensors"), arrays)


def nanogpt_checkpoint(model, d, layers):
    """What nanoGPT's train.py saves in ckpt.pt besides "model", after one optimiser step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    F.cross_entropy(model(ids[:, :-1]).reshape(-1, VOCAB), ids[:, 1:].reshape(-1)).backward()
    optimizer.step()
    optimizer.zero_grad()
    model_args = dict(n_layer=layers, n_head=HEADS, n_embd=d, block_size=CTX, bias=True, vocab_size=VOCAB, dropout=0.0)
    return {
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": 1,
        "best_val_loss": torch.tensor(4.5),
        "config": {"dataset": "shakespeare_char", "learning_rate": 1e-3, "compile": True, "wandb_run_name": None},
    }


def main():
    out_dir = sys.argv[1]
    torch.manual_seed(0)
    for name, qkv_bias in [("raschka", False), ("raschka_qkv_bias", True)]:
        model = ScratchGPT(qkv_bias)
        perturb(model)
        model.eval()
        references(model, out_dir, name)
        torch.save(model.state_dict(), os.path.join(out_dir, f"{name}.pt"))

    model = NanoGPT(bias=True)
    checkpoint = nanogpt_checkpoint(model, 48, 3)  # trains one step: references come after
    perturb(model)
    model.eval()
    # train.py saves the state dict of the torch.compile'd model, whose names start with "_orig_mod.".
    checkpoint["model"] = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    references(model, out_dir, "nanogpt_ckpt")
    torch.save(checkpoint, os.path.join(out_dir, "nanogpt_ckpt.pt"))

    model = NanoGPT(bias=False)
    perturb(model)
    model.eval()
    references(model, out_dir, "nanogpt_nobias")
    torch.save(model.state_dict(), os.path.join(out_dir, "nanogpt_nobias.pt"))


if __name__ == "__main__":
    main()
