"""FRePo: the KRR meta-loss against NumPy and an explicit-inverse autodiff, and the model pool."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.dataset_distill.frepo import FeatureRegression, FRePoConfig, krr_loss
from jaxkd.dataset_distill.nets import FlatModel
from jaxkd.losses.dataset import soft_cross_entropy
from jaxkd.models.mlp import MLP

RNG = np.random.default_rng(0)


def test_krr_loss_matches_numpy_and_an_explicit_inverse():
    fs = RNG.normal(size=(6, 9)).astype(np.float32)
    ys = np.eye(3, dtype=np.float32)[np.arange(6) % 3]
    ft = RNG.normal(size=(11, 9)).astype(np.float32)
    yt = np.eye(3, dtype=np.float32)[RNG.integers(0, 3, 11)]
    k_ss = fs.astype(np.float64) @ fs.T
    lam = 1e-2 * np.trace(k_ss) / 6
    pred = ft.astype(np.float64) @ fs.T @ np.linalg.solve(k_ss + lam * np.eye(6), ys)
    want = 0.5 * np.mean(np.sum((yt - pred) ** 2, -1))
    np.testing.assert_allclose(krr_loss(fs, ys, ft, yt, 1e-2), want, rtol=1e-4)

    def explicit(fs_, ft_):
        k = fs_ @ fs_.T
        inv = jnp.linalg.inv(k + 1e-2 * jnp.trace(k) / 6 * jnp.eye(6))
        return 0.5 * jnp.mean(jnp.sum((yt - ft_ @ fs_.T @ inv @ ys) ** 2, -1))

    got = jax.grad(krr_loss, argnums=(0, 2))(fs, ys, ft, yt, 1e-2)
    ref = jax.grad(explicit, argnums=(0, 1))(fs, ft)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5)
    # More synthetic examples than features (the d x d system): the same closed form.
    fs2 = RNG.normal(size=(12, 5)).astype(np.float32)
    ys2 = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    k2 = fs2.astype(np.float64) @ fs2.T
    pred2 = (ft[:, :5].astype(np.float64) @ fs2.T
             @ np.linalg.solve(k2 + 1e-2 * np.trace(k2) / 12 * np.eye(12), ys2))
    want2 = 0.5 * np.mean(np.sum((yt - pred2) ** 2, -1))
    np.testing.assert_allclose(krr_loss(fs2, ys2, ft[:, :5], yt, 1e-2), want2, rtol=1e-4)
    # Features that span the real batch's labels exactly: the regression is (nearly) perfect.
    assert float(krr_loss(ys, ys, ys, ys, 1e-6)) < 1e-4


def test_pool_networks_train_online_and_are_replaced_when_spent():
    x = jnp.asarray(RNG.normal(size=(30, 4, 4, 1)), jnp.float32)
    y = np.arange(30) % 3
    model = FlatModel.create(MLP(num_classes=3, hidden=(6,)), (4, 4, 1))
    cfg = FRePoConfig(pool_size=2, max_online_steps=2, batch_real=8, ridge=1e-3, lr_net=0.1)
    m = FeatureRegression(model, x, y, 3, 2, cfg, seed=0)
    images = x[:6]
    syn = {"images": images, "labels": jnp.zeros(6), "lr": jnp.float32(0.0)}
    carry = m.init_carry()
    assert carry["steps"].tolist() == [0, 1]  # staggered lives
    targets = jnp.repeat(jnp.eye(3), 2, axis=0)
    seen = []
    for it in range(6):
        before = jax.tree.map(np.array, carry)
        loss, grads, _, carry = m.loss_and_grad(syn, it, 6, carry)
        assert np.isfinite(float(loss)) and float(jnp.linalg.norm(grads["images"])) > 0
        k = int(np.flatnonzero(np.any(before["thetas"] != np.asarray(carry["thetas"]), -1))[0])
        other = 1 - k
        np.testing.assert_array_equal(carry["thetas"][other], before["thetas"][other])
        if before["steps"][k] + 1 >= 2:  # spent: a fresh network, zero momentum, step 0
            assert int(carry["steps"][k]) == 0 and not np.any(carry["vels"][k])
        else:  # one SGD step with momentum 0.9, by hand
            g = jax.grad(lambda t: soft_cross_entropy(model.apply(t, images), targets))(
                before["thetas"][k])
            vel = 0.9 * before["vels"][k] + g
            np.testing.assert_allclose(carry["thetas"][k], before["thetas"][k] - 0.1 * vel,
                                       rtol=1e-5, atol=1e-6)
            assert int(carry["steps"][k]) == before["steps"][k] + 1
        seen.append(k)
    assert set(seen) == {0, 1}
