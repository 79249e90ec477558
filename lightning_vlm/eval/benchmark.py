"""`lightning-vlm eval`: answer a benchmark's question file with a trained VLM and score it as the benchmark does.

    lightning-vlm eval --ckpt runs/real_single/last.ckpt --questions pope.jsonl --images /data/coco/val2014 \\
        --format pope --out runs/real_single/pope

The question file is read by `benchmark_formats` (a JSONL of question_id, image, question, answer,
category; bad rows skipped and counted), every question is answered greedily by the model's own
generation (`generation.prompt_for` + `VLM.generate_text`, the image fitted into the input
encoder's square as the LLaVA importer stores it), and the answers are scored by
`benchmark_scores` (pope | mme | mcq | open). Written to `--out`:

- `predictions.jsonl`: one answer per question in LLaVA `model_vqa` / lmms-eval form
  (`open_answers.prediction_record`), its metadata with the category, the parsed answer and whether it is right;
- `scores.json`: the scores per category and pooled (mme: per group too), the skipped rows by
  reason and the settings.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import torch

from ..data.open_answers import prediction_record, write_predictions
from ..models.generation import prompt_for
from .benchmark_formats import FORMATS, MCQ_SUFFIX, Question, Skips, question_meta, read_questions
from .benchmark_scores import format_table, judge, score_rows


def load_image(path: Path, size: int) -> torch.Tensor:
    """[3, size, size] in [0, 1]: the image fitted into a white square, as `data.llava.square_png` stores imported images."""
    import numpy as np
    from PIL import Image

    from ..data.llava import square_png

    with Image.open(io.BytesIO(square_png(path, size))) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255)  # [H, W, 3] -> [3, H, W]


def batch_images(questions: list[Question], root: Path, size: int, skips: Skips) -> tuple[list[Question], torch.Tensor | None]:
    """The questions whose image reads (an unreadable one is skipped and counted) and their images [B, 3, S, S]."""
    kept, images = [], []
    for q in questions:
        if q.image is None:
            kept.append(q)
            images.append(torch.ones(3, size, size))  # text-only: no slot reads it
            continue
        try:
            images.append(load_image(root / q.image, size))
        except Exception as exn:  # PIL raises many types for broken files
            skips.add("unreadable_image", f"question {q.question_id}: cannot read {root / q.image} ({type(exn).__name__})")
            continue
        kept.append(q)
    return kept, (torch.stack(images) if images else None)


@torch.no_grad()
def answer_questions(model, questions: list[Question], root: Path, suffix: str = "", max_new_tokens: int = 32,
                     batch_size: int = 8, skips: Skips | None = None) -> list[tuple[Question, str]]:
    """(question, greedy answer text) of every question whose image reads, in file order."""
    from tqdm import tqdm

    skips = skips if skips is not None else Skips()
    size, answered = model.input_encoder.image_size, []
    for start in tqdm(range(0, len(questions), batch_size), desc="answering", unit="batch", disable=None):
        chunk, images = batch_images(questions[start: start + batch_size], root, size, skips)
        if not chunk:
            continue
        prompts = [prompt_for(model, question_meta(q, suffix)) for q in chunk]
        outs = model.generate_text(prompts, images.to(model.device), max_new_tokens=max_new_tokens, temperature=0.0)
        answered += [(q, model.tokenizer.decode(ids).strip()) for q, ids in zip(chunk, outs)]
    return answered


def prediction_records(fmt: str, answered: list[tuple[Question, str]], judged: list[dict], model_id: str, suffix: str) -> list[dict]:
    """LLaVA `model_vqa` answer records, their metadata extended with the category and the judgement."""
    records = []
    for (q, text), j in zip(answered, judged):
        record = prediction_record(question_meta(q, suffix), text, model_id)
        record["metadata"].update({"category": q.category, "format": fmt, "parsed": j["parsed"], "correct": j["correct"]})
        records.append(record)
    return records


def load_questions(path: str | Path, fmt: str, images: str | Path | None = None, limit: int | None = None) -> tuple[list[Question], Skips]:
    """The scorable questions (the first `limit`) and the skipped rows; ValueError when none is left."""
    questions, skips = read_questions(path, fmt, images)
    questions = questions[:limit] if limit else questions
    if not questions:
        raise ValueError(f"no question of {path} can be scored as {fmt}: {skips.summary() or 'the file is empty'}")
    return questions, skips


def run_benchmark(model, questions: list[Question], skips: Skips, fmt: str, out: str | Path, root: str | Path,
                  model_id: str = "vlm", suffix: str | None = None, max_new_tokens: int = 32, batch_size: int = 8) -> dict:
    """Answers, scores and writes one benchmark (see the module doc); returns the content of scores.json."""
    suffix = (MCQ_SUFFIX if fmt == "mcq" else "") if suffix is None else suffix
    answered = answer_questions(model, questions, Path(root), suffix, max_new_tokens, batch_size, skips)
    judged = [judge(fmt, q, text) for q, text in answered]
    out = Path(out)
    write_predictions(out / "predictions.jsonl", prediction_records(fmt, answered, judged, model_id, suffix))
    result = {"format": fmt, "model_id": model_id, "answered": len(answered), "skipped": dict(sorted(skips.counts.items())),
              "settings": {"decoding": "greedy", "max_new_tokens": max_new_tokens, "suffix": suffix},
              "scores": score_rows(fmt, [(q, j) for (q, _), j in zip(answered, judged)])}
    (out / "scores.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-vlm eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a VLM checkpoint written by `lightning-vlm fit`")
    parser.add_argument("--questions", required=True, help="JSONL (or JSON array) of question_id, image, question, answer[, category]")
    parser.add_argument("--images", help="the folder the rows' image paths are relative to (default: the question file's folder)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="how answers are parsed and scored")
    parser.add_argument("--out", required=True, help="folder for predictions.jsonl and scores.json")
    parser.add_argument("--model-id", help="model_id of the prediction records (default: <checkpoint folder>/<checkpoint name>)")
    parser.add_argument("--suffix", help=f"text added on a new line after every question (default: for mcq {MCQ_SUFFIX!r}, else none)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="answer only the first N questions (a quick check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda when available")
    args = parser.parse_args(argv)
    if args.images is not None and not Path(args.images).is_dir():
        print(f"lightning-vlm eval: error: --images {args.images} is not a folder (give the root the rows' image paths are relative to)",
              file=sys.stderr)
        return 2
    ckpt = Path(args.ckpt)
    root = Path(args.images) if args.images is not None else Path(args.questions).parent
    try:
        questions, skips = load_questions(args.questions, args.format, root, args.limit)  # before the model loads
        from ..models.checkpoints import load_vlm

        model = load_vlm(ckpt).model.eval().to(args.device)
        result = run_benchmark(model, questions, skips, args.format, args.out, root, args.model_id or f"{ckpt.parent.name}/{ckpt.stem}",
                               args.suffix, args.max_new_tokens, args.batch_size)
    except (FileNotFoundError, ValueError, ImportError) as exn:
        print(f"lightning-vlm eval: error: {exn}", file=sys.stderr)
        return 2
    if skips.counts:
        print(f"skipped {sum(skips.counts.values())} question(s): {skips.summary()}", file=sys.stderr)
    print(f"{args.format} on {args.questions}: {result['answered']} answered by {result['model_id']}")
    print(format_table(args.format, result["scores"]))
    print(f"predictions written to {Path(args.out) / 'predictions.jsonl'}, scores to {Path(args.out) / 'scores.json'}")
    return 0
