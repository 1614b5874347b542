"""Two small TorchScript models for tests/test_torchscript.cpp, with their eager outputs.

Usage: make_torchscript.py OUT_DIR. Writes, for NAME in gpt and kl, OUT_DIR/NAME.pt (torch.jit.script,
saved) and OUT_DIR/NAME.safetensors: "ids" (int64 [batch, pos]), "logits" and "pattern.{i}" (the
attention probabilities [batch, head, query, key] of block i), all from the eager (unscripted) model.
  - gpt: a from-scratch GPT whose nn.ModuleList is called `blocks` (causal dot-product attention with
    a dropout between softmax and matmul; forward returns only logits);
  - kl: "KL belief attention": queries and keys are diagonal Gaussians and the pattern is
    softmax(-KL(q || k) / kappa) over a ModuleList called `layers`, applied
    in reverse (layers[1] first); each layer also has a softmax gate that feeds no matmul, which
    must not be taken for an attention pattern; forward has a defaulted second argument and returns
    (logits, final residual).
Also OUT_DIR/plain.pt: torch.save of gpt's state dict (a zip archive that is not TorchScript).
"""
import math
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

BATCH, POS = 2, 7


def causal_mask(t: int) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool).tril()


class DotAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(0.1)
        self.pattern = torch.zeros(0)  # the eager pattern, kept for the reference only

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~causal_mask(t), float("-inf"))
        pattern = torch.softmax(scores, dim=-1)
        self.pattern = pattern
        z = torch.matmul(self.drop(pattern), v)
        return self.out(z.transpose(1, 2).reshape(b, t, d))


class KLAttention(nn.Module):
    def __init__(self, d, heads, kappa):
        super().__init__()
        self.heads = heads
        self.kappa = kappa
        self.q = nn.Linear(d, 2 * d)  # mean and log-variance
        self.k = nn.Linear(d, 2 * d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.pattern = torch.zeros(0)

    def split(self, x, b: int, t: int):
        return x.view(b, t, self.heads, -1).transpose(1, 2)

    def forward(self, x):
        b, t, d = x.shape
        mq, lq = self.split(self.q(x), b, t).chunk(2, dim=-1)
        mk, lk = self.split(self.k(x), b, t).chunk(2, dim=-1)
        v = self.split(self.v(x), b, t)
        vq, vk = lq.exp().unsqueeze(-2), lk.exp().unsqueeze(-3)  # [b, h, t, 1, e], [b, h, 1, t, e]
        diff = mq.unsqueeze(-2) - mk.unsqueeze(-3)
        kl = 0.5 * ((lk.unsqueeze(-3) - lq.unsqueeze(-2)) + (vq + diff * diff) / vk - 1.0).sum(-1)
        scores = (-kl / self.kappa).masked_fill(~causal_mask(t), float("-inf"))
        pattern = torch.softmax(scores, dim=-1)
        self.pattern = pattern
        z = torch.bmm(pattern.reshape(b * self.heads, t, t), v.reshape(b * self.heads, t, -1))
        return self.out(z.view(b, self.heads, t, -1).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, attn, d):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = attn
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.gate = nn.Linear(d, 2)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        g = torch.softmax(self.gate(x), dim=-1)  # a softmax that is not attention
        return x + self.mlp(self.ln2(x)) * g[..., :1] * 2.0


class GPT(nn.Module):
    def __init__(self, vocab=50, d=32, heads=4, n=3, ctx=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([Block(DotAttention(d, heads), d) for _ in range(n)])
        self.ln_f = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))


class KLModel(nn.Module):
    def __init__(self, vocab=37, d=24, heads=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(KLAttention(d, heads, kappa=2.0 + i), d) for i in range(2)])
        self.unembed = nn.Linear(d, vocab)

    def forward(self, ids, temperature: float = 1.0):
        # Against index order, so that the graph order of the patterns is not their layer index.
        x = self.layers[0](self.layers[1](self.embed(ids)))
        return self.unembed(x) / temperature, x


def make(name, model, blocks, vocab, out_dir):
    model.eval()
    ids = torch.randint(0, vocab, (BATCH, POS), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(ids)
        if isinstance(logits, tuple):
            logits = logits[0]
    arrays = {"ids": ids.numpy(), "logits": logits.numpy().astype(np.float32)}
    for i, block in enumerate(blocks):
        arrays[f"pattern.{i}"] = block.attn.pattern.numpy().astype(np.float32)
    safetensors_io.write(os.path.join(out_dir, f"{name}.safetensors"), arrays)
    torch.jit.save(torch.jit.script(model), os.path.join(out_dir, f"{name}.pt"))


def main():
    out_dir = sys.argv[1]
    torch.manual_seed(0)
    gpt = GPT()
    make("gpt", gpt, gpt.blocks, 50, out_dir)
    kl = KLModel()
    make("kl", kl, kl.layers, 37, out_dir)
    torch.save(gpt.state_dict(), os.path.join(out_dir, "plain.pt"))  # a zip, but no TorchScript


if __name__ == "__main__":
    main()
