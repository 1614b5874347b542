#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang with ASan+UBSan) into build-fuzz/ and runs each for
# SECONDS (default 60), two at a time, then reports executions, coverage and findings per target.
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (targets: zip_directory chat_template chat_template_made
#                                             tokenizer_hf tokenizer_llama2c safetensors weight_index
#                                             pytorch_bin hf_config llama2c_checkpoint arch_spec
#                                             torchscript run_directory analysis_report intervention_site)
# New corpus entries go to build-fuzz/corpus/TARGET (fuzz/corpus/TARGET, the seeds, is only read);
# crashing, hanging or memory-hungry inputs to build-fuzz/artifacts/TARGET/ (libFuzzer stops a
# target at its first), inputs slower than 10 s there too as slow-unit-*. See docs/reliability.md.
# The llama2c_checkpoint, arch_spec, torchscript, run_directory and analysis_report targets link a
# normal build's libhooklens (build/, or HOOKLENS_BUILD): build it first (cmake --build build --target hooklens hooklens_ops).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(zip_directory chat_template chat_template_made tokenizer_hf tokenizer_llama2c safetensors
                               weight_index pytorch_bin hf_config llama2c_checkpoint arch_spec torchscript
                               run_directory analysis_report intervention_site)
JOBS=${FUZZ_JOBS:-2}
OUT=build-fuzz
# The targets write each input's files to a scratch directory: in memory, not on the disk, if we can.
[ -d /dev/shm ] && [ -w /dev/shm ] && export TMPDIR=${TMPDIR:-/dev/shm}

command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing (apt-get install clang libclang-rt-14-dev)"; exit 2; }
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
CC=clang CXX=clang++ cmake -S fuzz -B "$OUT" ${HOOKLENS_BUILD:+-DHOOKLENS_BUILD="$HOOKLENS_BUILD"} >/dev/null
cmake --build "$OUT" -j2 --target "${TARGETS[@]/#/fuzz_}" >/dev/null

# What a slow, huge or hungry input is: -timeout seconds for one input, -rss_limit_mb. The
# chat-template renderer claims bounded work, so a template that runs longer is a finding; its
# worst refused templates (a million loop iterations) take ~0.5 s at -O2 but ~35 s instrumented.
options() {
  local common="-rss_limit_mb=2048 -print_final_stats=1"
  case $1 in
    zip_directory) echo "$common -timeout=10 -max_len=4096" ;;
    intervention_site) echo "$common -timeout=10 -max_len=512" ;;
    chat_template) echo "$common -timeout=60 -max_len=8192 -dict=fuzz/dict/chat_template.dict" ;;
    chat_template_made) echo "$common -timeout=60 -max_len=2048" ;;
    tokenizer_hf) echo "$common -timeout=10 -max_len=16384 -dict=fuzz/dict/tokenizer_hf.dict" ;;
    tokenizer_llama2c) echo "$common -timeout=10 -max_len=8192" ;;
    safetensors | pytorch_bin | hf_config | llama2c_checkpoint) echo "$common -timeout=10 -max_len=4096" ;;
    weight_index | arch_spec) echo "$common -timeout=10 -max_len=8192" ;;
    # libtorch's own TorchScript loader crashes on some archives (docs/reliability.md): fork mode
    # keeps fuzzing past them; each is still saved as crash-* for triage.
    torchscript) echo "$common -timeout=20 -max_len=65536 -fork=1 -ignore_crashes=1" ;;
    # Whole run directories (the seeds are real runs of up to ~20 KiB), rendered three times each.
    run_directory) echo "$common -timeout=30 -max_len=65536 -dict=fuzz/dict/run_directory.dict" ;;
    analysis_report) echo "$common -timeout=30 -max_len=16384 -dict=fuzz/dict/run_directory.dict" ;;
  esac
}

run() {
  local t=$1
  # libtorch's TorchScript compiler leaks what a failed load built (fuzz/lsan_libtorch.supp).
  local lsan=${LSAN_OPTIONS:-}
  [ "$t" = torchscript ] && lsan="suppressions=$PWD/fuzz/lsan_libtorch.supp${lsan:+:$lsan}"
  mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t" "$OUT/logs"
  # shellcheck disable=SC2046
  LSAN_OPTIONS=$lsan "$OUT/fuzz_$t" $(options "$t") -max_total_time="$SECONDS_EACH" -artifact_prefix="$OUT/artifacts/$t/" \
    "$OUT/corpus/$t" "fuzz/corpus/$t" >"$OUT/logs/$t.log" 2>&1 || true
}

stamp=$(mktemp)  # findings of this run are the artifacts newer than this
trap 'rm -f "$stamp"' EXIT
echo "fuzz: running ${TARGETS[*]} for ${SECONDS_EACH}s each, $JOBS at a time (logs in $OUT/logs)"
for t in "${TARGETS[@]}"; do
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
  run "$t" &
done
wait

failed=0
printf '%-18s %12s %8s %8s %8s %6s  %s\n' target executions cov features corpus slow findings
for t in "${TARGETS[@]}"; do
  log=$OUT/logs/$t.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corpus=$(find "$OUT/corpus/$t" -type f | wc -l)
  slow=$(find "$OUT/artifacts/$t" -type f -name 'slow-unit-*' -newer "$stamp" | wc -l)
  findings=$(find "$OUT/artifacts/$t" -type f ! -name 'slow-unit-*' -newer "$stamp" | wc -l)
  ((findings == 0)) || failed=1
  printf '%-18s %12s %8s %8s %8s %6s  %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$slow" \
    "$( ((findings)) && echo "$findings in $OUT/artifacts/$t/" || echo none)"
done
exit $failed
