"""Flax linen models, addressed from configs by name through `MODELS` / `build`.

Every model is called as `model.apply(variables, x, train=bool, mutable=...)` on float32
`[B, H, W, C]` images (the MLP accepts any `[B, ...]`) and returns float32 logits
`[B, num_classes]`. Batch-norm models keep running statistics in `batch_stats`. Each model sows
its penultimate embedding as `intermediates/features` plus per-stage features (see each class's
docstring); read them with `mutable=['intermediates']` or `capture_intermediates=True`.
"""

from jaxkd.models.convnet import ConvNet
from jaxkd.models.convnet1d import ConvNet1D
from jaxkd.models.mlp import MLP
from jaxkd.models.registry import MODELS, build
from jaxkd.models.resnet import BasicBlock, ResNet
from jaxkd.models.vit import ViT

__all__ = ["MODELS", "MLP", "BasicBlock", "ConvNet", "ConvNet1D", "ResNet", "ViT", "build"]
