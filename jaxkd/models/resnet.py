"""CIFAR-style ResNets of the CRD / RepDistiller family used as KD teachers and students.

Follows RepDistiller's `models/resnet.py` (resnet8 ... resnet110, resnet8x4, resnet32x4) and
`models/resnetv2.py` (resnet18): a 3x3 stride-1 stem conv + BN + ReLU (no max-pool), stages of
basic blocks whose first block strides by 2 (except stage 1), a 1x1 conv + BN projection shortcut
whenever the stride or width changes, global average pooling and a dense classifier. Convs have
no bias and He-normal (fan_out) init, as in the reference.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

# PyTorch BatchNorm2d defaults (momentum=0.1 means keep 0.9 of the running average).
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
RESNET_NORMS = ("batch", "instance")


def _norm_layer(kind: str, train: bool, dtype: Dtype) -> functools.partial:
    """BatchNorm (PyTorch defaults), or instance norm: GroupNorm with one channel per group
    and a per-channel affine, the default of the dataset-distillation code's ``ResNet18``."""
    if kind == "batch":
        return functools.partial(nn.BatchNorm, use_running_average=not train,
                                 momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=dtype)
    if kind == "instance":
        return functools.partial(nn.GroupNorm, num_groups=None, group_size=1, epsilon=_BN_EPS,
                                 dtype=dtype)
    raise ValueError(f"unknown ResNet norm {kind!r}; valid: {', '.join(RESNET_NORMS)}")


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity or projection shortcut.

    Returns the *pre-activation* sum `bn2(conv2(...)) + shortcut(x)`; the caller applies the
    ReLU, so that both the pre- and post-activation features are available to it.
    """

    features: int
    strides: int = 1
    dtype: Dtype = jnp.float32
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_conv_init, dtype=self.dtype)
        norm = _norm_layer(self.norm, train, self.dtype)
        s = (self.strides, self.strides)
        y = conv(self.features, (3, 3), strides=s, padding=1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=1, name="conv2")(y)
        y = norm(name="bn2")(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, (1, 1), strides=s, padding="VALID", name="proj_conv")(x)
            shortcut = norm(name="proj_bn")(shortcut)
        return y + shortcut


class ResNet(nn.Module):
    """CIFAR ResNet with basic blocks.

    Input: float `[B, H, W, C]` (32x32 for CIFAR; any size works since pooling is global).
    Output: float32 logits `[B, num_classes]`. `norm="batch"` (default): batch norm
    everywhere, running statistics in `batch_stats`, used when `train=False`; `norm="instance"`:
    per-example, per-channel normalisation with no state (the dataset-distillation code's
    ResNet-18 default; trainable as a flat parameter vector). Layer names are the same.

    Sown into the `intermediates` collection (S = len(stage_sizes)):
      - `stem`: `[B, H, W, stem_width]`, after stem conv + BN + ReLU.
      - `stage{i}` (i = 1..S): `[B, H/2**(i-1), W/2**(i-1), widths[i-1]]`, stage i's output
        (after the last block's ReLU).
      - `stage{i}_preact`: the same before that ReLU (used by OFD-style feature losses).
      - `features`: `[B, widths[-1]]`, the globally pooled embedding fed to the classifier.
    """

    num_classes: int
    stage_sizes: Sequence[int]
    widths: Sequence[int]
    stem_width: int
    dtype: Dtype = jnp.float32
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.norm not in RESNET_NORMS:
            raise ValueError(f"unknown ResNet norm {self.norm!r}; valid: {', '.join(RESNET_NORMS)}")
        # Configs may hand over lists; tuples keep the module hashable (for static jit args).
        object.__setattr__(self, "stage_sizes", tuple(self.stage_sizes))
        object.__setattr__(self, "widths", tuple(self.widths))
        if len(self.stage_sizes) != len(self.widths) or not self.stage_sizes:
            raise ValueError(
                f"stage_sizes and widths must be non-empty and of equal length, got "
                f"{self.stage_sizes=}, {self.widths=}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ResNet expects images [B, H, W, C], got shape {x.shape}")
        h = x.astype(self.dtype)
        h = nn.Conv(
            self.stem_width,
            (3, 3),
            padding=1,
            use_bias=False,
            kernel_init=_conv_init,
            dtype=self.dtype,
            name="stem_conv",
        )(h)
        h = _norm_layer(self.norm, train, self.dtype)(name="stem_bn")(h)
        h = nn.relu(h)
        self.sow("intermediates", "stem", h)
        for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
            for j in range(num_blocks):
                strides = 2 if i > 1 and j == 0 else 1
                block = BasicBlock(width, strides, dtype=self.dtype, norm=self.norm,
                                   name=f"stage{i}_block{j + 1}")
                preact = block(h, train=train)
                h = nn.relu(preact)
            self.sow("intermediates", f"stage{i}_preact", preact)
            self.sow("intermediates", f"stage{i}", h)
        h = jnp.mean(h, axis=(1, 2))
        self.sow("intermediates", "features", h)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(h)
        return logits.astype(jnp.float32)


def _cifar_resnet(depth: int, widths: Sequence[int], stem_width: int) -> functools.partial:
    """RepDistiller's `ResNet(depth, num_filters)`: depth = 6n + 2, n basic blocks per stage."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    return functools.partial(
        ResNet, stage_sizes=(n,) * len(widths), widths=tuple(widths), stem_width=stem_width
    )


# name -> partial(ResNet, ...) with the architecture fixed; pass num_classes (and optionally dtype).
RESNETS: dict[str, functools.partial] = {
    **{f"resnet{d}": _cifar_resnet(d, (16, 32, 64), 16) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _cifar_resnet(8, (64, 128, 256), 32),
    "resnet32x4": _cifar_resnet(32, (64, 128, 256), 32),
    "resnet18": functools.partial(
        ResNet, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), stem_width=64
    ),
}
