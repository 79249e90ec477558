"""Generic evaluation: the test-time evaluator over a dataset's scorer and reader-feature distances (FD/KID)."""
