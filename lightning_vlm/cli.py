"""`lightning-vlm` command line.

Training verbs (fit/validate/test/predict) go to LightningCLI, so every experiment is
a YAML file whose `model` and `data` name their classes by class path. The other
verbs (`data`, `plugins`) are small argparse programs of their own.
"""

from __future__ import annotations

import sys

LIGHTNING_VERBS = {"fit", "validate", "test", "predict"}
# How a trained model samples and is scored, not what it learned: at test/predict time these
# come from the command line and config, never from the checkpoint's saved hyperparameters.
INFERENCE_KNOBS = ("guidance_scale", "image_temperature", "text_temperature", "max_new_tokens", "reader", "grid_images",
                   "sampling_steps", "noise_temperature", "flow_steps", "use_token_cache")


def lightning_main(args: list[str] | None = None) -> None:
    from lightning_vlm.errors import debug_requested, preflight, report

    debug, given = debug_requested(list(sys.argv[1:] if args is None else args))
    if args is None:
        sys.argv[1:] = given  # LightningCLI reads sys.argv itself; it must not see --debug
    else:
        args = given

    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from lightning_vlm.registry import import_all

    class VLMCLI(LightningCLI):
        """LightningCLI that lets `test --ckpt_path X --model.init_args.guidance_scale 3` mean what it says.

        With a ckpt_path, LightningCLI replaces the model's arguments by the checkpoint's saved
        hyperparameters, so a sampling setting given for this run would be silently ignored.
        """

        def parse_arguments(self, parser, args):
            super().parse_arguments(parser, args)
            sub = self.config.get("subcommand")
            init = self.config.get(f"{sub}.model.init_args") if sub else None
            self._inference = {k: init[k] for k in INFERENCE_KNOBS if init is not None and k in init}

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
                    self.config[f"{sub}.model.init_args.{key}"] = value

    class FailFastCLI(VLMCLI):
        """Checks the files a run opens late (test-time reader, --ckpt_path) before building anything."""

        def before_instantiate_classes(self):
            super().before_instantiate_classes()
            preflight(self.config, self.config.get("subcommand"))

    import_all()  # plugin classes become nameable in YAML by their short class name
    # Parser errors raise (argparse.ArgumentError) instead of printing the whole usage, so that
    # errors.report can say in two lines which key is wrong; --debug shows the traceback instead.
    raise_errors = {"exit_on_error": False}
    try:
        FailFastCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={**raise_errors, **{verb: raise_errors for verb in LIGHTNING_VERBS}},
            args=args,
        )
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
        from lightning_vlm.eval.probe import probe_main

        sys.exit(probe_main(argv[1:]))
    if verb == "export":
        from lightning_vlm.export import export_main

        sys.exit(export_main(argv[1:]))
    if verb == "study":
        from lightning_vlm.study.main import study_main

        sys.exit(study_main(argv[1:]))
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
                "       lightning-vlm export --ckpt VLM.ckpt --merge-lora --out DIR\n"
                "       lightning-vlm study {plan,run,report} SPEC|DIR [--out DIR] [--shard i/n]\n"
                "       lightning-vlm plugins"
            )
            return
        lightning_main(None if from_shell else argv)  # LightningCLI reads sys.argv itself
        return
    sys.exit(f"lightning-vlm: unknown command '{verb}'; use one of: fit, validate, test, predict, data, encode, plugins")


if __name__ == "__main__":
    main()
