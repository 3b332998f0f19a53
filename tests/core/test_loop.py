"""The shared training loop: resume, non-finite guard, preemption, completed runs."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.core import loop, sharding
from jaxkd.core.metrics import MetricWriter, read_metrics


class CountingPipeline:
    """Yields {"x": [step]}; its state is the number of batches drawn."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        self.i += 1
        return {"x": np.full((8,), self.i, np.float32)}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def _toy(mesh, bad_step=None, on_signal_at=None):
    """A toy 'training' whose loss is NaN at ``bad_step`` (1-based)."""

    def init():
        return {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.zeros((4,), jnp.float32)},
                "rng": jax.random.PRNGKey(0), "nonfinite": loop.init_nonfinite()}

    shapes = jax.eval_shape(init)
    shard = sharding.param_shardings(shapes, mesh)
    abstract = sharding.with_shardings(shapes, shard)

    @jax.jit
    def step(state, batch):
        loss = jnp.mean(batch["x"])
        if bad_step is not None:
            loss = jnp.where(state["step"] + 1 == bad_step, jnp.nan, loss)
        if on_signal_at is not None:
            jax.debug.callback(lambda s: os.kill(os.getpid(), signal.SIGTERM)
                               if int(s) + 1 == on_signal_at else None, state["step"])
        new = dict(state, step=state["step"] + 1,
                   params={"w": state["params"]["w"] + loss},
                   rng=jax.random.split(state["rng"])[0])
        return loop.nonfinite_guard(state, new, loss, jnp.zeros(())), {"loss": loss,
                                                                       "grad_norm": loss}

    return jax.jit(init, out_shardings=shard), abstract, step


def _fit(tmp_path, total=20, policy="stop", **kw):
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    build, abstract, step = _toy(mesh, **kw)
    with ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), async_save=False) as c, \
            MetricWriter(str(tmp_path)) as w:
        return loop.fit(
            name="toy", init_state=build, abstract_state=abstract, step_fn=step,
            pipeline=CountingPipeline(), to_global=lambda b: b,
            eval_fn=lambda s: {"w0": float(s["params"]["w"][0])}, checkpointer=c,
            meta={"model": "toy"}, writer=w,
            cfg=loop.LoopConfig(total_steps=total, log_every=2, checkpoint_every=5,
                                on_nonfinite=policy, progress=False))


def test_plain_run_and_resume_of_a_finished_run(tmp_path):
    state, ev = _fit(tmp_path)
    # w accumulates mean(x) = 1 + 2 + ... + 20.
    assert ev["w0"] == sum(range(1, 21))
    assert sorted(ckpt_lib.Checkpointer(str(tmp_path / "ckpt")).all_steps())[-1] == 20
    # Running again restores the finished state instead of training again.
    _, ev2 = _fit(tmp_path)
    assert ev2 == ev


def test_resume_continues_the_data_stream(tmp_path):
    _fit(tmp_path, total=10)
    # Extending the run: restores step 10 and the pipeline position, continues with x = 11..20.
    _, ev = _fit(tmp_path, total=20)
    assert ev["w0"] == sum(range(1, 21))


def test_nonfinite_loss_stops_naming_metric_and_step_and_keeps_good_checkpoint(tmp_path):
    with pytest.raises(loop.NonFiniteError, match=r"non-finite train/loss at step 7") as e:
        _fit(tmp_path, bad_step=7)
    assert "step 5" in str(e.value)  # the last good checkpoint is named
    c = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"))
    assert c.latest_step() == 5
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    _, abstract, _ = _toy(mesh)
    state, data, _ = c.restore(5, abstract)
    np.testing.assert_array_equal(state["params"]["w"], np.full(4, 15.0))
    assert data == {"i": 5}


def test_nonfinite_skip_policy_skips_the_update_and_finishes(tmp_path):
    _, ev = _fit(tmp_path, bad_step=7, policy="skip")
    assert ev["w0"] == sum(range(1, 21)) - 7
    rows = read_metrics(str(tmp_path))
    assert any(r.get("toy/train/skipped_steps") == 1.0 for r in rows)


def test_sigterm_saves_at_the_current_step_and_raises_preempted(tmp_path):
    with pytest.raises(loop.Preempted) as e:
        _fit(tmp_path, on_signal_at=13)
    assert e.value.step == 13
    assert ckpt_lib.Checkpointer(str(tmp_path / "ckpt")).latest_step() == 13
    _, ev = _fit(tmp_path)  # resume
    assert ev["w0"] == sum(range(1, 21))


def test_checkpoint_of_a_different_model_is_refused(tmp_path):
    _fit(tmp_path, total=5)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    build, abstract, step = _toy(mesh)
    with ckpt_lib.Checkpointer(str(tmp_path / "ckpt")) as c, MetricWriter(str(tmp_path)) as w:
        with pytest.raises(ckpt_lib.CheckpointMismatchError, match="does not match this config.*fresh"):
            loop.fit(name="toy", init_state=build, abstract_state=abstract, step_fn=step,
                     pipeline=CountingPipeline(), to_global=lambda b: b, eval_fn=None,
                     checkpointer=c, meta={"model": "other"}, writer=w,
                     cfg=loop.LoopConfig(total_steps=10, progress=False))
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 2


def test_metadata_tuples_match_their_json_lists_and_real_differences_are_named():
    # Saved metadata went through JSON (tuples became lists): a config's tuple still matches.
    saved = {"model": "unet", "model_kwargs": {"channel_mult": [1, 2]}, "distill": {"s": [[1]]}}
    ckpt_lib.check_meta(saved, {"model": "unet", "model_kwargs": {"channel_mult": (1, 2)},
                                "distill": {"s": ((1,),)}}, "d")
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"model_kwargs.channel_mult: checkpoint has \[1, 2\], config asks "
                             r"for \[1, 4\]"):
        ckpt_lib.check_meta(saved, {"model": "unet", "model_kwargs": {"channel_mult": (1, 4)},
                                    "distill": {"s": [[1]]}}, "d")
