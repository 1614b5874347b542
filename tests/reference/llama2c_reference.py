#!/usr/bin/python3
"""An independent float64 reference of llama2.c's forward pass and tokenizer, written from the
semantics in /work/shared/fixtures/llama2c/README.md (legacy checkpoint layout only).

Usage: llama2c_reference.py CHECKPOINT.bin TOKENIZER.bin OUT.safetensors PROMPT_HEX [TEXT_HEX...]
  PROMPT_HEX and TEXT_HEX are UTF-8 strings in hex. Writes: input_ids (the prompt encoded), logits
  [1, T, vocab], attn.L<l> [1, heads, T, T], and enc.<i> (each TEXT encoded).
"""
import json
import struct
import sys

import numpy as np

import safetensors_io  # beside this script


def read_checkpoint(path):
    data = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    floats = np.frombuffer(data[28:], dtype="<f4").astype(np.float64)
    head_dim = dim // heads
    kv_dim = kv_heads * head_dim
    at = 0

    def take(*shape):
        nonlocal at
        n = int(np.prod(shape))
        out = floats[at:at + n].reshape(shape)
        at += n
        return out

    w = {"emb": take(vocab, dim), "rms_att": take(layers, dim), "wq": take(layers, dim, dim),
         "wk": take(layers, kv_dim, dim), "wv": take(layers, kv_dim, dim), "wo": take(layers, dim, dim),
         "rms_ffn": take(layers, dim), "w1": take(layers, hidden, dim), "w2": take(layers, dim, hidden),
         "w3": take(layers, hidden, dim), "rms_final": take(dim)}
    take(seq_len, head_dim)  # freq_cis real + imag
    w["wcls"] = w["emb"] if shared else take(vocab, dim)
    assert at == floats.size, "unexpected checkpoint size"
    cfg = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab, seq_len=seq_len)
    return cfg, w


def rmsnorm(x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * weight


def rope(x, head_dim):
    """x: [T, heads, head_dim]; pair (2i, 2i+1) rotated by pos / 10000^(2i/head_dim)."""
    T = x.shape[0]
    freq = 1.0 / 10000.0 ** (np.arange(0, head_dim, 2) / head_dim)
    angle = np.arange(T)[:, None] * freq[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(cfg, w, ids):
    T, H, KVH = len(ids), cfg["heads"], cfg["kv_heads"]
    hd = cfg["dim"] // H
    x = w["emb"][ids]
    attns = []
    causal = np.tril(np.ones((T, T), dtype=bool))
    for l in range(cfg["layers"]):
        h = rmsnorm(x, w["rms_att"][l])
        q = rope((h @ w["wq"][l].T).reshape(T, H, hd), hd)
        k = rope((h @ w["wk"][l].T).reshape(T, KVH, hd), hd)
        v = (h @ w["wv"][l].T).reshape(T, KVH, hd)
        group = H // KVH
        pattern = np.zeros((H, T, T))
        z = np.zeros((T, H, hd))
        for head in range(H):
            kv = head // group
            scores = q[:, head, :] @ k[:, kv, :].T / np.sqrt(hd)
            scores = np.where(causal, scores, -np.inf)
            p = np.exp(scores - scores.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            pattern[head] = p
            z[:, head, :] = p @ v[:, kv, :]
        attns.append(pattern[None])
        x = x + z.reshape(T, H * hd) @ w["wo"][l].T
        h = rmsnorm(x, w["rms_ffn"][l])
        a = h @ w["w1"][l].T
        x = x + ((a / (1.0 + np.exp(-a))) * (h @ w["w3"][l].T)) @ w["w2"][l].T
    logits = rmsnorm(x, w["rms_final"]) @ w["wcls"].T
    return logits[None], attns


def read_tokenizer(path, vocab):
    data = open(path, "rb").read()
    at = 4
    pieces, scores = [], []
    for _ in range(vocab):
        score, n = struct.unpack("<fi", data[at:at + 8])
        pieces.append(data[at + 8:at + 8 + n])
        scores.append(score)
        at += 8 + n
    return pieces, scores


def encode(pieces, scores, text):
    """BOS, dummy-prefix " ", code points (or <0xNN> byte tokens, id byte + 3), best-score merges."""
    index = {}
    for i, p in enumerate(pieces):
        index.setdefault(p, i)
    ids = [1]
    raw = text.encode("utf-8")
    if raw:
        ids.append(index[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        if b in index:
            ids.append(index[b])
        else:
            ids.extend(byte + 3 for byte in b)
    while True:
        best = None
        for i in range(len(ids) - 1):
            j = index.get(pieces[ids[i]] + pieces[ids[i + 1]])
            if j is not None and (best is None or scores[j] > best[0]):
                best = (scores[j], j, i)
        if best is None:
            return ids
        _, j, i = best
        ids[i:i + 2] = [j]


def main(argv):
    checkpoint, tokenizer, out, prompt_hex, *texts_hex = argv
    cfg, w = read_checkpoint(checkpoint)
    pieces, scores = read_tokenizer(tokenizer, cfg["vocab"])
    ids = encode(pieces, scores, bytes.fromhex(prompt_hex).decode("utf-8"))
    logits, attns = forward(cfg, w, ids)
    result = {"input_ids": np.array(ids, dtype=np.int64), "logits": logits}
    for l, a in enumerate(attns):
        result[f"attn.L{l}"] = a
    for i, t in enumerate(texts_hex):
        result[f"enc.{i}"] = np.array(encode(pieces, scores, bytes.fromhex(t).decode("utf-8")), dtype=np.int64)
    safetensors_io.write(out, result)


if __name__ == "__main__":
    main(sys.argv[1:])
