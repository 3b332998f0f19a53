"""python -m experiments.kd --config configs/kd/lelp_digits.py --workdir runs/kd_lelp_digits  # ~4 min on a 2-core CPU

Few-class distillation on scikit-learn digits relabelled to 2 classes (even / odd digits by
default), comparing students from scratch, with Hinton KD on the 2 logits, and with LELP
(pseudo-subclasses from linear projections of the teacher's embeddings; Loo et al. 2024), plus
an oracle student trained on the true digits and aggregated to 2 classes. The quickstart's
ConvNet teacher, MLP student, optimizer and budget (``configs/kd/digits.py``); see
``jaxkd/kd/few_class.py`` for the method and how it differs from the paper.

Args after the colon (comma-separated, all optional):
  smoke          tiny and fast (tests): few steps, one seed.
  seed=N         first seed (seeds are N, N+1, ...).
  seeds=N        number of student seeds (default 5).
  relabel=R      parity (default: even / odd) or halves (0-4 / 5-9).
  split=S        rotation (default: LELP's rotated principal directions, one pseudo-subclass
                 each) or kmeans (k-means in the principal subspace).
  subclasses=N   pseudo-subclasses per class (default 5; with split=rotation also the
                 subspace dimension).
  dim=N          subspace dimension for split=kmeans (default: subclasses).
"""

from configs.kd import digits
from jaxkd.core.config_args import check_choice, parse_config_arg
from jaxkd.kd.few_class import RELABELINGS, SPLITS


def get_config(arg=None):
    args = parse_config_arg(
        arg, flags=("smoke",),
        defaults={"seed": 0, "seeds": 5, "relabel": "parity", "split": "rotation",
                  "subclasses": 5, "dim": 0},
    )
    check_choice("relabel", args.relabel, RELABELINGS)
    check_choice("split", args.split, SPLITS)
    c = digits.get_config("smoke" if args.smoke else None)
    c.experiment = "lelp"
    c.seed = args.seed
    if not args.smoke:
        c.num_seeds = args.seeds
    c.few_class = dict(relabel=args.relabel)
    c.lelp = dict(
        layer="features",  # the teacher's sown embedding (the input of its classifier)
        null_space=True,  # drop the directions the teacher's classifier reads before PCA
        split=args.split,
        subspace_dim=args.dim or args.subclasses,
        subclasses=args.subclasses,
        beta=0.5,  # within-class split temperature, on coordinates scaled to unit RMS
        seed=0,  # of the random rotations / k-means seeding (the table is deterministic)
        kmeans_iters=100,
        oracle=True,  # also train on the true fine labels (aggregated), an upper bound
    )
    return c
