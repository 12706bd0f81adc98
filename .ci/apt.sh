#!/usr/bin/env bash
# Debian packages the tests need, installed only when missing (CI runs as root on Debian):
#   ffmpeg     muxes the generated test clips (tests/media_clips.py); PyAV decodes without it
#   espeak-ng  speaks the test clips' sentences
#   chromium   the service page's browser test (tests/test_browser.py, driven by Playwright; Playwright's
#              own browser download is not reachable, so Debian's browser is used)
#   hey        the HTTP load generator of benchmarks/bench_service.py (no test uses it)
# Usage: bash .ci/apt.sh   (prints what it installs on stderr; exits 1 with a reason on failure)
set -euo pipefail

say() { echo "apt.sh: $*" >&2; }

# package -> the command that shows it is there
declare -A needs=([ffmpeg]=ffmpeg [espeak-ng]=espeak-ng [chromium]=chromium [hey]=hey)
missing=()
for pkg in "${!needs[@]}"; do
  command -v "${needs[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 || { say "ERROR: need ${missing[*]} but there is no apt-get"; exit 1; }
[ "$(id -u)" -eq 0 ] || { say "ERROR: need ${missing[*]}; run as root (or install them yourself)"; exit 1; }
say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
