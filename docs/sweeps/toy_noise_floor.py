"""The sampling-noise floor of the 2-D metrics in docs/results.md: true samples scored as if
they were a model's (10,000 against 10,000 fresh reference samples), over 5 draws per set.

    .venv/bin/python docs/sweeps/toy_noise_floor.py    # a few seconds
"""

import jax
import numpy as np

from jaxkd.diffusion import metrics, toy

for name in ("ring", "moons", "checkerboard"):
    dist = toy.get(name)
    swd, mmd = [], []
    for s in range(5):
        k_samples, k_eval = jax.random.split(jax.random.PRNGKey(100 + s))
        r = metrics.evaluate_samples(dist.sample(k_samples, 10000), dist, k_eval)
        swd.append(r["swd"])
        mmd.append(r["mmd"])
    print(f"{name}: swd {np.mean(swd):.3f} +- {np.std(swd):.3f}, "
          f"mmd {np.mean(mmd):.5f} +- {np.std(mmd):.5f}")
