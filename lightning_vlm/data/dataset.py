"""The dataset interface: what the generic machinery asks of one dataset, and how a dataset is found.

Shards, sequence building, the DataModule, the model and the evaluator know only the tasks
of `data.tasks` and the shard format of `data.shards`. Everything a dataset adds (its
metrics, its `lightning-vlm data` command, an optional rewrite of samples) sits behind a
`DatasetPlugin`, registered in the entry-point group `lightning_vlm.datasets` (built-ins:
`smartwatch`, `llava`) or named as "module:Class". The shards' manifest says which dataset
wrote them (`dataset_of`).
"""

from __future__ import annotations

import importlib

from torch import Tensor, nn

from .. import registry


class Scorer(nn.Module):
    """Scores one dataset's test outputs; built per test run and moved to the model's device.

    `metric_names` lists every name `score_text` / `score_images` may return, in a fixed
    order (every rank syncs the same metrics in the same order under DDP), without the
    "test/" prefix: e.g. "vqa/weather", "gen/weather". Each returned (name, value) is one
    observation of a mean. An optional `turns(meta) -> list[int]` picks which assistant
    turns of an understanding sample are answered (default: every VQA question, the one caption).
    """

    metric_names: tuple[str, ...] = ()
    chance: dict[str, float] = {}  # what a model that learnt nothing scores, per metric name (printed beside it)

    def score_text(self, meta: dict, text: str, turn: int) -> list[tuple[str, float]]:
        """Scores one generated answer to the `turn`-th question of a vqa sample, or a caption."""
        return []

    def score_images(self, images: Tensor, truth: Tensor, metas: list[dict]) -> list[tuple[str, float]]:
        """Scores generated images [B, 3, H, W] in [0, 1] against the true ones; may accumulate dataset-level state."""
        return []

    def compute(self) -> dict[str, float]:
        """Dataset-level metrics over the whole test set (synced under DDP); {} when there are none."""
        return {}


class DatasetPlugin:
    """One dataset: its name, its scorer and, optionally, its `lightning-vlm data <name>` command.

    Plugins are built without arguments; the DataModule builds one per run.
    """

    name: str = ""

    def scorer(self, reader: str | None = None) -> Scorer:
        """The scorer of test outputs; `reader` is a checkpoint of the dataset's image reader, if it has one.

        Default: a scorer that scores nothing (test then reports the evaluator's own metrics only);
        `open_answers.OpenAnswerScorer` suits datasets of open-ended answers."""
        return Scorer()

    def plan_generation(self, meta: dict, fields: list[str] | None = None) -> dict:
        """A generation sample's meta whose reply states what the image will show before it (DataModule
        `generation_plan`): the `fields` named (the dataset's own names), or everything when None. Only
        datasets that can write such a plan override it; they check `fields` when `meta` is empty."""
        raise ValueError(f"dataset '{self.name or type(self).__name__}' has no generation plan; set data.init_args.generation_plan: false")

    def add_data_command(self, subparsers) -> None:
        """Registers `lightning-vlm data <command>` subcommands (argparse); each sets `run(args) -> exit code`."""


def dataset_of(manifest: dict) -> str:
    """The dataset that wrote a manifest: its `dataset` entry; for older manifests its `generator`
    entry, else "smartwatch" when it carries the smart-watch generator config, else "llava"."""
    name = manifest.get("dataset") or manifest.get("generator")
    if name:
        return name
    return "smartwatch" if "supersample" in (manifest.get("config") or {}) else "llava"


def load_dataset(name: str) -> DatasetPlugin:
    """The plugin registered as `name` (`lightning-vlm plugins datasets`), or the class at "module:Class"."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exn:
            raise ValueError(f"dataset class {name} cannot be imported ({exn})") from None
    else:
        cls = registry.load("datasets", name)
    plugin = cls()
    if not isinstance(plugin, DatasetPlugin):
        raise ValueError(f"dataset {name} is a {type(plugin).__name__}, not a lightning_vlm.data.dataset.DatasetPlugin")
    return plugin
