"""python -m experiments.kd --config configs/kd/kdaif_mnist1d.py --workdir runs/kd_kdaif_mnist1d  # ~7 min on a 2-core CPU

KD-AIF (influence-weighted KD) on mnist1d: ``configs/kd/mnist1d.py``'s Hinton KD with each example's
distillation term weighted by sigmoid(z), z the batch-standardised first-order influence of that
term on the labelled loss, computed in the student's classifier layer
(``jaxkd.kd.steps.influence_kd_weights``: gradient alignment, identity Hessian, the batch's
labelled loss as the reference). Same args as ``configs/kd/mnist1d.py``.
"""

from configs.kd import _methods, mnist1d

get_config = _methods.make("kdaif", mnist1d.get_config)
