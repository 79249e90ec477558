r"""The reference study's VQA scoring protocol, rule for rule (REFERENCE.md, "Scoring").

Findings are reported with these rules so that our numbers compare with the study's.
They differ from the lenient scorer in `scoring.py` on purpose:

- only the first question of a VQA conversation counts (the caller picks it);
- the question type comes from the ground-truth answer string, not from the sample's
  metadata, and both position types are one type, "position";
- a time needs two digits per field (`(\d{2}):(\d{2}):(\d{2})`, first match,
  no word boundary, so "123:45:678" reads as 23:45:67);
- a battery level needs `%` right after the number (`\b(100|[1-9]\d?|0)%`: "5 %" and
  "1000%" do not match);
- weather and positions are a case-sensitive substring test of the true value.

Scores of a wrong-format answer are 0. Time errors wrap (hours mod 12, minutes and
seconds mod 60), so the numeric formulas are the shared ones of `scoring.py`.
"""

from __future__ import annotations

import re

from .scoring import battery_score, time_score
from .world import WEATHERS

REFERENCE_TYPES = ("time", "weather", "battery", "position")
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})")
_BATTERY = re.compile(r"\b(100|[1-9]\d?|0)%")


def reference_type(truth: str) -> str:
    """The question type a ground-truth answer string implies, tested in the reference's order."""
    if ":" in truth:
        return "time"
    if any(word in truth for word in WEATHERS):
        return "weather"
    if "-" in truth:
        return "position"
    if "%" in truth:
        return "battery"
    raise ValueError(f"cannot tell the question type of the ground truth {truth!r}: it holds no ':', weather word, '-' or '%'")


def _time(text: str) -> tuple[int, int, int] | None:
    m = _TIME.search(text)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def _battery(text: str) -> int | None:
    m = _BATTERY.search(text)
    return None if m is None else int(m[1])


def reference_score(answer: str, truth: str) -> tuple[str, float]:
    """(question type, score in [0, 1]) of one answer against its ground-truth answer string."""
    qtype = reference_type(truth)
    if qtype == "time":
        pred, true = _time(answer), _time(truth)
        if true is None:
            raise ValueError(f"time ground truth {truth!r} holds no HH:MM:SS")
        return qtype, 0.0 if pred is None else time_score(*pred, *true)
    if qtype == "battery":
        pred, true = _battery(answer), _battery(truth)
        if true is None:
            raise ValueError(f"battery ground truth {truth!r} holds no N%")
        return qtype, 0.0 if pred is None else battery_score(pred, true)
    return qtype, float(truth in answer)
