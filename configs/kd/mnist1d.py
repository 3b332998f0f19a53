"""python -m experiments.kd --config configs/kd/mnist1d.py --workdir runs/kd_mnist1d  # ~6 min on a 2-core CPU

Hinton knowledge distillation on MNIST-1D (4000 train / 1000 test signals of length 40, generated
locally with a fixed seed): a 1-D CNN teacher, then an MLP student from scratch and with KD.
MNIST-1D separates architectures much more than MNIST does (CNN ~94%, MLP ~70% in the MNIST-1D
paper), so there is headroom for distillation.

Every network trains with random shifts (zero-pad 4 on each side, crop back to 40), which lifts
the CNN teacher from 87% to 96%. The student is patient (20k steps of batch 128, 640 epochs):
KD gains grow with the schedule (+1.8 points at 8k steps, +4.5 at 20k; docs/results.md), as
"patient and consistent" KD (Beyer et al. 2022) predicts. T = 4 and alpha = 0.9 are the
CIFAR benchmark defaults of the method card, not tuned here.

Args after the colon (comma-separated, all optional):
  smoke        tiny and fast (tests): few steps, one seed.
  seed=N       first seed (seeds are N, N+1, ...).
  seeds=N      number of student seeds (default 3).
  student=M    student architecture: mlp (default; hidden 256, 256) or convnet1d (width 8).
"""

from configs.kd import _base
from jaxkd.core.config_args import check_choice, parse_config_arg

_STUDENTS = {
    "mlp": dict(hidden=(256, 256)),
    "convnet1d": dict(width=8, depth=3),
}


def get_config(arg=None):
    args = parse_config_arg(arg, flags=("smoke",),
                            defaults={"seed": 0, "seeds": 3, "student": "mlp"})
    check_choice("student", args.student, _STUDENTS)
    c = _base.kd_config(
        seed=args.seed, num_seeds=args.seeds, dataset="mnist1d",
        teacher="convnet1d", teacher_kwargs=dict(width=64, depth=3), teacher_steps=4000,
        student=args.student, student_kwargs=_STUDENTS[args.student], steps=20000,
        batch_size=128, lr=2e-3, teacher_lr=3e-3, temperature=4.0, alpha=0.9, smoke=args.smoke,
    )
    c.data.augment.random_crop_padding = 4
    if not args.smoke:
        c.train.eval_every = 2000
        c.train.log_every = 500
        c.train.checkpoint_every = 5000
    return c
