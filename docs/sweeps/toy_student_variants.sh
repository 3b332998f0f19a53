#!/usr/bin/env bash
# What limits the 1-step sCD student on the 2-D sets (issue 5's goal, judged at 100,000
# samples): the same sCD run with one setting changed at a time, then every variant
# re-measured by docs/sweeps/toy_large_eval.py (2 draws; teacher at 64 steps, cached).
# Resumable (a finished run is skipped). Reuses the set's seed-0 teacher of diffusion_2d.sh.
#   [SET=moons] [METHOD=scd] [SEEDS=0] bash docs/sweeps/toy_student_variants.sh [RUNS_DIR] [VARIANT ...]
# Runs land in RUNS_DIR/diffusion/2d/<set>_variants/<method>_<variant>_s<seed>.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-runs}
shift || true
set_=${SET:-moons}
method=${METHOD:-scd}
seeds=${SEEDS:-0}
py=${PYTHON:-.venv/bin/python}
root="$runs/diffusion/2d"
# name -> the flags it changes (base: configs/diffusion/<method>_<set>.py, seed 0)
flags() {
  case $1 in
    base) echo "" ;;
    ema999) echo "--config.student.ema=0.999" ;;
    ema99) echo "--config.student.ema=0.99" ;;
    dmd0.1) echo "--config.rcm.weight=0.1" ;;
    cosine) echo "--config.student.optimizer.schedule=cosine" ;;
    cosine_lr3e-4) echo "--config.student.optimizer.schedule=cosine --config.student.optimizer.lr=3e-4" ;;
    ema999_lr3e-4) echo "--config.student.ema=0.999 --config.student.optimizer.lr=3e-4" ;;
    norm0) echo "--config.student.tangent_norm=0.0" ;;
    warm0) echo "--config.student.tangent_warmup=0" ;;
    pmean0) echo "--config.student.p_mean=0.0 --config.student.p_std=1.0" ;;
    batch4096) echo "--config.student.batch_size=4096" ;;
    steps12k) echo "--config.student.steps=12000" ;;
    steps12k_batch4096) echo "--config.student.steps=12000 --config.student.batch_size=4096" ;;
    *) echo "unknown variant $1" >&2; return 1 ;;
  esac
}
variants=${*:-ema999 cosine}
done_runs=()
for v in $variants; do
  f=$(flags "$v")
  for seed in $seeds; do
    w="$root/${set_}_variants/${method}_${v}_s$seed"
    if [ ! -f "$w/results.json" ]; then
      # shellcheck disable=SC2086  # (flags are word-split on purpose)
      $py -m experiments.diffusion --config "configs/diffusion/${method}_${set_}.py:seed=$seed" \
        --workdir "$w" --config.teacher.dir="$root/$set_/teacher" --config.teacher.seed=0 \
        --config.progress=false $f >/dev/null
    fi
    done_runs+=("$w")
  done
done
$py docs/sweeps/toy_large_eval.py --draws 2 "${done_runs[@]}"
