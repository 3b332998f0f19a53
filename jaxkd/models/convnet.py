"""The ConvNet used throughout dataset distillation (DC/DSA, DM, MTT, ...).

Zhao & Bilen's ConvNet as in the MTT code (`utils.py::ConvNet`): `depth` blocks of
[conv3x3(width, bias) -> norm -> relu -> avgpool 2x2 stride 2], then flatten -> dense.
"""

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

Norm = Literal["instance", "batch", "layer", "none"]
NORMS: tuple[str, ...] = ("instance", "batch", "layer", "none")

# PyTorch defaults, which the reference implementations use: BatchNorm2d(momentum=0.1) keeps
# 0.9 of the old running average; eps 1e-5 for batch, group and layer norm.
_BN_MOMENTUM = 0.9
_EPS = 1e-5


class ConvNet(nn.Module):
    """Dataset-distillation ConvNet.

    Input: float `[B, H, W, C]` with `H, W >= 2**depth` (each pool halves, rounding down, as
    PyTorch's AvgPool2d does; 28x28 with depth 3 gives 3x3). Output: float32 logits
    `[B, num_classes]`.

    `norm`:
      - `"instance"`: GroupNorm with one group per channel and a per-channel affine
        (what MTT calls `instancenorm`: `nn.GroupNorm(width, width, affine=True)`).
      - `"batch"`: BatchNorm; running statistics live in `batch_stats` and are used when
        `train=False`.
      - `"layer"`: LayerNorm over (H, W, C) with an elementwise affine of shape (H, W, C)
        (MTT's `nn.LayerNorm([c, h, w])`).
      - `"none"`: identity.

    Sown into the `intermediates` collection:
      - `stage{i}` (i = 1..depth): `[B, H/2**i, W/2**i, width]`, block i's output after pooling.
      - `features`: `[B, (H/2**depth) * (W/2**depth) * width]`, the flattened input to the
        classifier.
    Submodules are named `conv{i}`, `norm{i}`, `head`, so with `capture_intermediates=True`
    the normalised pre-activation of block i is `intermediates['norm{i}']['__call__']`.
    """

    num_classes: int
    width: int = 128
    depth: int = 3
    norm: Norm = "instance"
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.depth < 1 or self.width < 1:
            raise ValueError(f"depth and width must be >= 1, got {self.depth=}, {self.width=}")
        super().__post_init__()

    def _norm(self, i: int, train: bool) -> nn.Module | None:
        name = f"norm{i}"
        match self.norm:
            case "instance":
                return nn.GroupNorm(
                    num_groups=self.width, epsilon=_EPS, dtype=self.dtype, name=name
                )
            case "batch":
                return nn.BatchNorm(
                    use_running_average=not train,
                    momentum=_BN_MOMENTUM,
                    epsilon=_EPS,
                    dtype=self.dtype,
                    name=name,
                )
            case "layer":
                axes = (-3, -2, -1)
                return nn.LayerNorm(
                    epsilon=_EPS,
                    reduction_axes=axes,
                    feature_axes=axes,
                    dtype=self.dtype,
                    name=name,
                )
            case "none":
                return None
        raise AssertionError(self.norm)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ConvNet expects images [B, H, W, C], got shape {x.shape}")
        min_size = 2**self.depth
        if min(x.shape[1:3]) < min_size:
            raise ValueError(
                f"ConvNet(depth={self.depth}) needs H, W >= {min_size} (one 2x2 pool per block), "
                f"got input shape {x.shape}"
            )
        h = x.astype(self.dtype)
        for i in range(1, self.depth + 1):
            h = nn.Conv(self.width, (3, 3), padding=1, dtype=self.dtype, name=f"conv{i}")(h)
            norm = self._norm(i, train)
            if norm is not None:
                h = norm(h)
            h = nn.relu(h)
            h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="VALID")
            self.sow("intermediates", f"stage{i}", h)
        h = h.reshape(h.shape[0], -1)
        self.sow("intermediates", "features", h)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(h)
        return logits.astype(jnp.float32)
