#!/usr/bin/env bash
# Installs what hooklens needs from Debian 12's packages, then configures and builds it into build/.
# Safe to run again: apt skips what is installed, and the build is incremental (ccache helps).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config ccache
  libtorch-dev libopenblas0-openmp          # libtorch; OpenBLAS replaces the slow reference BLAS
  libgloo-dev                               # headers of c10d's ProcessGroupGloo (runs over several processes)
  libboost-dev libboost-filesystem-dev libfmt-dev nlohmann-json3-dev libcli11-dev libpcre2-dev
  libstb-dev libzstd-dev libimgui-dev libglfw3-dev
  libcairo2-dev                             # figures: PNG, SVG and PDF drawn with Cairo (text in fonts-dejavu-core)
  catch2 python3-torch python3-numpy xvfb xauth fonts-dejavu-core
  python3-jinja2 python3-regex python3-sentencepiece   # independent references of the tokenizer and chat-template tests
  chromium                                  # headless browser for the HTML report and SVG figure tests
  poppler-utils                             # pdftotext: the figure tests read the PDFs' text
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithInfoLess >/dev/null
cmake --build build -j"$(nproc)"
echo "setup: built build/bin/hooklens and the plugins in build/plugins"
