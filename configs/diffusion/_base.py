"""The schema shared by the diffusion configs; ``<method>_<data>.py`` pick a method and data set."""

import textwrap

import ml_collections

from jaxkd.core.config_args import parse_config_arg


def _adam(lr: float) -> dict:
    return dict(lr=lr, b2=0.99, grad_clip=1.0)


def _long_ring(method: str, data: str) -> bool:
    """Whether the student trains 12,000 steps: sCD and rCM on the ring (docs/results.md)."""
    return data == "ring" and method in ("scd", "rcm")


def diffusion_config(*, method: str, data: str, seed: int,
                     smoke: bool) -> ml_collections.ConfigDict:
    """Every key a 2-D diffusion-distillation run reads, with defaults."""
    c = ml_collections.ConfigDict()
    # scd (distil the teacher's ODE), sct (train on the data's), rcm, dmd2, sds, vsd, cd, ct,
    # progressive
    c.method = method
    digits = data == "sklearn_digits"
    # jaxkd.diffusion.toy's ring, moons, checkerboard (kwargs: the distribution's fields), or
    # sklearn_digits (class-conditional; ``data_dir``: where its tfds files are prepared).
    c.data = dict(name=data, kwargs={}, data_dir="")
    c.sigma_d = 0.0  # data scale; 0 = the data's standard deviation (estimated, recorded)
    c.model = (dict(name="unet", kwargs=dict(channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                             emb_dim=128)) if digits
               else dict(name="mlp", kwargs=dict(hidden=256, depth=4, emb_dim=128)))
    # Classifier-free guidance (class-conditional data): the teacher's velocity
    # F_u + scale (F_c - F_u) that students distil and the teacher is evaluated at (1: the
    # conditional model, no guidance).
    c.guidance = dict(scale=1.5 if digits else 1.0)
    c.progress = True
    loop = dict(log_every=100, checkpoint_every=1000, on_nonfinite="stop")
    # The diffusion teacher (TrigFlow flow matching, EMA of its weights). ``dir`` "" =
    # workdir/teacher; a directory holding a finished teacher with the same settings is reused.
    # ``cfg_dropout``: the fraction of labels replaced by the null class (classifier-free
    # guidance's unconditional model; 0 without classes).
    c.teacher = dict(steps=8000, batch_size=1024, p_mean=-1.2, p_std=1.2, ema=0.999, seed=seed,
                     optimizer=_adam(1e-3), dir="", cfg_dropout=0.0, **loop)
    if digits:
        c.teacher.update(dict(steps=6000, batch_size=128, optimizer=_adam(5e-4),
                              cfg_dropout=0.1))
    # The student (jaxkd.diffusion.scm): initialised from the teacher (sCM's practice) or from
    # scratch; tangent warm-up r = min(1, step / tangent_warmup); tangent normalisation c.
    # ``tbcm``: train sCD at points of the teacher's own DDIM trajectories (image-free).
    # ``ema`` > 0: the student is evaluated (and returned) as an EMA of its weights with that
    # decay (warm start: min(ema, (1 + k) / (10 + k)) at update k); ``optimizer.schedule``:
    # "constant" or "cosine" (to 0 over the student's steps). Cosine for sCD and rCM on 2-D
    # data: at a constant lr their 1-step students ended 3-4x the teacher's 64-step sliced
    # Wasserstein distance on moons at 100,000 samples, with the decay 1.2-1.3x (docs/results.md,
    # "What limited the 1-step student"); the other methods keep the setting they were measured
    # with.
    schedule = "cosine" if not digits and method in ("scd", "rcm") else "constant"
    c.student = dict(steps=4000, batch_size=1024, p_mean=-1.0, p_std=1.4, init="teacher",
                     tangent_warmup=1000, tangent_norm=0.1, weight_emb_dim=128, seed=seed + 100,
                     optimizer=dict(_adam(1e-4), schedule=schedule), ema=0.0,
                     tbcm=dict(enabled=False, num_trajectories=4096, grid_steps=32), **loop)
    if digits:
        c.student.update(dict(steps=2000, batch_size=128, tangent_warmup=500))
    # The ring: sCD and rCM train three times longer. At 4000 steps their 1-step students
    # squeezed every mode along the radius (per-mode W2 2.8-3.2x the teacher's at 10^5 samples);
    # at 12,000 1.33x (docs/results.md, "What the ring's students got wrong").
    if _long_ring(method, data):
        c.student.steps = 12000
    # rCM (method "rcm"): sCD + ``weight`` x DMD on the student's own samples (backward
    # simulation with a step count drawn from ``sim_steps``; ``batch_size`` samples), a fake
    # score initialised from the teacher and trained ``fake_steps`` times per student step;
    # DMD's noise times lognormal (p_mean, p_std).
    # The same block drives dmd2 (DMD alone) and sds / vsd (score distillation; weighting of
    # the noise-space gradient ``sds_weighting``: sigma2 = sin^2 t, or uniform).
    # ``snoopi``: SNOOPI's random guidance (class-conditional data; sds, vsd, dmd2, rcm): each
    # step draws one scale uniform on [scale_min, scale_max] for the teacher's score and, with
    # a fake score, for it too (then trained with the teacher's label dropout so its
    # unconditional branch exists); off: both at guidance.scale, the fake unguided.
    c.rcm = dict(weight=0.01, fake_steps=5, sim_steps=(1, 2, 4), batch_size=256,
                 p_mean=-1.0, p_std=1.4, fake_optimizer=_adam(1e-4), sds_weighting="sigma2",
                 snoopi=dict(enabled=False, scale_min=2.0, scale_max=5.0),
                 gan=dict(enabled=False, gen_weight=3e-3, disc_weight=1e-2))
    if digits:
        c.rcm.batch_size = 64
    # ``gan`` (dmd2 only): DMD2's GAN head on the fake score's bottleneck features; the fake
    # score and head learn ``disc_weight`` x the logistic real/fake loss (noised real data vs
    # noised student samples) with their diffusion loss, the student ``gen_weight`` x the
    # non-saturating loss (DMD2's ImageNet weights 1e-2 and 3e-3).
    # Discrete consistency (methods "cd", "ct"; jaxkd.diffusion.discrete_cm): CD on a fixed
    # ``num_steps`` grid (the teacher's Euler step between neighbours), CT with iCT's curriculum
    # (grid doubling from ``s0`` to ``s1`` steps); pairs drawn lognormal (p_mean, p_std) in sigma.
    c.discrete = dict(num_steps=18, s0=10, s1=1280, p_mean=-1.1, p_std=2.0)
    # Progressive distillation (method "progressive"): rounds from the teacher's ``start_steps``
    # DDIM steps (its Karras grid) down to 1, ``steps_per_round`` student updates each (the
    # student's batch, optimiser and seed from config.student).
    c.progressive = dict(start_steps=64, steps_per_round=1000)
    # Guided distillation (method "guided", class-conditional data; Meng et al. 2023): first a
    # student taking the guidance scale as an input learns the teacher's guided velocity for
    # scales uniform on [scale_min, scale_max] (``steps`` updates; the student's batch,
    # optimiser and seed), then progressive distillation of it as above, each round drawing
    # the scale per example. Evaluated at guidance.scale, which must lie in the range.
    c.guided = dict(scale_min=1.0, scale_max=3.0, steps=2000)
    if digits:  # from the teacher's 16 Heun-grid steps (the goal's reference count), 4 rounds
        c.progressive.update(dict(start_steps=16, steps_per_round=500))
        c.guided.steps = 1000
    # Evaluation: the teacher's ODE sampler at each step count, the student's consistency
    # sampling at each step count (first step from t_max, then the listed intermediate times:
    # sCM's 2-step time 1.1), metrics on ``num_samples`` samples against fresh true samples.
    # Digits: fd and class_acc from an in-project classifier trained once into
    # ``classifier_dir`` ("" = workdir/classifier; ``classifier_steps`` 0 = the module's 500,
    # 98.3% test accuracy), ``num_samples`` balanced over the classes.
    c.eval = dict(seed=seed + 1000, num_samples=2000 if digits else 10_000, sampler="heun",
                  teacher_steps=(1, 2, 4, 8, 16, 32, 64), student_steps=(1, 2, 4),
                  student_times={"2": (1.1,), "4": (1.3, 1.1, 0.8)}, classifier_dir="",
                  classifier_steps=0)
    if smoke:
        c.model.kwargs = (dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, emb_dim=16)
                          if digits else dict(hidden=32, depth=2, emb_dim=16))
        c.guided.steps = 5
        c.eval.classifier_steps = 50  # (a weak classifier: enough to exercise the metrics)
        c.student.weight_emb_dim = 16
        for node, steps in ((c.teacher, 30), (c.student, 10)):
            node.update(dict(steps=steps, batch_size=64, log_every=5, checkpoint_every=10))
        c.student.tangent_warmup = 5
        c.student.tbcm.update(dict(num_trajectories=64, grid_steps=4))
        c.rcm.update(dict(fake_steps=2, batch_size=32, sim_steps=(1, 2)))
        c.progressive.update(dict(start_steps=4, steps_per_round=3))
        c.eval.update(dict(num_samples=500, teacher_steps=(1, 4), student_steps=(1, 2)))
    return c


def method_config(method: str, data: str, arg: str | None) -> ml_collections.ConfigDict:
    """Parses ``arg`` (``seed=N``, ``smoke``) strictly and builds :func:`diffusion_config`."""
    args = parse_config_arg(arg, flags=("smoke",), defaults={"seed": 0},
                            config_path=f"configs/diffusion/{method}_{data}.py")
    return diffusion_config(method=method, data=data, seed=args.seed, smoke=args.smoke)



# What each method's config does (the first paragraph of configs/diffusion/<method>_<data>.py's
# docstring) and how long it takes on the 2-core CPU, 20 min of it training the teacher.
_TEXT = {
    "scd": (35, "sCD, continuous-time consistency distillation: the student follows the teacher's "
                "probability-flow ODE, its time derivative taken by one jax.jvp"),
    "sct": (35, "sCT, continuous-time consistency training: the student follows the data's own "
                "tangent cos t z - sin t x0 (the teacher only initialises it)"),
    "rcm": (60, "rCM: sCD plus a distribution-matching (DMD) regulariser, weight 0.01, on the "
                "student's own few-step samples, with a fake score trained alongside from the "
                "teacher"),
    "dmd2": (60, "DMD2: the student (initialised from the teacher) generates in 1, 2 or 4 steps "
                 "(backward simulation) and learns only the distribution-matching gradient "
                 "(f_fake - f_real) / mean|x0 - f_real| on its own noised samples, the fake score "
                 "trained on them 5 times per student step; no GAN head"),
    "sds": (40, "SDS, score distillation sampling: the student as a generator (1, 2 or 4 "
                "steps) receives w(t) (z_teacher - z) on its noised samples, z the added noise"),
    "vsd": (60, "VSD, variational score distillation: as SDS with z replaced by the prediction "
                "of a fake score trained on the student's samples (5 updates per student step)"),
    "cd": (35, "Discrete-time consistency distillation (CD) on an 18-step grid, one Euler step of "
               "the teacher between neighbours, with iCT's pseudo-Huber distance and lognormal "
               "pair sampling"),
    "ct": (35, "Discrete-time consistency training (iCT): the same noise at neighbouring times, "
               "pseudo-Huber distance, lognormal pairs, the grid doubling from 10 to 1280 steps "
               "(initialised from the teacher)"),
    "progressive": (35, "Progressive distillation: students of 32, 16, ..., 1 DDIM steps, each "
                        "from the last, matching two of its steps with one (closed-form target, "
                        "loss max(|x0 - x0~|^2, |eps - eps~|^2))"),
    "guided": (60, "Guided distillation: a student taking the guidance scale as an input learns "
                   "the teacher's classifier-free-guided velocity for scales in [1, 3], then "
                   "progressive distillation of it down to 1 step (class-conditional data only)"),
}


def doc(method: str, data: str) -> str:
    """The docstring of ``configs/diffusion/<method>_<data>.py``: its command first."""
    minutes, what = _TEXT[method]
    if _long_ring(method, data):  # (12,000 student steps, not 4000)
        minutes += {"scd": 10, "rcm": 20}[method]
    if data == "sklearn_digits":
        short, teacher_min = "digits", 25
        text = (f"{what}. Data: scikit-learn's 8x8 digits, class-conditional (a GroupNorm UNet "
                "teacher trained with 10% label dropout; students distil it at classifier-free "
                "guidance scale 1.5). Trains the teacher first (or reuses "
                "``--config.teacher.dir``), then the student, and reports the teacher at 1-64 "
                "ODE steps and the student at 1, 2 and 4 steps: Frechet distance on the features "
                "of an in-project digits classifier, and how often it recognises the requested "
                "class.")
    else:
        short, teacher_min = data, 20
        text = (f"{what}. Data: the toy 2-D distribution ``{data}`` (known "
                "density). Trains the TrigFlow diffusion teacher first (or reuses "
                "``--config.teacher.dir``), then the student, and reports the teacher at 1-64 ODE "
                "steps and the student at 1, 2 and 4 steps (sliced Wasserstein distance, MMD, "
                "mean log-density under the true density, mode coverage).")
    return (f"python -m experiments.diffusion --config configs/diffusion/{method}_{short}.py "
            f"--workdir runs/diffusion/{method}_{short}  # ~{minutes + teacher_min - 20} min on a "
            f"2-core CPU ({teacher_min} of them training the teacher)\n\n"
            f"{textwrap.fill(text, 96)}\n\n"
            "Args after the colon (comma-separated, all optional):\n"
            "  seed=N     seed (default 0).\n"
            "  smoke      tiny and fast (tests).\n")
