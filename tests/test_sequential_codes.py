"""`discrete` head with `sequential_codes`: a slot's codes predicted in order, each seeing those before it."""

import pytest
import torch
from tiny_encoders import TINY_BACKBONE, tiny_encoders

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.encoders.grouped import GroupedTokens
from lightning_vlm.heads.discrete import DiscreteHead
from lightning_vlm.models.generation import generate_images, prompt_for
from lightning_vlm.training import UnifiedVLM

DIM = 16


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    return DiscreteHead(DIM, GroupedTokens(tiny_encoders()["vq"], 2), sequential_codes=True).eval()


@pytest.fixture(scope="module")
def slots(head):
    torch.manual_seed(1)
    return torch.randn(6, DIM), torch.randint(head.codebook_size, (6, head.codes_per_token))


def test_a_codes_logits_ignore_the_codes_after_it(head, slots):
    h, idx = slots
    changed = idx.clone()
    changed[:, 2:] = (changed[:, 2:] + 1) % head.codebook_size
    torch.testing.assert_close(head(h, changed)[:, :3], head(h, idx)[:, :3])


def test_a_codes_logits_read_the_codes_before_it(head, slots):
    h, idx = slots
    changed = idx.clone()
    changed[:, 0] = (changed[:, 0] + 1) % head.codebook_size
    assert not torch.allclose(head(h, changed)[:, 1], head(h, idx)[:, 1])


def test_greedy_sampling_follows_the_teacher_forced_argmax(head, slots):
    h, _ = slots
    with torch.no_grad():
        _, idx = head.sample(h)
        assert torch.equal(head(h, idx).argmax(-1), idx)


def test_guidance_at_scale_one_samples_the_prompted_codes(head, slots):
    h, _ = slots
    with torch.no_grad():
        assert torch.equal(head.guided_sample(h, torch.randn_like(h), 1.0)[1], head.sample(h)[1])


def test_sampled_codes_come_back_as_the_slots_code_vectors(head, slots):
    h, _ = slots
    with torch.no_grad():
        feats, idx = head.sample(h)
        torch.testing.assert_close(feats, head.codes_from_indices(idx[:, None])[:, 0])


def test_teacher_forcing_needs_the_indices(head, slots):
    with pytest.raises(ValueError, match="pass the slot's indices"):
        head(slots[0])


def test_one_code_per_slot_stays_the_plain_head():
    head = DiscreteHead(DIM, tiny_encoders()["vq"], sequential_codes=True)
    assert not head.sequential


def sequential_module(tiny_data, encoders):
    torch.manual_seed(0)
    return UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(encoders["vq"]), input_token_group=2,
                      output_token_group=2, backbone="tiny", backbone_overrides=TINY_BACKBONE, head="discrete",
                      head_options={"sequential_codes": True})


@pytest.fixture(scope="module")
def batch(tiny_data):
    dm = VLMDataModule(str(tiny_data), batch_size=9, num_workers=0, image_tokens_in=4, image_tokens_out=4)
    return next(iter(dm.train_dataloader()))


def test_a_model_with_sequential_codes_trains_the_codes_context(tiny_data, encoders, batch):
    model = sequential_module(tiny_data, encoders).model
    model(batch)["total"].backward()
    assert model.image_head.earlier_codes.weight.grad.abs().sum() > 0


def test_a_model_with_sequential_codes_draws_images(tiny_data, encoders, batch):
    model = sequential_module(tiny_data, encoders).model.eval()
    metas = [m for m in batch["meta"] if m["task"] == "generation"][:2]
    images, _ = generate_images(model, [prompt_for(model, m) for m in metas], max_new_tokens=3, guidance_scale=2.0)
    assert images.shape == (len(metas), 3, 32, 32)
