"""Dataset distillation: synthetic training sets that train fresh networks well.

    python -m experiments.dataset_distill --config configs/dataset_distill/mtt_digits.py:ipc=10 \
        --workdir runs/dd/mtt_digits_ipc10

Modules: ``augment`` (differentiable siamese augmentation), ``unroll`` (exact hypergradients
through unrolled SGD with memory flat in the number of steps), ``nets`` (networks as flat
parameter vectors, K trained in lockstep), ``experts`` (expert trajectories on disk), ``mtt``
(trajectory matching and DATM options), ``evaluate`` (the field's protocol and baselines),
``train`` (the driver).
"""

from jaxkd.dataset_distill.train import METHODS, train_and_evaluate

__all__ = ["METHODS", "train_and_evaluate"]
