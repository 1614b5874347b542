#!/usr/bin/env bash
# Builds hooklens with AddressSanitizer and UndefinedBehaviorSanitizer into build-asan/ and runs the
# tests there (docs/reliability.md, "Sanitizers"). libtorch and the other Debian libraries are not
# instrumented. Run ./scripts/setup.sh first (it installs the packages).
#   scripts/sanitize.sh            every test; builds the whole tree
#   scripts/sanitize.sh --readers  the readers of outside input only (what .ci/run runs): tokenizers,
#                                  chat templates, weight files, plugin options and the fuzz corpora
#                                  replays
# Extra arguments go to ctest, e.g. scripts/sanitize.sh --readers -V.
set -euo pipefail
cd "$(dirname "$0")/.."

readers=0
if [ "${1:-}" = "--readers" ]; then
  readers=1
  shift
fi

export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithInfoLess -DHOOKLENS_SANITIZE=address,undefined >/dev/null

select=()
if ((readers)); then
  # The fuzz replays are named after their targets; ctest -N lists them without building anything.
  mapfile -t fuzz < <(ctest --test-dir build-asan -N -R '^fuzz_replay_' | sed -n 's/^ *Test *#[0-9]*: //p')
  cmake --build build-asan -j"$(nproc)" --target test_tokenizer test_chat_template test_weights test_plugin_options "${fuzz[@]}"
  select=(-R '^(test_tokenizer|test_chat_template|test_weights|test_plugin_options|fuzz_replay_.*)$')
else
  cmake --build build-asan -j"$(nproc)"
fi

# Leaks are errors too (LeakSanitizer); any finding stops the program with a stack.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_init_order=1:check_initialization_order=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ctest --test-dir build-asan --output-on-failure -j"$(nproc)" "${select[@]}" "$@"
