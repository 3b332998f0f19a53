"""python -m experiments.dataset_distill --config configs/dataset_distill/ast_mnist1d.py --workdir runs/dd/ast_mnist1d  # ~30 min on a 2-core CPU

AST on MNIST-1D: the digits config's settings (``ast_digits.py``: MTT on experts trained with
the clipping loss and the input-gradient penalty) with the 1-D ConvNet (width 64, depth 3).

Args after the colon: as ``mtt_digits.py`` (ipc=N, seed=N, smoke).
"""

from configs.dataset_distill import ast_digits


def get_config(arg=None):
    return ast_digits.make("mnist1d", arg)
