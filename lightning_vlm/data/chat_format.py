"""Conversations in a pretrained LM's own chat template (`chat_template: true`), and the project's
format written as one (for exported tokenizers).

`collate.SequenceBuilder` hands a sample to `ChatFormat` when the data module and the model set
`chat_template: true`; it returns the same ids and per-token flags as the default format:

- the conversation is rendered by the tokenizer's Jinja template (`HFTokenizer.render_chat`,
  transformers' `apply_chat_template`); `meta["system"]` is the system message (merged into
  the first user turn, as the default format does, when the template has no system role);
- the input image block `<boi> <image>*N_in <eoi>` stands where the `<image>` placeholder stood
  in the user's text, else at the start of the first user turn; text-only and generation
  samples have none;
- a generation sample's assistant turn ends with `<boi> <image>*N_out <eoi>`, before the
  template closes the turn;
- the loss covers assistant turns only: their text, the `<boi>`/`<eoi>` around a generated
  image and the tokens the template closes the turn with (its end-of-turn token).

Turn spans come from rendering the conversation incrementally, not from searching the text:
the part a turn adds is the rendering up to that turn minus the rendering up to the turn
before. A user turn that an assistant turn follows is rendered with the generation prompt,
so the assistant header belongs to the prompt and the loss starts where generation starts.
Each part is tokenized on its own, so a generation prompt (`prompt`) is exactly a token
prefix of the training sequence. A template that rewrites earlier turns when a turn is added
(e.g. one that moves the system prompt into the last user turn) cannot be cut this way; it is
refused with an error naming the fix.
"""

from __future__ import annotations

import json

from .tokenizer import ASSISTANT, BOI, BOS, EOI, EOT, IMAGE, USER

ROLES = ("user", "assistant")
_PROBE_SYSTEM = "Probe system prompt 7"
_PROBE_ANSWER = "Probe answer 7"


class ChatFormat:
    """One sample -> ids and flags in the tokenizer's chat template; see the module docstring.

    Args:
        tokenizer: an `HFTokenizer` whose model folder holds a chat template.
        image_tokens_in / image_tokens_out: image slots per input / output image.
    """

    def __init__(self, tokenizer, image_tokens_in: int, image_tokens_out: int):
        if getattr(tokenizer, "chat_template", None) is None:
            where = getattr(tokenizer, "source", None)
            raise ValueError(f"chat_template: true needs a tokenizer with a chat template, and "
                             f"{'the tokenizer of ' + where if where else 'the data tokenizer.json'} has none: name an instruct "
                             "model's folder (tokenizer: hf:/path, tokenizer_path: hf:/path) or set chat_template: false")
        self.tokenizer = tokenizer
        self.source = getattr(tokenizer, "source", None)
        self.image_tokens_in, self.image_tokens_out = image_tokens_in, image_tokens_out
        self.boi, self.eoi, self.image = tokenizer.id(BOI), tokenizer.id(EOI), tokenizer.id(IMAGE)
        self.system_role = self._keeps_system_role()
        self.end_ids = self._end_of_turn_ids()

    # ---- one sample ---------------------------------------------------------------------------
    def encode(self, meta: dict, image_turn: int | None, generation_prompt: bool = False) -> dict[str, list]:
        """Token ids and per-token flags (lists of equal length). `image_turn`: the index of the user turn that
        holds the input image (`SequenceBuilder.image_turn`), None for none; `generation_prompt` ends a
        conversation whose last turn is the user's with the assistant header, as generation needs."""
        task, turns = meta["task"], list(meta["conversations"])
        for turn in turns:
            if turn["role"] not in ROLES:
                raise ValueError(f"unknown role '{turn['role']}' in sample of task {task}")
        messages = [{"role": t["role"], "content": self._content(i, t, task, image_turn)} for i, t in enumerate(turns)]
        out = {"input_ids": [], "loss_mask": [], "image_in_mask": [], "image_out_mask": []}
        for i, part in enumerate(self.parts(messages, meta.get("system"), generation_prompt)):
            ids = self.tokenizer.encode(part)
            if turns[i]["role"] == "assistant":
                self._add_assistant(out, ids, task == "generation")
            else:
                self._add_user(out, ids, i == image_turn)
        return out

    def prompt(self, meta: dict, image_turn: int | None) -> dict[str, list]:
        """Ids and input-image mask of a conversation ending with a user turn, plus the assistant header."""
        enc = self.encode(meta, image_turn, generation_prompt=True)
        return {"input_ids": enc["input_ids"], "image_in_mask": enc["image_in_mask"]}

    @staticmethod
    def _content(i: int, turn: dict, task: str, image_turn: int | None) -> str:
        """A turn's text with one `<image>` placeholder where an image block goes (expanded after tokenizing)."""
        text = turn["text"]
        if i == image_turn and IMAGE not in text:
            return f"{IMAGE}\n{text}"  # no placeholder: the image opens the first user turn
        if turn["role"] == "assistant" and task == "generation":
            return text + IMAGE  # the generated image closes the reply
        return text

    def _add_user(self, out: dict, ids: list[int], holds_image: bool) -> None:
        at = ids.index(self.image) if holds_image and self.image in ids else None
        if holds_image and at is None:
            raise ValueError(f"the chat template of {self.source} dropped the {IMAGE} placeholder from a user turn; "
                             "set chat_template: false (the project's format)")
        if at is None:
            _extend(out, ids)
            return
        _extend(out, ids[:at] + [self.boi])
        _extend(out, [self.image] * self.image_tokens_in, image_in=True)
        _extend(out, [self.eoi] + ids[at + 1:])

    def _add_assistant(self, out: dict, ids: list[int], writes_image: bool) -> None:
        if not writes_image:
            _extend(out, ids, loss=True)
            return
        at = len(ids) - 1 - ids[::-1].index(self.image) if self.image in ids else None
        if at is None:
            raise ValueError(f"the chat template of {self.source} dropped the generated image's place from an assistant turn; "
                             "set chat_template: false (the project's format)")
        _extend(out, ids[:at] + [self.boi], loss=True)
        _extend(out, [self.image] * self.image_tokens_out, image_out=True)
        _extend(out, [self.eoi] + ids[at + 1:], loss=True)

    # ---- rendering ------------------------------------------------------------------------------
    def parts(self, messages: list[dict], system: str | None, generation_prompt: bool = False) -> list[str]:
        """The text each message adds to the rendering (its header, content and closing), in order; the
        first part also holds what the template writes before the first turn (BOS, the system prompt)."""
        head, messages = self._with_system(messages, system)
        parts, before = [], ""
        for i, message in enumerate(messages):
            follows = messages[i + 1]["role"] if i + 1 < len(messages) else ("assistant" if generation_prompt else None)
            text = self.tokenizer.render_chat(head + messages[: i + 1], add_generation_prompt=message["role"] == "user" and follows == "assistant")
            if not text.startswith(before):
                raise ValueError(f"the chat template of {self.source} rewrites earlier turns when turn {i} is added, so the loss "
                                 "cannot be masked to assistant turns: set chat_template: false (the project's format)")
            parts.append(text[len(before):])
            before = text
        return parts

    def _with_system(self, messages: list[dict], system: str | None) -> tuple[list[dict], list[dict]]:
        """(messages before the turns, the turns): the system message, or the turns with it merged into the first user turn."""
        if not system:
            return [], messages
        if self.system_role:
            return [{"role": "system", "content": system}], messages
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            return [], messages
        merged = list(messages)
        merged[first] = {**merged[first], "content": f"{system}\n\n{merged[first]['content']}"}
        return [], merged

    def _keeps_system_role(self) -> bool:
        """Whether the template renders a system message (some raise on one, some drop it)."""
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.render_chat([{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": "Hi"}],
                                              add_generation_prompt=True)
        except TemplateError:
            return False
        return _PROBE_SYSTEM in text

    def _end_of_turn_ids(self) -> list[int]:
        """Ids that end an assistant turn, the stops of generation: the first special token the template
        closes a reply with, and the model's EOS."""
        user = [{"role": "user", "content": "Hi"}]
        prompt = self.tokenizer.render_chat(user, add_generation_prompt=True)
        reply = self.tokenizer.render_chat(user + [{"role": "assistant", "content": _PROBE_ANSWER}])[len(prompt):]
        closing = self.tokenizer.encode(reply[reply.rfind(_PROBE_ANSWER) + len(_PROBE_ANSWER):])
        special = {i for i, t in self.tokenizer.tokenizer.get_added_tokens_decoder().items() if t.special}
        ids = [next((i for i in closing if i in special), None)]
        eos = self.tokenizer.template_tokens.get("eos_token")
        ids.append(self.tokenizer.tokenizer.token_to_id(eos) if eos else None)
        ids = list(dict.fromkeys(i for i in ids if i is not None))
        if not ids:
            raise ValueError(f"cannot tell how the chat template of {self.source} ends an assistant turn (no special token "
                             "closes it and the tokenizer has no eos_token): set chat_template: false")
        return ids


def _extend(out: dict, ids: list[int], loss: bool = False, image_in: bool = False, image_out: bool = False) -> None:
    out["input_ids"].extend(ids)
    out["loss_mask"].extend([loss] * len(ids))
    out["image_in_mask"].extend([image_in] * len(ids))
    out["image_out_mask"].extend([image_out] * len(ids))


def project_chat_template(tokenizer) -> str:
    """The project's sequence format (`SequenceBuilder`'s default) as a Jinja chat template.

    Written into an exported tokenizer so `apply_chat_template` gives the format the model was trained
    on: `<bos> <user> [system\\n\\n] question <eot> <assistant> answer <eot> ...`, with `<assistant>`
    as the generation prompt. Text only: image blocks need the VLM (`exported.load_exported`). For
    byte-level BPE tokenizers (Llama 3, Qwen, GPT-2 style) its ids equal the builder's; SentencePiece
    ones may differ by the word-start marker at the start of a turn's text.
    """
    text = lambda name: json.dumps(tokenizer.tokenizer.id_to_token(tokenizer.id(name)))  # noqa: E731  (a Jinja string literal)
    bos, user, assistant, eot = text(BOS), text(USER), text(ASSISTANT), text(EOT)
    return (
        "{%- set ns = namespace(system='') -%}"
        "{{- " + bos + " -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] + '\\n\\n' -%}"
        "{%- elif message['role'] == 'user' -%}{{- " + user + " + ns.system + message['content'] + " + eot + " -}}{%- set ns.system = '' -%}"
        "{%- elif message['role'] == 'assistant' -%}{{- " + assistant + " + message['content'] + " + eot + " -}}"
        "{%- else -%}{{- raise_exception('the project format has user, assistant and system turns, not ' + message['role']) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- " + assistant + " -}}{%- endif -%}"
    )
