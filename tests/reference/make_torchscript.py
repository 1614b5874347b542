"""Small TorchScript models for tests/test_torchscript.cpp, with their eager outputs.

Usage: make_torchscript.py OUT_DIR OPS_LIBRARY. OPS_LIBRARY is build/lib/libhooklens_ops.so, loaded with
torch.ops.load_library so that models can call torch.ops.hooklens.capture (outside hooklens it returns its
input). For each NAME below, OUT_DIR/NAME.pt is the saved TorchScript model and OUT_DIR/NAME.safetensors
holds, all from the eager (unscripted) model: "ids" (int64 [batch, pos]), "logits", "pattern.{i}" (the
attention probabilities [batch, head, query, key] of block i), "resid_post.{i}" (block i's output) and, for
gpt and gpt_traced, "logits.uniform0" (block 0's pattern replaced by uniform causal attention),
"logits.zero_last" (the last block's output replaced by zeros) and "logits.ablate_1_2" (head 2 of
block 1 zero-ablated).
  - gpt: a from-scratch GPT whose nn.ModuleList is called `blocks` (causal dot-product attention with a
    dropout between softmax and matmul; forward returns only logits); gpt_traced: the same model traced;
  - kl: "KL belief attention": queries and keys are diagonal Gaussians and the pattern is
    softmax(-KL(q || k) / kappa) over a ModuleList called `layers`, applied in reverse (layers[1] first);
    each layer also has a softmax gate that feeds no matmul, which must not be taken for an attention
    pattern; forward has a defaulted second argument and returns (logits, final residual);
  - gpt_ops, kl_ops: the same attentions calling torch.ops.hooklens.capture themselves: the pattern as
    "hook_pattern" and the per-head output z as "hook_z" (also written, as "z.{i}"), and the embedding as
    "hook_embed" at the top level;
  - branchy: a ModuleList `h` whose attention computes its softmax inside either branch of an
    `if self.causal:` (block 0 causal, block 1 bidirectional);
  - nano: nanoGPT's layout (ModuleDict `transformer` with the list `h`, F.softmax, an attn_dropout
    module between softmax and matmul) whose forward(idx, targets=None) returns (logits of the last
    position only, None), as nanoGPT does at inference.
Also OUT_DIR/plain.pt: torch.save of gpt's state dict (a zip archive that is not TorchScript).
"""
import math
import os
import sys

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

BATCH, POS = 2, 7

# An eager-only intervention for the references (scripting compiles the is_scripting() branch away).
OVERRIDE = {"uniform_pattern": False}


def causal_mask(t: int) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool).tril()


def eager_pattern(pattern):
    if OVERRIDE["uniform_pattern"]:
        t = pattern.shape[-1]
        mask = causal_mask(t).to(pattern.dtype)
        return (mask / mask.sum(-1, keepdim=True)).expand_as(pattern)
    return pattern


class DotAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(0.1)
        self.pattern = torch.zeros(0)  # eager values, kept for the references only
        self.z = torch.zeros(0)
        self.intervene = False
        self.ablate_head = -1

    def attend(self, scores):
        return torch.softmax(scores, dim=-1)

    def name_z(self, z):
        return z

    @torch.jit.unused
    def eager_intervention(self, pattern):
        if self.intervene:
            pattern = eager_pattern(pattern)
        if self.ablate_head >= 0:  # zero one head's pattern, hence its z
            pattern = pattern.clone()
            pattern[:, self.ablate_head] = 0
        return pattern

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~causal_mask(t), float("-inf"))
        pattern = self.attend(scores)
        if not torch.jit.is_scripting():
            pattern = self.eager_intervention(pattern)
        self.pattern = pattern
        z = self.name_z(torch.matmul(self.drop(pattern), v))
        self.z = z
        return self.out(z.transpose(1, 2).reshape(b, t, d))


class OpsDotAttention(DotAttention):
    """The author names the points: hooklens must not add its own pattern point beside this one."""

    def attend(self, scores):
        return torch.ops.hooklens.capture(torch.softmax(scores, dim=-1), "hook_pattern")

    def name_z(self, z):
        return torch.ops.hooklens.capture(z, "hook_z")


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
        self.z = torch.zeros(0)

    def split(self, x, b: int, t: int):
        return x.view(b, t, self.heads, -1).transpose(1, 2)

    def attend(self, scores):
        return torch.softmax(scores, dim=-1)

    def name_z(self, z):
        return z

    def forward(self, x):
        b, t, d = x.shape
        mq, lq = self.split(self.q(x), b, t).chunk(2, dim=-1)
        mk, lk = self.split(self.k(x), b, t).chunk(2, dim=-1)
        v = self.split(self.v(x), b, t)
        vq, vk = lq.exp().unsqueeze(-2), lk.exp().unsqueeze(-3)  # [b, h, t, 1, e], [b, h, 1, t, e]
        diff = mq.unsqueeze(-2) - mk.unsqueeze(-3)
        kl = 0.5 * ((lk.unsqueeze(-3) - lq.unsqueeze(-2)) + (vq + diff * diff) / vk - 1.0).sum(-1)
        scores = (-kl / self.kappa).masked_fill(~causal_mask(t), float("-inf"))
        pattern = self.attend(scores)
        self.pattern = pattern
        z = torch.bmm(pattern.reshape(b * self.heads, t, t), v.reshape(b * self.heads, t, -1))
        z = self.name_z(z.view(b, self.heads, t, -1))
        self.z = z
        return self.out(z.transpose(1, 2).reshape(b, t, d))


class OpsKLAttention(KLAttention):
    def attend(self, scores):
        return torch.ops.hooklens.capture(torch.softmax(scores, dim=-1), "hook_pattern")

    def name_z(self, z):
        return torch.ops.hooklens.capture(z, "hook_z")


class BranchyAttention(DotAttention):
    """The pattern is computed in either branch of an if on a module attribute."""

    def __init__(self, d, heads, causal: bool):
        super().__init__(d, heads)
        self.causal = causal

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        if self.causal:
            pattern = torch.softmax(scores.masked_fill(~causal_mask(t), float("-inf")), dim=-1)
        else:
            pattern = torch.softmax(scores, dim=-1)
        self.pattern = pattern
        return self.out(torch.matmul(pattern, v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, attn, d):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = attn
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.gate = nn.Linear(d, 2)
        self.output = torch.zeros(0)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        g = torch.softmax(self.gate(x), dim=-1)  # a softmax that is not attention
        x = x + self.mlp(self.ln2(x)) * g[..., :1] * 2.0
        self.output = x
        return x


class GPT(nn.Module):
    ops: torch.jit.Final[bool]  # a constant: without ops, scripting drops the capture call

    def __init__(self, attention=DotAttention, vocab=50, d=32, heads=4, n=3, ctx=16, ops=False):
        super().__init__()
        self.ops = ops
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([Block(attention(d, heads), d) for _ in range(n)])
        self.ln_f = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1]))
        if self.ops:
            x = torch.ops.hooklens.capture(x, "hook_embed")
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_f(x))


class KLModel(nn.Module):
    def __init__(self, attention=KLAttention, vocab=37, d=24, heads=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(attention(d, heads, kappa=2.0 + i), d) for i in range(2)])
        self.unembed = nn.Linear(d, vocab)

    def forward(self, ids, temperature: float = 1.0):
        # Against index order, so that the graph order of the patterns is not their layer index.
        x = self.layers[0](self.layers[1](self.embed(ids)))
        return self.unembed(x) / temperature, x


class BranchyModel(nn.Module):
    def __init__(self, vocab=40, d=16, heads=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.h = nn.ModuleList([Block(BranchyAttention(d, heads, causal=(i == 0)), d) for i in range(2)])
        self.unembed = nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.h:
            x = block(x)
        return self.unembed(x)


class NanoAttention(nn.Module):
    """nanoGPT's CausalSelfAttention without flash: fused c_attn, mask buffer, attn_dropout module."""

    def __init__(self, d, heads, ctx):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.attn_dropout = nn.Dropout(0.1)
        self.n_head = heads
        self.register_buffer("bias", torch.tril(torch.ones(ctx, ctx)).view(1, 1, ctx, ctx))
        self.pattern = torch.zeros(0)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        self.pattern = att
        att = self.attn_dropout(att)
        y = att @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoBlock(nn.Module):
    def __init__(self, d, heads, ctx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = NanoAttention(d, heads, ctx)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(0.1))
        self.output = torch.zeros(0)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        self.output = x
        return x


class NanoGPT(nn.Module):
    """nanoGPT's layout: a ModuleDict `transformer` holding the list `h`; at inference forward returns
    (logits of the last position only, None)."""

    def __init__(self, vocab=45, d=32, heads=4, n=2, ctx=16):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(ctx, d), drop=nn.Dropout(0.1),
            h=nn.ModuleList([NanoBlock(d, heads, ctx) for _ in range(n)]), ln_f=nn.LayerNorm(d)))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx, targets: Optional[torch.Tensor] = None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        loss: Optional[torch.Tensor] = None
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        else:
            logits = self.lm_head(x[:, -1:, :])
        return logits, loss


def eager_logits(model, ids):
    with torch.no_grad():
        logits = model(ids)
    return (logits[0] if isinstance(logits, tuple) else logits).numpy().astype(np.float32)


def make(name, model, blocks, vocab, out_dir, trace=False):
    model.eval()
    ids = torch.randint(0, vocab, (BATCH, POS), generator=torch.Generator().manual_seed(7))
    arrays = {"ids": ids.numpy(), "logits": eager_logits(model, ids)}
    for i, block in enumerate(blocks):
        arrays[f"pattern.{i}"] = block.attn.pattern.numpy().astype(np.float32)
        arrays[f"resid_post.{i}"] = block.output.numpy().astype(np.float32)
        if hasattr(block.attn, "z"):
            arrays[f"z.{i}"] = block.attn.z.numpy().astype(np.float32)
    if name in ("gpt", "gpt_traced"):
        blocks[0].attn.intervene = True
        OVERRIDE["uniform_pattern"] = True
        arrays["logits.uniform0"] = eager_logits(model, ids)
        OVERRIDE["uniform_pattern"] = False
        blocks[0].attn.intervene = False
        blocks[1].attn.ablate_head = 2
        arrays["logits.ablate_1_2"] = eager_logits(model, ids)
        blocks[1].attn.ablate_head = -1
        with torch.no_grad():
            zero = torch.zeros(BATCH, POS, model.ln_f.normalized_shape[0])
            arrays["logits.zero_last"] = model.unembed(model.ln_f(zero)).numpy().astype(np.float32)
    safetensors_io.write(os.path.join(out_dir, f"{name}.safetensors"), arrays)
    with torch.no_grad():
        scripted = torch.jit.trace(model, ids) if trace else torch.jit.script(model)
    torch.jit.save(scripted, os.path.join(out_dir, f"{name}.pt"))


def main():
    out_dir, ops_library = sys.argv[1], sys.argv[2]
    torch.ops.load_library(ops_library)
    torch.manual_seed(0)
    gpt = GPT()
    make("gpt", gpt, gpt.blocks, 50, out_dir)
    make("gpt_traced", gpt, gpt.blocks, 50, out_dir, trace=True)
    torch.save(gpt.state_dict(), os.path.join(out_dir, "plain.pt"))  # a zip, but no TorchScript
    kl = KLModel()
    make("kl", kl, kl.layers, 37, out_dir)
    gpt_ops = GPT(attention=OpsDotAttention, ops=True)
    make("gpt_ops", gpt_ops, gpt_ops.blocks, 50, out_dir)
    kl_ops = KLModel(attention=OpsKLAttention)
    make("kl_ops", kl_ops, kl_ops.layers, 37, out_dir)
    branchy = BranchyModel()
    make("branchy", branchy, branchy.h, 40, out_dir)
    nano = NanoGPT()
    make("nano", nano, nano.transformer.h, 45, out_dir)


if __name__ == "__main__":
    main()
