"""Test setup: 8 fake CPU devices so sharded code paths run on a laptop and in CI."""

import atexit
import os
import shutil
import tempfile

# Compile the tests' programs without LLVM's backend optimisations: most of the suite's time
# is XLA:CPU compiling small programs it then runs a few times (the rCM digits smoke run
# compiled a UNet's init for 26 s, 3 s at level 0; tests/diffusion/test_{dmd,scm}.py took
# 125 s, 81 s at level 0). Semantics are unchanged; float rounding may differ by an ulp
# (tests compare with tolerances). Subprocess tests that set their own XLA_FLAGS append
# JAXKD_TESTS_XLA_FLAGS. JAXKD_TESTS_XLA_OPT=1 compiles as users do.
os.environ["JAXKD_TESTS_XLA_FLAGS"] = (
    "" if os.environ.get("JAXKD_TESTS_XLA_OPT") == "1" else "--xla_backend_optimization_level=0")

# Must run before jax initialises its backends.
os.environ["XLA_FLAGS"] = " ".join((
    os.environ.get("XLA_FLAGS", ""), os.environ["JAXKD_TESTS_XLA_FLAGS"],
    "--xla_force_host_platform_device_count=8")).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Under pytest-xdist the workers inherit the controller's environment, including the cache
# settings below that are meant for subprocesses only: drop them before jax reads them.
_SHARED_CACHE = os.environ.get("JAXKD_TESTS_XLA_CACHE")
if _SHARED_CACHE:
    for _key in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        os.environ.pop(_key, None)

import jax  # noqa: E402  (reads its settings from the environment here, before the lines below)

# The many tests that run an experiment in a subprocess (every config's CLI smoke run, resume
# tests, benchmarks) compile the same teacher/scratch programs again and again; a persistent
# XLA cache shared by those subprocesses (and only by them: this process has already read its
# settings) compiles each once per test session, halving a smoke run.
# The xdist workers share the controller's folder; only the process that made it removes it.
if _SHARED_CACHE:
    _XLA_CACHE = _SHARED_CACHE
else:
    _XLA_CACHE = tempfile.mkdtemp(prefix="jaxkd-tests-xla-cache-")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
    os.environ["JAXKD_TESTS_XLA_CACHE"] = _XLA_CACHE
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The tests in this process compile the same programs again and again too (every driver test
# builds its teacher/student steps afresh, as new closures the in-memory cache cannot match):
# the same shared folder serves them, for programs that took a second or more to compile
# (JAXKD_TESTS_INPROCESS_CACHE=0 turns this off, to compare).
if os.environ.get("JAXKD_TESTS_INPROCESS_CACHE", "1") == "1":
    jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
