"""`text_task_weights`: each task's tokens counted w times in the text loss (a VQA answer is short)."""

import pytest
import torch
from test_vlm import make

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.data.tasks import TASKS


@pytest.fixture(scope="module")
def batch(tiny_data):
    dm = VLMDataModule(str(tiny_data), batch_size=12, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    return next(iter(dm.train_dataloader()))


def test_the_test_batch_holds_vqa_and_caption_rows(batch):
    """What the weighting tests below rely on."""
    assert {TASKS.index("vqa"), TASKS.index("caption")} <= set(batch["task"].tolist())


def weighted_mean_of_task_losses(losses: dict, batch: dict, weights: dict) -> torch.Tensor:
    """The text loss a token-weighted mean should give, rebuilt from the per-task means and token counts."""
    counts = {t: int(batch["loss_mask"][:, 1:][batch["task"] == TASKS.index(t)].sum()) for t in TASKS}
    total = sum(weights.get(t, 1.0) * counts[t] * losses[f"text/{t}"] for t in TASKS if counts[t])
    return total / sum(weights.get(t, 1.0) * counts[t] for t in TASKS if counts[t])


def test_no_weights_is_the_plain_token_mean(tiny_data, encoders, batch):
    losses = make("discrete", tiny_data, encoders, "vq", "vq")(batch)
    torch.testing.assert_close(losses["text"], weighted_mean_of_task_losses(losses, batch, {}))


def test_a_vqa_weight_counts_each_vqa_token_that_many_times(tiny_data, encoders, batch):
    weights = {"vqa": 3.0}
    losses = make("discrete", tiny_data, encoders, "vq", "vq", text_task_weights=weights)(batch)
    torch.testing.assert_close(losses["text"], weighted_mean_of_task_losses(losses, batch, weights))


def test_the_weights_leave_the_per_task_losses_unweighted(tiny_data, encoders, batch):
    plain = make("discrete", tiny_data, encoders, "vq", "vq")(batch)
    weighted = make("discrete", tiny_data, encoders, "vq", "vq", text_task_weights={"vqa": 3.0})(batch)
    torch.testing.assert_close(weighted["text/vqa"], plain["text/vqa"])


def test_the_weights_survive_split_by_length(tiny_data, encoders, batch):
    weights = {"caption": 0.5}
    whole = make("discrete", tiny_data, encoders, "vq", "vq", text_task_weights=weights)(batch)
    split = make("discrete", tiny_data, encoders, "vq", "vq", text_task_weights=weights, split_by_length=True)(batch)
    torch.testing.assert_close(split["text"], whole["text"], rtol=1e-5, atol=1e-6)


def test_an_unknown_task_fails_naming_the_known_ones(tiny_data, encoders):
    with pytest.raises(ValueError, match="unknown task.*'vqa_answers'.*known: vqa, caption, generation"):
        make("discrete", tiny_data, encoders, "vq", "vq", text_task_weights={"vqa_answers": 2.0})


def test_the_weights_stay_out_of_the_state_dict(tiny_data, encoders):
    model = make("discrete", tiny_data, encoders, "vq", "vq", text_task_weights={"vqa": 2.0})
    assert "text_task_weights" not in model.state_dict()
