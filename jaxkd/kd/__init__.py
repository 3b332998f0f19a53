"""Model knowledge distillation: train steps, feature terms, adapters and experiment drivers.

Every experiment driver is a module with ``train_and_evaluate(config, workdir) -> dict``; a
config picks one with ``config.experiment`` (default ``"kd"``: teacher, then scratch and
distilled students per seed).
"""

import importlib

EXPERIMENTS = {
    "kd": "jaxkd.kd.train",
    "active": "jaxkd.kd.active",
    "long_tail": "jaxkd.kd.long_tail",
    "lelp": "jaxkd.kd.few_class",
}


def get_experiment(name: str):
    """The ``train_and_evaluate`` function of experiment ``name`` (see ``EXPERIMENTS``)."""
    from jaxkd.core import errors  # pylint: disable=g-import-not-at-top

    if name not in EXPERIMENTS:
        raise errors.ConfigError(
            f"config.experiment={name!r} is not one of {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name]).train_and_evaluate
