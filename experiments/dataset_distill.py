"""Dataset distillation experiments.

    python -m experiments.dataset_distill --config configs/dataset_distill/mtt_digits.py:ipc=10 \
        --workdir runs/dd/mtt_digits_ipc10 [--config.distill.iterations=500 ...]
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
import jaxkd.dataset_distill

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    common.run(lambda: jaxkd.dataset_distill.train_and_evaluate(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main)
