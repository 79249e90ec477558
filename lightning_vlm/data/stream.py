"""ShardStream: one rank's exact share of a split's shards, read as collated batches.

DDP safety: each (rank, worker) slot reads an exact, equal slice of every task, worked
out from (seed, epoch) alone (see `epoch_plan`). Batches are formed inside the worker,
so every rank yields exactly `len(dataloader)` batches even when there are fewer shards
than ranks x workers; evaluation covers each sample once, padding the last slices with
copies flagged `is_padding`. Bad samples are skipped with a warning, counted in
`batch["skipped"]`, and replaced by a repeat of a good one so the counts stay equal.

Mid-epoch resume: the training loader is stateful for Lightning (state_dict /
load_state_dict), saving (epoch, batches done). A run restarted from a checkpoint taken
mid-epoch rebuilds that epoch's plan and drops the batches already trained on, so it
sees exactly the remaining ones (with several workers, in an order that may swap
neighbouring batches) instead of replaying the epoch's start.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .collate import SequenceBuilder, collate
from .epoch_plan import at_epoch, slot_quota, slot_segments
from .shards import decode_sample, iter_raw_samples, load_manifest, task_shards

log = logging.getLogger("lightning_vlm.data")
# Our __len__ is exact per rank (batches are planned per worker), so Lightning's caution does not apply.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


class ShardStream(IterableDataset):
    """Collated batches of one split for one (rank, worker) slot; see the module docstring.

    `task_samples` is {task: samples per epoch}, or a list of them, one per epoch (the last
    repeats): a schedule, e.g. generation only first, then mixed. `batch_size` is an int, or a
    list with one entry per epoch in the same way. Every epoch of a training schedule yields the
    same number of batches, its shortest epoch's, as Lightning reads the loader's length once.
    `meta_transform` rewrites each decoded sample's meta before it is tokenised (e.g. the
    dataset's generation plan); it must be picklable for worker processes. `decode_images=False` leaves
    the PNGs undecoded (the batch's images are None): for a model that reads every image's tokens from
    a token cache.
    """

    def __init__(
        self,
        data_dir: str,
        split: str,
        task_samples: dict[str, int] | list[dict[str, int]],
        builder: SequenceBuilder,
        batch_size: int | list[int],
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 256,
        max_length: int | None = None,
        image_size: int | None = None,
        meta_transform: Callable[[dict], dict] | None = None,
        length_buckets: int = 0,
        decode_images: bool = True,
    ):
        manifest = load_manifest(data_dir)
        plan = task_samples if isinstance(task_samples, list) else [task_samples]
        self.shards = {t: task_shards(manifest, data_dir, split, t) for epoch in plan for t in epoch}
        self.task_plan = [{t: n for t, n in epoch.items() if n > 0 and self.shards[t]} for epoch in plan]
        self.batch_plan = list(batch_size) if isinstance(batch_size, (list, tuple)) else [batch_size]
        if not self.batch_plan or min(self.batch_plan) < 1:
            raise ValueError(f"batch_size must be >= 1, or a non-empty list of such (one per epoch); got {batch_size}")
        self.split, self.builder, self.train = split, builder, train
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.seed, self.shuffle_buffer, self.max_length = seed, shuffle_buffer, max_length
        self.image_size = image_size if image_size is not None else manifest.get("image_size")
        self.meta_transform = meta_transform
        self.length_buckets = length_buckets if train else 0
        self.decode_images = decode_images
        self.epoch, self.skip_batches = 0, 0
        if len(self) == 0:
            raise ValueError(
                f"split '{split}' gives no batch per rank: {min(sum(e.values()) for e in self.task_plan)} samples over "
                f"{self.num_slots} rank x worker slots with batch size {batch_size}; use fewer workers or a smaller batch"
            )

    @property
    def num_slots(self) -> int:
        return self.world_size * max(1, self.num_workers)

    @property
    def task_samples(self) -> dict[str, int]:
        """{task: samples} of the current epoch."""
        return at_epoch(self.task_plan, self.epoch)

    @property
    def batch_size(self) -> int:
        """Samples per batch in the current epoch."""
        return at_epoch(self.batch_plan, self.epoch)

    def read_before(self, task: str) -> int:
        """Samples of `task` in the epochs before the current one: where this epoch goes on in its stream."""
        return sum(at_epoch(self.task_plan, e).get(task, 0) for e in range(self.epoch))

    def quotas(self, epoch_tasks: dict[str, int] | None = None) -> dict[str, int]:
        tasks = self.task_samples if epoch_tasks is None else epoch_tasks
        return {t: slot_quota(sum(n for _, n in self.shards[t]), n, self.num_slots, self.train) for t, n in tasks.items()}

    def batches_per_slot(self) -> int:
        if not self.train:
            return -(-sum(self.quotas().values()) // self.batch_size)
        epochs = range(max(len(self.task_plan), len(self.batch_plan)))  # after both schedules, epochs repeat
        return min(sum(self.quotas(at_epoch(self.task_plan, e)).values()) // at_epoch(self.batch_plan, e) for e in epochs)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (all its workers together)."""
        return self.batches_per_slot() * max(1, self.num_workers)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The epoch to plan, and how many of this rank's first batches to drop (a mid-epoch resume)."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def _batches_to_skip(self) -> int:
        """This worker's share of the rank's first `skip_batches`: the DataLoader takes batches from
        its workers in turn, and in training every worker yields the same number."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return len(range(worker, self.skip_batches, workers))

    def _slot(self) -> int:
        info = get_worker_info()
        return self.rank * max(1, self.num_workers) + (info.id if info is not None else 0)

    def _task_stream(self, task: str, slot: int, counter: dict) -> Iterator[dict]:
        """Exactly `quota` decoded samples of `task` for this slot, whatever was unreadable."""
        quota = self.quotas()[task]
        segments = slot_segments(self.shards[task], self.task_samples[task], self.epoch, slot, self.num_slots, self.seed, task, self.train,
                                 read_before=self.read_before(task))
        produced, last_good = 0, None

        def on_error(msg: str) -> None:
            counter["skipped"] += 1
            log.warning("skipped bad data in split %s: %s", self.split, msg)

        for seg in segments:
            for pos, raw in enumerate(iter_raw_samples(seg.path, on_error)):
                if pos < seg.start:
                    continue
                if pos >= seg.stop:
                    break
                sample = self._prepare(raw, on_error)
                if sample is None:
                    continue
                sample["is_padding"] = seg.padding
                last_good = sample
                produced += 1
                yield sample
        if produced < quota:
            if last_good is None:
                raise RuntimeError(f"no readable {task} sample in split {self.split} for slot {slot}; check the shards under {Path(self.shards[task][0][0]).parent}")
            for _ in range(quota - produced):  # keep counts equal across ranks
                yield {**last_good, "is_padding": not self.train or last_good["is_padding"]}

    def _prepare(self, raw: dict, on_error) -> dict | None:
        try:
            sample = decode_sample(raw, self.image_size, with_image=self.decode_images)
            if self.meta_transform is not None:
                sample["meta"] = self.meta_transform(sample["meta"])
            sample.update(self.builder.encode(sample["meta"]))
        except (ValueError, KeyError, TypeError) as exn:
            on_error(str(exn))
            return None
        if self.max_length is not None and len(sample["input_ids"]) > self.max_length:
            on_error(f"sample {sample['key']}: {len(sample['input_ids'])} tokens > max_length {self.max_length}")
            return None
        return sample

    def _samples(self, slot: int, counter: dict) -> Iterator[dict]:
        """Tasks interleaved in a random order that keeps each task's exact count, then shuffled locally."""
        quotas = self.quotas()
        rng = np.random.default_rng([self.seed, self.epoch, slot, 7])
        order = np.repeat(np.arange(len(quotas)), list(quotas.values()))
        if self.train:
            rng.shuffle(order)
        streams = [self._task_stream(t, slot, counter) for t in quotas]
        buffer: list[dict] = []
        for i in order:
            buffer.append(next(streams[i]))
            if not self.train:
                yield buffer.pop()
            elif len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer)))) if self.train else buffer.pop(0)

    def __iter__(self) -> Iterator[dict]:
        slot = self._slot()
        counter = {"skipped": 0}
        emitted, limit = 0, self.batches_per_slot()
        skip = self._batches_to_skip()
        if skip >= limit:
            return
        for batch in self._batch_samples(self._samples(slot, counter), slot):
            if emitted >= skip:
                yield self._collate(batch, counter)
            emitted += 1
            if emitted == limit:
                return

    def _batch_samples(self, samples: Iterator[dict], slot: int) -> Iterator[list[dict]]:
        """Lists of `batch_size` samples in stream order; the last, shorter one in evaluation only.

        With `length_buckets` k > 0 (training), each k x batch_size samples in a row are sorted by
        length and cut into k batches of similar lengths, given in a random order: less padding
        per batch, the same samples per epoch.
        """
        group = self.batch_size * max(1, self.length_buckets)
        rng = np.random.default_rng([self.seed, self.epoch, slot, 11])
        pool: list[dict] = []
        for sample in samples:
            pool.append(sample)
            if len(pool) == group:
                yield from self._buckets(pool, rng)
                pool = []
        full = len(pool) - len(pool) % self.batch_size
        yield from self._buckets(pool[:full], rng)
        if not self.train and full < len(pool):
            yield pool[full:]

    def _buckets(self, pool: list[dict], rng: np.random.Generator) -> Iterator[list[dict]]:
        if not self.length_buckets:
            yield from (pool[i: i + self.batch_size] for i in range(0, len(pool), self.batch_size))
            return
        pool = sorted(pool, key=lambda s: len(s["input_ids"]))
        batches = [pool[i: i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        for i in rng.permutation(len(batches)):
            yield batches[i]

    def _collate(self, batch: list[dict], counter: dict) -> dict:
        out = collate(batch, self.builder.pad)
        out["skipped"] = counter["skipped"]
        counter["skipped"] = 0
        return out


def already_collated(batch: dict) -> dict:
    """Batches are built in the worker; skip torch's per-element conversion of the metadata."""
    return batch


class EpochLoader(DataLoader):
    """Hands the trainer's epoch to the dataset before workers copy it (Lightning's set_epoch only reaches samplers)."""

    def __init__(self, dataset: ShardStream, epoch_fn, **kwargs):
        super().__init__(dataset, batch_size=None, collate_fn=already_collated, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self):
        epoch = self._epoch_fn()
        self.dataset.set_epoch(epoch, self._skip(epoch))
        return super().__iter__()

    def _skip(self, epoch: int) -> int:
        return 0


class ResumableLoader(EpochLoader):
    """The training loader, checkpointed by Lightning: see "Mid-epoch resume" in the module docstring."""

    def __init__(self, dataset: ShardStream, epoch_fn, batches_done_fn, **kwargs):
        super().__init__(dataset, epoch_fn, **kwargs)
        self._batches_done_fn = batches_done_fn
        self._resume: dict | None = None

    def state_dict(self) -> dict:
        return {"epoch": self._epoch_fn(), "batches_done": self._batches_done_fn()}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)

    def _skip(self, epoch: int) -> int:
        resume, self._resume = self._resume, None  # only the first epoch after a restore
        return int(resume["batches_done"]) if resume and resume["epoch"] == epoch else 0
