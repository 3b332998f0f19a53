"""Input pipeline: determinism, checkpoints, multi-process slices, epochs, padding, augmentation.

Expected batches are recomputed here from the documented recipe (order from
``default_rng([seed, 0, epoch]).permutation(N)``, augmentation draws from
``default_rng([seed, 1, step])`` in the order crop offsets, flips, mixup permutation, lam) with
per-example NumPy (np.pad, slicing, np.flip), not with the pipeline's vectorised code.
"""

import json
import time

import numpy as np
import pytest

from jaxkd import data as data_lib
from jaxkd.data import builders

AUG_ALL = data_lib.AugmentConfig(random_crop_padding=2, random_flip=True, mixup_alpha=0.4)


def _source(n=37, shape=(6, 5, 3), num_classes=7, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape)).astype(dtype)
    labels = rng.integers(0, num_classes, n)
    c = shape[-1]
    info = data_lib.DatasetInfo(
        name="synthetic", split="train", num_classes=num_classes, shape=shape,
        mean=tuple(float(m) for m in np.linspace(100, 130, c)),
        std=tuple(float(s) for s in np.linspace(50, 70, c)), num_examples=n)
    return data_lib.ArraySource(images, labels, info)


def _indexed_source(n):
    """Labels = example index, to track which examples a batch holds."""
    info = data_lib.DatasetInfo("ids", "train", n, (2, 2, 1), (0.0,), (1.0,), n)
    return data_lib.ArraySource(np.zeros((n, 2, 2, 1), np.uint8), np.arange(n), info)


def _take(p, k):
    return [next(p) for _ in range(k)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("jaxkd_data"))
    builders.prepare("sklearn_digits", d)
    return d


# ------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("aug", [data_lib.AugmentConfig(), AUG_ALL])
def test_same_seed_same_batches(aug):
    src = _source()
    mk = lambda seed: data_lib.make_pipeline(src, global_batch_size=8, seed=seed, train=True,
                                             augment=aug)
    a, b, c = _take(mk(3), 12), _take(mk(3), 12), _take(mk(4), 12)
    _assert_batches_equal(a, b)
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_batch_at_is_pure():
    p = data_lib.make_pipeline(_source(), global_batch_size=8, seed=0, train=True, augment=AUG_ALL)
    b5 = p.batch_at(5)
    assert p.get_state()["step"] == 0
    _assert_batches_equal([_take(p, 6)[-1]], [b5])


# ------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("train", [True, False])
def test_state_restore_continues_identically(train):
    src = _source()
    mk = lambda **kw: data_lib.make_pipeline(src, global_batch_size=8, seed=1, train=train,
                                             augment=AUG_ALL, **kw)
    p = mk()
    _take(p, 3)
    state = json.loads(json.dumps(p.get_state()))  # JSON round trip, as in a checkpoint.
    assert state["step"] == 3
    rest = list(p) if not train else _take(p, 7)
    q = mk()
    q.set_state(state)
    _assert_batches_equal(list(q) if not train else _take(q, 7), rest)


def test_state_restore_into_other_process_count():
    src = _source()
    p = data_lib.make_pipeline(src, global_batch_size=8, seed=1, train=True, augment=AUG_ALL)
    _take(p, 4)
    state = p.get_state()
    want = _take(p, 3)
    parts = []
    for i in range(2):
        q = data_lib.make_pipeline(src, global_batch_size=8, seed=1, train=True, augment=AUG_ALL,
                                   process_index=i, process_count=2)
        q.set_state(state)
        parts.append(_take(q, 3))
    got = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*parts)]
    _assert_batches_equal(got, want)


def test_state_mismatch_is_an_error():
    src = _source()
    p = data_lib.make_pipeline(src, global_batch_size=8, seed=1, train=True)
    q = data_lib.make_pipeline(src, global_batch_size=8, seed=2, train=True)
    with pytest.raises(ValueError, match="seed"):
        q.set_state(p.get_state())


# ---------------------------------------------------------------------------- multi-process
@pytest.mark.parametrize("aug", [data_lib.AugmentConfig(), AUG_ALL])
@pytest.mark.parametrize("train,num_epochs", [(True, None), (True, 2), (False, 1)])
@pytest.mark.parametrize("procs", [2, 4])
def test_process_slices_concatenate_to_global_batch(aug, train, num_epochs, procs):
    src = _source(n=37)
    kw = dict(global_batch_size=8, seed=5, train=train, augment=aug, num_epochs=num_epochs,
              drop_remainder=False)
    single = _take(data_lib.make_pipeline(src, **kw), 10 if train and num_epochs is None else 5)
    slices = [_take(data_lib.make_pipeline(src, process_index=i, process_count=procs, **kw),
                    len(single)) for i in range(procs)]
    for i in range(procs):
        assert slices[i][0]["image"].shape[0] == 8 // procs
    got = [{k: np.concatenate([s[j][k] for s in slices]) for k in single[j]}
           for j in range(len(single))]
    _assert_batches_equal(got, single)


def test_bad_batch_size_for_process_count():
    with pytest.raises(ValueError, match=r"global_batch_size=10.*process_count=4"):
        data_lib.make_pipeline(_source(), global_batch_size=10, seed=0, train=True,
                               process_count=4, process_index=0)


# ------------------------------------------------------------------------------ epochs / eval
def test_every_example_once_per_epoch():
    n, g = 10, 4
    p = data_lib.make_pipeline(_indexed_source(n), global_batch_size=g, seed=2, train=True)
    stream = np.concatenate([b["label"] for b in _take(p, 15)])  # 60 = 6 epochs.
    for e in range(6):
        epoch = stream[e * n:(e + 1) * n]
        assert sorted(epoch.tolist()) == list(range(n))
        np.testing.assert_array_equal(
            epoch, np.random.default_rng([2, 0, e]).permutation(n))  # The documented order.
    assert not np.array_equal(stream[:n], stream[n:2 * n])  # Reshuffled each epoch.


@pytest.mark.parametrize("drop,expect_batches", [(True, 7), (False, 8)])
def test_finite_train_epochs(drop, expect_batches):
    p = data_lib.make_pipeline(_indexed_source(10), global_batch_size=4, seed=0, train=True,
                               num_epochs=3, drop_remainder=drop)
    batches = list(p)
    assert len(batches) == len(p) == expect_batches
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == (28 if drop else 30)
    labels = np.concatenate([b["label"] for b in batches])[masks == 1]
    for e in range(2):
        assert sorted(labels[e * 10:(e + 1) * 10].tolist()) == list(range(10))
    with pytest.raises(StopIteration):
        next(p)


def test_eval_padding_and_mask():
    src = _source(n=10)
    p = data_lib.make_pipeline(src, global_batch_size=4, seed=0, train=False, augment=AUG_ALL)
    batches = list(p)
    assert len(batches) == len(p) == 3
    assert all(b["image"].shape == (4, 6, 5, 3) for b in batches)
    assert all(set(b) == {"image", "label", "mask"} for b in batches)  # No augmentation.
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
    assert all(b["mask"].dtype == np.float32 for b in batches)
    images, labels = src.arrays()
    mean, std = np.float32(src.info.mean), np.float32(src.info.std)
    got = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(got[:10], (images.astype(np.float32) - mean) / std)
    np.testing.assert_array_equal(got[10:], 0)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10], labels)
    # Train batches carry an all-ones mask.
    t = next(data_lib.make_pipeline(src, global_batch_size=4, seed=0, train=True))
    np.testing.assert_array_equal(t["mask"], np.ones(4, np.float32))


# ------------------------------------------------------------------------------ augmentation
def _reference_batch(src, aug, seed, step, g):
    """Per-example NumPy recomputation of global batch ``step`` from the documented recipe."""
    images, labels = src.arrays()
    n = len(labels)
    pos = step * g + np.arange(g)
    idx = np.array([np.random.default_rng([seed, 0, q // n]).permutation(n)[q % n] for q in pos])
    rng = np.random.default_rng([seed, 1, step])
    k = images.ndim - 2
    p = aug.random_crop_padding
    offsets = rng.integers(0, 2 * p + 1, size=(g, k)) if p else np.full((g, k), 0)
    flips = rng.random(g) < 0.5 if aug.random_flip else np.zeros(g, bool)
    mean, std = np.float32(src.info.mean), np.float32(src.info.std)
    xs = []
    for r in range(g):
        x = np.pad(images[idx[r]], [(p, p)] * k + [(0, 0)])
        x = x[tuple(slice(o, o + s) for o, s in zip(offsets[r], images.shape[1:-1]))]
        if flips[r]:
            x = np.flip(x, axis=k - 1)
        xs.append((x.astype(np.float32) - mean) / std)
    xs = np.stack(xs)
    out = {"image": xs, "label": labels[idx].astype(np.int32)}
    if aug.mixup_alpha > 0:
        perm = rng.permutation(g)
        lam = rng.beta(aug.mixup_alpha, aug.mixup_alpha, size=g).astype(np.float32)
        out["image"] = np.stack([lam[r] * xs[r] + (1 - lam[r]) * xs[perm[r]] for r in range(g)])
        out["label2"] = labels[idx[perm]].astype(np.int32)
        out["lam"] = lam
    return out


@pytest.mark.parametrize("aug", [
    data_lib.AugmentConfig(random_crop_padding=2),
    data_lib.AugmentConfig(random_flip=True),
    data_lib.AugmentConfig(mixup_alpha=0.3),
    AUG_ALL,
])
@pytest.mark.parametrize("shape", [(6, 5, 3), (9, 1)])
def test_augmentation_matches_numpy_recomputation(aug, shape):
    src = _source(n=23, shape=shape)
    p = data_lib.make_pipeline(src, global_batch_size=8, seed=7, train=True, augment=aug)
    for step in range(5):  # Crosses the epoch boundary at example 23.
        got, want = next(p), _reference_batch(src, aug, 7, step, 8)
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-6, err_msg=k)


def test_mixup_label_and_lam_properties():
    src = _indexed_source(64)
    p = data_lib.make_pipeline(src, global_batch_size=64, seed=0, train=True,
                               augment=data_lib.AugmentConfig(mixup_alpha=1.0))
    b = next(p)
    assert ((b["lam"] >= 0) & (b["lam"] <= 1)).all() and b["lam"].std() > 0.1
    # label2 is a permutation of the batch's labels (partners drawn within the global batch).
    assert sorted(b["label2"].tolist()) == sorted(b["label"].tolist())


def test_crop_flip_reproducible_and_varied():
    src = _source(n=40)
    aug = data_lib.AugmentConfig(random_crop_padding=2, random_flip=True)
    mk = lambda: data_lib.make_pipeline(src, global_batch_size=40, seed=0, train=True,
                                        augment=aug, num_epochs=2)
    a, b = list(mk()), list(mk())
    _assert_batches_equal(a, b)
    # Same examples in both epochs (different order), augmented differently.
    order = [np.argsort(x["label"] * 1000 + np.arange(40)) for x in a]
    assert not np.array_equal(a[0]["image"][order[0]], a[1]["image"][order[1]])


def test_in_memory_and_streaming_paths_agree(digits):
    """Same batches from the in-memory fast path and the per-example (record) path."""
    mem = data_lib.load("sklearn_digits", "train", data_dir=digits)
    rec = data_lib.load("sklearn_digits", "train", data_dir=digits, in_memory=False)
    kw = dict(global_batch_size=32, seed=3, train=True, augment=AUG_ALL)
    a, pb = _take(data_lib.make_pipeline(mem, **kw), 5), data_lib.make_pipeline(rec, **kw)
    b = _take(pb, 5)
    pb.close()
    _assert_batches_equal(a, b)


def test_invalid_augment_configs(digits):
    src = _source()
    with pytest.raises(ValueError, match="random_crop_padding"):
        data_lib.AugmentConfig(random_crop_padding=-1)
    with pytest.raises(ValueError, match="need"):
        data_lib.make_pipeline(_source(shape=(9, 1)), global_batch_size=4, seed=0, train=True,
                               augment=data_lib.AugmentConfig(inception_crop=True))
    p = data_lib.make_pipeline(src, global_batch_size=4, seed=0, train=True)
    with pytest.raises(TypeError):
        len(p)


def test_resize_fixed_size_images():
    src = _source(n=12, shape=(8, 8, 3))
    p = data_lib.make_pipeline(src, global_batch_size=4, seed=0, train=False,
                               augment=data_lib.AugmentConfig(image_size=4))
    b = next(p)
    assert b["image"].shape == (4, 4, 4, 3)
    q = data_lib.make_pipeline(src, global_batch_size=4, seed=0, train=True,
                               augment=data_lib.AugmentConfig(inception_crop=True))
    assert next(q)["image"].shape == (4, 8, 8, 3)  # image_size defaults to the stored size.


def test_element_spec_matches_batches():
    p = data_lib.make_pipeline(_source(), global_batch_size=8, seed=0, train=True,
                               augment=AUG_ALL, process_count=2, process_index=1)
    b = next(p)
    spec = p.element_spec
    assert spec.keys() == b.keys()
    for k in b:
        assert spec[k].shape == b[k].shape and spec[k].dtype == b[k].dtype


def test_digits_pipeline_is_fast(digits):
    """The quickstart's budget: well under 1 ms per batch of 128 on 8x8 digits."""
    src = data_lib.load("sklearn_digits", "train", data_dir=digits)
    for aug in (data_lib.AugmentConfig(), data_lib.AugmentConfig(
            random_crop_padding=1, random_flip=True, mixup_alpha=0.2)):
        p = data_lib.make_pipeline(src, global_batch_size=128, seed=0, train=True, augment=aug)
        _take(p, 5)
        t = time.perf_counter()
        _take(p, 200)
        per_batch = (time.perf_counter() - t) / 200
        assert per_batch < 2e-3, per_batch  # Measured ~0.03 ms / ~0.2 ms; margin for CI noise.



def test_with_index_gives_each_rows_example():
    # Labels of _indexed_source are the example indices, so "index" must equal "label" on real
    # rows, in train (shuffled, several epochs, two processes) and eval (padded) pipelines.
    src = _indexed_source(13)
    for pi in range(2):
        p = data_lib.make_pipeline(src, global_batch_size=4, seed=3, train=True,
                                   process_index=pi, process_count=2, with_index=True)
        for b in _take(p, 9):
            np.testing.assert_array_equal(b["index"], b["label"])
            assert b["index"].dtype == np.int32
        assert p.element_spec.keys() == b.keys()
    ev = list(data_lib.make_pipeline(src, global_batch_size=4, seed=0, train=False,
                                     with_index=True))
    idx = np.concatenate([b["index"] for b in ev])
    mask = np.concatenate([b["mask"] for b in ev]).astype(bool)
    np.testing.assert_array_equal(idx[mask], np.arange(13))
    assert (idx[~mask] == 0).all()
    assert "index" not in next(data_lib.make_pipeline(src, global_batch_size=4, seed=0,
                                                      train=True))
