"""The VLM and its image heads on tiny shapes: losses, gradients, shared space, generation.

Most tests build the model from a config's strings through the LightningModule (`UnifiedVLM`,
as `lightning-vlm fit` does) and test its `.model`; `test_vlm_builds_from_objects` builds the
plain `VLM` from objects, with no file at all.
"""

import pytest
import torch
from tiny_encoders import TINY_BACKBONE

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.data.tasks import TASKS
from lightning_vlm.models.generation import (
    _prefill_last,
    _up_to_stop,
    generate_images,
    generate_text,
    image_tokens,
    prompt_for,
    unconditional,
)
from lightning_vlm.training import UnifiedVLM
from lightning_vlm.training.module import lr_factor


@pytest.fixture(scope="module")
def batch(tiny_data):
    dm = VLMDataModule(str(tiny_data), batch_size=9, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    return next(iter(dm.train_dataloader()))


def make_module(head, tiny_data, encoders, inp, out, **kw):
    torch.manual_seed(0)
    return UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(encoders[inp]), output_encoder=str(encoders[out]),
                      backbone="tiny", head=head, **{"backbone_overrides": TINY_BACKBONE, **kw})


def make(head, tiny_data, encoders, inp, out, **kw):
    """The plain model (`models.VLM`) of a UnifiedVLM built from files."""
    return make_module(head, tiny_data, encoders, inp, out, **kw).model


def test_vlm_builds_from_objects(tiny_data, batch):
    """No tokenizer file, no checkpoint: the model is objects put together, like nanoGPT's GPT."""
    from tiny_encoders import tiny_encoders

    from lightning_vlm.data.tokenizer import TextTokenizer
    from lightning_vlm.heads import DiscreteHead
    from lightning_vlm.models import Backbone, BackboneConfig
    from lightning_vlm.models.vlm import VLM

    tokenizer = TextTokenizer.from_file(tiny_data / "tokenizer.json")
    vq = tiny_encoders()["vq"].requires_grad_(False)
    backbone = Backbone(BackboneConfig.preset("tiny", **TINY_BACKBONE))
    model = VLM(tokenizer, vq, backbone, DiscreteHead(backbone.dim, vq), image_loss_weight=0.2)
    losses = model(batch)
    assert torch.isfinite(losses["total"]) and losses["image"] > 0
    assert torch.allclose(losses["total"], losses["text"] + 0.2 * losses["image"])


CELLS = [
    ("discrete", "vq", "vq"),
    ("discrete", "semantic", "vq"),
    ("regression", "semantic", "semantic"),
    ("regression", "vq", "semantic"),
    ("diffusion", "ae", "ae"),
]


@pytest.mark.parametrize("misalign", [0.0, 0.2])
@pytest.mark.parametrize("cls,inp,out", CELLS)
def test_forward_backward(cls, inp, out, misalign, tiny_data, encoders, batch):
    model = make(cls, tiny_data, encoders, inp, out, misalign_strength=misalign)
    assert (model.output_projector is model.input_projector) == (inp == out)
    losses = model(batch)
    assert set(TASKS_LOSSES) <= set(losses) and torch.isfinite(losses["total"])
    assert losses["image"] > 0
    losses["total"].backward()
    assert model.image_head.parameters().__next__().grad is not None
    assert all(p.grad is not None for p in model.input_projector.parameters())
    assert all(p.grad is None for p in model.input_encoder.parameters())
    if misalign:
        assert not any(p.requires_grad for p in model.misalign.parameters())


TASKS_LOSSES = ("text", "image", "total", "text/vqa", "text/caption", "text/generation")


def test_a_few_steps_lower_the_loss(tiny_data, encoders, batch):
    model = make("discrete", tiny_data, encoders, "vq", "vq")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = model(batch)["total"].item()
    for _ in range(15):
        opt.zero_grad()
        model(batch)["total"].backward()
        opt.step()
    assert model(batch)["total"].item() < 0.8 * first


def test_freeze_keeps_parts_fixed(tiny_data, encoders, batch):
    model = make("regression", tiny_data, encoders, "semantic", "semantic", freeze=["backbone", "input_projector"])
    model(batch)["total"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.input_projector.parameters())
    assert next(model.image_head.parameters()).grad is not None
    with pytest.raises(ValueError, match="unknown part"):
        make("regression", tiny_data, encoders, "semantic", "semantic", freeze=["lm"])


@pytest.mark.parametrize("cls,inp,out", CELLS)
def test_standardized_features_learn_their_statistics_in_training_only(cls, inp, out, tiny_data, encoders, batch):
    model = make(cls, tiny_data, encoders, inp, out, standardize_features=True, misalign_strength=0.2).train()
    assert (model.output_standardizer is model.input_standardizer) == (inp == out)
    losses = model(batch)
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and all(p.grad is not None for p in model.input_projector.parameters())
    assert model.input_standardizer.batches > 0 and model.output_standardizer.batches > 0
    feats, _ = model.encode_images("input", batch["images"][:2])
    seen = model.input_standardizer.state_dict()
    model.eval()
    expected = model.input_projector(model.misalign(model.input_standardizer(feats)))
    assert torch.allclose(model.embed_input_images(feats), expected)
    assert all(torch.equal(v, seen[k]) for k, v in model.input_standardizer.state_dict().items())  # eval: frozen


def test_running_standardizer_averages_exactly_then_moves_slowly():
    from lightning_vlm.models import RunningStandardizer

    torch.manual_seed(0)
    std = RunningStandardizer(3)
    a, b = torch.randn(50, 3) * 4 + 10, torch.randn(50, 3) * 4 + 12
    std.update(a)
    std.update(b)
    assert torch.allclose(std.mean, (a.mean(0) + b.mean(0)) / 2)  # the first batches: an exact average
    x = torch.randn(7, 3) * 4 + 11
    assert torch.allclose(std.inverse(std(x)), x, atol=1e-5)
    for _ in range(200):
        std.update(torch.randn(50, 3) + 100)
    before = std.mean.clone()
    std.update(torch.full((50, 3), 1000.0))
    assert torch.allclose(std.mean - before, 0.01 * (1000 - before), rtol=1e-4)  # later: momentum 0.01


def test_regression_standardises_targets_so_the_mean_token_is_no_answer(tiny_data, encoders):
    """Features with a large shared mean (like the semantic encoder's): the mean alone must not score well."""
    model = make("regression", tiny_data, encoders, "semantic", "semantic", head_options={"loss": "mse"}).train()
    d = model.output_encoder.dim
    torch.manual_seed(0)
    shared, detail = 5 * torch.randn(1, d), 0.3 * torch.randn(200, d) * torch.linspace(0.2, 2, d)
    features = shared + detail
    head = model.image_head
    head._update_statistics(features)
    z = head.standardize(features)
    assert torch.allclose(z.mean(0), torch.zeros(d), atol=1e-4) and torch.allclose(z.std(0, unbiased=False), torch.ones(d), atol=1e-3)
    assert torch.allclose(head._feed_back(z)[0], features, atol=1e-4)  # predictions go back to encoder space
    mean_token = features.mean(0, keepdim=True).expand_as(features)
    raw_cos = 1 - torch.nn.functional.cosine_similarity(mean_token, features).mean()
    std_cos = 1 - torch.nn.functional.cosine_similarity(head.standardize(mean_token) + 1e-6, z).mean()
    assert raw_cos < 0.01 and std_cos > 0.9  # blind on raw features, not on standardised ones
    cosine = make("regression", tiny_data, encoders, "semantic", "semantic").train().image_head
    cosine._update_statistics(features)
    fed = cosine._feed_back(3 * cosine.standardize(features))[0]  # norm is free under cosine: rescaled
    assert (fed - features).abs().mean() < 0.25 * detail.abs().mean()  # only each token's own norm differs


def test_checkpoints_of_the_former_architecture_classes_upgrade(tiny_data, encoders, tmp_path):
    """A RegressionVLM checkpoint (weights at the top level, head options as hyperparameters) loads
    into UnifiedVLM: by `lightning-vlm upgrade`, and by init_weights directly."""
    from lightning_vlm.models.checkpoints import upgrade_checkpoint, upgrade_main

    source = make_module("regression", tiny_data, encoders, "semantic", "semantic", head_options={"loss": "mse", "layers": 2})
    with torch.no_grad():
        source.model.image_head.target_stats.mean.add_(3)
    old_names = {"model.image_head.target_stats.": "target_stats.", "model.image_head.target_norm": "target_norm", "model.image_head.": "image_head.", "model.": ""}
    rename = lambda k: next(new + k[len(old):] for old, new in old_names.items() if k.startswith(old))  # noqa: E731
    hp = {k: v for k, v in source.hparams.items() if k not in ("head", "head_options")}
    old = {"state_dict": {rename(k): v for k, v in source.state_dict().items()},
           "hyper_parameters": {**hp, "regression_loss": "mse", "head_layers": 2, "reader": "r.ckpt",
                                "_class_path": "lightning_vlm.architectures.regression.RegressionVLM"}}
    new = upgrade_checkpoint(old)
    assert new["hyper_parameters"]["head"] == "regression" and new["hyper_parameters"]["head_options"] == {"loss": "mse", "layers": 2}
    assert "reader" not in new["hyper_parameters"] and new["hyper_parameters"]["_class_path"] == "lightning_vlm.training.UnifiedVLM"
    assert set(new["state_dict"]) == set(source.state_dict())
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    assert upgrade_main([str(path), "--out", str(tmp_path / "new.ckpt")]) == 0
    assert set(torch.load(tmp_path / "new.ckpt", weights_only=False)["state_dict"]) == set(source.state_dict())
    model = make_module("regression", tiny_data, encoders, "semantic", "semantic", head_options={"loss": "mse", "layers": 2}, init_weights=str(path))
    model.setup("fit")
    assert torch.equal(model.model.image_head.target_stats.mean, source.model.image_head.target_stats.mean)


def test_non_finite_loss_names_step_and_task(tiny_data, encoders, batch):
    module = make_module("discrete", tiny_data, encoders, "vq", "vq")
    with torch.no_grad():
        module.model.text_embeddings.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 0 \(batch tasks: .*vqa"):
        module.training_step(batch, 0)


def uncached_image_indices(model, prompt_ids, n):
    """Reference decoding: re-run the whole sequence for every image token, as the study did."""
    emb = model.text_embeddings(torch.tensor([prompt_ids]))
    out = []
    for slot in range(n):
        h = model.backbone(emb)[:, -1]
        f, idx = model.sample_image_token(h.float(), None)
        out.append(int(idx))
        emb = torch.cat([emb, model.embed_output_tokens(f[:, None], first_slot=slot)], 1)
    return out


def test_kv_cache_generation_equals_uncached(tiny_data, encoders, batch):
    model = make("discrete", tiny_data, encoders, "vq", "vq").eval()
    boi = model.tokenizer.id("<boi>")
    prefixes = [{"input_ids": prompt_for(model, m)["input_ids"] + [boi]} for m in batch["meta"] if m["task"] == "generation"][:2]
    assert len({len(p["input_ids"]) for p in prefixes}) == 2  # different lengths: the padded batch is exercised
    with torch.no_grad():
        _, cached = image_tokens(model, prefixes)  # [2, N] greedy, with the KV cache
        for i, p in enumerate(prefixes):
            assert cached[i].tolist() == uncached_image_indices(model, p["input_ids"], model.output_encoder.num_tokens)


def test_generation_shapes_and_text_answers(tiny_data, encoders, batch):
    for cls, enc in (("discrete", "vq"), ("regression", "semantic"), ("diffusion", "ae")):
        model = make(cls, tiny_data, encoders, enc, enc).eval()
        metas = [m for m in batch["meta"] if m["task"] == "generation"][:2]
        images, texts = generate_images(model, [prompt_for(model, m) for m in metas], max_new_tokens=3,
                                        generator=torch.Generator().manual_seed(0))
        assert images.shape == (len(metas), 3, 32, 32) and 0 <= images.min() and images.max() <= 1
        assert len(texts) == len(metas)
    vqa = [(i, m) for i, m in enumerate(batch["meta"]) if m["task"] == "vqa"][:2]
    outs = generate_text(model, [prompt_for(model, m) for _, m in vqa], batch["images"][[i for i, _ in vqa]], max_new_tokens=4)
    assert len(outs) == len(vqa) and all(1 <= len(o) <= 4 for o in outs)


def test_sampled_text_answers_are_seeded_and_greedy_at_temperature_zero(tiny_data, encoders, batch):
    model = make("discrete", tiny_data, encoders, "vq", "vq").eval()
    vqa = [(i, m) for i, m in enumerate(batch["meta"]) if m["task"] == "vqa"]
    prompts, images = [prompt_for(model, m) for _, m in vqa], batch["images"][[i for i, _ in vqa]]
    seeded = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    greedy = generate_text(model, prompts, images, 8)
    assert generate_text(model, prompts, images, 8, generator=seeded(1), temperature=0.0) == greedy
    hot = generate_text(model, prompts, images, 8, generator=seeded(1), temperature=1.5)
    assert hot == generate_text(model, prompts, images, 8, generator=seeded(1), temperature=1.5)
    assert hot != generate_text(model, prompts, images, 8, generator=seeded(2), temperature=1.5) and hot != greedy


def test_turns_of_one_conversation_share_one_prefill(tiny_data, encoders, batch):
    """Each VQA turn decoded from its conversation's one prefill, cut at the turn: the same states and answers
    as prefilling every turn alone (a cut that left the later turns visible as keys would change both)."""
    model = make("discrete", tiny_data, encoders, "vq", "vq").eval()
    rows, prompts = [], []
    for i, meta in enumerate(batch["meta"]):
        if meta["task"] == "vqa":
            for turn in range(len(meta["question_types"])):
                rows.append(i)
                prompts.append(prompt_for(model, meta, turn))
    assert len(set(rows)) < len(rows) and len(set(rows)) > 1  # several conversations with several turns
    images = batch["images"][rows]
    with torch.no_grad():
        cache_alone, alone = _prefill_last(model, prompts, images, 4)
        cache_shared, shared = _prefill_last(model, prompts, images, 4, groups=rows)
        assert torch.allclose(alone, shared, atol=1e-5)
        for step in range(2):  # the next tokens' states read the branched cache
            tokens = model.text_embeddings(torch.arange(len(prompts)) % 40 + 5 + step)[:, None]
            assert torch.allclose(model.backbone.decode(tokens, cache_alone), model.backbone.decode(tokens, cache_shared), atol=1e-5)
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731  (sampled: varied tokens exercise the decode)
    expected = generate_text(model, prompts, images, 6, generator=seeded(), temperature=1.5)
    assert generate_text(model, prompts, images, 6, generator=seeded(), temperature=1.5, groups=rows) == expected
    assert len({tuple(o) for o in expected}) > len(expected) // 2
    with pytest.raises(ValueError, match="does not extend"):  # two conversations declared one
        generate_text(model, [prompts[0], prompts[-1]], images[[0, -1]], 2, groups=[0, 0])


def test_diffusion_sampling_is_seeded(tiny_data, encoders, batch):
    model = make("diffusion", tiny_data, encoders, "ae", "ae").eval()
    h = torch.randn(3, 64)
    a, _ = model.sample_image_token(h, torch.Generator().manual_seed(1))
    b, _ = model.sample_image_token(h, torch.Generator().manual_seed(1))
    c, _ = model.sample_image_token(h, torch.Generator().manual_seed(2))
    assert a.shape == (3, 4) and torch.equal(a, b) and not torch.equal(a, c)


def test_token_cache_gives_the_same_loss_as_encoding(tiny_data, encoders, batch, tmp_path):
    import shutil

    from lightning_vlm.encoders.base import load_encoder_checkpoint
    from lightning_vlm.encoders.cache import TokenCache

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    module = make_module("discrete", data, encoders, "vq", "vq").eval()
    model = module.model
    torch.manual_seed(0)
    on_the_fly = model(batch)["total"]
    TokenCache.build(data, "vq", encoders["vq"], load_encoder_checkpoint(encoders["vq"]), batch_size=8, progress=False)
    module.open_token_caches(str(data))
    assert model.token_caches["input"] is not None
    calls = []
    model.input_encoder.encode = lambda images: calls.append(1)  # would fail if the cache were bypassed
    torch.manual_seed(0)
    cached = model(batch)["total"]
    assert not calls
    torch.testing.assert_close(cached, on_the_fly, rtol=1e-3, atol=1e-3)  # float16 storage


@pytest.fixture(scope="module")
def cached_data(tmp_path_factory, tiny_data, encoders):
    """A copy of the tiny data with the vq tokenizer's token cache beside it."""
    import shutil

    from lightning_vlm.encoders.base import load_encoder_checkpoint
    from lightning_vlm.encoders.cache import TokenCache

    data = tmp_path_factory.mktemp("cached") / "data"
    shutil.copytree(tiny_data, data)
    TokenCache.build(data, "vq", encoders["vq"], load_encoder_checkpoint(encoders["vq"]), batch_size=8, progress=False)
    return data


def cached_module(cached_data, encoders):
    module = make_module("discrete", cached_data, encoders, "vq", "vq").eval()
    module.open_token_caches(str(cached_data))
    return module


def tiny_loader_batch(data, cached_splits=()):
    dm = VLMDataModule(str(data), batch_size=9, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    dm.images_cached(cached_splits)
    return dm, next(iter(dm.train_dataloader()))


def test_a_model_with_token_caches_of_every_split_reads_them_all(cached_data, encoders):
    assert cached_module(cached_data, encoders).model.cached_splits() == {"train", "val", "test"}


def test_a_model_without_token_caches_reads_no_split_from_them(tiny_data, encoders):
    assert make("discrete", tiny_data, encoders, "vq", "vq").cached_splits() == set()


def test_training_batches_of_a_cached_split_leave_the_pngs_undecoded(cached_data):
    _, batch = tiny_loader_batch(cached_data, {"train"})
    assert batch["images"] is None


def test_evaluation_batches_of_a_cached_split_keep_their_pixels(cached_data):
    dm, _ = tiny_loader_batch(cached_data, {"train", "val"})
    assert next(iter(dm.val_dataloader()))["images"] is not None


def test_decode_cached_images_keeps_the_training_pixels(cached_data):
    dm = VLMDataModule(str(cached_data), batch_size=9, num_workers=0, image_tokens_in=16, image_tokens_out=16, decode_cached_images=True)
    dm.images_cached({"train"})
    assert next(iter(dm.train_dataloader()))["images"] is not None


def test_a_batch_without_pixels_gives_the_loss_of_the_same_batch_with_them(cached_data, encoders):
    model = cached_module(cached_data, encoders).model
    _, with_pixels = tiny_loader_batch(cached_data)
    _, without = tiny_loader_batch(cached_data, {"train"})
    torch.manual_seed(0)
    expected = model(with_pixels)["total"]
    torch.manual_seed(0)
    torch.testing.assert_close(model(without)["total"], expected)


def test_a_batch_without_pixels_and_no_cache_names_the_fix(cached_data, encoders):
    _, without = tiny_loader_batch(cached_data, {"train"})
    with pytest.raises(ValueError, match="decode_cached_images"):
        make("discrete", cached_data, encoders, "vq", "vq")(without)


def test_a_fit_on_cached_data_trains_on_batches_without_pixels(cached_data, encoders):
    import lightning.pytorch as pl

    class Pixels(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(batch["images"] is None)

    module = make_module("discrete", cached_data, encoders, "vq", "vq")
    dm = VLMDataModule(str(cached_data), batch_size=9, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    pixels = Pixels()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[pixels])
    trainer.fit(module, dm)
    assert pixels.seen == [True]


def test_tensorboard_gets_generated_grid_and_answers(tiny_data, encoders, tmp_path):
    """Eval batches come task by task: the grid must still appear though the first batch has no generation rows."""
    import lightning.pytorch as pl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make_module("discrete", tiny_data, encoders, "vq", "vq", max_new_tokens=3)
    dm = VLMDataModule(str(tiny_data), batch_size=4, eval_batch_size=4, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=6, limit_test_batches=6)
    trainer.validate(model, dm)
    trainer.test(model, dm)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert {"val/generated_vs_truth", "test/generated_vs_truth"} <= set(events.Tags()["images"])
    assert {"val/answers/text_summary", "test/answers/text_summary"} <= set(events.Tags()["tensors"])


def test_output_slot_embedding_marks_each_image_token(tiny_data, encoders):
    model = make("discrete", tiny_data, encoders, "vq", "vq")
    n = model.output_encoder.num_tokens
    same = torch.randn(1, 1, model.output_encoder.dim).expand(1, n, -1)  # one code in every slot
    emb = model.embed_output_tokens(same)[0]
    assert torch.cdist(emb, emb).add(torch.eye(n)).min() > 0  # every slot differs from every other
    assert torch.allclose(model.embed_output_tokens(same[:, :1], first_slot=3)[0, 0], emb[3], atol=1e-6)  # generation feeds slot by slot
    plain = make("discrete", tiny_data, encoders, "vq", "vq", output_slot_embedding=False)
    assert plain.output_slots is None and torch.equal(*plain.embed_output_tokens(same)[0, :2])


def wake_image_head(model):
    """As if trained: the diffusion head's zero-initialised layers would ignore their condition, and
    its latent scale is unmeasured (0) before the first training step."""
    for p in model.image_head.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.5)
    if hasattr(model.image_head, "latent_scale"):
        model.image_head.latent_scale.fill_(1.0)


def test_prompt_mask_is_the_request_text(tiny_data, encoders, batch):
    model = make("discrete", tiny_data, encoders, "vq", "vq")
    mask = model.prompt_mask(batch["input_ids"])
    for i, meta in enumerate(batch["meta"]):
        request = meta["conversations"][0]["text"]
        assert model.tokenizer.decode(batch["input_ids"][i][mask[i]].tolist()).strip() == request.strip()
    prefix = prompt_for(model, next(m for m in batch["meta"] if m["task"] == "generation"))
    hidden = unconditional(model, prefix)["input_ids"]
    assert len(hidden) == len(prefix["input_ids"]) and model.tokenizer.id("<unk>") in hidden
    assert [t for t, h in zip(prefix["input_ids"], hidden) if t != h]  # the request is gone, the rest kept


def test_prompt_dropout_hides_generation_requests_in_training(tiny_data, encoders, batch):
    """With dropout ~1 the image loss no longer depends on the request; in eval (no dropout) it does."""
    model = make("discrete", tiny_data, encoders, "vq", "vq", prompt_dropout=0.999)
    gen = batch["task"] == TASKS.index("generation")
    other = {**batch, "input_ids": batch["input_ids"].masked_fill(model.prompt_mask(batch["input_ids"]) & gen[:, None], 50)}
    losses = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        for name, b in (("same", batch), ("other", other)):
            torch.manual_seed(1)
            losses[mode, name] = model(b)["image"].item()
    assert losses["train", "same"] == pytest.approx(losses["train", "other"], abs=1e-6)
    assert losses["eval", "same"] != pytest.approx(losses["eval", "other"], abs=1e-6)


@pytest.mark.parametrize("cls,enc", [("discrete", "vq"), ("regression", "semantic"), ("diffusion", "ae")], ids=["discrete", "regression", "diffusion"])
def test_guidance(cls, enc, tiny_data, encoders, batch):
    """Guidance between identical states is plain sampling; guided generation runs end to end."""
    options = {"temperature": 1.0} if cls == "discrete" else {}
    model = make(cls, tiny_data, encoders, enc, enc, prompt_dropout=0.1, head_options=options).eval()
    wake_image_head(model)
    h = torch.randn(3, TINY_BACKBONE["dim"])
    plain, plain_idx = model.sample_image_token(h, torch.Generator().manual_seed(0))
    guided, guided_idx = model.sample_image_token(h, torch.Generator().manual_seed(0), h_uncond=h, guidance_scale=3.0)
    assert torch.allclose(plain, guided, atol=1e-5) and (plain_idx is None or torch.equal(plain_idx, guided_idx))
    other, _ = model.sample_image_token(h, torch.Generator().manual_seed(0), h_uncond=torch.randn_like(h), guidance_scale=3.0)
    assert not torch.allclose(plain, other, atol=1e-3)
    metas = [m for m in batch["meta"] if m["task"] == "generation"][:2]
    images, _ = generate_images(model, [prompt_for(model, m) for m in metas], max_new_tokens=3, generator=torch.Generator().manual_seed(0),
                                guidance_scale=3.0)
    assert images.shape == (len(metas), 3, 32, 32) and torch.isfinite(images).all()


@pytest.mark.parametrize("cls,enc", [("discrete", "vq"), ("diffusion", "ae")], ids=["discrete", "diffusion"])
def test_prompt_gain(cls, enc, tiny_data, encoders, batch):
    """Reproducible (the diffusion head's noise is replayed), and exactly 0 when the requests are already hidden."""
    from lightning_vlm.eval.evaluator import prompt_gain

    model = make(cls, tiny_data, encoders, enc, enc).eval()
    wake_image_head(model)
    gen = [i for i, m in enumerate(batch["meta"]) if m["task"] == "generation"]
    first = prompt_gain(model, batch, gen)
    assert first == prompt_gain(model, batch, gen) and first != 0
    hidden = {**batch, "input_ids": model.hide_prompts(batch["input_ids"], torch.ones(len(batch["meta"]), dtype=torch.bool))}
    assert prompt_gain(model, hidden, gen) == 0


def test_init_weights_starts_from_another_checkpoint(tiny_data, encoders, batch, tmp_path):
    source = make_module("discrete", tiny_data, encoders, "vq", "vq")
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1)
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)

    module = make_module("discrete", tiny_data, encoders, "vq", "vq", init_weights=str(path))
    assert not torch.equal(module.model.backbone.blocks[0].attn.qkv.weight, source.model.backbone.blocks[0].attn.qkv.weight)
    module.setup("fit")
    for (name, mine), theirs in zip(module.state_dict().items(), source.state_dict().values()):
        assert torch.equal(mine, theirs), name
    assert torch.allclose(module.model(batch)["total"], source.model(batch)["total"])

    other = make_module("discrete", tiny_data, encoders, "semantic", "vq", init_weights=str(path))
    with pytest.raises(ValueError, match="does not fit this model"):
        other.setup("fit")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_module("discrete", tiny_data, encoders, "vq", "vq", init_weights=str(tmp_path / "missing.ckpt")).setup("fit")


def test_context_noise_perturbs_teacher_forced_image_tokens_in_training_only(tiny_data, encoders, batch):
    model = make("diffusion", tiny_data, encoders, "ae", "ae", context_noise=0.5)
    out = batch["image_out_mask"]
    model.eval()
    clean, targets = model.embed_batch(batch)
    model.train()
    noisy, noisy_targets = model.embed_batch(batch)
    assert torch.equal(targets["features"], noisy_targets["features"])  # the targets stay clean
    assert torch.equal(clean[~out], noisy[~out])  # text and input images untouched
    assert not torch.allclose(clean[out], noisy[out])
    plain = make("diffusion", tiny_data, encoders, "ae", "ae").train()
    assert torch.equal(plain.embed_batch(batch)[0], clean)  # 0 = exact teacher forcing
    with pytest.raises(ValueError, match="context_noise"):
        make("diffusion", tiny_data, encoders, "ae", "ae", context_noise=-1)


def test_compiled_backbone_gives_the_eager_losses_and_gradients(tiny_data, encoders, batch):
    """`compile_backbone=True` (the quickstart's setting) trains through the compiled backbone, under bf16
    autocast as on a bf16 CPU or GPU: the same losses and gradients as eager within bf16 tolerance. The one
    training compile of the suite, on one layer (the compile's time grows with the traced graph): the CLI
    tests of the shipped configs run eager."""
    runs = {}
    for compiled in (False, True):
        model = make("discrete", tiny_data, encoders, "vq", "vq", compile_backbone=compiled,
                     backbone_overrides={**TINY_BACKBONE, "n_layers": 1}).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(batch)
        losses["total"].backward()
        runs[compiled] = model, losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    (eager, eager_losses, eager_grads), (fast, fast_losses, fast_grads) = runs[False], runs[True]
    assert eager._train_backbone is None
    assert fast._train_backbone is not None
    for name in ("total", "text", "image"):
        torch.testing.assert_close(fast_losses[name].float(), eager_losses[name].float(), atol=2e-2, rtol=2e-2)
    assert fast_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=2e-2, rtol=2e-2, msg=name)


def test_decoded_rows_are_cut_after_their_first_stop_token():
    assert _up_to_stop([5, 7, 2, 9, 2], {2}) == [5, 7, 2]  # rows that stopped early kept decoding: cut
    assert _up_to_stop([5, 7, 9], {2}) == [5, 7, 9]  # no stop within max_new_tokens: all of it
    assert _up_to_stop([3, 5], {3, 2}) == [3]


def test_a_sample_scores_the_same_padded_into_any_batch(tiny_data, encoders, batch):
    """What length buckets rely on: right padding changes no loss, so regrouping samples by length
    (`data.length_buckets`) changes only which samples share a step, never a sample's loss."""
    from lightning_vlm.eval.evaluator import select_rows

    model = make("discrete", tiny_data, encoders, "vq", "vq").eval()
    wake_image_head(model)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < batch["input_ids"].shape[1]  # the batch does pad some samples
    text_sum, text_tokens, image_losses = 0.0, 0, []
    with torch.no_grad():
        full = model(batch)
        for i in range(len(batch["meta"])):
            one = select_rows(batch, torch.arange(len(batch["meta"])) == i)
            n = int(lengths[i])
            alone = {k: v[:, :n] if isinstance(v, torch.Tensor) and v.ndim == 2 else v for k, v in one.items()}  # no padding
            losses = model(alone)
            tokens = int(alone["loss_mask"][:, 1:].sum())
            text_sum += float(losses["text"]) * tokens
            text_tokens += tokens
            if alone["image_out_mask"].any():
                image_losses.append(float(losses["image"]))
    assert text_sum / text_tokens == pytest.approx(float(full["text"]), rel=1e-5)
    assert image_losses and sum(image_losses) / len(image_losses) == pytest.approx(float(full["image"]), rel=1e-5)


def test_input_position_embedding_tells_equal_tokens_apart_by_slot(tiny_data, encoders):
    """Every slot holding the same token: without positions all 16 embeddings are equal, with them not."""
    model = make("discrete", tiny_data, encoders, "vq", "vq", input_position_embedding=True)
    emb = model.embed_input_images(torch.ones(1, 16, model.input_encoder.dim))
    assert not torch.allclose(emb[0, 0], emb[0, 15])


def test_input_position_embedding_is_off_by_default(tiny_data, encoders):
    model = make("discrete", tiny_data, encoders, "vq", "vq")
    assert model.input_positions is None


def test_input_position_embedding_learns_from_understanding_batches(tiny_data, encoders, batch):
    model = make("discrete", tiny_data, encoders, "vq", "vq", input_position_embedding=True)
    model(batch)["total"].backward()
    assert model.input_positions.table.grad.abs().sum() > 0


def test_grid_positions_are_row_plus_column():
    from lightning_vlm.models.positions import GridPositionEmbedding

    grid = GridPositionEmbedding(16, 8)
    emb = grid().reshape(4, 4, 8)
    assert torch.allclose(emb[1, 2] - emb[1, 0], emb[3, 2] - emb[3, 0])  # the same column step on any row


def test_grid_positions_of_a_non_square_count_get_one_entry_each():
    from lightning_vlm.models.positions import GridPositionEmbedding

    assert GridPositionEmbedding(12, 8)().shape == (12, 8)


def test_lr_warms_up_from_near_zero():
    assert lr_factor(0, warmup=10, total=100, floor=0.1) == pytest.approx(1e-3)


def test_lr_peaks_when_warm_up_ends():
    assert lr_factor(10, warmup=10, total=100, floor=0.1) == pytest.approx(1.0)


def test_lr_ends_at_its_floor():
    assert lr_factor(100, warmup=10, total=100, floor=0.1) == pytest.approx(0.1)


def test_lr_floor_one_holds_the_peak_after_warm_up():
    assert lr_factor(60, warmup=10, total=100, floor=1.0) == pytest.approx(1.0)


def test_a_min_lr_ratio_above_one_is_refused(tiny_data, encoders):
    with pytest.raises(ValueError, match="min_lr_ratio"):
        make_module("discrete", tiny_data, encoders, "vq", "vq", min_lr_ratio=2.0)
