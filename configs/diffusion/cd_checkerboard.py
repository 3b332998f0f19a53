"""python -m experiments.diffusion --config configs/diffusion/cd_checkerboard.py --workdir runs/diffusion/cd_checkerboard  # ~35 min on a 2-core CPU (20 of them training the teacher)

Discrete-time consistency distillation (CD, with iCT's pseudo-Huber distance and lognormal pair
sampling; 18-step grid, one Euler step of the teacher between neighbours) on the toy 2-D
distribution ``checkerboard`` (known density). Trains the TrigFlow diffusion teacher first (or
reuses ``--config.teacher.dir``), then the student, and reports the teacher at 1-64 ODE steps
and the student at 1, 2 and 4 steps (sliced Wasserstein distance, MMD, mean log-density under
the true density, mode coverage).

Args after the colon (comma-separated, all optional):
  seed=N     seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.diffusion import _base


def get_config(arg=None):
    return _base.method_config("cd", "checkerboard", arg)
