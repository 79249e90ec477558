"""Writes the smart-watch dataset: WebDataset shards per split and task, manifest, tokenizer.

Work is cut into shard jobs run on every core. Each image's randomness comes from
its own seed (global seed, split, pool, index), so the bytes written do not depend
on the number of workers: the same config gives byte-identical shards.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ..data.shard_writer import manifest, write_manifest
from ..data.tokenizer import TextTokenizer, train_tokenizer
from .config import GeneratorConfig, to_dict
from .render import render_watch
from .tasks import caption_conversation, generation_conversation, vqa_conversation
from .world import ATTRIBUTE_NAMES, WatchAttributes, sample_attributes

SHARED_POOL = "shared"  # the image pool name when every task uses the same images


@dataclass(frozen=True)
class ShardJob:
    split: str
    pool: str  # "shared" or a task name
    index: int  # shard index within (split, task)
    start: int  # first image index
    stop: int
    tasks: tuple[str, ...]  # tasks written from these images


def _code(name: str) -> int:
    return zlib.crc32(name.encode())


def image_rng(cfg: GeneratorConfig, split: str, pool: str, index: int, *stream: str) -> np.random.Generator:
    """Independent generator for one image (and optionally one of its text streams)."""
    entropy = [cfg.split_seed(split), _code(pool), index, *(_code(s) for s in stream)]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def image_id(split: str, pool: str, index: int) -> str:
    return f"{split}-{index:07d}" if pool == SHARED_POOL else f"{split}-{pool}-{index:07d}"


def draw_image_attributes(cfg: GeneratorConfig, split: str, pool: str, index: int, exclude=frozenset()) -> WatchAttributes:
    constraints = cfg.constraints_for(split, cfg.enabled_tasks()[0] if pool == SHARED_POOL else pool)
    rng = image_rng(cfg, split, pool, index)
    attrs = sample_attributes(rng, constraints)
    while attrs.key() in exclude:  # test images that repeat a train tuple are redrawn
        attrs = sample_attributes(rng, constraints)
    return attrs


def conversation_for(cfg: GeneratorConfig, task: str, attrs: WatchAttributes, rng: np.random.Generator) -> dict:
    tc = cfg.tasks[task]
    if task == "vqa":
        return vqa_conversation(attrs, rng, tc.question_types, tc.extra_turn_prob, tc.max_extra_turns)
    if task == "caption":
        return caption_conversation(attrs, rng, tc.clause_prob, tc.clauses)
    return generation_conversation(attrs, rng, tc.clause_prob, tc.clauses)


def plan_jobs(cfg: GeneratorConfig) -> list[ShardJob]:
    jobs = []
    n = cfg.samples_per_shard
    for split in cfg.splits:
        pools = [(SHARED_POOL, tuple(cfg.enabled_tasks()))] if cfg.share_images else [(t, (t,)) for t in cfg.enabled_tasks()]
        for pool, tasks in pools:
            total = cfg.images_for(split, tasks[0])
            for k, start in enumerate(range(0, total, n)):
                jobs.append(ShardJob(split, pool, k, start, min(start + n, total), tasks))
    return jobs


def shard_name(split: str, task: str, index: int) -> str:
    return f"{split}/{task}-{index:06d}.tar"


_EXCLUDE: frozenset = frozenset()  # train tuples, set once per worker process


def _init_worker(exclude: frozenset) -> None:
    global _EXCLUDE
    _EXCLUDE = exclude


def run_job(cfg: GeneratorConfig, out: Path, job: ShardJob) -> dict:
    """Renders one job's images and writes one tar per task; returns counts, histograms and texts."""
    exclude = _EXCLUDE if cfg.splits[job.split].exclude_train_tuples and job.split != "train" else frozenset()
    records = {task: [] for task in job.tasks}
    for i in range(job.start, job.stop):
        attrs = draw_image_attributes(cfg, job.split, job.pool, i, exclude)
        buf = io.BytesIO()
        render_watch(attrs, cfg.image_size, cfg.supersample).save(buf, format="PNG")
        png = buf.getvalue()
        for task in job.tasks:
            meta = conversation_for(cfg, task, attrs, image_rng(cfg, job.split, job.pool, i, task))
            meta.update(attributes=attrs.to_dict(), image_id=image_id(job.split, job.pool, i))
            records[task].append((f"{meta['image_id']}_{task}", png, meta))
    results = {}
    for task, items in records.items():
        name = shard_name(job.split, task, job.index)
        path = out / name
        tmp = path.with_suffix(".tar.tmp")
        with wds.TarWriter(str(tmp), encoder=False, mtime=0) as sink:
            for key, png, meta in items:
                sink.write({"__key__": key, "png": png, "json": json.dumps(meta, sort_keys=True).encode()})
        os.replace(tmp, path)  # never leave a half-written shard under the final name
        results[name] = {
            "split": job.split,
            "task": task,
            "samples": len(items),
            "histograms": _histogram([m for _, _, m in items]),
            "texts": [t["text"] for _, _, m in items for t in m["conversations"]] if job.split == "train" else [],
        }
    return results


def _histogram(metas: list[dict]) -> dict[str, Counter]:
    h: dict[str, Counter] = {name: Counter() for name in ATTRIBUTE_NAMES}
    h["turns"], h["question_types"], h["mentioned"] = Counter(), Counter(), Counter()
    for m in metas:
        for name in ATTRIBUTE_NAMES:
            h[name][str(m["attributes"][name])] += 1
        h["question_types"].update(m.get("question_types", []))
        h["mentioned"].update(m.get("mentioned", []))
        h["turns"][str(len(m["conversations"]) // 2)] += 1
    return h


def _job_runner(args):
    return run_job(*args)


def write_dataset(cfg: GeneratorConfig, out: str | Path, workers: int | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Writes the whole dataset under `out` and returns the manifest."""
    out = Path(out)
    if (out / "manifest.json").exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset; pass --overwrite to replace it")
        for split_dir in [p for p in out.iterdir() if p.is_dir()]:
            shutil.rmtree(split_dir)
    for split in cfg.splits:
        (out / split).mkdir(parents=True, exist_ok=True)
    exclude = frozenset()
    if any(sc.exclude_train_tuples for name, sc in cfg.splits.items() if name != "train"):
        exclude = _train_tuples(cfg)
    jobs = plan_jobs(cfg)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    total = sum((j.stop - j.start) * len(j.tasks) for j in jobs)
    bar = tqdm(total=total, unit="sample", desc=f"writing {out}", disable=not progress)
    results: dict[str, dict] = {}
    args = [(cfg, out, job) for job in jobs]
    if workers == 1:
        _init_worker(exclude)
        stream = map(_job_runner, args)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(exclude,))
        stream = pool.imap(_job_runner, args)
    try:
        for res in stream:
            results.update(res)
            bar.update(sum(r["samples"] for r in res.values()))
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    texts = [t for name in sorted(results) for t in results[name]["texts"]]
    _write_tokenizer(cfg, out, texts)
    content = manifest("smartwatch", cfg.image_size, results, seed=cfg.seed, share_images=cfg.share_images, config=to_dict(cfg))
    write_manifest(out, content)
    return content


def _train_tuples(cfg: GeneratorConfig) -> frozenset:
    pools = [SHARED_POOL] if cfg.share_images else cfg.enabled_tasks()
    keys = set()
    for pool in pools:
        n = cfg.images_for("train", cfg.enabled_tasks()[0] if pool == SHARED_POOL else pool)
        keys.update(draw_image_attributes(cfg, "train", pool, i).key() for i in range(n))
    return frozenset(keys)


def _write_tokenizer(cfg: GeneratorConfig, out: Path, texts: list[str]) -> None:
    target = out / "tokenizer.json"
    if cfg.tokenizer.path:
        TextTokenizer.from_file(cfg.tokenizer.path)  # fails early on a bad file
        shutil.copyfile(cfg.tokenizer.path, target)
        return
    if not texts:
        raise ValueError("the train split has no text to train a tokenizer on; give tokenizer.path or train images")
    train_tokenizer(texts, cfg.tokenizer.vocab_size).save(str(target))
