"""A small Vision Transformer with an optional DeiT distillation token."""

import functools

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

_token_init = nn.initializers.normal(stddev=0.02)


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU -> Dense(input width)."""

    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = functools.partial(
            nn.Dense,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        y = nn.gelu(dense(self.mlp_dim, name="fc1")(x))
        return dense(x.shape[-1], name="fc2")(y)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            deterministic=True,
            name="attn",
        )(y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
        return x + MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)


class ViT(nn.Module):
    """ViT classifier: patch embedding, CLS token, learned position embeddings, pre-LN blocks.

    Input: float `[B, H, W, C]` with `patch_size` dividing H and W. Output: float32 logits
    `[B, num_classes]`. No batch norm, no dropout. The position embeddings are sized at init
    from the input, so apply on images of the size used at init.

    With `distill_token=True` (DeiT) a second learned token is appended after the CLS token and
    read by a second head, `dist_head`. The returned logits are the CLS head's when
    `train=True` and the mean of the two heads' when `train=False` (DeiT inference); the
    distillation head's logits are always sown as `dist_logits` for the KD loss to read.

    Sown into the `intermediates` collection (T = 1 + distill_token + number of patches):
      - `block{i}` (i = 1..depth): `[B, T, hidden]`, the token sequence after block i.
      - `tokens`: `[B, T, hidden]`, the final-LayerNorm token sequence.
      - `features`: `[B, hidden]`, the normalised CLS token fed to `head`.
      - `dist_features` (distill_token only): `[B, hidden]`, the normalised distillation token.
      - `dist_logits` (distill_token only): float32 `[B, num_classes]`, the `dist_head` output.
    """

    num_classes: int
    patch_size: int = 4
    hidden: int = 192
    depth: int = 6
    heads: int = 3
    mlp_dim: int = 384
    distill_token: bool = False
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        if self.patch_size < 1 or self.depth < 0:
            raise ValueError(
                f"need patch_size >= 1 and depth >= 0, got {self.patch_size=}, {self.depth=}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ViT expects images [B, H, W, C], got shape {x.shape}")
        b, height, width, _ = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"patch_size={p} must divide the image height and width, got input shape {x.shape}"
            )
        embed = nn.Conv(
            self.hidden,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            name="patch_embed",
        )
        h = embed(x.astype(self.dtype))
        h = einops.rearrange(h, "b gh gw d -> b (gh gw) d")

        token_names = ["cls_token"] + (["dist_token"] if self.distill_token else [])
        tokens = [
            einops.repeat(self.param(n, _token_init, (1, 1, self.hidden)), "1 1 d -> b 1 d", b=b)
            for n in token_names
        ]
        h = jnp.concatenate([t.astype(self.dtype) for t in tokens] + [h], axis=1)
        pos = self.param("pos_embedding", _token_init, (1, h.shape[1], self.hidden))
        h = h + pos.astype(self.dtype)

        for i in range(1, self.depth + 1):
            h = EncoderBlock(self.heads, self.mlp_dim, dtype=self.dtype, name=f"encoderblock{i}")(h)
            self.sow("intermediates", f"block{i}", h)
        h = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(h)
        self.sow("intermediates", "tokens", h)

        self.sow("intermediates", "features", h[:, 0])
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(h[:, 0])
        logits = logits.astype(jnp.float32)
        if not self.distill_token:
            return logits
        self.sow("intermediates", "dist_features", h[:, 1])
        dist_logits = nn.Dense(self.num_classes, dtype=self.dtype, name="dist_head")(h[:, 1])
        dist_logits = dist_logits.astype(jnp.float32)
        self.sow("intermediates", "dist_logits", dist_logits)
        return logits if train else (logits + dist_logits) / 2
