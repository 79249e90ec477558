import pytest

from lightning_vlm.smartwatch.config import load_config
from lightning_vlm.smartwatch.writer import write_dataset

TINY = {
    "splits.train.images": 12,
    "splits.val.images": 5,
    "splits.test.images": 5,
    "samples_per_shard": 4,  # 3 train shards per task
    "image_size": 32,
    "supersample": 2,
}


def tiny_config(**extra):
    return load_config(overrides={**TINY, **extra})


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small dataset shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("smartwatch")
    write_dataset(tiny_config(), out, workers=1, progress=False)
    return out
