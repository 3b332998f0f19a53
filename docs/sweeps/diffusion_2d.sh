#!/usr/bin/env bash
# The 2-D table of docs/results.md: every method on each toy set over several student seeds,
# one diffusion teacher per set (seed 0, trained by the set's first run, ~20 min on one core)
# shared by every student through --config.teacher.dir. Resumable: a finished run
# (results.json) is skipped; an interrupted one resumes. Students: ~15-30 min each on one core.
#   [METHODS="scd sct ..."] [SEEDS="0 1 2"] bash docs/sweeps/diffusion_2d.sh [RUNS_DIR] [SET ...]
#   sets: ring moons checkerboard (default: all three)
# EXTRA="--config.x=y ...": flags added to every run (the sCD/rCM tables made before their
# configs moved to a cosine lr: EXTRA=--config.student.optimizer.schedule=constant).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-runs}
shift || true
sets=${*:-ring moons checkerboard}
methods=${METHODS:-scd sct rcm dmd2 sds vsd cd ct progressive}
seeds=${SEEDS:-0 1 2}
py=${PYTHON:-.venv/bin/python}
root="$runs/diffusion/2d"
for set in $sets; do
  for method in $methods; do
    for seed in $seeds; do
      w="$root/${set}/${method}_s$seed"
      [ -f "$w/results.json" ] && continue
      # The student's seed varies; the teacher stays the set's seed-0 one (settings checked).
      $py -m experiments.diffusion --config "configs/diffusion/${method}_${set}.py:seed=$seed" \
        --workdir "$w" --config.teacher.dir="$root/${set}/teacher" --config.teacher.seed=0 \
        --config.progress=false ${EXTRA:-} >/dev/null
    done
  done
done
$py - "$root" "$sets" "$methods" <<'PY'
import json, os, sys
import numpy as np
root, sets, methods = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
cols = ("swd", "mmd", "logdensity", "off_mode")
fmt = {"swd": "{:.3f}", "mmd": "{:.4f}", "logdensity": "{:.2f}", "off_mode": "{:.3f}"}
for s in sets:
    runs = {}
    for m in methods:
        d = os.path.join(root, s)
        rs = [json.load(open(os.path.join(d, n, "results.json"))) for n in sorted(os.listdir(d))
              if n.startswith(m + "_s") and os.path.exists(os.path.join(d, n, "results.json"))] \
            if os.path.isdir(d) else []
        if rs:
            runs[m] = rs
    if not runs:
        continue
    print(f"\n{s}: mean +- std over student seeds (n)\n")
    print("| model | steps | n | " + " | ".join(cols) + " |")
    print("|---|---:|---:|" + "---:|" * len(cols))
    first = next(iter(runs.values()))[0]
    for n in (1, 2, 4, 8, 16, 64):
        if f"teacher/steps_{n}/swd" in first:
            print(f"| teacher (Heun) | {n} | 1 | " + " | ".join(
                fmt[c].format(first[f"teacher/steps_{n}/{c}"]) for c in cols) + " |")
    for m, rs in runs.items():
        for n in (1, 2, 4, 8, 16, 32, 64):
            key = f"student/steps_{n}/swd"
            if key not in rs[0]:
                continue
            vals = [[r[f"student/steps_{n}/{c}"] for r in rs] for c in cols]
            cells = [(fmt[c] + " +- " + fmt[c]).format(np.mean(v), np.std(v))
                     for c, v in zip(cols, vals)]
            print(f"| {m} | {n} | {len(rs)} | " + " | ".join(cells) + " |")
PY
