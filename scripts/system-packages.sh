#!/usr/bin/env bash
# Debian packages a fresh machine lacks: PortAudio for sounddevice, PulseAudio for a
# real (null-sink) capture device in tests, Xvfb + xcb libraries for the Qt window.
set -euo pipefail
pkgs=(libportaudio2 libsndfile1)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "installed: ${missing[*]}" >&2
fi
