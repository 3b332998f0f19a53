"""CRD in the train step: the reported term is crd_loss on the step's embeddings, banks and
negatives; constants fixed on the first step; the banks move only at the batch's indices."""

import jax
import ml_collections
import numpy as np

from jaxkd import models
from jaxkd.core import optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.kd import adapters
from jaxkd.kd import crd as crd_lib
from jaxkd.kd import features as features_lib
from jaxkd.kd import steps as steps_lib
from jaxkd.losses import features as F

N = 40


def test_crd_step_matches_the_pure_pieces():
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    student = models.build("mlp", num_classes=5, hidden=(12,))
    tmodel = models.build("mlp", num_classes=5, hidden=(20,))
    t_vars = state_lib.init_variables(tmodel, jax.random.PRNGKey(1), (6,))
    teacher = steps_lib.Teacher.live(tmodel, t_vars, sharding.param_shardings(t_vars, mesh))
    spec = crd_lib.spec_from_params(dict(dim=8, num_negatives=50, temperature=0.1), N)
    assert spec.num_negatives == N - 1  # capped
    term = features_lib.FeatureTerm("crd", ("features",), ("features",), weight=0.8)
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, schedule="constant", warmup_steps=0,
                                         momentum=0.0, nesterov=False, weight_decay=0.0,
                                         grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 10)
    base = state_lib.make_init_fn(student, tx, (6,), ema=False,
                                  aux_init=crd_lib.aux_init(spec, (12,), (20,)))
    init = lambda r: dict(base(r), crd=crd_lib.state_init(spec, jax.random.fold_in(r, 2)))
    build, _, sh = state_lib.create_sharded(init, jax.random.PRNGKey(0), mesh, "replicated")
    step = steps_lib.make_train_step(
        student, tx, mesh=mesh, state_shardings=sh, teacher=teacher,
        distill=steps_lib.DistillConfig("hinton", 0.0, 4.0), feature=term, crd=spec)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 6)).astype(np.float32),
             "label": rng.integers(0, 5, 8).astype(np.int32),
             "mask": np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32),
             "index": rng.choice(N, 8, replace=False).astype(np.int32)}
    state = build()
    head = adapters.LinearEmbed(8)

    def expected(state):
        _, inter = student.apply({"params": state["params"]}, batch["image"], train=True,
                                 mutable=["intermediates"])
        _, t_inter = tmodel.apply(t_vars, batch["image"], train=False, mutable=["intermediates"])
        e_s = head.apply({"params": state["aux_params"]["embed_s"]},
                         inter["intermediates"]["features"][0])
        e_t = head.apply({"params": state["aux_params"]["embed_t"]},
                         t_inter["intermediates"]["features"][0])
        neg = crd_lib.negatives(spec, state["rng"], batch["index"])
        c = state["crd"]
        args = (c["mem_s"], c["mem_t"], batch["index"], neg)
        if bool(c["ready"]):
            z = (c["z_s"], c["z_t"])
        else:
            z = F.crd_normalization_constants(e_s, e_t, *args, temperature=0.1, num_data=N,
                                              mask=batch["mask"])
        value = F.crd_loss(e_s, e_t, *args, temperature=0.1, num_data=N, z_s=z[0], z_t=z[1],
                           mask=batch["mask"])
        return np.asarray(value), np.asarray(z), np.asarray(e_s)  # copies: the step donates

    glob = lambda b: sharding.to_global_batch(b, mesh)
    mem_before = np.asarray(state["crd"]["mem_s"])
    want, z1, e_s = expected(state)
    state, m = step(state, glob(batch))
    np.testing.assert_allclose(m["feat"], want, rtol=1e-5)
    np.testing.assert_allclose(m["loss"], m["ce"] + 0.8 * m["feat"], rtol=1e-6)
    assert bool(state["crd"]["ready"])
    np.testing.assert_allclose(state["crd"]["z_s"], z1[0], rtol=1e-6)
    # Only the rows of counted examples moved, as crd_update_memory says.
    mem_after = np.asarray(state["crd"]["mem_s"])
    moved = np.flatnonzero(np.abs(mem_after - mem_before).max(1) > 0)
    np.testing.assert_array_equal(np.sort(moved), np.sort(batch["index"][:7]))
    np.testing.assert_allclose(
        mem_after, F.crd_update_memory(mem_before, batch["index"], e_s, momentum=0.5,
                                       mask=batch["mask"]), rtol=1e-5, atol=1e-6)
    # Step 2 keeps the first step's constants (bit for bit) and uses them.
    z_after_1 = np.asarray([state["crd"]["z_s"], state["crd"]["z_t"]])
    want2, _, _ = expected(state)
    state2, m2 = step(state, glob(batch))
    np.testing.assert_allclose(m2["feat"], want2, rtol=1e-5)
    np.testing.assert_array_equal([state2["crd"]["z_s"], state2["crd"]["z_t"]], z_after_1)


def test_crd_scores_by_matmul_equal_the_gathered_ones(monkeypatch):
    # Small banks score every row with one matmul; large ones gather the drawn rows. Same values.
    rng = np.random.default_rng(1)
    n, b, k, d = 64, 6, 5, 8
    mem_s, mem_t = F.crd_init_memory(jax.random.PRNGKey(0), n, d)
    e_s, e_t = (rng.normal(size=(b, d)).astype(np.float32) for _ in range(2))
    idx = rng.choice(n, b, replace=False).astype(np.int32)
    neg = F.crd_sample_negatives(jax.random.PRNGKey(1), idx, n, k)
    kw = dict(temperature=0.1, num_data=n, z_s=None, z_t=None)
    g = jax.value_and_grad(lambda s, t: F.crd_loss(s, t, mem_s, mem_t, idx, neg, **kw), (0, 1))
    by_matmul = g(e_s, e_t)
    monkeypatch.setattr(F, "_CRD_MATMUL_ROWS_PER_INDEX", 0)
    by_gather = g(e_s, e_t)
    for a, c in zip(jax.tree.leaves(by_matmul), jax.tree.leaves(by_gather)):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
