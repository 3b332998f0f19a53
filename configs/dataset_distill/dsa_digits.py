"""python -m experiments.dataset_distill --config configs/dataset_distill/dsa_digits.py --workdir runs/dd/dsa_digits  # ~45 min on a 2-core CPU (ipc 10)

Differentiable Siamese Augmentation (DSA) on scikit-learn's 8x8 digits: gradient matching (DC)
with the same random augmentation applied to each class's real and synthetic batches, and to
the network's training on the synthetic set. See ``dc_digits.py`` for the method and its args.
"""

from configs.dataset_distill import dc_digits


def get_config(arg=None):
    return dc_digits.make("sklearn_digits", arg, augment=True)
