"""Which samples each (rank, worker) reads in an epoch: exact, equal, and shard-count free.

Every process computes the same plan from (seed, epoch) alone, so no communication is
needed. Per task, the shards (in an order shuffled per pass) are laid end to end into
one stream of samples; an epoch takes the next `epoch_samples` positions of it
(wrapping into a new pass when a task is oversampled) and cuts them into W = ranks x
workers contiguous, equal slices. A slot therefore reads whole shards plus at most
two partial ones, however many shards there are: 3 shards over 4 slots is fine.

Training slices all have exactly floor(n / W) samples (the < W left over are dropped
that epoch), so every rank gets the same number of batches and DDP never waits on a
rank that ran dry. Evaluation slices cover every sample exactly once and are topped
up to ceil(n / W) with copies flagged `is_padding`, which metrics ignore.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def at_epoch(schedule: list, epoch: int):
    """The entry of a per-epoch schedule (task weights, batch sizes) for `epoch`: its last entry repeats."""
    return schedule[min(epoch, len(schedule) - 1)]


@dataclass(frozen=True)
class Segment:
    """Read samples [start, stop) of the tar at `path` (positions within that tar)."""

    path: str
    start: int
    stop: int
    padding: bool = False


def pass_order(n_shards: int, seed: int, task: str, pass_index: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(n_shards))
    rng = np.random.default_rng([seed, pass_index, sum(map(ord, task))])
    return [int(i) for i in rng.permutation(n_shards)]


def stream_segments(shards: list[tuple[str, int]], begin: int, end: int, seed: int, task: str, shuffle: bool) -> list[Segment]:
    """Segments covering positions [begin, end) of the endless stream of passes over `shards`."""
    total = sum(n for _, n in shards)
    segments: list[Segment] = []
    pos = begin
    while pos < end:
        p, offset = divmod(pos, total)
        cursor = 0
        for i in pass_order(len(shards), seed, task, p, shuffle):
            path, n = shards[i]
            lo, hi = cursor, cursor + n
            cursor = hi
            if hi <= offset or n == 0:
                continue
            take_from = max(lo, offset) - lo
            take_to = min(hi, offset + (end - pos)) - lo
            segments.append(Segment(path, take_from, take_to))
            pos += take_to - take_from
            offset = lo + take_to
            if pos >= end:
                break
    return segments


def slot_segments(
    shards: list[tuple[str, int]],
    epoch_samples: int,
    epoch: int,
    slot: int,
    num_slots: int,
    seed: int,
    task: str,
    train: bool,
    read_before: int | None = None,
) -> list[Segment]:
    """The segments slot `slot` of `num_slots` reads for one task in one epoch.

    read_before: the task's samples in all earlier epochs (default epoch x epoch_samples; a plan whose
    task shares change from epoch to epoch passes its own sum), where this epoch goes on in the stream.
    """
    total = sum(n for _, n in shards)
    if total == 0 or epoch_samples == 0:
        return []
    if train:
        q = epoch_samples // num_slots
        begin = (epoch * epoch_samples if read_before is None else read_before) + slot * q
        return stream_segments(shards, begin, begin + q, seed, task, shuffle=True)
    # evaluation: one ordered pass, every sample once, padded to equal slices
    lo, hi = slot * total // num_slots, (slot + 1) * total // num_slots
    quota = -(-total // num_slots)
    segments = stream_segments(shards, lo, hi, seed, task, shuffle=False)
    if hi - lo < quota:
        pad_at = lo % total
        segments += [Segment(s.path, s.start, s.stop, padding=True) for s in stream_segments(shards, pad_at, pad_at + quota - (hi - lo), seed, task, shuffle=False)]
    return segments


def slot_quota(total: int, epoch_samples: int, num_slots: int, train: bool) -> int:
    """Samples one slot yields for a task: the same number on every slot."""
    if total == 0:
        return 0
    return epoch_samples // num_slots if train else -(-total // num_slots)
