#!/usr/bin/env bash
# Install letsplay into ./.venv (created if missing). Usage:
#   bash scripts/install.sh            # the app, ONNX Runtime CPU
#   bash scripts/install.sh test       # plus the test tools
# Environment: LETSPLAY_VENV (default .venv), LETSPLAY_EXTRAS (default "cpu"),
#   LETSPLAY_TORCH=skip to keep an already installed torch (e.g. a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LETSPLAY_VENV:-.venv}
extras=${LETSPLAY_EXTRAS:-cpu}
[ "${1:-}" = "test" ] && extras="$extras,test"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: a loose requirement would pull a multi-GB CUDA build.
if [ "${LETSPLAY_TORCH:-}" != "skip" ]; then
  "$py" -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
fi
pip install -e ".[${extras}]"
echo "installed letsplay into $venv (extras: $extras)" >&2
