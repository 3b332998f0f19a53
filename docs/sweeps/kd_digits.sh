#!/usr/bin/env bash
# Re-measures the digits KD sweep reported in docs/results.md (about 8 minutes on 2 CPU cores).
# All variants share the teacher of the quickstart run (trained first if missing) and 3 seeds.
#   bash docs/sweeps/kd_digits.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-runs}
py=${PYTHON:-.venv/bin/python}
teacher="$runs/kd_digits/checkpoints/teacher"
[ -d "$teacher" ] || $py -m experiments.kd --config configs/kd/digits.py --workdir "$runs/kd_digits"

declare -A variants=(
  [paper_a0.9_T4]="--config.kd.alpha=0.9"
  [a0.5_T4]="--config.kd.alpha=0.5"
  [a0.9_T2]="--config.kd.alpha=0.9 --config.kd.temperature=2"
  [a0.9_T8]="--config.kd.alpha=0.9 --config.kd.temperature=8"
  [a0.5_T2]="--config.kd.alpha=0.5 --config.kd.temperature=2"
  [a0.9_h16]="--config.kd.alpha=0.9 --config.student.model_kwargs.hidden=(16,)"
  [a0.5_h16]="--config.kd.alpha=0.5 --config.student.model_kwargs.hidden=(16,)"
  [a0.9_crop1]="--config.kd.alpha=0.9 --config.data.augment.random_crop_padding=1"
  [a0.5_3000steps]="--config.kd.alpha=0.5 --config.train.steps=3000"
)
for name in $(printf '%s\n' "${!variants[@]}" | sort); do
  # shellcheck disable=SC2086
  $py -m experiments.kd --config configs/kd/digits.py --workdir "$runs/kd_digits_sweep/$name" \
    --config.teacher.init="$teacher" --config.train.progress=false ${variants[$name]} >/dev/null
done
$py - "$runs/kd_digits_sweep" <<'PY'
import json, os, sys
root = sys.argv[1]
print("| variant | scratch acc (%) | KD acc (%) | KD - scratch | scratch test NLL | KD test NLL |")
print("|---|---|---|---|---|---|")
for name in sorted(os.listdir(root)):
    r = json.load(open(os.path.join(root, name, "results.json")))
    s, k = r["scratch/acc_mean"], r["kd/acc_mean"]
    print(f"| {name} | {100*s:.2f} +- {100*r['scratch/acc_std']:.2f} | {100*k:.2f} +- "
          f"{100*r['kd/acc_std']:.2f} | {100*(k-s):+.2f} | {r['scratch/loss_mean']:.3f} | "
          f"{r['kd/loss_mean']:.3f} |")
PY
