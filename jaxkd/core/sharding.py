"""Device mesh and sharding rules (data parallel and FSDP) for ``jax.jit`` train steps.

The mesh has two axes, ``data`` and ``fsdp``. The global batch is split over both of them (every
device sees a different slice of the batch). Parameters and optimizer state are either replicated,
or (``fsdp``) each large array is split along its largest dimension that divides evenly by the
``fsdp`` axis size; XLA inserts the all-gathers and reduce-scatters.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
PARAM_STRATEGIES = ("replicated", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, *, devices=None) -> Mesh:
    """Builds a ``(data, fsdp)`` mesh over all (or the given) devices.

    Args:
      data: size of the data-parallel axis; -1 takes all devices left after ``fsdp``.
      fsdp: size of the parameter-sharding axis.
      devices: defaults to ``jax.devices()`` (all processes' devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(
            f"config.mesh.fsdp={fsdp} must be >= 1 and divide the {n} available devices"
        )
    if data == -1:
        data = n // fsdp
    if data < 1 or data * fsdp != n:
        raise ValueError(
            f"config.mesh.data={data} x config.mesh.fsdp={fsdp} = {data * fsdp} devices, but "
            f"{n} are available; set config.mesh.data=-1 to use all of them"
        )
    # mesh_utils orders devices for fast collectives on TPU topologies; plain reshape elsewhere.
    if devices[0].platform == "tpu":
        from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

        grid = mesh_utils.create_device_mesh((data, fsdp), devices=devices)
    else:
        grid = np.asarray(devices).reshape(data, fsdp)
    return Mesh(grid, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def batch_size_per_mesh(mesh: Mesh) -> int:
    """Number of devices the batch dimension is split over."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str = "config.train.batch_size"):
    """Raises a ValueError naming ``key`` if the batch does not split evenly over the mesh."""
    n = batch_size_per_mesh(mesh)
    if global_batch_size % n:
        lo = max(n, global_batch_size // n * n)
        raise ValueError(
            f"{key}={global_batch_size} is not divisible by the {n} devices the batch is split "
            f"over (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple "
            f"of {n}, e.g. {lo} or {lo + n}"
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"{key}={global_batch_size} is not divisible by the {jax.process_count()} processes"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: leading dimension split over ``data`` and ``fsdp``."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    # Largest dimension that divides evenly; ties go to the last such dimension.
    best = None
    for i, d in enumerate(shape):
        if d % fsdp_size == 0 and (best is None or d >= shape[best]):
            best = i
    if best is None:
        return P()
    spec = [None] * len(shape)
    spec[best] = "fsdp"
    return P(*spec)


def param_shardings(tree: Any, mesh: Mesh, strategy: str = "replicated",
                    min_size: int = 2**12) -> Any:
    """Shardings for a pytree of arrays (or ``ShapeDtypeStruct``) under ``strategy``.

    Args:
      tree: pytree whose leaves have ``.shape``.
      mesh: the ``(data, fsdp)`` mesh.
      strategy: ``"replicated"`` or ``"fsdp"``.
      min_size: arrays with fewer elements stay replicated under FSDP (biases, norms, scalars).
    """
    if strategy not in PARAM_STRATEGIES:
        raise ValueError(
            f"config.mesh.params={strategy!r} is not valid; choose one of: "
            f"{', '.join(PARAM_STRATEGIES)}"
        )
    fsdp_size = mesh.shape["fsdp"]

    def leaf(x):
        if strategy == "replicated":
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, _fsdp_spec(tuple(x.shape), fsdp_size, min_size))

    return jax.tree.map(leaf, tree)


def with_shardings(shapes: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct`` tree carrying ``shardings``: a restore / ``jit`` target."""
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into globally sharded arrays.

    With one process the local batch is the global one: a single ``device_put`` of the whole
    dict (one transfer call instead of one per key, which matters for small CPU steps).
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put({k: np.asarray(v) for k, v in local_batch.items()}, sharding)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
