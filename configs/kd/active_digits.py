"""python -m experiments.kd --config configs/kd/active_digits.py --workdir runs/kd_active_digits  # ~3 min on a 2-core CPU

Active distillation on scikit-learn's 8x8 digits: which of the 1437 unlabeled training images to
pay the teacher for (one query = one soft label), strategies random / margin / rad (Robust Active
Distillation, see ``jaxkd.kd.active``).

An imperfect teacher (a ConvNet trained on ``teacher.num_labeled`` = 80 labeled images of the
pool, ~88% test accuracy) answers the queries; a small MLP student is trained from scratch in
every round, only on the queried images and only against the teacher's logits (Hinton KD, T = 4,
alpha = 1: no ground-truth labels), and tested on the 360 test images. The first 25 queries are
random (shared by all strategies of a seed); then rounds of at most 100 queries up to 800
(budgets 50, 100, 200, ..., 800: results are reported at 25, 50, 100, 200, 400 and 800).

Args after the colon (comma-separated, all optional):
  smoke        tiny and fast (tests): few steps, one seed, budgets 10 and 30.
  seed=N       first seed (seeds are N, N+1, ...).
  seeds=N      number of seeds (default 5).
  labeled=N    size of the teacher's labeled seed set (default 80; 0 = the whole pool).
  rho=X        rad's robustness (default 2.0; 1 = trust the correctness estimates, inf = worst
               case over where the teacher's mistakes fall).
"""

from configs.kd import _base
from jaxkd.core.config_args import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(arg, flags=("smoke",),
                            defaults={"seed": 0, "seeds": 5, "labeled": 80, "rho": 2.0})
    c = _base.kd_config(
        seed=args.seed, num_seeds=args.seeds, dataset="sklearn_digits",
        teacher="convnet", teacher_kwargs=dict(width=64, depth=2, norm="batch"),
        teacher_steps=500, student="mlp", student_kwargs=dict(hidden=(32,)), steps=300,
        batch_size=64, lr=3e-3, teacher_lr=3e-3, temperature=4.0, alpha=1.0, smoke=args.smoke,
    )
    c.experiment = "active"
    c.teacher.num_labeled = args.labeled  # the teacher's labeled seed set (0 = whole pool)
    # train.steps: student steps per round (every round trains a fresh student).
    c.active = dict(
        strategies=("random", "margin", "rad"),
        budgets=(25, 50, 100, 200, 400, 800),  # cumulative teacher queries; [0] is random
        round_size=100,  # rounds of at most this many queries between budgets (0 = no limit)
        method="rad",  # reported as kd/* in results.json (random is scratch/*)
        rad_robustness=args.rho,
    )
    if args.smoke:
        c.teacher.num_labeled = 50
        c.active.budgets = (10, 30)
        c.active.round_size = 0
    return c
