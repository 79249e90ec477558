"""LLaVA / ShareGPT / LLaMA-Factory rows as people write them: each variant becomes the right sample,
or is skipped or trimmed and counted; the sequence builder puts the image where the row put it."""

import json

import pytest
from PIL import Image

from lightning_vlm.data.collate import SequenceBuilder
from lightning_vlm.data.llava_dataset import import_command
from lightning_vlm.data.llava_rows import SkipRow, conversation_meta
from lightning_vlm.data.tokenizer import TextTokenizer, train_tokenizer


def turn(who, text):
    return {"from": who, "value": text}


QA = [turn("human", "<image>\nWhat is it?"), turn("gpt", "A square.")]


def meta_of(row):
    return conversation_meta(row, 0, 10_000)


def skip_reason(row):
    with pytest.raises(SkipRow) as skip:
        meta_of(row)
    return skip.value.reason


def test_image_as_a_one_element_list_is_its_path():
    assert meta_of({"image": ["a/b.png"], "conversations": QA})[0] == "a/b.png"


def test_llama_factory_images_list_is_read():
    assert meta_of({"images": ["c.png"], "conversations": QA})[0] == "c.png"


def test_two_images_are_skipped_as_multi_image():
    assert skip_reason({"images": ["c.png", "d.png"], "conversations": QA}) == "multi_image"


def test_two_placeholders_are_skipped_as_multi_image():
    row = {"image": "c.png", "conversations": [turn("human", "<image> and <image>?"), turn("gpt", "Two.")]}
    assert skip_reason(row) == "multi_image"


def test_a_system_key_becomes_the_system_prompt():
    assert meta_of({"image": "c.png", "system": "Be brief.", "conversations": QA})[1]["system"] == "Be brief."


def test_a_leading_system_turn_becomes_the_system_prompt():
    _, meta = meta_of({"image": "c.png", "conversations": [turn("system", "Be brief."), *QA]})
    assert meta["system"] == "Be brief."
    assert [t["role"] for t in meta["conversations"]] == ["user", "assistant"]


def test_a_system_turn_after_the_start_is_malformed():
    assert skip_reason({"image": "c.png", "conversations": [*QA, turn("system", "late")]}) == "malformed_row"


def test_a_trailing_question_is_trimmed_and_listed():
    _, meta = meta_of({"image": "c.png", "conversations": [*QA, turn("human", "And?")]})
    assert meta["trimmed"] == ["trailing_user_turn"]
    assert len(meta["conversations"]) == 2


def test_a_placeholder_without_an_image_is_removed_and_listed():
    _, meta = meta_of({"conversations": QA})
    assert meta["trimmed"] == ["placeholder_without_image"]
    assert meta["conversations"][0]["text"] == "What is it?"


@pytest.fixture(scope="module")
def builder():
    texts = ["What is it?", "A square.", "Look at this", "then answer", "Be brief.", "Second question"] * 20
    return SequenceBuilder(TextTokenizer(train_tokenizer(texts, 300)), image_tokens_in=4, image_tokens_out=4)


def tokens_around_image(builder, meta) -> list[int]:
    ids = builder.encode(meta)["input_ids"]
    at = ids.index(builder.boi)
    return ids[:at]


def test_the_image_goes_where_the_user_put_it(builder):
    _, meta = meta_of({"image": "c.png", "conversations": [turn("human", "Look at this <image> then answer"), turn("gpt", "A square.")]})
    before = tokens_around_image(builder, meta)
    assert builder.tokenizer.decode(before[2:]).strip() == "Look at this"


def test_the_image_goes_into_the_turn_that_holds_the_placeholder(builder):
    row = {"image": "c.png", "conversations": [turn("human", "What is it?"), turn("gpt", "A square."),
                                               turn("human", "<image>\nSecond question"), turn("gpt", "A square.")]}
    before = tokens_around_image(builder, meta_of(row)[1])
    assert before.count(builder.user) == 2


def test_without_a_placeholder_the_image_opens_the_first_user_turn(builder):
    row = {"image": "c.png", "conversations": [turn("human", "What is it?"), turn("gpt", "A square.")]}
    ids = builder.encode(meta_of(row)[1])["input_ids"]
    assert ids[1:3] == [builder.user, builder.boi]


def test_a_text_only_row_has_no_image_tokens(builder):
    enc = builder.encode(meta_of({"conversations": [turn("human", "What is it?"), turn("gpt", "A square.")]})[1])
    assert not any(enc["image_in_mask"])


def test_the_system_prompt_opens_the_first_user_turn_without_loss(builder):
    enc = builder.encode(meta_of({"image": "c.png", "system": "Be brief.", "conversations": QA})[1])
    start = builder.tokenizer.encode("Be brief.")
    at = enc["input_ids"].index(start[0])
    assert enc["input_ids"][at: at + len(start)] == start
    assert not any(enc["loss_mask"][at: at + len(start)])


def test_an_import_of_every_variant_counts_what_it_skips_and_trims(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), "red").save(images / name)
    rows = [
        {"id": "list", "image": ["a.png"], "conversations": QA},
        {"id": "factory", "images": ["b.png"], "conversations": QA},
        {"id": "two", "images": ["a.png", "b.png"], "conversations": QA},
        {"id": "system", "image": "c.png", "conversations": [turn("system", "Be brief."), *QA]},
        {"id": "middle", "image": "a.png", "conversations": [turn("human", "Look at this <image> then answer"), turn("gpt", "Ok.")]},
        {"id": "trailing", "image": "b.png", "conversations": [*QA, turn("human", "And?")]},
        {"id": "text", "conversations": [turn("human", "Hi"), turn("gpt", "Hello.")]},
        {"id": "stray", "conversations": QA},
    ] * 3
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    import argparse
    args = argparse.Namespace(json=tmp_path / "rows.json", images=images, out=tmp_path / "out", captions=None, workers=1, overwrite=False,
                              image_size=16, val_fraction=0.0, test_fraction=0.0, max_chars=1000, samples_per_shard=100, vocab_size=300)
    assert import_command(args) == 0
    printed = capsys.readouterr().out
    assert "skipped rows: 3  multi_image=3" in printed
    assert "rows kept with a part cut: 6  placeholder_without_image=3  trailing_user_turn=3" in printed
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["splits"]["train"]["vqa"]["samples"] == 21
