"""Multi-layer perceptron classifier."""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "elu": nn.elu,
}


class MLP(nn.Module):
    """Flattens its input and applies `len(hidden)` dense+activation layers, then a linear head.

    Input: float array `[B, ...]` (images `[B, H, W, C]`, sequences `[B, L, C]` or vectors
    `[B, D]`); everything but the batch axis is flattened. Output: float32 logits
    `[B, num_classes]`. No batch norm, no dropout: `train` changes nothing.

    Sown into the `intermediates` collection:
      - `hidden{i}` (i = 1..len(hidden)): `[B, hidden[i-1]]`, the output of hidden layer i
        after its activation.
      - `features`: `[B, D_f]`, the input to the classifier (the last hidden layer, or the
        flattened input when `hidden` is empty).
    """

    num_classes: int
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        # Configs may hand over lists; a tuple keeps the module hashable (for static jit args).
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        del train  # No train/eval-dependent layers.
        if x.ndim < 2:
            raise ValueError(f"MLP expects input [B, ...] with ndim >= 2, got shape {x.shape}")
        act = ACTIVATIONS[self.activation]
        h = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i, width in enumerate(self.hidden, start=1):
            h = act(nn.Dense(width, dtype=self.dtype, name=f"dense{i}")(h))
            self.sow("intermediates", f"hidden{i}", h)
        self.sow("intermediates", "features", h)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(h)
        return logits.astype(jnp.float32)
