"""UnifiedVLM: the LightningModule around a `models.VLM`, the unit configs name.

It does what Lightning needs and nothing the model can do itself: build the model from a
config's strings (`build.build_vlm`), optimise it (AdamW, warm-up then cosine), log losses and
examples, evaluate it (`eval.evaluator` with the data's scorer) and keep checkpoints loadable
(`checkpoints`). The model, the image head and the data plugin each live in their own module.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric

from ..data.dataset import Scorer
from ..data.tasks import TASKS
from ..eval.evaluator import GenerationSettings, VLMEvaluator, select_rows
from ..models import checkpoints
from .build import build_vlm
from .examples import format_metrics, log_examples, save_generated_grid, tensorboard
from .optimizers import MuonWithAdamW
from .strategies import check_meta_weights, fsdp_root, rank_zero_object

# The frozen image encoders stay in eval mode by design (their BatchNorm statistics are part of the
# tokenizer), so Lightning's "Found N module(s) in eval mode at the start of training" says nothing a
# user can act on; `on_fit_start` checks that nothing else is in eval mode instead.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

FREEZABLE = ("backbone", "text_embeddings", "input_projector", "input_positions", "output_projector", "output_slots", "image_head")


class UnifiedVLM(pl.LightningModule):
    """A unified VLM with the image head a config names.

    Args:
        tokenizer_path: tokenizer.json of the data, or "hf:/path/to/local/causal-lm" for that model's own
            tokenizer with the project's tokens added (the data's `tokenizer` must name the same).
        input_encoder / output_encoder: checkpoints (or trained encoder names) of the frozen encoders that
            read images and whose tokens are generated (default output: the input encoder, one shared space).
        input_token_group / output_token_group: read / write the encoder's tokens in g x g blocks, one sequence
            position each (`encoders.grouped`): 2 makes an 8 x 8 grid 16 positions; set the data's
            image_tokens_in / image_tokens_out to match. Alike on both sides, one encoder stays one shared space.
        backbone: "micro" | "tiny" | "small" | "base" | "hf:/path/to/local/causal-lm"; backbone_overrides: its
            BackboneConfig fields, or `models.hf_backbone.HFBackbone` options (dtype, lora, ...).
        head / head_options: a registered image head (`lightning-vlm plugins`) and its keyword options.
        image_loss_weight, prompt_dropout, context_noise, standardize_features, output_slot_embedding,
            input_position_embedding: see `models.VLM`.
        misalign_strength / misalign_seed / misalign_rotation: the alignment study's affine map on the input side.
        freeze: parts kept fixed: any of FREEZABLE.
        lr / projector_lr / weight_decay / warmup_ratio / min_lr_ratio: AdamW with linear warm-up, then cosine
            decay to min_lr_ratio x lr at the last step (1.0: constant after warm-up).
        max_new_tokens / text_temperature / guidance_scale: how answers and images are sampled at test time.
        grid_images: generated images and answers logged to TensorBoard per validation.
        use_token_cache: read encoder outputs from `lightning-vlm encode`'s cache beside the data when it
            matches the encoder checkpoint; images it lacks are encoded on the fly.
        init_weights: a checkpoint whose weights start this fit (a curriculum's next stage, fresh optimiser).
        compile_backbone: train with the backbone compiled by torch.compile (the first steps pay the compile).
        split_by_length: run each batch as a short and a long group of rows, each padded only to its own
            longest (`models.length_groups`): the same losses with fewer padded tokens in mixed batches.
        text_task_weights: {task: weight} of each task's tokens in the text loss (default 1 each), e.g.
            {vqa: 2}: a VQA answer is ~10 tokens against a caption's ~34 (`models.VLM`).
        optimizer: "adamw", or "muon": the backbone's hidden matrices by Muon (orthogonalised momentum,
            its update scaled to AdamW's so lr and schedule carry over), the rest by AdamW
            (`training.optimizers`). muon_lr: the Muon half's peak lr (default: lr), under the same schedule.
        save_frozen_backbone: also store an hf: backbone's frozen weights in checkpoints (default: they are
            read back from the model folder at load; loading is then non-strict, for FSDP's own loader).
        chat_template: render conversations with the tokenizer's own chat template (an instruct LM's);
            the data module must say the same (`data.init_args.chat_template`). docs/real_data.md.
    """

    def __init__(
        self,
        tokenizer_path: str,
        input_encoder: str,
        output_encoder: str | None = None,
        input_token_group: int = 1,
        output_token_group: int = 1,
        backbone: str = "tiny",
        backbone_overrides: dict | None = None,
        head: str = "discrete",
        head_options: dict | None = None,
        image_loss_weight: float = 1.0,
        misalign_strength: float = 0.0,
        misalign_seed: int = 0,
        misalign_rotation: str = "random",
        freeze: list[str] | None = None,
        lr: float = 1e-3,
        projector_lr: float | None = None,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.1,
        max_new_tokens: int = 40,
        text_temperature: float = 0.0,
        guidance_scale: float = 1.0,
        grid_images: int = 8,
        prompt_dropout: float = 0.0,
        output_slot_embedding: bool = True,
        input_position_embedding: bool = False,
        standardize_features: bool = False,
        context_noise: float = 0.0,
        use_token_cache: bool = True,
        init_weights: str | None = None,
        compile_backbone: bool = False,
        save_frozen_backbone: bool = False,
        chat_template: bool = False,
        split_by_length: bool = False,
        text_task_weights: dict[str, float] | None = None,
        optimizer: str = "adamw",
        muon_lr: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be adamw or muon (the backbone's hidden matrices by Muon, the rest by AdamW); got {optimizer!r}")
        if muon_lr is not None and optimizer != "muon":
            raise ValueError(f"muon_lr is the Muon half's lr: set optimizer: muon, or leave muon_lr out (got optimizer {optimizer!r})")
        bad = set(freeze or []) - set(FREEZABLE)
        if bad:
            raise ValueError(f"freeze: unknown part(s) {sorted(bad)}; known: {', '.join(FREEZABLE)}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio is the cosine's floor as a fraction of lr, in [0, 1]; got {min_lr_ratio}")
        self.model, self.encoder_paths = build_vlm(
            tokenizer_path, input_encoder, output_encoder, backbone, backbone_overrides, head, head_options,
            misalign={"strength": misalign_strength, "seed": misalign_seed, "rotation": misalign_rotation},
            input_token_group=input_token_group, output_token_group=output_token_group,
            standardize_features=standardize_features, output_slot_embedding=output_slot_embedding,
            input_position_embedding=input_position_embedding,
            prompt_dropout=prompt_dropout, context_noise=context_noise, image_loss_weight=image_loss_weight,
            chat_template=chat_template, split_by_length=split_by_length, text_task_weights=text_task_weights)
        if compile_backbone:
            self.model.compile_backbone()
        if backbone.startswith("hf:") and not save_frozen_backbone:
            self.strict_loading = False  # checkpoints leave the frozen pretrained weights out
        for part in freeze or []:
            if getattr(self.model, part) is not None:
                getattr(self.model, part).requires_grad_(False)
        names = ["text", "image", "total"] + [f"text/{t}" for t in TASKS]
        self.val_losses = nn.ModuleDict({n.replace("/", "__"): MeanMetric(sync_on_compute=True) for n in names})
        self._batch_started = None
        # (evaluator, generator) while a ValScores callback scores a validation; a tuple, so the evaluator
        # is not registered as a submodule (and not saved in checkpoints)
        self.val_scoring: tuple | None = None

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def generation_settings(self) -> GenerationSettings:
        hp = self.hparams
        return GenerationSettings(hp.max_new_tokens, hp.text_temperature, hp.guidance_scale)

    # ---- set-up and checkpoints ------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Warm-starts from `init_weights`; fails early when the data was built with another tokenizer or image-token counts."""
        if stage == "fit" and self.hparams.init_weights:
            checkpoints.load_weights(self, self.hparams.init_weights)
            rank_zero_info(f"init_weights: started from the weights of {self.hparams.init_weights}")
        if self._trainer is not None:
            check_meta_weights(self)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "tokenizer"):
            return
        if getattr(dm.builder, "chat_template", False) != self.model.builder.chat_template:
            raise ValueError(f"data.init_args.chat_template is {getattr(dm.builder, 'chat_template', False)} but "
                             f"model.init_args.chat_template is {self.model.builder.chat_template}: set both alike")
        if dm.tokenizer.tokenizer.to_str() != self.tokenizer.tokenizer.to_str():
            raise ValueError(f"model.tokenizer_path ({self.hparams.tokenizer_path}) differs from the data's tokenizer.json; point it at the data's")
        for side, enc, n in (("in", self.model.input_encoder, dm.builder.image_tokens_in), ("out", self.model.output_encoder, dm.builder.image_tokens_out)):
            if enc.num_tokens != n:
                raise ValueError(f"data.image_tokens_{side} is {n} but the {side}put encoder gives {enc.num_tokens} tokens: set data.init_args.image_tokens_{side}: {enc.num_tokens}")
        if self.hparams.use_token_cache and hasattr(dm, "data_dir"):
            self.open_token_caches(dm.data_dir)
            if hasattr(dm, "images_cached"):
                dm.images_cached(self.model.cached_splits())

    def open_token_caches(self, data_dir: str) -> None:
        from ..encoders.cache import TokenCache
        from ..registry import name_of

        for side, encoder in (("input", self.model.input_encoder), ("output", self.model.output_encoder)):
            encoder = encoder.cache_encoder  # grouped tokens: the cache holds the inner encoder's
            name = name_of("encoders", type(encoder))
            self.model.token_caches[side] = TokenCache.open(data_dir, name, self.encoder_paths[side]) if name else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vlm_class"] = f"{type(self).__module__}.{type(self).__qualname__}"  # read by `lightning-vlm export`
        checkpoints.drop_frozen_weights(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoints.former_class(checkpoint) is not None:
            upgraded = checkpoints.upgrade_checkpoint(checkpoint)
            checkpoint.clear()
            checkpoint.update(upgraded)
        checkpoints.restore_frozen_weights(self, checkpoint)

    # ---- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.model(batch)
        if not torch.isfinite(losses["total"]):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            tasks = sorted({TASKS[int(t)] for t in batch["task"]})
            raise FloatingPointError(f"non-finite loss at step {self.global_step} (batch tasks: {', '.join(tasks)}): {parts}")
        b = len(batch["keys"])
        for name, value in losses.items():
            self.log(f"train/loss/{name}", value, batch_size=b, prog_bar=name == "total")
        self.log("data/skipped_samples", float(batch.get("skipped", 0)), reduce_fx="sum", batch_size=b)
        return losses["total"] + self._touch_unused(batch)

    def _touch_unused(self, batch: dict) -> torch.Tensor:
        """Zero that still reaches every trainable parameter: DDP expects a gradient for each one on
        every rank, even when this rank's batch has no generation (or no understanding) sample."""
        m, idle = self.model, []
        if not batch["image_out_mask"].any():
            idle += [m.image_head, m.output_projector] + ([m.output_slots] if m.output_slots is not None else [])
        if not batch["image_in_mask"].any():
            idle += [m.input_projector] + ([m.input_positions] if m.input_positions is not None else [])
        params = [p for part in idle for p in part.parameters() if p.requires_grad]
        return sum((p.sum() * 0 for p in params), torch.zeros((), device=self.device))

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self._batch_started is None:
            return
        seconds, b = time.perf_counter() - self._batch_started, len(batch["keys"])
        self.log("train/samples_per_sec", b / seconds, batch_size=b)
        self.log("train/tokens_per_sec", float(batch["attention_mask"].sum()) / seconds, batch_size=b)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real = ~batch["is_padding"]
        if real.any():
            rows = select_rows(batch, real)
            for name, value in self.model(rows).items():
                self.val_losses[name.replace("/", "__")].update(value.detach().float(), len(rows["keys"]))
        elif fsdp_root(self) is not None:
            self.model(batch)  # padding only: this rank still joins every FSDP unit's all-gather, unscored
        self.draw_val_examples(batch)
        if self.val_scoring is not None:  # ValScores: generated here, inside the step (under FSDP, inside the root's forward)
            evaluator, generator = self.val_scoring
            evaluator.update(self.model, batch, generator)

    def on_validation_epoch_end(self) -> None:
        """Synced in a fixed order on every rank (a rank may have seen no sample of some task).

        torchmetrics already reduced each loss over all ranks, so every rank logs the same value;
        `sync_dist=True` with a max over equal values silences Lightning's DDP warning and returns
        them bit for bit (a mean could round them).
        """
        for key, metric in self.val_losses.items():
            value = metric.compute() if metric.update_count or torch.distributed.is_initialized() else torch.tensor(float("nan"))
            if not torch.isnan(value):
                self.log(f"val/loss/{key.replace('__', '/')}", value, prog_bar=key == "total", sync_dist=True, reduce_fx="max")
            metric.reset()

    def on_validation_epoch_start(self) -> None:
        self._val_logged = {"generation": False, "understanding": False}

    def draw_val_examples(self, batch: dict) -> None:
        """Once per validation: generated images beside their ground truth, and sample answers (no scores).

        Eval batches come task by task, so the grid waits for the first batch with generation rows
        and the answers for the first with understanding rows. Every rank generates rank 0's picks,
        inside `validation_step` (under FSDP that is inside the root's forward): each FSDP layer
        gathers its weights from all ranks, so a generation on rank 0 alone would wait forever.
        Only rank 0 logs them.
        """
        if all(self._val_logged.values()) or self.trainer.sanity_checking or tensorboard(self) is None:
            return
        picked = rank_zero_object(self, self.pick_val_examples(batch) if self.trainer.is_global_zero else None)
        if picked is None:
            return
        gen = sum(m["task"] == "generation" for m in picked["meta"])
        self._val_logged["generation"] |= gen > 0
        self._val_logged["understanding"] |= gen < len(picked["meta"])
        evaluator = VLMEvaluator(Scorer(), self.generation_settings()).to(self.device)  # scores nothing: val shows outputs, test scores them
        evaluator.update(self.model, picked, torch.Generator().manual_seed(0), keep_examples=(len(picked["meta"]) - gen) * 4)
        log_examples(self, evaluator, "val")

    def pick_val_examples(self, batch: dict) -> dict | None:
        """The rows of `batch` still to show: up to `grid_images` generation and understanding rows each, or None."""
        real = select_rows(batch, ~batch["is_padding"])
        is_gen = [m["task"] == "generation" for m in real["meta"]]
        n = self.hparams.grid_images
        gen = [] if self._val_logged["generation"] else [i for i, g in enumerate(is_gen) if g][:n]
        und = [] if self._val_logged["understanding"] else [i for i, g in enumerate(is_gen) if not g][:n]
        if not gen and not und:
            return None
        keep = torch.zeros(len(real["meta"]), dtype=torch.bool, device=real["is_padding"].device)
        keep[gen + und] = True
        return select_rows(real, keep)

    # ---- test and predict ------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        settings = self.generation_settings()
        rank_zero_info(f"generation settings: {settings}, head_options={self.hparams.head_options or {}}")
        if settings.guidance_scale != 1 and not self.hparams.prompt_dropout:
            rank_zero_warn(f"guidance_scale={settings.guidance_scale} on a model trained with prompt_dropout 0: its unconditional branch never saw a hidden request")
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "scorer"):
            raise ValueError("test needs a data module with a scorer (lightning_vlm.data.datamodule.VLMDataModule)")
        self.evaluator = VLMEvaluator(dm.scorer(), settings).to(self.device)
        self._generator = torch.Generator().manual_seed(0)
        self._test_grid_logged = False

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluator.update(self.model, batch, self._generator, keep_examples=16)
        if not self._test_grid_logged and self.evaluator.last_images is not None:  # the first batch with generation rows
            log_examples(self, self.evaluator, "test", answers=False)
            if self.trainer.is_global_zero:
                path = self.metrics_path().with_name(self.metrics_path().name.replace("test_metrics.json", "generated.png"))
                path.parent.mkdir(parents=True, exist_ok=True)
                save_generated_grid(*self.evaluator.last_images, path)
                self._grid_path = path
            self._test_grid_logged = True

    def on_test_epoch_end(self) -> None:
        if tensorboard(self) is not None and self.evaluator.examples:
            log_examples(self, self.evaluator, "test", images=False)  # answers, once, at the end
        metrics = {f"test/{k}": v for k, v in self.evaluator.compute().items()}
        for name, value in metrics.items():
            self.log(name, value, rank_zero_only=True)
        self.test_metrics = metrics
        if self.trainer.is_global_zero:
            path = self.metrics_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
            grid = getattr(self, "_grid_path", None)
            print(format_metrics(metrics, self.evaluator.scorer.chance) + f"\nmetrics written to {path}" + (f"\ngenerated images beside the truth: {grid}" if grid else ""))

    def metrics_path(self) -> Path:
        """<checkpoint>.test_metrics.json beside the tested checkpoint, else test_metrics.json in the log dir."""
        ckpt = getattr(self.trainer, "ckpt_path", None)
        if ckpt:
            return Path(ckpt).with_name(Path(ckpt).stem + ".test_metrics.json")
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / "test_metrics.json"

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        from .predict import predict_requests

        return predict_requests(self.model, batch, self.generation_settings(), torch.Generator().manual_seed(batch_idx))

    def on_fit_start(self) -> None:
        frozen = {id(m) for e in (self.model.input_encoder, self.model.output_encoder) for m in e.modules()}
        stray = [n for n, m in self.named_modules() if not m.training and id(m) not in frozen]
        if stray:
            rank_zero_warn(f"{len(stray)} module(s) besides the frozen encoders are in eval mode at the start of training, e.g. {stray[0]}")
        tb = tensorboard(self)
        if tb is not None and self.trainer.is_global_zero:
            hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.hparams.items()}
            tb.add_text("hparams", "\n".join(f"{k}: {v}" for k, v in sorted(hp.items())), 0)

    # ---- optimisation -----------------------------------------------------------------------
    def configure_gradient_clipping(self, optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None) -> None:
        """Clips by the global gradient norm, the same under FSDP as on one device.

        Under FSDP each rank holds a shard of every gradient: `torch.nn.utils.clip_grad_norm_` would
        see only its own part (and Lightning's FSDP precision refuses norm clipping), so the FSDP
        root's `clip_grad_norm_` reduces the norm over all ranks. Otherwise Lightning clips.
        """
        root = fsdp_root(self)
        if root is not None and gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            root.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        hp, m = self.hparams, self.model
        projector_params = {id(p) for part in (m.input_projector, m.output_projector) for p in part.parameters()}
        encoders = ("model.input_encoder", "model.output_encoder")
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith(encoders)]
        hidden = {id(p) for n, p in named if hp.optimizer == "muon" and is_hidden_matrix(n, p)}
        trainable = [p for _, p in named if id(p) not in hidden]
        groups = [
            {"params": [p for p in trainable if id(p) not in projector_params], "lr": hp.lr},
            {"params": [p for p in trainable if id(p) in projector_params], "lr": hp.projector_lr or hp.lr},
        ]
        groups = [g for g in groups if g["params"]]
        if hidden:
            optimizer = MuonWithAdamW([{"params": [p for _, p in named if id(p) in hidden], "lr": hp.muon_lr or hp.lr}], groups,
                                      weight_decay=hp.weight_decay, betas=(0.9, 0.95))
        else:
            optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay, betas=(0.9, 0.95), foreach=True)  # fused=True would forbid Lightning's gradient clipping
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(hp.warmup_ratio * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=warmup, total=total, floor=hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """A backbone's 2-D weight that is neither an embedding nor an output head: what Muon steps."""
    return name.startswith("model.backbone.") and param.ndim == 2 and not any(k in name for k in ("embed", "lm_head", "wte"))


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The learning rate at `step` as a fraction of each group's own: linear warm-up from 1e-3 over
    `warmup` steps, then a cosine from 1 down to `floor` at step `total` (floor 1: constant)."""
    if step < warmup:
        return 1e-3 + (1 - 1e-3) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
