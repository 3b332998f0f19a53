"""Test setup: 8 fake CPU devices so sharded code paths run on a laptop and in CI."""

import os

# Must run before jax initialises its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
