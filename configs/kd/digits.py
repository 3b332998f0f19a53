"""python -m experiments.kd --config configs/kd/digits.py --workdir runs/kd_digits  # ~2 min on a 2-core CPU

Quickstart: Hinton knowledge distillation on scikit-learn's 8x8 digits (offline, real data).

A ConvNet teacher is trained first (unless ``config.teacher.init`` names a checkpoint), then the
same small MLP student is trained twice per seed for the same number of steps on the same batches:
from scratch (cross-entropy) and with Hinton KD ((1 - alpha) * CE + alpha * T^2 * KL).

Args after the colon (comma-separated, all optional):
  smoke        tiny and fast (tests): few steps, one seed.
  seed=N       first seed (seeds are N, N+1, ...).
  seeds=N      number of student seeds (default 3).
  teacher=M    teacher architecture: convnet (default), resnet8x4, resnet20, mlp.
  student=M    student architecture: mlp (default), convnet (a thin one).
"""

from configs.kd import _base
from jaxkd.core.config_args import check_choice, parse_config_arg

_TEACHERS = {
    "convnet": dict(width=64, depth=2, norm="batch"),
    "resnet8x4": {},
    "resnet20": {},
    "mlp": dict(hidden=(512, 512)),
}
_STUDENTS = {
    "mlp": dict(hidden=(32,)),
    "convnet": dict(width=8, depth=1, norm="none"),
}


def get_config(arg=None):
    args = parse_config_arg(
        arg, flags=("smoke",),
        defaults={"seed": 0, "seeds": 3, "teacher": "convnet", "student": "mlp"},
    )
    check_choice("teacher", args.teacher, _TEACHERS)
    check_choice("student", args.student, _STUDENTS)
    # alpha = 0.5 rather than the CIFAR benchmarks' 0.9: see the sweep in docs/results.md.
    return _base.kd_config(
        seed=args.seed, num_seeds=args.seeds, dataset="sklearn_digits",
        teacher=args.teacher, teacher_kwargs=_TEACHERS[args.teacher], teacher_steps=1500,
        student=args.student, student_kwargs=_STUDENTS[args.student], steps=1500,
        batch_size=64, lr=3e-3, teacher_lr=3e-3, temperature=4.0, alpha=0.5, smoke=args.smoke,
    )
