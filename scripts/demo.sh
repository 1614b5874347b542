#!/usr/bin/env bash
# The main job on the built-in default model: write a small deterministic GPT-Neo, generate from
# it while capturing every attention pattern at every step and analyzing it live, draw the figures
# and the HTML report, and show what the run directory holds.
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKLENS=build/bin/hooklens
[ -d models/demo-neo ] || $HOOKLENS demo-model --out models/demo-neo
$HOOKLENS generate --model models/demo-neo --prompt "Once upon a time, there was a little robot" \
  --max-new-tokens 16 --hooks 'blocks.*.attn.hook_pattern' --out runs/demo --overwrite \
  --analyze attention_stats,head_detectors,token_influence --render png,html
echo
echo "runs/demo holds:"
ls -l runs/demo
