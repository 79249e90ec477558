"""Every old name the package still answers to, in one place: class paths, checkpoint layouts, modules.

- `MOVED`: class paths that configs used to name -> where the class lives now (or the one line
  that says what to change); the CLI prints it instead of a traceback (`errors`).
- `FORMER_ARCHITECTURES`: checkpoints of the built-in architecture classes from before the
  model/head split -> the head that replaced each, its renamed options and state-dict prefixes;
  `lightning-vlm upgrade` rewrites them (`models.checkpoints`).
- `FORMER_MODULES`: modules that were split or renamed -> the modules that hold their names now.
  Importing an old path still works, with a DeprecationWarning naming the new one (a plugin
  written against an older release keeps loading).

A rename adds a line here; nothing else in the package needs to know the old name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

FORMER_ARCHITECTURE = ("has become lightning_vlm.training.UnifiedVLM with head: {head}: write class_path: UnifiedVLM, "
                       "head: {head} and the head's options under head_options (docs/configs.md); convert its "
                       "checkpoints with `lightning-vlm upgrade CKPT`")

MOVED = {
    "lightning_vlm.encoders.export.ExportEncoder": "lightning_vlm.callbacks.ExportEncoder",
    "lightning_vlm.eval.reader.AttributeReader": "lightning_vlm.smartwatch.reader.AttributeReader",
    "lightning_vlm.eval.render_data.RenderedWatchDataModule": "lightning_vlm.smartwatch.render_data.RenderedWatchDataModule",
    "lightning_vlm.eval.render_data.TorchThreads": "lightning_vlm.smartwatch.render_data.TorchThreads",
    "lightning_vlm.data.datamodule.SmartWatchDataModule": "lightning_vlm.data.datamodule.VLMDataModule",
    "lightning_vlm.architectures.predict.PredictionWriter": "lightning_vlm.training.predict.PredictionWriter",
    "lightning_vlm.architectures.discrete.DiscreteVLM": FORMER_ARCHITECTURE.format(head="discrete"),
    "lightning_vlm.architectures.regression.RegressionVLM": FORMER_ARCHITECTURE.format(head="regression"),
    "lightning_vlm.architectures.diffusion.DiffusionVLM": FORMER_ARCHITECTURE.format(head="diffusion"),
}
MOVED.update({path.rpartition(".")[2]: hint for path, hint in list(MOVED.items()) if ".architectures." in path})  # short class names

# Former class -> (head, {old hyperparameter: head option}, [(old state-dict prefix, new prefix)] of the head).
FORMER_ARCHITECTURES = {
    "lightning_vlm.architectures.discrete.DiscreteVLM": ("discrete", {"image_temperature": "temperature"}, [("image_head.", "model.image_head.")]),
    "lightning_vlm.architectures.regression.RegressionVLM": (
        "regression", {"regression_loss": "loss", "head_layers": "layers", "standardize_targets": "standardize_targets"},
        [("image_head.", "model.image_head."), ("target_stats.", "model.image_head.target_stats."), ("target_norm", "model.image_head.target_norm")]),
    "lightning_vlm.architectures.diffusion.DiffusionVLM": (
        "diffusion", {"head_width": "width", "head_depth": "depth", "diffusion_repeats": "repeats", "sampling_steps": "sampling_steps",
                      "noise_temperature": "noise_temperature", "mean_loss_weight": "mean_loss_weight"},
        [("image_head.", "model.image_head.denoiser."), ("latent_scale", "model.image_head.latent_scale")]),
}
DROPPED_HYPERPARAMETERS = ("image_temperature", "reader")  # left the model (reader: data.init_args.reader)

FORMER_MODULES = {
    # sampling helpers and the text head were split out of a module named for image heads (2026-12-07)
    "lightning_vlm.models.heads": ("lightning_vlm.models.sampling", "lightning_vlm.models.text_head"),
}


class FormerModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a `FORMER_MODULES` path as a module holding the public names of its successors."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in FORMER_MODULES else None

    def create_module(self, spec):
        return None  # the default empty module

    def exec_module(self, module: types.ModuleType) -> None:
        successors = FORMER_MODULES[module.__name__]
        warnings.warn(f"{module.__name__} is gone: import from {' or '.join(successors)}", DeprecationWarning, stacklevel=2)
        for successor in successors:
            names = vars(importlib.import_module(successor))
            module.__dict__.update({k: v for k, v in names.items() if not k.startswith("_")})


def install_former_modules() -> None:
    """Let the old module paths import (idempotent; the package's `__init__` calls it)."""
    if not any(isinstance(finder, FormerModules) for finder in sys.meta_path):
        sys.meta_path.append(FormerModules())
