"""Optimizers and learning-rate schedules from config, and step/epoch durations."""

from __future__ import annotations

import math
from typing import Any

import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear")


def resolve_steps(steps: int, epochs: float, steps_per_epoch: int, key: str) -> int:
    """A duration given either in steps or in epochs (exactly one of them > 0) -> steps."""
    if (steps > 0) == (epochs > 0):
        raise ValueError(
            f"set exactly one of {key}.steps and {key}.epochs to a positive value "
            f"(got steps={steps}, epochs={epochs})"
        )
    return int(steps) if steps > 0 else max(1, int(math.ceil(epochs * steps_per_epoch)))


def make_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """``cfg`` has ``lr``, ``schedule`` (constant|cosine|linear) and ``warmup_steps``."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(
            f"config.optimizer.schedule={cfg.schedule!r} is not valid; choose one of: "
            f"{', '.join(SCHEDULES)}"
        )
    warmup = int(cfg.warmup_steps)
    decay_steps = max(1, total_steps - warmup)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, decay_steps)
    else:
        main = optax.linear_schedule(cfg.lr, 0.0, decay_steps)
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])


def make_optimizer(cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """``cfg``: ``name`` (sgd|adam|adamw), ``lr``, ``schedule``, ``warmup_steps``, ``momentum``,
    ``nesterov``, ``weight_decay``, ``grad_clip_norm`` (0 = off)."""
    if cfg.name not in OPTIMIZERS:
        raise ValueError(
            f"config.optimizer.name={cfg.name!r} is not valid; choose one of: {', '.join(OPTIMIZERS)}"
        )
    lr = make_schedule(cfg, total_steps)
    if cfg.name == "sgd":
        # Coupled L2 weight decay, as in the CIFAR KD benchmarks (torch.optim.SGD semantics).
        tx = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity(),
            optax.sgd(lr, momentum=cfg.momentum or None, nesterov=bool(cfg.nesterov)),
        )
    elif cfg.name == "adam":
        tx = optax.adam(lr)
    else:
        tx = optax.adamw(lr, weight_decay=cfg.weight_decay)
    if cfg.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx
