"""The smart-watch dataset plugin: world, renderer, task text, shard writer, scorer, attribute reader and probes.

Nothing generic imports this package: the DataModule and `lightning-vlm data` reach it through
the `lightning_vlm.datasets` entry point `smartwatch` (`dataset.SmartWatchDataset`).
"""
