"""Generator configuration: every study control of the smart-watch data lives here.

Loaded from YAML with OmegaConf onto these dataclasses, so a misspelt key fails at
once with its name. See configs/data/smartwatch.yaml for a commented example.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..data.tasks import TASKS
from .tasks import OPTIONAL_CLAUSES
from .templates import QUESTION_TYPES
from .world import validate_constraints


@dataclass
class TaskConfig:
    """One task's sampler. `question_types` applies to vqa; `clause_prob`/`clauses` to caption and generation."""

    enabled: bool = True
    constraints: dict[str, Any] = field(default_factory=dict)  # {attribute: [allowed values]}
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    extra_turn_prob: float = 0.4
    max_extra_turns: int = 3
    clause_prob: float = 0.5
    clauses: list[str] = field(default_factory=lambda: list(OPTIONAL_CLAUSES))


@dataclass
class SplitConfig:
    """`images`: an int, or {task: int} when images are not shared between tasks."""

    images: Any = 0
    seed: int | None = None  # None: derived from the global seed and the split's name
    exclude_train_tuples: bool = False  # drop images whose full attribute tuple occurs in train


@dataclass
class TokenizerConfig:
    vocab_size: int = 1024
    path: str | None = None  # use this tokenizer.json instead of training one


@dataclass
class GeneratorConfig:
    seed: int = 0
    image_size: int = 64
    supersample: int = 4
    share_images: bool = True  # True: each image yields one sample of every task, as in the study
    samples_per_shard: int = 1000
    splits: dict[str, SplitConfig] = field(
        default_factory=lambda: {
            "train": SplitConfig(images=10000),
            "val": SplitConfig(images=200),
            "test": SplitConfig(images=500),
        }
    )
    tasks: dict[str, TaskConfig] = field(default_factory=lambda: {t: TaskConfig() for t in TASKS})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    constrained_splits: list[str] = field(default_factory=lambda: ["train"])  # where task constraints apply

    def split_seed(self, split: str) -> int:
        s = self.splits[split].seed
        return s if s is not None else int(zlib.crc32(f"{self.seed}/{split}".encode()))

    def images_for(self, split: str, task: str) -> int:
        images = self.splits[split].images
        return int(images.get(task, 0) if isinstance(images, dict) else images)

    def constraints_for(self, split: str, pool_task: str) -> dict:
        return self.tasks[pool_task].constraints if split in self.constrained_splits else {}

    def enabled_tasks(self) -> list[str]:
        return [t for t in TASKS if self.tasks[t].enabled]


def _one_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> GeneratorConfig:
    """Defaults <- YAML file <- overrides (dotted keys allowed), validated; errors are one line."""
    schema = OmegaConf.structured(GeneratorConfig)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        layers.append(OmegaConf.load(path))
    for key, value in (overrides or {}).items():
        if value is not None:
            layers.append(OmegaConf.from_dotlist([f"{key}={value}"]))
    try:
        merged = OmegaConf.merge(schema, *layers)
    except OmegaConfBaseException as exc:
        raise ValueError(f"bad data config{f' {path}' if path else ''}: {_one_line(exc)}") from None
    cfg: GeneratorConfig = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def validate(cfg: GeneratorConfig) -> None:
    unknown = set(cfg.tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {', '.join(TASKS)}")
    if "train" not in cfg.splits:
        raise ValueError("the data config needs a 'train' split")
    if not cfg.enabled_tasks():
        raise ValueError("every task is disabled; enable at least one of vqa, caption, generation")
    if cfg.image_size < 16 or cfg.supersample < 1 or cfg.samples_per_shard < 1:
        raise ValueError("image_size must be >= 16, supersample >= 1 and samples_per_shard >= 1")
    for name, task in cfg.tasks.items():
        task.constraints = validate_constraints(task.constraints, where=f"tasks.{name}.constraints")
        bad = [q for q in task.question_types if q not in QUESTION_TYPES]
        if bad or not task.question_types:
            raise ValueError(f"tasks.{name}.question_types: {bad or 'empty'}; known: {', '.join(QUESTION_TYPES)}")
        bad = [c for c in task.clauses if c not in OPTIONAL_CLAUSES]
        if bad:
            raise ValueError(f"tasks.{name}.clauses: unknown {bad}; known: {', '.join(OPTIONAL_CLAUSES)}")
        if not (0 <= task.extra_turn_prob <= 1 and 0 <= task.clause_prob <= 1 and task.max_extra_turns >= 0):
            raise ValueError(f"tasks.{name}: probabilities must lie in [0, 1] and max_extra_turns be >= 0")
    enabled = cfg.enabled_tasks()
    if cfg.share_images:
        distinct = {tuple(sorted(cfg.tasks[t].constraints.items())) for t in enabled}
        if len(distinct) > 1:
            raise ValueError("tasks have different constraints, so they cannot share images: set share_images: false")
    for split, sc in cfg.splits.items():
        if isinstance(sc.images, dict):
            if cfg.share_images:
                raise ValueError(f"splits.{split}.images is per task, which needs share_images: false")
            bad = set(sc.images) - set(TASKS)
            if bad:
                raise ValueError(f"splits.{split}.images: unknown task(s) {sorted(bad)}")
        elif not isinstance(sc.images, int) or sc.images < 0:
            raise ValueError(f"splits.{split}.images must be a count >= 0 or a {{task: count}} mapping")


def to_dict(cfg: GeneratorConfig) -> dict:
    """Plain, JSON-ready form of the config (for the manifest)."""

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(asdict(cfg))
