"""Error of bfloat16 network compute in the sCM loss, against float32 compute.

    python benchmarks/scm_precision.py            # MLP on the 2-D ring, UNet on 32x32x3 images
    python benchmarks/scm_precision.py --smoke    # tiny, seconds (tests/test_benchmarks.py)

sCM's loss is computed in float32 (``jaxkd.diffusion.scm``: the time derivative, the target
``g`` and the loss); the network may compute in bfloat16 (``config.model.kwargs.dtype =
"bfloat16"``: parameters stay float32, activations and matmuls run in bfloat16). For the same
parameters, data and noise, this prints the relative error ``|a_bf16 - a_f32| / |a_f32|`` of the
network output ``F``, the JVP tangent ``cos t sin t dF/dt``, the normalised target ``g``, the loss
and the parameter gradient, for an MLP (2-D ring data, sCD with a teacher of the same kind) and a
UNet (random images, sCT). Networks get non-zero output layers (the UNet's start at zero). The
last line is a JSON object ``{"<net>/<quantity>": relative error}``.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from jaxkd.diffusion import scm, toy
from jaxkd.models.denoisers import MLPDenoiser, UNet

KW = dict(p_mean=-1.0, p_std=1.4, r=1.0)


def _rel(a, b) -> float:
    a, b = jnp.ravel(jnp.asarray(a, jnp.float32)), jnp.ravel(jnp.asarray(b, jnp.float32))
    return float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30))


def compare(make, params, teacher_params, x0, sigma_d: float) -> dict[str, float]:
    """Relative errors of the sCM pieces, bfloat16 compute against float32."""
    key = jax.random.key(7)
    out = {}
    runs = {}
    for dtype in ("float32", "bfloat16"):
        net = make(dtype)
        teacher = None if teacher_params is None else (
            lambda x, t, n=net: n.apply(teacher_params, x, t))

        def loss(p, net=net, teacher=teacher):
            per, terms = scm.scm_loss(lambda x, t: net.apply(p, x, t), None, x0, key,
                                      sigma_d=sigma_d, teacher=teacher, **KW)
            return jnp.mean(per), terms

        (value, terms), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        runs[dtype] = (value, terms, grads)
    (v32, t32, g32), (v16, t16, g16) = runs["float32"], runs["bfloat16"]
    out["F"] = _rel(t16["F"], t32["F"])
    out["dF_dt"] = _rel(t16["dF_dt"], t32["dF_dt"])
    out["g"] = _rel(t16["g"], t32["g"])
    out["loss"] = abs(float(v16 - v32)) / (abs(float(v32)) + 1e-30)
    out["grad"] = _rel(jax.flatten_util.ravel_pytree(g16)[0], jax.flatten_util.ravel_pytree(g32)[0])
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    batch, width, size, ch = (64, 32, 8, 8) if a.smoke else (1024, 256, 32, 64)
    results = {}

    # MLP on the ring, sCD with a teacher of the same architecture.
    dist = toy.get("ring")
    x0 = dist.sample(jax.random.key(0), batch)
    mlp = lambda dtype: MLPDenoiser(hidden=width, depth=4, dtype=dtype)
    init = lambda k: jax.jit(mlp("float32").init)(jax.random.key(k), x0, jnp.ones(batch))
    for name, value in compare(mlp, init(1), init(2), x0, 1.42).items():
        results[f"mlp/{name}"] = value

    # UNet on random images, sCT.
    imgs = 0.5 * jax.random.normal(jax.random.key(3), (8 if a.smoke else 16, size, size, 3))
    unet = lambda dtype: UNet(channels=ch, dtype=dtype)
    params = jax.jit(unet("float32").init)(jax.random.key(4), imgs, jnp.ones(imgs.shape[0]))
    params = jax.tree.map(lambda v: v + 0.01, params)
    for name, value in compare(unet, params, None, imgs, 0.5).items():
        results[f"unet/{name}"] = value

    print(f"{'quantity':>12} {'MLP (sCD)':>12} {'UNet (sCT)':>12}   relative error, bf16 vs f32")
    for q in ("F", "dF_dt", "g", "loss", "grad"):
        print(f"{q:>12} {results['mlp/' + q]:12.2e} {results['unet/' + q]:12.2e}")
    print(json.dumps({k: float(f"{v:.4g}") for k, v in results.items()}))
    return results


if __name__ == "__main__":
    main()
