#!/usr/bin/env bash
# The main job on the built-in default model: write a small deterministic GPT-Neo, generate from
# it while capturing every attention pattern at every step, and show what the run directory holds.
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKLENS=build/bin/hooklens
[ -d models/demo-neo ] || $HOOKLENS demo-model --out models/demo-neo
$HOOKLENS generate --model models/demo-neo --prompt "Once upon a time, there was a little robot" \
  --max-new-tokens 16 --hooks 'blocks.*.attn.hook_pattern' --out runs/demo --overwrite
echo
echo "runs/demo holds:"
ls -l runs/demo
