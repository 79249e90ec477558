"""The shipped stage 0 (stage0/): each file loads and meets its bar on freshly rendered watches.

The bars are `lightning_vlm.smartwatch.stage0`'s: the reader per attribute group on clean renders,
each encoder's reconstructions read back by the reader as a share of the originals' score.
"""

import json
from pathlib import Path

import pytest
import torch

from lightning_vlm.smartwatch import stage0

ROOT = Path(__file__).parents[1]
FOLDER = ROOT / "stage0"
PROVENANCE = json.loads((FOLDER / stage0.PROVENANCE).read_text())
CHECK_IMAGES = 200  # fewer than `stage0 check`'s 500: the test's share of the CPU


def test_the_reader_and_every_cpu_scale_encoder_are_shipped():
    assert set(PROVENANCE) == {"reader", "vq", "ae", "semantic"}


@pytest.mark.parametrize("name", sorted(PROVENANCE))
def test_a_shipped_file_meets_its_bar_on_fresh_renders(name):
    measured = stage0.quality(name, stage0.shipped(name, FOLDER), stage0.shipped("reader", FOLDER), n=CHECK_IMAGES)
    assert stage0.failures(name, measured) == []


@pytest.mark.parametrize("name", sorted(PROVENANCE))
def test_a_shipped_file_says_where_it_came_from(name):
    entry = PROVENANCE[name]
    assert entry["command"] and entry["commit"] and entry["cpu"]


@pytest.mark.parametrize("name", sorted(PROVENANCE))
def test_a_shipped_file_holds_fp16_weights(name):
    weights = torch.load(stage0.shipped(name, FOLDER), weights_only=False)["state_dict"]
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}


def test_a_reader_below_its_bar_is_named():
    measured = {"scores": {**stage0.READER_BARS, "weather": 0.5}}
    assert stage0.failures("reader", measured) == ["reader weather: 0.500 < 0.99"]
