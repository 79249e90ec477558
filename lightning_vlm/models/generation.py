"""Inference for a VLM: batched text answers and image generation with the KV cache.

Prompts are token-id lists (built by `prompt_for`), right-padded into one batch and
prefilled once; then tokens are decoded one per step from the cache. Image generation
first lets the model write its acknowledgement up to `<boi>`, then prefills prompt +
text + `<boi>` and writes the N image tokens, each fed back through the output projector.
"""

from __future__ import annotations

import torch

from ..data.tokenizer import BOI, EOT
from .sampling import sample_logits


def prompt_for(model, meta: dict, upto_turn: int = 0) -> dict:
    """Ids and input-image mask of the sample's conversation up to the assistant's `upto_turn`-th reply,
    in the format the model was trained on (`SequenceBuilder.prompt`: the project's or a chat template)."""
    convs = meta["conversations"][: 2 * upto_turn + 1]
    return model.builder.prompt({**meta, "conversations": convs})  # keeps text_only, system, the <image> position


def _pad(prompts: list[dict], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(p["input_ids"]) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long, device=device)
    attn = torch.zeros_like(ids, dtype=torch.bool)
    in_mask = torch.zeros_like(attn)
    for i, p in enumerate(prompts):
        n = len(p["input_ids"])
        ids[i, :n] = torch.tensor(p["input_ids"], device=device)
        attn[i, :n] = True
        in_mask[i, :n] = torch.tensor(p.get("image_in_mask", [False] * n), device=device)
    return ids, attn, in_mask


def _prefill(model, prompts: list[dict], images: torch.Tensor | None, extra: int, image_ids: list[str] | None = None):
    """Runs the prompts through the backbone into a fresh cache; returns (cache, hidden [B, T, D], lengths [B])."""
    ids, attn, in_mask = _pad(prompts, model.builder.pad, model.device)
    emb = model.text_embeddings(ids)
    rows = in_mask.any(1)
    if rows.any():
        picked = rows.nonzero().flatten().tolist()
        feats, _ = model.encode_images("input", images[rows], None if image_ids is None else [image_ids[i] for i in picked])
        emb = emb.masked_scatter(in_mask[..., None], model.embed_input_images(feats).to(emb.dtype))
    cache = model.backbone.new_cache(len(prompts), ids.shape[1] + extra)
    return cache, model.backbone(emb, attention_mask=attn, cache=cache), attn.sum(1)


def _prefill_last(model, prompts, images, extra, groups=None, image_ids=None):
    """(cache ready to decode after each prompt, each prompt's last hidden state [B, D]).

    `groups[i]` names the conversation prompt i belongs to: the prompts of one group share
    their image and each extends the group's shorter ones (the turns of one VQA sample). A group
    is then prefilled once, its longest prompt; each prompt's cache row is that run cut at the
    prompt's length (later slots masked out as keys), so it decodes as if prefilled alone.
    Backbones whose cache cannot be cut that way (an HF model's) prefill every prompt.
    """
    if groups is None or not getattr(model.backbone, "cache_rows_can_be_cut", False):
        cache, hidden, lengths = _prefill(model, prompts, images, extra, image_ids)
        return cache, hidden[torch.arange(len(prompts), device=hidden.device), lengths - 1]
    first: dict = {}
    for i, g in enumerate(groups):
        if g not in first or len(prompts[i]["input_ids"]) > len(prompts[first[g]]["input_ids"]):
            first[g] = i
    heads = list(first.values())  # the longest prompt of each group
    row_of = {g: row for row, g in enumerate(first)}
    owner = torch.tensor([row_of[g] for g in groups], device=model.device)
    for i, g in enumerate(groups):
        n, longest = len(prompts[i]["input_ids"]), prompts[first[g]]["input_ids"]
        if prompts[i]["input_ids"] != longest[:n]:
            raise ValueError(f"prompt {i} does not extend the others of its group {g!r}: groups must hold the turns of one conversation")
    shared, hidden, _ = _prefill(model, [prompts[i] for i in heads], None if images is None else images[heads], 0,
                                 None if image_ids is None else [image_ids[i] for i in heads])
    lengths = torch.tensor([len(p["input_ids"]) for p in prompts], device=model.device)
    cache = model.backbone.new_cache(len(prompts), shared.length + extra, dtype=shared.k.dtype)
    cache.k[:, :, :, : shared.length] = shared.k[:, owner]
    cache.v[:, :, :, : shared.length] = shared.v[:, owner]
    slots = torch.arange(shared.length, device=model.device)
    cache.mask[:, : shared.length] = shared.mask[owner] & (slots[None] < lengths[:, None])
    cache.positions.copy_(lengths)  # right padding: a prompt's tokens are its first slots
    cache.length = shared.length
    cache.slot.fill_(shared.length)
    return cache, hidden[owner, lengths - 1]


@torch.no_grad()
def generate_text(model, prompts: list[dict], images: torch.Tensor | None = None, max_new_tokens: int = 40,
                  stop: tuple[str, ...] = (EOT,), generator: torch.Generator | None = None,
                  temperature: float = 0.0, groups: list | None = None,
                  image_ids: list[str] | None = None) -> list[list[int]]:
    """Continuation of each prompt until a stop token (included) or `max_new_tokens`: greedy at
    temperature 0, else sampled. `groups`: prompts of one conversation share one prefill
    (`_prefill_last`); `image_ids`: the images' ids, to read their encoder tokens from the token cache."""
    stop_ids = torch.tensor(model.builder.stop_ids(stop), device=model.device)  # a chat template's end of turn too
    cache, last = _prefill_last(model, prompts, images, max_new_tokens, groups, image_ids)
    steps = []
    done = torch.zeros(len(prompts), dtype=torch.bool, device=model.device)
    lockstep = sharded(model)
    for _ in range(max_new_tokens):
        nxt = sample_logits(model.lm_head(last).float(), temperature, generator)  # [B]
        steps.append(nxt)
        done |= torch.isin(nxt, stop_ids)
        if _all_done(done, lockstep):
            break
        last = model.backbone.decode(model.text_embeddings(nxt)[:, None], cache)[:, 0]
    if not steps:
        return [[] for _ in prompts]
    stops = set(stop_ids.tolist())
    return [_up_to_stop(row, stops) for row in torch.stack(steps, 1).tolist()]


def sharded(model) -> bool:
    """Whether some layer of `model` is an FSDP unit: each call of it gathers its weights from every rank."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    from torch.distributed import fsdp

    units = tuple(c for c in (fsdp.FullyShardedDataParallel, getattr(fsdp, "FSDPModule", None)) if c is not None)
    return any(isinstance(m, units) for m in model.modules())


def anyone(*flags: bool, device=None) -> list[bool]:
    """Each flag OR-ed over all ranks (one all-reduce): whether some rank has work of that kind."""
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _all_done(done: torch.Tensor, lockstep: bool) -> bool:
    """Every row has stopped, on every rank when `lockstep`: under FSDP a rank that stopped decoding
    early would leave the others waiting in their next layer's all-gather (transformers' synced_gpus)."""
    finished = done.all().to(torch.int32)
    if lockstep:
        torch.distributed.all_reduce(finished, op=torch.distributed.ReduceOp.MIN)
    return bool(finished)


def _up_to_stop(row: list[int], stops: set[int]) -> list[int]:
    """The row's tokens up to its first stop token, included (rows that stopped early kept decoding)."""
    for i, t in enumerate(row):
        if t in stops:
            return row[: i + 1]
    return row


@torch.no_grad()
def generate_images(model, prompts: list[dict], max_new_tokens: int = 24, generator: torch.Generator | None = None,
                    guidance_scale: float = 1.0, temperature: float = 0.0):
    """Images [B, 3, H, W] in [0, 1] and the text the model wrote before each image (at text `temperature`)."""
    boi, stops = model.tokenizer.id(BOI), set(model.builder.stop_ids((BOI, EOT)))
    texts = generate_text(model, prompts, max_new_tokens=max_new_tokens, stop=(BOI, EOT), generator=generator, temperature=temperature)
    texts = [[t for t in text if t not in stops] for text in texts]
    full = [{"input_ids": p["input_ids"] + t + [boi]} for p, t in zip(prompts, texts)]
    feats, indices = image_tokens(model, full, generator, guidance_scale)
    return model.decode_images(feats, indices), [model.tokenizer.decode(t) for t in texts]


@torch.no_grad()
def image_tokens(model, prefixes: list[dict], generator: torch.Generator | None = None, guidance_scale: float = 1.0):
    """The N output image tokens after each prefix (ending in <boi>): features [B, N, F], indices [B, N] or None.

    With `guidance_scale` != 1 the same prefixes with the request hidden run beside them in one
    batch (rows B..2B-1), and both halves are fed the guided token.
    """
    n, b = model.output_encoder.num_tokens, len(prefixes)
    guided = guidance_scale != 1.0
    if guided:
        prefixes = prefixes + [unconditional(model, p) for p in prefixes]
    cache, last = _prefill_last(model, prefixes, None, n)
    feats, indices = [], []
    for step in range(n):
        if guided:
            f, idx = model.sample_image_token(last[:b].float(), generator, h_uncond=last[b:].float(), guidance_scale=guidance_scale)
        else:
            f, idx = model.sample_image_token(last.float(), generator)  # [B, F], [B] or None
        feats.append(f)
        indices.append(idx)
        if step < n - 1:
            feed = torch.cat([f, f]) if guided else f
            last = model.backbone.decode(model.embed_output_tokens(feed[:, None], first_slot=step).to(last.dtype), cache)[:, 0]
    return torch.stack(feats, 1), (torch.stack(indices, 1) if indices[0] is not None else None)


def unconditional(model, prefix: dict) -> dict:
    """The prefix with its request text replaced by <unk> (same length: positions line up)."""
    ids = torch.tensor([prefix["input_ids"]])
    hidden = model.hide_prompts(ids, torch.ones(1, dtype=torch.bool))[0].tolist()
    return {**prefix, "input_ids": hidden}
