"""What a VLM checkpoint (of `training.UnifiedVLM`) holds, and the upgrade of checkpoints written before the model/head split
(the table of former classes is in `compat`, with the package's other old names).

- An hf: backbone's frozen pretrained weights are left out of checkpoints (under LoRA a checkpoint
  holds the adapters, projectors and heads, not the whole LM) and read back from the model folder.
- Checkpoints of the former built-in architecture classes (`DiscreteVLM`, `RegressionVLM`,
  `DiffusionVLM`) hold the model's weights at the top level and head options as hyperparameters;
  `upgrade_checkpoint` rewrites them for `training.UnifiedVLM` (`lightning-vlm upgrade OLD.ckpt`).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch

from ..compat import DROPPED_HYPERPARAMETERS as DROPPED
from ..compat import FORMER_ARCHITECTURES as FORMER

MODULE_CLASS = "lightning_vlm.training.UnifiedVLM"


def former_class(checkpoint: dict) -> str | None:
    """The former architecture class a checkpoint was written by, or None for a current one."""
    hp = checkpoint.get("hyper_parameters", {})
    name = hp.get("_class_path") or checkpoint.get("vlm_class")
    return name if name in FORMER or (name and name.split(".")[-1] in {k.split(".")[-1] for k in FORMER}) else None


def upgrade_checkpoint(checkpoint: dict) -> dict:
    """A former architecture's checkpoint in the current layout (hyperparameters and state-dict keys)."""
    name = former_class(checkpoint)
    if name is None:
        return checkpoint
    name = next(k for k in FORMER if k.split(".")[-1] == name.split(".")[-1])
    head, renames, prefixes = FORMER[name]
    hp = dict(checkpoint.get("hyper_parameters", {}))
    options = {new: hp.pop(old) for old, new in renames.items() if old in hp}
    for key in DROPPED:
        hp.pop(key, None)
    hp.update({"head": head, "head_options": options})
    if "_class_path" in hp:
        hp["_class_path"] = MODULE_CLASS
    state = {}
    for key, value in checkpoint.get("state_dict", {}).items():
        new = next((new + key[len(old):] for old, new in prefixes if key.startswith(old)), None)
        state[new or (key if key.startswith("val_losses.") else "model." + key)] = value
    upgraded = {**checkpoint, "hyper_parameters": hp, "state_dict": state, "vlm_class": MODULE_CLASS}
    upgraded.pop("optimizer_states", None)  # parameter order changed with the layout: resume with a fresh optimiser
    upgraded.pop("lr_schedulers", None)
    return upgraded


def upgrade_main(argv: list[str]) -> int:
    """`lightning-vlm upgrade OLD.ckpt [--out NEW.ckpt]`: rewrites a checkpoint of a former architecture class."""
    parser = argparse.ArgumentParser(prog="lightning-vlm upgrade", description=upgrade_main.__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--out", help="where to write the upgraded checkpoint (default: <name>.upgraded.ckpt beside it)")
    args = parser.parse_args(argv)
    path = Path(args.checkpoint)
    if not path.is_file():
        print(f"lightning-vlm upgrade: no checkpoint at {path}", file=sys.stderr)
        return 2
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if former_class(checkpoint) is None:
        print(f"{path} is already in the current layout")
        return 0
    out = Path(args.out) if args.out else path.with_name(path.stem + ".upgraded.ckpt")
    torch.save(upgrade_checkpoint(checkpoint), out)
    hp = upgrade_checkpoint(checkpoint)["hyper_parameters"]
    print(f"wrote {out}: class {MODULE_CLASS}, head {hp['head']}, head_options {hp['head_options']} "
          "(the optimiser state is dropped; set data.init_args.reader for test)")
    return 0


def frozen_pretrained_keys(module) -> set[str]:
    """State-dict keys of an hf: backbone's frozen weights (its embedding and head under their
    `text_embeddings` / `lm_head` names too): what a checkpoint leaves out, see `save_frozen_backbone`."""
    hp = module.hparams
    if not str(hp.backbone).startswith("hf:") or hp.get("save_frozen_backbone", False):
        return set()
    frozen = {id(p) for p in module.model.backbone.parameters() if not p.requires_grad}
    strip = lambda name: name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")  # noqa: E731
    return {strip(n) for n, p in module.named_parameters(remove_duplicate=False) if id(p) in frozen}


def drop_frozen_weights(module, checkpoint: dict) -> None:
    """Leaves the frozen weights of an hf: backbone out of a checkpoint being saved."""
    state = checkpoint.get("state_dict")
    keys = frozen_pretrained_keys(module)
    sharded = getattr(module.trainer.strategy if module._trainer else None, "_state_dict_type", "full") == "sharded"
    if state is None or not keys or sharded:
        return
    dropped = sorted(k for k in state if k in keys)
    for k in dropped:
        del state[k]
    checkpoint["frozen_backbone"] = {"backbone": module.hparams.backbone, "dropped": dropped}


def restore_frozen_weights(module, checkpoint: dict) -> None:
    """Puts the frozen backbone weights a checkpoint left out back in, from this model (built from the
    model folder), so every load sees all keys. Under FSDP the strategy has already loaded the state."""
    state, info = checkpoint.get("state_dict"), checkpoint.get("frozen_backbone")
    if state is None or not info:
        return
    own = module.state_dict()
    lost = [k for k in info["dropped"] if k not in own]
    if lost:
        raise ValueError(f"checkpoint left out frozen weights of {info['backbone']} that this model lacks (e.g. {lost[0]}): "
                         "build the model with the same backbone and backbone_overrides")
    for k in info["dropped"]:
        state.setdefault(k, own[k])


def load_weights(module, path: str) -> None:
    """Copies every weight of another checkpoint of the same head, encoders and sizes into `module`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"init_weights: no checkpoint at {path}")
    checkpoint = upgrade_checkpoint(torch.load(path, map_location="cpu", weights_only=False))
    restore_frozen_weights(module, checkpoint)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("val_losses.")}
    mine = {k: v for k, v in module.state_dict().items() if not k.startswith("val_losses.")}
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    wrong = [k for k in set(mine) & set(state) if mine[k].shape != state[k].shape]
    if missing or extra or wrong:
        raise ValueError(f"init_weights: {path} does not fit this model (missing {missing[:3]}, unexpected "
                         f"{extra[:3]}, other shapes {sorted(wrong)[:3]}): same head, encoders and backbone needed")
    module.load_state_dict(state, strict=False)


def load_vlm(path: str | Path, map_location: str = "cpu"):
    """The trained UnifiedVLM (in eval mode) of a checkpoint, whatever class wrote it: the class the checkpoint
    names (LightningCLI's `_class_path`, or `vlm_class`), after upgrading a former architecture's checkpoint."""
    from ..registry import import_class

    path = Path(path)
    if (path / "meta.pt").is_file():
        raise ValueError(f"{path} is a sharded FSDP checkpoint (a folder): make one file of it first with "
                         f"`python -m lightning.pytorch.utilities.consolidate_checkpoint {path}`, then use {path}.consolidated")
    if not path.is_file():
        raise FileNotFoundError(f"no VLM checkpoint at {path}")
    checkpoint = upgrade_checkpoint(torch.load(path, map_location="cpu", weights_only=False))
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path") or checkpoint.get("vlm_class")
    if not class_path:
        raise ValueError(f"{path} does not name its model class (not a VLM checkpoint written by lightning-vlm)")
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return import_class(class_path, "model").load_from_checkpoint(buffer, map_location=map_location).eval()
