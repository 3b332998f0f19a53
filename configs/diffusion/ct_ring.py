"""python -m experiments.diffusion --config configs/diffusion/ct_ring.py --workdir runs/diffusion/ct_ring  # ~35 min on a 2-core CPU (20 of them training the teacher)

Discrete-time consistency training (iCT: no teacher in the loss, the same noise at neighbouring
times, pseudo-Huber distance, lognormal pair sampling, the grid doubling from 10 to 1280 steps;
initialised from the teacher) on the toy 2-D distribution ``ring`` (known density). Trains the
TrigFlow diffusion teacher first (or reuses ``--config.teacher.dir``), then the student, and
reports the teacher at 1-64 ODE steps and the student at 1, 2 and 4 steps (sliced Wasserstein
distance, MMD, mean log-density under the true density, mode coverage).

Args after the colon (comma-separated, all optional):
  seed=N     seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.diffusion import _base


def get_config(arg=None):
    return _base.method_config("ct", "ring", arg)
