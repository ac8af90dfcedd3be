#!/usr/bin/env bash
# The whole generator recipe for one instrument: the realtime preset's warp variant (the
# coarse frame is the performer's reference warped part by part to the keypoints; the STU
# refines it at full resolution). On a CUDA GPU when torch sees one, else on this CPU.
#   1. KHP's onset detector alone: 240-frame windows, pitch-shifted and louder or softer at
#      random (here and in 1b and 2 also through a random instrument-body EQ: TIMBRE), BCE
#      against the notes' onsets (a bow's direction is the parity of all of them);
#   1b. KHP's pitch detector alone: 64-frame windows, shifted by whole semitones with
#      their targets, cross-entropy against the note begun 45 ms after each frame (the
#      fingering state -- the cello's string and stop, the trombone's slide -- follows the
#      pitch it names);
#   2. KHP (keypoints and motion from audio), the onset and pitch detectors kept: whole clips read start to end, every state
#      carried, 100 ms of lookahead, half the clips' direction states driven by the real onsets;
#      the trombone's keypoint readout reads the real motion states in training (it then
#      commits to its own: sync C 0.60 against 0.43), the cello's its own (a bow arm that
#      commits to a direction it gets wrong a third of the time costs more than one that hedges);
#   3. STU with KHP frozen: lanes read whole clips in 16-frame chunks with every state carried
#      (as the performer runs), three quarters of the lanes drawn from the real keypoints (it
#      learns to draw the pose it is given), L1 + perceptual, no adversarial term;
#   4. both put together, fp16: OUT/INSTRUMENT.safetensors.
# Every stage has a wall-clock budget (the run times its first steps and trains as many as
# fit, the learning-rate schedule spanning them) and writes checkpoints: rerunning the
# script resumes an interrupted stage, and skips a finished one.
#
# Usage: bash scripts/train_recipe.sh INSTRUMENT DATA OUT
# Environment:
#   DEVICE        cuda or cpu (default: cuda when torch sees a GPU)
#   ONSET_MINUTES the onset detector's budget (default GPU 2, CPU 24)
#   PITCH_MINUTES the pitch detector's budget (default GPU 1, CPU 7: about 12000 steps)
#   KP_MINUTES    KHP's budget (default GPU 4, CPU 55)
#   STU_MINUTES   the STU's budget (default GPU 8, CPU 60)
#   INIT_KHP      take KHP from this performer instead of training it (skips stages 1 and 2)
#   TIMBRE        strength of the timbre augmentation in stages 1-2: each sequence's CQT
#                 multiplied by a random smooth EQ, tilt and gain, so the motion does not hang
#                 on the one soundfont the data was rendered with (default 0.5; 0: none)
#   MORE_DATA     more datasets for stages 1-2, space-separated: the same pieces rendered with
#                 another soundfont (letsplay data synth ... --soundfont FILE), so the motion
#                 follows the notes whatever instrument plays them (default: none)
#   TEACHER_MOTION  share of KHP's sequences whose readout reads the real motion states
#                 (default trombone 1, cello 0)
#   INIT          start the STU from this warp performer's weights (a warm start; its KHP is
#                 replaced by stage 1's or INIT_KHP's)
#   PYTHON        the Python with letsplay installed (default .venv/bin/python, else python3)
set -euo pipefail
[ $# -eq 3 ] || { sed -n 2,42p "$0" >&2; exit 2; }
inst=$1 data=$2 out=$3
case "$inst" in cello|trombone) ;; *) echo "INSTRUMENT must be cello or trombone, got '$inst'" >&2; exit 2 ;; esac
[ -f "$data/manifest.json" ] || { echo "$data is not a letsplay dataset (no manifest.json)" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import letsplay" 2>/dev/null || PY=python3
lp() { "$PY" -m letsplay.ui.cli "$@"; }
dev=${DEVICE:-$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}
if [ "$dev" = cpu ]; then
  on_min=${ONSET_MINUTES:-24} kp_min=${KP_MINUTES:-55} stu_min=${STU_MINUTES:-60} pitch_min=${PITCH_MINUTES:-7}
  on_opts=(--batch 8 --seq-len 240 --threads 2) pitch_opts=(--batch 8 --seq-len 64 --threads 2)
  kp_opts=(--batch 8 --seq-len 32 --threads 2) stu_opts=(--batch 2 --seq-len 16 --threads 2)
else
  on_min=${ONSET_MINUTES:-2} kp_min=${KP_MINUTES:-4} stu_min=${STU_MINUTES:-8} pitch_min=${PITCH_MINUTES:-1}
  on_opts=(--batch 32 --seq-len 240 --workers 2) pitch_opts=(--batch 32 --seq-len 64 --workers 2)
  # the STU in fp32 (TF32 convolutions): its fp16 autocast has not been validated
  kp_opts=(--batch 16 --seq-len 32 --workers 2) stu_opts=(--batch 8 --seq-len 16 --workers 6 --no-amp)
fi
mkdir -p "$out"
common=(--data "$data" --preset realtime --instrument "$inst" --device "$dev")
timbre=(--timbre "${TIMBRE:-0.5}")
read -r -a more <<<"${MORE_DATA:-}"
for d in "${more[@]}"; do
  [ -f "$d/manifest.json" ] || { echo "MORE_DATA: $d is not a letsplay dataset (no manifest.json)" >&2; exit 2; }
done
khp_data=(--data "$data" "${more[@]}")  # stages 1-2: every dataset; later options override --data
t0=$(date +%s)
stage() {  # stage NAME FOLDER ARGS...: train unless finished, resume when interrupted
  local name=$1 folder=$2; shift 2
  if [ -f "$folder/done" ]; then echo "[recipe] $name: finished earlier ($folder)"; return; fi
  local resume=(); [ -f "$folder/train_config.json" ] && resume=(--resume)
  local s; s=$(date +%s)
  lp train "${common[@]}" --out "$folder" "${resume[@]}" "$@"
  echo "$(( $(date +%s) - s ))" >"$folder/done"
  echo "[recipe] $name: $(cat "$folder/done") s"
}

# 1-2. KHP: the onset detector, then the rest with the detector kept
if [ -n "${INIT_KHP:-}" ]; then
  khp=$INIT_KHP
else
  stage onset "$out/onset" --stage onset --lookahead 100 --steps 100000 --minutes "$on_min" "${on_opts[@]}" "${timbre[@]}" "${khp_data[@]}"
  before_kp=$out/onset/performer.safetensors
  stage pitch "$out/pitch" --stage pitch --init "$before_kp" --steps 100000 --minutes "$pitch_min" "${pitch_opts[@]}" "${timbre[@]}" "${khp_data[@]}"
  before_kp=$out/pitch/performer.safetensors
  tm=${TEACHER_MOTION:-$([ "$inst" = trombone ] && echo 1 || echo 0)}
  stage kp "$out/kp" --stage kp --init "$before_kp" --freeze-onset --teacher-motion "$tm" \
    --steps 100000 --minutes "$kp_min" "${kp_opts[@]}" "${timbre[@]}" "${khp_data[@]}"
  khp=$out/kp/performer.safetensors
fi

# 3. STU on the warp, KHP frozen
if [ -n "${INIT:-}" ]; then
  lp model combine "$INIT" --stage "khp=$khp" --out "$out/init.safetensors"
else
  lp model init "$out/blank.safetensors" --preset realtime --ablation warp --instrument "$inst"
  lp model combine "$out/blank.safetensors" --stage "khp=$khp" --out "$out/init.safetensors"
fi
stage stu "$out/stu" --stage stu --ablation warp --init "$out/init.safetensors" --teacher-keypoints 0.75 --stu-lanes \
  --lr 3e-4 --lr-final 3e-5 --adv-weight 0 --steps 100000 --minutes "$stu_min" "${stu_opts[@]}"

# 4. together, fp16
lp model combine "$out/stu/performer.safetensors" --stage "khp=$khp" --out "$out/$inst.safetensors" --fp16
echo "[recipe] $inst on $dev: $out/$inst.safetensors ($(( $(date +%s) - t0 )) s in all)"
