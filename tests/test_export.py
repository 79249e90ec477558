"""`lightning-vlm export` writes one folder that `load_exported` turns back into the whole VLM: the same greedy
answers and generated image tokens as the checkpoint, merged or adapter-only, in the project's format or an
LM's chat template; the exported tokenizer carries the template the model was trained with."""

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_chat_format import CHATML, save_chat_lm  # noqa: E402
from test_llava_import import SIZE  # noqa: E402
from test_real_models import save_tiny_lm  # noqa: E402
from tiny_encoders import export_tiny_encoders  # noqa: E402

from lightning_vlm.cli import main as cli_main  # noqa: E402
from lightning_vlm.export import MANIFEST, export_hf_encoder, write_export  # noqa: E402
from lightning_vlm.exported import load_exported  # noqa: E402
from lightning_vlm.models.checkpoints import load_vlm  # noqa: E402
from lightning_vlm.models.generation import image_tokens, prompt_for  # noqa: E402
from lightning_vlm.training import UnifiedVLM  # noqa: E402

ASK = [{"task": "vqa", "image_id": "a", "conversations": [{"role": "user", "text": "What colour <image> is the square?"}]},
       {"task": "vqa", "image_id": "b", "system": "Answer briefly.", "conversations": [{"role": "user", "text": "Is it bright?"}]}]
DRAW = {"task": "generation", "conversations": [{"role": "user", "text": "Generate an image of: a red rectangle"}]}
TEXT = {"task": "vqa", "text_only": True, "system": "Answer briefly.",
        "conversations": [{"role": "user", "text": "What is two plus two?"}, {"role": "assistant", "text": "Four."},
                          {"role": "user", "text": "Is it bright?"}]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny LMs (one with a ChatML template), a tiny SigLIP read at its penultimate layer, a tiny VQ encoder."""
    root = tmp_path_factory.mktemp("export")
    config = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             image_size=SIZE, patch_size=8)
    torch.manual_seed(0)
    transformers.SiglipVisionModel(config).save_pretrained(root / "siglip")
    return {"lm": save_tiny_lm(root / "lm"), "chat": save_chat_lm(root / "chat"), "root": root,
            "siglip_l2": export_hf_encoder(root / "siglip", root / "siglip_l2.ckpt", layer=-2),
            "vq": export_tiny_encoders(root, image_size=SIZE)["vq"]}


def trained_checkpoint(path, lm, input_encoder, output_encoder, chat=False, lora=True):
    """A LoRA UnifiedVLM whose trainable weights are random (as if trained), saved the way Lightning saves it."""
    import lightning

    spec = f"hf:{lm}"
    torch.manual_seed(0)
    module = UnifiedVLM(tokenizer_path=spec, input_encoder=str(input_encoder), output_encoder=str(output_encoder), backbone=spec,
                        backbone_overrides={"lora": {"r": 4, "alpha": 8}} if lora else None, max_new_tokens=6,
                        chat_template=chat)
    with torch.no_grad():  # lora_B starts at zero: the merge must matter; added-token rows moved less, or they win every step
        for name, p in module.named_parameters():
            if p.requires_grad:
                p.add_((0.005 if "added" in name else 0.05) * torch.randn_like(p))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def outputs(model) -> dict:
    """Greedy answers, generated image tokens and pictures, and the prompts they came from."""
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    prompts = [prompt_for(model, m) for m in ASK]
    draw = prompt_for(model, DRAW)
    _, indices = image_tokens(model, [{"input_ids": draw["input_ids"] + [model.tokenizer.id("<boi>")]}])
    pictures, texts = model.generate_images([draw], max_new_tokens=4)
    return {"prompts": prompts, "answers": model.generate_text(prompts, images, max_new_tokens=6), "indices": indices,
            "pictures": pictures, "texts": texts}


def run_export(ckpt, out, flag: str):
    with pytest.raises(SystemExit) as done:
        cli_main(["export", "--ckpt", str(ckpt), flag, "--out", str(out)])
    assert done.value.code == 0


@pytest.mark.parametrize("kind, chat", [("merged", False), ("adapter", False), ("merged", True)])
def test_export_round_trip(kind, chat, world, tmp_path):
    lm = world["chat"] if chat else world["lm"]
    encoders = (world["vq"], world["vq"]) if kind == "adapter" else (world["siglip_l2"], world["vq"])
    ckpt = trained_checkpoint(tmp_path / "vlm.ckpt", lm, *encoders, chat=chat)
    before = load_vlm(ckpt)
    assert (before.model.builder.chat is not None) == chat and before.model.backbone.has_lora
    want = outputs(before.model)
    assert len({t for answer in want["answers"] for t in answer}) > 3 and len(set(want["indices"][0].tolist())) > 1  # not degenerate
    out = tmp_path / "export"
    run_export(ckpt, out, "--merge-lora" if kind == "merged" else "--adapter-only")

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == kind and manifest["chat_template"] == chat
    if kind == "merged":
        assert manifest["encoders"]["input"] == {"hf_folder": "encoders/input", "layer": -2}  # the tower itself, copied
        assert (out / "encoders" / "input" / "config.json").is_file() and (out / "encoders" / "output.ckpt").is_file()
        assert (out / "model.safetensors").is_file() and not (out / "adapter").exists()
    else:
        assert manifest["encoders"]["output"] == manifest["encoders"]["input"] == {"file": "encoders/input.ckpt"}
        assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()

    after = load_exported(out)
    got = outputs(after)
    assert got["prompts"] == want["prompts"]
    assert got["answers"] == want["answers"] and got["texts"] == want["texts"]
    assert torch.equal(got["indices"], want["indices"]) and torch.equal(got["pictures"], want["pictures"])
    assert after.export_manifest["generation"]["max_new_tokens"] == 6

    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)  # the template it was trained with
    if chat:
        assert tok.chat_template == CHATML
    messages = [{"role": "system", "content": TEXT["system"]}] + [{"role": t["role"], "content": t["text"]} for t in TEXT["conversations"]]
    rendered = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert rendered == prompt_for(after, TEXT, upto_turn=1)["input_ids"]


def test_export_refusals(world, tmp_path, capsys):
    ckpt = trained_checkpoint(tmp_path / "vlm.ckpt", world["lm"], world["vq"], world["vq"])
    for flags, message in ((["--merge-lora", "--adapter-only"], "give one of"), ([], "--adapter-only to save them alone")):
        with pytest.raises(SystemExit) as done:
            cli_main(["export", "--ckpt", str(ckpt), *flags, "--out", str(tmp_path / "x")])
        assert done.value.code == 2
        assert message in capsys.readouterr().err
    plain = trained_checkpoint(tmp_path / "plain.ckpt", world["lm"], world["vq"], world["vq"], lora=False)
    with pytest.raises(ValueError, match="no LoRA adapters to save alone"):
        write_export(load_vlm(plain), tmp_path / "y", adapter_only=True)
    out = tmp_path / "adapter"
    with pytest.raises(SystemExit):
        cli_main(["export", "--ckpt", str(ckpt), "--adapter-only", "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="base_model="):
        load_exported(out, base_model=str(tmp_path / "moved"))
    shutil.copytree(world["lm"], tmp_path / "moved")
    assert load_exported(out, base_model=str(tmp_path / "moved")).backbone.has_lora  # the adapters onto a moved base model
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(ValueError, match="export the checkpoint again"):
        load_exported(out)
