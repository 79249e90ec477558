"""The attribute reader, its data module and FD-reader / KID-reader, on tiny shapes (CPU, seconds)."""

import lightning.pytorch as pl
import pytest
import torch

from lightning_vlm.eval.fd import ReaderDistances
from lightning_vlm.smartwatch.reader import HEADS, AttributeReader
from lightning_vlm.smartwatch.render_data import EpochShiftSampler, RenderedWatchDataModule, RenderedWatches
from lightning_vlm.smartwatch.world import DOMAINS

SIZE = 32


def tiny_reader(**kw) -> AttributeReader:
    torch.manual_seed(0)
    return AttributeReader(image_size=SIZE, widths=(8, 16), blocks=1, feature_dim=32, dropout=0.0, **kw)


def rendered_batch(n: int, seed: int = 0, split: str = "val") -> dict:
    ds = RenderedWatches(seed, split, n, SIZE)
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


@pytest.fixture(scope="module")
def batch():
    return rendered_batch(48)


def test_forward_shapes_and_resize(batch):
    reader = tiny_reader()
    logits = reader(batch["images"][:4])
    assert {k: tuple(v.shape) for k, v in logits.items()} == {k: (4, n) for k, n in HEADS.items()}
    assert reader.features(batch["images"][:4]).shape == (4, 32)
    big = torch.nn.functional.interpolate(batch["images"][:4], size=(48, 48))
    assert reader.features(big).shape == (4, 32)


def test_batches_are_labelled_and_seeded(batch):
    assert batch["images"].shape == (48, 3, SIZE, SIZE) and 0 <= batch["images"].min() and batch["images"].max() <= 1
    assert batch["hour"].max() < 12 and batch["battery"].max() <= 100
    again = rendered_batch(4)
    assert torch.equal(again["images"], batch["images"][:4])
    train = rendered_batch(4, split="train")
    assert not torch.equal(train["images"], again["images"])
    sampler = EpochShiftSampler(4)
    sampler.set_epoch(2)
    assert list(sampler) == [8, 9, 10, 11]


def test_a_few_steps_lower_the_loss(batch):
    reader = tiny_reader()
    opt = torch.optim.Adam(reader.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = reader.loss(reader(batch["images"]), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9


def test_predict_attributes_uses_world_vocabulary(batch):
    preds = tiny_reader().eval().predict_attributes(batch["images"])
    assert len(preds) == 48
    for p in preds:
        assert set(p) == set(DOMAINS)
        assert all(p[name] in DOMAINS[name] for name in DOMAINS)
        assert p["weather_position"] != p["battery_position"]


def test_score_images_on_hand_made_predictions():
    corners = {"weather_position": "top-left", "battery_position": "top-right"}
    true = [
        {"hour": 3, "minute": 0, "second": 0, "weather": "sunny", "battery": 50, **corners},
        {"hour": 6, "minute": 30, "second": 30, "weather": "cloudy", "battery": 10, **corners},
    ]
    preds = [dict(true[0], battery=40), dict(true[1], hour=0, weather="raining")]
    reader = tiny_reader()
    reader.predict_attributes = lambda images: preds
    images = torch.zeros(2, 3, SIZE, SIZE)
    scores = reader.score_images(images, true)
    assert scores["battery"] == pytest.approx((0.9 + 1.0) / 2)
    assert scores["time"] == pytest.approx((1.0 + 2 / 3) / 2)  # 6 h off: e_h / 6 = 1, one third of the score
    assert scores["weather"] == 0.5 and scores["weather_position"] == 1.0
    only = reader.score_images(images, true, mentioned_list=[["battery"], ["hour", "weather"]])
    assert only == pytest.approx({"time": 2 / 3, "weather": 0.0, "battery": 0.9})


def test_fd_reader_is_zero_on_itself_and_grows_with_a_shift(batch):
    reader = tiny_reader().eval()
    images = batch["images"]

    def distances(other):
        d = ReaderDistances(reader, kid_subsets=10)
        d.update(images, real=True)
        d.update(other, real=False)
        return d.compute()

    same = distances(images)
    shifted = distances((images * 0.6 + 0.3).clamp(0, 1))
    assert abs(same["fd_reader"]) < 1e-3 * shifted["fd_reader"]
    assert shifted["fd_reader"] > 0 and shifted["kid_reader_mean"] > same["kid_reader_mean"]
    assert set(same) == {"fd_reader", "kid_reader_mean", "kid_reader_std"}
    assert not reader.training


def test_fd_reader_features_stay_float32_under_bf16_autocast(batch):
    """A bf16-mixed test loop must not round the features (and so FD/KID) to bf16."""
    reader = tiny_reader().eval()
    d = ReaderDistances(reader, kid_subsets=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert d.fd.inception(batch["images"]).dtype == torch.float32


def test_checkpoint_round_trip(tmp_path, batch):
    reader = tiny_reader()
    data = RenderedWatchDataModule(train_size=16, val_size=8, test_size=8, image_size=SIZE, batch_size=8, num_workers=0)
    trainer = pl.Trainer(
        max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(reader, data)
    metrics = trainer.test(reader, data, verbose=False)[0]
    assert 0 <= metrics["test/time_score"] <= 1 and 0 <= metrics["test/acc_weather"] <= 1
    trainer.save_checkpoint(tmp_path / "reader.ckpt")
    loaded = AttributeReader.load(tmp_path / "reader.ckpt")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    reader.eval()
    with torch.no_grad():
        expected, got = reader(batch["images"]), loaded(batch["images"])
    assert all(torch.equal(expected[k], got[k]) for k in HEADS)
    assert loaded.predict_attributes(batch["images"]) == reader.predict_attributes(batch["images"])


def test_reader_saved_under_its_former_class_path_loads(tmp_path, batch):
    """Readers trained before the class moved to lightning_vlm.smartwatch name lightning_vlm.eval.reader."""
    reader = tiny_reader().eval()
    hparams = {"_class_path": "lightning_vlm.eval.reader.AttributeReader", **dict(reader.hparams),
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": reader.state_dict(), "hyper_parameters": hparams}, tmp_path / "old.ckpt")
    loaded = AttributeReader.load(tmp_path / "old.ckpt")
    with torch.no_grad():
        assert torch.equal(reader(batch["images"])["weather"], loaded(batch["images"])["weather"])
