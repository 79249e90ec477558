"""VLMDataModule: streams WebDataset shards as a weighted mix of tasks, for any dataset.

The shards' manifest names the dataset plugin that wrote them (`data.dataset`); the module
asks it for the test scorer (`scorer()`) and, with `generation_plan`, for the rewrite of
generation replies. Reading is generic: `stream.ShardStream` (exact, equal shares per rank
and worker, bad samples skipped, mid-epoch resume).

Task weights: a preset runs one pass per epoch over the named tasks ("mixed": all
three, "understanding_only": vqa + caption, "generation_only": generation); a
{task: weight} mapping makes each task that share of `epoch_samples` instead. A list of
them is a schedule, one entry per epoch and the last repeated (e.g. generation only for
the first epoch, then mixed), in epochs of `epoch_samples` each: one fit, one optimiser.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from .collate import SequenceBuilder
from .dataset import DatasetPlugin, Scorer, dataset_of, load_dataset
from .epoch_plan import at_epoch
from .hf_tokenizer import load_tokenizer
from .shards import load_manifest
from .stream import EpochLoader, ResumableLoader, ShardStream
from .tasks import TASKS

PRESETS = {
    "mixed": ("vqa", "caption", "generation"),
    "understanding_only": ("vqa", "caption"),
    "generation_only": ("generation",),
}


def resolve_task_samples(weights: str | dict[str, float], pool_sizes: dict[str, int], epoch_samples: int | None) -> dict[str, int]:
    """Samples of each task per epoch (summed over all ranks)."""
    if isinstance(weights, str):
        if weights not in PRESETS:
            raise ValueError(f"unknown task_weights preset '{weights}'; use one of {', '.join(PRESETS)} or a {{task: weight}} mapping")
        chosen = {t: pool_sizes.get(t, 0) for t in PRESETS[weights]}
        if epoch_samples is None:
            return chosen
        weights = {t: float(n) for t, n in chosen.items()}
    unknown = set(weights) - set(TASKS)
    if unknown:
        raise ValueError(f"task_weights: unknown task(s) {sorted(unknown)}; known: {', '.join(TASKS)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("task_weights must be >= 0 and not all zero")
    missing = [t for t, w in weights.items() if w > 0 and pool_sizes.get(t, 0) == 0]
    if missing:
        raise ValueError(f"task_weights asks for {missing} but the data has no such samples")
    total = epoch_samples if epoch_samples is not None else sum(pool_sizes.get(t, 0) for t, w in weights.items() if w > 0)
    norm = sum(weights.values())
    return {t: int(round(total * w / norm)) for t, w in weights.items() if w > 0}


def resolve_task_plan(weights, pool_sizes: dict[str, int], epoch_samples: int | None,
                      batch_size: int | list[int] = 1) -> dict[str, int] | list[dict[str, int]]:
    """`resolve_task_samples` of one entry, or per epoch when task weights or batch sizes are per-epoch
    lists (the last entry repeats; needs `epoch_samples`).

    A list of batch sizes keeps every epoch at the same number of batches (Lightning reads a loader's
    length once): epoch_samples // the largest batch size, each of its own epoch's size.
    """
    weights_listed, sizes_listed = isinstance(weights, (list, tuple)), isinstance(batch_size, (list, tuple))
    if not weights_listed and not sizes_listed:
        return resolve_task_samples(weights, pool_sizes, epoch_samples)
    weights = list(weights) if weights_listed else [weights]
    sizes = list(batch_size) if sizes_listed else [batch_size]
    for name, entries in (("task_weights", weights), ("batch_size", sizes)):
        if not entries:
            raise ValueError(f"{name}: an empty list; give one entry per epoch (the last repeats)")
    if epoch_samples is None:
        name = "task_weights" if weights_listed else "batch_size"
        raise ValueError(f"{name} as a list (one entry per epoch) needs data.init_args.epoch_samples: every epoch is that long")
    batches = epoch_samples // max(sizes)
    return [resolve_task_samples(at_epoch(weights, e), pool_sizes, batches * at_epoch(sizes, e) if sizes_listed else epoch_samples)
            for e in range(max(len(weights), len(sizes)))]


class VLMDataModule(pl.LightningDataModule):
    """Mixed-task batches from the shards of any dataset (`lightning-vlm data ...`), and its test scorer.

    Args:
        data_dir: folder holding manifest.json, tokenizer.json and the shards.
        task_weights: "mixed", "understanding_only", "generation_only", or {task: weight}; or a list of
            these, one per epoch with the last repeated (a schedule; needs epoch_samples).
        batch_size: samples per batch and rank; or a list, one per epoch with the last repeated (needs
            epoch_samples; every epoch is then epoch_samples // the largest size batches, each of its own
            epoch's size). `eval_batch_size` for val/test (default: the largest).
        num_workers: DataLoader worker processes per rank.
        image_tokens_in / image_tokens_out: image slots per input / output image (the encoders' token counts).
        epoch_samples: samples per epoch over all ranks (default: one pass for presets).
        eval_tasks: tasks evaluated in val/test (default: every task the split has).
        max_length: longer samples are skipped and counted.
        length_buckets: k > 0 sorts each k x batch_size training samples by length and cuts them into k
            batches given in random order (less padding; batches then hold fewer tasks each). 0 = off.
        tokenizer: a tokenizer.json to use instead of the one beside the data, or "hf:/local/model-folder" for a
            pretrained LM's own tokenizer with the project's tokens added (`data.hf_tokenizer`).
        generation_plan: generation replies state what the image will show before it (the dataset's
            `plan_generation`, e.g. the smart watch's `plan_reply`), so the model fixes in text what the
            request leaves open (for deterministic image heads) and draws from a layout written in a fixed
            order. true: every attribute; a list: those attributes only (smart watch: weather,
            weather_position, battery_position, battery, time), a shorter plan.
        reader: a checkpoint of the dataset's image reader (the smart watch's attribute reader), which
            scores generated images at test time; None: no image scores.
        dataset: the dataset plugin (`lightning-vlm plugins datasets`, or "module:Class"); default: the one
            the shards' manifest names.
        seed: seeds the training order (which samples, in which order, each epoch). Default: the run's
            seed, i.e. the `PL_GLOBAL_SEED` that `seed_everything` (the CLI's `seed_everything:`) sets,
            read when the loaders are built; 0 when there is none. Every rank must use the same seed.
        chat_template: render conversations with the tokenizer's own chat template (an hf: tokenizer of an
            instruct model; `data.chat_format`) instead of the project's format; the model must set it too.
        decode_cached_images: decode the PNGs of training samples even when the model reads every one's
            tokens from a token cache (it then never looks at them; decoding is most of the loader's CPU,
            taken from the model's cores). For a callback that wants the training pixels.
    """

    def __init__(
        self,
        data_dir: str = "data/smartwatch",
        task_weights: str | dict[str, float] | list[str | dict[str, float]] = "mixed",
        batch_size: int | list[int] = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        image_tokens_in: int = 64,
        image_tokens_out: int = 64,
        epoch_samples: int | None = None,
        eval_tasks: list[str] | None = None,
        max_length: int | None = None,
        shuffle_buffer: int = 256,
        length_buckets: int = 0,
        seed: int | None = None,
        tokenizer: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        generation_plan: bool | list[str] = False,
        reader: str | None = None,
        dataset: str | None = None,
        chat_template: bool = False,
        decode_cached_images: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = str(data_dir)
        self.manifest = load_manifest(self.data_dir)
        self.dataset: DatasetPlugin = load_dataset(dataset or dataset_of(self.manifest))
        if generation_plan:  # fails now, not in a loader worker: no plan, or fields the dataset does not know
            self.dataset.plan_generation({}, self._plan_fields)
        self.tokenizer = load_tokenizer(tokenizer or Path(self.data_dir) / self.manifest["tokenizer"])  # tokenizer.json or hf:/folder
        self.builder = SequenceBuilder(self.tokenizer, image_tokens_in, image_tokens_out, chat_template)
        self.train_task_samples = resolve_task_plan(task_weights, self.pool_sizes(train_split), epoch_samples, batch_size)
        bad = set(eval_tasks or []) - set(TASKS)
        if bad:
            raise ValueError(f"eval_tasks: unknown task(s) {sorted(bad)}; known: {', '.join(TASKS)}")
        self.skipped_samples = 0
        self.cached_splits: set[str] = set()  # splits whose image tokens the model reads from its token caches

    @property
    def _plan_fields(self) -> list[str] | None:
        """`generation_plan`'s attributes; None when it is `true` (every attribute)."""
        plan = self.hparams.generation_plan
        return None if isinstance(plan, bool) else list(plan)

    @property
    def _largest_batch(self) -> int:
        sizes = self.hparams.batch_size
        return max(sizes) if isinstance(sizes, (list, tuple)) else sizes

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    def pool_sizes(self, split: str) -> dict[str, int]:
        return {t: e["samples"] for t, e in self.manifest["splits"].get(split, {}).items()}

    @property
    def data_seed(self) -> int:
        """The `seed` given, else the run's global seed (`PL_GLOBAL_SEED`), else 0."""
        if self.hparams.seed is not None:
            return int(self.hparams.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def images_cached(self, splits) -> None:
        """The model reads every image of `splits` from its token caches: their training PNGs need no decoding."""
        self.cached_splits = set(splits)

    def stream(self, split: str, train: bool, tasks: list[str] | None = None) -> ShardStream:
        """The split's sample stream; `tasks` replaces `eval_tasks` for an evaluation stream."""
        rank, world = self._rank_world()
        if train:
            task_samples = self.train_task_samples
        else:
            sizes = self.pool_sizes(split)
            wanted = tasks or self.hparams.eval_tasks or TASKS
            task_samples = {t: sizes[t] for t in TASKS if t in wanted and t in sizes}
        return ShardStream(
            self.data_dir, split, task_samples, self.builder,
            batch_size=self.hparams.batch_size if train else (self.hparams.eval_batch_size or self._largest_batch),
            train=train, rank=rank, world_size=world, num_workers=self.hparams.num_workers,
            seed=self.data_seed, shuffle_buffer=self.hparams.shuffle_buffer, max_length=self.hparams.max_length,
            length_buckets=self.hparams.length_buckets,
            decode_images=not train or self.hparams.decode_cached_images or split not in self.cached_splits,
            meta_transform=partial(self.dataset.plan_generation, fields=self._plan_fields) if self.hparams.generation_plan else None,
        )

    def scorer(self) -> Scorer:
        """The dataset's scorer of test outputs, with the `reader` checkpoint when one is given."""
        return self.dataset.scorer(self.hparams.reader)

    def _loader(self, split: str, train: bool, tasks: list[str] | None = None) -> DataLoader:
        if not self.manifest["splits"].get(split):
            raise ValueError(f"{self.data_dir} has no '{split}' split; it has {', '.join(self.manifest['splits'])}")
        w = self.hparams.num_workers
        stateful = {"batches_done_fn": self._batches_done} if train else {}
        return (ResumableLoader if train else EpochLoader)(
            self.stream(split, train, tasks),
            epoch_fn=lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            **stateful,
            num_workers=w,
            persistent_workers=False,  # workers must pick up the new epoch's plan
            prefetch_factor=2 if w > 0 else None,
        )

    def _batches_done(self) -> int:
        """Batches the fit loop has trained on in the current epoch (what a checkpoint records)."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, train=False)

    def eval_dataloader(self, split: str, tasks: list[str] | None = None) -> DataLoader:
        """What `test_dataloader` gives with `test_split: <split>` and `eval_tasks: <tasks>`: scoring inside a fit."""
        return self._loader(split, train=False, tasks=tasks)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        skipped = int(batch.get("skipped", 0))
        self.skipped_samples += skipped
        return batch
