"""`lightning-vlm eval`: benchmark question files, POPE / MME / multiple-choice / open scoring, and the command."""

import json

import pytest
import torch
from PIL import Image

from lightning_vlm.cli import main as cli_main
from lightning_vlm.eval.benchmark_formats import (
    Question,
    letter_reference,
    options_from_question,
    prompt_text,
    read_questions,
)
from lightning_vlm.eval.benchmark_scores import mcq_letter, mme_yes_no, pope_yes_no, score_answers

SIZE = 32


def q(qid, reference, category="all", image=None, options=(), group=None):
    return Question(str(qid), image, f"question {qid}?", reference, category, group, list(options))


# ---- yes/no ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, pope, mme", [
    ("Yes, there is a dog.", "yes", "yes"),
    ("No, there is no dog.", "no", "no"),
    ("There is not a dog in the image", "no", "other"),  # POPE: any word "not"; MME: only the first four characters
    ("Yes. But there is no cat.", "yes", "yes"),  # POPE reads the first sentence only
    ("NO", "yes", "no"),  # POPE's words are case-sensitive (No / no / not), MME lower-cases
    ("No\nThere is none", "no", "no"),  # split on white space, not single spaces
    ("not sure", "no", "no"),
    ("", "yes", "other"),
])
def test_yes_no_parsing_follows_each_benchmark(text, pope, mme):
    assert pope_yes_no(text) == pope and mme_yes_no(text) == mme


def test_pope_metrics_by_hand():
    """random: TP 2, FP 1, TN 1, FN 0; adversarial: TP 1, FP 0, TN 1, FN 2; pooled: TP 3, FP 1, TN 2, FN 2."""
    refs = {"random": ["yes", "yes", "no", "no"], "adversarial": ["yes", "yes", "yes", "no"]}
    answers = {"random": ["Yes.", "Yes, a dog.", "Yes", "No, there is not."],
               "adversarial": ["Yes", "No.", "There is no dog.", "No"]}
    questions, texts = [], []
    for cat in refs:
        for i, (ref, ans) in enumerate(zip(refs[cat], answers[cat])):
            questions.append(q(f"{cat}-{i}", ref, cat))
            texts.append(ans)
    scores = score_answers("pope", questions, texts)
    rnd, adv, pooled = scores["categories"]["random"], scores["categories"]["adversarial"], scores["overall"]
    assert (rnd["tp"], rnd["fp"], rnd["tn"], rnd["fn"]) == (2, 1, 1, 0)
    assert rnd["accuracy"] == 0.75 and rnd["precision"] == pytest.approx(2 / 3) and rnd["recall"] == 1.0
    assert rnd["f1"] == pytest.approx(0.8) and rnd["yes_ratio"] == 0.75
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (1, 0, 1, 2)
    assert adv["accuracy"] == 0.5 and adv["precision"] == 1.0 and adv["recall"] == pytest.approx(1 / 3)
    assert adv["f1"] == pytest.approx(0.5) and adv["yes_ratio"] == 0.25
    assert pooled["n"] == 8 and pooled["accuracy"] == 5 / 8 and pooled["precision"] == 0.75 and pooled["recall"] == 0.6
    assert pooled["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35) and pooled["yes_ratio"] == 0.5
    never_yes = score_answers("pope", [q(1, "yes"), q(2, "no")], ["No", "No"])["overall"]
    assert never_yes["precision"] == 0.0 and never_yes["f1"] == 0.0  # 0, not NaN, when nothing is predicted yes


def test_mme_acc_and_acc_plus_by_hand():
    """existence: 3 images x 2 questions, 5 of 6 right, 2 of 3 images fully right -> acc 5/6, acc+ 2/3, score 150;
    code_reasoning: 2 images, 2 of 4 right (one 'other'), 1 image fully right -> 50 + 50 = 100."""
    rows = [  # (image, reference, answer)
        ("e1.png", "yes", "Yes"), ("e1.png", "no", "No"),
        ("e2.png", "yes", "Yes, it is."), ("e2.png", "no", "no"),
        ("e3.png", "yes", "yes"), ("e3.png", "no", "Yes"),
        ("c1.png", "yes", "yes"), ("c1.png", "no", "no"),
        ("c2.png", "yes", "I think so"), ("c2.png", "no", "yes"),
    ]
    questions = [q(i, ref, "existence" if image[0] == "e" else "code_reasoning", image) for i, (image, ref, _) in enumerate(rows)]
    scores = score_answers("mme", questions, [a for _, _, a in rows])
    ex, code = scores["categories"]["existence"], scores["categories"]["code_reasoning"]
    assert ex["acc"] == pytest.approx(5 / 6) and ex["acc_plus"] == pytest.approx(2 / 3) and ex["score"] == pytest.approx(150)
    assert code["acc"] == 0.5 and code["acc_plus"] == 0.5 and code["score"] == pytest.approx(100) and code["other"] == 1
    assert scores["groups"] == pytest.approx({"perception": 150, "cognition": 100})
    assert scores["overall"]["score"] == pytest.approx(250) and ex["unpaired_images"] == 0
    named = score_answers("mme", [q(1, "yes", "my_subtask", "a.png", group="Perception"), q(2, "no", "count", "a.png")], ["yes", "yes"])
    assert named["groups"] == {"perception": 200.0}  # a row's own group wins over MME's subtask names
    assert named["overall"]["images"] == 2 and named["overall"]["unpaired_images"] == 2  # one file in two subtasks: two images


# ---- multiple choice -----------------------------------------------------------------------------
@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("b", "B"), ("(C)", "C"), ("B.", "B"),       # 1. the answer is one letter
    ("dog", "B"), ("A dog.", "B"),                          # 2. an option's text ("A" here is the article)
    ("The answer is C.", "C"), ("B. dog", "B"), ("I think B is right", "B"),  # 3. first standalone letter
    ("It is a hot dog, surely", "C"),                       # 4. the longest option inside the answer
    ("A is correct", None),                                 # a sentence-opening "A" + word reads as the article
    ("E", None), ("no idea", None),                         # not a letter of these three options
])
def test_mcq_letter_extraction(answer, letter):
    assert mcq_letter(answer, ["cat", "dog", "hot dog"]) == letter


def test_options_and_references():
    assert options_from_question("Which animal?\nA. cat\nB. dog\nC. hot dog") == ["cat", "dog", "hot dog"]
    assert options_from_question("Which one? Options: (A) cat, (B) dog\nAnswer with a letter.") == ["cat", "dog"]
    assert options_from_question("Is Vitamin C. good for you?") == []  # markers must run A, B, ...
    assert [letter_reference(a, ["cat", "dog"]) for a in (1, "B", "(b)", "Dog.")] == ["B"] * 4
    listed = Question("1", None, "Which animal?", "B", "all", None, ["cat", "dog"])
    assert prompt_text(listed, "Answer with a letter.") == "Which animal?\nA. cat\nB. dog\nAnswer with a letter."
    scores = score_answers("mcq", [listed, Question("2", None, "?", "A", "bio", None, ["x", "y"])], ["(B)", "no clue"])
    assert scores["categories"]["all"]["accuracy"] == 1.0 and scores["overall"] == {"n": 2, "accuracy": 0.5, "unparsed": 1}


def test_open_answers_fall_back_to_exact_and_contains():
    questions = [q(1, "red"), q(2, "two dogs"), q(3, "word " * 20)]
    scores = score_answers("open", questions, ["It is red.", "2 dogs", "word"])["overall"]
    assert scores == {"n": 2, "exact": 0.5, "contains": 1.0, "unscored": 1}  # the paragraph reference is not scored


# ---- question files ------------------------------------------------------------------------------
def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def make_images(folder):
    """Three images of other sizes and modes than the model's 32 x 32 square."""
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 24), "red").save(folder / "red.png")
    Image.new("RGBA", (18, 50), (0, 0, 255, 128)).save(folder / "sub" / "blue.png")
    Image.new("L", (16, 16), 90).save(folder / "gray.jpg")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_reader_accepts_aliases_and_counts_what_it_skips(tmp_path):
    images = make_images(tmp_path / "images")
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "image": "red.png", "question": "Is it red?", "answer": "Yes", "category": "color"},
        {"id": "b", "image": ["sub/blue.png"], "text": "Is it red?", "label": "no", "type": "color"},
        {"qid": "c", "img": "gray.jpg", "prompt": "Is it gray?", "gt_answer": "yes."},
        {"question_id": 1, "image": "red.png", "question": "Again?", "answer": "yes"},
        {"question_id": 4, "image": "nope.png", "question": "Where?", "answer": "no"},
        {"question_id": 5, "image": "red.png", "question": "Colour?", "answer": "red"},
        {"question_id": 6, "image": "red.png", "answer": "yes"},
        {"question_id": 7, "image": "red.png", "question": "Red?", "answer": ["yes", "no"]},
        "{not json",
    ])
    questions, skips = read_questions(path, "pope", images)
    assert [(x.question_id, x.image, x.reference, x.category) for x in questions] == [
        ("1", "red.png", "yes", "color"), ("b", "sub/blue.png", "no", "color"), ("c", "gray.jpg", "yes", "all")]
    assert dict(skips.counts) == {"duplicate_question_id": 1, "missing_image": 1, "answer_not_yes_no": 1, "no_question": 1,
                                  "malformed_answer": 1, "malformed_json": 1}
    assert "--images" in skips.first["missing_image"]
    as_open, open_skips = read_questions(path, "open", images)
    assert len(as_open) == 4 and "answer_not_yes_no" not in open_skips.counts  # "red" is a fine open answer


# ---- the command, end to end ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny VLM saved as `lightning-vlm fit` saves one (what `load_vlm` reads)."""
    import lightning
    from tiny_encoders import export_tiny_encoders

    from lightning_vlm.data.tokenizer import train_tokenizer
    from lightning_vlm.training import UnifiedVLM

    folder = tmp_path_factory.mktemp("vlm")
    texts = ["Is there a red square in the image?", "Yes", "No", "Which colour is it? A. red B. blue"] * 20
    train_tokenizer(texts, 300).save(str(folder / "tokenizer.json"))
    enc = export_tiny_encoders(folder, image_size=SIZE)
    torch.manual_seed(0)
    module = UnifiedVLM(tokenizer_path=str(folder / "tokenizer.json"), input_encoder=str(enc["vq"]), backbone="tiny",
                        backbone_overrides={"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64})
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)  # names the class, as a fit's checkpoint does
    torch.save(checkpoint, folder / "last.ckpt")
    return folder / "last.ckpt"


def run_eval(capsys, *args):
    with pytest.raises(SystemExit) as done:
        cli_main(["eval", *args])
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_eval_command_writes_predictions_and_scores(tiny_checkpoint, tmp_path, capsys):
    """Every readable question is answered and written in model_vqa form; scores.json is what the scorer
    gives the written answers; the missing and the unreadable image are skipped and counted."""
    images = make_images(tmp_path / "images")
    questions = write_jsonl(tmp_path / "pope.jsonl", [
        {"question_id": "q1", "image": "red.png", "text": "Is there a red square in the image?", "label": "yes", "category": "random"},
        {"question_id": "q2", "image": "sub/blue.png", "text": "Is there a red square in the image?", "label": "no", "category": "random"},
        {"question_id": "q3", "image": "gray.jpg", "text": "Is there a red square in the image?", "label": "no", "category": "popular"},
        {"question_id": "q4", "image": "red.png", "text": "<image>\nIs it red?", "label": "yes", "category": "popular"},
        {"question_id": "q5", "image": "gone.png", "text": "Is it there?", "label": "yes", "category": "popular"},
        {"question_id": "q6", "image": "broken.png", "text": "Is it there?", "label": "yes", "category": "popular"},
    ])
    out = tmp_path / "out"
    code, printed, err = run_eval(capsys, "--ckpt", str(tiny_checkpoint), "--questions", str(questions), "--images", str(images),
                                  "--format", "pope", "--out", str(out), "--max-new-tokens", "3", "--batch-size", "3")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in records] == ["q1", "q2", "q3", "q4"]
    assert all(set(r) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for r in records)
    assert records[3]["prompt"] == "Is it red?" and records[0]["model_id"] == f"{tiny_checkpoint.parent.name}/last"
    assert [r["metadata"]["category"] for r in records] == ["random", "random", "popular", "popular"]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["skipped"] == {"missing_image": 1, "unreadable_image": 1} and scores["answered"] == 4
    by_id = {x.question_id: x for x in read_questions(questions, "pope", images)[0]}
    assert scores["scores"] == score_answers("pope", [by_id[r["question_id"]] for r in records], [r["text"] for r in records])
    assert "random" in printed and "overall" in printed and "f1" in printed
    assert "missing_image x1" in err and "unreadable_image x1" in err


def test_eval_command_mcq_and_a_wrong_images_root(tiny_checkpoint, tmp_path, capsys):
    images = make_images(tmp_path / "images")
    questions = write_jsonl(tmp_path / "mcq.jsonl", [
        {"question_id": 1, "image": "red.png", "question": "Which colour is it?", "options": ["red", "blue"], "answer": 0},
        {"question_id": 2, "image": "sub/blue.png", "question": "Which colour is it? A. red B. blue", "answer": "B"},
    ])
    out = tmp_path / "out"
    code, printed, err = run_eval(capsys, "--ckpt", str(tiny_checkpoint), "--questions", str(questions), "--images", str(images),
                                  "--format", "mcq", "--out", str(out), "--max-new-tokens", "2")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert records[0]["prompt"].startswith("Which colour is it?\nA. red\nB. blue\nAnswer with the option's letter")
    assert [r["metadata"]["reference"] for r in records] == ["A", "B"]
    assert json.loads((out / "scores.json").read_text())["scores"]["overall"]["n"] == 2
    code, _, err = run_eval(capsys, "--ckpt", str(tiny_checkpoint), "--questions", str(questions), "--images", str(tmp_path),
                            "--format", "mcq", "--out", str(out))
    assert code == 2 and "missing_image x2" in err and "--images" in err  # nothing left to score: one line naming the fix
