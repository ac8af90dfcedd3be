#!/usr/bin/env bash
# One-shot check of the GPU paths on a machine with an NVIDIA GPU (about 3-5 minutes on
# an H100/H200, plus the CUDA torch download when it is needed; each step has a timeout):
#   1. a CUDA build of torch: if torch sees no GPU, install torch==2.13.0 (cu128 wheels);
#      without network it says so and runs what it can (the GPU tests then skip);
#   2. pytest -m "gpu or trt" tests/test_gpu.py   (numbers: CUDA vs CPU, CUDA graphs,
#      fp16, onnxruntime CUDA + IO binding, TensorRT; each one missing is a skip with its reason);
#   3. python -m benchmarks.fps --json $OUT/fps_gpu.json   (the realtime preset, 1 and 4
#      streams, every backend really available; torch.compile skipped: its compile takes minutes);
#   4. a summary (also in $OUT/summary.txt).
# Usage: bash scripts/gpu_check.sh
# Environment: OUT (default ./out/gpu_check), PYTHON (default .venv/bin/python), TORCH_INDEX
#   (default https://download.pytorch.org/whl/cu128, where the CUDA torch wheel comes from),
#   LETSPLAY_GPU_EXTRAS=1 also installs tensorrt and swaps onnxruntime for onnxruntime-gpu
#   (downloaded first, so a failed download leaves the CPU build in place).
# Exit status: 0 unless a test or the benchmark failed (no GPU / no network is not a failure).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-.venv/bin/python}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
"$PY" -c "import sys" 2>/dev/null || PY=python3
say() { echo "[gpu_check] $*" | tee -a "$OUT/summary.txt" >&2; }
pipq() { "$PY" -m pip --disable-pip-version-check -q "$@"; }
online() { "$PY" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10)
EOF
}
cuda() { "$PY" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null | tail -n1; }

say "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
if command -v nvidia-smi >/dev/null 2>&1; then
  say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n1)"
  gpu=1
elif ls /dev/nvidia0 >/dev/null 2>&1; then
  say "GPU: /dev/nvidia0 present (no nvidia-smi)"; gpu=1
else
  say "GPU: none visible (no nvidia-smi, no /dev/nvidia0): the GPU tests will skip"; gpu=0
fi

# The repo's packages (letsplay.*): an editable install made elsewhere points at its old path.
if ! "$PY" -c "import letsplay.realtime.backends" 2>/dev/null; then
  say "letsplay is not importable from here; re-pointing the editable install at $PWD (offline)"
  pipq install --no-deps --no-build-isolation -e . || say "could not re-install letsplay (see above)"
fi

# 1. A CUDA build of torch.
if [ "$(cuda)" != "True" ] && [ "$gpu" = 1 ]; then
  say "torch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1) sees no GPU: installing torch==2.13.0 from $TORCH_INDEX"
  if ! online "$TORCH_INDEX/"; then
    say "NO NETWORK: $TORCH_INDEX is out of reach, so the CUDA build of torch cannot be installed;"
    say "the GPU tests will skip. Install it by hand: $PY -m pip install torch==2.13.0 --index-url $TORCH_INDEX"
  elif ! pipq install torch==2.13.0 --index-url "$TORCH_INDEX"; then
    say "installing the CUDA build of torch failed (see pip's output above); the GPU tests will skip"
  fi
fi
say "torch $("$PY" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -n1); cuda available: $(cuda)"

if [ "${LETSPLAY_GPU_EXTRAS:-0}" = 1 ] && [ "$(cuda)" = "True" ]; then
  if online https://pypi.org/simple/; then
    pipq install "tensorrt>=10" || say "installing tensorrt failed; the TensorRT tests will skip"
    wheels=$(mktemp -d)
    if pipq download -d "$wheels" "onnxruntime-gpu>=1.18"; then  # never both builds: swap
      pipq uninstall -y onnxruntime && pipq install --no-index --find-links "$wheels" "onnxruntime-gpu>=1.18" \
        || say "swapping to onnxruntime-gpu failed: reinstall onnxruntime by hand"
    else
      say "downloading onnxruntime-gpu failed; keeping the CPU build (the onnxruntime CUDA test will skip)"
    fi
  else
    say "NO NETWORK for pypi.org: not installing tensorrt / onnxruntime-gpu"
  fi
fi
say "onnxruntime providers: $("$PY" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' 2>&1 | tail -n1)"
say "tensorrt: $("$PY" -c 'import tensorrt as t; print(t.__version__)' 2>/dev/null || echo 'not installed')"

# 2. The GPU tests.
timeout 300 "$PY" -m pytest -q -m "gpu or trt" -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/pytest_gpu.txt"
test_rc=${PIPESTATUS[0]}
[ "$test_rc" = 5 ] && test_rc=0  # nothing collected is not a failure here
[ "$test_rc" = 124 ] && say "pytest ran past its 300 s timeout"

# 3. The benchmark (every backend that really runs here; the rest listed as unavailable).
timeout 300 "$PY" -m benchmarks.fps --presets realtime --streams 1 4 --frames 100 --no-compile \
  --json "$OUT/fps_gpu.json" 2>&1 | tee "$OUT/fps_gpu.txt"
bench_rc=${PIPESTATUS[0]}
[ "$bench_rc" = 124 ] && say "the benchmark ran past its 300 s timeout (no JSON then)"

# 4. Summary.
say "---- summary ----"
say "pytest (gpu or trt): $(grep -E '(passed|failed|skipped|error|deselected)' "$OUT/pytest_gpu.txt" | tail -n1) (rc $test_rc)"
grep -E '^(SKIPPED|FAILED|ERROR)' "$OUT/pytest_gpu.txt" | sed 's/^/[gpu_check]   /' | tee -a "$OUT/summary.txt" >&2
if [ -s "$OUT/fps_gpu.json" ]; then
  "$PY" - "$OUT/fps_gpu.json" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt" >&2
import json, sys
r = json.load(open(sys.argv[1]))
print(f"[gpu_check] fps ({r['machine'].get('gpu') or 'no GPU'}):")
for x in r["results"]:
    print(f"[gpu_check]   {x['preset']:9s} x{x['streams']} {x['backend']:22s} {x['fps']:9.1f} fps  "
          f"step {x['step_ms']['median_ms']:7.2f} ms  on {x['device']}")
for k, v in r["unavailable"].items():
    print(f"[gpu_check]   unavailable {k}: {v[:160]}")
EOF
else
  say "fps: no result (rc $bench_rc; see $OUT/fps_gpu.txt)"
fi
say "files: $OUT/summary.txt pytest_gpu.txt fps_gpu.txt fps_gpu.json"
[ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ]
