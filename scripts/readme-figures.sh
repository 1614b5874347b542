#!/usr/bin/env bash
# Runs the README's interventions examples (section "Interventions") on models/toy-neo into runs/
# and copies their figures to docs/images, so the README's pictures are what the commands draw.
#   scripts/readme-figures.sh        (after ./scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
H=build/bin/hooklens; M=models/toy-neo
CLEAN="Once upon a time, there was a little cat named Tom. Tom lived near the school."
CORRUPT="Once upon a time, there was a little cat named Sam. Sam lived near the school."
$H capture --model $M --prompt "$CLEAN" --hooks 'blocks.*.hook_resid_pre' --out runs/clean --overwrite \
   --analyze logit_lens --analyze-option logit_lens.positions=all --render png
$H capture --model $M --prompt "$CORRUPT" --hooks hook_logits --analyze logit_lens --out runs/corrupted --overwrite
$H capture --model $M --prompt "$CORRUPT" --hooks hook_logits --patch 'blocks.2.hook_resid_pre[pos=-1]' \
   --patch-from runs/clean --analyze logit_lens --analyze-option logit_lens.positions=all --render png --out runs/patched \
   --overwrite
$H patch-sweep --model $M --clean "$CLEAN" --corrupted "$CORRUPT" --out runs/sweep --overwrite
$H steering-vector --model $M --hook blocks.1.hook_resid_post --positions last --out runs/tom.safetensors \
   --positive "One day, Tom" --positive "Then Tom" --positive "Tom said" \
   --negative "One day, Sam" --negative "Then Sam" --negative "Sam said"
$H generate --model $M --prompt "Once upon a time, there was a little dog named Sam. Sam lived near the river. One day," \
   --max-new-tokens 20 --steer 'blocks.1.hook_resid_post=runs/tom.safetensors*2' \
   --hooks 'blocks.*.hook_resid_post' --analyze logit_lens --render png --out runs/steered --overwrite
$H capture --model $M --prompt "$CLEAN" --hooks hook_logits --mean-ablate 'blocks.1.attn.hook_z' \
   --ablate-from examples/data/stories.txt --analyze logit_lens --analyze-option 'logit_lens.target= Tom' \
   --render png --out runs/ablated --overwrite
mkdir -p docs/images
cp runs/clean/figures/logit_lens_p0.png docs/images/logit-lens-toy-neo.png
cp runs/patched/figures/logit_lens_p0.png docs/images/patching-toy-neo.png
cp runs/sweep/patch_sweep.png docs/images/patch-sweep-toy-neo.png
cp runs/steered/figures/logit_lens_p0.png docs/images/steering-toy-neo.png
cp runs/ablated/figures/logit_lens_p0_attribution.png docs/images/mean-ablation-toy-neo.png
ls -l docs/images
