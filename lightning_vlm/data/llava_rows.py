"""Reading LLaVA-format rows: a streaming JSON reader and the row -> sample-meta conversion.

`iter_json_rows` yields one row at a time from a JSON array (parsed incrementally with
`json.JSONDecoder.raw_decode` over fixed-size chunks) or a JSON Lines file, so memory stays
flat however large the file. A syntax error inside one array element skips that element
only: a bracket/quote scanner finds where it ends and reading goes on after it.

`conversation_meta` and `caption_meta` turn a row into the json of one shard sample (the
shard format of `data.shards`: task, conversations, image id, source id) or raise
`SkipRow(reason, message)`; they touch no file.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from .tokenizer import IMAGE, SPECIAL_TOKENS

CHUNK_CHARS = 1 << 20
MAX_ROW_CHARS = 64 << 20  # an element still open after this many characters ends the read (unbalanced brackets)
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
BLANK_IMAGE_ID = "<blank>"  # text-only rows carry one shared white image that no token reads

# Text-to-image requests built from a caption, as in the study; the pick is a hash of the row, so it is stable.
GENERATION_REQUESTS = (
    "Generate an image of: {}",
    "Draw a picture of this: {}",
    "Create an image that shows {}",
    "Please make an image matching this description: {}",
    "Show me a picture of the following. {}",
    "I would like an image of: {}",
)
ACKNOWLEDGEMENTS = (
    "Here is the image.",
    "Sure, here it is.",
    "Here is the picture you asked for.",
    "Certainly, here is the image.",
    "Done, here is your picture.",
)


class SkipRow(Exception):
    """A row that cannot become a sample: `reason` is the manifest's counter name, `message` the log line."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


# ---- streaming JSON ----------------------------------------------------------------------
_WS = re.compile(r"[ \t\n\r]*")
_SCAN = re.compile(r'["\\{}\[\],]')


def _element_end(buf: str, pos: int) -> int | None:
    """Index just past the array element starting at `pos`, by brackets and quotes only; None if it runs past `buf`."""
    depth, in_str, skip = 0, False, -1
    for m in _SCAN.finditer(buf, pos):
        i, c = m.start(), m.group()
        if i < skip:
            continue
        if in_str:
            if c == "\\":
                skip = i + 2
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
            if depth < 0:  # a closer of the array itself: the element was a bare scalar
                return i
        elif c == "," and depth == 0:
            return i
    return None


def iter_json_rows(path: str | Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, object, str | None]]:
    """(row index, value, None) per row, or (row index, None, error message) for an unparsable one."""
    with open(path, encoding="utf-8", errors="replace") as stream:
        head = stream.read(chunk_chars)
        body = head.lstrip("\ufeff \t\r\n")
        if not body.startswith("["):
            stream.seek(0)
            yield from _iter_lines(stream)
            return
        yield from _iter_array(stream, body[1:], chunk_chars)


def _iter_lines(stream) -> Iterator[tuple[int, object, str | None]]:
    index = 0
    for line in stream:
        line = line.strip().lstrip("\ufeff")
        if not line:
            continue
        try:
            yield index, json.loads(line), None
        except json.JSONDecodeError as exn:
            yield index, None, f"malformed JSON line: {exn.msg} (column {exn.colno})"
        index += 1


def _iter_array(stream, buf: str, chunk_chars: int) -> Iterator[tuple[int, object, str | None]]:
    decoder = json.JSONDecoder()
    pos, index, eof = 0, 0, False

    def more() -> bool:
        nonlocal buf, pos, eof
        chunk = "" if eof else stream.read(chunk_chars)
        if not chunk:
            eof = True
            return False
        buf, pos = buf[pos:] + chunk, 0  # drop what is consumed: memory stays at one chunk plus one row
        return True

    while True:
        pos = _WS.match(buf, pos).end()
        if pos >= len(buf):
            if more():
                continue
            yield index, None, "the JSON array is not closed (file truncated?)"
            return
        if buf[pos] == "]":
            return
        if buf[pos] == ",":
            pos += 1
            continue
        try:
            value, end = decoder.raw_decode(buf, pos)
            if end == len(buf) and buf[pos] not in '{["' and not eof and more():
                continue  # a number or literal cut at the chunk's end: read on and decode it again
        except json.JSONDecodeError as exn:
            end = _element_end(buf, pos)
            if end is None:
                if len(buf) - pos > MAX_ROW_CHARS or not more():
                    yield index, None, f"malformed JSON from row {index} on ({exn.msg}); the rest of the file is skipped"
                    return
                continue
            value, error = None, f"malformed JSON: {exn.msg}"
        else:
            error = None
        yield index, value, error
        index, pos = index + 1, end


# ---- rows -> sample meta -------------------------------------------------------------------
def clean_text(text: str, keep_image: bool = False) -> str:
    """Text without special tokens (the sequence builder writes them); with `keep_image` the `<image>`
    placeholder stays where it stands, so the image goes where the user put it."""
    for token in SPECIAL_TOKENS:
        if not (keep_image and token == IMAGE):
            text = text.replace(token, "")
    return text.strip()


def _one_path(value, key: str) -> str | None:
    """A path from a string or a one-element list; None for an empty value."""
    if isinstance(value, list):
        if len(value) > 1:
            raise SkipRow("multi_image", f"{len(value)} images in '{key}'; one image per sample is supported")
        value = value[0] if value else None
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SkipRow("malformed_row", f"'{key}' holds a {type(value).__name__}, not a path")
    return Path(value).as_posix()


def _image_field(row: dict) -> str | None:
    """The row's one image: `image` (LLaVA: a path or a one-element list) or `images` (LLaMA-Factory's list)."""
    image, images = _one_path(row.get("image"), "image"), _one_path(row.get("images"), "images")
    if image and images and image != images:
        raise SkipRow("malformed_row", f"'image' ({image}) and 'images' ({images}) disagree")
    return image or images


def _turns(row: dict) -> tuple[str | None, list[dict]]:
    """(system prompt or None, conversation turns with roles user/assistant) of a row."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SkipRow("malformed_row", "no 'conversations' list")
    system = row.get("system") if isinstance(row.get("system"), str) else None
    conversation = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
            raise SkipRow("malformed_row", "a turn lacks 'from' or 'value' strings")
        role = ROLES.get(turn["from"].lower())
        if role is None:
            raise SkipRow("malformed_row", f"unknown speaker '{turn['from']}' (expected system, human or gpt)")
        if role == "system":
            if conversation:
                raise SkipRow("malformed_row", "a system turn after the conversation started")
            system = "\n".join(t for t in (system, clean_text(turn["value"])) if t)
            continue
        conversation.append({"role": role, "text": clean_text(turn["value"], keep_image=True)})
    return (system or None), conversation


def _place_image(conversation: list[dict], has_image: bool, trimmed: list[str]) -> None:
    """At most one `<image>`, in a user turn, and only when the row has an image (else it is dropped and counted)."""
    holders = [t for t in conversation if IMAGE in t["text"]]
    if sum(t["text"].count(IMAGE) for t in holders) > 1:
        raise SkipRow("multi_image", "more than one <image> placeholder; one image per sample is supported")
    if holders and holders[0]["role"] != "user":
        raise SkipRow("malformed_row", "the <image> placeholder is in an assistant turn")
    if holders and not has_image:
        holders[0]["text"] = clean_text(holders[0]["text"])
        trimmed.append("placeholder_without_image")


def conversation_meta(row: object, index: int, max_chars: int) -> tuple[str | None, dict]:
    """(image path or None, meta) of an understanding sample from a LLaVA / ShareGPT conversation row.

    Accepted as people write them: `image` as a path or a one-element list, LLaMA-Factory's `images`
    list, a `system` key or leading system turn, `<image>` anywhere in a user turn (it stays there).
    What is cut rather than skipped is listed in meta["trimmed"] (the importer counts it): a trailing
    question nobody answers, a placeholder in a row without an image."""
    if not isinstance(row, dict):
        raise SkipRow("malformed_row", f"row is a {type(row).__name__}, not an object")
    system, conversation = _turns(row)
    trimmed = []
    while conversation and conversation[-1]["role"] == "user":
        conversation.pop()  # a question nobody answers carries no loss
        trimmed.append("trailing_user_turn")
    if not any(t["role"] == "assistant" and t["text"] for t in conversation):
        raise SkipRow("no_assistant_turn", "no assistant (gpt) turn with text")
    image = _image_field(row)
    _place_image(conversation, image is not None, trimmed)
    chars = sum(len(t["text"]) for t in conversation) + len(system or "")
    if chars > max_chars:
        raise SkipRow("too_long", f"{chars} characters > --max-chars {max_chars}")
    row_id = row.get("id")
    meta = {
        "task": "vqa",
        "conversations": conversation,
        "question_types": [],  # open-ended: the evaluator's typed VQA scores skip these
        "attributes": {},
        "image_id": image or BLANK_IMAGE_ID,
        "source_id": str(row_id) if row_id is not None else f"row-{index}",
        "text_only": image is None,  # no input image block in the sequence (collate.SequenceBuilder)
    }
    if system:
        meta["system"] = system
    if trimmed:
        meta["trimmed"] = trimmed
    return image, meta


def caption_meta(row: object, index: int, max_chars: int) -> tuple[str, dict]:
    """(image path, meta) of a text-to-image sample: request from the caption, acknowledgement, then the image."""
    if not isinstance(row, dict):
        raise SkipRow("malformed_row", f"caption row is a {type(row).__name__}, not an object")
    caption = row.get("caption")
    if not isinstance(caption, str) or not clean_text(caption):
        raise SkipRow("malformed_row", "no 'caption' text")
    image = _image_field(row)
    if image is None:
        raise SkipRow("malformed_row", "a caption row needs an 'image'")
    caption = clean_text(caption)
    pick = zlib.crc32(f"{image}\0{index}".encode())
    request = GENERATION_REQUESTS[pick % len(GENERATION_REQUESTS)].format(caption)
    reply = ACKNOWLEDGEMENTS[(pick // len(GENERATION_REQUESTS)) % len(ACKNOWLEDGEMENTS)]
    if len(request) + len(reply) > max_chars:
        raise SkipRow("too_long", f"{len(request) + len(reply)} characters > --max-chars {max_chars}")
    meta = {
        "task": "generation",
        "conversations": [{"role": "user", "text": request}, {"role": "assistant", "text": reply}],
        "mentioned": [],  # no world attributes: the attribute reader scores nothing here
        "attributes": {},
        "image_id": image,
        "source_id": str(row["id"]) if row.get("id") is not None else f"caption-{index}",
        "text_only": False,
    }
    return image, meta
