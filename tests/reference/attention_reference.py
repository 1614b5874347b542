"""Attention patterns of examples/make_example_model.py's model, recomputed from its weights.

Usage: attention_reference.py MODEL.pt PROMPT OUT.json

Loads the TorchScript file only for its parameters, runs the GPT written out again here with plain
torch.nn.functional (so hooklens' graph rewriting is not involved), checks that these logits match the
scripted model's own, and writes {"ids": [...], "patterns": [layer][head][query][key]} (float64).
The shape (heads) is read from example_model.json beside the model. Exit 1 if the logits disagree.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F


def main():
    model_file, prompt, out_file = sys.argv[1:4]
    with open(os.path.join(os.path.dirname(model_file), "example_model.json")) as f:
        shape = json.load(f)
    heads, layers = shape["heads"], shape["layers"]
    scripted = torch.jit.load(model_file)
    w = {k: v.double() for k, v in scripted.state_dict().items()}
    ids = torch.tensor([list(prompt.encode("utf-8"))])
    t = ids.shape[1]

    x = w["embed.weight"][ids] + w["pos.weight"][:t]
    patterns = []
    for i in range(layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (x.shape[-1],), w[p + "ln1.weight"], w[p + "ln1.bias"])
        qkv = h @ w[p + "attn.qkv.weight"].T + w[p + "attn.qkv.bias"]
        d = x.shape[-1]
        q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(1, t, heads, d // heads).transpose(1, 2) for j in range(3))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        pattern = scores.softmax(-1)
        patterns.append(pattern[0].tolist())
        z = (pattern @ v).transpose(1, 2).reshape(1, t, d)
        x = x + z @ w[p + "attn.out.weight"].T + w[p + "attn.out.bias"]
        h = F.layer_norm(x, (d,), w[p + "ln2.weight"], w[p + "ln2.bias"])
        h = F.gelu(h @ w[p + "mlp.0.weight"].T + w[p + "mlp.0.bias"])
        x = x + h @ w[p + "mlp.2.weight"].T + w[p + "mlp.2.bias"]
    x = F.layer_norm(x, (x.shape[-1],), w["ln_f.weight"], w["ln_f.bias"])
    logits = x @ w["unembed.weight"].T

    with torch.no_grad():
        theirs = scripted(ids).double()
    diff = (logits - theirs).abs().max().item()
    if diff > 1e-3:
        print(f"attention_reference.py: {model_file}: logits differ from the scripted model's by {diff}")
        sys.exit(1)
    with open(out_file, "w") as f:
        json.dump({"ids": ids[0].tolist(), "patterns": patterns, "logits_max_diff": diff}, f)


if __name__ == "__main__":
    main()
