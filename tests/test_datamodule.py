"""The DataModule: equal batches per rank, exact coverage, masks, and tolerance of bad data."""

import shutil

import lightning.pytorch as pl
import pytest
import torch
import webdataset as wds
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_vlm.data.collate import TASK_INDEX
from lightning_vlm.data.datamodule import VLMDataModule, resolve_task_plan, resolve_task_samples
from lightning_vlm.data.dataset import dataset_of
from lightning_vlm.data.open_answers import OpenAnswerScorer
from lightning_vlm.data.shards import iter_raw_samples, load_manifest
from lightning_vlm.data.stream import ShardStream
from lightning_vlm.data.tasks import TASKS
from lightning_vlm.smartwatch.caption import score_caption
from lightning_vlm.smartwatch.dataset import SmartWatchDataset
from lightning_vlm.smartwatch.scorer import SmartWatchScorer
from lightning_vlm.smartwatch.scoring import QUESTION_TYPES


def rank_batches(data_dir, rank, world, workers, train=True, batch_size=3, split="train", epoch=0, tasks=None):
    dm = VLMDataModule(str(data_dir), num_workers=workers, image_tokens_in=4, image_tokens_out=5)
    sizes = dm.pool_sizes(split)
    ds = ShardStream(str(data_dir), split, tasks or sizes, dm.builder, batch_size, train, rank=rank, world_size=world, num_workers=workers)
    ds.set_epoch(epoch)
    batches = list(DataLoader(ds, batch_size=None, num_workers=workers))
    return ds, batches


def keys_of(batches, real_only=True):
    return [k for b in batches for k, pad in zip(b["keys"], b["is_padding"].tolist()) if not (real_only and pad)]


def test_two_ranks_two_workers_three_shards_get_equal_batches(tiny_data):
    assert len(load_manifest(tiny_data)["splits"]["train"]["vqa"]["shards"]) == 3
    results = [rank_batches(tiny_data, rank, 2, 2) for rank in range(2)]
    counts = [len(b) for _, b in results]
    assert counts[0] == counts[1] == len(results[0][0]) > 0
    keys = keys_of(results[0][1]) + keys_of(results[1][1])
    assert len(keys) == len(set(keys)) == 36  # 3 tasks x 12 samples, each exactly once


def test_each_epoch_reshuffles(tiny_data):
    _, e0 = rank_batches(tiny_data, 0, 2, 2, epoch=0)
    _, e1 = rank_batches(tiny_data, 0, 2, 2, epoch=1)
    assert keys_of(e0) != keys_of(e1)


def test_evaluation_sees_every_sample_once_and_pads_equally(tiny_data):
    results = [rank_batches(tiny_data, rank, 2, 2, train=False, split="val") for rank in range(2)]
    assert len(results[0][1]) == len(results[1][1]) == len(results[0][0])
    real = keys_of(results[0][1]) + keys_of(results[1][1])
    assert len(real) == len(set(real)) == 15  # 5 images x 3 tasks
    padded = [k for _, b in results for k in keys_of(b, real_only=False)]
    assert len(padded) == 4 * 2 * 3  # ceil(5 / 4 slots) per task per slot


def test_more_slots_than_samples_still_balanced(tiny_data):
    # 8 slots for 5 val samples per task: some slots hold only padding
    results = [rank_batches(tiny_data, rank, 4, 2, train=False, split="val", batch_size=4) for rank in range(4)]
    assert len({len(b) for _, b in results}) == 1
    real = [k for _, b in results for k in keys_of(b)]
    assert len(real) == len(set(real)) == 15


def test_masks_follow_the_sequence_format(tiny_data):
    dm = VLMDataModule(str(tiny_data), batch_size=6, num_workers=0, image_tokens_in=4, image_tokens_out=5)
    batch = next(iter(dm.train_dataloader()))
    for i, meta in enumerate(batch["meta"]):
        n_in, n_out = int(batch["image_in_mask"][i].sum()), int(batch["image_out_mask"][i].sum())
        if meta["task"] == "generation":
            assert (n_in, n_out) == (0, 5)
        else:
            assert (n_in, n_out) == (4, 0)
        assert int(batch["task"][i]) == TASK_INDEX[meta["task"]]
        target = dm.tokenizer.decode(batch["input_ids"][i][batch["loss_mask"][i]].tolist())
        assert target == "".join(t["text"] for t in meta["conversations"] if t["role"] == "assistant")
        assert not (batch["loss_mask"][i] & ~batch["attention_mask"][i]).any()


def test_generation_plan_states_every_attribute_before_the_image(tiny_data):
    """The plan's clauses read back (with the caption scorer) as the image's own attributes; other tasks are untouched."""
    kwargs = dict(batch_size=6, num_workers=0, image_tokens_in=4, image_tokens_out=5)
    plain = next(iter(VLMDataModule(str(tiny_data), **kwargs).train_dataloader()))
    planner = VLMDataModule(str(tiny_data), generation_plan=True, **kwargs)
    planned = next(iter(planner.train_dataloader()))
    assert plain["keys"] == planned["keys"]
    tasks = [m["task"] for m in planned["meta"]]
    assert "generation" in tasks and set(tasks) != {"generation"}
    for i, (before, after) in enumerate(zip(plain["meta"], planned["meta"])):
        if after["task"] != "generation":
            unpadded = [b["input_ids"][i][b["attention_mask"][i]] for b in (plain, planned)]
            assert after == before and torch.equal(*unpadded)
            continue
        assert after["conversations"][0] == before["conversations"][0]  # the request is unchanged
        reply = after["conversations"][1]["text"]
        assert reply.startswith(before["conversations"][1]["text"])  # the acknowledgement, then the plan
        scores = score_caption(reply, after["attributes"], list(QUESTION_TYPES))
        assert scores == {**{f"correct/{q}": 1.0 for q in QUESTION_TYPES}, "recall": 1.0}
        target = planned["input_ids"][i][planned["loss_mask"][i]].tolist()
        assert reply in planner.tokenizer.decode(target)  # trained on, before <boi>
        assert int(planned["image_out_mask"][i].sum()) == 5


def test_a_generation_plan_of_named_attributes_states_those_only_in_the_fixed_order(tiny_data):
    kwargs = dict(batch_size=6, num_workers=0, image_tokens_in=4, image_tokens_out=5)
    planner = VLMDataModule(str(tiny_data), generation_plan=["battery_position", "weather_position"], **kwargs)
    meta = next(m for m in next(iter(planner.train_dataloader()))["meta"] if m["task"] == "generation")
    attrs = meta["attributes"]
    expected = f"The weather icon sits in the {attrs['weather_position']} corner. The battery gauge sits in the {attrs['battery_position']} corner."
    assert meta["conversations"][1]["text"].endswith(" " + expected)


def test_a_generation_plan_naming_an_unknown_attribute_fails_when_the_data_is_built(tiny_data):
    with pytest.raises(ValueError, match="generation_plan: unknown or no attribute.*'colour'.*choose from weather"):
        VLMDataModule(str(tiny_data), num_workers=0, generation_plan=["colour"])


def test_the_manifest_names_the_dataset_plugin_and_its_scorer(tiny_data, tmp_path):
    dm = VLMDataModule(str(tiny_data), num_workers=0)
    assert isinstance(dm.dataset, SmartWatchDataset) and load_manifest(tiny_data)["dataset"] == "smartwatch"
    scorer = dm.scorer()
    assert isinstance(scorer, SmartWatchScorer) and scorer.reader is None  # no reader given: no image scores
    assert isinstance(VLMDataModule(str(tiny_data), num_workers=0, dataset="llava").scorer(), OpenAnswerScorer)  # the data's name overridden
    with pytest.raises(ValueError, match="unknown dataset 'nope'; known datasets: .*llava, smartwatch"):
        VLMDataModule(str(tiny_data), num_workers=0, dataset="nope")
    with pytest.raises(ValueError, match="dataset class no_such_module:Toy cannot be imported"):
        VLMDataModule(str(tiny_data), num_workers=0, dataset="no_such_module:Toy")
    with pytest.raises(ValueError, match="'llava' has no generation plan"):
        VLMDataModule(str(tiny_data), num_workers=0, dataset="llava", generation_plan=True)


def test_manifests_written_before_dataset_plugins_still_name_their_dataset(tiny_data):
    legacy = {k: v for k, v in load_manifest(tiny_data).items() if k != "dataset"}
    assert dataset_of(legacy) == "smartwatch"  # its generator config
    assert dataset_of({**legacy, "generator": "llava"}) == "llava"
    assert dataset_of({"format_version": 1, "config": {"json": {}}, "splits": {}}) == "llava"


def test_presets_and_weights():
    sizes = {"vqa": 100, "caption": 100, "generation": 50}
    assert resolve_task_samples("mixed", sizes, None) == sizes
    assert resolve_task_samples("understanding_only", sizes, None) == {"vqa": 100, "caption": 100}
    assert resolve_task_samples({"vqa": 3, "generation": 1}, sizes, 400) == {"vqa": 300, "generation": 100}
    with pytest.raises(ValueError, match="unknown task_weights preset 'mixd'"):
        resolve_task_samples("mixd", sizes, None)


def test_a_list_of_task_weights_is_one_entry_per_epoch():
    sizes = {"vqa": 100, "caption": 100, "generation": 50}
    plan = resolve_task_plan(["generation_only", {"vqa": 1, "generation": 1}], sizes, 40)
    assert plan == [{"generation": 40}, {"vqa": 20, "generation": 20}]


def test_a_list_of_task_weights_needs_epoch_samples():
    with pytest.raises(ValueError, match="needs data.init_args.epoch_samples"):
        resolve_task_plan(["generation_only", "mixed"], {"vqa": 10, "generation": 10}, None)


def schedule_epochs(data_dir, epochs=3):
    """Keys and tasks of each epoch of a generation-first schedule (one rank, no workers)."""
    dm = VLMDataModule(str(data_dir), num_workers=0, batch_size=3, epoch_samples=6, image_tokens_in=4, image_tokens_out=5,
                       task_weights=["generation_only", {"vqa": 1, "generation": 1}])
    ds = dm.stream("train", train=True)
    out = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        batches = list(ds)
        out.append(([k for b in batches for k in b["keys"]], {TASKS[i] for b in batches for i in b["task"].tolist()}))
    return ds, out


def test_a_schedule_gives_each_epoch_its_own_tasks(tiny_data):
    _, epochs = schedule_epochs(tiny_data)
    assert [tasks for _, tasks in epochs] == [{"generation"}, {"vqa", "generation"}, {"vqa", "generation"}]


def test_a_schedule_keeps_the_epoch_length(tiny_data):
    ds, epochs = schedule_epochs(tiny_data)
    assert [len(keys) for keys, _ in epochs] == [len(ds) * 3] * 3


def test_a_schedule_goes_on_in_each_tasks_stream(tiny_data):
    """The 3 generation samples of epoch 1 follow the 6 of epoch 0 in the stream: none repeated."""
    _, epochs = schedule_epochs(tiny_data, epochs=2)
    generation = [k for keys, _ in epochs for k in keys if k.endswith("generation")]
    assert len(generation) == len(set(generation)) == 9


def test_a_list_of_batch_sizes_keeps_the_batch_count_per_epoch():
    """Every epoch is 12 // 3 = 4 batches, each of its own epoch's size."""
    sizes = {"vqa": 100, "caption": 100, "generation": 50}
    plan = resolve_task_plan(["generation_only", {"vqa": 1, "generation": 1}], sizes, 12, batch_size=[2, 3])
    assert plan == [{"generation": 8}, {"vqa": 6, "generation": 6}]


def test_a_list_of_batch_sizes_needs_epoch_samples():
    with pytest.raises(ValueError, match="batch_size as a list .* needs data.init_args.epoch_samples"):
        resolve_task_plan("mixed", {"vqa": 10, "generation": 10}, None, batch_size=[2, 3])


def test_each_epoch_batches_at_its_own_size(tiny_data):
    dm = VLMDataModule(str(tiny_data), num_workers=0, batch_size=[2, 3], epoch_samples=6, image_tokens_in=4, image_tokens_out=5,
                       task_weights=["generation_only", {"vqa": 1, "generation": 1}])
    ds = dm.stream("train", train=True)
    sizes = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        sizes.append([len(b["keys"]) for b in ds])
    assert sizes == [[2, 2], [3, 3], [3, 3]]


def test_evaluation_batches_at_the_largest_training_size(tiny_data):
    dm = VLMDataModule(str(tiny_data), num_workers=0, batch_size=[2, 3], epoch_samples=6, image_tokens_in=4, image_tokens_out=5)
    assert dm.stream("val", train=False).batch_size == 3


def test_missing_data_dir_fails_with_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="lightning-vlm data smartwatch"):
        VLMDataModule(str(tmp_path / "nowhere"))


def damage(data_dir):
    """Corrupt one PNG, break one JSON and truncate one tar of the train vqa shards."""
    shards = sorted((data_dir / "train").glob("vqa-*.tar"))
    raws = list(iter_raw_samples(str(shards[0]), on_error=pytest.fail))
    raws[0]["png"] = b"\x89PNG not really"
    raws[1]["json"] = b"{broken"
    with wds.TarWriter(str(shards[0]), encoder=False) as sink:
        for raw in raws:
            sink.write({k: v for k, v in raw.items() if k in ("__key__", "png", "json")})
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])


def test_bad_samples_are_skipped_counted_and_replaced(tiny_data, tmp_path, caplog):
    data = tmp_path / "damaged"
    shutil.copytree(tiny_data, data)
    damage(data)
    results = [rank_batches(data, rank, 2, 2) for rank in range(2)]
    assert len(results[0][1]) == len(results[1][1]) == len(results[0][0])  # still balanced
    skipped = sum(b["skipped"] for _, batches in results for b in batches)
    assert skipped >= 3  # png, json and the truncated tail (grouped samples may fail twice)
    dm = VLMDataModule(str(data), batch_size=3, num_workers=0)
    with caplog.at_level("WARNING", logger="lightning_vlm.data"):
        for batch in dm.train_dataloader():
            dm.on_before_batch_transfer(batch, 0)
    assert dm.skipped_samples >= 3
    assert any("corrupt png" in r.message for r in caplog.records)
    assert any("malformed json" in r.message for r in caplog.records)


class KeyRecorder(pl.LightningModule):
    """Trains one scalar and records the sample keys of every training batch, in order."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch["keys"]))
        return (self.w - 1) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_keys(data_dir, workers, root, max_steps=-1, ckpt_path=None, save_every=None):
    dm = VLMDataModule(str(data_dir), batch_size=3, num_workers=workers, image_tokens_in=4, image_tokens_out=5)
    saver = [ModelCheckpoint(dirpath=root, save_last=True, save_top_k=-1, every_n_train_steps=save_every)] if save_every else []
    trainer = pl.Trainer(max_epochs=2, max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=bool(saver), callbacks=saver, default_root_dir=root)
    model = KeyRecorder()
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_sees_exactly_the_remaining_batches(tiny_data, tmp_path, workers, recwarn):
    full = fit_keys(tiny_data, workers, tmp_path / "full")
    per_epoch = len(full) // 2  # 12 batches of 3
    stop = per_epoch + 5  # 5 batches into the second epoch
    first = fit_keys(tiny_data, workers, tmp_path / "cut", max_steps=stop, save_every=stop)
    rest = fit_keys(tiny_data, workers, tmp_path / "cut", ckpt_path=str(tmp_path / "cut/last.ckpt"))
    assert first == full[:stop]
    assert len(rest) == len(full) - stop
    if workers == 0:
        assert rest == full[stop:]
    else:  # workers take turns: a resumed pair of neighbours may come in the other order
        assert sorted(rest) == sorted(full[stop:])
        assert set(map(tuple, rest[2:])) == set(map(tuple, full[stop + 2:]))
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


def test_training_order_follows_the_global_seed(tiny_data, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test, whatever seed_everything sets

    def order(global_seed, seed=None):
        pl.seed_everything(global_seed, verbose=False)
        dm = VLMDataModule(str(tiny_data), batch_size=3, num_workers=0, image_tokens_in=4, image_tokens_out=5, seed=seed)
        return [k for b in dm.train_dataloader() for k in b["keys"]]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1, seed=5) == order(2, seed=5)  # an explicit seed wins over the run's
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert VLMDataModule(str(tiny_data), num_workers=0).data_seed == 0  # no run seed at all


def test_length_buckets_keep_the_epoch_and_cut_padding(tiny_data):
    """Same samples and batch count per epoch; batches of similar lengths, so less padding."""
    def epoch(buckets):
        dm = VLMDataModule(str(tiny_data), batch_size=4, num_workers=0, image_tokens_in=16, image_tokens_out=16,
                                  length_buckets=buckets, seed=0)
        return list(dm.train_dataloader())

    plain, bucketed = epoch(0), epoch(3)
    keys = lambda batches: sorted(k for b in batches for k in b["keys"])  # noqa: E731
    assert len(plain) == len(bucketed) and keys(plain) == keys(bucketed)
    padding = lambda batches: sum((~b["attention_mask"]).sum().item() for b in batches)  # noqa: E731
    assert padding(bucketed) < 0.7 * padding(plain)
    assert keys(epoch(3)) == keys(bucketed) and [b["keys"] for b in epoch(3)] == [b["keys"] for b in bucketed]
