"""Expert trajectories: networks trained on the real data, parameters saved every epoch.

Trajectory matching (MTT, TESLA, DATM, FTD) reads the parameters ``theta*_{k, e}`` of expert
``k`` after epoch ``e``. :func:`train_experts` trains ``K`` experts in lockstep (one compiled
step per expert) and writes, in ``directory``:

- ``meta.json``: what the experts are (model, data, optimiser, augmentation, seed). A later run
  that asks for different experts in the same directory gets an error naming the key.
- ``epoch_0000.npy`` .. ``epoch_{E:04d}.npy``: float32 ``[K, P]``, every expert's flat
  parameters at initialisation and after each epoch, each written atomically.
- ``velocity_{e:04d}.npy`` (only with momentum): the SGD buffers of the latest epoch.
- ``accuracy.json``: test accuracy ``[E + 1][K]`` per epoch.

Interrupted training resumes from the last complete epoch and gives the same parameters as an
uninterrupted run (minibatches and augmentation depend only on (seed, expert, step)).
:class:`Trajectories` reads the files back (memory-mapped).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.core import errors, report
from jaxkd.core.progress import Progress
from jaxkd.dataset_distill.augment import DSAConfig
from jaxkd.dataset_distill.evaluate import one_hot
from jaxkd.dataset_distill.nets import ExpertObjective, FlatModel, NetTrainer, SGDConfig

__all__ = ["ExpertsMismatchError", "MissingExpertsError", "Trajectories", "train_experts"]

_EPOCH_FILE = re.compile(r"epoch_(\d{4})\.npy$")


class MissingExpertsError(errors.ConfigError):
    """Expert trajectories are needed but not found (the message says how to train them)."""


class ExpertsMismatchError(errors.ConfigError):
    """The experts in a directory were trained with other settings than the config asks for."""


def _save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float32))
    report.write_bytes_atomic(path, buf.getvalue())


def _epochs_on_disk(directory: str) -> list[int]:
    found = (_EPOCH_FILE.search(os.path.basename(p)) for p in
             glob.glob(os.path.join(directory, "epoch_*.npy")))
    return sorted(int(m.group(1)) for m in found if m)


def _check_meta(directory: str, meta: dict) -> None:
    path = os.path.join(directory, "meta.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        found = json.load(f)
    keys = sorted(set(found) | set(meta))
    diffs = [k for k in keys if k != "epochs" and found.get(k) != meta.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: on disk {found.get(k)!r}, config {meta.get(k)!r}"
                           for k in diffs)
        raise ExpertsMismatchError(
            f"the experts in {directory} were trained with other settings ({detail}); point "
            "config.experts.dir at another directory, or delete this one to retrain")


def train_experts(directory: str, model: FlatModel, x: jnp.ndarray, labels: np.ndarray,
                  x_test: jnp.ndarray, labels_test: np.ndarray, *, num_classes: int,
                  num_experts: int,
                  epochs: int, sgd: SGDConfig, dsa_cfg: DSAConfig, seed: int,
                  description: dict[str, Any], progress: bool = True,
                  objective: ExpertObjective = ExpertObjective()) -> Trajectories:
    """Trains (or finishes training) ``num_experts`` experts for ``epochs`` epochs.

    Args:
      directory: where the trajectories live (created if missing).
      model: the expert architecture as a :class:`FlatModel`.
      x, labels: the real training set (normalised) and its integer labels.
      x_test, labels_test: for the per-epoch accuracy.
      num_classes: number of classes (the model's outputs).
      num_experts, epochs, sgd, dsa_cfg, seed: how to train.
      description: JSON-able facts that identify the experts (model name and kwargs, data set);
        stored in ``meta.json`` with the settings above and checked on reuse.
      progress: show a progress bar.
      objective: FTD's sharpness-aware or AST's smoothed training (:class:`ExpertObjective`);
        recorded in ``meta.json`` when it is not plain SGD on cross-entropy.

    Returns:
      the :class:`Trajectories`. Asking for more epochs than are on disk continues training.
    """
    meta = {**description, "num_experts": num_experts, "num_params": model.num_params,
            "sgd": dataclasses.asdict(sgd), "dsa": dataclasses.asdict(dsa_cfg), "seed": seed}
    if not objective.is_plain:  # (plain experts keep the meta.json of earlier versions)
        meta["objective"] = {**dataclasses.asdict(objective),
                             "loss_scale": list(objective.loss_scale)}
    _check_meta(directory, meta)
    os.makedirs(directory, exist_ok=True)
    done = _epochs_on_disk(directory)
    trainer = NetTrainer(model, sgd, dsa_cfg, objective)
    batch = min(sgd.batch_size, x.shape[0])
    steps_per_epoch = -(-x.shape[0] // batch)
    # The learning rate schedule sees the run as `epochs` long; stretching a finished run
    # would change its schedule, so only constant-lr experts can be extended.
    total_steps = epochs * steps_per_epoch
    acc_path = os.path.join(directory, "accuracy.json")
    accuracy = json.load(open(acc_path)) if os.path.exists(acc_path) else []
    if done:
        last = done[-1]
        if last >= epochs:
            return Trajectories(directory)
        if sgd.decay_at < 1.0 and _read_meta(directory).get("epochs") != epochs:
            raise ExpertsMismatchError(
                f"the experts in {directory} were trained for a {_read_meta(directory)['epochs']}"
                f"-epoch schedule with a learning-rate decay; cannot extend them to {epochs}")
        thetas = jnp.asarray(np.load(os.path.join(directory, f"epoch_{last:04d}.npy")))
        vel_path = os.path.join(directory, f"velocity_{last:04d}.npy")
        vels = (jnp.asarray(np.load(vel_path)) if os.path.exists(vel_path)
                else jnp.zeros_like(thetas))
        accuracy = accuracy[:last + 1]
    else:
        last = 0
        thetas, vels = trainer.init(jax.random.key(seed), num_experts)
        _save_npy(os.path.join(directory, "epoch_0000.npy"), thetas)
        accuracy = [trainer.accuracy(thetas, x_test, labels_test).tolist()]
    report.write_json_atomic(os.path.join(directory, "meta.json"), {**meta, "epochs": epochs})
    targets = one_hot(labels, num_classes)
    bar = Progress(total_steps, initial=last * steps_per_epoch, desc="experts",
                   enabled=progress, batch_size=batch * num_experts)
    with bar:
        for epoch in range(last + 1, epochs + 1):
            thetas, vels = trainer.train(
                thetas, vels, x, targets, seed=seed, first_step=(epoch - 1) * steps_per_epoch,
                num_steps=steps_per_epoch, total_steps=total_steps,
                on_step=lambda s, losses: bar.update(s + 1, loss=float(losses.mean())))
            accuracy.append(trainer.accuracy(thetas, x_test, labels_test).tolist())
            if sgd.momentum:
                _save_npy(os.path.join(directory, f"velocity_{epoch:04d}.npy"), vels)
            _save_npy(os.path.join(directory, f"epoch_{epoch:04d}.npy"), thetas)
            report.write_json_atomic(acc_path, accuracy)
            for old in glob.glob(os.path.join(directory, "velocity_*.npy")):
                if not old.endswith(f"velocity_{epoch:04d}.npy"):
                    os.unlink(old)
            bar.update(epoch * steps_per_epoch, acc=float(np.mean(accuracy[-1])))
    return Trajectories(directory)


def _read_meta(directory: str) -> dict:
    with open(os.path.join(directory, "meta.json")) as f:
        return json.load(f)


class Trajectories:
    """Expert trajectories saved by :func:`train_experts`, read lazily (memory-mapped).

    Attributes:
      meta: ``meta.json``.
      num_experts, num_params: ``K`` and ``P``.
      epochs: the last complete epoch on disk (``E``); epochs ``0 .. E`` are readable.
      accuracy: ``[E + 1, K]`` test accuracy per epoch.
    """

    def __init__(self, directory: str):
        if not os.path.exists(os.path.join(directory, "meta.json")):
            raise MissingExpertsError(
                f"no expert trajectories in {directory}. Train them first: run the same command "
                "with config.experts.train=True (the default trains them when missing), or "
                "point config.experts.dir at a directory that holds them")
        self.directory = directory
        self.meta = _read_meta(directory)
        done = _epochs_on_disk(directory)
        self.epochs = done[-1] if done else -1
        if done != list(range(self.epochs + 1)):
            raise MissingExpertsError(f"{directory} misses epoch files: found {done}")
        self.num_experts = int(self.meta["num_experts"])
        self.num_params = int(self.meta["num_params"])
        acc_path = os.path.join(directory, "accuracy.json")
        self.accuracy = (np.asarray(json.load(open(acc_path)))
                         if os.path.exists(acc_path) else np.zeros((0, self.num_experts)))
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache[epoch] = np.load(os.path.join(self.directory, f"epoch_{epoch:04d}.npy"),
                                         mmap_mode="r")
        return self._cache[epoch]

    def params(self, expert: int, epoch: int) -> np.ndarray:
        """Expert ``expert``'s flat parameters ``[P]`` after epoch ``epoch`` (0 = init)."""
        if not 0 <= expert < self.num_experts:
            raise IndexError(f"expert {expert} out of range: {self.num_experts} experts")
        if not 0 <= epoch <= self.epochs:
            raise IndexError(
                f"epoch {epoch} is beyond the saved trajectories (epochs 0..{self.epochs} in "
                f"{self.directory}); lower the start epoch or expert_epochs, or train the "
                "experts for more epochs (config.experts.epochs)")
        return np.asarray(self._epoch(epoch)[expert])

    def disk_bytes(self) -> int:
        """Bytes on disk of the trajectory files."""
        return sum(os.path.getsize(p) for p in glob.glob(os.path.join(self.directory, "*"))
                   if os.path.isfile(p))
