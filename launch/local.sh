#!/usr/bin/env bash
# Local multi-process launcher: starts N processes of a command on this machine as one
# jax.distributed job. Thin wrapper around launch/local.py (standard-library Python, any
# python3 >= 3.8 runs it; override the interpreter with PYTHON=...). See launch/README.md.
#
#   launch/local.sh -n 2 [--port P] [--devices-per-process K] [--dry-run] -- \
#       python -m experiments.kd --config configs/kd/<name>.py:smoke --workdir runs/kd_2proc
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname -- "${BASH_SOURCE[0]}")/local.py" "$@"
