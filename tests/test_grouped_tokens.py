"""Token grouping (`encoders.grouped`): g x g blocks of an encoder's grid as one VLM position."""

import shutil

import pytest
import torch
from tiny_encoders import TINY_BACKBONE, tiny_encoders

from lightning_vlm.data.datamodule import VLMDataModule
from lightning_vlm.encoders.grouped import GroupedTokens, group_grid, ungroup_grid
from lightning_vlm.models.generation import generate_images, prompt_for
from lightning_vlm.training import UnifiedVLM


@pytest.fixture(scope="module")
def batch(tiny_data):
    dm = VLMDataModule(str(tiny_data), batch_size=9, num_workers=0, image_tokens_in=4, image_tokens_out=4)
    return next(iter(dm.train_dataloader()))


def grouped_module(tiny_data, encoders, output_token_group=2):
    torch.manual_seed(0)
    return UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(encoders["vq"]), input_token_group=2,
                      output_token_group=output_token_group, backbone="tiny", backbone_overrides=TINY_BACKBONE, head="discrete")


def test_a_block_holds_its_four_grid_neighbours():
    grid = torch.arange(16).reshape(1, 16)  # a 4 x 4 grid in row-major order
    assert group_grid(grid, 4, 2)[0, 0].tolist() == [0, 1, 4, 5]


def test_blocks_run_row_major_over_the_grid():
    grid = torch.arange(16).reshape(1, 16)
    assert group_grid(grid, 4, 2)[0, :, 0].tolist() == [0, 2, 8, 10]


def test_ungrouping_restores_the_grid():
    feats = torch.randn(2, 64, 3)
    assert torch.equal(ungroup_grid(group_grid(feats, 8, 2), 8, 2), feats)


def test_a_grouped_encoder_has_a_quarter_of_the_tokens_at_four_times_the_width():
    vq = tiny_encoders()["vq"]
    grouped = GroupedTokens(vq, 2)
    assert (grouped.num_tokens, grouped.dim) == (vq.num_tokens // 4, vq.dim * 4)


def test_grouped_indices_decode_to_the_inner_encoders_image():
    vq = tiny_encoders()["vq"].eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _, idx = vq.encode(images)
        _, grouped_idx = GroupedTokens(vq, 2).encode(images)
        torch.testing.assert_close(GroupedTokens(vq, 2).decode(grouped_idx), vq.decode(idx))


def test_grouped_codes_are_the_blocks_code_vectors_side_by_side():
    vq = tiny_encoders()["vq"].eval()
    grouped = GroupedTokens(vq, 2)
    with torch.no_grad():
        feats, idx = grouped.encode(torch.rand(2, 3, 32, 32))
        torch.testing.assert_close(grouped.codes_from_indices(idx), feats)


def test_a_group_that_does_not_divide_the_grid_is_refused():
    with pytest.raises(ValueError, match="a token group of 3"):
        GroupedTokens(tiny_encoders()["vq"], 3)


def test_the_discrete_head_predicts_every_code_of_a_slot(tiny_data, encoders):
    head = grouped_module(tiny_data, encoders).model.image_head
    assert head(torch.randn(5, 64)).shape == (5, 4, head.codebook_size)


def test_a_grouped_model_trains(tiny_data, encoders, batch):
    model = grouped_module(tiny_data, encoders).model
    losses = model(batch)
    losses["total"].backward()
    assert torch.isfinite(losses["image"]) and model.image_head.proj.weight.grad.abs().sum() > 0


def test_a_grouped_model_draws_images_of_the_inner_size(tiny_data, encoders, batch):
    model = grouped_module(tiny_data, encoders).model.eval()
    metas = [m for m in batch["meta"] if m["task"] == "generation"][:2]
    images, _ = generate_images(model, [prompt_for(model, m) for m in metas], max_new_tokens=3)
    assert images.shape == (len(metas), 3, 32, 32)


def test_the_inner_encoders_token_cache_gives_the_same_loss(tiny_data, encoders, batch, tmp_path):
    from lightning_vlm.encoders.base import load_encoder_checkpoint
    from lightning_vlm.encoders.cache import TokenCache

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    module = grouped_module(data, encoders).eval()
    on_the_fly = module.model(batch)["total"]
    TokenCache.build(data, "vq", encoders["vq"], load_encoder_checkpoint(encoders["vq"]), batch_size=8, progress=False)
    module.open_token_caches(str(data))
    module.model.input_encoder.inner.encode = None  # would fail if the cache were bypassed
    torch.testing.assert_close(module.model(batch)["total"], on_the_fly, rtol=1e-3, atol=1e-3)  # float16 storage


def test_grouping_the_input_side_only_writes_the_inner_grid(tiny_data, encoders):
    model = grouped_module(tiny_data, encoders, output_token_group=1).model
    assert (model.input_encoder.num_tokens, model.output_encoder.num_tokens, model.shared_space) == (4, 16, False)


def test_an_input_grouped_model_trains(tiny_data, encoders):
    dm = VLMDataModule(str(tiny_data), batch_size=9, num_workers=0, image_tokens_in=4, image_tokens_out=16)
    model = grouped_module(tiny_data, encoders, output_token_group=1).model
    losses = model(next(iter(dm.train_dataloader())))
    losses["total"].backward()
    assert torch.isfinite(losses["total"]) and model.input_projector[0].weight.grad.abs().sum() > 0
