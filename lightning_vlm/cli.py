"""`lightning-vlm` command line.

Training verbs (fit/validate/test/predict) go to LightningCLI, so every experiment is
a YAML file whose `model` and `data` name their classes by class path. The other
verbs (`data`, `plugins`) are small argparse programs of their own.

Every training verb starts from the packaged defaults (`lightning_vlm/defaults.yaml`: trainer,
checkpoints, TensorBoard logger), then the --config overlays, then the command line. An overlay
names its run folder once (`trainer.default_root_dir`); the logger and checkpoints follow it.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

# Lightning's pytree helper calls an API that newer torch releases deprecate, once per fit: nothing a
# user of this package can act on (the frozen encoders' eval-mode notice is silenced in training.module).
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class _NoAdvertisement(logging.Filter):
    """Drops Lightning's tip to install its cloud logger, printed by every run that uses another logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdvertisement())

LIGHTNING_VERBS = {"fit", "validate", "test", "predict"}
DEFAULTS = Path(__file__).with_name("defaults.yaml")
RUN_DIR = "${trainer.default_root_dir}"  # written in defaults.yaml where the run folder goes
# How a trained model samples, not what it learned: at test/predict time these come from the
# command line and config, never from the checkpoint's saved hyperparameters.
INFERENCE_KNOBS = ("guidance_scale", "text_temperature", "max_new_tokens", "grid_images", "use_token_cache")
# The image head's options are merged instead: the checkpoint's, updated by the keys the config gives
# (`--model.init_args.head_options '{sampling_steps: 50}'` changes that key; width, depth stay trained).
MERGED_KNOBS = ("head_options",)


def _replace_run_dir(value, run_dir: str | None, missing: list):
    """`value` with every RUN_DIR in its strings replaced by run_dir (nested namespaces and lists too)."""
    if isinstance(value, str) and RUN_DIR in value:
        if run_dir is None:
            missing.append(value)
            return value
        return value.replace(RUN_DIR, run_dir)
    from jsonargparse import Namespace

    if isinstance(value, list):
        return [_replace_run_dir(v, run_dir, missing) for v in value]
    if isinstance(value, Namespace):
        for key, item in vars(value).items():
            setattr(value, key, _replace_run_dir(item, run_dir, missing))
    elif isinstance(value, dict):
        return {k: _replace_run_dir(v, run_dir, missing) for k, v in value.items()}
    return value


def fill_run_dir(config) -> None:
    """Point the logger and checkpoints of one verb's config at its run folder, trainer.default_root_dir.

    Replaces RUN_DIR in any string (defaults.yaml's logger save_dir and checkpoint dirpath) and
    gives a ModelCheckpoint without a dirpath the run folder itself: runs/<name>/last.ckpt, runs/<name>/tb.
    """
    from lightning_vlm.errors import UserError

    trainer = config.get("trainer")
    if trainer is None:
        return
    root = trainer.get("default_root_dir")
    root = None if root is None else str(root)
    missing: list = []
    _replace_run_dir(trainer, root, missing)
    if trainer.get("logger") is False and trainer.get("callbacks"):  # `--trainer.logger false`: nothing to monitor the LR into
        trainer["callbacks"] = [c for c in trainer["callbacks"] if not str(c.get("class_path", "")).endswith("LearningRateMonitor")]
    for callback in trainer.get("callbacks") or []:
        init = callback.get("init_args") if hasattr(callback, "get") else None
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint") and init is not None and init.get("dirpath") is None:
            if root is None:
                missing.append("ModelCheckpoint.dirpath")
            else:
                init["dirpath"] = root
    if missing:
        raise UserError("trainer.default_root_dir is not set, and the logger and checkpoints write into it: "
                        "set it in the config (trainer: {default_root_dir: runs/<name>}) or add --trainer.default_root_dir runs/<name>")


def choose_cpu_precision(config) -> None:
    """bf16-mixed on a CPU without native bf16 kernels becomes 32-true, said in one line (lightning_vlm/precision.py)."""
    trainer = config.get("trainer")
    if trainer is None:
        return
    from lightning_vlm.precision import cpu_precision

    precision, reason = cpu_precision(trainer.get("precision"), trainer.get("accelerator"))
    if reason:
        trainer["precision"] = precision
        print(f"lightning-vlm: {reason}", file=sys.stderr)


def cli_class():
    """The LightningCLI subclass every training verb runs (built on first use: importing Lightning is slow)."""
    from lightning.pytorch.cli import LightningCLI

    from lightning_vlm.errors import preflight

    class VLMCLI(LightningCLI):
        """LightningCLI that lets `test --ckpt_path X --model.init_args.guidance_scale 3` mean what it says.

        With a ckpt_path, LightningCLI replaces the model's arguments by the checkpoint's saved
        hyperparameters, so a sampling setting given for this run would be silently ignored.
        """

        def parse_arguments(self, parser, args):
            super().parse_arguments(parser, args)
            sub = self.config.get("subcommand")
            init = self.config.get(f"{sub}.model.init_args") if sub else None
            self._inference = {k: init[k] for k in INFERENCE_KNOBS + MERGED_KNOBS if init is not None and k in init}

        def instantiate_trainer(self, **kwargs):
            """Every fit saves its final step, and step-bounded fits get a progress bar that says so."""
            from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBar

            from lightning_vlm.callbacks import FinalStepCheckpoint, StepProgressBar

            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(FinalStepCheckpoint())
            for i, callback in enumerate(trainer.callbacks):
                if type(callback) is RichProgressBar:  # Lightning's default bar, not one the config chose
                    trainer.callbacks[i] = StepProgressBar()
            return trainer

        def before_instantiate_classes(self):
            sub = self.config.get("subcommand")
            if sub and sub != "fit" and self._inference:
                for key, value in self._inference.items():
                    if key in MERGED_KNOBS:  # the checkpoint's dict (or the config's, without one), updated
                        value = {**(self.config.get(f"{sub}.model.init_args.{key}") or {}), **(value or {})}
                    self.config[f"{sub}.model.init_args.{key}"] = value
            if sub:
                fill_run_dir(self.config[sub])
                choose_cpu_precision(self.config[sub])
            if sub in ("test", "validate") and "verbose" in self.config[sub]:
                self.config[sub]["verbose"] = False  # UnifiedVLM prints one metrics table, with chance levels

    class FailFastCLI(VLMCLI):
        """Checks the files a run opens late (test-time reader, --ckpt_path) before building anything."""

        def before_instantiate_classes(self):
            super().before_instantiate_classes()
            preflight(self.config, self.config.get("subcommand"))

    return FailFastCLI


def run_cli(args: list[str] | None, cls=None):
    """Parse (defaults file, then --config files, then flags), instantiate and run one training verb."""
    import lightning.pytorch as pl

    import lightning_vlm.training  # noqa: F401  (configs may name it by its short name, UnifiedVLM)
    from lightning_vlm.registry import import_all

    import_all()  # plugin classes become nameable in YAML by their short class name
    # Parser errors raise (argparse.ArgumentError) instead of printing the whole usage, so that
    # errors.report can say in two lines which key is wrong; --debug shows the traceback instead.
    raise_errors = {"exit_on_error": False}
    per_verb = {**raise_errors, "default_config_files": [str(DEFAULTS)]}
    return (cls or cli_class())(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**raise_errors, **{verb: dict(per_verb) for verb in LIGHTNING_VERBS}},
        args=args,
    )


def lightning_main(args: list[str] | None = None) -> None:
    from lightning_vlm.errors import debug_requested, report

    debug, given = debug_requested(list(sys.argv[1:] if args is None else args))
    if args is None:
        sys.argv[1:] = given  # LightningCLI reads sys.argv itself; it must not see --debug
    else:
        args = given
    try:
        run_cli(args)
    except Exception as exc:
        code = None if debug else report(exc, "lightning-vlm " + (given[0] if given else ""), given)
        if code is None:
            raise
        sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    from_shell = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv else "--help"  # `lightning-vlm --debug fit ...` goes to lightning_main, which drops --debug
    if verb == "data":
        from lightning_vlm.data.cli import data_main

        sys.exit(data_main(argv[1:]))
    if verb == "encode":
        from lightning_vlm.encoders.cache import encode_main

        sys.exit(encode_main(argv[1:]))
    if verb == "probe":
        from lightning_vlm.smartwatch.probe import probe_main

        sys.exit(probe_main(argv[1:]))
    if verb == "eval":
        from lightning_vlm.eval.benchmark import eval_main

        sys.exit(eval_main(argv[1:]))
    if verb == "export":
        from lightning_vlm.export import export_main

        sys.exit(export_main(argv[1:]))
    if verb == "study":
        from lightning_vlm.study.main import study_main

        sys.exit(study_main(argv[1:]))
    if verb == "upgrade":
        from lightning_vlm.models.checkpoints import upgrade_main

        sys.exit(upgrade_main(argv[1:]))
    if verb == "plugins":
        from lightning_vlm.registry import plugins_main

        sys.exit(plugins_main(argv[1:]))
    if verb in LIGHTNING_VERBS or verb.startswith("-"):
        if verb in ("-h", "--help"):
            print(
                "usage: lightning-vlm {fit,validate,test,predict} --config FILE [...]\n"
                "       lightning-vlm data smartwatch --out DIR [--config FILE] [...]\n"
                "       lightning-vlm encode --encoder NAME --checkpoint FILE --data DIR\n"
                "       lightning-vlm probe --ckpt VLM.ckpt [--attribute weather] [--where adapter]\n"
                "       lightning-vlm eval --ckpt VLM.ckpt --questions Q.jsonl --images DIR --format {pope,mme,mcq,open} --out DIR\n"
                "       lightning-vlm export --ckpt VLM.ckpt --merge-lora --out DIR\n"
                "       lightning-vlm study {plan,run,report} SPEC|DIR [--out DIR] [--shard i/n]\n"
                "       lightning-vlm upgrade OLD.ckpt [--out NEW.ckpt]   (a checkpoint of DiscreteVLM & co.)\n"
                "       lightning-vlm plugins [heads|encoders|datasets]"
            )
            return
        lightning_main(None if from_shell else argv)  # LightningCLI reads sys.argv itself
        return
    sys.exit(f"lightning-vlm: unknown command '{verb}'; use one of: fit, validate, test, predict, data, encode, probe, eval, export, "
             "study, upgrade, plugins")


if __name__ == "__main__":
    main()
