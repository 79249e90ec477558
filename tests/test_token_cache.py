"""Token cache: build, hit (same outputs as the encoder), miss (other checkpoint or data), CLI."""

import json
import logging
import pickle

import pytest
import torch

from lightning_vlm.encoders.ae import AEEncoder
from lightning_vlm.encoders.cache import TokenCache, checkpoint_sha256, encode_main, iter_split_images
from lightning_vlm.encoders.vq import VQEncoder
from lightning_vlm.smartwatch.config import load_config
from lightning_vlm.smartwatch.writer import write_dataset

TINY_DATA = {"splits.train.images": 8, "splits.val.images": 4, "splits.test.images": 4, "samples_per_shard": 4, "image_size": 32, "supersample": 2}
CONV = dict(image_size=32, channels=(8, 16, 16), encoder_blocks=1, decoder_blocks=1)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache_data")
    write_dataset(load_config(overrides=TINY_DATA), out, workers=1, progress=False)
    return out


def export(encoder, path, seed: int = 0):
    torch.manual_seed(seed)
    encoder.eval()
    if isinstance(encoder, VQEncoder):
        encoder(torch.rand(4, 3, 32, 32))  # k-means initialises the codebook
    return encoder.export(path)


@pytest.fixture(scope="module")
def vq_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return export(VQEncoder(**CONV, codebook_size=64, codebook_dim=4), tmp_path_factory.mktemp("ckpt") / "vq.ckpt")


def split_images(data, split):
    ids, images = zip(*iter_split_images(data, split))
    return list(ids), torch.stack(images)


def test_cache_hit_matches_the_encoder(data, vq_checkpoint):
    encoder = VQEncoder.load(vq_checkpoint)
    built = TokenCache.build(data, "vq", vq_checkpoint, encoder, batch_size=3, progress=False)
    assert built.header["splits"] == {"train": 8, "val": 4, "test": 4}
    assert built.folder.name == f"vq-{checkpoint_sha256(vq_checkpoint)[:12]}"
    cache = TokenCache.open(data, "vq", vq_checkpoint)
    assert cache is not None and len(cache) == 16 and cache.checkpoint_sha256 == checkpoint_sha256(vq_checkpoint)
    ids, images = split_images(data, "val")
    assert cache.has(ids) and not cache.has(ids + ["val-9999999"])
    features, indices = cache.lookup(ids[::-1])
    want_features, want_indices = encoder.encode(images.flip(0))
    assert torch.equal(indices, want_indices)
    assert features.dtype == torch.float32 and torch.allclose(features, want_features, atol=2e-3)
    mixed = cache.lookup(["train-0000000", "test-0000001"])[0]
    assert mixed.shape == (2, encoder.num_tokens, encoder.dim)
    with pytest.raises(KeyError, match="lacks 1 image"):
        cache.lookup(["val-9999999"])
    clone = pickle.loads(pickle.dumps(cache))  # DataLoader workers get a copy
    assert torch.equal(clone.lookup(ids)[1], cache.lookup(ids)[1])


def test_continuous_encoder_caches_features_only(data, tmp_path):
    torch.manual_seed(0)
    checkpoint = export(AEEncoder(**CONV, latent_dim=4), tmp_path / "ae.ckpt")
    encoder = AEEncoder.load(checkpoint)
    TokenCache.build(data, "ae", checkpoint, encoder, splits=["test"], dtype="float32", progress=False)
    cache = TokenCache.open(data, "ae", checkpoint)
    ids, images = split_images(data, "test")
    features, indices = cache.lookup(ids)
    assert indices is None and torch.allclose(features, encoder.encode(images)[0], atol=1e-6)
    assert not cache.has(["train-0000000"])  # only the test split was encoded


def test_cache_miss_on_other_checkpoint_or_data(data, vq_checkpoint, tmp_path, caplog):
    TokenCache.build(data, "vq", vq_checkpoint, VQEncoder.load(vq_checkpoint), splits=["val"], progress=False)
    other = export(VQEncoder(**CONV, codebook_size=64, codebook_dim=4), tmp_path / "other.ckpt", seed=1)
    with caplog.at_level(logging.WARNING, logger="lightning_vlm.encoders"):
        assert TokenCache.open(data, "vq", other) is None
    assert "caches of other checkpoints exist" in caplog.text and "lightning-vlm encode" in caplog.text
    assert TokenCache.open(data, "ae", vq_checkpoint) is None  # cached under another encoder name
    manifest = data / "manifest.json"
    original = manifest.read_text()
    try:
        manifest.write_text(json.dumps({**json.loads(original), "seed": 123}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lightning_vlm.encoders"):
            assert TokenCache.open(data, "vq", vq_checkpoint) is None
        assert "built for other data" in caplog.text
    finally:
        manifest.write_text(original)
    assert TokenCache.open(data, "vq", vq_checkpoint) is not None


def test_encode_cli(data, vq_checkpoint, tmp_path, capsys):
    assert encode_main(["--encoder", "vq", "--checkpoint", str(vq_checkpoint), "--data", str(data), "--splits", "val,test", "--batch-size", "2"]) == 0
    assert "token cache" in capsys.readouterr().out
    assert TokenCache.open(data, "vq", vq_checkpoint).has(["test-0000003"])
    assert encode_main(["--encoder", "nope", "--checkpoint", str(vq_checkpoint), "--data", str(data)]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err
    assert encode_main(["--encoder", "ae", "--checkpoint", str(vq_checkpoint), "--data", str(data)]) == 2
    assert "not a subclass of AEEncoder" in capsys.readouterr().err
    assert encode_main(["--encoder", "vq", "--checkpoint", str(tmp_path / "missing.ckpt"), "--data", str(data)]) == 2
    assert encode_main(["--encoder", "vq", "--checkpoint", str(vq_checkpoint), "--data", str(data), "--splits", "dev"]) == 2
    assert "no split(s) ['dev']" in capsys.readouterr().err
