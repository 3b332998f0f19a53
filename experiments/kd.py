"""Knowledge distillation experiments.

    python -m experiments.kd --config configs/kd/digits.py --workdir runs/kd_digits \
        [--config.train.steps=3000 ...]

``config.experiment`` picks the driver (``jaxkd.kd.EXPERIMENTS``): ``kd`` (default: teacher, then
students from scratch and with distillation), ``active`` (active distillation under a teacher
query budget), ``long_tail`` (long-tailed split with tail re-weighting), ``lelp`` (few-class
distillation through pseudo-subclasses of the teacher's embedding).
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
import jaxkd.kd

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    common.run(lambda: jaxkd.kd.get_experiment(config.get("experiment", "kd"))(
        config, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main)
