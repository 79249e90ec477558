"""`optimizer: muon`: Muon for the backbone's hidden matrices, AdamW for the rest, as one optimizer."""

import copy as copy_module

import pytest
import torch
from tiny_encoders import TINY_BACKBONE

from lightning_vlm.training import UnifiedVLM
from lightning_vlm.training.module import is_hidden_matrix
from lightning_vlm.training.optimizers import MuonWithAdamW


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def muon_adamw(net, lr=0.01):
    return MuonWithAdamW([{"params": [net[0].weight, net[2].weight], "lr": lr}],
                         [{"params": [net[0].bias, net[2].bias], "lr": lr}])


def take_step(net, optimizer):
    torch.manual_seed(1)
    optimizer.zero_grad()
    net(torch.randn(8, 6)).square().mean().backward()
    optimizer.step()


def test_a_step_moves_the_matrices():
    net = tiny_net()
    before = net[0].weight.clone()
    take_step(net, muon_adamw(net))
    assert not torch.equal(net[0].weight, before)


def test_a_step_moves_the_biases():
    net = tiny_net()
    before = net[0].bias.clone()
    take_step(net, muon_adamw(net))
    assert not torch.equal(net[0].bias, before)


def test_a_schedule_scales_the_muon_half():
    net = tiny_net()
    optimizer = muon_adamw(net, lr=0.01)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.005)


def test_a_schedule_scales_the_adamw_half():
    net = tiny_net()
    optimizer = muon_adamw(net, lr=0.01)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert optimizer.adamw.param_groups[0]["lr"] == pytest.approx(0.005)


def test_a_reloaded_state_takes_the_same_next_step():
    net = tiny_net()
    optimizer = muon_adamw(net)
    take_step(net, optimizer)
    copy = tiny_net()
    copy.load_state_dict(net.state_dict())
    reloaded = muon_adamw(copy)
    reloaded.load_state_dict(copy_module.deepcopy(optimizer.state_dict()))  # as read back from a checkpoint file
    take_step(net, optimizer)
    take_step(copy, reloaded)
    torch.testing.assert_close(copy[0].weight, net[0].weight)


def test_muon_refuses_a_vector():
    net = tiny_net()
    with pytest.raises(ValueError, match="2-D"):
        MuonWithAdamW([{"params": [net[0].bias]}], [{"params": [net[0].weight]}])


def test_the_backbone_matrices_are_hidden():
    assert is_hidden_matrix("model.backbone.blocks.0.attn.qkv.weight", torch.zeros(4, 4))


def test_the_backbone_norms_are_not_hidden():
    assert not is_hidden_matrix("model.backbone.blocks.0.attn_norm.weight", torch.zeros(4))


def test_the_text_embeddings_are_not_hidden():
    assert not is_hidden_matrix("model.text_embeddings.weight", torch.zeros(4, 4))


def test_an_unknown_optimizer_names_the_known_ones(tiny_data, encoders):
    with pytest.raises(ValueError, match="adamw or muon"):
        UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(encoders["vq"]), backbone="tiny",
                   backbone_overrides=TINY_BACKBONE, optimizer="sgd")


def test_a_fit_with_muon_checkpoints_both_halves(tiny_data, encoders, tmp_path):
    import lightning.pytorch as pl

    from lightning_vlm.data.datamodule import VLMDataModule

    torch.manual_seed(0)
    module = UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(encoders["vq"]), backbone="tiny",
                        backbone_overrides=TINY_BACKBONE, optimizer="muon")
    dm = VLMDataModule(str(tiny_data), batch_size=9, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["optimizer_states"][0]
    assert sorted(state) == ["adamw", "muon"]


def deep_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))


def matrices(net):
    return [m.weight for m in net if isinstance(m, torch.nn.Linear)]


def muon_updates():
    """The update of our Muon and of torch's from the same gradients: two same-shape matrices (one
    batched iteration) and one of another shape."""
    from lightning_vlm.training.optimizers import Muon

    updates = []
    for make in (Muon, torch.optim.Muon):
        net = deep_net()
        before = torch.cat([w.detach().flatten().clone() for w in matrices(net)])
        optimizer = make(matrices(net), lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
        torch.manual_seed(1)
        net(torch.randn(8, 6)).square().mean().backward()
        optimizer.step()
        updates.append(torch.cat([w.detach().flatten() for w in matrices(net)]) - before)
    return updates


def test_muon_steps_in_the_direction_of_torchs_muon():
    ours, theirs = muon_updates()
    assert torch.nn.functional.cosine_similarity(ours, theirs, dim=0).item() > 0.99  # torch iterates in bf16: ~0.996


def test_muon_steps_as_far_as_torchs_muon():
    ours, theirs = muon_updates()
    assert ours.norm().item() == pytest.approx(theirs.norm().item(), rel=0.03)


def test_a_schedule_scales_the_groups_of_a_reloaded_state():
    net = tiny_net()
    optimizer = muon_adamw(net, lr=0.01)
    optimizer.load_state_dict(copy_module.deepcopy(muon_adamw(tiny_net(), lr=0.01).state_dict()))
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.005)


def test_muon_lr_without_muon_names_the_fix(tiny_data, encoders):
    with pytest.raises(ValueError, match="set optimizer: muon"):
        UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(encoders["vq"]), backbone="tiny",
                   backbone_overrides=TINY_BACKBONE, muon_lr=1e-2)


def test_muon_lr_scales_the_muon_half_only(tiny_data, encoders, tmp_path):
    import lightning.pytorch as pl

    from lightning_vlm.data.datamodule import VLMDataModule

    module = UnifiedVLM(tokenizer_path=str(tiny_data / "tokenizer.json"), input_encoder=str(encoders["vq"]), backbone="tiny",
                        backbone_overrides=TINY_BACKBONE, optimizer="muon", lr=1e-3, muon_lr=3e-3)
    dm = VLMDataModule(str(tiny_data), batch_size=9, num_workers=0, image_tokens_in=16, image_tokens_out=16)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    optimizer = trainer.optimizers[0]
    muon_lr, adamw_lr = optimizer.muon.param_groups[0]["lr"], optimizer.adamw.param_groups[0]["lr"]
    assert muon_lr == pytest.approx(3 * adamw_lr)
