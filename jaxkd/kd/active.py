"""Active distillation: which pool points to pay the teacher for, under a query budget.

Setting. The training split is an unlabeled *pool*. Asking the teacher for its soft label on one
pool point costs one query; a run may spend ``config.active.budgets[-1]`` queries. The student is
trained only on the queried points, against the teacher's logits (the distillation term, with
temperature ``config.kd.temperature``; the ``label`` it is given is the teacher's arg-max, never
the ground truth), and evaluated on the test split. The teacher is deliberately imperfect: it is
trained on a small labeled seed set (``config.teacher.num_labeled`` examples of the pool), so
whether its label on a queried point is right matters.

Rounds. A run (one strategy, one seed) starts with ``budgets[0]`` uniformly random queries (the
same points for every strategy of a seed), then repeats: train a student **from scratch** on the
queried points (same init and step count every round; no warm start), evaluate it, score the
rest of the pool with it, query the next batch, until the last budget is reached
(``config.active.round_size`` > 0 splits the gap between two budgets into rounds of at most that
many queries).

Strategies (``STRATEGIES``):

* ``random``: uniform over the points not queried yet.
* ``margin``: the smallest student margins ``p(1) - p(2)`` (top-1 minus top-2 class probability):
  the points the student is least sure about, i.e. the most informative ones.
* ``rad``: Robust Active Distillation after Baykal et al. (ICLR 2023), implemented as follows.
  The *gain* of a candidate is ``g_i = 1 - margin_i`` (its informativeness). The teacher is wrong
  on an unknown set of pool points; we estimate the probability ``c_i`` that its arg-max is right
  on candidate ``i`` (below) and play the batch version of the paper's zero-sum game: the
  learner picks inclusion probabilities ``p`` (``sum p = b``, ``0 <= p_i <= 1``), nature then
  places the teacher's mistakes ``z`` so as to hurt most, and the learner earns the gain of the
  correctly labeled points it queries::

      max_p  min_z  sum_i p_i g_i (1 - z_i)
      s.t.   sum_i p_i = b, 0 <= p_i <= 1;   sum_i z_i <= k, 0 <= z_i <= u_i,
      with   e_i = 1 - c_i,  k = sum_i e_i  (expected number of teacher mistakes in the pool),
             u_i = min(1, rho * e_i)  (``config.active.rad_robustness`` = rho >= 1).

  It is a linear program (solved exactly with HiGHS); the batch is then drawn with systematic
  sampling, which gives each point exactly its inclusion probability ``p_i`` and returns exactly
  ``b`` distinct points. ``rho = 1`` makes nature follow the estimates, and the rule becomes
  "the ``b`` largest ``g_i * c_i``" (expected correctly-labeled gain); ``rho = inf`` lets nature
  put the ``k`` mistakes anywhere (the paper's worst case), where the solution spreads the
  queries over more than the most informative points, in proportion to ``1 / g_i`` on a top set
  (for ``b = 1``: ``p_i ~ 1 / g_i`` on the ``j`` largest gains, ``j`` maximising
  ``(j - k) / sum_{l <= j} 1 / g_(l)``), because nature's mistakes cost the most on the
  points that carry the most gain.

  Teacher correctness ``c_i`` without paying for it. Ground truth is unknown, and the teacher's
  confidence on a candidate would itself cost a query, so ``c_i`` is *predicted* from the
  student: for every point that ``rad`` queried earlier we have the student's margin at the time
  it was selected (a student that had not seen it) and, once queried, the teacher's top-1
  probability (its own confidence, the paper's proxy for correctness). A nondecreasing
  (isotonic) regression of teacher confidence on student margin, fitted on those pairs, gives
  ``c_i`` for the candidates. With fewer than ``MIN_CALIBRATION_PAIRS`` pairs (the first active
  round) ``c_i`` is the mean teacher confidence over the queried points, for every candidate.

  How this differs from the paper: the paper estimates teacher correctness from the teacher's
  own confidence/margin; here the teacher's confidence is only read on points already paid for,
  and carried to unqueried ones through the student's margin; the per-point cap ``u_i``
  (``rho``) interpolates between the paper's worst case (``rho = inf``) and the plain expected
  gain (``rho = 1``); the game is solved for the batch (inclusion probabilities with
  ``p_i <= 1``) rather than for a single draw.

Outputs in the workdir: ``results.json`` (flat keys ``{strategy}/queries_{n}/acc_mean`` and
``_std``, ``agreement_*`` (student vs teacher on the test split), ``teacher_err_*`` (fraction of
queried points whose teacher arg-max is wrong, computed with the pool's held-back labels, which
no model ever trains on), ``teacher/acc``; ``kd/acc_*`` is ``config.active.method`` (default
``rad``) at the full budget and ``scratch/acc_*`` is ``random`` at the full budget, the passive
baseline with the same number of teacher queries), ``active_curves.png``, ``metrics.jsonl``, and
``active/<strategy>_seed<seed>.json`` per run: the queried points in order and each round's
results, written atomically after every round, so a re-run after a crash continues from the
last finished round (it asks the teacher again for the points already paid for; no round is
retrained).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxkd import data as data_lib
from jaxkd import models
from jaxkd.core import config_args, errors, loop, optim, report, sharding
from jaxkd.core import state as state_lib
from jaxkd.core.metrics import MetricWriter
from jaxkd.core.progress import Progress
from jaxkd.kd import steps as steps_lib
from jaxkd.kd import train

MIN_CALIBRATION_PAIRS = 10  # below this, rad's teacher-correctness estimate is one constant


# ------------------------------------------------------------------------ selection rules
@dataclasses.dataclass(frozen=True)
class PoolView:
    """What a selection rule sees of the pool in one round.

    Attributes:
      candidates: ``[M]`` pool indices not queried yet.
      probs: ``[M, C]`` the current student's class probabilities on them.
      history_margin: ``[H]`` student margin of earlier actively selected points, taken when
        they were selected (before any student had trained on them).
      history_teacher_conf: ``[H]`` the teacher's top-1 probability on those points.
      queried_teacher_conf: ``[Q]`` the teacher's top-1 probability on every queried point.
    """

    candidates: np.ndarray
    probs: np.ndarray
    history_margin: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    history_teacher_conf: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    queried_teacher_conf: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))


@jax.jit
def margins(probs: jax.Array) -> jax.Array:
    """``[M, C]`` probabilities -> ``[M]`` top-1 minus top-2 probability (0 = undecided)."""
    top2 = jax.lax.top_k(probs.astype(jnp.float32), 2)[0]
    return top2[:, 0] - top2[:, 1]


def select_random(view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` candidates uniformly at random, without replacement."""
    return np.sort(rng.choice(view.candidates, size=n, replace=False))


def select_margin(view: PoolView, n: int, rng: np.random.Generator) -> np.ndarray:
    """The ``n`` candidates with the smallest student margin (ties: lower pool index first)."""
    del rng
    m = np.asarray(margins(view.probs))
    order = np.lexsort((view.candidates, m))
    return np.sort(view.candidates[order[:n]])


def teacher_correct_prob(margin: np.ndarray, history_margin: np.ndarray,
                         history_conf: np.ndarray, fallback: float) -> np.ndarray:
    """Estimated probability that the teacher's arg-max is right, for candidates of ``margin``.

    Isotonic (nondecreasing) regression of the teacher's top-1 probability on the student's
    selection-time margin over the history pairs; ``fallback`` for every candidate when there
    are fewer than ``MIN_CALIBRATION_PAIRS`` of them.
    """
    if len(history_margin) < MIN_CALIBRATION_PAIRS:
        return np.full(len(margin), float(fallback))
    from sklearn.isotonic import IsotonicRegression  # pylint: disable=g-import-not-at-top

    iso = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(np.asarray(history_margin, np.float64), np.asarray(history_conf, np.float64))
    return np.clip(iso.predict(np.asarray(margin, np.float64)), 0.0, 1.0)


def rad_inclusion_probs(gain: np.ndarray, err_prob: np.ndarray, n: int,
                        robustness: float) -> np.ndarray:
    """Solves the learner's side of the RAD game (see the module docstring) for ``n`` queries.

    Args:
      gain: ``[M]`` informativeness ``g_i`` in [0, 1].
      err_prob: ``[M]`` estimated probability ``e_i`` that the teacher's label is wrong.
      n: batch size ``b`` (``0 < n <= M``).
      robustness: ``rho >= 1``; ``inf`` = nature may place the mistakes anywhere.

    Returns:
      ``[M]`` inclusion probabilities in [0, 1] that sum to ``n``.

    The inner minimum over nature's ``z`` is replaced by its LP dual
    (``k * lam + sum_i u_i * w_i`` with ``w_i >= p_i g_i - lam``, ``w, lam >= 0``), which makes the
    whole game one linear program in ``(p, w, lam)``.
    """
    from scipy import optimize, sparse  # pylint: disable=g-import-not-at-top

    g = np.clip(np.asarray(gain, np.float64), 0.0, 1.0)
    e = np.clip(np.asarray(err_prob, np.float64), 0.0, 1.0)
    m = len(g)
    if not 0 < n <= m:
        raise ValueError(f"cannot choose {n} of {m} candidates")
    if n == m:
        return np.ones(m)
    k = float(e.sum())
    u = np.ones(m) if np.isinf(robustness) else np.minimum(1.0, robustness * e)
    # Variables x = [p (m), w (m), lam]; minimise -(sum g p - k lam - sum u w).
    c = np.concatenate([-g, u, [k]])
    eye = sparse.identity(m, format="csr")
    a_ub = sparse.hstack([sparse.diags(g), -eye, -np.ones((m, 1))], format="csr")
    a_eq = sparse.csr_matrix(np.concatenate([np.ones(m), np.zeros(m + 1)])[None])
    bounds = [(0.0, 1.0)] * m + [(0.0, None)] * (m + 1)
    res = optimize.linprog(c, A_ub=a_ub, b_ub=np.zeros(m), A_eq=a_eq, b_eq=[float(n)],
                           bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"the RAD linear program failed: {res.message}")
    p = np.clip(res.x[:m], 0.0, 1.0)
    return p * (n / p.sum())


def rad_value(p: np.ndarray, gain: np.ndarray, err_prob: np.ndarray,
              robustness: float) -> float:
    """The learner's guaranteed gain ``min_z sum_i p_i g_i (1 - z_i)`` for inclusion probs ``p``.

    Nature's best response is greedy: it spends its ``k`` mistakes on the largest ``p_i g_i``,
    at most ``u_i`` on each.
    """
    v = np.asarray(p, np.float64) * np.asarray(gain, np.float64)
    e = np.asarray(err_prob, np.float64)
    k = float(e.sum())
    u = np.ones(len(v)) if np.isinf(robustness) else np.minimum(1.0, robustness * e)
    lost = 0.0
    for i in np.argsort(-v, kind="stable"):
        if k <= 0:
            break
        z = min(u[i], k)
        lost += z * v[i]
        k -= z
    return float(v.sum() - lost)


def systematic_sample(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(sum p)`` distinct indices, index ``i`` included with probability ``p_i``.

    Systematic sampling over a random order: one uniform offset ``U`` and the points
    ``U, U + 1, ...`` on the cumulative sums of ``p`` (``0 <= p_i <= 1``).
    """
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    n = int(round(p.sum()))
    order = rng.permutation(len(p))
    cum = np.cumsum(p[order]) * (n / max(p.sum(), 1e-12))
    hits = np.floor(cum - (1.0 - rng.random()))  # offset in (0, 1]: points in (0, n]
    chosen = order[hits > np.concatenate([[-1.0], hits[:-1]])]
    return _fix_count(chosen, p, n)


def _fix_count(chosen: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """Guards against floating-point slack: adds the likeliest / drops the least likely."""
    chosen = np.unique(chosen)
    if len(chosen) > n:
        chosen = chosen[np.argsort(-p[chosen], kind="stable")[:n]]
    elif len(chosen) < n:
        rest = np.setdiff1d(np.arange(len(p)), chosen)
        extra = rest[np.argsort(-p[rest], kind="stable")[:n - len(chosen)]]
        chosen = np.concatenate([chosen, extra])
    return np.sort(chosen)


def select_rad(view: PoolView, n: int, rng: np.random.Generator, *,
               robustness: float = 2.0) -> np.ndarray:
    """RAD: informativeness against estimated teacher correctness (see the module docstring)."""
    m = np.asarray(margins(view.probs), np.float64)
    fallback = float(np.mean(view.queried_teacher_conf)) if len(view.queried_teacher_conf) else 1.0
    c = teacher_correct_prob(m, view.history_margin, view.history_teacher_conf, fallback)
    p = rad_inclusion_probs(1.0 - m, 1.0 - c, n, robustness)
    return np.sort(view.candidates[systematic_sample(p, rng)])


STRATEGIES: dict[str, Callable[..., np.ndarray]] = {
    "random": select_random,
    "margin": select_margin,
    "rad": select_rad,
}


def select(name: str, view: PoolView, n: int, rng: np.random.Generator,
           rad_robustness: float = 2.0) -> np.ndarray:
    """Runs strategy ``name``; returns ``n`` distinct pool indices from ``view.candidates``."""
    if name not in STRATEGIES:
        raise errors.ConfigError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    if name == "rad":
        return select_rad(view, n, rng, robustness=rad_robustness)
    return STRATEGIES[name](view, n, rng)


# ---------------------------------------------------------------------------- the teacher
class TeacherOracle:
    """The only access to the teacher's outputs on the pool: one query per point, counted.

    ``teacher_fn(images [B, ...]) -> logits [B, C]`` is run on exactly the queried rows (it pads
    internally if it needs to). Asking twice for the same point within one run is an error.
    """

    def __init__(self, teacher_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                 num_classes: int):
        self._fn = teacher_fn
        self._images = images
        self.logits = np.full((len(images), num_classes), np.nan, np.float32)
        self.queried = np.zeros(len(images), bool)
        self.rows_evaluated = 0  # teacher forward passes on pool rows
        self.calls = 0

    def query(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int64)
        if len(np.unique(indices)) != len(indices) or self.queried[indices].any():
            raise ValueError("a pool point was queried twice")
        out = np.asarray(self._fn(self._images[indices]), np.float32)
        if out.shape != (len(indices), self.logits.shape[1]):
            raise ValueError(f"teacher returned {out.shape} for {len(indices)} rows")
        self.logits[indices] = out
        self.queried[indices] = True
        self.rows_evaluated += len(indices)
        self.calls += 1
        return out

    @property
    def num_queried(self) -> int:
        return int(self.queried.sum())


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = np.exp(x - x.max(-1, keepdims=True))
    return x / x.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------- rounds
def query_schedule(budgets: Sequence[int], round_size: int) -> list[int]:
    """Cumulative number of queries after each round: every budget, and steps of at most
    ``round_size`` (0 = no limit) in between."""
    out = [int(budgets[0])]
    for b in budgets[1:]:
        while out[-1] < b:
            out.append(min(int(b), out[-1] + round_size) if round_size else int(b))
    return out


def initial_queries(pool_size: int, n: int, seed: int) -> np.ndarray:
    """The first, uniformly random batch; the same for every strategy of a seed."""
    return np.sort(np.random.default_rng([seed, 0]).choice(pool_size, size=n, replace=False))


def run_rounds(
    *,
    strategy: str,
    seed: int,
    schedule: Sequence[int],
    oracle: TeacherOracle,
    student: Any,
    pool_labels: np.ndarray,
    record_path: str | None,
    record_meta: Mapping[str, Any],
    rad_robustness: float = 2.0,
    on_round: Callable[[dict], None] = lambda r: None,
    should_stop: Callable[[int], bool] = lambda r: False,
) -> dict:
    """All rounds of one strategy and seed; returns the run's record.

    ``student`` has ``train(indices, teacher_logits, seed, round) -> state``,
    ``evaluate(state) -> {acc, loss, agreement}`` and ``pool_probs(state) -> [N, C]``.
    ``pool_labels`` are the held-back ground-truth labels of the pool, used only to report how
    often the teacher was wrong on the queried points. The record (queried points in order, their
    selection-time margins, one entry per finished round) is written atomically to
    ``record_path`` after each round; an existing one with the same ``record_meta`` is resumed.
    """
    n_pool = len(pool_labels)
    record = None
    if record_path and os.path.exists(record_path):
        with open(record_path) as f:
            record = report.from_json_compatible(json.load(f))
        for key, value in record_meta.items():
            if record.get(key) != value:
                raise errors.ConfigError(
                    f"{record_path} was written with {key}={record.get(key)!r}, this run has "
                    f"{value!r}; use a fresh --workdir (or delete that file)")
        finished = len(record["rounds"])
        if finished < len(schedule) and len(record["queried"]) != schedule[finished]:
            raise errors.ConfigError(f"{record_path} holds {len(record['queried'])} queries "
                                     f"after {finished} rounds, not {schedule[finished]}; delete "
                                     f"it to redo the run")
    if record is None:
        first = initial_queries(n_pool, schedule[0], seed)
        record = dict(record_meta, queried=first.tolist(), selection_margin=[None] * len(first),
                      rounds=[])
    if len(record["rounds"]) == len(schedule):
        return record
    oracle.query(np.asarray(record["queried"]))  # already paid for when resuming

    for r in range(len(record["rounds"]), len(schedule)):
        t0 = time.time()
        queried = np.asarray(record["queried"], np.int64)
        logits = oracle.logits[queried]
        state = student.train(queried, logits, seed=seed, round=r)
        ev = student.evaluate(state)
        t_prob = _softmax(logits)
        result = {
            "queries": int(len(queried)),
            "acc": float(ev["acc"]), "loss": float(ev["loss"]),
            "agreement": float(ev.get("agreement", float("nan"))),
            "teacher_err": float(np.mean(t_prob.argmax(-1) != pool_labels[queried])),
            "teacher_conf": float(np.mean(t_prob.max(-1))),
        }
        if r + 1 < len(schedule):
            probs = np.asarray(student.pool_probs(state))
            candidates = np.flatnonzero(~np.isin(np.arange(n_pool), queried))
            sel_m = np.asarray([np.nan if m is None else m for m in record["selection_margin"]])
            selected = ~np.isnan(sel_m)  # by a student (not the initial random batch)
            view = PoolView(candidates, probs[candidates], history_margin=sel_m[selected],
                            history_teacher_conf=t_prob.max(-1)[selected],
                            queried_teacher_conf=t_prob.max(-1))
            rng = np.random.default_rng([seed, r + 1, zlib.crc32(strategy.encode())])
            new = select(strategy, view, schedule[r + 1] - len(queried), rng, rad_robustness)
            oracle.query(new)
            record["queried"] = queried.tolist() + new.tolist()
            record["selection_margin"] += np.asarray(margins(probs[new])).tolist()
        result["time_s"] = time.time() - t0
        record["rounds"].append(result)
        if record_path:
            report.write_json_atomic(record_path, record)
        on_round(result)
        if should_stop(r) and r + 1 < len(schedule):
            raise loop.Preempted(len(queried), record_path or "")
    return record


# ------------------------------------------------------------------------------ student
class Student:
    """The per-round student: jitted init / KD train step / eval / pool scoring, built once.

    Every round trains a fresh student (init from ``(seed, round)``) for ``config.train.steps``
    steps of the standard KD step with a cached teacher: each batch carries
    ``teacher_logits``, gathered on the host from the queried logits by ``batch["index"]``.
    """

    def __init__(self, config, mesh, ctx: train.Context, pool_raw: np.ndarray,
                 pool_x: np.ndarray, teacher: steps_lib.Teacher):
        self.config, self.mesh, self.ctx = config, mesh, ctx
        self.pool_raw = pool_raw
        model = models.build(config.student.model, num_classes=ctx.num_classes,
                             **config.student.model_kwargs)
        self.steps = int(config.train.steps)
        tx = optim.make_optimizer(config.optimizer, self.steps)
        ema = config.train.ema_decay > 0
        init_fn = state_lib.make_init_fn(model, tx, tuple(pool_x.shape[1:]), ema=ema)
        shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
        shardings = sharding.param_shardings(shapes, mesh, config.mesh.params)
        self._init = jax.jit(init_fn, out_shardings=shardings)
        self._step = steps_lib.make_train_step(
            model, tx, mesh=mesh, state_shardings=shardings, teacher=steps_lib.Teacher.cached(),
            distill=steps_lib.DistillConfig(
                config.kd.loss, config.kd.alpha, config.kd.temperature,
                tuple(sorted(config.kd.params.to_dict().items())),
                warmup_steps=config.kd.get("warmup_steps", 0)),
            ema_decay=config.train.ema_decay)
        logits_fn = steps_lib.student_logits_fn(model, use_ema=ema)
        self._eval = steps_lib.make_eval_step(logits_fn, mesh=mesh, shardings=shardings,
                                              teacher=teacher)
        rep = sharding.replicated(mesh)
        self._probs = jax.jit(lambda s, x: jax.nn.softmax(logits_fn(s, {"image": x}), -1),
                              in_shardings=(shardings, rep), out_shardings=rep)
        self._pool_x = jax.device_put(pool_x, rep)
        self._rng_sharding = rep

    def train(self, indices: np.ndarray, teacher_logits: np.ndarray, *, seed: int,
              round: int) -> dict:  # pylint: disable=redefined-builtin
        c = self.config
        # The student's labels are the teacher's arg-max: it never sees the ground truth.
        src = data_lib.ArraySource(self.pool_raw[indices],
                                   np.asarray(teacher_logits).argmax(-1), self.ctx.train_src.info)
        pipeline = data_lib.make_pipeline(
            src, global_batch_size=c.train.batch_size, seed=seed * 1000 + round, train=True,
            augment=train._augment(c, True),  # pylint: disable=protected-access
            process_index=jax.process_index(), process_count=jax.process_count(),
            num_epochs=None, with_index=True)
        rng = jax.device_put(jax.random.fold_in(jax.random.PRNGKey(seed), round),
                             self._rng_sharding)
        state = self._init(rng)
        table = np.asarray(teacher_logits, np.float32)
        for _ in range(self.steps):
            batch = next(pipeline)
            batch["teacher_logits"] = table[batch.pop("index")]
            state, _ = self._step(state, sharding.to_global_batch(batch, self.mesh))
        pipeline.close()
        nf = jax.device_get(state["nonfinite"])
        if int(nf["count"]) and c.train.on_nonfinite == "stop":
            metric = loop.NONFINITE_METRICS.get(int(nf["first_metric"]), "loss")
            raise loop.NonFiniteError(
                f"[active seed {seed} round {round}] non-finite train/{metric} at step "
                f"{int(nf['first_step'])}; lower the learning rate")
        return state

    def evaluate(self, state) -> dict[str, float]:
        return train.evaluate(self.ctx, self._eval, state)

    def pool_probs(self, state) -> np.ndarray:
        return np.asarray(jax.device_get(self._probs(state, self._pool_x)))


def _teacher_fn(teacher: steps_lib.Teacher, mesh, chunk: int) -> Callable[[np.ndarray], np.ndarray]:
    """Host function ``images -> logits`` running the teacher in fixed-size padded chunks."""
    rep = sharding.replicated(mesh)
    fwd = jax.jit(lambda v, x: teacher.fn(v, {"image": x}),
                  in_shardings=(teacher.shardings, rep), out_shardings=rep)

    def fn(x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk]
            pad = np.zeros((chunk - len(part), *x.shape[1:]), x.dtype)
            out.append(np.asarray(fwd(teacher.variables, np.concatenate([part, pad])))[:len(part)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    return fn


# --------------------------------------------------------------------------- validation
def validate_config(config: ml_collections.ConfigDict, pool_size: int | None = None) -> None:
    """Fails fast with a :class:`ConfigError` naming the key (``pool_size`` once it is known)."""
    train.validate_config(config)
    a = config.active
    try:
        strategies = list(a.strategies)
        if not strategies:
            raise ValueError("config.active.strategies is empty")
        for s in strategies:
            config_args.check_choice("config.active.strategies entry", s, STRATEGIES)
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"config.active.strategies={tuple(strategies)} repeats a strategy")
        config_args.check_choice("config.active.method", a.method, strategies)
    except ValueError as e:
        raise errors.ConfigError(str(e)) from None
    budgets = list(a.budgets)
    if not budgets or any(int(b) != b or b < 1 for b in budgets):
        raise errors.ConfigError(f"config.active.budgets={tuple(budgets)} must be positive "
                                 f"integers (cumulative teacher queries)")
    if any(b2 <= b1 for b1, b2 in zip(budgets, budgets[1:])):
        raise errors.ConfigError(f"config.active.budgets={tuple(budgets)} must be strictly "
                                 f"increasing")
    if a.round_size < 0:
        raise errors.ConfigError(f"config.active.round_size={a.round_size} must be >= 0 "
                                 f"(0 = one round per budget)")
    if not a.rad_robustness >= 1.0:
        raise errors.ConfigError(f"config.active.rad_robustness={a.rad_robustness} must be >= 1 "
                                 f"(1 = trust the correctness estimates, inf = worst case)")
    if config.train.steps <= 0:
        raise errors.ConfigError("active distillation trains a fixed number of steps per round: "
                                 "set config.train.steps > 0 and config.train.epochs = 0")
    if config.kd.feature.loss:
        raise errors.ConfigError("config.kd.feature.loss must be '': the active student learns "
                                 "from cached teacher logits only")
    if (config.kd.get("source", "teacher") != "teacher"
            or config.teacher.get("num_teachers", 1) != 1 or "," in config.teacher.init):
        raise errors.ConfigError("active distillation queries one external teacher: set "
                                 "config.kd.source='teacher', config.teacher.num_teachers=1 and "
                                 "at most one checkpoint in config.teacher.init")
    aug = config.data.augment
    if aug.random_crop_padding or aug.random_flip or aug.mixup_alpha > 0 or aug.inception_crop:
        raise errors.ConfigError("config.data.augment must be off: a queried teacher label "
                                 "belongs to the stored example, not to an augmented view")
    if config.teacher.num_labeled < 0:
        raise errors.ConfigError(f"config.teacher.num_labeled={config.teacher.num_labeled} must "
                                 f"be >= 0 (0 = the whole training split)")
    if pool_size is not None:
        if budgets[-1] > pool_size:
            raise errors.ConfigError(
                f"config.active.budgets[-1]={budgets[-1]} is larger than the pool "
                f"({pool_size} examples in {config.data.name}/train)")
        if config.teacher.num_labeled > pool_size:
            raise errors.ConfigError(
                f"config.teacher.num_labeled={config.teacher.num_labeled} is larger than the "
                f"training split ({pool_size})")


# ------------------------------------------------------------------------------- report
def _plot(path: str, curves: dict[str, list[list[tuple[int, float]]]], teacher_acc: float,
          title: str, ticks: Sequence[int]) -> None:
    """Accuracy vs queries per strategy (mean +- std over seeds), log-x, teacher as a line."""
    import io  # pylint: disable=g-import-not-at-top

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
    from matplotlib.ticker import NullFormatter  # pylint: disable=g-import-not-at-top

    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, runs in curves.items():
        x = np.asarray([q for q, _ in runs[0]], np.float64)
        ys = np.asarray([[v for _, v in run] for run in runs], np.float64)
        mean = ys.mean(0)
        (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            std = ys.std(0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.axhline(teacher_acc, color="k", ls="--", lw=1, label="teacher")
    ax.set_xscale("log")
    ax.set_xticks(list(ticks), [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("teacher queries")
    ax.set_ylabel("student test accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    report.write_bytes_atomic(path, buffer.getvalue())


def _labeled_subset(config, pool_size: int) -> np.ndarray:
    n = config.teacher.num_labeled or pool_size
    if n >= pool_size:
        return np.arange(pool_size)
    return np.sort(np.random.default_rng([config.seed, 7]).choice(pool_size, n, replace=False))


# ------------------------------------------------------------------------------------ main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Teacher (on a labeled seed set), then rounds of querying for each seed and strategy."""
    t0 = time.time()
    validate_config(config)
    is_main = jax.process_index() == 0
    # Mesh and data: the pool is the training split, its labels are held back.
    workdir, mesh = train.start(config, workdir)
    if is_main:
        os.makedirs(os.path.join(workdir, "active"), exist_ok=True)
    pool_src, test_src = train.load_splits(config)
    if not getattr(pool_src, "in_memory", False):
        raise errors.ConfigError(f"config.data.name={config.data.name!r}: active distillation "
                                 f"needs a pool held in memory (sklearn_digits, mnist1d, ...)")
    validate_config(config, pool_size=len(pool_src))
    num_classes = pool_src.info.num_classes
    pool_raw, pool_labels = pool_src.arrays()
    eval_augment = train._augment(config, False)  # pylint: disable=protected-access
    pool_x = data_lib.make_pipeline(pool_src, global_batch_size=len(pool_src), seed=0,
                                    train=False, augment=eval_augment).batch_at(0)["image"]
    writer = MetricWriter(workdir, enabled=is_main)
    ctx = train.Context(config, workdir, mesh, pool_src, test_src, num_classes, writer)

    # Teacher: trained on a labeled seed set of the pool unless config.teacher.init names one.
    teacher_dir = config.teacher.init or os.path.join(workdir, "checkpoints", "teacher")
    num_labeled = 0
    if not config.teacher.init:
        labeled = _labeled_subset(config, len(pool_src))
        num_labeled = len(labeled)
        seed_path = os.path.join(workdir, "active", "teacher_labeled.json")
        if os.path.exists(seed_path):
            with open(seed_path) as f:
                if json.load(f) != labeled.tolist():
                    raise errors.ConfigError(
                        f"the teacher in {teacher_dir} was trained on another labeled seed set "
                        f"(config.seed or config.teacher.num_labeled changed); use a fresh "
                        f"--workdir")
        elif is_main:
            report.write_json_atomic(seed_path, labeled.tolist())
        t_ctx = dataclasses.replace(ctx, train_src=data_lib.ArraySource(
            pool_raw[labeled], pool_labels[labeled], pool_src.info))
        train.train_run(t_ctx, train.RunSpec(
            name="teacher", model=config.teacher.model,
            model_kwargs=dict(config.teacher.model_kwargs), seed=config.seed,
            steps_cfg=config.teacher, steps_key="config.teacher",
            optimizer=config.teacher.optimizer))
    _, teacher, teacher_meta = train.load_teacher(teacher_dir, mesh, config.mesh.params,
                                                  num_classes)
    teacher_eval = train.evaluate(
        ctx, steps_lib.make_eval_step(teacher.fn, mesh=mesh, shardings=teacher.shardings),
        teacher.variables)
    teacher_fn = _teacher_fn(teacher, mesh, config.train.batch_size)

    # Student and rounds.
    student = Student(config, mesh, ctx, pool_raw, pool_x, teacher)
    schedule = query_schedule(list(config.active.budgets), config.active.round_size)
    strategies = list(config.active.strategies)
    seeds = [config.seed + i for i in range(config.num_seeds)]
    runs: dict[str, list[dict]] = {s: [] for s in strategies}
    total = len(seeds) * len(strategies) * len(schedule)
    with loop.PreemptionGuard() as guard, Progress(
            total, desc="active", unit="round",
            enabled=config.train.progress and is_main) as progress:
        done = 0
        for seed in seeds:
            for strategy in strategies:
                name = f"{strategy}/seed{seed}"
                oracle = TeacherOracle(teacher_fn, pool_x, num_classes)

                def on_round(res, name=name):
                    nonlocal done
                    done += 1
                    writer.write_scalars(res["queries"], res, prefix=name)
                    progress.update(done, run=name, queries=res["queries"],
                                    acc=f"{100 * res['acc']:.1f}%")

                record = run_rounds(
                    strategy=strategy, seed=seed, schedule=schedule, oracle=oracle,
                    student=student, pool_labels=pool_labels,
                    record_path=os.path.join(workdir, "active", f"{strategy}_seed{seed}.json")
                    if is_main else None,
                    record_meta={"strategy": strategy, "seed": seed, "schedule": schedule,
                                 "teacher_sha256": teacher_meta["sha256"],
                                 "train_steps": student.steps,
                                 "rad_robustness": float(config.active.rad_robustness)},
                    rad_robustness=config.active.rad_robustness, on_round=on_round,
                    should_stop=guard.requested)
                done = max(done, (seeds.index(seed) * len(strategies)
                                  + strategies.index(strategy) + 1) * len(schedule))
                runs[strategy].append(record)
                progress.write(f"[active] {name}: " + "  ".join(
                    f"{r['queries']}:{100 * r['acc']:.1f}%" for r in record["rounds"]))
    writer.close()

    # Results.
    budgets = list(config.active.budgets)
    results: dict[str, float] = {
        "teacher/acc": teacher_eval["acc"],
        "teacher/num_labeled": float(num_labeled),
        "pool_size": float(len(pool_src)),
        "num_seeds": float(len(seeds)),
    }
    for strategy, records in runs.items():
        for n in budgets:
            at = [next(r for r in rec["rounds"] if r["queries"] == n) for rec in records]
            for metric in ("acc", "agreement", "teacher_err"):
                mean, std = report.mean_std([r[metric] for r in at])
                results[f"{strategy}/queries_{n}/{metric}_mean"] = mean
                results[f"{strategy}/queries_{n}/{metric}_std"] = std
    full = budgets[-1]
    for key, strategy in (("kd", config.active.method), ("scratch", "random")):
        if strategy in runs:
            for metric in ("acc", "agreement"):
                for stat in ("mean", "std"):
                    results[f"{key}/{metric}_{stat}"] = results[
                        f"{strategy}/queries_{full}/{metric}_{stat}"]
    results["wall_time_s"] = time.time() - t0
    if is_main:
        report.write_results(os.path.join(workdir, "results.json"), results)
        train.write_teacher_record(workdir, teacher_dir, teacher_meta,
                                   num_labeled=num_labeled, test_acc=teacher_eval["acc"])
        rows, err_rows = [], []
        for strategy, records in runs.items():
            row, err = {"strategy": strategy}, {"strategy": strategy}
            for n in budgets:
                at = [next(r for r in rec["rounds"] if r["queries"] == n) for rec in records]
                row[str(n)] = report.fmt_mean_std([r["acc"] for r in at])
                err[str(n)] = report.fmt_mean_std([r["teacher_err"] for r in at], digits=1)
            rows.append(row)
            err_rows.append(err)
        print(report.format_table(
            rows, title=f"{config.data.name}: student test accuracy (%) vs teacher queries, "
                        f"{len(seeds)} seeds, mean +- std; teacher ({teacher_meta['model']}, "
                        f"{num_labeled or 'external'} labels) {100 * teacher_eval['acc']:.2f}%"))
        print()
        print(report.format_table(
            err_rows, title="teacher arg-max wrong on the queried points (%), mean +- std"))
        _plot(os.path.join(workdir, "active_curves.png"),
              {s: [[(r["queries"], r["acc"]) for r in rec["rounds"]] for rec in records]
               for s, records in runs.items()},
              teacher_eval["acc"], f"Active distillation on {config.data.name}", budgets)
        print(f"results: {os.path.join(workdir, 'results.json')}  "
              f"plot: {os.path.join(workdir, 'active_curves.png')}")
    return results
