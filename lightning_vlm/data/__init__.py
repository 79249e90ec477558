"""Data: the smart-watch generator, shards, tokenizer, sequence building and the DataModule."""
