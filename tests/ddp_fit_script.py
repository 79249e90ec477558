"""Run by test_ddp_data.py: a 2-process CPU DDP fit that prints each rank's batch count per epoch."""

import faulthandler
import sys

import lightning.pytorch as pl
import torch

from lightning_vlm.data.datamodule import VLMDataModule


class CountingModel(pl.LightningModule):
    """Just enough model to drive the loop; it records what the data gave each rank."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.batches = 0

    def training_step(self, batch, batch_idx):
        self.batches += 1
        return self.lin(batch["images"].mean((2, 3))).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/images", batch["images"].mean(), sync_dist=True)  # all-reduce each step: hangs if ranks differ

    def on_train_epoch_end(self):
        print(f"RANK {self.global_rank} EPOCH {self.current_epoch} BATCHES {self.batches}", flush=True)
        self.batches = 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    faulthandler.dump_traceback_later(150, exit=True)  # a hang prints every thread's stack instead of timing out silently
    dm = VLMDataModule(sys.argv[1], batch_size=2, num_workers=2)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(CountingModel(), dm)
