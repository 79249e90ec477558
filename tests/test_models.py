"""Model building blocks: backbone + KV cache, HF backbone, projectors, LM head, the diffusion head's denoiser."""

import sys

import pytest
import torch
from torch import nn

from lightning_vlm.heads.denoiser import Denoiser
from lightning_vlm.models import (
    AffineMisalignment,
    Backbone,
    BackboneConfig,
    HFBackbone,
    MLPProjector,
    hf_backbone,
    lm_head,
)

TOY = BackboneConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128, max_seq_len=64)
PROMPTS = [[5, 9, 2, 7, 1], [3, 8, 4]]  # two prompts of different lengths: the batch needs padding


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes gain nothing from threads, and on a busy machine OpenMP waits cost 5-10x; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy_lm():
    """Embedding + backbone + tied LM head: the smallest language model the cache can be checked on."""
    torch.manual_seed(0)
    backbone = Backbone(TOY).eval()
    embed = nn.Embedding(50, TOY.dim)
    return embed, backbone, lm_head(embed)


def pad(prompts, side):
    """Token ids [B, T] (pad id 0) and mask [B, T], padded on the `side`."""
    t = max(map(len, prompts))
    ids = torch.zeros(len(prompts), t, dtype=torch.long)
    mask = torch.zeros(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        cols = slice(0, len(p)) if side == "right" else slice(t - len(p), t)
        ids[i, cols], mask[i, cols] = torch.tensor(p), True
    return ids, mask


@torch.no_grad()
def greedy_uncached(embed, backbone, head, prompt, steps):
    """Reference: re-run the whole unpadded sequence for every new token (as the study does)."""
    ids, hidden = list(prompt), []
    for _ in range(steps):
        h = backbone(embed(torch.tensor([ids])))[0, -1]
        hidden.append(h)
        ids.append(int(head(h).argmax()))
    return ids[len(prompt):], torch.stack(hidden)


@torch.no_grad()
def greedy_cached(embed, backbone, head, prompts, steps, side, decode=None):
    """Prefill the padded batch once, then decode one token per call from the cache (with `decode`,
    default the backbone's fixed-shape step, as generation uses)."""
    decode = decode or backbone.decode
    ids, mask = pad(prompts, side)
    cache = backbone.new_cache(len(prompts), ids.shape[1] + steps)
    h = backbone(embed(ids), mask, cache)
    last_real = mask.long().cumsum(1).argmax(1)  # index of each prompt's last real token
    h = h[torch.arange(len(prompts)), last_real]  # [B, dim]
    tokens, hidden = [], []
    for _ in range(steps):
        hidden.append(h)
        tokens.append(head(h).argmax(-1))
        h = decode(embed(tokens[-1][:, None]), cache)[:, 0]
    return torch.stack(tokens, 1).tolist(), torch.stack(hidden, 1)  # [B, steps], [B, steps, dim]


def check_cache_matches(embed, backbone, head, side, steps=6, decode=None, hidden_too=True):
    tokens, hidden = greedy_cached(embed, backbone, head, PROMPTS, steps, side, decode)
    for i, prompt in enumerate(PROMPTS):
        ref_tokens, ref_hidden = greedy_uncached(embed, backbone, head, prompt, steps)
        assert tokens[i] == ref_tokens
        if hidden_too:
            torch.testing.assert_close(hidden[i], ref_hidden, atol=1e-5, rtol=1e-4)


# --- backbone ---------------------------------------------------------------------------------


def test_backbone_forward_backward_shapes():
    torch.manual_seed(0)
    backbone = Backbone(TOY)
    x = torch.randn(2, 7, TOY.dim, requires_grad=True)
    h = backbone(x, torch.ones(2, 7, dtype=torch.bool))
    assert h.shape == (2, 7, TOY.dim) and backbone.dim == TOY.dim
    h.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in backbone.parameters())


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_mask_matches_unpadded(toy_lm, side):
    embed, backbone, _ = toy_lm
    ids, mask = pad(PROMPTS, side)
    with torch.no_grad():
        h = backbone(embed(ids), mask)
        for i, prompt in enumerate(PROMPTS):
            alone = backbone(embed(torch.tensor([prompt])))[0]
            torch.testing.assert_close(h[i][mask[i]], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("side", ["right", "left"])
def test_kv_cache_greedy_decoding_matches_full_recompute(toy_lm, side):
    check_cache_matches(*toy_lm, side)


@pytest.fixture
def diverse_lm():
    """A toy LM whose greedy continuations vary from token to token: backbone weights x5 and an untied
    head. (An untrained tied LM repeats its last token, so a cache bug that shifts positions or shows
    padding as keys can leave its greedy tokens unchanged.)"""
    torch.manual_seed(0)
    backbone = Backbone(TOY).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            if p.dim() == 2:
                p.mul_(5)
    embed = nn.Embedding(50, TOY.dim)
    return embed, backbone, lm_head(embed, tied=False)


def test_cached_greedy_tokens_match_recompute_on_a_diverse_model(diverse_lm):
    embed, backbone, head = diverse_lm
    reference = [greedy_uncached(embed, backbone, head, p, 12)[0] for p in PROMPTS]
    assert min(len(set(r)) for r in reference) >= 8  # the test can see a wrong token
    check_cache_matches(*diverse_lm, "right", steps=12, hidden_too=False)
    check_cache_matches(*diverse_lm, "right", steps=12, decode=lambda x, cache: backbone(x, cache=cache), hidden_too=False)


@pytest.mark.parametrize("bug", ["positions reset every step", "padded slots visible as keys"])
def test_cache_bugs_change_the_greedy_tokens(diverse_lm, bug):
    """The two faults a cache can have: both must fail the token comparison above."""
    embed, backbone, head = diverse_lm

    def broken(x, cache):
        if bug == "positions reset every step":
            cache.positions.zero_()
        else:
            cache.mask.fill_(True)
        return backbone.decode(x, cache)

    with pytest.raises(AssertionError):
        check_cache_matches(embed, backbone, head, "right", steps=12, decode=broken, hidden_too=False)


def test_compiled_decode_step_matches_eager(diverse_lm):
    """torch.compile of the one-token step gives the same greedy tokens (its compile takes ~10-60 s on CPU)."""
    embed, backbone, head = diverse_lm
    eager = greedy_cached(embed, backbone, head, PROMPTS, 8, "right")
    backbone.compile_decode()
    try:
        compiled = greedy_cached(embed, backbone, head, PROMPTS, 8, "right")
    finally:
        backbone._compiled_decode = None
    assert compiled[0] == eager[0]
    torch.testing.assert_close(compiled[1], eager[1], atol=1e-4, rtol=1e-4)


def test_kv_cache_overflow_is_a_clear_error(toy_lm):
    embed, backbone, _ = toy_lm
    cache = backbone.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache"):
        backbone(embed(torch.tensor([[1, 2, 3, 4, 5]])), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        backbone.new_cache(1, TOY.max_seq_len + 1)


@pytest.mark.parametrize("name, low, high", [("micro", 0.5e6, 1e6), ("tiny", 2e6, 5e6), ("small", 20e6, 30e6), ("base", 100e6, 150e6)])
def test_preset_sizes(name, low, high):
    with torch.device("meta"):  # no memory, no init cost
        backbone = Backbone(BackboneConfig.preset(name))
    assert low <= sum(p.numel() for p in backbone.parameters()) <= high


def test_preset_overrides_and_unknown_name():
    assert BackboneConfig.preset("tiny", max_seq_len=128).max_seq_len == 128
    with pytest.raises(ValueError, match="tiny, small, base"):
        BackboneConfig.preset("huge")
    with pytest.raises(ValueError, match="n_kv_heads"):
        BackboneConfig(n_heads=4, n_kv_heads=3)


# --- projectors ---------------------------------------------------------------------------------


def test_mlp_projector_shapes():
    x = torch.randn(2, 5, 16)
    assert MLPProjector(16, 32)(x).shape == (2, 5, 32)
    assert sum(isinstance(m, nn.Linear) for m in MLPProjector(16, 32, hidden=8, layers=3)) == 3
    assert len(MLPProjector(16, 32, layers=1)) == 1


def test_affine_misalignment():
    x = torch.randn(4, 16)
    torch.testing.assert_close(AffineMisalignment(16, 0.0, seed=3)(x), x)
    a, b, c = AffineMisalignment(16, 0.2, seed=1), AffineMisalignment(16, 0.2, seed=1), AffineMisalignment(16, 0.2, seed=2)
    assert torch.equal(a(x), b(x)) and not torch.allclose(a(x), c(x))
    q = a.rotation
    torch.testing.assert_close(q @ q.T, torch.eye(16), atol=1e-5, rtol=0)
    assert not torch.allclose(q, torch.eye(16))
    assert (a.scale - 1).abs().max() <= 0.2 and a.shift.abs().max() <= 0.2
    state = a.state_dict()
    assert {"rotation", "scale", "shift"} <= set(state)
    c.load_state_dict(state)
    assert torch.equal(c(x), a(x))
    assert not any(True for _ in a.parameters())


# --- heads ----------------------------------------------------------------------------------------


def fit(module, loss_fn, steps=30, lr=1e-2):
    """Initial and final loss of a few Adam steps."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_lm_head_tying():
    embed = nn.Embedding(20, 8)
    assert lm_head(embed).weight is embed.weight
    assert lm_head(embed, tied=False).weight is not embed.weight
    assert lm_head(embed)(torch.randn(3, 8)).shape == (3, 20)


# --- diffusion denoiser ------------------------------------------------------------------------------


def test_denoiser_trains_and_samples():
    torch.manual_seed(0)
    head = Denoiser(feat_dim=4, cond_dim=8, width=64, depth=2)
    z = torch.randn(32, 8)
    target = torch.tanh(z[:, :4] * 2)  # a token that is a function of its condition
    losses = fit(head, lambda: head.loss(target, z, repeats=4), steps=40, lr=5e-3)
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])  # noisy per step (random timesteps): compare averages

    sample = head.sample(z, steps=10, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (32, 4)
    again = head.sample(z, steps=10, generator=torch.Generator().manual_seed(0))
    other = head.sample(z, steps=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample, again) and not torch.allclose(sample, other)
    assert torch.equal(head.sample(z, steps=5, temperature=0.0), head.sample(z, steps=5, temperature=0.0))
    with pytest.raises(ValueError, match="steps"):
        head.sample(z, steps=0)


def test_denoiser_rejects_unknown_schedule():
    with pytest.raises(ValueError, match="cosine, linear"):
        Denoiser(4, 8, schedule="sigmoid")
    assert Denoiser(4, 8, width=16, depth=1, schedule="linear").loss(torch.randn(3, 4), torch.randn(3, 8)).isfinite()


# --- Hugging Face backbone --------------------------------------------------------------------------


def test_hf_backbone_matches_cached_and_uncached(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                                      max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    backbone = HFBackbone(str(tmp_path)).eval()
    embed, head = backbone.get_input_embeddings(), backbone.get_output_embeddings()
    assert backbone.dim == 32 and embed.num_embeddings == 100
    ids, mask = pad(PROMPTS, "right")
    with torch.no_grad():
        assert backbone(embed(ids), mask).shape == (2, ids.shape[1], 32)
    check_cache_matches(embed, backbone, head, "right")


def test_hf_backbone_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        HFBackbone(str(tmp_path / "missing"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now fails as if not installed
    with pytest.raises(ImportError, match=r"lightning-vlm\[hf\]"):
        hf_backbone._transformers()


def test_denoiser_mean_loss_adds_the_pure_noise_timestep():
    """mean_weight adds w x the v-loss at the last timestep, where the noisy input carries no signal."""
    torch.manual_seed(0)
    head = Denoiser(feat_dim=4, cond_dim=8, width=32, depth=1)
    nn.init.normal_(head.out.weight, std=0.5)  # a non-trivial denoiser (the output layer starts at zero)
    nn.init.normal_(head.final_ada[1].weight, std=0.5)
    x0, z = torch.randn(16, 4), torch.randn(16, 8)
    last = torch.full((16,), head.num_train_timesteps - 1)
    torch.manual_seed(1)
    plain = head.loss(x0, z, repeats=2)
    noise = torch.randn_like(x0)  # the draw the extra term takes next
    a, s = head.alpha[-1], head.sigma[-1]
    extra = torch.nn.functional.mse_loss(head(a * x0 + s * noise, last, z), a * noise - s * x0)
    torch.manual_seed(1)
    assert head.loss(x0, z, repeats=2, mean_weight=3.0).item() == pytest.approx((plain + 3 * extra).item(), rel=1e-5)
    # at that timestep the input is pure noise and the target is the clean token (v = a eps - s x0 ~ -x0)
    assert a < 1e-2 and torch.allclose(a * noise - s * x0, -x0, atol=0.02)
