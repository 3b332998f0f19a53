#!/usr/bin/env bash
# The digits comparison of KD objectives in docs/results.md: each method's config over 5 seeds,
# all with the quickstart's teacher (trained first if missing). ~10 min on 2 CPU cores.
#   bash docs/sweeps/kd_methods_digits.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-runs}
py=${PYTHON:-.venv/bin/python}
teacher="$runs/kd_digits/checkpoints/teacher"
[ -d "$teacher" ] || $py -m experiments.kd --config configs/kd/digits.py --workdir "$runs/kd_digits"
for method in hinton dkd dist fitnet rkd pkt sp fm ensemble momentum kdaif deit; do
  cfg=configs/kd/${method}_digits.py
  [ "$method" = hinton ] && cfg=configs/kd/digits.py
  $py -m experiments.kd --config "$cfg:seeds=5" --workdir "$runs/kd_methods_digits/$method" \
    --config.teacher.init="$teacher" --config.train.progress=false >/dev/null
done
$py - "$runs/kd_methods_digits" <<'PY'
import json, os, sys
root = sys.argv[1]
print("| method | teacher acc (%) | scratch acc (%) | KD acc (%) | KD - scratch | agreement (%) |")
print("|---|---|---|---|---|---|")
for name in ("hinton", "dkd", "dist", "fitnet", "rkd", "pkt", "sp", "fm", "ensemble", "momentum",
             "kdaif", "deit"):
    r = json.load(open(os.path.join(root, name, "results.json")))
    s, k = r["scratch/acc_mean"], r["kd/acc_mean"]
    print(f"| {name} | {100*r['teacher/acc']:.2f} | {100*s:.2f} +- {100*r['scratch/acc_std']:.2f} | "
          f"{100*k:.2f} +- {100*r['kd/acc_std']:.2f} | {100*(k-s):+.2f} | "
          f"{100*r['kd/agreement_mean']:.2f} +- {100*r['kd/agreement_std']:.2f} |")
PY
