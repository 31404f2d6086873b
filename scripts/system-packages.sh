#!/usr/bin/env bash
# The system packages moshikit's tests (and its audio-device commands) need, installed through apt-get
# where they are missing. Run by scripts/test.sh (the README's test command) and so by CI.
#   libportaudio2      sounddevice: chat, transcribe --mic, --list-devices
#   tmux               the chat terminal UI test
#   openssl            serve --ssl makes a self-signed certificate
#   pulseaudio, pulseaudio-utils, libasound2-plugins
#                      a clocked fake sound card (null sinks) for the live chat real-time test
#   chromium           the browser tests of serve's web page (Python playwright drives Debian's chromium;
#                      its apt dependencies bring the fonts and libraries headless chromium needs)
# As root it installs them; with password-less sudo it uses sudo; otherwise it says what is missing
# and the tests that need them are skipped with that reason in pytest's summary.
set -euo pipefail
PACKAGES=(libportaudio2 tmux openssl pulseaudio pulseaudio-utils libasound2-plugins chromium)

command -v dpkg-query >/dev/null 2>&1 || { echo "system-packages: not a Debian-like system; install the" \
  "equivalents of: ${PACKAGES[*]}" >&2; exit 0; }
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "system-packages: missing ${missing[*]} (not root, no password-less sudo): the tests that need" \
    "them will be skipped. Install with: sudo apt-get install ${missing[*]}" >&2
  exit 0
fi
echo "system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq >/dev/null &&
       "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "system-packages: apt-get could not install ${missing[*]}: the tests that need them will be skipped" >&2
fi
