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

import ml_collections

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


def _optimizer(lr: float, steps_warmup: int = 0) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name="adamw", lr=lr, schedule="cosine", warmup_steps=steps_warmup, momentum=0.9,
        nesterov=False, weight_decay=1e-4, grad_clip_norm=0.0,
    ))


def get_config(arg=None):
    args = parse_config_arg(
        arg, flags=("smoke",),
        defaults={"seed": 0, "seeds": 3, "teacher": "convnet", "student": "mlp"},
    )
    check_choice("teacher", args.teacher, _TEACHERS)
    check_choice("student", args.student, _STUDENTS)
    c = ml_collections.ConfigDict()
    c.seed = args.seed
    c.num_seeds = args.seeds

    c.data = dict(
        name="sklearn_digits", data_dir="", image_size=0,  # 0 = the dataset's own size
        augment=dict(random_crop_padding=0, random_flip=False, mixup_alpha=0.0,
                     inception_crop=False),
    )
    c.mesh = dict(data=-1, fsdp=1, params="replicated")

    c.teacher = ml_collections.ConfigDict()
    c.teacher.init = ""  # checkpoint directory of a trained teacher; "" = train one in the workdir
    c.teacher.model = args.teacher
    c.teacher.model_kwargs = _TEACHERS[args.teacher]
    c.teacher.steps = 1500
    c.teacher.epochs = 0.0
    c.teacher.optimizer = _optimizer(3e-3)

    c.student = dict(model=args.student, model_kwargs=_STUDENTS[args.student])
    c.optimizer = _optimizer(3e-3)
    # alpha = weight of the KD term. 0.5 rather than the CIFAR benchmarks' 0.9: see docs/results.md.
    c.kd = dict(loss="hinton", temperature=4.0, alpha=0.5)

    c.train = dict(
        steps=1500, epochs=0.0, batch_size=64, ema_decay=0.0,
        log_every=100, eval_every=250, checkpoint_every=500, keep_checkpoints=2,
        async_checkpoint=True, on_nonfinite="stop", progress=True,
    )

    if args.smoke:
        c.num_seeds = 1
        c.teacher.steps = 30
        c.train.steps = 20
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
    return c
