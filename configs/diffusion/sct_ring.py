"""python -m experiments.diffusion --config configs/diffusion/sct_ring.py --workdir runs/diffusion/sct_ring  # ~35 min on a 2-core CPU (20 of them training the teacher)

sCT (continuous-time consistency training: the student follows the data's own ODE tangent cos t z - sin t x0; the teacher only initialises it) on the toy 2-D distribution ``ring`` (known density). Trains the TrigFlow diffusion
teacher first (or reuses ``--config.teacher.dir``), then the student, and reports the teacher
at 1-64 ODE steps and the student at 1, 2 and 4 steps (sliced Wasserstein distance, MMD, mean
log-density under the true density, mode coverage).

Args after the colon (comma-separated, all optional):
  seed=N     seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.diffusion import _base


def get_config(arg=None):
    return _base.method_config("sct", "ring", arg)
