"""python -m experiments.kd --config configs/kd/mnist1d.py --workdir runs/kd_mnist1d  # ~3 min on a 2-core CPU

Hinton knowledge distillation on MNIST-1D (4000 train / 1000 test signals of length 40, generated
locally with a fixed seed): a 1-D CNN teacher, then a small MLP student from scratch and with KD.
MNIST-1D separates architectures much more than MNIST does (CNN ~94%, MLP ~70% in the MNIST-1D
paper), so there is headroom for distillation.

Args after the colon (comma-separated, all optional):
  smoke        tiny and fast (tests): few steps, one seed.
  seed=N       first seed (seeds are N, N+1, ...).
  seeds=N      number of student seeds (default 3).
  student=M    student architecture: mlp (default; hidden 100, 100) or convnet1d (width 8).
"""

from configs.kd import _base
from jaxkd.core.config_args import check_choice, parse_config_arg

_STUDENTS = {
    "mlp": dict(hidden=(100, 100)),
    "convnet1d": dict(width=8, depth=3),
}


def get_config(arg=None):
    args = parse_config_arg(arg, flags=("smoke",),
                            defaults={"seed": 0, "seeds": 3, "student": "mlp"})
    check_choice("student", args.student, _STUDENTS)
    return _base.kd_config(
        seed=args.seed, num_seeds=args.seeds, dataset="mnist1d",
        teacher="convnet1d", teacher_kwargs=dict(width=64, depth=3), teacher_steps=4000,
        student=args.student, student_kwargs=_STUDENTS[args.student], steps=4000,
        batch_size=128, lr=2e-3, teacher_lr=3e-3, temperature=4.0, alpha=0.5, smoke=args.smoke,
    )
