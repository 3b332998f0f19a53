"""The schema shared by the dataset-distillation configs; ``<method>_<data>.py`` fill it in."""

import ml_collections

from jaxkd.core.config_args import ConfigArgs, check_choice, parse_config_arg
from jaxkd.dataset_distill.dc import DC_LOOPS

# Per data set: the protocol network and DSA strategy. Digits and MNIST-1D are not flipped
# (a mirrored digit is another symbol); MNIST-1D signals cannot be rotated.
# ``model`` distils (and, for trajectory methods, is the experts' architecture); ``eval_model``
# is the protocol's evaluation network. On digits the distillation ConvNet is 64 wide rather
# than the protocol's 128: on the 2-core CPU a width-128 MTT iteration (20 unrolled steps, 100
# images) takes about 4x longer than at width 64; evaluation stays at the protocol's width 128.
# Depth follows the image size as in the field (ConvNetD3 for 32x32, D4 for 64x64, D5 for
# 128x128: a few pixels left after the last pooling), so 8x8 digits get depth 2 (2x2 maps).
# Depth 3 would instance-normalise 2x2 maps (4 values) in its last block, and such a network
# barely learns at first: on the full digits training set (SGD lr 0.01, batch 32, DSA) depth 3
# is at 16% test accuracy after one epoch and 75% after six, depth 2 at 69% and 91%.
DATA = {
    "sklearn_digits": dict(
        model="convnet", model_kwargs=dict(width=64, depth=2, norm="instance"),
        eval_model="convnet", eval_kwargs=dict(width=128, depth=2, norm="instance"),
        strategy="color_crop_cutout_scale_rotate",
        # Cross-architecture: an MLP, and a ResNet with instance norm (the DD code's ResNet-18
        # default; batch norm cannot be trained as a flat parameter vector here).
        cross="mlp,resnet8", cross_kwargs={"mlp": {"hidden": (128,)},
                                           "resnet8": {"norm": "instance"}}, lr=0.01),
    "mnist1d": dict(
        model="convnet1d", model_kwargs=dict(width=64, depth=3),
        eval_model="convnet1d", eval_kwargs=dict(width=64, depth=3),
        strategy="color_crop_cutout_scale", cross="mlp",
        cross_kwargs={"mlp": {"hidden": (128,)}}, lr=0.03),
}
# ``lr``: the learning rate of the evaluation networks (SGD, momentum 0.9), of the experts
# (plain SGD) and the initial learned lr of the trajectory methods. The protocol's 0.01 is for
# normalised ConvNets; the MNIST-1D ConvNet has no normalisation and at 0.01 trains slowly
# (experts, plain SGD, reach 22% after one epoch and 63% after twenty). Measured on MNIST-1D
# (5 networks; full data 100 epochs, subsets 300; DSA), lr 0.01 / 0.03 / 0.05 / 0.1: full data
# 83.8 / 94.0 / 96.0 / 97.2%; a random 10-per-class subset 31.7 / 39.2 / - / 49.3%; one per
# class 16.4 / 17.0 / 20.2 / 10.3% (at 0.1 every network collapses to chance on 10 signals).
# 0.03 keeps a margin below that collapse (the MTT family's learned lr grows from it).

SHORT = {"sklearn_digits": "digits", "mnist1d": "mnist1d"}  # config file suffixes


def sgd(lr: float, momentum: float, weight_decay: float, batch_size: int,
        decay_at: float = 0.5) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                          batch_size=batch_size, decay_at=decay_at,
                                          decay_factor=0.1))


def dd_config(*, method: str, data: str, ipc: int, seed: int,
              smoke: bool) -> ml_collections.ConfigDict:
    """Every key a dataset-distillation run reads, with protocol defaults."""
    d = DATA[data]
    c = ml_collections.ConfigDict()
    c.method = method
    c.ipc = ipc
    c.seed = seed
    # ``zca``: ZCA-whitening regulariser (jaxkd.dataset_distill.zca; 0 = off, MTT's reference
    # code uses 0.1 on CIFAR): every stage then works on whitened inputs, and synthetic.npz and
    # the image grid are mapped back to the data set's units.
    c.data = dict(name=data, data_dir="", zca=0.0)
    c.model = dict(name=d["model"], kwargs=d["model_kwargs"])
    dsa = dict(strategy=d["strategy"], scale=1.2, rotate=15.0, crop_pad=0.125, cutout=0.5,
               brightness=1.0, saturation=2.0, contrast=0.5, flip_prob=0.5)
    c.dsa = dict(dsa)  # augmentation inside distillation

    # Expert trajectories (trajectory methods): ``dir`` "" = workdir/experts; share one
    # directory between runs with --config.experts.dir. ``train``: train missing epochs.
    # Smoother experts (jaxkd.dataset_distill.nets.ExpertObjective): FTD's sharpness-aware
    # training (``sam_rho`` > 0; GSAM with ``sam_alpha``; ASAM with ``sam_adaptive``), AST's
    # clipping loss (``loss_scale``: comma-separated multipliers of the first epochs' loss) and
    # input-gradient penalty (``grad_penalty``).
    c.experts = dict(dir="", train=True, num_experts=8, epochs=20, seed=0,
                     sgd=sgd(d["lr"], 0.0, 0.0, 32, decay_at=1.0), dsa=dict(dsa),
                     sam_rho=0.0, sam_alpha=0.0, sam_adaptive=False, loss_scale="",
                     grad_penalty=0.0)

    # The synthetic set: ``init`` "real" (random real images), "noise" or "class_mean" (the
    # class-mean baseline's images: per-class means or k-means centroids); ``labels`` "hard"
    # (one-hot, fixed) or "expert" (DATM: learnable logits initialised from expert 0 at
    # ``label_epoch``, 0 = its last saved epoch). Optimisers: SGD with ``momentum`` for the
    # images (lr_img) and the inner learning rate (lr_lr, initialised to lr_init), SGD with
    # ``label_momentum`` for soft labels (lr_label); ``optimizer`` "adam" (FRePo) replaces the
    # images' SGD by Adam at lr_img.
    # ``init_file``: start from a synthetic.npz instead (with iterations=0: evaluate it).
    # ``ema``: FTD's exponential moving average of the images (decay; 0 = off): the average,
    # not the last iterate, is saved and evaluated. ``fyi``: FYI's flip pairing (the method
    # sees every image and its mirror image; jaxkd.dataset_distill.fyi), for flippable data.
    c.distill = dict(iterations=500, init="real", init_file="", labels="hard", label_epoch=0,
                     optimizer="sgd", lr_img=100.0, lr_lr=1e-5, lr_init=d["lr"], lr_label=0.0,
                     momentum=0.5, ema=0.0, fyi=False, label_momentum=0.9, log_every=10,
                     checkpoint_every=100, on_nonfinite="stop", progress=True)
    # Trajectory matching (see jaxkd.dataset_distill.mtt.MTTConfig).
    c.mtt = dict(syn_steps=20, expert_epochs=2, min_start_epoch=0, max_start_epoch=5,
                 max_start_epoch_final=0, batch_syn=0, hypergrad="reverse",
                 skip_loss_above=float("inf"))
    # Distribution matching: real images per class per iteration.
    c.dm = dict(batch_real=256)
    # Gradient matching (DC; DSA = DC with config.dsa on): see
    # jaxkd.dataset_distill.dc.DCConfig. (outer, inner) loops by ipc as the reference code.
    outer, inner = DC_LOOPS.get(ipc, (10, 50))
    c.dc = dict(outer_loop=outer, inner_loop=inner, batch_real=256, batch_train=256,
                lr_net=0.01)
    # SRe2L / CDA: recover images from a BatchNorm teacher trained here (squeeze; ``dir`` ""
    # = workdir/teacher, reused when its settings match), relabel with its soft labels.
    # ``relabel`` "crop": evaluation networks learn the teacher's soft labels of each augmented
    # batch (FKD-style, as the papers); "image": one soft label per synthetic image.
    c.sre2l = dict(r_bn=0.01, crop_min_scale=0.08, curriculum=False, temperature=1.0,
                   relabel="crop",
                   teacher=dict(name=d["eval_model"], kwargs=(
                       dict(d["eval_kwargs"], norm="batch")),
                       epochs=30, lr=0.05, batch_size=128, seed=0, dir=""))
    # FRePo: kernel ridge regression on a pool's features (jaxkd.dataset_distill.frepo).
    c.frepo = dict(pool_size=10, max_online_steps=100, batch_real=1024, ridge=1e-6,
                   lr_net=0.01)

    # The evaluation protocol: ``num_nets`` fresh ``model`` networks, ``epochs`` over the
    # synthetic set, last-epoch accuracy (results ``eval/acc_*``); ``learned_lr`` uses a
    # trajectory method's learned lr; ``baselines`` (random subset, class means, full data for
    # ``full_epochs``, 0 = skip it) are computed once per workdir. The distillation network,
    # when it differs, is evaluated too (``eval_distill_net/acc_*``), and so are
    # ``cross_models`` (comma-separated registry names, kwargs in ``cross_kwargs``;
    # ``eval_<name>/acc_*``).
    c.eval = dict(model=dict(name=d["eval_model"], kwargs=d["eval_kwargs"]), baselines=True,
                  num_nets=5, epochs=300.0, seed=10_000, learned_lr=True, full_epochs=100.0,
                  sgd=sgd(d["lr"], 0.9, 5e-4, 256), dsa=dict(dsa), cross_models=d["cross"],
                  cross_kwargs=d["cross_kwargs"])
    if smoke:
        c.experts.num_experts = 2
        c.experts.epochs = 3
        c.distill.iterations = 4
        c.distill.log_every = 2
        c.distill.checkpoint_every = 2
        c.mtt.syn_steps = 3
        c.mtt.expert_epochs = 1
        c.mtt.max_start_epoch = 2
        c.eval.num_nets = 2
        c.eval.epochs = 3.0
        c.eval.full_epochs = 1.0
        c.eval.cross_models = "mlp"  # (the ResNet's compile is tested on its own)
        c.model.kwargs = dict(c.model.kwargs, width=16)
        c.eval.model.kwargs = dict(c.eval.model.kwargs, width=16)
        # One op compiles far faster than the six-way switch (the full DSA is tested on its own).
        for node in (c.dsa, c.experts.dsa, c.eval.dsa):
            node.strategy = "crop"
    return c


def run_length(c: ml_collections.ConfigDict, smoke: bool, iterations: int, log_every: int,
               checkpoint_every: int) -> None:
    """Sets the distillation's length and logging/checkpoint cadence (smoke configs keep theirs)."""
    if not smoke:
        c.distill.update(dict(iterations=iterations, log_every=log_every,
                              checkpoint_every=checkpoint_every))


def method_config(method: str, data: str, arg: str | None, ipcs, name: str | None = None,
                  flags: tuple[str, ...] = ()) -> tuple[ConfigArgs, ml_collections.ConfigDict]:
    """Parses ``arg`` (``ipc=N``, ``seed=N``, ``smoke``) strictly and builds :func:`dd_config`.

    ``name``: the config file's method part when it differs from ``method`` (``dsa`` is DC);
    ``flags``: the config's own bare words besides ``smoke`` (read from the returned args).
    """
    path = f"configs/dataset_distill/{name or method}_{SHORT[data]}.py"
    args = parse_config_arg(arg, flags=("smoke", *flags), defaults={"ipc": 10, "seed": 0},
                            config_path=path)
    check_choice("ipc", args.ipc, ipcs)
    return args, dd_config(method=method, data=data, ipc=args.ipc, seed=args.seed,
                           smoke=args.smoke)
