#!/usr/bin/env bash
# The main job on the built-in models, trained by hooklens itself and committed (models/README.md):
# generate from the GPT-Neo toy-neo while capturing every attention pattern at every step and
# analyzing it live (the head detectors name its previous-token and induction heads), draw the
# figures and the HTML report; then let the masked-diffusion toy-llada fill a 32-token answer,
# capturing every denoising step.
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKLENS=build/bin/hooklens
PROMPT="Once upon a time, there was a little cat named Tom."
$HOOKLENS generate --model models/toy-neo --prompt "$PROMPT" --max-new-tokens 48 \
  --hooks 'blocks.*.attn.hook_pattern' --out runs/demo --overwrite \
  --analyze attention_stats,head_detectors,token_influence --render png,html
echo
echo "runs/demo holds:"
ls -l runs/demo
echo
$HOOKLENS generate --model models/toy-llada --prompt "$PROMPT" --gen-length 32 --steps 32 \
  --hooks 'blocks.*.attn.hook_pattern' --out runs/demo-diffusion --overwrite --render png
