"""Dataset-distillation losses against NumPy formulas (value) and autodiff of them (gradient)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.losses.dataset import (
    distribution_matching_loss,
    gradient_matching_distance,
    soft_cross_entropy,
    trajectory_matching_loss,
)

RNG = np.random.default_rng(0)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_soft_cross_entropy_matches_numpy_and_its_gradient_is_p_minus_q():
    logits = RNG.normal(size=(5, 4)).astype(np.float32)
    targets = np.abs(RNG.normal(size=(5, 4))).astype(np.float32)
    targets /= targets.sum(-1, keepdims=True)
    want = -np.mean(np.sum(targets * _log_softmax(logits.astype(np.float64)), -1))
    np.testing.assert_allclose(soft_cross_entropy(logits, targets), want, rtol=1e-6)
    g = jax.grad(soft_cross_entropy)(jnp.asarray(logits), jnp.asarray(targets))
    p = np.exp(_log_softmax(logits.astype(np.float64)))
    np.testing.assert_allclose(g, (p - targets) / 5, atol=1e-7)


def test_trajectory_matching_loss_is_the_normalised_distance():
    a, b, c = (RNG.normal(size=50).astype(np.float32) for _ in range(3))
    want = np.sum((a - c) ** 2) / np.sum((b - c) ** 2)
    np.testing.assert_allclose(trajectory_matching_loss(a, b, c), want, rtol=1e-6)
    np.testing.assert_allclose(trajectory_matching_loss(b, b, c), 1.0, rtol=1e-6)
    g = jax.grad(trajectory_matching_loss)(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c))
    np.testing.assert_allclose(g, 2 * (a - c) / np.sum((b - c) ** 2), rtol=1e-5)


def _distance_wb_numpy(gs, gr):
    """DC's `distance_wb` on PyTorch-layout arrays [out, ...] (biases skipped)."""
    if gs.ndim == 1:
        return 0.0
    a, b = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-6)
    return float(np.sum(1 - cos))


def test_gradient_matching_distance_matches_dc_on_pytorch_layouts():
    # Flax layouts: conv [kh, kw, in, out], dense [in, out], bias [out].
    shapes = {"conv": (3, 3, 2, 4), "dense": (6, 3), "bias": (4,)}
    gs = {k: RNG.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    gr = {k: RNG.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    torch_layout = {"conv": (3, 2, 0, 1), "dense": (1, 0), "bias": (0,)}
    want = sum(_distance_wb_numpy(gs[k].transpose(torch_layout[k]),
                                  gr[k].transpose(torch_layout[k])) for k in shapes)
    np.testing.assert_allclose(gradient_matching_distance(gs, gr), want, rtol=1e-5)
    np.testing.assert_allclose(gradient_matching_distance(gs, gs), 0.0, atol=1e-4)


def test_gradient_matching_distance_has_finite_gradients_at_zero_rows():
    # A dead ReLU unit gives an all-zero row of the kernel gradient; the distance stays as
    # DC defines it (cos = 0 there) and its gradient is finite (PyTorch's norm has 0 there).
    gs = RNG.normal(size=(5, 3)).astype(np.float32)
    gs[:, 1] = 0.0  # output unit 1 of a dense [in, out] kernel
    gr = RNG.normal(size=(5, 3)).astype(np.float32)
    value, grad = jax.value_and_grad(gradient_matching_distance)({"k": gs}, {"k": gr})
    want = _distance_wb_numpy(gs.T, gr.T)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert np.all(np.isfinite(grad["k"]))
    # Away from the zero row the gradient is the plain cosine's: check one unit by NumPy.
    a, b = gs[:, 0], gr[:, 0]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    d_cos = b / (na * nb) - (a @ b) * a / (na ** 3 * nb)
    np.testing.assert_allclose(grad["k"][:, 0], -d_cos, rtol=1e-3, atol=1e-6)


def test_distribution_matching_loss_matches_numpy_and_gradient():
    r = RNG.normal(size=(7, 5)).astype(np.float32)
    s = RNG.normal(size=(3, 5)).astype(np.float32)
    diff = r.mean(0) - s.mean(0)
    np.testing.assert_allclose(distribution_matching_loss(r, s), np.sum(diff ** 2), rtol=1e-6)
    g = jax.grad(distribution_matching_loss, argnums=1)(jnp.asarray(r), jnp.asarray(s))
    np.testing.assert_allclose(g, np.broadcast_to(-2 * diff / 3, s.shape), rtol=1e-5)
