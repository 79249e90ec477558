"""Data for any dataset: the dataset interface and plugins' registry, shards, tokenizer, sequence building and the DataModule."""
