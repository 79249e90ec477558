"""The generic evaluator on hand-made batches: which outputs it generates, what it hands the
dataset's scorer, padding rows left out, and its own metric (prompt gain).

The smart-watch scoring rules themselves are tested in test_scorer.py."""

import pytest
import torch
from tiny_encoders import export_tiny_encoders

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.eval.evaluator import GenerationSettings, VLMEvaluator, prompt_gain
from lightning_vlm.models.generation import prompt_for
from lightning_vlm.training import UnifiedVLM


class RecordingScorer(torch.nn.Module):
    """A dataset scorer that records what it is given and scores 1 per answer, the mean pixel per image."""

    metric_names = ("vqa/answered", "gen/mean_pixel")

    def __init__(self, turns=None):
        super().__init__()
        self.answers, self.images, self._turns = [], [], turns
        if turns is not None:
            self.turns = turns

    def score_text(self, meta, text, turn):
        self.answers.append((meta["image_id"], turn, text))
        return [("vqa/answered", 1.0)]

    def score_images(self, images, truth, metas):
        self.images.append((images.shape, truth.shape, [m["image_id"] for m in metas]))
        return [("gen/mean_pixel", float(image.mean())) for image in images]

    def compute(self):
        return {"gen/dataset_level": 7.0}


@pytest.fixture(scope="module")
def model_and_batch(tiny_data, tmp_path_factory):
    enc = export_tiny_encoders(tmp_path_factory.mktemp("enc"), image_size=32)
    torch.manual_seed(0)
    module = UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(enc["vq"]), backbone="tiny",
                        backbone_overrides={"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "mlp_hidden": 64})
    dm = VLMDataModule(str(tiny_data), batch_size=9, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    batch = next(iter(dm.train_dataloader()))
    padding = torch.zeros(len(batch["meta"]), dtype=torch.bool)
    padding[-1] = True  # a DDP balance copy: never scored
    return module.model.eval(), {**batch, "is_padding": padding}


def test_every_question_is_answered_once_and_padding_is_skipped(model_and_batch):
    model, batch = model_and_batch
    scorer = RecordingScorer()
    evaluator = VLMEvaluator(scorer, GenerationSettings(max_new_tokens=3))
    evaluator.update(model, batch, torch.Generator().manual_seed(0), keep_examples=2)
    real = [m for m, pad in zip(batch["meta"], batch["is_padding"]) if not pad]
    expected = [(m["image_id"], t) for m in real if m["task"] != "generation"
                for t in (range(len(m["question_types"])) if m["task"] == "vqa" else [0])]
    assert [(i, t) for i, t, _ in scorer.answers] == expected and expected
    first = next(i for i, m in enumerate(batch["meta"]) if m["task"] != "generation")
    direct = model.generate_text([prompt_for(model, batch["meta"][first], 0)], batch["images"][[first]], max_new_tokens=3)
    assert scorer.answers[0][2] == model.tokenizer.decode(direct[0])  # the answer the model gives on its own
    generated = [m["image_id"] for m in real if m["task"] == "generation"]
    assert scorer.images == [(torch.Size([len(generated), 3, 32, 32]), torch.Size([len(generated), 3, 32, 32]), generated)]
    assert len(evaluator.examples) == 2 and evaluator.last_images[0].shape[0] == len(generated)
    metrics = evaluator.compute()
    assert metrics["vqa/answered"] == 1.0 and metrics["gen/dataset_level"] == 7.0
    rows = [i for i, m in enumerate(batch["meta"]) if m["task"] == "generation" and not batch["is_padding"][i]]
    assert metrics["gen/prompt_gain"] == pytest.approx(prompt_gain(model, batch, rows))


def test_the_scorer_chooses_which_turns_to_answer(model_and_batch):
    model, batch = model_and_batch
    scorer = RecordingScorer(turns=lambda meta: [0] if meta["task"] == "vqa" else [])
    VLMEvaluator(scorer, GenerationSettings(max_new_tokens=2)).update(model, batch)
    vqa = [m["image_id"] for m, pad in zip(batch["meta"], batch["is_padding"]) if m["task"] == "vqa" and not pad]
    assert [(i, t) for i, t, _ in scorer.answers] == [(i, 0) for i in vqa]


def test_metrics_nothing_contributed_to_are_left_out(model_and_batch):
    model, batch = model_and_batch
    understanding_only = {k: v for k, v in batch.items()}
    understanding_only["is_padding"] = torch.tensor([m["task"] == "generation" for m in batch["meta"]])
    evaluator = VLMEvaluator(RecordingScorer(), GenerationSettings(max_new_tokens=2))
    evaluator.update(model, understanding_only)
    assert set(evaluator.compute()) == {"vqa/answered", "gen/dataset_level"}
