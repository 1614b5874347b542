"""Makes the small model examples/analyze_attention draws: a from-scratch GPT over bytes.

Usage: make_example_model.py OUT_DIR [--train-steps N] [--seed S]

Defines a 3-layer, 4-head GPT (d_model 64, causal dot-product attention, blocks in an nn.ModuleList
called `blocks`) over a byte-level vocabulary (256 bytes + <|endoftext|> = 257), trains it briefly on
the CPU on a few paragraphs written here (seeded; about 10 s at the default 300 steps), so that its heads
attend in recognisable ways (previous token, start of the text, same word) instead of uniformly, and
writes:
  OUT_DIR/model.pt              torch.jit.script of the model: forward(ids int64 [batch, pos]) -> logits
  OUT_DIR/vocab.json            GPT-2 byte-symbol vocabulary (one token per byte, then <|endoftext|>)
  OUT_DIR/merges.txt            no merges: every byte stays its own token
  OUT_DIR/example_model.json    how it was made (shape, steps, seed, loss), read back by analyze_attention
Exit status: 0 success, 3 when this interpreter has no torch, 2 bad arguments.
"""
import argparse
import json
import math
import os
import sys
import time

# Idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads slowed training ~10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:
    import torch
    from torch import nn
except ImportError as error:
    print(f"make_example_model.py: error: {sys.executable} cannot import torch ({error}); "
          "install python3-torch or pass analyze_attention --model FILE.pt --tokenizer DIR", file=sys.stderr)
    sys.exit(3)

VOCAB, EOT = 257, 256
N_LAYERS, N_HEADS, D_MODEL, N_CTX = 3, 4, 64, 128
SEQ, BATCH = 64, 16

TEXT = """\
The cat sat on the mat by the door. The dog slept under the table, and the cat watched the dog.
When the sun came up, the cat went out to the garden and the dog followed the cat.
In the garden there was a small pond. The cat looked at the fish in the pond, and the fish looked back.
The old man who lived in the house liked to sit by the pond in the morning. He read the paper and
drank his tea, and the cat sat beside him. The dog did not like the water, so the dog stayed on the grass.
One day it rained. The rain fell on the pond, on the grass and on the roof of the house. The cat stayed
inside by the fire, and the dog slept by the door again. The old man wrote a letter to his daughter.
He told her about the cat, the dog, the fish and the rain. She wrote back that she would come in the
spring, when the garden was green and the pond was full of fish. The old man read her letter twice.
Every story has a beginning, a middle and an end. At the beginning the cat sat on the mat; in the middle
the rain fell on the pond; at the end the daughter came home, and the cat, the dog and the old man were
happy to see her. They sat in the garden together until the sun went down.
"""


def byte_symbol_table():
    """GPT-2's bytes-to-unicode map: printable bytes stand for themselves, the rest for U+0100 onwards."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = N_HEADS
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.out = nn.Linear(D_MODEL, D_MODEL)
        self.register_buffer("causal", torch.ones(N_CTX, N_CTX, dtype=torch.bool).tril())

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~self.causal[:t, :t], float("-inf"))
        pattern = torch.softmax(scores, dim=-1)  # the softmax feeding a matmul hooklens captures
        return self.out(torch.matmul(pattern, v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.attn = Attention()
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Embedding(N_CTX, D_MODEL)
        self.blocks = nn.ModuleList([Block() for _ in range(N_LAYERS)])
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.unembed = nn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, ids):
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1]))
        for block in self.blocks:  # unrolled by torch.jit.script: every softmax stays at the top level
            x = block(x)
        return self.unembed(self.ln_f(x))


def train(model, steps, seed):
    """Next-byte prediction on random windows of TEXT; returns the last steps' mean loss."""
    data = torch.tensor([EOT] + list(TEXT.encode("utf-8")), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    losses = []
    for step in range(steps):
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[s:s + SEQ + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}", flush=True)
    tail = losses[-10:]
    return sum(tail) / len(tail) if tail else float("nan")


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train-steps", type=int, default=300, help="optimiser steps (0: random weights)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.train_steps < 0:
        parser.error("--train-steps must not be negative")

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    model = GPT()
    began = time.time()
    loss = train(model, args.train_steps, args.seed)
    model.eval()

    # Same bytes as `hooklens demo-model` writes: sorted keys, no spaces, UTF-8.
    vocab = {symbol: b for b, symbol in byte_symbol_table().items()}
    vocab["<|endoftext|>"] = EOT
    write_text(os.path.join(args.out_dir, "vocab.json"),
               json.dumps(vocab, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    write_text(os.path.join(args.out_dir, "merges.txt"), "#version: 0.2\n")
    # model.pt appears only when complete, so a reader never sees half a file.
    partial = os.path.join(args.out_dir, "model.pt.partial")
    torch.jit.save(torch.jit.script(model), partial)
    os.replace(partial, os.path.join(args.out_dir, "model.pt"))
    info = {"format": "hooklens-example-model", "layers": N_LAYERS, "heads": N_HEADS, "d_model": D_MODEL,
            "n_ctx": N_CTX, "vocab": VOCAB, "train_steps": args.train_steps, "seed": args.seed,
            "final_loss": loss, "train_seconds": round(time.time() - began, 2)}
    write_text(os.path.join(args.out_dir, "example_model.json"), json.dumps(info, indent=2) + "\n")
    print(f"wrote {args.out_dir}/model.pt ({N_LAYERS} layers, {N_HEADS} heads, d_model {D_MODEL}, "
          f"{args.train_steps} training steps, final loss {loss:.3f})")


if __name__ == "__main__":
    main()
