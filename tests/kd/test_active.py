"""Active distillation: selection rules vs NumPy, the RAD game, budget accounting, resume, e2e."""

import json
import os

import ml_collections
import numpy as np
import pytest

from configs.kd import active_digits
from jaxkd.core import errors
from jaxkd.kd import active


def _probs(rng, m, c=4, sharp=1.0):
    return rng.dirichlet(np.full(c, sharp), size=m)


def _np_margin(probs):
    s = np.sort(probs, -1)
    return s[:, -1] - s[:, -2]


# ------------------------------------------------------------------------------ selection
def test_margins_match_numpy():
    probs = _probs(np.random.default_rng(0), 50, c=7)
    np.testing.assert_allclose(np.asarray(active.margins(probs)), _np_margin(probs), atol=1e-6)


def test_margin_picks_the_smallest_margins_among_candidates():
    probs = np.array([[0.90, 0.05, 0.05],   # margin 0.85
                      [0.40, 0.35, 0.25],   # 0.05
                      [0.50, 0.30, 0.20],   # 0.20
                      [0.34, 0.33, 0.33],   # 0.01
                      [0.60, 0.20, 0.20],   # 0.40
                      [0.45, 0.45, 0.10]])  # 0.00
    candidates = np.array([3, 8, 11, 20, 21, 40])  # pool indices of the rows
    view = active.PoolView(candidates, probs)
    got = active.select_margin(view, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(got, np.sort(candidates[np.argsort(_np_margin(probs))[:3]]))
    np.testing.assert_array_equal(got, [8, 20, 40])  # margins 0.05, 0.01, 0.00 by hand
    rng = np.random.default_rng(1)
    probs = _probs(rng, 300)
    cand = np.sort(rng.choice(1000, 300, replace=False))
    got = active.select_margin(active.PoolView(cand, probs), 40, rng)
    np.testing.assert_array_equal(got, np.sort(cand[np.argsort(_np_margin(probs))[:40]]))


def test_random_is_reproducible_from_the_seed_and_only_picks_candidates():
    cand = np.arange(0, 500, 3)
    view = active.PoolView(cand, np.full((len(cand), 4), 0.25))
    a = active.select_random(view, 30, np.random.default_rng([5, 1]))
    b = active.select_random(view, 30, np.random.default_rng([5, 1]))
    c = active.select_random(view, 30, np.random.default_rng([6, 1]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len(np.unique(a)) == 30 and np.isin(a, cand).all()


def test_unknown_strategy_lists_the_valid_ones():
    view = active.PoolView(np.arange(3), np.full((3, 2), 0.5))
    with pytest.raises(errors.ConfigError, match="margin.*rad.*random"):
        active.select("entropy", view, 1, np.random.default_rng(0))


# ---------------------------------------------------------------------------------- RAD
def test_rad_prefers_informative_points_the_teacher_is_likely_right_on():
    # Calibration history: the teacher is unreliable where the student margin is below 0.1.
    hm = np.linspace(0.0, 1.0, 50)
    hc = np.where(hm < 0.1, 0.3, 0.95)
    probs = np.array([[0.50, 0.49, 0.01],   # A: margin 0.01, most informative, teacher ~30% right
                      [0.55, 0.40, 0.05],   # B: margin 0.15, informative, teacher ~95% right
                      [0.96, 0.02, 0.02]])  # C: margin 0.94, uninformative
    view = active.PoolView(np.array([10, 11, 12]), probs, hm, hc, hc)
    assert list(active.select_margin(view, 1, None)) == [10]
    for seed in range(5):
        assert list(active.select_rad(view, 1, np.random.default_rng(seed))) == [11]
    # The estimate it used, against the calibration by hand.
    c = active.teacher_correct_prob(_np_margin(probs), hm, hc, fallback=0.5)
    np.testing.assert_allclose(c, [0.3, 0.95, 0.95], atol=1e-9)


def test_teacher_correct_prob_is_a_constant_until_there_are_enough_pairs():
    m = np.array([0.1, 0.5, 0.9])
    few = active.MIN_CALIBRATION_PAIRS - 1
    np.testing.assert_allclose(
        active.teacher_correct_prob(m, np.linspace(0, 1, few), np.ones(few), 0.8), 0.8)
    rng = np.random.default_rng(0)
    hm = rng.random(200)
    hc = np.clip(0.5 + 0.5 * hm + 0.1 * rng.normal(size=200), 0, 1)
    c = active.teacher_correct_prob(np.linspace(0, 1, 30), hm, hc, 0.0)
    assert np.all(np.diff(c) >= 0) and 0.4 < c[0] < 0.65 and 0.85 < c[-1] <= 1.0


def test_rad_with_trusted_estimates_is_top_n_expected_correct_gain():
    rng = np.random.default_rng(0)
    g, e = rng.random(80), 0.4 * rng.random(80)
    p = active.rad_inclusion_probs(g, e, 12, robustness=1.0)
    top = np.argsort(-g * (1.0 - e))[:12]
    np.testing.assert_allclose(p[top], 1.0, atol=1e-6)
    assert p.sum() == pytest.approx(12.0)


def test_rad_single_query_worst_case_matches_the_closed_form():
    # b = 1, nature places k mistakes anywhere: p_i ~ 1/g_i on the j largest gains, with j
    # maximising (j - k) / sum_{l <= j} 1/g_(l); the guaranteed gain is that maximum.
    rng = np.random.default_rng(3)
    g = rng.uniform(0.05, 1.0, 40)
    e = np.full(40, 0.06)  # k = 2.4 expected mistakes
    p = active.rad_inclusion_probs(g, e, 1, robustness=np.inf)
    gs = np.sort(g)[::-1]
    j = np.arange(1, 41)
    values = (j - e.sum()) / np.cumsum(1.0 / gs)
    best = int(j[np.argmax(values)])
    expected = np.where(g >= gs[best - 1], 1.0 / g, 0.0)
    np.testing.assert_allclose(p, expected / expected.sum(), atol=1e-6)
    assert active.rad_value(p, g, e, np.inf) == pytest.approx(values.max(), rel=1e-6)
    assert best > 3  # the worst case spreads the query over more than the top point


@pytest.mark.parametrize("robustness", [1.0, 2.0, np.inf])
def test_rad_solution_beats_every_other_batch_distribution(robustness):
    rng = np.random.default_rng(int(min(robustness, 9)))
    g, e = rng.random(30), 0.3 * rng.random(30)
    n = 6
    p = active.rad_inclusion_probs(g, e, n, robustness)
    assert p.min() >= 0 and p.max() <= 1 + 1e-9 and p.sum() == pytest.approx(n)
    best = active.rad_value(p, g, e, robustness)
    for _ in range(300):
        q = rng.dirichlet(np.full(30, 0.3)) * n
        while q.max() > 1:  # project onto {0 <= q <= 1, sum q = n}
            over = q > 1
            q[~over] += (q[over] - 1).sum() * q[~over] / q[~over].sum()
            q[over] = 1
        assert active.rad_value(q, g, e, robustness) <= best + 1e-7
    top = np.zeros(30)
    top[np.argsort(-g)[:n]] = 1
    assert active.rad_value(top, g, e, robustness) <= best + 1e-7  # plain margin sampling


def test_systematic_sample_draws_exactly_n_with_the_inclusion_probabilities():
    rng = np.random.default_rng(0)
    p = np.array([1.0, 0.9, 0.5, 0.5, 0.3, 0.3, 0.25, 0.25, 0.0, 0.0])  # sums to 4
    counts = np.zeros(10)
    for _ in range(4000):
        s = active.systematic_sample(p, rng)
        assert len(s) == 4 and len(np.unique(s)) == 4
        counts[s] += 1
    np.testing.assert_allclose(counts / 4000, p, atol=0.035)


# ----------------------------------------------------------------------- budget and resume
N_POOL = 120


class _StubStudent:
    """Deterministic fake student: pool probabilities depend on (seed, round) only."""

    def __init__(self, crash_at_round=None):
        self.trained_rounds = []
        self.crash_at_round = crash_at_round

    def train(self, indices, teacher_logits, *, seed, round):  # pylint: disable=redefined-builtin
        if round == self.crash_at_round:
            raise RuntimeError("crash")
        assert len(indices) == len(teacher_logits) and np.isfinite(teacher_logits).all()
        self.trained_rounds.append(round)
        return {"seed": seed, "round": round, "n": len(indices)}

    def evaluate(self, state):
        return {"acc": state["n"] / N_POOL, "loss": 1.0, "agreement": 0.5}

    def pool_probs(self, state):
        return _probs(np.random.default_rng([state["seed"], state["round"]]), N_POOL, c=5)


def _teacher(seen):
    """Teacher on pool 'images' that are their own index; records every row it is run on."""

    def fn(x):
        rows = x[:, 0].astype(int)
        seen.extend(rows.tolist())
        noise = np.stack([np.random.default_rng(r).normal(size=5) for r in rows])
        return noise + 3 * np.eye(5)[rows % 5]  # depends on the row only, not on the batch

    return fn


def _run(strategy, path=None, student=None, oracle_seen=None, schedule=(10, 25, 40, 70)):
    seen = [] if oracle_seen is None else oracle_seen
    oracle = active.TeacherOracle(_teacher(seen), np.arange(N_POOL)[:, None].astype(np.float32),
                                  5)
    record = active.run_rounds(
        strategy=strategy, seed=3, schedule=list(schedule), oracle=oracle,
        student=student or _StubStudent(), pool_labels=np.arange(N_POOL) % 5, record_path=path,
        record_meta={"strategy": strategy, "seed": 3})
    return record, oracle, seen


@pytest.mark.parametrize("strategy", sorted(active.STRATEGIES))
def test_budget_is_spent_exactly_without_duplicates_and_teacher_sees_only_queried(strategy):
    record, oracle, seen = _run(strategy)
    queried = record["queried"]
    assert len(queried) == 70 and len(set(queried)) == 70
    assert [r["queries"] for r in record["rounds"]] == [10, 25, 40, 70]
    assert oracle.rows_evaluated == 70 == oracle.num_queried
    assert sorted(seen) == sorted(queried)  # each queried row exactly once, nothing else
    assert oracle.calls == 4  # initial batch + one per later round
    np.testing.assert_array_equal(np.flatnonzero(oracle.queried), np.sort(queried))
    assert np.isnan(oracle.logits[~oracle.queried]).all()
    # Every strategy starts from the same random batch for a seed.
    assert queried[:10] == active.initial_queries(N_POOL, 10, 3).tolist()
    with pytest.raises(ValueError, match="twice"):
        oracle.query(np.array([queried[0]]))


def test_resume_after_a_crash_redoes_no_finished_round(tmp_path):
    path = str(tmp_path / "rad_seed3.json")
    with pytest.raises(RuntimeError, match="crash"):
        _run("rad", path, student=_StubStudent(crash_at_round=2))
    assert len(json.load(open(path))["rounds"]) == 2
    student = _StubStudent()
    resumed, oracle, seen = _run("rad", path, student=student)
    assert student.trained_rounds == [2, 3]
    # It asks the teacher again only for the 40 points already paid for, then 30 new ones.
    assert oracle.rows_evaluated == 70 and len(set(seen)) == 70
    straight, _, _ = _run("rad", str(tmp_path / "straight.json"))
    assert resumed["queried"] == straight["queried"]
    assert resumed["rounds"] == [dict(r, time_s=s["time_s"]) for r, s in
                                 zip(straight["rounds"], resumed["rounds"])]
    # A finished run is not touched again.
    again_student = _StubStudent()
    _, oracle, _ = _run("rad", path, student=again_student)
    assert again_student.trained_rounds == [] and oracle.rows_evaluated == 0


def test_query_schedule():
    assert active.query_schedule([25, 50, 100], 0) == [25, 50, 100]
    assert active.query_schedule([25, 50, 300], 100) == [25, 50, 150, 250, 300]


# -------------------------------------------------------------------------------- configs
def _smoke(**active_overrides):
    c = active_digits.get_config("smoke")
    c.train.progress = False
    # Cheaper than the smoke's ConvNet teacher to compile and checkpoint (the CLI smoke run in
    # tests/test_configs.py covers that one).
    c.teacher.model = "mlp"
    c.teacher.model_kwargs = ml_collections.ConfigDict({"hidden": (64,)})
    c.train.checkpoint_every = 1000
    for k, v in active_overrides.items():
        c.active[k] = v
    return c


@pytest.mark.parametrize("overrides, match", [
    (dict(budgets=(10, 10)), "strictly increasing"),
    (dict(budgets=(20, 10)), "strictly increasing"),
    (dict(budgets=()), "positive integers"),
    (dict(strategies=("random", "entropy")), "entropy.*random, margin, rad"),
    (dict(strategies=("random", "random")), "repeats"),
    (dict(strategies=("random",)), "config.active.method"),
    (dict(rad_robustness=0.5), "rad_robustness"),
])
def test_bad_active_configs_fail_fast(overrides, match):
    with pytest.raises(errors.ConfigError, match=match):
        active.validate_config(_smoke(**overrides))


def test_active_needs_a_single_external_teacher():
    c = _smoke()
    c.kd.source = "ema"
    with pytest.raises(errors.ConfigError, match="one external teacher"):
        active.validate_config(c)
    c = _smoke()
    c.teacher.init = "/a,/b"
    with pytest.raises(errors.ConfigError, match="one external teacher"):
        active.validate_config(c)


def test_budget_larger_than_the_pool_fails_before_training(tmp_path):
    with pytest.raises(errors.ConfigError, match="larger than the pool"):
        active.train_and_evaluate(_smoke(budgets=(10, 5000)), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


# ---------------------------------------------------------------------------- end to end
def test_smoke_end_to_end_and_rerun_trains_nothing(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    results = active.train_and_evaluate(_smoke(), workdir)
    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk == pytest.approx(results)
    for s in ("random", "margin", "rad"):
        for n in (10, 30):
            assert 0.0 <= on_disk[f"{s}/queries_{n}/acc_mean"] <= 1.0
            assert on_disk[f"{s}/queries_{n}/acc_std"] == 0.0  # one seed
        record = json.load(open(os.path.join(workdir, "active", f"{s}_seed0.json")))
        assert len(record["queried"]) == 30 == len(set(record["queried"]))
    assert on_disk["kd/acc_mean"] == on_disk["rad/queries_30/acc_mean"]
    assert on_disk["scratch/acc_mean"] == on_disk["random/queries_30/acc_mean"]
    assert on_disk["teacher/acc"] > 0.5 and on_disk["teacher/num_labeled"] == 50
    assert os.path.getsize(os.path.join(workdir, "active_curves.png")) > 0
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any("rad/seed0/acc" in r for r in rows)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr(active.Student, "train", no_training)
    again = active.train_and_evaluate(_smoke(), workdir)
    for key, value in results.items():
        if key != "wall_time_s":
            assert again[key] == pytest.approx(value), key
