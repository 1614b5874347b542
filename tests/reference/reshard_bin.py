"""Reshards a model's weights into torch.save shards with a Hugging Face index, for the tests.

Usage: reshard_bin.py SOURCE OUT_DIR N. SOURCE is a .safetensors file (read with safetensors_io) or
a torch.save state dict. The tensors are dealt into N shards in sorted-name order, round robin, as
tests/shard_util.h deals safetensors shards: consecutive tensors of one layer land in different
shards. Writes OUT_DIR/pytorch_model-0000i-of-0000N.bin (torch.save, default zip format) and
OUT_DIR/pytorch_model.bin.index.json ({"metadata": {"total_size": bytes}, "weight_map": {...}}), as
transformers' save_pretrained does for sharded .bin checkpoints. Tensors that share a storage in the
source and land in one shard share it in that shard too.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402


def main():
    source, out_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if source.endswith(".safetensors"):
        tensors = {k: torch.from_numpy(v) for k, v in safetensors_io.read(source).items()}
    else:
        tensors = torch.load(source)
    names = sorted(tensors)
    shard_names = [f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin" for i in range(n)]
    weight_map, total = {}, 0
    for i, shard in enumerate(shard_names):
        part = {name: tensors[name] for name in names[i::n]}
        torch.save(part, os.path.join(out_dir, shard))
        weight_map.update({name: shard for name in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    with open(os.path.join(out_dir, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


if __name__ == "__main__":
    main()
