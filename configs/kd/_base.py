"""The schema shared by the KD configs; each ``configs/kd/<name>.py`` fills in its choices."""

import ml_collections


def optimizer(lr: float, warmup_steps: int = 0, name: str = "adamw",
              weight_decay: float = 1e-4) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        name=name, lr=lr, schedule="cosine", warmup_steps=warmup_steps, momentum=0.9,
        nesterov=False, weight_decay=weight_decay, grad_clip_norm=0.0,
    ))


def kd_config(*, seed: int, num_seeds: int, dataset: str, teacher: str, teacher_kwargs: dict,
              teacher_steps: int, student: str, student_kwargs: dict, steps: int,
              batch_size: int, lr: float, teacher_lr: float, temperature: float, alpha: float,
              smoke: bool) -> ml_collections.ConfigDict:
    """One teacher, and one student trained from scratch and with KD per seed."""
    c = ml_collections.ConfigDict()
    c.seed = seed
    c.num_seeds = num_seeds
    c.data = dict(
        name=dataset, data_dir="", image_size=0,  # 0 = the dataset's own size
        augment=dict(random_crop_padding=0, random_flip=False, mixup_alpha=0.0,
                     inception_crop=False),
    )
    c.mesh = dict(data=-1, fsdp=1, params="replicated")

    c.teacher = ml_collections.ConfigDict()
    # Checkpoint directory of a trained teacher, or several separated by commas (an ensemble);
    # "" = train ``num_teachers`` teachers in the workdir (seeds seed, seed + 1, ...).
    c.teacher.init = ""
    c.teacher.num_teachers = 1
    # Cached teacher outputs (dataset reinforcement): num_samples > 0 runs the teacher once over
    # that many augmentations per training example and stores its top_k (0 = all) outputs in
    # ``dir`` (default workdir/teacher_cache); KD students then train from the cache.
    c.teacher.cache = dict(num_samples=0, top_k=0, dir="", dtype="float32")
    c.teacher.model = teacher
    c.teacher.model_kwargs = teacher_kwargs
    c.teacher.steps = teacher_steps
    c.teacher.epochs = 0.0
    c.teacher.optimizer = optimizer(teacher_lr)

    c.student = dict(model=student, model_kwargs=student_kwargs)
    c.optimizer = optimizer(lr)
    # Loss = (1 - alpha) * CE + alpha * (distillation term).
    # ``params``: the chosen loss's own keyword arguments (e.g. DKD's beta), set by each config.
    # ``loss``: a name in jaxkd.losses.LOSSES, or "deit" (a ViT student's distillation token).
    # ``warmup_steps``: the distillation weight ramps from 0 to alpha over these steps.
    # ``source``: "teacher" (config.teacher) or "ema" (momentum distillation: the teacher is the
    # student's own EMA with ``momentum``, ALBEF).
    # ``influence_scale``: > 0 turns on KD-AIF's per-example weights sigmoid(scale * z) of the
    # distillation term (z: standardised first-order influence; jaxkd.kd.steps).
    # ``self_distill_steps``: > 0 adds DWPose's second stage: the finished KD student teaches
    # itself for that many steps, only its ``head`` trains (results ``kd_self/...``).
    # ``ensemble``: how several teachers combine: "mean_probs", "mean_logits" or "per_teacher"
    # (the loss against each, weighted); ``weights`` () = uniform.
    c.kd = dict(loss="hinton", temperature=temperature, alpha=alpha, params={}, warmup_steps=0,
                source="teacher", momentum=0.995, influence_scale=0.0, self_distill_steps=0,
                ensemble=dict(combine="mean_probs", weights=()))
    # An optional feature / relational term added with ``weight`` (loss "" = none): layers are
    # names the models sow ("features", "stage1", ...; comma-separated pairs for several).
    c.kd.feature = dict(loss="", weight=0.0, student_layers="features",
                        teacher_layers="features", adapter="none", params={})

    c.train = dict(
        steps=steps, epochs=0.0, batch_size=batch_size, ema_decay=0.0,
        log_every=100, eval_every=250, checkpoint_every=500, keep_checkpoints=2,
        async_checkpoint=True, on_nonfinite="stop", progress=True,
    )
    if smoke:
        c.num_seeds = 1
        c.teacher.steps = 30
        c.train.steps = 20
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
    return c
