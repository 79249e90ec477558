"""`discrete` head with `code_smoothing`: part of each target goes to the codes near the true one."""

import pytest
import torch
import torch.nn.functional as F
from tiny_encoders import tiny_encoders

from lightning_vlm.encoders.grouped import GroupedTokens
from lightning_vlm.heads.discrete import DiscreteHead

DIM = 16


@pytest.fixture(scope="module")
def vq():
    torch.manual_seed(0)
    return tiny_encoders()["vq"]


def codebook(head):
    return F.normalize(head.codes_from_indices(torch.arange(head.codebook_size)[None])[0], dim=-1)


def test_no_smoothing_is_plain_cross_entropy(vq):
    head = DiscreteHead(DIM, vq)
    h, idx = torch.randn(6, DIM), torch.randint(head.codebook_size, (6,))
    torch.testing.assert_close(head.loss(h, None, idx), F.cross_entropy(head(h), idx))


def test_soft_targets_sum_to_one(vq):
    head = DiscreteHead(DIM, vq, code_smoothing=0.2)
    torch.testing.assert_close(head.soft_targets(torch.arange(5)).sum(-1), torch.ones(5))


def test_the_true_code_keeps_the_most_mass(vq):
    head = DiscreteHead(DIM, vq, code_smoothing=0.2)
    assert torch.equal(head.soft_targets(torch.arange(5)).argmax(-1), torch.arange(5))


def test_a_near_miss_costs_less_than_a_far_one(vq):
    """Logits sure of the code nearest the target lose less than logits sure of the farthest code."""
    head = DiscreteHead(DIM, vq, code_smoothing=0.2)
    book = codebook(head)
    order = (book[0] @ book.T).argsort()  # ascending: the last is code 0 itself
    near, far = int(order[-2]), int(order[0])
    sure = {c: F.one_hot(torch.tensor([c]), head.codebook_size).float() * 20 for c in (near, far)}
    loss = {c: F.cross_entropy(sure[c], head.soft_targets(torch.tensor([0]))) for c in (near, far)}
    assert loss[near] < loss[far]


def test_smoothing_out_of_range_is_refused(vq):
    with pytest.raises(ValueError, match="code_smoothing"):
        DiscreteHead(DIM, vq, code_smoothing=1.0)


def test_smoothing_needs_one_code_per_slot(vq):
    with pytest.raises(ValueError, match="one code per output slot"):
        DiscreteHead(DIM, GroupedTokens(vq, 2), code_smoothing=0.2)
