"""Registry and loading: offline data sets, mocked standard tfds data sets, clear errors."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxkd import data as data_lib
from jaxkd.data import builders, datasets


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("jaxkd_data"))
    builders.prepare("sklearn_digits", d)
    return d


STANDARD = [n for n, s in datasets.DATASETS.items() if not s.offline]


def test_registry_names():
    assert set(data_lib.DATASETS) == {
        "sklearn_digits", "mnist1d", "mnist", "cifar10", "cifar100", "imagenet2012"}
    for name, spec in data_lib.DATASETS.items():
        assert spec.name == name
        assert len(spec.mean) == len(spec.std) == spec.shape[-1]
        assert all(s > 0 for s in spec.std)
        assert spec.eval_split in spec.splits


@pytest.mark.parametrize("name", STANDARD)
def test_registry_matches_tfds_features(name, tmp_path):
    """Hard-coded shape / classes agree with tfds' own feature spec (no data needed)."""
    info = tfds.builder(name, data_dir=str(tmp_path)).info
    spec = data_lib.DATASETS[name]
    assert tuple(info.features["image"].shape) == spec.shape
    assert info.features["label"].num_classes == spec.num_classes
    assert np.dtype(info.features["image"].np_dtype) == np.dtype(spec.dtype)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        data_lib.load("cifar11", "train")
    for name in data_lib.DATASETS:
        assert name in str(e.value)
    assert "cifar11" in str(e.value)


def test_unknown_split_lists_valid_splits(data_dir):
    with pytest.raises(ValueError, match=r"'validation'.*\['train', 'test'\]"):
        data_lib.load("sklearn_digits", "validation", data_dir=data_dir)
    with pytest.raises(ValueError, match=r"\['train', 'validation'\]"):
        data_lib.load("imagenet2012", "test")


def test_not_prepared_error(tmp_path):
    with pytest.raises(data_lib.DatasetNotPreparedError) as e:
        data_lib.load("cifar10", "train", data_dir=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg
    assert "tfds build cifar10 --file_format=array_record --data_dir=DIR" in msg
    assert "--config.data.data_dir=DIR" in msg
    assert isinstance(e.value, ValueError)


def test_not_prepared_error_uses_tfds_data_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(data_lib.DatasetNotPreparedError, match=str(tmp_path / "tfds")):
        data_lib.load("mnist", "test")
    with pytest.raises(data_lib.DatasetNotPreparedError, match="manual_dir"):
        data_lib.load("imagenet2012", "validation")


def test_digits_load_in_memory(data_dir):
    src = data_lib.load("sklearn_digits", "train", data_dir=data_dir)
    assert isinstance(src, data_lib.ArraySource) and src.in_memory
    images, labels = src.arrays()
    assert images.shape == (1437, 8, 8, 1) and images.dtype == np.uint8
    assert labels.shape == (1437,) and labels.dtype == np.int32
    assert len(src) == 1437
    ex = src[5]
    np.testing.assert_array_equal(ex["image"], images[5])
    assert ex["label"] == labels[5] and isinstance(ex["label"], int)
    info = src.info
    assert (info.name, info.split, info.num_classes, info.shape, info.num_examples) == (
        "sklearn_digits", "train", 10, (8, 8, 1), 1437)
    # The documented constants are the train statistics.
    x = images.astype(np.float64)
    np.testing.assert_allclose(info.mean, [x.mean()], rtol=1e-5)
    np.testing.assert_allclose(info.std, [x.std()], rtol=1e-5)
    json.dumps(info.__dict__)  # Plain values.


def test_digits_streaming_matches_in_memory(data_dir):
    a = data_lib.load("sklearn_digits", "test", data_dir=data_dir)
    b = data_lib.load("sklearn_digits", "test", data_dir=data_dir, in_memory=False)
    assert isinstance(b, data_lib.TfdsSource) and not b.in_memory
    with pytest.raises(ValueError, match="not held in memory"):
        b.arrays()
    for i in (0, 17, 359, -1):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
        assert a[i]["label"] == b[i]["label"]


def test_mnist1d_load_constants(tmp_path):
    src = data_lib.load("mnist1d", "train", data_dir=str(tmp_path))
    images, labels = src.arrays()
    assert images.shape == (4000, 40, 1) and images.dtype == np.float32
    np.testing.assert_allclose(src.info.mean, [images.astype(np.float64).mean()], atol=1e-5)
    np.testing.assert_allclose(src.info.std, [images.astype(np.float64).std()], rtol=1e-5)
    assert len(data_lib.load("mnist1d", "test", data_dir=str(tmp_path))) == 1000


def test_split_slicing(data_dir):
    src = data_lib.load("sklearn_digits", "train[:100]+test[:10]", data_dir=data_dir)
    assert len(src) == 110


@pytest.mark.parametrize("name,shape,classes", [
    ("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)])
def test_mock_standard_datasets_through_pipeline(name, shape, classes, tmp_path):
    """tfds.testing.mock_data (no TensorFlow): load -> make_pipeline, shapes and dtypes."""
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        src = data_lib.load(name, "train", data_dir=str(tmp_path))
        test = data_lib.load(name, "test", data_dir=str(tmp_path))
    assert src.in_memory and len(src) == 20 and src.info.shape == shape
    images, labels = src.arrays()
    assert images.dtype == np.uint8 and labels.min() >= 0 and labels.max() < classes
    aug = data_lib.AugmentConfig(random_crop_padding=4, random_flip=True, mixup_alpha=0.2)
    p = data_lib.make_pipeline(src, global_batch_size=8, seed=0, train=True, augment=aug)
    b = next(p)
    assert b["image"].shape == (8, *shape) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["label2"].dtype == np.int32
    assert b["lam"].dtype == np.float32 and b["mask"].dtype == np.float32
    assert np.isfinite(b["image"]).all()
    e = list(data_lib.make_pipeline(test, global_batch_size=8, seed=0, train=False))
    assert len(e) == 3 and e[-1]["mask"].tolist() == [1] * 4 + [0] * 4


def test_mock_imagenet_variable_size(tmp_path):
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        src = data_lib.load("imagenet2012", "validation", data_dir=str(tmp_path))
        assert not src.in_memory and src.info.shape == (None, None, 3)
        sizes = {src[i]["image"].shape for i in range(len(src))}
        assert len(sizes) > 1  # The mock really varies the size.
        with pytest.raises(ValueError, match="image_size"):
            data_lib.make_pipeline(src, global_batch_size=4, seed=0, train=False)
        ev = data_lib.make_pipeline(src, global_batch_size=8, seed=0, train=False,
                                    augment=data_lib.AugmentConfig(image_size=16))
        batches = list(ev)
        assert [b["image"].shape for b in batches] == [(8, 16, 16, 3)] * 2
        assert batches[1]["mask"].sum() == 4
        aug = data_lib.AugmentConfig(image_size=16, inception_crop=True, random_flip=True,
                                     mixup_alpha=0.2)
        tr = data_lib.make_pipeline(src, global_batch_size=8, seed=1, train=True, augment=aug)
        b1 = [next(tr) for _ in range(3)]
        tr2 = data_lib.make_pipeline(src, global_batch_size=8, seed=1, train=True, augment=aug,
                                     prefetch=0, num_threads=1)
        b2 = [next(tr2) for _ in range(3)]
        tr.close()
        assert b1[0]["image"].shape == (8, 16, 16, 3)
        for x, y in zip(b1, b2):  # Threads and prefetch do not change the result.
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        spec = tr.element_spec
        assert spec["image"].shape == (8, 16, 16, 3) and "lam" in spec
