"""Diffusion distillation experiments (toy 2-D data, or the 8x8 digits by class).

    python -m experiments.diffusion --config configs/diffusion/scd_ring.py \
        --workdir runs/diffusion/scd_ring [--config.student.steps=8000 ...]
    python -m experiments.diffusion --config configs/diffusion/rcm_digits.py \
        --workdir runs/diffusion/rcm_digits [--config.teacher.dir=<a finished teacher>]
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
import jaxkd.diffusion

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    common.run(lambda: jaxkd.diffusion.train_and_evaluate(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main)
