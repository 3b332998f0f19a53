#!/usr/bin/env bash
# The digits table of docs/results.md: one class-conditional UNet teacher (trained by the first
# run, ~25 min on one core) shared by every method's student through --config.teacher.dir.
# Resumable: a finished run (results.json) is skipped; an interrupted one resumes.
#   bash docs/sweeps/diffusion_digits.sh [RUNS_DIR] [METHOD ...]   (default: rcm scd guided)
# A METHOD may carry options: dmd2+gan (DMD2's GAN head), sds+snoopi / vsd+snoopi / rcm+snoopi
# (SNOOPI's random guidance); its workdir is <method>_<option>_digits.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-runs}
shift || true
methods=${*:-rcm scd guided}
py=${PYTHON:-.venv/bin/python}
root="$runs/diffusion"
teacher="$root/digits_teacher/teacher"
for token in $methods; do
  method=${token%%+*}
  extra=()
  case "$token" in
    *+gan) extra+=(--config.rcm.gan.enabled=true) ;;
    *+snoopi) extra+=(--config.rcm.snoopi.enabled=true) ;;
    *+*) echo "unknown option in $token (known: +gan, +snoopi)" >&2; exit 2 ;;
  esac
  w="$root/${token//+/_}_digits"
  [ -f "$w/results.json" ] && continue
  # The first run trains the teacher into $teacher; the others reuse it (settings checked).
  $py -m experiments.diffusion --config "configs/diffusion/${method}_digits.py" --workdir "$w" \
    --config.teacher.dir="$teacher" --config.eval.classifier_dir="$root/digits_classifier" \
    --config.progress=false "${extra[@]}" >/dev/null
done
$py - "$root" $methods <<'PY'
import json, os, sys
root, names = sys.argv[1], sys.argv[2:]
print("| model | steps | FD | class accuracy |")
print("|---|---:|---:|---:|")
first, r = True, None
for name in names:
    path = os.path.join(root, f"{name.replace('+', '_')}_digits", "results.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    roles = (("teacher", "teacher (Heun, CFG 1.5)"),) if first else ()
    for role, label in roles + (("student", f"{name} student"),):
        for n in (1, 2, 4, 8, 16, 32, 64):
            if f"{role}/steps_{n}/fd" in r:
                print(f"| {label} | {n} | {r[f'{role}/steps_{n}/fd']:.2f} | "
                      f"{100 * r[f'{role}/steps_{n}/class_acc']:.1f}% |")
    first = False
if r is not None:
    print(f"\nreal test images against the train split: FD {r['real_test/fd']:.2f}")
PY
