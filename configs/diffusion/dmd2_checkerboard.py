"""python -m experiments.diffusion --config configs/diffusion/dmd2_checkerboard.py --workdir runs/diffusion/dmd2_checkerboard  # ~60 min on a 2-core CPU (20 of them training the teacher)

DMD2 (distribution matching distillation): the student, initialised from the teacher, generates
in 1, 2 or 4 consistency steps (backward simulation during training) and learns only the
distribution-matching gradient (f_fake - f_real) / mean|x0 - f_real| on its own noised samples,
with a fake score trained on them 5 times per student step (two time-scale rule); no GAN head.
On the toy 2-D distribution ``checkerboard`` (known density). Trains the TrigFlow diffusion
teacher first (or reuses ``--config.teacher.dir``), then the student, and reports the teacher at
1-64 ODE steps and the student at 1, 2 and 4 steps (sliced Wasserstein distance, MMD, mean log-
density under the true density, mode coverage).

Args after the colon (comma-separated, all optional):
  seed=N     seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.diffusion import _base


def get_config(arg=None):
    return _base.method_config("dmd2", "checkerboard", arg)
