"""Muon for the backbone's hidden matrices and AdamW for the rest, as one optimizer.

Muon (`torch.optim.Muon`) orthogonalises each 2-D weight's momentum before the step, which trains a
transformer's hidden matrices in fewer samples than AdamW; it is only defined for matrices, so the
embeddings, heads, projectors, norms and biases keep AdamW. Lightning's automatic optimisation,
gradient clipping and LR schedulers take one optimizer, so `MuonWithAdamW` holds both and shows
their parameter groups as its own: a schedule that scales `param_groups[i]["lr"]` scales both.
Muon's `adjust_lr_fn="match_rms_adamw"` scales its update to AdamW's size, so the same lr and
schedule serve both halves.

`torch.optim.Muon` runs its Newton-Schulz iteration in bf16, which a CPU without native bf16 (AVX2)
emulates: a micro-backbone step took ~1.4 s instead of ~0.5 s on such a CPU. `Muon` here is the
same update with the iteration in fp32 on CPUs (bf16 on GPUs, as torch's).
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict

import torch


def orthogonalise(updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Newton-Schulz's quintic iteration towards the nearest semi-orthogonal matrix (as torch's and
    Keller Jordan's Muon) for a stack [k, m, n] of same-shape updates at once; in bf16 on GPUs, fp32
    on CPUs."""
    a, b, c = coefficients
    x = updates.to(torch.bfloat16 if updates.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).to(updates.dtype)


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` (its groups, state and checks) with `orthogonalise` as its iteration, one
    batched iteration per shape of matrix (a backbone has a few shapes, each once per layer)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            by_shape: dict[tuple, list[int]] = defaultdict(list)
            updates = []
            for i, (grad, buf) in enumerate(zip(grads, buffers)):
                buf.lerp_(grad, 1 - group["momentum"])
                updates.append(grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf)
                by_shape[tuple(grad.shape)].append(i)
            for shape, members in by_shape.items():
                stacked = orthogonalise(torch.stack([updates[i] for i in members]), group["ns_coefficients"], group["ns_steps"], group["eps"])
                step_size = group["lr"] * adjusted_lr_ratio(group["adjust_lr_fn"], shape)
                for i, update in zip(members, stacked.unbind(0)):
                    params[i].mul_(1 - group["lr"] * group["weight_decay"])
                    params[i].add_(update, alpha=-step_size)
        return loss


def adjusted_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's scaling of the lr per matrix shape [fan-out, fan-in]."""
    fan_out, fan_in = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(fan_out, fan_in))
    return math.sqrt(max(1, fan_out / fan_in))  # "original" (Keller Jordan's)


class MuonWithAdamW(torch.optim.Optimizer):
    """`Muon` over `muon_groups` (2-D weights only) and `torch.optim.AdamW` over `adamw_groups`."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95)):
        flat = [p for g in muon_groups for p in g["params"]]
        if any(p.ndim != 2 for p in flat):
            raise ValueError("Muon steps 2-D weight matrices only; give embeddings, norms and biases to AdamW")
        self.muon = Muon(muon_groups, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, weight_decay=weight_decay, betas=betas, foreach=True)
        # Not Optimizer.__init__: that would copy the groups, and a schedule would then scale the copies.
        self.defaults = {}
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()

    @property
    def param_groups(self) -> list[dict]:
        """Both halves' groups, read afresh: `load_state_dict` gives the inner optimizers new group dicts."""
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    def step(self, closure=None):
        loss = self.muon.step(closure)  # runs the closure (forward and backward) once, before either update
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])

    def __repr__(self) -> str:
        return f"MuonWithAdamW(muon: {sum(len(g['params']) for g in self.muon.param_groups)} matrices, " \
               f"adamw: {sum(len(g['params']) for g in self.adamw.param_groups)} tensors)"
