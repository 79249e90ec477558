"""Study harness: a spec crossing cells, regimes, misalignment, data variants and seeds becomes
resumable, shardable `lightning-vlm fit/test` runs (`runner`), and a tidy CSV, a markdown report
with 95 % CIs and verdicts, and scaling plots (`report`). Entry point: `lightning-vlm study`."""
