"""Old names keep working (`lightning_vlm.compat`): module paths import, moved class paths point at real classes."""

import importlib
import sys

import pytest

from lightning_vlm.compat import FORMER_MODULES, MOVED
from lightning_vlm.models import sampling, text_head


def fresh_import(name: str):
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_a_former_module_path_still_imports():
    with pytest.warns(DeprecationWarning):
        heads = fresh_import("lightning_vlm.models.heads")
    assert heads.draw is sampling.draw


def test_a_former_module_holds_every_successors_names():
    with pytest.warns(DeprecationWarning):
        heads = fresh_import("lightning_vlm.models.heads")
    assert heads.lm_head is text_head.lm_head


def test_the_warning_names_the_new_module():
    with pytest.warns(DeprecationWarning, match="lightning_vlm.models.sampling"):
        fresh_import("lightning_vlm.models.heads")


@pytest.mark.parametrize("successor", sorted({s for names in FORMER_MODULES.values() for s in names}))
def test_every_successor_module_exists(successor):
    assert importlib.import_module(successor).__name__ == successor


@pytest.mark.parametrize("new", sorted(v for v in MOVED.values() if " " not in v))
def test_every_moved_class_path_names_a_class(new):
    module, _, name = new.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), type)
