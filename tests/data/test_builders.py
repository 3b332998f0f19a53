"""Offline builders: sklearn_digits and mnist1d, prepared without network or TensorFlow."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from jaxkd.data import builders


def _read(builder, split):
    ds = builder.as_data_source(split=split)
    exs = [ds[i] for i in range(len(ds))]
    return (np.stack([e["image"] for e in exs]), np.array([e["label"] for e in exs]),
            np.array([e["index"] for e in exs]))


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("digits"))
    builders.prepare("sklearn_digits", d)
    return d


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXKD_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert builders.default_data_dir() == str(tmp_path / "a")
    monkeypatch.delenv("JAXKD_DATA_DIR")
    assert builders.default_data_dir() == str(tmp_path / "xdg" / "jaxkd" / "tensorflow_datasets")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert builders.default_data_dir() == os.path.expanduser("~/.cache/jaxkd/tensorflow_datasets")


def test_digits_prepared_into_env_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXKD_DATA_DIR", str(tmp_path))
    b = builders.prepare("sklearn_digits")
    assert b.is_prepared()
    assert os.path.isdir(tmp_path / "sklearn_digits" / "1.0.0")
    assert b.info.file_format.value == "array_record"


def test_digits_split_sizes_range_and_balance(digits_dir):
    b = builders.prepare("sklearn_digits", digits_dir)
    x_tr, y_tr, _ = _read(b, "train")
    x_te, y_te, _ = _read(b, "test")
    assert x_tr.shape == (1437, 8, 8, 1) and x_te.shape == (360, 8, 8, 1)
    assert x_tr.dtype == np.uint8
    assert x_tr.min() == 0 and x_tr.max() == 16 and x_te.max() <= 16
    for y, n in ((y_tr, 1437), (y_te, 360)):
        counts = np.bincount(y, minlength=10)
        assert counts.sum() == n
        assert counts.min() >= 0.9 * n / 10 and counts.max() <= 1.1 * n / 10


def test_digits_split_is_the_documented_one(digits_dir):
    # Independent computation of the documented split, straight from scikit-learn.
    d = load_digits()
    tr, te = train_test_split(np.arange(1797), test_size=360, stratify=d.target, random_state=0)
    b = builders.prepare("sklearn_digits", digits_dir)
    for split, idx in (("train", tr), ("test", te)):
        x, y, index = _read(b, split)
        np.testing.assert_array_equal(index, np.sort(idx))  # Stored in index order.
        np.testing.assert_array_equal(x[..., 0], d.images[index].astype(np.uint8))
        np.testing.assert_array_equal(x[..., 0], d.images[index])  # 0..16 as-is, no rescale.
        np.testing.assert_array_equal(y, d.target[index])
    assert not set(tr) & set(te)


def test_prepare_twice_reuses(digits_dir, monkeypatch):
    before = {f: os.path.getmtime(os.path.join(digits_dir, "sklearn_digits", "1.0.0", f))
              for f in os.listdir(os.path.join(digits_dir, "sklearn_digits", "1.0.0"))}

    def boom(*a, **k):
        raise AssertionError("rebuilt a prepared dataset")

    monkeypatch.setattr(builders.SklearnDigits, "download_and_prepare", boom)
    builders.prepare("sklearn_digits", digits_dir)
    after = {f: os.path.getmtime(os.path.join(digits_dir, "sklearn_digits", "1.0.0", f))
             for f in before}
    assert before == after


def test_concurrent_first_use(tmp_path):
    """Two processes preparing the same data set at once: both succeed, one build."""
    code = textwrap.dedent(f"""
        from jaxkd.data import builders
        gen = builders.SklearnDigits._split_generators
        def counted(self, dl_manager):
            print("BUILDING", flush=True)
            return gen(self, dl_manager)
        builders.SklearnDigits._split_generators = counted
        b = builders.prepare("sklearn_digits", {str(tmp_path)!r})
        print("N", len(b.as_data_source(split="train")))
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "N 1437" in out
    built = sum("BUILDING" in out for out, _ in outs)
    assert built == 1, [out for out, _ in outs]
    leftovers = [f for f in os.listdir(tmp_path / "sklearn_digits") if f.startswith("incomplete")]
    assert not leftovers


@pytest.fixture(scope="module")
def mnist1d_reference():
    """The package's own generation with its default args, independent of jaxkd."""
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()
    try:
        return make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)


def test_mnist1d(tmp_path, mnist1d_reference):
    np.random.seed(123)
    expect = np.random.random()
    np.random.seed(123)
    # mnist1d reseeds NumPy's global RNG; jaxkd restores it. (Python's `random` is restored
    # too, but tfds itself draws from it when naming its temporary directory.)
    b = builders.prepare("mnist1d", str(tmp_path))
    assert np.random.random() == expect

    x_tr, y_tr, i_tr = _read(b, "train")
    x_te, y_te, _ = _read(b, "test")
    assert x_tr.shape == (4000, 40, 1) and x_te.shape == (1000, 40, 1)
    assert x_tr.dtype == np.float32
    np.testing.assert_array_equal(i_tr, np.arange(4000))
    assert set(np.unique(y_tr)) == set(range(10))
    # Deterministic: equal to a separate generation by the package itself.
    np.testing.assert_array_equal(x_tr[..., 0], mnist1d_reference["x"].astype(np.float32))
    np.testing.assert_array_equal(x_te[..., 0], mnist1d_reference["x_test"].astype(np.float32))
    np.testing.assert_array_equal(y_tr, mnist1d_reference["y"])
    np.testing.assert_array_equal(y_te, mnist1d_reference["y_test"])


def test_unknown_offline_builder():
    with pytest.raises(ValueError, match="sklearn_digits"):
        builders.prepare("nope")
