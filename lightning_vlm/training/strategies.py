"""Lightning's multi-GPU strategies as `UnifiedVLM` needs them (configs/real/ddp.yaml, fsdp.yaml).

Under FSDP every call of a wrapped layer gathers its weights from all ranks, so what differs
from one device lives here:
- gradient clipping: only the FSDP root module sees the global norm over every rank's shards
  (`fsdp_root`; `UnifiedVLM.configure_gradient_clipping` calls its `clip_grad_norm_`);
- generation during validation: every rank runs it, on rank 0's rows (`rank_zero_object`; DDP too);
- `VLMFSDPStrategy`: sharded checkpoints without the frozen pretrained weights, and the LM's
  weights read by rank 0 alone (the other ranks build it on the meta device; FSDP fills them in).
"""

from __future__ import annotations

import logging
import re
import warnings
from itertools import chain

from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn


def fsdp_root(module) -> nn.Module | None:
    """The FullyShardedDataParallel root that wraps `module` when its trainer shards it, else None."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    root = trainer.strategy.model
    return root if isinstance(root, FullyShardedDataParallel) else None


def rank_zero_object(module, obj):
    """Rank 0's `obj` on every rank (a collective: every rank must call it), its tensors on the module's device.

    Tensors travel through the CPU: a pickled CUDA tensor would land on the sender's GPU index."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    trainer = module.trainer
    if trainer.world_size == 1:
        return obj
    obj = trainer.strategy.broadcast(move_data_to_device(obj, "cpu"), src=0)
    return move_data_to_device(obj, module.device)


def frozen_keys_hook(keys: set[str]):
    """A state-dict post-hook for the FSDP root that leaves `keys` out, when saving and when Lightning
    builds the dict a sharded checkpoint is loaded into (those weights keep what the model folder gave)."""

    def leave_out(module, state_dict, prefix, local_metadata) -> None:
        for key in [k for k in state_dict if k[len(prefix):] in keys]:
            del state_dict[key]

    return leave_out


class AbsentOnPurpose(logging.Filter):
    """Drops torch's "Did not find param with FQN ..." at a resume for the frozen weights left out on purpose
    (one line per weight and rank otherwise); any other missing weight is still reported."""

    def __init__(self, keys: set[str]):
        super().__init__()
        self.keys = keys

    def filter(self, record: logging.LogRecord) -> bool:
        found = re.match(r"Did not find param with FQN (\S+),", record.getMessage())
        return found is None or found.group(1).replace("_fsdp_wrapped_module.", "") not in self.keys


def has_meta_weights(module: nn.Module) -> bool:
    """Whether some parameter or buffer of `module` is on the meta device (built without memory)."""
    return any(t.is_meta for t in chain(module.parameters(), module.buffers()))


def check_meta_weights(module) -> None:
    """A rank that built its LM on the meta device (`backbone_overrides.weights_on_rank0`) has no weights
    until FSDP copies rank 0's (`sync_module_states`): any other strategy would train uninitialised memory."""
    if not has_meta_weights(module):
        return
    strategy = module.trainer.strategy
    if not (isinstance(strategy, FSDPStrategy) and strategy.kwargs.get("sync_module_states")):
        raise ValueError(f"backbone_overrides.weights_on_rank0 leaves rank {module.global_rank} without the LM's weights, and "
                         f"{type(strategy).__name__} does not copy rank 0's: use it with VLMFSDPStrategy (configs/real/fsdp.yaml, "
                         "sync_module_states: true) or remove it")


class VLMFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy with what a LoRA-tuned pretrained LM needs at scale.

    - `state_dict_type: sharded` checkpoints (each rank writes its own shard, nothing is gathered)
      leave out the hf: backbone's frozen pretrained weights, as the full ones do
      (`models.checkpoints`); a resume reads them from the model folder again.
    - `sync_module_states` (on by default) copies rank 0's weights to every rank when the model is
      wrapped. With `backbone_overrides.weights_on_rank0: true` only rank 0 reads the LM; the other
      ranks build it on the meta device, and each wrapped unit is allocated empty, then filled from rank 0.

    Takes the arguments of `lightning.pytorch.strategies.FSDPStrategy`; gradient clipping by norm is
    done by `UnifiedVLM.configure_gradient_clipping` (Lightning's FSDP precision refuses it).
    """

    def __init__(self, *args, sync_module_states: bool = True, **kwargs):
        kwargs.setdefault("param_init_fn", self.allocate_meta_weights)
        super().__init__(*args, sync_module_states=sync_module_states, **kwargs)
        self.frozen_keys: set[str] = set()  # what sharded checkpoints leave out, known once the model is wrapped
        # LoRA puts frozen weights and trainable adapters in every decoder-layer unit by design; torch then
        # warns once per unit and rank, listing every weight (its cost: each unit's gradient is full-size
        # until it is reduce-scattered, one unit at a time; docs/real_data.md).
        warnings.filterwarnings("ignore", message=r".* has both parameters with requires_grad=True and False")

    def allocate_meta_weights(self, module: nn.Module) -> None:
        """FSDP's `param_init_fn`: empty storage on this rank's device for a module built on the meta device.

        Its values come from rank 0 (`sync_module_states`); FSDP's default would call `reset_parameters`,
        which most transformer modules lack."""
        if any(t.is_meta for t in chain(module.parameters(recurse=False), module.buffers(recurse=False))):
            module.to_empty(device=self.root_device, recurse=False)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        return self.leave_frozen_out(super()._setup_model(model))

    def leave_frozen_out(self, root: nn.Module) -> nn.Module:
        """Sharded checkpoints hold what training changes, as full ones do: the frozen LM comes from its folder."""
        from ..models.checkpoints import frozen_pretrained_keys

        module = self.lightning_module
        backbone = getattr(module, "hparams", {}).get("backbone")
        self.frozen_keys = frozen_pretrained_keys(module) if backbone and self._state_dict_type == "sharded" else set()
        if self.frozen_keys:
            root.register_state_dict_post_hook(frozen_keys_hook(self.frozen_keys))
            logging.getLogger("torch.distributed.fsdp._state_dict_utils").addFilter(AbsentOnPurpose(self.frozen_keys))
            rank_zero_info(f"sharded checkpoints leave out the {len(self.frozen_keys)} frozen weights of {backbone}")
        return root

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Records the left-out weights as a full checkpoint does (`frozen_backbone`), so that the file
        `python -m lightning.pytorch.utilities.consolidate_checkpoint` makes of the folder loads like one."""
        if self.frozen_keys:
            backbone = self.lightning_module.hparams.backbone
            checkpoint.setdefault("frozen_backbone", {"backbone": backbone, "dropped": sorted(self.frozen_keys)})
        super().save_checkpoint(checkpoint, filepath, storage_options)
