#!/usr/bin/env bash
# Trains the two toy models with their presets: models/toy-neo (GPT-Neo) and models/toy-llada (LLaDA
# masked diffusion), side by side at one thread each (about 10 minutes on 2 cores). At one thread
# training is deterministic, so a retraining reproduces the files byte for byte on the same kind of
# CPU (training/README.md says why other CPUs may differ).
#   scripts/train-toy-models.sh            train into models/
#   scripts/train-toy-models.sh --check    train into a temporary directory and compare with models/
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKLENS=build/bin/hooklens
out=models
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--check]" >&2
  exit 2
fi
$HOOKLENS train --preset toy-neo --out "$out/toy-neo" --threads 1 > "$out/toy-neo.log" 2>&1 &
neo=$!
$HOOKLENS train --preset toy-llada --out "$out/toy-llada" --threads 1 > "$out/toy-llada.log" 2>&1 &
llada=$!
status=0
wait $neo || { echo "toy-neo failed:"; cat "$out/toy-neo.log"; status=1; } >&2
wait $llada || { echo "toy-llada failed:"; cat "$out/toy-llada.log"; status=1; } >&2
tail -n 1 "$out/toy-neo.log" "$out/toy-llada.log"
[ "$out" = models ] && rm -f models/toy-neo.log models/toy-llada.log
[ $status = 0 ] || exit $status
if [ "$out" != models ]; then
  for model in toy-neo toy-llada; do
    for file in config.json vocab.json merges.txt model.safetensors training.json; do
      if cmp -s "$out/$model/$file" "models/$model/$file"; then echo "same: $model/$file"
      else echo "DIFFERENT: $model/$file"; status=1; fi
    done
  done
fi
exit $status
