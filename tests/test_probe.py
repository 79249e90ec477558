"""The linear-probe utility: the probe itself, the features it reads, and its command."""

import pytest
import torch
from tiny_encoders import export_tiny_encoders

from lightning_vlm.smartwatch.probe import fit_linear_probe, image_features, probe_attributes, render_split
from lightning_vlm.training import UnifiedVLM

TINY_BACKBONE = {"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64}


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_data):
    enc = export_tiny_encoders(tmp_path_factory.mktemp("enc"), image_size=32)
    torch.manual_seed(0)
    return UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(enc["semantic"]),
                      output_encoder=str(enc["vq"]), backbone="tiny", backbone_overrides=TINY_BACKBONE,
                      misalign_strength=0.2).model.eval()


def test_probe_reads_a_linear_label_and_not_a_random_one():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    x = 3 * torch.eye(4, 20)[y] + torch.randn(400, 20, generator=g)  # the class shifts four of the features
    train, test = fit_linear_probe(x[:300], y[:300], x[300:], y[300:], num_classes=4)
    assert train > 0.95 and test > 0.9
    noise = torch.randint(0, 4, (400,), generator=g)
    _, test = fit_linear_probe(x[:300], noise[:300], x[300:], noise[300:], num_classes=4)
    assert test < 0.45  # chance is 0.25: a probe that memorises noise must not transfer


def test_features_at_each_place(model):
    images, labels = render_split("test", 6, 32, seed=0)
    n = model.input_encoder.num_tokens
    assert image_features(model, images, "encoder").shape == (6, n * model.input_encoder.dim)
    assert image_features(model, images, "adapter").shape == (6, n * model.backbone.dim)
    assert image_features(model, images, "output", pool="mean").shape == (6, model.backbone.dim)
    feats, _ = model.input_encoder.encode(images)
    adapter = model.input_projector(model.misalign(feats)).flatten(1)  # the affine map comes before the projector
    torch.testing.assert_close(image_features(model, images, "adapter"), adapter.float())
    with pytest.raises(ValueError, match="where must be"):
        image_features(model, images, "lm")


def test_weather_is_readable_from_the_encoder_tokens(model):
    """Even the untrained tiny encoder's 16 tokens keep what the icons look like and where they are:
    the probe must beat a constant guess by far (measured: 0.65 vs 0.37, 0.62 vs 0.32)."""
    for result in probe_attributes(model, ["weather", "weather_position"], where="encoder", train_samples=300, test_samples=150):
        assert result.test_accuracy > result.chance + 0.2, result
    with pytest.raises(ValueError, match="unknown attribute"):
        probe_attributes(model, ["colour"])

