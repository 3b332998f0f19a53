"""Multi-host start-up: initialise ``jax.distributed`` before anything touches devices.

Call :func:`maybe_initialize` first thing in an entry point (the experiment scripts do). It
initialises the distributed runtime when

* ``JAXKD_COORDINATOR_ADDRESS`` (``host:port``), ``JAXKD_NUM_PROCESSES`` and ``JAXKD_PROCESS_ID``
  are set (the local launcher sets them; usable on any cluster), or
* the process runs on a multi-host Cloud TPU slice, or under SLURM with more than one task: then
  ``jax.distributed.initialize()`` auto-detects the coordinator.

``JAXKD_LOCAL_DEVICE_COUNT=N`` makes the CPU backend expose ``N`` devices in this process (handy for
trying sharded code on a laptop); it only works before JAX initialises its backends.
"""

from __future__ import annotations

import os

_ENV_ADDRESS = "JAXKD_COORDINATOR_ADDRESS"
_ENV_NUM = "JAXKD_NUM_PROCESSES"
_ENV_ID = "JAXKD_PROCESS_ID"
_ENV_DEVICES = "JAXKD_LOCAL_DEVICE_COUNT"

_initialized = False


def _set_local_device_count() -> None:
    count = os.environ.get(_ENV_DEVICES)
    if not count:
        return
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{_ENV_DEVICES}={count!r} must be a positive integer")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _detected_cluster() -> str | None:
    """Names the cluster environment jax can auto-detect, or None on a single host."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
        return "slurm"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h]) > 1:
        return "tpu"
    return None


def maybe_initialize() -> bool:
    """Initialises ``jax.distributed`` if this process is one of several; returns whether it did."""
    global _initialized
    if _initialized:
        return True
    _set_local_device_count()
    import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS are final)

    if os.environ.get(_ENV_ADDRESS):
        missing = [k for k in (_ENV_NUM, _ENV_ID) if not os.environ.get(k)]
        if missing:
            raise ValueError(
                f"{_ENV_ADDRESS} is set but {', '.join(missing)} is not; set all three "
                f"(launch/local.sh does) or none"
            )
        jax.distributed.initialize(
            coordinator_address=os.environ[_ENV_ADDRESS],
            num_processes=int(os.environ[_ENV_NUM]),
            process_id=int(os.environ[_ENV_ID]),
        )
        _initialized = True
    elif _detected_cluster() is not None:
        jax.distributed.initialize()
        _initialized = True
    return _initialized
