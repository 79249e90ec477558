"""Chat templates (`chat_template: true`): conversations rendered with a tiny instruct LM's own template, the
loss on assistant turns only, images where the user put them, prompts that are token prefixes of training
sequences, and the project's format written as a Jinja template for exported tokenizers."""

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_real_models import TEXTS  # noqa: E402

from lightning_vlm.data.chat_format import project_chat_template  # noqa: E402
from lightning_vlm.data.collate import SequenceBuilder, collate  # noqa: E402
from lightning_vlm.data.hf_tokenizer import hf_tokenizer_with_specials, load_tokenizer  # noqa: E402
from lightning_vlm.data.tokenizer import TextTokenizer, train_tokenizer  # noqa: E402

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
NO_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + CHATML)
# Mistral-style: the system prompt goes into the LAST user turn, so earlier renderings change as turns are added.
SYSTEM_LAST = ("{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% endif %}{% endfor %}"
               "{% set users = messages | selectattr('role', 'equalto', 'user') | list %}"
               "{% for m in messages if m['role'] != 'system' %}{% if m['role'] == 'user' and m is sameas users[-1] %}"
               "{{ '[INST] ' + ns.system + ' ' + m['content'] + ' [/INST]' }}{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
               "{% else %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}")
N_IN, N_OUT = 3, 2

VQA = {"task": "vqa", "system": "Answer briefly.",
       "conversations": [{"role": "user", "text": "What colour <image> is the square?"}, {"role": "assistant", "text": "It is red."},
                         {"role": "user", "text": "Is it bright?"}, {"role": "assistant", "text": "Yes."}]}
GEN = {"task": "generation", "conversations": [{"role": "user", "text": "Generate an image of: a red rectangle"},
                                               {"role": "assistant", "text": "Here is the image."}]}


def save_chat_lm(folder: Path, template: str | None = CHATML, model: bool = True) -> Path:
    """A random 2-layer Llama whose BPE tokenizer has ChatML turn tokens and `template` (as `save_tiny_lm`, plus a chat format)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"],
                                                           show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>")
    fast.chat_template = template
    fast.save_pretrained(folder)
    if model:
        torch.manual_seed(0)
        config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                          intermediate_size=64, vocab_size=len(fast), max_position_embeddings=256,
                                          bos_token_id=0, eos_token_id=4)
        transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory):
    return save_chat_lm(tmp_path_factory.mktemp("chat") / "lm")


def builder_for(folder, chat=True) -> SequenceBuilder:
    return SequenceBuilder(load_tokenizer(f"hf:{folder}"), N_IN, N_OUT, chat_template=chat)


def text_of(tok, ids) -> str:
    return tok.tokenizer.decode(list(ids), skip_special_tokens=False)


def test_chat_template_masks_loss_to_assistant_turns(chat_lm):
    b = builder_for(chat_lm)
    tok = b.tokenizer
    enc = b.encode(VQA)
    ids = enc["input_ids"]
    assert len({len(v) for v in enc.values()}) == 1
    loss = [i for i, m in zip(ids, enc["loss_mask"]) if m]
    assert text_of(tok, loss) == "It is red.<|im_end|>\nYes.<|im_end|>\n"  # replies and their closing only
    fast, _, _ = hf_tokenizer_with_specials(chat_lm)  # the LM's tokenizer with the project's tokens
    messages = [{"role": "system", "content": VQA["system"]}] + [{"role": t["role"], "content": t["text"]} for t in VQA["conversations"]]
    whole = fast(fast.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    image = tok.id("<image>")
    at = whole.index(image)  # the template's own rendering, the placeholder expanded where the user wrote it
    assert ids == whole[:at] + [tok.id("<boi>")] + [image] * N_IN + [tok.id("<eoi>")] + whole[at + 1:]
    assert [i for i, m in zip(ids, enc["image_in_mask"]) if m] == [image] * N_IN and not any(enc["image_out_mask"])
    assert text_of(tok, ids).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat colour <boi>")
    for turns in (1, 3):  # generation prompts are token prefixes of the training sequence, up to the assistant header
        prompt = b.prompt({**VQA, "conversations": VQA["conversations"][:turns]})
        n = len(prompt["input_ids"])
        assert prompt["input_ids"] == ids[:n] and prompt["image_in_mask"] == enc["image_in_mask"][:n]
        assert text_of(tok, ids[:n]).endswith("<|im_start|>assistant\n") and enc["loss_mask"][n] and not enc["loss_mask"][n - 1]
    assert b.stop_ids(("<eot>",)) == [tok.id("<eot>"), fast.convert_tokens_to_ids("<|im_end|>")]


def test_chat_template_places_images(chat_lm):
    b = builder_for(chat_lm)
    tok = b.tokenizer
    no_placeholder = {"task": "vqa", "conversations": [{"role": "user", "text": "What colour is it?"}, {"role": "assistant", "text": "Red."}]}
    text = text_of(tok, b.encode(no_placeholder)["input_ids"])
    assert text.startswith("<|im_start|>user\n<boi>" + "<image>" * N_IN + "<eoi>\nWhat colour")  # opens the first user turn
    text_only = b.encode({**no_placeholder, "text_only": True})
    assert not any(text_only["image_in_mask"]) and tok.id("<boi>") not in text_only["input_ids"]
    gen = b.encode(GEN)
    assert text_of(tok, gen["input_ids"]).endswith("Here is the image.<boi>" + "<image>" * N_OUT + "<eoi><|im_end|>\n")
    loss = [i for i, m in zip(gen["input_ids"], gen["loss_mask"]) if m]
    assert text_of(tok, loss) == "Here is the image.<boi><eoi><|im_end|>\n"  # image slots carry the image loss instead
    assert sum(gen["image_out_mask"]) == N_OUT and not any(gen["image_in_mask"])
    assert not any(m and o for m, o in zip(gen["loss_mask"], gen["image_out_mask"]))


def test_chat_template_system_fallback_and_refusals(tmp_path, chat_lm):
    merged = builder_for(save_chat_lm(tmp_path / "no-system", NO_SYSTEM, model=False))
    assert not merged.chat.system_role
    assert "<|im_start|>user\nAnswer briefly.\n\nWhat colour" in text_of(merged.tokenizer, merged.encode(VQA)["input_ids"])
    with pytest.raises(ValueError, match="rewrites earlier turns.*chat_template: false"):
        builder_for(save_chat_lm(tmp_path / "system-last", SYSTEM_LAST, model=False)).encode(VQA)
    with pytest.raises(ValueError, match="no-template has none.*chat_template: false"):
        builder_for(save_chat_lm(tmp_path / "no-template", None, model=False))
    bpe = TextTokenizer(train_tokenizer(TEXTS, vocab_size=300))
    with pytest.raises(ValueError, match="tokenizer: hf:/path"):
        SequenceBuilder(bpe, N_IN, N_OUT, chat_template=True)
    default = builder_for(chat_lm, chat=False)  # the default path: the project's format, as before
    enc = default.encode(VQA)
    assert default.chat is None and default.prompt(VQA)["input_ids"] == enc["input_ids"] + [default.assistant]
    assert enc["input_ids"][:2] == [default.bos, default.user] and default.stop_ids(("<eot>",)) == [default.eot]


@pytest.mark.parametrize("source", ["hf", "bpe"])
def test_project_format_as_a_chat_template(source, chat_lm):
    """The Jinja template an export writes renders text conversations to the builder's own ids."""
    if source == "hf":
        tok = load_tokenizer(f"hf:{chat_lm}")
        fast, _, _ = hf_tokenizer_with_specials(chat_lm)
    else:
        tok = TextTokenizer(train_tokenizer(TEXTS, vocab_size=300))
        fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer)
    b = SequenceBuilder(tok, N_IN, N_OUT)
    meta = {**VQA, "text_only": True, "conversations": [{**t, "text": t["text"].replace("<image> ", "")} for t in VQA["conversations"]]}
    messages = [{"role": "system", "content": meta["system"]}] + [{"role": t["role"], "content": t["text"]} for t in meta["conversations"]]
    template = project_chat_template(tok)
    render = lambda msgs, gen: fast(fast.apply_chat_template(msgs, chat_template=template, tokenize=False,  # noqa: E731
                                                             add_generation_prompt=gen), add_special_tokens=False)["input_ids"]
    assert render(messages, False) == b.encode(meta)["input_ids"]
    assert render(messages[:2], True) == b.prompt({**meta, "conversations": meta["conversations"][:1]})["input_ids"]


def test_chat_template_trains_on_assistant_tokens_only(chat_lm, tmp_path):
    """A VLM with chat_template: the text loss is the cross-entropy of assistant tokens alone, it falls with
    training, and generation prompts in the template stop at its end of turn."""
    from tiny_encoders import export_tiny_encoders

    from lightning_vlm.models.generation import generate_text, prompt_for
    from lightning_vlm.training.build import build_vlm

    vq = str(export_tiny_encoders(tmp_path, image_size=32)["vq"])
    lm = f"hf:{chat_lm}"
    torch.manual_seed(0)
    model, _ = build_vlm(lm, vq, None, lm, None, "discrete", None, {}, chat_template=True)
    assert model.builder.chat is not None
    samples = [{**model.builder.encode(meta), "image": torch.rand(3, 32, 32), "meta": {**meta, "image_id": str(i)}, "key": str(i)}
               for i, meta in enumerate((VQA, GEN))]
    batch = collate(samples, model.builder.pad)
    ids, mask = batch["input_ids"], batch["loss_mask"]
    model.train()
    emb, _ = model.embed_batch(batch)
    logits = model.lm_head(model.backbone(emb))[:, :-1]
    want = torch.nn.functional.cross_entropy(logits[mask[:, 1:]].float(), ids[:, 1:][mask[:, 1:]])
    losses = model(batch)
    assert torch.allclose(losses["text"], want, atol=1e-5)
    tok = model.tokenizer
    assert text_of(tok, ids[0][mask[0]].tolist()) == "It is red.<|im_end|>\nYes.<|im_end|>\n"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = losses["total"].item()
    for _ in range(30):  # learns the replies
        optimizer.zero_grad()
        model(batch)["total"].backward()
        optimizer.step()
    assert model(batch)["total"].item() < first / 2
    model.eval()
    prompt = prompt_for(model, VQA)
    assert prompt["input_ids"] == ids[0, : len(prompt["input_ids"])].tolist()
    out = generate_text(model, [prompt], batch["images"][:1], max_new_tokens=8)[0]  # greedy: the reply, stopped at the template's end
    end = transformers.AutoTokenizer.from_pretrained(chat_lm, local_files_only=True).convert_tokens_to_ids("<|im_end|>")
    assert out == tok.encode("It is red.") + [end]
    with pytest.raises(ValueError, match="prompt_dropout"):
        build_vlm(lm, vq, None, lm, None, "discrete", None, {}, chat_template=True, prompt_dropout=0.1)
    with pytest.raises(ValueError, match="guidance_scale: 1"):
        model.hide_prompts(ids, torch.ones(2, dtype=torch.bool))


def test_data_module_renders_the_chat_template(chat_lm, tmp_path):
    """`chat_template: true` on the data module: imported LLaVA rows come out in the template, loss on replies only,
    and the builder survives the trip to DataLoader workers."""
    import pickle

    from test_llava_import import OPTIONS, make_inputs

    from lightning_vlm.data.datamodule import VLMDataModule
    from lightning_vlm.data.llava import import_llava

    data = tmp_path / "data"
    import_llava(out=data, progress=False, **make_inputs(tmp_path / "in"), **OPTIONS)
    dm = VLMDataModule(str(data), tokenizer=f"hf:{chat_lm}", batch_size=4, num_workers=0, image_tokens_in=N_IN,
                       image_tokens_out=N_OUT, task_weights="understanding_only", chat_template=True)
    again = pickle.loads(pickle.dumps(dm.builder))
    assert again.chat is not None and again.encode(VQA) == dm.builder.encode(VQA)
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    for ids, loss, image_in, meta in zip(batch["input_ids"], batch["loss_mask"], batch["image_in_mask"], batch["meta"]):
        replies = "".join(t["text"] + "<|im_end|>\n" for t in meta["conversations"] if t["role"] == "assistant")
        assert text_of(tok, ids[loss].tolist()) == replies
        assert text_of(tok, ids[:6].tolist()).startswith("<|im_start|>system\n" if meta.get("system") else "<|im_start|>user\n")
        assert int(image_in.sum()) == (0 if meta.get("text_only") else N_IN)
