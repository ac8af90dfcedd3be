#!/usr/bin/env bash
# Debian packages a fresh machine lacks: PortAudio for sounddevice, PulseAudio for a
# real (null-sink) capture device in tests, Xvfb + xcb libraries for the Qt window.
set -euo pipefail
pkgs=(
  libportaudio2 libsndfile1                       # sounddevice, soundfile
  pulseaudio pulseaudio-utils                     # a real capture device (null sink) for the live test
  fluidsynth fluid-soundfont-gm                   # the richer synthetic-data audio backend (FluidR3_GM)
  xvfb xauth                                      # a real X display for the window test
  libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-render-util0 libxcb-xkb1
  libxcb-shape0 libxcb-randr0 libxcb-xinerama0 libxkbcommon-x11-0 libegl1 libgl1 libfontconfig1 libdbus-1-3
)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "installed: ${missing[*]}" >&2
fi
