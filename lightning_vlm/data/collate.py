"""Turns decoded samples into padded token sequences with the masks the model needs.

Sequence format (one example per sample):
  <bos> <user> [<boi> <image>*N_in <eoi>] question <eot> <assistant> answer [<boi> <image>*N_out <eoi>] <eot> ...
The input image sits where the sample's text puts the `<image>` placeholder (LLaVA rows keep
it where the user wrote it), else at the start of the first user turn; a text-only sample
(`meta["text_only"]`) has no input image block at all. The output image closes the assistant
turn of generation samples. `<image>` is a placeholder whose embedding the model replaces with
image features. A `meta["system"]` prompt opens the first user turn (no loss on it): this
format has no system role. With `chat_template=True` the sample is rendered with the
tokenizer's own chat template instead (`data.chat_format.ChatFormat`: same flags, the system
prompt as a system message, the loss on assistant turns only).

Masks ([B, L] bool):
  loss_mask       tokens that are text-loss targets: assistant text, its <eot>, and
                  the <boi>/<eoi> the model must write around a generated image
  image_in_mask   slots of input (understanding) image tokens
  image_out_mask  slots of output (generated) image tokens
  attention_mask  real tokens (False on padding)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .tasks import TASKS
from .tokenizer import ASSISTANT, BOI, BOS, EOI, EOT, IMAGE, PAD, USER, TextTokenizer

TASK_INDEX = {t: i for i, t in enumerate(TASKS)}
MASKS = ("attention_mask", "loss_mask", "image_in_mask", "image_out_mask")


@dataclass
class SequenceBuilder:
    tokenizer: TextTokenizer
    image_tokens_in: int = 64
    image_tokens_out: int = 64
    chat_template: bool = False

    def __post_init__(self):
        t = self.tokenizer
        self.bos, self.user, self.assistant, self.eot = t.id(BOS), t.id(USER), t.id(ASSISTANT), t.id(EOT)
        self.boi, self.eoi, self.image, self.pad = t.id(BOI), t.id(EOI), t.id(IMAGE), t.id(PAD)
        self.chat = None
        if self.chat_template:
            from .chat_format import ChatFormat

            self.chat = ChatFormat(t, self.image_tokens_in, self.image_tokens_out)

    def prompt(self, meta: dict) -> dict[str, list]:
        """Ids and input-image mask of a conversation that ends with a user turn, plus the assistant's
        header: what generation continues (`models.generation.prompt_for`)."""
        if self.chat is not None:
            return self.chat.prompt(meta, self.image_turn(meta, meta["conversations"]))
        enc = self.encode(meta)
        return {"input_ids": enc["input_ids"] + [self.assistant], "image_in_mask": enc["image_in_mask"] + [False]}

    def stop_ids(self, names: tuple[str, ...]) -> list[int]:
        """Ids of the named project tokens at which generation stops; under a chat template `<eot>` also
        stands for the template's own end of turn (`ChatFormat.end_ids`)."""
        ids = [self.tokenizer.id(name) for name in names]
        if self.chat is not None and EOT in names:
            ids += [i for i in self.chat.end_ids if i not in ids]
        return ids

    def encode(self, meta: dict) -> dict[str, list]:
        """Token ids and per-token flags for one sample (lists of equal length)."""
        if self.chat is not None:
            return self.chat.encode(meta, self.image_turn(meta, meta["conversations"]))
        ids, loss, img_in, img_out = [self.bos], [False], [False], [False]

        def add(tokens, is_loss=False, is_in=False, is_out=False):
            ids.extend(tokens)
            loss.extend([is_loss] * len(tokens))
            img_in.extend([is_in] * len(tokens))
            img_out.extend([is_out] * len(tokens))

        task = meta["task"]
        turns = list(meta["conversations"])
        if meta.get("system"):
            first = next((i for i, t in enumerate(turns) if t["role"] == "user"), None)
            if first is not None:
                turns[first] = {**turns[first], "text": f"{meta['system']}\n\n{turns[first]['text']}"}
        image_turn = self.image_turn(meta, turns)
        texts = self.tokenizer.encode_batch([turn["text"] for turn in turns])
        for i, (turn, text) in enumerate(zip(turns, texts)):
            if turn["role"] == "user":
                add([self.user])
                if i == image_turn:
                    before, found, after = turn["text"].partition(IMAGE)
                    if found and before.strip():
                        add(self.tokenizer.encode(before.rstrip()))
                    add([self.boi])
                    add([self.image] * self.image_tokens_in, is_in=True)
                    add([self.eoi])
                    if found:  # else the image opens the turn, before its text as encoded
                        text = self.tokenizer.encode(after.strip()) if after.strip() else []
                add(text)
                add([self.eot])
            elif turn["role"] == "assistant":
                add([self.assistant])
                add(text, is_loss=True)
                if task == "generation":
                    add([self.boi], is_loss=True)
                    add([self.image] * self.image_tokens_out, is_out=True)
                    add([self.eoi], is_loss=True)
                add([self.eot], is_loss=True)
            else:
                raise ValueError(f"unknown role '{turn['role']}' in sample of task {task}")
        return {"input_ids": ids, "loss_mask": loss, "image_in_mask": img_in, "image_out_mask": img_out}


    @staticmethod
    def image_turn(meta: dict, turns: list[dict]) -> int | None:
        """Index of the user turn that holds the input image: the one with the `<image>` placeholder, else
        the first user turn; None for generation and text-only samples."""
        if meta["task"] == "generation" or meta.get("text_only"):
            return None
        users = [i for i, t in enumerate(turns) if t["role"] == "user"]
        return next((i for i in users if IMAGE in turns[i]["text"]), users[0] if users else None)


def collate(samples: list[dict], pad_id: int) -> dict:
    """Pads encoded samples (dicts from `SequenceBuilder.encode` plus image/meta) into a batch; its
    images are None when the stream left the PNGs undecoded (`ShardStream(decode_images=False)`)."""
    length = max(len(s["input_ids"]) for s in samples)
    b = len(samples)
    input_ids = np.full((b, length), pad_id, dtype=np.int64)
    masks = {name: np.zeros((b, length), dtype=bool) for name in MASKS}
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        input_ids[i, :n] = s["input_ids"]
        masks["attention_mask"][i, :n] = True
        for name in MASKS[1:]:
            masks[name][i, :n] = s[name]
    return {
        "input_ids": torch.from_numpy(input_ids),
        **{name: torch.from_numpy(m) for name, m in masks.items()},
        "images": None if any(s["image"] is None for s in samples) else torch.stack([s["image"] for s in samples]),
        "task": torch.tensor([TASK_INDEX[s["meta"]["task"]] for s in samples]),
        "is_padding": torch.tensor([bool(s.get("is_padding", False)) for s in samples]),
        "keys": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
