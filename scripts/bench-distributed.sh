#!/usr/bin/env bash
# Sequences per second of `hooklens capture` over 1 and 2 processes on this machine, at 1 thread
# each (docs/distributed.md, "Speed"). Both cases run through scripts/launch.sh, so their timing
# lines are alike; they are interleaved, ROUNDS times (default 5), and the min and median of each
# are printed with their ratio, as the machine is shared and noisy.
#   scripts/bench-distributed.sh [ROUNDS]
# MODEL (default models/toy-neo), SEQUENCES (default 400), SEQ_LEN (default 128) and HOOKS (default
# every layer's attention pattern; "none" for the model's work alone) choose the workload.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
model=${MODEL:-models/toy-neo}
sequences=${SEQUENCES:-400}
seq_len=${SEQ_LEN:-128}
hooks=${HOOKS:-blocks.*.attn.hook_pattern}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Text enough for the sequences: the toy corpus's words in a fixed pseudo-random order.
python3 - "$work/text.txt" "$((sequences * seq_len * 2))" <<'PY'
import random, sys
random.seed(1)
words = "Once upon a time there was a little cat named Tom . He liked to run in the park with his friend Ivy".split()
open(sys.argv[1], "w").write(" ".join(random.choice(words) for _ in range(int(sys.argv[2]))))
PY
declare -A rates
for ((round = 1; round <= rounds; ++round)); do
  for n in 1 2; do
    rm -rf "$work/run"
    line=$(scripts/launch.sh "$n" capture --model "$model" --threads 1 --text-file "$work/text.txt" --seq-len "$seq_len" \
      --max-sequences "$sequences" --hooks "$hooks" --out "$work/run" 2>&1 | grep 'timing: ' | grep -o '[0-9.]* sequences/s')
    rates[$n]+="${line%% *} "
    echo "round $round, $n process(es): $line"
  done
done
summary() {  # min and median of a list of numbers
  tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {printf "min %.1f median %.1f", v[1], (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'
}
echo "1 process:   $(summary "${rates[1]}") sequences/s"
echo "2 processes: $(summary "${rates[2]}") sequences/s"
awk -v a="$(summary "${rates[1]}" | awk '{print $4}')" -v b="$(summary "${rates[2]}" | awk '{print $4}')" \
  'BEGIN {printf "median ratio 2/1: %.2f\n", b / a}'
