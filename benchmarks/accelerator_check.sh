#!/usr/bin/env bash
# The checks to run when an accelerator is at hand (a GPU here; a TPU VM alike), in one go:
# the correctness tests whose tolerances are float32-tight, then the benchmarks whose goals were
# measured on CPU only. Each part has its own time limit, logs to OUT_DIR/<part>.log, and its
# last line (the benchmarks' JSON) is collected in OUT_DIR/summary.txt, printed at the end.
#   bash benchmarks/accelerator_check.sh OUT_DIR [PART ...]
#   parts: env unroll consistency tests tests_highest trajectory_scan precision consistency_b128
#          kd trajectory_reverse (default: all, in that order)
# ``unroll`` runs tests/dataset_distill/test_unroll.py alone, serially, with output shown, and
# with XLA's Triton GEMM fusion off: on an H200 (jax 0.11.2, 2026-11-28) compiling the NAIVE
# unrolled hypergradient of the test's ConvNet (width 8, depth 2, 8x8 images) aborted the
# process in XLA:GPU's gemm fusion ("triton_tiling_propagation.cc:703 Check failed:
# subdim_size_accumulator == dim_size (4 vs. 3)"); ours (scan, reverse) compiled. With
# --xla_gpu_enable_triton_gemm=false all three compile and the test checks exactness.
# ``tests`` runs at JAX's default matmul precision (on NVIDIA GPUs that lets XLA use TF32 for
# float32 dots and convolutions); ``tests_highest`` re-runs the failures of ``tests`` with
# JAX_DEFAULT_MATMUL_PRECISION=highest, which tells precision apart from a real error.
# SMOKE=1: tiny benchmark sizes (to check this script on a CPU in minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: accelerator_check.sh OUT_DIR [PART ...]}
shift
mkdir -p "$out"
parts=${*:-env unroll consistency tests tests_highest trajectory_scan precision consistency_b128 kd trajectory_reverse}
py=${PYTHON:-python3}
smoke=() kd_smoke=()
[ "${SMOKE:-0}" = 1 ] && smoke=(--smoke) kd_smoke=(--batch 8 --steps 1 --rounds 1)
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
platform=${JAX_PLATFORMS:-}
# The correctness tests named by the issues: JVP vs finite differences and the sCM gradient
# (issue 5), the exact hypergradient vs naive autodiff (issue 4), the losses against NumPy.
# A crashed xdist worker is not replaced (a replacement would re-run the crashing test).
tests=(tests/diffusion/test_scm.py tests/diffusion/test_dmd.py tests/diffusion/test_progressive.py
       tests/losses/test_kd.py tests/losses/test_dataset.py)  # test_unroll.py: part ``unroll``
xdist=(-n 8 --dist loadfile --max-worker-restart 0 -rfE)

# part NAME SECONDS CMD...: run CMD under a time limit, log it, keep its last line.
part() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  printf '%-20s rc=%-3s %4ss  %s\n' "$name" "$rc" "$(( $(date +%s) - start ))" \
    "$(tail -n 1 "$out/$name.log" | cut -c1-400)" | tee -a "$out/summary.txt"
}

for p in $parts; do
  case $p in
    env) part env 30 bash -c "nvidia-smi -L 2>/dev/null; $py -c 'import sys, jax, flax, optax, orbax.checkpoint as o, importlib.metadata as m; print(sys.version.split()[0], \"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__, \"orbax\", m.version(\"orbax-checkpoint\"), jax.devices())'" ;;
    unroll) part unroll 120 env JAX_PLATFORMS="${platform}" JAXKD_TESTS_XLA_OPT=1 \
              XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" \
              $py -m pytest -q -n 0 -s -rfE tests/dataset_distill/test_unroll.py ;;
    tests) part tests 180 env JAX_PLATFORMS="${platform}" JAXKD_TESTS_XLA_OPT=1 \
             $py -m pytest -q "${xdist[@]}" "${tests[@]}" ;;
    tests_highest) grep -q " failed" "$out/tests.log" 2>/dev/null || continue
      part tests_highest 90 env JAX_PLATFORMS="${platform}" JAXKD_TESTS_XLA_OPT=1 \
        JAX_DEFAULT_MATMUL_PRECISION=highest $py -m pytest -q "${xdist[@]}" --lf "${tests[@]}" ;;
    consistency) part consistency 100 $py benchmarks/consistency_step.py --rounds 7 "${smoke[@]}" ;;
    consistency_b128) part consistency_b128 60 $py benchmarks/consistency_step.py --batch 128 \
                        --rounds 7 "${smoke[@]}" ;;
    precision) part precision 120 $py benchmarks/scm_precision.py "${smoke[@]}" ;;
    trajectory_scan) part trajectory_scan 300 $py benchmarks/trajectory_memory.py --method scan \
                       --rounds 5 "${smoke[@]}" ;;
    trajectory_reverse) part trajectory_reverse 150 $py benchmarks/trajectory_memory.py \
                          --method reverse --rounds 5 "${smoke[@]}" ;;
    kd) part kd 60 $py benchmarks/kd_step.py "${kd_smoke[@]}" ;;
    *) echo "unknown part $p" >&2; exit 2 ;;
  esac
done
echo "== summary ($out/summary.txt)"
cat "$out/summary.txt"
