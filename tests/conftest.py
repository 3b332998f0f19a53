"""Test setup: 8 fake CPU devices so sharded code paths run on a laptop and in CI."""

import atexit
import os
import shutil
import tempfile

# Must run before jax initialises its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (reads its settings from the environment here, before the lines below)

# The many tests that run an experiment in a subprocess (every config's CLI smoke run, resume
# tests, benchmarks) compile the same teacher/scratch programs again and again; a persistent
# XLA cache shared by those subprocesses (and only by them: this process has already read its
# settings) compiles each once per test session, halving a smoke run.
_XLA_CACHE = tempfile.mkdtemp(prefix="jaxkd-tests-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
