"""python -m experiments.diffusion --config configs/diffusion/progressive_ring.py --workdir runs/diffusion/progressive_ring  # ~35 min on a 2-core CPU (20 of them training the teacher)

Progressive distillation (Salimans & Ho): students of 32, 16, ..., 1 DDIM steps, each
initialised from the last and trained to match two of its steps with one (target in closed form,
loss max(|x0 - x0~|^2, |eps - eps~|^2)), on the toy 2-D distribution ``ring`` (known density).
Trains the TrigFlow diffusion teacher first (or reuses ``--config.teacher.dir``), then the
rounds, and reports the teacher at 1-64 ODE steps and the 1-, 2- and 4-step students (sliced
Wasserstein distance, MMD, mean log-density under the true density, mode coverage).

Args after the colon (comma-separated, all optional):
  seed=N     seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.diffusion import _base


def get_config(arg=None):
    return _base.method_config("progressive", "ring", arg)
