"""Data: offline tfds builders, the dataset registry, and the deterministic input pipeline.

    src = jaxkd.data.load("sklearn_digits", "train")          # prepared on first use, offline
    p = jaxkd.data.make_pipeline(src, global_batch_size=128, seed=0, train=True,
                                 augment=jaxkd.data.AugmentConfig(random_flip=True))
    batch = next(p)          # {"image": f32 [128, 8, 8, 1], "label": i32 [128], "mask": f32 [128]}
    state = p.get_state()    # JSON; p.set_state(state) resumes bit-identically
"""

from jaxkd.data.builders import default_data_dir, prepare
from jaxkd.data.datasets import (
    DATASETS,
    ArraySource,
    DatasetInfo,
    DatasetNotPreparedError,
    DatasetSpec,
    Source,
    TfdsSource,
    load,
)
from jaxkd.data.pipeline import AugmentConfig, Pipeline, make_pipeline

__all__ = [
    "DATASETS",
    "ArraySource",
    "AugmentConfig",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "Pipeline",
    "Source",
    "TfdsSource",
    "default_data_dir",
    "load",
    "make_pipeline",
    "prepare",
]
