"""Sharded training matches single-device training; sharding rules and batch checks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxkd import models
from jaxkd.core import optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.kd import steps as steps_lib


def _opt():
    return ml_collections.ConfigDict(dict(
        name="sgd", lr=0.05, schedule="cosine", warmup_steps=2, momentum=0.9, nesterov=False,
        weight_decay=1e-4, grad_clip_norm=0.0))


def _train(mesh, strategy, n_steps=5):
    """5 KD steps of a batch-norm ConvNet student against a ConvNet teacher on fixed batches."""
    student = models.build("convnet", num_classes=10, width=32, depth=2, norm="batch")
    teacher_model = models.build("convnet", num_classes=10, width=8, depth=1, norm="none")
    tx = optim.make_optimizer(_opt(), 10)
    init_fn = state_lib.make_init_fn(student, tx, (8, 8, 1), ema=True)
    build, _, shardings = state_lib.create_sharded(init_fn, jax.random.PRNGKey(0), mesh, strategy)
    t_vars = state_lib.init_variables(teacher_model, jax.random.PRNGKey(1), (8, 8, 1))
    t_sh = sharding.param_shardings(t_vars, mesh, strategy)
    t_vars = jax.device_put(t_vars, t_sh)
    teacher = steps_lib.Teacher.live(teacher_model, t_vars, t_sh)
    step = steps_lib.make_train_step(student, tx, mesh=mesh, state_shardings=shardings,
                                     teacher=teacher, ema_decay=0.9)
    state = build()
    rng = np.random.default_rng(0)
    for _ in range(n_steps):
        batch = {"image": rng.normal(size=(32, 8, 8, 1)).astype(np.float32),
                 "label": rng.integers(0, 10, 32).astype(np.int32),
                 "mask": np.ones(32, np.float32)}
        state, metrics = step(state, sharding.to_global_batch(batch, mesh))
    return jax.device_get(state), jax.device_get(metrics), state


def test_sharded_step_matches_single_device():
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    single = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    multi = sharding.make_mesh(4, 2)
    ref, ref_m, _ = _train(single, "replicated")
    out, out_m, live = _train(multi, "fsdp")
    # At least one parameter really is split over the fsdp axis.
    specs = [x.sharding.spec for x in jax.tree.leaves(live["params"])]
    assert any("fsdp" in tuple(s) for s in specs), specs
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref_m["loss"], out_m["loss"], rtol=1e-5)
    assert int(out["step"]) == 5


def test_fsdp_rule_shards_largest_divisible_dim_and_keeps_small_arrays_replicated():
    mesh = sharding.make_mesh(4, 2)
    tree = {"big": jax.ShapeDtypeStruct((64, 128), jnp.float32),
            "odd": jax.ShapeDtypeStruct((63, 65), jnp.float32),
            "small": jax.ShapeDtypeStruct((16,), jnp.float32)}
    sh = sharding.param_shardings(tree, mesh, "fsdp")
    assert sh["big"].spec == P(None, "fsdp")
    assert sh["odd"].spec == P()
    assert sh["small"].spec == P()
    assert all(s.spec == P() for s in jax.tree.leaves(sharding.param_shardings(tree, mesh)))


def test_bad_mesh_and_batch_sizes_name_the_key():
    with pytest.raises(ValueError, match="config.mesh.fsdp=3"):
        sharding.make_mesh(-1, 3)
    with pytest.raises(ValueError, match="config.mesh.data=3"):
        sharding.make_mesh(3, 2)
    mesh = sharding.make_mesh(4, 2)
    with pytest.raises(ValueError, match=r"config.train.batch_size=100 .* multiple of 8"):
        sharding.check_batch_size(100, mesh)
    sharding.check_batch_size(96, mesh)
    with pytest.raises(ValueError, match="config.mesh.params='zero3'"):
        sharding.param_shardings({}, mesh, "zero3")
