"""Text tokenizer: byte-level BPE trained on the dataset's own text (HF `tokenizers`).

Digits are split one per token so times and percentages are spelled digit by digit,
which is what lets a small model read and write `07:45:09` or `57%` exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Each sample encodes 2-3 short strings: threads buy nothing there (59 vs 67 us a sample on idle cores,
# 42 vs 120 us beside a training process; RESULTS, Speed, 2026-12-07), and in a loader worker they
# only compete with the training step for the cores. A user's own setting wins. `tokenizers` reads it
# at every call, so it holds from here on.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAD, UNK, BOS, EOT, USER, ASSISTANT, IMAGE, BOI, EOI = (
    "<pad>", "<unk>", "<bos>", "<eot>", "<user>", "<assistant>", "<image>", "<boi>", "<eoi>",
)
SPECIAL_TOKENS = (PAD, UNK, BOS, EOT, USER, ASSISTANT, IMAGE, BOI, EOI)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


class TextTokenizer:
    """Thin wrapper that knows our special tokens; load it with `TextTokenizer.from_file`."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}; retrain it with lightning-vlm data")
        self.special = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}

    @classmethod
    def from_file(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path} (it is written by `lightning-vlm data`)")
        return cls(Tokenizer.from_file(str(path)))

    def __getstate__(self):  # picklable for DataLoader workers
        return {"json": self.tokenizer.to_str()}

    def __setstate__(self, state):
        self.__init__(Tokenizer.from_str(state["json"]))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def id(self, token: str) -> int:
        return self.special[token]
