import os

import pytest
import torch

from lightning_vlm.smartwatch.config import load_config
from lightning_vlm.smartwatch.writer import write_dataset

# `make test` runs the tests in one pytest-xdist worker per core. Each worker, and each CLI process it
# starts (they inherit OMP_NUM_THREADS), gets its share of the cores: two 2-thread torch processes on
# 2 cores spin against each other and run many times slower than one.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# `make test` hands whole modules to the workers (--dist loadscope: a module's fixtures are built once),
# in collection order (--no-loadscope-reorder). The slowest modules (pytest --durations on the 2-core
# AVX2 EPYC) go first, so that the last ones to start are short and the two workers finish together;
# every other module follows in its usual order.
SLOWEST_FIRST = ("test_cli_runs.py", "test_cli_configs.py", "test_strategies.py", "test_study.py", "test_vlm.py",
                 "test_errors.py", "test_configs.py", "test_ddp_data.py", "test_stage0.py", "test_eval_lockstep.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its own order


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


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, tiny_data):
    """Tiny vq / semantic / ae checkpoints for 32 px images (a 4 x 4 token grid), for the model tests."""
    from tiny_encoders import export_tiny_encoders

    return export_tiny_encoders(tmp_path_factory.mktemp("enc"), image_size=32)


@pytest.fixture(scope="module")
def overlay(tmp_path_factory, tiny_data):
    """The CLI tests' config layered over a shipped one (tests/cli_helpers.py): tiny data, encoders, reader and backbone."""
    from cli_helpers import overlay_writer

    return overlay_writer(tmp_path_factory.mktemp("cli"), tiny_data)
