"""Teacher-output cache: replay fidelity, top-k -> log-probs, KD equivalence, validation, atomicity.

Expected values come from independent computations: the live teacher on the replayed images,
hand-written NumPy augmentation (np.pad, slicing, [::-1]) from the stored parameters, a NumPy
formula for the spread-tail distribution, and the live-teacher train step.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxkd import data as data_lib
from jaxkd import losses, models
from jaxkd.core import errors, optim, sharding
from jaxkd.core import state as state_lib
from jaxkd.data import builders
from jaxkd.kd import cache as cache_lib
from jaxkd.kd import steps as steps_lib

AUG = data_lib.AugmentConfig(random_crop_padding=1, random_flip=True, mixup_alpha=0.4)


def _teacher(mesh, shape, num_classes, seed=1):
    model = models.build("mlp", num_classes=num_classes, hidden=(16,))
    v = state_lib.init_variables(model, jax.random.PRNGKey(seed), shape)
    sh = sharding.param_shardings(v, mesh)
    return steps_lib.Teacher.live(model, jax.device_put(v, sh), sh)


def _synthetic(n=37, shape=(6, 5, 3), num_classes=7, seed=0):
    rng = np.random.default_rng(seed)
    info = data_lib.DatasetInfo("synthetic", "train", num_classes, shape, (100.0, 110.0, 120.0),
                                (50.0, 60.0, 70.0), n)
    return data_lib.ArraySource(rng.integers(0, 256, (n, *shape)).astype(np.uint8),
                                rng.integers(0, num_classes, n), info)


def _build(path, teacher, src, mesh, **kw):
    args = dict(augment=AUG, num_samples=2, top_k=src.info.num_classes, seed=0, batch_size=64,
                mesh=mesh, teacher_sha256="t0", progress=False)
    args.update(kw)
    return cache_lib.build_cache(str(path), teacher=teacher, source=src, **args)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(-1, 1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data"))
    builders.prepare("sklearn_digits", d)
    return data_lib.load("sklearn_digits", "train", data_dir=d)


@pytest.fixture(scope="module")
def digits_teacher(mesh):
    return _teacher(mesh, (8, 8, 1), 10)


@pytest.fixture(scope="module")
def digits_caches(tmp_path_factory, digits, digits_teacher, mesh):
    """float32 k = C and float16 k = 4 caches of sklearn_digits with crop + flip + mixup."""
    root = tmp_path_factory.mktemp("caches")
    out = {}
    for name, kw in {"f32": dict(top_k=10), "f16": dict(top_k=4, dtype="float16")}.items():
        _build(root / name, digits_teacher, digits, mesh, batch_size=256, **kw)
        out[name] = cache_lib.load_cache(str(root / name), source=digits, teacher_sha256="t0",
                                         num_classes=10)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory, mesh):
    """A small valid synthetic cache (k = 3 < C = 7) and its source, to corrupt copies of."""
    src = _synthetic()
    path = tmp_path_factory.mktemp("small") / "cache"
    _build(path, _teacher(mesh, src.info.shape, 7), src, mesh, top_k=3, batch_size=16)
    return path, src


# ----------------------------------------------------------------------------- replay fidelity
@pytest.mark.parametrize("name", ["f32", "f16"])
def test_replayed_images_reproduce_the_stored_teacher_outputs(digits, digits_caches,
                                                               digits_teacher, name):
    cache = digits_caches[name]
    p = cache_lib.make_cache_pipeline(cache, digits, global_batch_size=128, seed=3)
    apply = jax.jit(digits_teacher.fn)
    # Steps 0 and 12 are in epochs 0 and 1: both stored samples of many examples.
    for step in (0, 5, 12):
        b = p.batch_at(step)
        logits = np.asarray(apply(digits_teacher.variables, {"image": b["image"]}), np.float64)
        lse = np.log(np.exp(logits).sum(-1))
        top = np.argsort(-logits, -1)[:, :cache.top_k]
        np.testing.assert_array_equal(b["teacher_topk_index"], top)
        np.testing.assert_allclose(b["teacher_lse"], lse, rtol=1e-6, atol=1e-6)
        want = np.take_along_axis(logits, top, -1)
        if name == "f32":
            np.testing.assert_allclose(b["teacher_topk_logits"], want, atol=2e-6)
        else:  # float16 log-probs: probabilities within 0.1 % (relative).
            p16 = np.exp(b["teacher_topk_logits"] - b["teacher_lse"][:, None])
            np.testing.assert_allclose(p16, np.exp(want - lse[:, None]), rtol=1e-3)


def test_inception_crop_and_mixup_replay_reproduce_the_stored_outputs(tmp_path, mesh):
    src = _synthetic()  # 6 x 5 uint8 images, resized to 4 x 4
    aug = data_lib.AugmentConfig(inception_crop=True, image_size=4, random_flip=True,
                                 mixup_alpha=0.4)
    teacher = _teacher(mesh, (4, 4, 3), 7)
    _build(tmp_path / "c", teacher, src, mesh, augment=aug, top_k=3, batch_size=16)
    cache = cache_lib.load_cache(str(tmp_path / "c"), source=src, augment=aug)
    box = cache.arrays["box"]
    assert (box[..., 2:] > 0).all() and (box[..., 0] + box[..., 2] <= 6).all()
    assert (box[..., 1] + box[..., 3] <= 5).all() and len(np.unique(box[..., 2])) > 1
    p = cache_lib.make_cache_pipeline(cache, src, global_batch_size=16, seed=0, with_index=True)
    b = p.batch_at(3)
    logits = np.asarray(jax.jit(teacher.fn)(teacher.variables, {"image": b["image"]}))
    np.testing.assert_allclose(b["teacher_topk_logits"],
                               np.take_along_axis(logits, b["teacher_topk_index"], -1),
                               atol=2e-6)
    # Row 0 by hand: PIL crop-resize of the stored boxes, flips, normalisation, mixup.
    images, _ = src.arrays()
    i = b["index"][0]
    (j,) = np.nonzero(cache.arrays["lse"][i] == b["teacher_lse"][0])[0][:1]
    a = cache.arrays

    def one(k, bx, flip):
        top, left, h, w = bx
        x = np.asarray(Image.fromarray(images[k]).resize(
            (4, 4), Image.BILINEAR, box=(left, top, left + w, top + h)))
        x = x[:, ::-1] if flip else x
        return (x.astype(np.float32) - np.float32([100, 110, 120])) / np.float32([50, 60, 70])

    lam = a["lam"][i, j]
    want = lam * one(i, a["box"][i, j], a["flip"][i, j]) + (1 - lam) * one(
        a["partner"][i, j], a["partner_box"][i, j], a["partner_flip"][i, j])
    np.testing.assert_allclose(b["image"][0], want, rtol=1e-6, atol=1e-6)


def test_replayed_augmentation_matches_a_hand_computation(digits, digits_caches):
    cache = digits_caches["f32"]
    p = cache_lib.make_cache_pipeline(cache, digits, global_batch_size=128, seed=3,
                                      with_index=True)
    b = p.batch_at(4)
    images, labels = digits.arrays()
    a = cache.arrays
    mean, std = digits.info.mean[0], digits.info.std[0]

    def aug(i, off, flip):
        x = np.pad(images[i], ((1, 1), (1, 1), (0, 0)))[off[0]:off[0] + 8, off[1]:off[1] + 8]
        x = x[:, ::-1] if flip else x
        return (x.astype(np.float32) - np.float32(mean)) / np.float32(std)

    for r in range(0, 128, 9):
        i = b["index"][r]
        # The stored sample this row replays is the one whose lse it carries.
        (j,) = np.nonzero(a["lse"][i] == b["teacher_lse"][r])[0][:1]
        q = a["partner"][i, j]
        lam = a["lam"][i, j]
        want = lam * aug(i, a["offset"][i, j], a["flip"][i, j]) + (1 - lam) * aug(
            q, a["partner_offset"][i, j], a["partner_flip"][i, j])
        np.testing.assert_allclose(b["image"][r], want, rtol=1e-6, atol=1e-6)
        assert b["label"][r] == labels[i] and b["label2"][r] == labels[q]
        assert b["lam"][r] == lam


def test_without_augmentation_batches_equal_the_normal_pipeline(tmp_path, digits,
                                                                digits_teacher, mesh):
    _build(tmp_path / "c", digits_teacher, digits, mesh, augment=data_lib.AugmentConfig(),
           num_samples=1, batch_size=512)
    cache = cache_lib.load_cache(str(tmp_path / "c"), source=digits)
    p = cache_lib.make_cache_pipeline(cache, digits, global_batch_size=128, seed=5,
                                      with_index=True)
    q = data_lib.make_pipeline(digits, global_batch_size=128, seed=5, train=True,
                               with_index=True)
    for step in (0, 11, 30):  # 11 crosses the first epoch boundary (1437 examples)
        a, b = p.batch_at(step), q.batch_at(step)
        for key in b:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_every_stored_sample_is_used_once_per_num_samples_epochs(small):
    path, src = small
    cache = cache_lib.load_cache(str(path), source=src)
    p = cache_lib.make_cache_pipeline(cache, src, global_batch_size=37, seed=1, with_index=True)
    seen = {}
    for step in range(cache.num_samples):  # one batch = one epoch here
        b = p.batch_at(step)
        for i, lse in zip(b["index"], b["teacher_lse"]):
            seen.setdefault(int(i), []).append(float(lse))
    for i, got in seen.items():
        assert sorted(got) == sorted(cache.arrays["lse"][i].tolist())


# ------------------------------------------------------------------------- top-k -> log-probs
def test_full_topk_gives_the_live_hinton_loss():
    rng = np.random.default_rng(0)
    logits = (4 * rng.normal(size=(16, 10))).astype(np.float32)
    student = rng.normal(size=(16, 10)).astype(np.float32)
    idx = np.argsort(-logits, -1)

    @jax.jit
    def f(logits, idx, student):
        lse = jax.nn.logsumexp(logits, -1)
        full = cache_lib.topk_to_logits(jnp.take_along_axis(logits, idx, -1), idx, lse, 10)
        kd = lambda t, x: losses.hinton_kd_loss(student, x, temperature=t)
        return (full, jax.nn.log_softmax(logits),
                [(kd(t, full), kd(t, logits)) for t in (1.0, 4.0)])

    full, want, pairs = f(logits, idx, student)
    np.testing.assert_allclose(full, want, atol=1e-6)
    for got, live in pairs:
        np.testing.assert_allclose(got, live, atol=1e-6)


def test_partial_topk_matches_the_numpy_spread_tail():
    rng = np.random.default_rng(1)
    c, k, t = 10, 3, 4.0
    logits = (3 * rng.normal(size=(8, c))).astype(np.float64)
    student = rng.normal(size=(8, c))
    idx = np.argsort(-logits, -1)[:, :k]
    lse = np.log(np.exp(logits).sum(-1))
    p = np.exp(logits - lse[:, None])
    pk = np.take_along_axis(p, idx, -1)
    q = np.repeat(((1 - pk.sum(-1)) / (c - k))[:, None], c, -1)
    np.put_along_axis(q, idx, pk, -1)
    pt = q ** (1 / t) / (q ** (1 / t)).sum(-1, keepdims=True)
    ls = student / t - np.log(np.exp(student / t).sum(-1, keepdims=True))
    want = t * t * (pt * (np.log(pt) - ls)).sum(-1).mean()

    @jax.jit
    def f(top, idx, lse, student):
        full = cache_lib.topk_to_logits(top, idx, lse, c)
        return full, losses.hinton_kd_loss(student, full, temperature=t)

    full, got = f(np.take_along_axis(logits, idx, -1).astype(np.float32), idx.astype(np.int32),
                  lse.astype(np.float32), student.astype(np.float32))
    np.testing.assert_allclose(np.exp(full), q, rtol=1e-5, atol=1e-7)  # float32 leftover
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("k, scale", [(5, 1.0), (3, 1.0), (3, 1.2)])
def test_topk_to_logits_values_and_gradients_are_finite(k, scale):
    """k == C, and top-k mass >= 1 (rounding; here forced with ``scale``): no NaN / inf."""
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(4, 5)) * np.array([30, 1, 1, 1, 1]), jnp.float32)
    idx = jnp.argsort(-logits, -1)[:, :k]
    lse = jax.nn.logsumexp(logits, -1) - jnp.log(scale)

    def f(top, lse):
        return jnp.sum(cache_lib.topk_to_logits(top, idx, lse, 5))

    top = jnp.take_along_axis(logits, idx, -1)
    values, grads = jax.jit(lambda top, lse: (cache_lib.topk_to_logits(top, idx, lse, 5),
                                              jax.grad(f, argnums=(0, 1))(top, lse)))(top, lse)
    assert np.isfinite(values).all()
    for g in grads:
        assert np.isfinite(g).all()


def test_kd_step_from_cache_matches_the_live_teacher_step(digits, digits_caches,
                                                          digits_teacher, mesh):
    cache = digits_caches["f32"]  # k == C, float32
    student = models.build("mlp", num_classes=10, hidden=(8,))
    opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, schedule="constant",
                                         warmup_steps=0, momentum=0.9, nesterov=False,
                                         weight_decay=0.0, grad_clip_norm=0.0))
    tx = optim.make_optimizer(opt, 10)
    build, _, sh = state_lib.create_sharded(
        state_lib.make_init_fn(student, tx, (8, 8, 1), ema=False), jax.random.PRNGKey(0), mesh,
        "replicated")
    distill = steps_lib.DistillConfig("hinton", 0.9, 4.0)
    live = steps_lib.make_train_step(student, tx, mesh=mesh, state_shardings=sh,
                                     teacher=digits_teacher, distill=distill)
    cached = steps_lib.make_train_step(student, tx, mesh=mesh, state_shardings=sh,
                                       teacher=cache_lib.cached_teacher(10), distill=distill)
    p = cache_lib.make_cache_pipeline(cache, digits, global_batch_size=128, seed=0)
    s_live, s_cached = build(), build()
    for _ in range(2):
        batch = sharding.to_global_batch(next(p), mesh)
        s_live, m_live = live(s_live, batch)
        s_cached, m_cached = cached(s_cached, batch)
        for key in ("loss", "kd", "ce", "agreement"):
            np.testing.assert_allclose(m_cached[key], m_live[key], rtol=1e-5, atol=1e-6,
                                       err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 s_cached["params"], s_live["params"])


# ------------------------------------------------------------------------------- pipeline
def test_restored_pipeline_continues_bit_identically(small):
    path, src = small
    cache = cache_lib.load_cache(str(path), source=src)
    mk = lambda: cache_lib.make_cache_pipeline(cache, src, global_batch_size=16, seed=2)
    p = mk()
    for _ in range(4):
        next(p)
    state = json.loads(json.dumps(p.get_state()))
    want = [next(p) for _ in range(5)]
    q = mk()
    q.set_state(state)
    for a in want:
        b = next(q)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    spec = q.element_spec
    assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {
        k: (v.shape, v.dtype) for k, v in want[0].items()}
    other = cache_lib.make_cache_pipeline(cache, src, global_batch_size=16, seed=3)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


def test_process_slices_concatenate_to_the_single_process_batch(small):
    path, src = small
    cache = cache_lib.load_cache(str(path), source=src)
    one = cache_lib.make_cache_pipeline(cache, src, global_batch_size=16, seed=4)
    two = [cache_lib.make_cache_pipeline(cache, src, global_batch_size=16, seed=4,
                                         process_index=i, process_count=2) for i in range(2)]
    for step in (0, 2, 7):  # 2 crosses an epoch boundary (37 examples)
        whole = one.batch_at(step)
        parts = [p.batch_at(step) for p in two]
        for key in whole:
            np.testing.assert_array_equal(
                np.concatenate([q[key] for q in parts]), whole[key], err_msg=key)


# ----------------------------------------------------------------------- validation errors
def _corrupt(case, path, src):
    """Applies ``case`` to the cache copy at ``path``; returns load_cache kwargs."""
    mpath = os.path.join(path, "manifest.json")
    with open(mpath) as f:
        manifest = json.load(f)

    def edit(**kw):
        manifest.update(kw)
        with open(mpath, "w") as f:
            json.dump(manifest, f)

    kwargs = {"source": src}
    if case == "missing_dir":
        shutil.rmtree(path)
    elif case == "missing_manifest":
        os.remove(mpath)
    elif case == "empty":
        edit(num_samples=0)
    elif case == "truncated":
        fname = os.path.join(path, "lse.npy")
        with open(fname, "r+b") as f:
            f.truncate(os.path.getsize(fname) - 40)
    elif case == "wrong_shape":
        np.save(os.path.join(path, "topk_index.npy"), np.zeros((37, 2, 2), np.uint8))
    elif case == "num_examples":
        kwargs["source"] = _synthetic(n=36)
    elif case == "num_classes":
        kwargs["num_classes"] = 9
    elif case == "teacher":
        kwargs["teacher_sha256"] = "another-teacher"
    elif case == "top_k":
        edit(top_k=8)
    elif case == "version":
        edit(version=99)
    elif case == "augment":
        kwargs["augment"] = data_lib.AugmentConfig(random_flip=True)
    elif case == "num_samples":
        kwargs["num_samples"] = 4
    return kwargs


@pytest.mark.parametrize("case, match", [
    ("missing_dir", "no teacher cache at .*build_cache"),
    ("missing_manifest", "no manifest.json.*rebuild"),
    ("empty", r"is empty \(37 examples x 0 samples\).*rebuild"),
    ("truncated", "lse.npy is truncated or unreadable.*rebuild"),
    ("wrong_shape", r"topk_index.npy holds uint8 \(37, 2, 2\).*\(37, 2, 3\).*rebuild"),
    ("num_examples", "holds 37 examples .* has 36.*rebuild"),
    ("num_classes", "has 7 classes but the student needs 9.*rebuild"),
    ("teacher", "teacher sha256 t0.* but the teacher now is another-teacher.*rebuild"),
    ("top_k", "top_k=8 for 7 classes.*rebuild"),
    ("version", "version 99.*reads 'jaxkd.teacher_cache' version 1.*rebuild"),
    ("augment", r"built with augment=AugmentConfig\(random_crop_padding=1.*but augment=.*rebuild"),
    ("num_samples", "built with num_samples=2 but num_samples=4 is asked for.*rebuild"),
])
def test_bad_caches_raise_one_config_error(tmp_path, small, case, match):
    path, src = small
    copy = str(tmp_path / "cache")
    shutil.copytree(path, copy)
    kwargs = _corrupt(case, copy, src)
    with pytest.raises(errors.ConfigError, match=match):
        cache_lib.load_cache(copy, **kwargs)


def test_build_rejects_bad_requests(tmp_path, small, mesh):
    path, src = small
    t = _teacher(mesh, src.info.shape, 7)
    with pytest.raises(errors.ConfigError, match="top_k=8 exceeds the teacher's 7 classes"):
        _build(tmp_path / "a", t, src, mesh, top_k=8)
    with pytest.raises(errors.ConfigError, match="predicts 5 classes but synthetic has 7"):
        _build(tmp_path / "b", _teacher(mesh, src.info.shape, 5), src, mesh)
    with pytest.raises(errors.ConfigError, match="already exists"):
        _build(path, t, src, mesh)
    with pytest.raises(errors.ConfigError, match="num_samples=0"):
        _build(tmp_path / "c", t, src, mesh, num_samples=0)
    with pytest.raises(errors.ConfigError, match="not divisible"):
        _build(tmp_path / "d", t, src, mesh, batch_size=12)
    assert sorted(os.listdir(tmp_path)) == []


def test_an_interrupted_build_leaves_no_valid_cache(tmp_path, small, mesh, monkeypatch):
    path, src = small
    t = _teacher(mesh, src.info.shape, 7)
    target = tmp_path / "cache"
    calls = []
    render = cache_lib._Augmenter.render

    def failing(self, *args, **kw):
        calls.append(1)
        assert not target.exists()  # nothing at the target while the build runs
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return render(self, *args, **kw)

    monkeypatch.setattr(cache_lib._Augmenter, "render", failing)
    with pytest.raises(KeyboardInterrupt):
        _build(target, t, src, mesh, batch_size=16)
    assert os.listdir(tmp_path) == []  # no target, no partial directory left behind
    with pytest.raises(errors.ConfigError, match="no teacher cache"):
        cache_lib.load_cache(str(target), source=src)

    # Overwriting: a crash keeps the old cache intact and valid.
    old = tmp_path / "old"
    shutil.copytree(path, old)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(cache_lib._Augmenter, "render", lambda *a, **k: (_ for _ in ()).throw(
            KeyboardInterrupt("crash")))
        _build(old, t, src, mesh, batch_size=16, overwrite=True, teacher_sha256="t1")
    assert os.listdir(tmp_path) == ["old"]
    assert cache_lib.load_cache(str(old), source=src).teacher_sha256 == "t0"
