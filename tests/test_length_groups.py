"""Two length groups per batch (`models.length_groups`): less padding, the same losses and gradients."""

import pytest
import torch
from test_vlm import make

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.models.length_groups import length_groups, row_lengths, take_rows


@pytest.fixture(scope="module")
def batch(tiny_data):
    """A mixed batch of the tiny data cut down to its 2 longest and 4 shortest rows: two length modes."""
    dm = VLMDataModule(str(tiny_data), batch_size=12, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    full = next(iter(dm.train_dataloader()))
    order = row_lengths(full).argsort()
    return take_rows(full, torch.cat([order[:4], order[-2:]]).sort().values)


def test_a_bimodal_batch_is_cut_between_its_short_and_long_rows():
    short, long = length_groups(torch.tensor([50, 140, 48, 52, 139, 51]))
    assert short.tolist() == [0, 2, 3, 5]
    assert long.tolist() == [1, 4]


def test_rows_of_like_length_stay_one_group():
    assert len(length_groups(torch.tensor([130, 140, 128, 135]))) == 1


def test_one_row_is_one_group():
    assert len(length_groups(torch.tensor([7]))) == 1


def test_row_length_counts_up_to_the_last_real_token():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert row_lengths({"attention_mask": mask}).tolist() == [3, 5]


def test_taken_rows_are_trimmed_to_their_longest(batch):
    rows = length_groups(row_lengths(batch))[0]
    part = take_rows(batch, rows)
    assert part["input_ids"].shape[1] == int(row_lengths(batch)[rows].max())


def test_taken_rows_keep_their_per_sample_lists(batch):
    rows = length_groups(row_lengths(batch))[0]
    assert take_rows(batch, rows)["keys"] == [batch["keys"][i] for i in rows.tolist()]


def test_the_test_batch_splits_in_two(batch):
    """What the equality tests below rely on."""
    assert len(length_groups(row_lengths(batch))) == 2


def test_the_test_batch_has_output_images(batch):
    assert batch["image_out_mask"].any()


@pytest.mark.parametrize("head,encoder", [("discrete", "vq"), ("regression", "semantic")])
def test_split_losses_equal_one_batch_losses(head, encoder, tiny_data, encoders, batch):
    whole = make(head, tiny_data, encoders, encoder, encoder)(batch)
    split = make(head, tiny_data, encoders, encoder, encoder, split_by_length=True)(batch)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)


def test_split_gradients_equal_one_batch_gradients(tiny_data, encoders, batch):
    grads = []
    for split in (False, True):
        model = make("discrete", tiny_data, encoders, "vq", "vq", split_by_length=split)
        model(batch)["total"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)
