"""Image encoders: contract shapes and ranges, learning, checkpoints, registry, Lightning fit."""

import math

import lightning.pytorch as pl
import pytest
import torch
from tiny_encoders import export_tiny_reader

from lightning_vlm import registry
from lightning_vlm.callbacks import ExportEncoder
from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.data.tokenizer import TextTokenizer
from lightning_vlm.encoders import ImageEncoder, load_encoder_checkpoint
from lightning_vlm.encoders.ae import AEEncoder
from lightning_vlm.encoders.semantic import SemanticEncoder
from lightning_vlm.encoders.vq import VQEncoder

SIZE = 16  # 16 px, two levels -> 4 x 4 = 16 tokens
CONV = dict(image_size=SIZE, channels=(8, 16), encoder_blocks=1, decoder_blocks=1, warmup_steps=1)


def tiny(name: str, **overrides) -> ImageEncoder:
    torch.manual_seed(0)
    if name == "vq":
        return VQEncoder(**{**CONV, "codebook_size": 32, "codebook_dim": 4, **overrides})
    if name == "fsq":
        return VQEncoder(**{**CONV, "quantizer": "fsq", "fsq_levels": (5, 4, 3), **overrides})
    if name == "ae":
        return AEEncoder(**{**CONV, "latent_dim": 4, **overrides})
    semantic = dict(
        image_size=SIZE, patch_size=4, width=16, depth=1, heads=2, vocab_size=1024, max_text_len=64,
        text_width=16, text_depth=1, text_heads=2, embed_dim=16, decoder_channels=(8, 16), decoder_blocks=1,
        decoder_start=1, warmup_steps=1,
    )
    return SemanticEncoder(**{**semantic, **overrides})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run fastest (and steadiest on a shared machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_images(n: int = 8, size: int = SIZE) -> torch.Tensor:
    """Random but learnable images: low-frequency colour fields in [0, 1]."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", ["vq", "fsq", "ae", "semantic"])
@torch.no_grad()
def test_encode_decode_contract(name):
    enc = tiny(name).eval()
    images = smooth_images(3)
    features, indices = enc.encode(images)
    assert features.shape == (3, enc.num_tokens, enc.dim) and enc.num_tokens == 16
    assert enc.image_size == SIZE
    if name in ("vq", "fsq"):
        assert indices.shape == (3, 16) and indices.dtype == torch.long
        assert 0 <= int(indices.min()) and int(indices.max()) < enc.codebook_size
        assert torch.allclose(enc.decode(indices), enc.decode(features), atol=1e-5)
    else:
        assert indices is None and enc.codebook_size is None
    out = enc.decode(features)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1


def test_vq_codes_are_unit_norm_and_fsq_size():
    features, _ = tiny("vq").eval().encode(smooth_images(2))
    assert torch.allclose(features.norm(dim=-1), torch.ones(2, 16), atol=1e-4)
    assert tiny("fsq").codebook_size == 5 * 4 * 3


def test_bad_shapes_fail_clearly():
    enc = tiny("ae")
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 16, 16\]"):
        enc.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="expected 16 tokens"):
        enc.decode(torch.rand(2, 9, 4))
    with pytest.raises(TypeError, match="continuous"):
        enc.decode(torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown quantizer"):
        VQEncoder(**CONV, quantizer="rq")


@pytest.mark.parametrize("name", ["vq", "ae"])
def test_reconstruction_loss_goes_down(name):
    from lightning_vlm.encoders.training import reconstruction_loss

    enc = tiny(name).train()
    images = smooth_images(8)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        recon, aux, _ = enc(images)
        loss = reconstruction_loss(recon, images * 2 - 1) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def caption_batch(data_dir, n: int = 8) -> tuple[dict, TextTokenizer]:
    dm = VLMDataModule(str(data_dir), task_weights={"caption": 1}, batch_size=n, num_workers=0)
    return next(iter(dm.train_dataloader())), dm.tokenizer


def test_contrastive_loss_goes_down(tiny_data):
    """The towers learn to pair 8 images with their captions, well below the chance-level loss."""
    batch, tokenizer = caption_batch(tiny_data)
    batch["images"] = torch.nn.functional.interpolate(batch["images"], size=(SIZE, SIZE), mode="area")
    enc = tiny("semantic", init_logit_bias=-math.log(8)).train()
    enc.tokenizer = tokenizer
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    first = enc.contrastive(batch)
    for _ in range(40):
        out = enc.contrastive(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    chance = math.log(8) - 7 * math.log(7 / 8)  # every logit at log-odds 1/8
    assert out["contrastive"].item() < 0.5 * chance and out["i2t_acc"].item() > 0.5
    assert out["caption"].item() < 0.5 * first["caption"].item()  # the caption decoder learns from the patches too


def test_phase_one_reconstruction_reaches_the_vit(tiny_data):
    """recon_weight > 0 adds the pixel decoder's loss to phase 1, with gradient into the image tower;
    at 0 the decoder is left alone until phase 2."""
    batch, tokenizer = caption_batch(tiny_data)
    batch["images"] = torch.nn.functional.interpolate(batch["images"], size=(SIZE, SIZE), mode="area")
    for weight in (0.0, 1.0):
        enc = tiny("semantic", recon_weight=weight, caption_weight=0.0).train()
        enc.tokenizer = tokenizer
        out = enc.contrastive(batch)
        out["loss"].backward()
        decoder_grad = sum(p.grad.abs().sum() for p in enc.decoder.parameters() if p.grad is not None)
        if weight:
            assert torch.isclose(out["loss"], out["contrastive"] + out["reconstruction"]) and decoder_grad > 0
            stem_with = enc.patch_embed[0].weight.grad.clone()
        else:
            assert "reconstruction" not in out and decoder_grad == 0
            stem_without = enc.patch_embed[0].weight.grad.clone()
    assert not torch.allclose(stem_with, stem_without)  # the pixel loss shapes the ViT's features


def test_caption_decoder_is_causal():
    """Changing a later caption token leaves the logits of earlier positions unchanged."""
    from lightning_vlm.encoders.transformer import CaptionDecoder

    dec = CaptionDecoder(vocab_size=20, max_len=8, dim=16, depth=1, heads=2, image_dim=12).eval()
    image = torch.randn(2, 5, 12)
    ids = torch.randint(0, 20, (2, 6))
    changed = ids.clone()
    changed[:, 4] = (ids[:, 4] + 1) % 20
    a, b = dec(ids, image), dec(changed, image)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6) and not torch.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("name", ["vq", "fsq", "ae", "semantic"])
def test_export_load_round_trip(tmp_path, name):
    enc = tiny(name).eval()
    enc(smooth_images(4)) if name != "semantic" else None  # vq: k-means initialises the codebook
    path = enc.export(tmp_path / f"{name}.ckpt")
    loaded = load_encoder_checkpoint(path)
    assert type(loaded) is type(enc) and not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    images = smooth_images(3)
    f1, i1 = enc.encode(images)
    f2, i2 = loaded.encode(images)
    assert torch.equal(f1, f2) and (i1 is None or torch.equal(i1, i2))
    assert torch.equal(enc.decode(f1), loaded.decode(f2))
    assert type(enc).load(path).num_tokens == enc.num_tokens


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="lightning-vlm fit"):
        load_encoder_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not an image-encoder checkpoint"):
        load_encoder_checkpoint(tmp_path / "other.ckpt")
    path = tiny("ae").export(tmp_path / "ae.ckpt")
    with pytest.raises(TypeError, match="not a subclass of VQEncoder"):
        VQEncoder.load(path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["encoder_class"] = "uninstalled_plugin.SomeEncoder"
    torch.save(ckpt, tmp_path / "plugin.ckpt")
    with pytest.raises(ImportError, match="encoder class uninstalled_plugin.SomeEncoder .* install the package"):
        load_encoder_checkpoint(tmp_path / "plugin.ckpt")


def test_frozen_encoder_stays_in_eval_mode():
    enc = tiny("vq").freeze()
    wrapper = torch.nn.Sequential(enc)
    wrapper.train()
    assert not enc.training and not enc.quantizer.training
    enc.unfreeze()
    assert enc.training and all(p.requires_grad for p in enc.parameters())


def test_registry_lists_builtins_and_rejects_unknown():
    assert {"vq", "ae", "semantic", "hf"} <= set(registry.available("encoders"))
    assert registry.load("encoders", "vq") is VQEncoder
    assert registry.load("encoders", "semantic") is SemanticEncoder
    with pytest.raises(ValueError, match="unknown encoder 'nope'; known encoders: .*semantic.*vq"):
        registry.load("encoders", "nope")


@pytest.mark.parametrize("name", ["vq", "semantic"])
def test_lightning_fit_exports_a_loadable_checkpoint(tmp_path, tiny_data, name):
    """One epoch (3 steps) through the DataModule (32 px data), TensorBoard logging, export and the reader check."""
    at_32px = dict(channels=(8, 16, 16)) if name == "vq" else dict(patch_size=8, decoder_channels=(8, 16, 16))
    enc = tiny(name, image_size=32, **at_32px)
    dm = VLMDataModule(str(tiny_data), task_weights={"caption": 1}, eval_tasks=["caption"], batch_size=4, num_workers=0)
    export = ExportEncoder(str(tmp_path / "enc.ckpt"), reader=str(export_tiny_reader(tmp_path / "reader.ckpt")), check_images=4)
    trainer = pl.Trainer(
        max_steps=3, accelerator="cpu", logger=pl.loggers.TensorBoardLogger(tmp_path / "tb"), enable_checkpointing=False,
        callbacks=[export], enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0,
    )
    trainer.fit(enc, datamodule=dm)
    assert trainer.global_step == 3 and "val/psnr" in trainer.callback_metrics
    table = export.check(enc, str(tiny_data)).splitlines()
    assert len(table) == 4 and table[2].startswith("| originals |") and table[3].startswith(f"| {type(enc).__name__} |")
    loaded = load_encoder_checkpoint(tmp_path / "enc.ckpt")
    assert loaded.encode(torch.rand(1, 3, 32, 32))[0].shape == (1, 16, loaded.dim)


def test_a_failing_reader_check_still_exports(tmp_path, tiny_data):
    """The reconstruction check is a diagnostic: an unreadable reader file warns, the fit and export succeed."""
    enc = tiny("vq", image_size=32, channels=(8, 16, 16))
    dm = VLMDataModule(str(tiny_data), task_weights={"caption": 1}, eval_tasks=["caption"], batch_size=4, num_workers=0)
    (tmp_path / "reader.ckpt").write_bytes(b"not a checkpoint")
    export = ExportEncoder(str(tmp_path / "enc.ckpt"), reader=str(tmp_path / "reader.ckpt"), check_images=4)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[export],
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    with pytest.warns(UserWarning, match="reconstruction check with .*reader.ckpt failed"):
        trainer.fit(enc, datamodule=dm)
    assert load_encoder_checkpoint(tmp_path / "enc.ckpt").num_tokens == 16


def test_hf_encoder_from_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=8)
    transformers.SiglipVisionModel(config).save_pretrained(tmp_path / "siglip")
    enc = load_encoder_checkpoint(tmp_path / "siglip")
    features, indices = enc.encode(torch.rand(2, 3, 32, 32))  # resized to the tower's 64 px
    assert features.shape == (2, 64, 32) and indices is None
    assert (enc.num_tokens, enc.dim, enc.image_size, enc.codebook_size) == (64, 32, 64, None)
    assert registry.load("encoders", "hf").load(tmp_path / "siglip").dim == 32
    with pytest.raises(NotImplementedError, match="semantic encoder"):
        enc.decode(features)
    with pytest.raises(FileNotFoundError, match="no model directory"):
        registry.load("encoders", "hf")(path=str(tmp_path / "missing"))
