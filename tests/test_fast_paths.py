"""Every fast path against the plain one: RoPE, multi-tensor AdamW (the compiled backbone: test_vlm.py)."""

import torch

from lightning_vlm.models.backbone import apply_rope, rope_tables


def test_rope_is_a_complex_rotation_of_each_half_split_pair():
    """Reference: pair (x_i, x_{i + hd/2}) as a complex number, multiply by e^{i pos theta_i}."""
    hd, t = 8, 5
    x = torch.randn(2, 3, t, hd)
    cos, sin = rope_tables(16, hd, 10000.0)
    out = apply_rope(x, cos[:t], sin[:t])
    theta = 1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd)
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:]) * torch.polar(torch.ones(t, hd // 2), torch.arange(t)[:, None] * theta)
    torch.testing.assert_close(out, torch.cat([z.real, z.imag], -1), atol=1e-5, rtol=1e-5)


def test_rope_keeps_bf16_inputs_in_bf16():
    cos, sin = rope_tables(16, 8, 10000.0)
    x = torch.randn(1, 1, 4, 8, dtype=torch.bfloat16)
    assert apply_rope(x, cos[:4], sin[:4]).dtype == torch.bfloat16


def test_foreach_adamw_takes_the_same_step_as_the_plain_loop():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(3))]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fast = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), foreach=True)
    plain = torch.optim.AdamW(copies, lr=1e-2, betas=(0.9, 0.95), foreach=False)
    for _ in range(3):
        for group, opt in ((params, fast), (copies, plain)):
            loss = sum((p ** 2).sum() for p in group)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(params, copies):
        torch.testing.assert_close(a, b)
