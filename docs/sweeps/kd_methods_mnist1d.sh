#!/usr/bin/env bash
# The MNIST-1D comparison of KD methods in docs/results.md: each method's config over 5 seeds with
# the same teacher (trained first if missing) and the same scratch students (trained once, in
# $runs/kd_methods_mnist1d/hinton, and copied into the other methods' workdirs, where they are
# only re-evaluated; function matching trains its own, with mixup). ~90 min on 2 CPU cores.
#   bash docs/sweeps/kd_methods_mnist1d.sh [RUNS_DIR] [METHOD ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-runs}
shift || true
methods=${*:-hinton dkd dist fitnet rkd pkt sp crd vid fm ensemble momentum dino kdaif selfkd}
py=${PYTHON:-.venv/bin/python}
root="$runs/kd_methods_mnist1d"
ref="$root/hinton"
teacher="$ref/checkpoints/teacher"
args=(--config.train.progress=false)
[ -f "$ref/results.json" ] || $py -m experiments.kd --config configs/kd/mnist1d.py:seeds=5 \
  --workdir "$ref" "${args[@]}" >/dev/null
for method in $methods; do
  [ "$method" = hinton ] && continue
  w="$root/$method"
  [ -f "$w/results.json" ] && continue
  mkdir -p "$w/checkpoints"
  if [ "$method" != fm ]; then
    for s in "$ref"/checkpoints/scratch_seed*; do
      [ -d "$w/checkpoints/$(basename "$s")" ] || cp -r "$s" "$w/checkpoints/"
    done
  fi
  if [ "$method" = ensemble ]; then  # teacher 0 is the shared one; teachers 1 and 2 train here
    [ -d "$w/checkpoints/teacher" ] || cp -r "$teacher" "$w/checkpoints/"
    init=()
  elif [ "$method" = momentum ] || [ "$method" = dino ]; then
    init=()
  else
    init=(--config.teacher.init="$teacher")
  fi
  $py -m experiments.kd --config "configs/kd/${method}_mnist1d.py:seeds=5" --workdir "$w" \
    "${init[@]}" "${args[@]}" >/dev/null
done
$py - "$root" $methods <<'PY'
import json, os, sys
root, names = sys.argv[1], sys.argv[2:]
print("| method | teacher acc (%) | scratch acc (%) | KD acc (%) | KD - scratch | gap closed |")
print("|---|---|---|---|---|---|")
for name in names:
    path = os.path.join(root, name, "results.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    kd = "kd_self" if name == "selfkd" else "kd"
    t, s, k = r["teacher/acc"], r["scratch/acc_mean"], r[f"{kd}/acc_mean"]
    ref = json.load(open(os.path.join(root, "hinton", "results.json")))["teacher/acc"]
    print(f"| {name} | {100*t:.2f} | {100*s:.2f} +- {100*r['scratch/acc_std']:.2f} | "
          f"{100*k:.2f} +- {100*r[f'{kd}/acc_std']:.2f} | {100*(k-s):+.2f} | "
          f"{(k-s)/(ref-s):.2f} |")
PY
