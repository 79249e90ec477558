"""Question files of understanding benchmarks (POPE, MME, ScienceQA-IMG style, open VQA), read into one shape.

The layout is the one LLaVA's `model_vqa` question files and most converters write: a JSON Lines
file (a JSON array works too) with one question per row,

    {"question_id": "12", "image": "val2014/x.jpg", "question": "Is there a dog?", "answer": "yes",
     "category": "adversarial"}

with the usual aliases accepted: `id`/`qid`/`index` for question_id, `text`/`prompt` for question,
`label`/`gt_answer` for answer, `type`/`question_type`/`subtask` for category, `image_path`/`img`
for image (a path relative to `--images`, or a one-element list). `group` names an MME
perception/cognition group; `options`/`choices` (a list, or {"A": text} dict) give a multiple-choice
question's options, which may instead be written into the question as "A. ... B. ..." or "(A) ...".

Rows that cannot be scored in the chosen format are skipped and counted by reason (`Skips`), never
lost silently: a reference that is not yes/no for pope/mme, a multiple-choice answer that names no
option, a missing image file, a repeated question_id.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data.llava_rows import iter_json_rows
from ..data.open_answers import normalize_answer

FORMATS = ("pope", "mme", "mcq", "open")
ALIASES = {
    "question_id": ("question_id", "id", "qid", "index"),
    "image": ("image", "image_path", "img"),
    "question": ("question", "text", "prompt"),
    "answer": ("answer", "label", "gt_answer"),
    "category": ("category", "type", "question_type", "subtask"),
    "group": ("group",),
    "options": ("options", "choices"),
}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."  # LLaVA's ScienceQA prompt
_MARKER = re.compile(r"(?:^|(?<=[\s:]))\(?([A-Z])[.)]\s+")  # "A. ", "A) ", "(A) " after a space, colon or line start


@dataclass
class Question:
    """One benchmark question; `reference` is normalised for its format: "yes"/"no", a letter, or the answer as given."""

    question_id: str
    image: str | None  # relative to the images root; None for a text-only question
    question: str
    reference: str
    category: str
    group: str | None = None
    options: list[str] = field(default_factory=list)
    options_in_question: bool = False  # the question text already lists them


class SkipQuestion(Exception):
    """A row that cannot be scored: `reason` is the counter name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Skips:
    """Skipped rows counted by reason, with the first message of each reason (for one readable line)."""

    counts: Counter = field(default_factory=Counter)
    first: dict = field(default_factory=dict)

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        self.first.setdefault(reason, message)

    def summary(self) -> str:
        return "; ".join(f"{reason} x{n} (e.g. {self.first[reason]})" for reason, n in sorted(self.counts.items()))


def pick(row: dict, key: str):
    """The row's value under `key` or its first alias present (None when none is)."""
    return next((row[k] for k in ALIASES[key] if row.get(k) is not None), None)


def options_from_question(text: str) -> list[str]:
    """Options written into the question as "A. red B. blue" / "(A) red\\n(B) blue": the texts of markers
    A, B, C... in order, each ending at the next marker or at a line break; [] for fewer than two."""
    markers, want = [], 0
    for m in _MARKER.finditer(text):
        if want < len(LETTERS) and m.group(1) == LETTERS[want]:
            markers.append(m)
            want += 1
    if len(markers) < 2:
        return []
    ends = [m.start() for m in markers[1:]] + [len(text)]
    return [text[m.end():end].split("\n")[0].strip().rstrip(",;").strip() for m, end in zip(markers, ends)]


def option_list(value) -> list[str]:
    """`options` as given (a list, or a {"A": text} dict in letter order) -> option texts."""
    if isinstance(value, dict):
        return [str(value[k]) for k in sorted(value) if str(k).upper() in LETTERS]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise SkipQuestion("malformed_options", f"options is a {type(value).__name__}, not a list or a letter dict")


def yes_no_reference(answer) -> str:
    """A pope/mme reference as "yes"/"no" (case and punctuation ignored)."""
    norm = normalize_answer(str(answer))
    if norm not in ("yes", "no"):
        raise SkipQuestion("answer_not_yes_no", f"answer {str(answer)[:40]!r} is not yes or no")
    return norm


def letter_reference(answer, options: list[str]) -> str:
    """A multiple-choice reference as a letter: an index (ScienceQA's int), a letter ("B", "(B)", "B."), or an option's text."""
    letters = LETTERS[: len(options)]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return letters[answer]
    text = str(answer).strip()
    if (m := re.fullmatch(r"\(?([A-Za-z])[.):]?", text)) and m.group(1).upper() in letters:
        return m.group(1).upper()
    norm = normalize_answer(text)
    for letter, option in zip(letters, options):
        if norm and normalize_answer(option) == norm:
            return letter
    raise SkipQuestion("answer_not_an_option", f"answer {text[:40]!r} names none of the {len(options)} options")


def image_field(row: dict) -> str | None:
    value = pick(row, "image")
    if isinstance(value, list):
        if len(value) != 1:
            raise SkipQuestion("multi_image", f"{len(value)} images; one image per question is supported")
        value = value[0]
    if value is not None and not isinstance(value, str):
        raise SkipQuestion("malformed_row", f"image is a {type(value).__name__}, not a path")
    return value or None


def question_of(row: object, index: int, fmt: str) -> Question:
    """The `Question` of one parsed row in format `fmt`, or SkipQuestion."""
    if not isinstance(row, dict):
        raise SkipQuestion("malformed_row", f"row is a {type(row).__name__}, not an object")
    text, answer = pick(row, "question"), pick(row, "answer")
    if not isinstance(text, str) or not text.strip():
        raise SkipQuestion("no_question", "no question text (question / text / prompt)")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise SkipQuestion("no_answer", "no reference answer (answer / label / gt_answer)")
    if isinstance(answer, (list, dict)):
        raise SkipQuestion("malformed_answer", f"answer is a {type(answer).__name__}; one reference answer per question is scored")
    qid = pick(row, "question_id")
    options, in_question = [], False
    if fmt == "mcq":
        given = pick(row, "options")
        parsed = options_from_question(text)
        options, in_question = (option_list(given), bool(parsed)) if given is not None else (parsed, True)
        if len(options) < 2:
            raise SkipQuestion("no_options", "fewer than two options (give options: [...] or write 'A. ... B. ...' into the question)")
        reference = letter_reference(answer, options)
    elif fmt in ("pope", "mme"):
        reference = yes_no_reference(answer)
    else:
        reference = str(answer).strip()
    group = pick(row, "group")
    return Question(str(qid) if qid is not None else f"row-{index}", image_field(row), text.strip(), reference,
                    str(pick(row, "category") or "all"), None if group is None else str(group), options, in_question)


def read_questions(path: str | Path, fmt: str, images: str | Path | None) -> tuple[list[Question], Skips]:
    """Every scorable question of the file, in file order, and the skipped rows by reason.

    Image paths are checked against `images` (default: the question file's folder) here, so a wrong
    root shows before the model loads."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no question file at {path} (a JSONL of question_id, image, question, answer)")
    root = Path(images) if images is not None else path.parent
    questions, skips, seen = [], Skips(), set()
    for index, value, error in iter_json_rows(path):
        try:
            if error is not None:
                raise SkipQuestion("malformed_json", error)
            q = question_of(value, index, fmt)
            if q.question_id in seen:
                raise SkipQuestion("duplicate_question_id", f"question_id {q.question_id} was seen before")
            if q.image is not None and not (root / q.image).is_file():
                raise SkipQuestion("missing_image", f"no file {root / q.image}: is --images the folder these paths are relative to?")
        except SkipQuestion as skip:
            skips.add(skip.reason, f"row {index}: {skip}")
            continue
        seen.add(q.question_id)
        questions.append(q)
    return questions, skips


def prompt_text(q: Question, suffix: str = "") -> str:
    """What the model is asked: the question, its options as "A. ..." lines when they came as a list, then `suffix`."""
    text = q.question
    if q.options and not q.options_in_question:
        text += "\n" + "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, q.options))
    return f"{text}\n{suffix}" if suffix else text


def question_meta(q: Question, suffix: str = "") -> dict:
    """The sample meta `generation.prompt_for` and `open_answers.prediction_record` read (an imported VQA row's shape)."""
    return {
        "task": "vqa",
        "conversations": [{"role": "user", "text": prompt_text(q, suffix)}, {"role": "assistant", "text": q.reference}],
        "question_types": [],
        "attributes": {},
        "image_id": q.image or "<blank>",
        "source_id": q.question_id,
        "text_only": q.image is None,
    }
