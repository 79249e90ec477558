"""Real models on real-format data, offline and tiny: a pretrained-style causal LM with its own tokenizer,
LoRA through peft, a SigLIP tower through the token cache, `export --merge-lora`, open-answer scores
and the configs/real presets."""

import json
import pickle
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_llava_import import OPTIONS, SIZE, make_inputs, samples  # noqa: E402
from tiny_encoders import export_tiny_encoders  # noqa: E402

from lightning_vlm.cli import main as cli_main  # noqa: E402
from lightning_vlm.data.datamodule import VLMDataModule  # noqa: E402
from lightning_vlm.data.hf_tokenizer import HFTokenizer, load_tokenizer  # noqa: E402
from lightning_vlm.data.llava import import_llava  # noqa: E402
from lightning_vlm.data.open_answers import (  # noqa: E402
    is_open_vqa,
    normalize_answer,
    open_answer_scores,
    prediction_record,
    score_open_answer,
    write_predictions,
)
from lightning_vlm.data.tokenizer import SPECIAL_TOKENS, TextTokenizer  # noqa: E402
from lightning_vlm.models.hf_backbone import HFBackbone, hf_backbone_options, lora_settings  # noqa: E402

ROOT = Path(__file__).parents[1]
TEXTS = ["What colour is the square?", "It is red.", "Is it bright?", "Yes.", "No.", "Generate an image of: a red rectangle",
         "Here is the image.", "What is two plus two?", "Four."]


def save_tiny_lm(folder: Path, tied: bool = False) -> Path:
    """A random 2-layer Llama with a BPE tokenizer of its own (bos <s>, eos </s>, unk <unk>, no pad) beside it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      intermediate_size=64, vocab_size=len(fast), max_position_embeddings=256,
                                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=tied)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny LM + tokenizer, tiny SigLIP, a tiny VQ encoder and an imported LLaVA dataset."""
    root = tmp_path_factory.mktemp("real")
    lm = save_tiny_lm(root / "lm")
    tied = save_tiny_lm(root / "lm-tied", tied=True)  # as Llama-3.2-1B; Vicuna-7B is untied
    config = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             image_size=SIZE, patch_size=8)
    torch.manual_seed(0)
    transformers.SiglipVisionModel(config).save_pretrained(root / "siglip")
    data = root / "data"
    import_llava(out=data, progress=False, **make_inputs(root / "in"), **OPTIONS)
    return {"root": root, "lm": lm, "lm-tied": tied, "siglip": root / "siglip", "data": data, "vq": export_tiny_encoders(root, image_size=SIZE)["vq"]}


def test_hf_tokenizer_speaks_the_project_format(world):
    tok = load_tokenizer(f"hf:{world['lm']}")
    assert isinstance(tok, HFTokenizer) and isinstance(load_tokenizer(world["data"] / "tokenizer.json"), TextTokenizer)
    fast = transformers.AutoTokenizer.from_pretrained(world["lm"], local_files_only=True)
    assert tok.id("<bos>") == fast.bos_token_id and tok.id("<unk>") == fast.unk_token_id  # the model's own
    new = [t for t in SPECIAL_TOKENS if t not in ("<bos>", "<unk>")]
    assert sorted(tok.id(t) for t in new) == tok.added_ids == list(range(len(fast), len(fast) + len(new)))
    assert tok.vocab_size == len(fast) + len(new)
    ids = tok.encode("What colour is the square?")
    assert ids == fast("What colour is the square?", add_special_tokens=False)["input_ids"]
    assert tok.decode([tok.id("<user>")] + ids + [tok.id("<eot>")]) == "What colour is the square?"
    again = pickle.loads(pickle.dumps(tok))  # DataLoader workers
    assert again.special == tok.special and again.tokenizer.to_str() == tok.tokenizer.to_str()
    dm = VLMDataModule(str(world["data"]), tokenizer=f"hf:{world['lm']}", batch_size=2, num_workers=0,
                              image_tokens_in=16, image_tokens_out=16)
    batch = next(iter(dm.train_dataloader()))
    assert int(batch["input_ids"].max()) < tok.vocab_size and (batch["input_ids"][:, 0] == tok.id("<bos>")).all()


def test_added_token_rows_extend_the_pretrained_tables(tmp_path):
    for tied in (True, False):
        lm = save_tiny_lm(tmp_path / f"lm-{tied}", tied=tied)
        backbone = HFBackbone(str(lm))
        tok = load_tokenizer(f"hf:{lm}")
        emb, head = backbone.text_layers(tok)
        assert (head.added is emb.added) == tied and emb.num_embeddings == head.out_features == tok.vocab_size
        old, added = torch.tensor([0, 5, 17]), torch.tensor(tok.added_ids[:3])
        assert torch.equal(emb(old), backbone.get_input_embeddings()(old)) and torch.equal(emb(added), emb.added[:3])
        h = torch.randn(4, 32)
        logits = head(h)
        v0 = backbone.get_output_embeddings().out_features
        assert torch.allclose(logits[:, :v0], backbone.get_output_embeddings()(h))
        assert torch.allclose(logits[:, tok.added_ids], h @ head.added.T, atol=1e-6)
    with pytest.raises(ValueError, match="not options of an hf: backbone"):
        hf_backbone_options({"n_layers": 2})
    with pytest.raises(ValueError, match="lora: unknown"):
        lora_settings({"rank": 4})
    assert lora_settings({}) == {"r": 128, "alpha": 256, "dropout": 0.05, "target_modules": "all-linear"}


def test_hf_encoder_layer_checkpoint(world, tmp_path):
    from lightning_vlm.encoders.base import load_encoder_checkpoint
    from lightning_vlm.encoders.hf import HFEncoder

    with pytest.raises(SystemExit) as done:
        cli_main(["export", "--hf-encoder", str(world["siglip"]), "--layer", "-2", "--out", str(tmp_path / "siglip_l2.ckpt")])
    assert done.value.code == 0
    enc = load_encoder_checkpoint(tmp_path / "siglip_l2.ckpt")
    assert isinstance(enc, HFEncoder) and enc.hparams.layer == -2 and (enc.num_tokens, enc.dim) == (16, 32)
    images = torch.rand(2, 3, SIZE, SIZE)
    tower = transformers.SiglipVisionModel.from_pretrained(world["siglip"]).eval()
    with torch.no_grad():
        want = tower(pixel_values=(images - 0.5) / 0.5, output_hidden_states=True).hidden_states[-2]
        assert torch.allclose(enc.encode(images)[0], want, atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        HFEncoder(str(world["siglip"]), layer=5)


@pytest.mark.parametrize("which", ["lm", "lm-tied"])
def test_lora_fit_test_generate_and_merged_export(which, world, tmp_path):
    """LoRA on a pretrained-style LM with its own tokenizer, SigLIP (penultimate layer) through the token cache:
    fit 2 steps, test, generate; the checkpoint holds only trainable weights; the merged export is a plain
    transformers model whose logits match the LoRA model's."""
    import lightning.pytorch as pl

    from lightning_vlm.models.checkpoints import load_vlm, load_weights
    from lightning_vlm.models.generation import generate_text, prompt_for
    from lightning_vlm.training import UnifiedVLM

    siglip = tmp_path / "siglip_l2.ckpt"
    for argv in (["export", "--hf-encoder", str(world["siglip"]), "--layer", "-2", "--out", str(siglip)],
                 ["encode", "--encoder", "hf", "--checkpoint", str(siglip), "--data", str(world["data"]), "--device", "cpu"]):
        with pytest.raises(SystemExit) as done:
            cli_main(argv)
        assert done.value.code == 0, argv
    lm = f"hf:{world[which]}"
    torch.manual_seed(0)
    module = UnifiedVLM(tokenizer_path=lm, input_encoder=str(siglip), output_encoder=str(world["vq"]), backbone=lm,
                        backbone_overrides={"lora": {"r": 8, "alpha": 16}, "gradient_checkpointing": True},
                        lr=1e-2, max_new_tokens=4)
    model = module.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable if n.startswith("backbone."))
    assert {"text_embeddings.added", "input_projector.0.weight"} <= trainable
    assert ("lm_head.added" in trainable) == (which == "lm")  # a tied head shares the embedding's added rows
    lm_model = model.backbone.causal_lm
    assert all(m.training for m in model.backbone.modules())  # LoRA dropout and checkpointing act in training
    assert not model.text_embeddings.base.weight.requires_grad
    assert getattr(lm_model, "is_activation_checkpointing", None) or lm_model.is_gradient_checkpointing
    dm = VLMDataModule(str(world["data"]), tokenizer=lm, batch_size=2, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    live = []
    encode = model.input_encoder.encode
    model.input_encoder.encode = lambda images: live.append(len(images)) or encode(images)
    trainer.fit(module, dm)
    del model.input_encoder.encode
    assert trainer.global_step == 2 and model.token_caches["input"] is not None and not live  # SigLIP tokens came from the cache
    cached, _ = model.token_caches["input"].lookup(list(model.token_caches["input"].index)[:2])
    assert cached.shape == (2, 16, 32)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # the adapters trained

    ckpt = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    backbone_keys = [k for k in saved["state_dict"] if k.startswith("model.backbone.")]
    assert backbone_keys and all("lora_" in k for k in backbone_keys)  # frozen LM weights left out
    assert "model.text_embeddings.base.weight" in saved["frozen_backbone"]["dropped"]
    assert "model.input_encoder.vision.embeddings.patch_embedding.weight" in saved["state_dict"]

    metrics = trainer.test(module, dm, verbose=False)[0]
    assert "test/gen/prompt_gain" in metrics
    meta = next(m for _, _, m in samples(world["data"]) if m["task"] == "vqa" and not m["text_only"])
    assert is_open_vqa(meta)
    image = torch.rand(1, 3, SIZE, SIZE)
    out = generate_text(model.eval(), [prompt_for(model, meta)], image, max_new_tokens=5)
    assert 1 <= len(out[0]) <= 5 and isinstance(model.tokenizer.decode(out[0]), str)

    reloaded = load_vlm(ckpt)  # frozen weights come back from the model folder
    for k, v in module.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k]), k
    load_weights(reloaded, str(ckpt))  # init_weights: every key checked
    resumed = pl.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    resumed.fit(load_vlm(ckpt).train(), dm, ckpt_path=str(ckpt))
    assert resumed.global_step == 3
    with pytest.raises(SystemExit) as done:
        cli_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf")])
    assert done.value.code == 2  # adapters present: --merge-lora required
    with pytest.raises(SystemExit) as done:
        cli_main(["export", "--ckpt", str(ckpt), "--merge-lora", "--out", str(tmp_path / "hf")])
    assert done.value.code == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    exported_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    tok, reloaded = reloaded.tokenizer, reloaded.model
    assert exported_tok.convert_tokens_to_ids("<user>") == tok.id("<user>") and tok.id("<eot>") in merged.generation_config.eos_token_id
    assert exported_tok("What colour is the square?", add_special_tokens=False)["input_ids"] == tok.encode("What colour is the square?")
    ids = torch.tensor([[tok.id("<bos>"), tok.id("<user>"), *tok.encode("What colour is the square?"), tok.id("<eot>"), tok.id("<assistant>")]])
    plain = torch.tensor([[tok.id("<bos>"), *tok.encode("Is it bright?")]])  # the original vocabulary only
    original = transformers.AutoModelForCausalLM.from_pretrained(world[which], local_files_only=True).eval()
    with torch.no_grad():
        want = reloaded.lm_head(reloaded.backbone(reloaded.text_embeddings(ids)))
        got = merged(input_ids=ids).logits
        before, after = original(input_ids=plain).logits, merged(input_ids=plain).logits[..., : original.config.vocab_size]
    assert got.shape == want.shape == (1, ids.shape[1], tok.vocab_size)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(before, after, atol=1e-3)  # the merged weights are the trained ones, not the original LM's
    assert (tmp_path / "hf" / "vlm_parts.pt").is_file()


def test_open_answer_scores_and_answers_file(world, tmp_path):
    assert normalize_answer("The Two red squares.") == "2 red squares"
    assert normalize_answer("It costs 3.5 dollars!") == "it costs 3.5 dollars"
    assert score_open_answer("It is red.", "red") == {"open/exact": 0.0, "open/contains": 1.0}
    assert score_open_answer("Red", "red.") == {"open/exact": 1.0, "open/contains": 1.0}
    assert score_open_answer("bored", "red")["open/contains"] == 0.0  # whole words only
    metas = [m for _, _, m in samples(world["data"])]
    vqa = [m for m in metas if m["task"] == "vqa"]
    assert vqa and all(is_open_vqa(m) for m in vqa) and not any(is_open_vqa(m) for m in metas if m["task"] != "vqa")
    smartwatch = {"task": "vqa", "question_types": ["time"], "conversations": [], "attributes": {}}
    assert not is_open_vqa(smartwatch) and open_answer_scores(smartwatch, "x") == {}
    meta = next(m for m in vqa if m["source_id"] == "good-1")
    assert open_answer_scores(meta, "It is green.") == {"open/exact": 1.0, "open/contains": 1.0}
    long = {**meta, "conversations": [meta["conversations"][0], {"role": "assistant", "text": "word " * 30}]}
    assert open_answer_scores(long, "word") == {}  # paragraphs are not matched
    path = write_predictions(tmp_path / "answers.jsonl", [prediction_record(meta, "Green.", "tiny-lora")])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 1 and set(rows[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert rows[0]["question_id"] == "good-1" and rows[0]["prompt"] == "What colour is the square?" and rows[0]["text"] == "Green."


@pytest.mark.parametrize("name", ["single_gpu", "ddp", "fsdp"])
def test_real_configs_parse(name, capsys):
    """`fit --print_config` parses each preset (placeholder model paths: nothing is instantiated)."""
    with pytest.raises(SystemExit) as done:
        layers = ["single_gpu"] + ([name] if name != "single_gpu" else [])  # ddp and fsdp are overlays on single_gpu
        cli_main(["fit", *[a for layer in layers for a in ("--config", str(ROOT / "configs/real" / f"{layer}.yaml"))], "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "backbone: hf:/models/" in printed and "tokenizer: hf:/models/" in printed and "lora:" in printed
    if name == "fsdp":
        assert "FSDPStrategy" in printed and "LlamaDecoderLayer" in printed
