"""python -m experiments.diffusion --config configs/diffusion/scd_checkerboard.py --workdir runs/diffusion/scd_checkerboard  # ~35 min on a 2-core CPU (20 of them training the teacher)

sCD (continuous-time consistency distillation: the student follows the teacher's probability-flow ODE, time derivative by jax.jvp) on the toy 2-D distribution ``checkerboard`` (known density). Trains the TrigFlow diffusion
teacher first (or reuses ``--config.teacher.dir``), then the student, and reports the teacher
at 1-64 ODE steps and the student at 1, 2 and 4 steps (sliced Wasserstein distance, MMD, mean
log-density under the true density, mode coverage).

Args after the colon (comma-separated, all optional):
  seed=N     seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.diffusion import _base


def get_config(arg=None):
    return _base.method_config("scd", "checkerboard", arg)
