#!/usr/bin/env bash
# What interventions cost (docs/interventions.md, "Speed"): on one model, interleaved ROUNDS times
# (default 3) with the min and median of each case printed, as the machine is shared and noisy:
#   - `hooklens capture` of SEQUENCES prompts (default 32) x SEQ_LEN tokens (default 128), capturing
#     the logits, plain and with a steering vector added to every layer's residual stream (the
#     cost of an intervention on the hot path);
#   - `hooklens patch-sweep` of layers x 64 positions, one patched pass at a time (--batch-size 1,
#     what a loop of hooked forward passes does) and 16 together (the default).
#   scripts/bench-interventions.sh [ROUNDS]     MODEL (default: a TinyStories-33M-wide GPT-Neo that
#   `hooklens demo-model` writes: 4 layers, d_model 768, 16 heads) and THREADS (default 2) choose.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${THREADS:-2}
sequences=${SEQUENCES:-32}
seq_len=${SEQ_LEN:-128}
H=build/bin/hooklens
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=${MODEL:-}
if [ -z "$model" ]; then
  model=$work/model
  $H demo-model --out "$model" --layers 4 --heads 16 --d-model 768 --context 2048 >/dev/null
fi
layers=$($H info --model "$model" --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["model"]["n_layers"])')
d_model=$($H info --model "$model" --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["model"]["d_model"])')
/usr/bin/python3 - "$work" "$d_model" "$sequences" "$seq_len" <<'PY'
import random, struct, json, sys
work, d, n, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(1)
header = json.dumps({"v": {"dtype": "F32", "shape": [d], "data_offsets": [0, 4 * d]}}).encode()
header += b" " * (-len(header) % 8)
with open(f"{work}/v.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header + struct.pack(f"<{d}f", *[random.gauss(0, 0.1) for _ in range(d)]))
with open(f"{work}/ids", "w") as f:
    f.write("\n".join(",".join(str(random.randrange(1, 250)) for _ in range(t)) for _ in range(n)))
clean = [random.randrange(1, 250) for _ in range(64)]
corrupted = list(clean); corrupted[10] = (clean[10] % 249) + 1
open(f"{work}/clean", "w").write(",".join(map(str, clean)))
open(f"{work}/corrupted", "w").write(",".join(map(str, corrupted)))
PY
prompts=()
while read -r line; do prompts+=(--prompt-ids "$line"); done <"$work/ids"
steer=()
for ((l = 0; l < layers; ++l)); do steer+=(--steer "blocks.$l.hook_resid_pre=$work/v.safetensors*2"); done
declare -A secs
run() {  # CASE COMMAND...: milliseconds of the whole command
  local start end
  start=$(date +%s%N)
  "${@:2}" >"$work/log" 2>&1 || { cat "$work/log"; exit 1; }
  end=$(date +%s%N)
  secs[$1]+="$(((end - start) / 1000000)) "
}
for ((round = 1; round <= rounds; ++round)); do
  run "capture, plain" $H capture --model "$model" --threads "$threads" "${prompts[@]}" --hooks hook_logits --out "$work/a" --overwrite
  run "capture, steered at every layer" $H capture --model "$model" --threads "$threads" "${prompts[@]}" --hooks hook_logits \
    "${steer[@]}" --out "$work/b" --overwrite
  for b in 1 16; do
    run "patch-sweep, --batch-size $b" $H patch-sweep --model "$model" --threads "$threads" --clean-ids "$(cat "$work/clean")" \
      --corrupted-ids "$(cat "$work/corrupted")" --metric kl --batch-size "$b" --out "$work/s$b" --overwrite
  done
  echo "round $round done"
done
summary() {  # min and median of a list of numbers
  tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {printf "min %8.0f ms  median %8.0f ms", v[1], (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'
}
echo "model $model ($layers layers, d_model $d_model), $threads threads, $rounds interleaved rounds"
for c in "capture, plain" "capture, steered at every layer" "patch-sweep, --batch-size 1" "patch-sweep, --batch-size 16"; do
  printf '%-34s %s\n' "$c" "$(summary "${secs[$c]}")"
done
