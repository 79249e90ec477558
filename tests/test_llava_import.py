"""`lightning-vlm data import-llava`: streaming rows, skipped rows, idempotence, and training on the result."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from lightning_vlm.data.cli import data_main, summary
from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.data.llava import import_llava
from lightning_vlm.data.llava_rows import iter_json_rows
from lightning_vlm.data.shards import load_manifest

SIZE = 32
OPTIONS = dict(image_size=SIZE, val_fraction=0.25, test_fraction=0.25, max_chars=1000, samples_per_shard=4, vocab_size=400)
EXPECTED_SKIPS = {"malformed_json": 2, "malformed_row": 2, "missing_image": 2, "unreadable_image": 1,
                  "no_assistant_turn": 1, "too_long": 1}


def turn(who, text):
    return {"from": who, "value": text}


def make_inputs(folder: Path) -> dict:
    images = folder / "images"
    (images / "sub").mkdir(parents=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "gray", "pink", "cyan", "brown", "navy"]
    names = []
    for i, colour in enumerate(colours):
        name = f"sub/img{i:02d}.jpg" if i % 3 == 0 else f"img{i:02d}.png"
        mode, size = [("RGB", (40, 24)), ("RGBA", (18, 50)), ("L", (16, 16))][i % 3]
        Image.new(mode, size, colour if mode != "L" else 90).save(images / name)
        names.append(name)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rows = []
    for i, (name, colour) in enumerate(zip(names, colours)):
        conv = [turn("human", "<image>\nWhat colour is the square?"), turn("gpt", f"It is {colour}.")]
        if i % 2:
            conv += [turn("human", "Is it bright?"), turn("gpt", "Yes." if i % 4 == 1 else "No.")]
        rows.append({"id": f"good-{i}", "image": name, "conversations": conv})
    rows.append({"id": "text-only", "conversations": [turn("human", "What is two plus two?"), turn("gpt", "Four.")]})
    rows.append({"id": "missing", "image": "nope.jpg", "conversations": [turn("human", "<image>\nHi"), turn("gpt", "Hello")]})
    rows.append({"id": "corrupt", "image": "corrupt.jpg", "conversations": [turn("human", "<image>\nHi"), turn("gpt", "Hello")]})
    rows.append({"id": "no-gpt", "image": names[0], "conversations": [turn("human", "<image>\nAnyone there?")]})
    rows.append({"id": "no-conversations", "image": names[1]})
    rows.append({"id": "long", "image": names[2], "conversations": [turn("human", "<image>\nTalk."), turn("gpt", "blah " * 400)]})
    rows.append("just a string")
    elements = [json.dumps(r, indent=2) for r in rows]
    broken = '{"id": "broken", "image": "img01.png", "conversations": [{"from": "human" "value": "no colon"}]}'
    elements.insert(15, broken)
    assert len(elements) == 20
    (folder / "llava.json").write_text("[\n" + ",\n".join(elements) + "\n]\n")
    captions = [{"image": names[0], "caption": "a red rectangle"}, {"image": names[4], "caption": "a <image> purple square"},
                {"image": names[7], "caption": "a gray tall shape"}, {"image": "gone.png", "caption": "nothing"}]
    lines = [json.dumps(c) for c in captions] + ["", "{not json"]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return {"json_path": folder / "llava.json", "images": images, "captions": folder / "captions.jsonl"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("llava-in"))


@pytest.fixture(scope="module")
def imported(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("llava-out") / "data"
    import_llava(out=out, progress=False, **inputs, **OPTIONS)
    return out


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def samples(folder: Path) -> list[tuple[str, bytes, dict]]:
    """(split, png, meta) of every sample under `folder`."""
    out = []
    for path in sorted(folder.glob("*/*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".json"):
                key = name[: -len(".json")]
                out.append((path.parent.name, members[key + ".png"], json.loads(members[name])))
    return out


def test_streaming_reader_matches_json_load_at_any_chunk_size(tmp_path):
    rows = [{"id": i, "text": "a \"quoted\" ] } [ , text\\", "n": [1.5, None, True]} for i in range(7)] + [12345, "s", None]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows, indent=1))
    for chunk in (3, 17, 1 << 20):
        assert [v for _, v, _ in iter_json_rows(path, chunk_chars=chunk)] == rows
    path.write_text('[{"a": 1}, {"a" 2}, {"a": [3]}, tru, {"a": 4}]')
    got = [(v, e is not None) for _, v, e in iter_json_rows(path, chunk_chars=4)]
    assert got == [({"a": 1}, False), (None, True), ({"a": [3]}, False), (None, True), ({"a": 4}, False)]
    path.write_text('[{"a": 1}, {"a": [2, ')  # truncated: the rows before it still come through
    assert [(v, e is not None) for _, v, e in iter_json_rows(path, chunk_chars=5)] == [({"a": 1}, False), (None, True)]
    path.write_text('{"a": 1}\n\n{bad\n{"a": 2}\n')  # JSON Lines
    assert [(i, v) for i, v, _ in iter_json_rows(path)] == [(0, {"a": 1}), (1, None), (2, {"a": 2})]


def test_import_writes_shards_and_counts_each_skip(imported):
    m = load_manifest(imported)
    assert m["dataset"] == "llava" and m["image_size"] == SIZE
    assert m["skipped"] == EXPECTED_SKIPS
    assert m["rows"] == {"caption": 5, "llava": 20}
    counts = {t: sum(m["splits"][s][t]["samples"] for s in m["splits"] if t in m["splits"][s]) for t in ("vqa", "generation")}
    assert counts == {"vqa": 13, "generation": 3}
    assert {"train", "val", "test"} <= set(m["splits"])
    for split in m["splits"].values():
        for entry in split.values():
            assert entry["samples"] == sum(s["samples"] for s in entry["shards"])
            assert all((imported / s["name"]).is_file() and s["samples"] <= 4 for s in entry["shards"])
    assert not list(imported.rglob("*.tmp")) and (imported / "tokenizer.json").is_file()
    found = samples(imported)
    assert len(found) == 16
    by_source = {meta["source_id"]: (png, meta) for _, png, meta in found}
    png, meta = by_source["good-1"]
    assert meta["task"] == "vqa" and [t["role"] for t in meta["conversations"]] == ["user", "assistant"] * 2
    assert meta["conversations"][0]["text"] == "<image>\nWhat colour is the square?"  # the placeholder stays where it stood
    img = Image.open(io.BytesIO(png))
    assert img.size == (SIZE, SIZE) and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((SIZE // 2, SIZE // 2)) != (255, 255, 255)  # tall image: white sides
    assert by_source["text-only"][1]["text_only"] and by_source["text-only"][1]["image_id"] == "<blank>"
    gen = [meta for _, _, meta in found if meta["task"] == "generation"]
    assert all(g["conversations"][0]["role"] == "user" and "<image>" not in g["conversations"][0]["text"] for g in gen)
    assert any("purple square" in g["conversations"][0]["text"] for g in gen)
    splits = {}
    for split, _, meta in found:
        splits.setdefault(meta["image_id"], set()).add(split)
    assert all(len(s) == 1 for s in splits.values())  # every row of one image lands in one split


def test_rerun_is_byte_identical_and_independent_of_workers(inputs, imported, tmp_path):
    before = digests(imported)
    import_llava(out=imported, progress=False, **inputs, **OPTIONS)
    assert digests(imported) == before
    other = tmp_path / "two-workers"
    import_llava(out=other, workers=2, progress=False, **inputs, **OPTIONS)
    assert digests(other) == before


def test_refuses_to_replace_a_different_dataset(inputs, tmp_path):
    out = tmp_path / "data"
    import_llava(out=out, progress=False, **inputs, **OPTIONS)
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_llava(out=out, progress=False, **inputs, **{**OPTIONS, "image_size": 16})
    import_llava(out=out, progress=False, overwrite=True, **inputs, **{**OPTIONS, "image_size": 16})
    assert load_manifest(out)["image_size"] == 16
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        import_llava(out=foreign, progress=False, **inputs, **OPTIONS)


def test_cli_imports_and_summarises(inputs, tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["import-llava", "--json", str(inputs["json_path"]), "--images", str(inputs["images"]), "--out", str(out),
            "--captions", str(inputs["captions"]), "--max-chars", "1000", "--vocab-size", "300"]
    args = [*base, "--image-size", "16"]
    assert data_main(args) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "vqa" in printed and "skipped rows: 9" in printed
    assert data_main(args) == 0  # same inputs: re-importing in place is allowed
    assert "generation" in summary(out)
    assert data_main([*base, "--image-size", "24"]) == 2  # a different dataset without --overwrite: one-line error
    assert "--overwrite" in capsys.readouterr().err


def test_datamodule_builds_training_batches(imported):
    dm = VLMDataModule(str(imported), batch_size=4, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    batch = next(iter(dm.train_dataloader()))
    b, length = batch["input_ids"].shape
    assert b == 4 and batch["images"].shape == (4, 3, SIZE, SIZE)
    for i, meta in enumerate(batch["meta"]):
        gen = meta["task"] == "generation"
        assert int(batch["image_in_mask"][i].sum()) == (0 if gen else 16)
        assert int(batch["image_out_mask"][i].sum()) == (16 if gen else 0)
        assert batch["loss_mask"][i].any()
        assert not (batch["loss_mask"][i] & (batch["image_in_mask"][i] | batch["image_out_mask"][i])).any()
        assert not (batch["loss_mask"][i] & ~batch["attention_mask"][i]).any()
    assert batch["skipped"] == 0


def test_a_tiny_model_fits_on_imported_data(imported, tmp_path):
    """Fit, validation (with the TensorBoard grid and answers) and test run on imported rows: the manifest
    names the llava dataset, whose scorer gives open-answer scores and no smart-watch ones."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from tiny_encoders import export_tiny_encoders

    from lightning_vlm.data.open_answers import OpenAnswerScorer
    from lightning_vlm.training import UnifiedVLM

    enc = export_tiny_encoders(tmp_path, image_size=SIZE)
    torch.manual_seed(0)
    tiny = {"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64}
    model = UnifiedVLM(tokenizer_path=str(imported / "tokenizer.json"), input_encoder=str(enc["vq"]), output_encoder=str(enc["vq"]),
                       backbone="tiny", backbone_overrides=tiny, max_new_tokens=4)
    dm = VLMDataModule(str(imported), batch_size=2, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    assert isinstance(dm.scorer(), OpenAnswerScorer)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=2, val_check_interval=2, num_sanity_val_steps=0, logger=TensorBoardLogger(tmp_path),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert trainer.global_step == 2 and "val/loss/total" in trainer.callback_metrics
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert "test/gen/prompt_gain" in metrics and "test/open/exact" in metrics
    assert not any(k.startswith(("test/vqa/", "test/caption/")) for k in metrics)
