"""Benchmarks stay runnable (not timed: only that they run and print their JSON last line)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                + os.environ.get("JAXKD_TESTS_XLA_FLAGS", ""))


def test_kd_step_benchmark_prints_its_ratios():
    r = subprocess.run(
        [sys.executable, "benchmarks/kd_step.py", "--teacher", "mlp", "--teacher-kwargs",
         '{"hidden": [64]}', "--student", "mlp", "--student-kwargs", '{"hidden": [16]}',
         "--image-size", "8", "--channels", "1", "--num-classes", "10", "--batch", "16",
         "--steps", "2", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=_env(2))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["kd_over_ce"] > 0 and out["cached_over_ce"] > 0
    assert out["devices"] == 2


def test_kd_methods_benchmark_prints_a_ratio_per_method():
    r = subprocess.run(
        # A subset keeps CI fast: each feature term's step is tested in tests/kd; this checks
        # the benchmark's own plumbing (relational, CRD's banks, VID's adapter, the cache).
        [sys.executable, "benchmarks/kd_methods_step.py", "--batch", "8", "--image-size", "8",
         "--num-classes", "10", "--steps", "1", "--rounds", "1", "--methods", "dkd,rkd,crd,vid"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=_env(1))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {f"{m}_over_hinton" for m in ("hinton", "dkd", "rkd", "crd", "vid")} | {
        "cached_over_ce"}
    assert out["hinton_over_hinton"] == 1.0


def test_cache_step_benchmark_prints_its_ratios(tmp_path):
    r = subprocess.run(
        [sys.executable, "benchmarks/cache_step.py", "--smoke", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=_env(2))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cached_over_ce"] > 0 and out["live_over_ce"] > 0 and out["bytes_per_example"] > 0
    assert out["devices"] == 2


def test_trajectory_memory_benchmark_prints_its_ratios():
    r = subprocess.run([sys.executable, "benchmarks/trajectory_memory.py", "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ours_16_over_ours_2"] > 0 and out["time_ours_over_naive_2"] > 0
    # Ours stores parameter vectors only; naive autodiff keeps every step's activations.
    assert out["ours_over_naive_16"] < 0.5


def test_tesla_gradient_benchmark_prints_its_comparison(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/tesla_gradient.py", "--smoke", "--draws", "1",
                        "--experts", str(tmp_path / "experts")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # Smoke size: 3 inner steps, so TESLA is close to, but not exactly, the exact gradient.
    assert 0.5 < out["images_cosine_mean"] < 1.0 and out["images_rel_err_mean"] > 0
    assert (tmp_path / "experts" / "meta.json").exists()


def test_vmap_vs_loop_benchmark_prints_its_ratios():
    r = subprocess.run([sys.executable, "benchmarks/vmap_vs_loop.py", "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {"digits_convnet_vmap_over_loop", "dc_update_vmap_over_loop"}
    assert all(v > 0 for v in out.values())


def test_consistency_step_benchmark_prints_its_ratios():
    r = subprocess.run([sys.executable, "benchmarks/consistency_step.py", "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {"scd_flop_ratio", "sct_flop_ratio", "scd_time_ratio", "sct_time_ratio"}
    # One shared JVP: sCT costs about 4/3 of a diffusion step and sCD (plus the teacher) 5/3;
    # a JVP that recomputed the primal would add another forward (5/3 and 2).
    assert 1.2 < out["sct_flop_ratio"] < 1.45 and 1.5 < out["scd_flop_ratio"] < 1.8


def test_scm_precision_benchmark_prints_bfloat16_errors():
    r = subprocess.run([sys.executable, "benchmarks/scm_precision.py", "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {f"{n}/{q}" for n in ("mlp", "unet") for q in ("F", "dF_dt", "g", "loss", "grad")} == set(out)
    # bfloat16 has an 8-bit mantissa: errors are visible (a float32 run would give 0) but small.
    assert all(0 < out[f"{n}/F"] < 0.05 for n in ("mlp", "unet"))
