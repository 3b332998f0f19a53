#!/usr/bin/env bash
# The digits comparison of KD objectives in docs/results.md: each method's config over 5 seeds,
# all with the quickstart's teacher (trained first if missing). ~25 min on 2 CPU cores.
#   bash docs/sweeps/kd_methods_digits.sh [RUNS_DIR] [METHOD ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-runs}
shift || true
methods=${*:-hinton dkd dist fitnet at rkd pkt sp cc vid crd fm ensemble momentum dino kdaif selfkd cached deit}
py=${PYTHON:-.venv/bin/python}
teacher="$runs/kd_digits/checkpoints/teacher"
[ -d "$teacher" ] || $py -m experiments.kd --config configs/kd/digits.py --workdir "$runs/kd_digits"
for method in $methods; do
  cfg=configs/kd/${method}_digits.py
  [ "$method" = hinton ] && cfg=configs/kd/digits.py
  init=(--config.teacher.init="$teacher")
  # The ensemble trains its two extra teachers in its own workdir (teacher 0 is the shared one).
  if [ "$method" = ensemble ]; then
    mkdir -p "$runs/kd_methods_digits/$method/checkpoints"
    [ -d "$runs/kd_methods_digits/$method/checkpoints/teacher" ] || \
      cp -r "$teacher" "$runs/kd_methods_digits/$method/checkpoints/"
    init=()
  fi
  { [ "$method" = momentum ] || [ "$method" = dino ]; } && init=()
  $py -m experiments.kd --config "$cfg:seeds=5" --workdir "$runs/kd_methods_digits/$method" \
    "${init[@]}" --config.train.progress=false >/dev/null
done
$py - "$runs/kd_methods_digits" $methods <<'PY'
import json, os, sys
root, names = sys.argv[1], sys.argv[2:]
print("| method | teacher acc (%) | scratch acc (%) | KD acc (%) | KD - scratch | agreement (%) |")
print("|---|---|---|---|---|---|")
for name in names:
    r = json.load(open(os.path.join(root, name, "results.json")))
    kd = "kd_self" if name == "selfkd" else "kd"
    s, k = r["scratch/acc_mean"], r[f"{kd}/acc_mean"]
    agree = (f"{100*r['kd/agreement_mean']:.2f} +- {100*r['kd/agreement_std']:.2f}"
             if "kd/agreement_mean" in r else "")
    print(f"| {name} | {100*r['teacher/acc']:.2f} | {100*s:.2f} +- {100*r['scratch/acc_std']:.2f} | "
          f"{100*k:.2f} +- {100*r[f'{kd}/acc_std']:.2f} | {100*(k-s):+.2f} | {agree} |")
PY
