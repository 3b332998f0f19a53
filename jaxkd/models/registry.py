"""The model registry: config names -> Flax linen module constructors."""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jaxkd.models.convnet import ConvNet
from jaxkd.models.convnet1d import ConvNet1D
from jaxkd.models.mlp import MLP
from jaxkd.models.resnet import RESNETS
from jaxkd.models.vit import ViT

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "convnet": ConvNet,
    "convnet1d": ConvNet1D,
    **RESNETS,
    "vit": ViT,
    "vit_tiny": functools.partial(ViT, hidden=192, depth=12, heads=3, mlp_dim=768),
}


def _accepted_kwargs(factory: Callable[..., nn.Module]) -> set[str] | None:
    """Keyword arguments `build` may forward to `factory`, or None if it cannot tell.

    For a linen module class these are its dataclass fields; a `functools.partial` fixes the
    fields it binds (a named variant such as `resnet20` or `vit_tiny` keeps its architecture).
    """
    fixed: set[str] = set()
    while isinstance(factory, functools.partial):
        fixed |= factory.keywords.keys()
        factory = factory.func
    if not (isinstance(factory, type) and dataclasses.is_dataclass(factory)):
        return None
    fields = {f.name for f in dataclasses.fields(factory) if f.init}
    return fields - fixed - {"parent", "num_classes"}


def build(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds the registered model `name` with `num_classes` outputs.

    Raises:
      ValueError: `name` is not registered (the message lists the valid names).
      TypeError: a keyword argument is not a field the model accepts.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    factory = MODELS[name]
    accepted = _accepted_kwargs(factory)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"model {name!r} got unexpected keyword argument(s) "
                f"{', '.join(map(repr, unknown))}; it accepts: {', '.join(sorted(accepted))}"
            )
    return factory(num_classes=num_classes, **kwargs)
