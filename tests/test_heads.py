"""Image heads: each built-in learns and samples through the `ImageHead` interface, options are
checked by name, and a registered name builds the right class."""

from types import SimpleNamespace

import pytest
import torch
from test_models import fit  # a few Adam steps

from lightning_vlm.heads import DiffusionHead, DiscreteHead, ImageHead, RegressionHead, build_head, head_options

CODEBOOK = torch.randn(10, 4)
DISCRETE_ENCODER = SimpleNamespace(dim=4, codebook_size=10, codes_from_indices=lambda idx: CODEBOOK[idx])
CONTINUOUS_ENCODER = SimpleNamespace(dim=4, codebook_size=None)


def test_discrete_head_learns_and_feeds_back_codebook_vectors():
    torch.manual_seed(0)
    head, h, idx = DiscreteHead(16, DISCRETE_ENCODER), torch.randn(12, 16), torch.randint(0, 10, (12,))
    losses = fit(head, lambda: head.loss(h, CODEBOOK[idx], idx))
    assert losses[-1] < 0.5 * losses[0]
    feats, chosen = head.sample(h)
    assert torch.equal(chosen, head(h).argmax(-1)) and torch.equal(feats, CODEBOOK[chosen])
    hot = DiscreteHead(16, DISCRETE_ENCODER, temperature=1.0)
    draws = [hot.sample(h, torch.Generator().manual_seed(s))[1] for s in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    with pytest.raises(ValueError, match="discrete output encoder"):
        DiscreteHead(16, CONTINUOUS_ENCODER)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_regression_head_learns(kind):
    torch.manual_seed(0)
    head, h, target = RegressionHead(16, CONTINUOUS_ENCODER, loss=kind, standardize_targets=False), torch.randn(12, 16), torch.randn(12, 4)
    losses = fit(head, lambda: head.loss(h, target, None))
    assert losses[-1] < 0.7 * losses[0]
    assert head.sample(h)[0].shape == (12, 4) and head.sample(h)[1] is None
    with pytest.raises(ValueError, match="cosine, mse"):
        RegressionHead(16, CONTINUOUS_ENCODER, loss="l1")


def test_diffusion_head_measures_its_latent_scale_in_training_and_samples_seeded():
    torch.manual_seed(0)
    head = DiffusionHead(8, CONTINUOUS_ENCODER, width=32, depth=1, sampling_steps=4).train()
    h, target = torch.randn(16, 8), 3 * torch.randn(16, 4)
    assert torch.isfinite(head.loss(h, target, None)) and head.latent_scale == pytest.approx(target.std().item())
    head.eval()
    a, b = (head.sample(h, torch.Generator().manual_seed(1))[0] for _ in range(2))
    assert a.shape == (16, 4) and torch.equal(a, b)


@pytest.mark.parametrize("head", [DiscreteHead(8, DISCRETE_ENCODER), RegressionHead(8, CONTINUOUS_ENCODER),
                                  DiffusionHead(8, CONTINUOUS_ENCODER, width=16, depth=1, sampling_steps=2, noise_temperature=0.0)],
                         ids=["discrete", "regression", "diffusion"])
def test_guidance_between_identical_states_is_plain_sampling(head):
    torch.manual_seed(0)
    for p in head.parameters():  # as if trained (the denoiser's output layer starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    if isinstance(head, DiffusionHead):
        head.latent_scale.fill_(1.0)  # measured in training
    h = torch.randn(3, 8)
    plain = head.sample(h, torch.Generator().manual_seed(0))[0]
    assert torch.allclose(plain, head.guided_sample(h, h, 3.0, torch.Generator().manual_seed(0))[0], atol=1e-5)
    assert not torch.allclose(plain, head.guided_sample(h, torch.randn_like(h), 3.0, torch.Generator().manual_seed(0))[0], atol=1e-3)


def test_build_head_by_registered_name_with_checked_options():
    head = build_head("regression", 8, CONTINUOUS_ENCODER, {"loss": "mse", "layers": 2})
    assert isinstance(head, RegressionHead) and head.kind == "mse"
    assert head_options(DiffusionHead)["sampling_steps"] == 25
    with pytest.raises(ValueError, match=r"head 'diffusion' has no option steps; its head_options: width \(default 256\)"):
        build_head("diffusion", 8, CONTINUOUS_ENCODER, {"steps": 4})
    with pytest.raises(ValueError, match="unknown head 'flows'; known heads: .*diffusion"):
        build_head("flows", 8, CONTINUOUS_ENCODER)


def test_a_head_without_guidance_says_how_to_turn_it_off():
    class Plain(ImageHead):
        def __init__(self, dim, encoder):
            super().__init__()

    with pytest.raises(NotImplementedError, match="guidance_scale: 1.0"):
        Plain(8, CONTINUOUS_ENCODER).guided_sample(torch.zeros(1, 8), torch.zeros(1, 8), 2.0)
