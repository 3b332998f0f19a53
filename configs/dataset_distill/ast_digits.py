"""python -m experiments.dataset_distill --config configs/dataset_distill/ast_digits.py --workdir runs/dd/ast_digits  # ~30 min on a 2-core CPU

AST (alignment with smooth expert trajectories) on scikit-learn's 8x8 digits: MTT
(``mtt_digits.py``'s settings) on experts trained with AST's clipping loss (the loss of the first
eleven epochs scaled 0.5 -> 0.9, as the reference code) and its input-gradient penalty (weight 2,
as the method card). AST's other parts (balanced inner loss, intermediate matching, weight
perturbation) are not included. The experts live in their own directory (``workdir/experts`` by
default; share them with ``--config.experts.dir``).

Args after the colon (comma-separated, all optional):
  ipc=N      images per class (1, 10 or 50; default 10).
  seed=N     distillation seed (default 0).
  smoke      tiny and fast (tests).
"""

from configs.dataset_distill import mtt_digits

AST_LOSS_SCALE = "0.5,0.5,0.55,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9"


def get_config(arg=None):
    return make("sklearn_digits", arg)


def make(data: str, arg=None):
    """The AST config on ``data`` (also used by ``ast_mnist1d.py``)."""
    c = mtt_digits.make(data, arg, name="ast")
    c.experts.update(dict(loss_scale=AST_LOSS_SCALE, grad_penalty=2.0))
    return c
