"""Scores of understanding benchmarks, computed as POPE, MME and ScienceQA-IMG report them.

Answer parsing (each benchmark's own rule, so numbers compare with published ones):

- pope: POPE's `evaluate.py` (and LLaVA's `eval_pope.py`): keep the text before the first ".",
  drop commas, split into words on white space; the answer is "no" when a word is exactly
  "No", "no" or "not", else "yes" (so "NO" and an empty answer count as yes, as there).
  POPE splits on single spaces; white space here, so "No\\nThere is..." reads as no.
- mme: MME's `calculation.py`: lower-cased and stripped, "yes"/"no" as is, else "yes" if the
  first four characters contain "yes", else "no" if they contain "no", else "other" (always wrong).
- mcq: the first rule that gives a letter of the question's options (A.. for n options):
  1. the whole answer is one letter: "B", "b", "(B)", "B.";
  2. the whole answer is an option's text (normalised as `open_answers.normalize_answer`);
  3. the first standalone capital letter among the options' letters ("B. dog", "The answer is C",
     "(D)"), where an "A" that opens a sentence and is followed by a lower-case word ("A cat is...")
     is the article, not a letter;
  4. an option's text inside the answer as whole words (the longest such option).
  No letter: the answer is wrong and counted under `unparsed`.
- open: `open_answers.score_open_answer` (exact and contains after VQAv2 normalisation); references
  over `MAX_REFERENCE_WORDS` words are counted under `unscored`, not scored.

Metrics: pope: accuracy, precision, recall, F1 ("yes" is the positive class; 0 where a
denominator is 0) and yes-ratio, per category and pooled; mme: per subtask `acc` (questions right),
`acc_plus` (images with every question right) and score = (acc + acc_plus) x 100, and per group
(perception / cognition, from the row's `group` or MME's subtask names) the sum of its scores,
and overall the sum of every subtask's score (MME's total; acc and acc_plus pooled);
mcq: accuracy per category and pooled; open: exact and contains means.
"""

from __future__ import annotations

import re
from collections import defaultdict

from ..data.open_answers import normalize_answer, score_open_answer, short_enough
from .benchmark_formats import LETTERS, Question

MME_GROUPS = {
    "perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "ocr"),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")


# ---- answer parsing ----------------------------------------------------------------------
def pope_yes_no(text: str) -> str:
    """POPE's rule: "no" when the first sentence has the word No / no / not, else "yes"."""
    words = text.split(".")[0].replace(",", "").split()
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def mme_yes_no(text: str) -> str:
    """MME's rule: "yes" / "no" / "other" from the whole answer or its first four characters."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def _is_article(text: str, start: int) -> bool:
    """An "A" at `start` that opens a sentence and is followed by a lower-case word: English, not an option."""
    before = text[:start].rstrip()
    return (not before or before[-1] in ".!?:\n") and re.match(r"A\s+[a-z]", text[start:]) is not None


def mcq_letter(text: str, options: list[str]) -> str | None:
    """The option letter an answer picks (rules 1-4 of the module doc), or None."""
    letters = LETTERS[: len(options)]
    stripped = text.strip()
    if (m := re.fullmatch(r"\(?([A-Za-z])[.):]?", stripped)) and m.group(1).upper() in letters:
        return m.group(1).upper()
    norm = normalize_answer(stripped)
    texts = [normalize_answer(o) for o in options]
    if norm and norm in texts:
        return letters[texts.index(norm)]
    for m in _STANDALONE.finditer(stripped):
        if m.group(1) in letters and not (m.group(1) == "A" and _is_article(stripped, m.start())):
            return m.group(1)
    found = [(len(t), letter) for letter, t in zip(letters, texts) if t and f" {t} " in f" {norm} "]
    return max(found)[1] if found else None


def judge(fmt: str, q: Question, text: str) -> dict:
    """One answer's parsed form and correctness (None: not scored), plus open's two scores."""
    if fmt == "pope":
        parsed = pope_yes_no(text)
    elif fmt == "mme":
        parsed = mme_yes_no(text)
    elif fmt == "mcq":
        parsed = mcq_letter(text, q.options)
    else:
        if not short_enough(q.reference):
            return {"parsed": normalize_answer(text), "correct": None}
        scores = score_open_answer(text, q.reference)
        return {"parsed": normalize_answer(text), "correct": bool(scores["open/contains"]),
                "exact": scores["open/exact"], "contains": scores["open/contains"]}
    return {"parsed": parsed, "correct": parsed == q.reference}


# ---- metrics -------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def pope_metrics(rows: list[tuple[Question, dict]]) -> dict:
    """Accuracy, precision, recall, F1 (positive class "yes") and yes-ratio of judged yes/no answers."""
    pairs = [(q.reference == "yes", j["parsed"] == "yes") for q, j in rows]
    tp = sum(t and p for t, p in pairs)
    fp = sum(p and not t for t, p in pairs)
    fn = sum(t and not p for t, p in pairs)
    tn = len(pairs) - tp - fp - fn
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"n": len(pairs), "accuracy": _ratio(tp + tn, len(pairs)), "precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall), "yes_ratio": _ratio(tp + fp, len(pairs)),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def mme_metrics(rows: list[tuple[Question, dict]]) -> dict:
    """acc, acc_plus (images whose every question is right) and score = (acc + acc_plus) x 100 of one subtask."""
    images: dict[tuple, list[bool]] = defaultdict(list)
    for q, j in rows:
        images[(q.category, q.image or q.question_id)].append(j["correct"])  # an image per subtask, as MME pairs them
    acc = _ratio(sum(j["correct"] for _, j in rows), len(rows))
    acc_plus = _ratio(sum(all(v) for v in images.values()), len(images))
    return {"n": len(rows), "images": len(images), "acc": acc, "acc_plus": acc_plus, "score": 100 * (acc + acc_plus),
            "unpaired_images": sum(len(v) != 2 for v in images.values()), "other": sum(j["parsed"] == "other" for _, j in rows)}


def mcq_metrics(rows: list[tuple[Question, dict]]) -> dict:
    return {"n": len(rows), "accuracy": _ratio(sum(j["correct"] for _, j in rows), len(rows)),
            "unparsed": sum(j["parsed"] is None for _, j in rows)}


def open_metrics(rows: list[tuple[Question, dict]]) -> dict:
    scored = [j for _, j in rows if j["correct"] is not None]
    return {"n": len(scored), "exact": _ratio(sum(j["exact"] for j in scored), len(scored)),
            "contains": _ratio(sum(j["contains"] for j in scored), len(scored)), "unscored": len(rows) - len(scored)}


METRICS = {"pope": pope_metrics, "mme": mme_metrics, "mcq": mcq_metrics, "open": open_metrics}


def mme_group(q: Question) -> str | None:
    """The row's `group`, else the MME group its subtask name belongs to, else None."""
    if q.group:
        return q.group.lower()
    return next((g for g, names in MME_GROUPS.items() if q.category.lower() in names), None)


def score_rows(fmt: str, rows: list[tuple[Question, dict]]) -> dict:
    """{"overall": metrics, "categories": {category: metrics}} (+ mme's "groups": {group: summed score})."""
    by_category: dict[str, list] = defaultdict(list)
    for q, j in rows:
        by_category[q.category].append((q, j))
    categories = {c: METRICS[fmt](r) for c, r in sorted(by_category.items())}
    out = {"overall": METRICS[fmt](rows), "categories": categories}
    if fmt == "mme":
        groups: dict[str, float] = defaultdict(float)
        for c, r in by_category.items():
            if (g := mme_group(r[0][0])) is not None:
                groups[g] += categories[c]["score"]
        out["groups"] = dict(sorted(groups.items()))
        out["overall"]["score"] = sum(m["score"] for m in categories.values())  # MME's total: subtask scores summed
    return out


def score_answers(fmt: str, questions: list[Question], answers: list[str]) -> dict:
    """The scores of `answers` (the model's texts, in question order) in format `fmt`."""
    return score_rows(fmt, [(q, judge(fmt, q, a)) for q, a in zip(questions, answers, strict=True)])


# ---- table ---------------------------------------------------------------------------------
COLUMNS = {"pope": ("n", "accuracy", "precision", "recall", "f1", "yes_ratio"),
           "mme": ("n", "images", "acc", "acc_plus", "score"),
           "mcq": ("n", "accuracy", "unparsed"), "open": ("n", "exact", "contains", "unscored")}


def _cell(name: str, value) -> str:
    return f"{value:>9d}" if isinstance(value, int) else f"{value:>9.2f}" if name == "score" else f"{value:>9.4f}"


def format_table(fmt: str, scores: dict) -> str:
    """One readable table: a row per category, then the pooled row (mme: its score is the total), then mme's group sums."""
    cols = COLUMNS[fmt]
    width = max([len("category")] + [len(c) for c in scores["categories"]] + [len("overall")])
    lines = [f"{'category':<{width}} " + " ".join(f"{c:>9}" for c in cols)]
    for name, metrics in [*scores["categories"].items(), ("overall", scores["overall"])]:
        lines.append(f"{name:<{width}} " + " ".join(_cell(c, metrics[c]) for c in cols))
    for group, total in scores.get("groups", {}).items():
        lines.append(f"{group + ' score (sum)'}: {total:.2f}")
    return "\n".join(lines)
