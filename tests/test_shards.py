"""Writing shards: layout, round trip, reproducibility, study controls, clear errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config
from PIL import Image

from lightning_vlm.data.shards import decode_sample, iter_raw_samples, load_manifest
from lightning_vlm.data.tokenizer import TextTokenizer
from lightning_vlm.smartwatch.config import load_config
from lightning_vlm.smartwatch.render import render_watch
from lightning_vlm.smartwatch.world import WatchAttributes
from lightning_vlm.smartwatch.writer import write_dataset


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def all_samples(folder, split, task):
    m = load_manifest(folder)
    out = []
    for shard in m["splits"][split][task]["shards"]:
        out += [decode_sample(raw) for raw in iter_raw_samples(str(folder / shard["name"]), on_error=pytest.fail)]
    return out


def test_layout_and_manifest(tiny_data):
    m = load_manifest(tiny_data)
    assert (tiny_data / "tokenizer.json").is_file()
    assert sorted(p.name for p in (tiny_data / "train").iterdir()) == sorted(
        f"{t}-{i:06d}.tar" for t in ("vqa", "caption", "generation") for i in range(3)
    )
    for split, n in (("train", 12), ("val", 5), ("test", 5)):
        for task in ("vqa", "caption", "generation"):
            entry = m["splits"][split][task]
            assert entry["samples"] == n == sum(s["samples"] for s in entry["shards"])
            assert sum(entry["histograms"]["weather"].values()) == n
    assert m["config"]["seed"] == 0 and m["format_version"] == 1


def test_round_trip_png_is_the_render_of_its_attributes(tiny_data):
    samples = all_samples(tiny_data, "train", "vqa")
    assert len(samples) == 12
    for s in samples[:4]:
        attrs = WatchAttributes.from_dict(s["meta"]["attributes"])
        expected = render_watch(attrs, 32, 2)
        got = Image.fromarray((s["image"].permute(1, 2, 0) * 255).round().byte().numpy())
        assert got.tobytes() == expected.tobytes()
        assert s["meta"]["task"] == "vqa" and s["meta"]["conversations"][0]["role"] == "user"


def test_shared_images_across_tasks(tiny_data):
    ids = {task: [s["meta"]["image_id"] for s in all_samples(tiny_data, "train", task)] for task in ("vqa", "caption", "generation")}
    assert ids["vqa"] == ids["caption"] == ids["generation"]


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    write_dataset(tiny_config(), tmp_path / "a", workers=1, progress=False)
    write_dataset(tiny_config(), tmp_path / "b", workers=2, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    write_dataset(tiny_config(seed=1), tmp_path / "c", workers=1, progress=False)
    assert digest(tmp_path / "a")["train/vqa-000000.tar"] != digest(tmp_path / "c")["train/vqa-000000.tar"]


def test_test_split_is_independent_of_train(tiny_data):
    train = {s["meta"]["attributes"]["face_color"][0] for s in all_samples(tiny_data, "train", "vqa")}
    test = [s["meta"]["attributes"]["face_color"][0] for s in all_samples(tiny_data, "test", "vqa")]
    assert not set(test) <= train


def test_biased_split_holds_only_where_configured(tmp_path):
    cfg = tiny_config(**{
        "share_images": False,
        "splits.train.images": 40,
        "tasks.vqa.constraints.weather": "[sunny]",
        "tasks.caption.constraints.weather": "[sunny]",
    })
    write_dataset(cfg, tmp_path, workers=2, progress=False)
    m = load_manifest(tmp_path)
    train = m["splits"]["train"]
    assert set(train["vqa"]["histograms"]["weather"]) == {"sunny"}
    assert set(train["caption"]["histograms"]["weather"]) == {"sunny"}
    assert set(train["generation"]["histograms"]["weather"]) == {"sunny", "cloudy", "raining"}
    assert {s["meta"]["attributes"]["weather"] for s in all_samples(tmp_path, "train", "vqa")} == {"sunny"}
    ids = {s["meta"]["image_id"] for s in all_samples(tmp_path, "train", "vqa")}
    assert not ids & {s["meta"]["image_id"] for s in all_samples(tmp_path, "train", "generation")}


def test_exclude_train_tuples(tmp_path):
    # a tiny world (two hours, one minute/second/battery...) forces collisions between train and test
    narrow = {"hour": "[1,2]", "minute": "[0]", "second": "[0]", "battery": "[50]", "weather": "[sunny,cloudy]"}
    overrides = {f"tasks.{t}.constraints.{k}": v for t in ("vqa", "caption", "generation") for k, v in narrow.items()}
    cfg = tiny_config(**overrides, constrained_splits="[train,test]", **{"splits.test.exclude_train_tuples": True, "splits.train.images": 30})
    write_dataset(cfg, tmp_path, workers=1, progress=False)

    def key(s):
        return tuple(sorted((k, v) for k, v in s["meta"]["attributes"].items() if k != "face_color"))

    train = {key(s) for s in all_samples(tmp_path, "train", "vqa")}
    test = [key(s) for s in all_samples(tmp_path, "test", "vqa")]
    assert len(test) == 5 and not set(test) & train


def test_tokenizer_splits_digits_and_round_trips(tiny_data):
    tok = TextTokenizer.from_file(tiny_data / "tokenizer.json")
    for text in ("The watch shows 07:45:09.", "57%", "top-left"):
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("1234")
    assert len(ids) == 4


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="Key 'colour' not in 'GeneratorConfig'"):
        load_config(overrides={"colour": 1})
    with pytest.raises(ValueError, match="share_images: false"):
        load_config(overrides={"tasks.vqa.constraints.weather": "[sunny]"})
    with pytest.raises(ValueError, match="question_types"):
        load_config(overrides={"tasks.vqa.question_types": "[colour]"})


def test_refuses_to_overwrite_without_flag(tiny_data):
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_dataset(tiny_config(), tiny_data, workers=1, progress=False)


def test_cli_builds_and_reports(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "lightning_vlm", "data", "smartwatch", "--out", str(out),
           "--train-images", "6", "--val-images", "2", "--test-images", "3", "--image-size", "32", "--seed", "3"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "train   vqa" in res.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["test"]["generation"]["samples"] == 3 and m["image_size"] == 32 and m["seed"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("splits: {train: {imagez: 3}}\n")
    res = subprocess.run(cmd[:6] + [str(tmp_path / "x"), "--config", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2 and "imagez" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/data/**/*.yaml")), ids=lambda p: p.name)
def test_shipped_data_configs_load(path):
    cfg = load_config(path)
    assert cfg.splits["train"].images
