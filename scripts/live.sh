#!/usr/bin/env bash
# Watch a model generate: opens hooklens-view in live mode on the built-in model (models/toy-neo,
# trained by hooklens and committed), one step every 0.4 s so the attention can be followed as it
# changes. Extra arguments go to hooklens-view (e.g. --max-new-tokens 64, --pace 0, or --model DIR
# --prompt TEXT).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  echo "live.sh: no display (DISPLAY is not set). On a desktop session run it there; over ssh use 'ssh -X'," >&2
  echo "or take a picture headless: xvfb-run -a build/bin/hooklens-view --model models/toy-neo --prompt 'Hi' --screenshot live.png" >&2
  exit 1
fi
exec build/bin/hooklens-view --model models/toy-neo --prompt "Once upon a time, there was a little cat named Tom." \
  --max-new-tokens 48 --pace 0.4 "$@"
