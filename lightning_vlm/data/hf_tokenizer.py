"""A pretrained Hugging Face LM's own tokenizer behind `TextTokenizer`'s small interface.

`tokenizer: hf:/local/model-folder` (DataModule) and `tokenizer_path: hf:/local/model-folder`
(UnifiedVLM) read the tokenizer saved beside a causal LM (`AutoTokenizer`, local files only)
instead of the BPE trained on the data, so an `hf:` backbone keeps its pretrained input
embeddings and LM head. The project's special tokens are mapped onto it:

- `<bos>`, `<unk>`, `<pad>` become the model's own BOS / unknown / padding tokens when it has
  them (a pretrained LM expects its own BOS first), and are added otherwise;
- `<user>`, `<assistant>`, `<eot>`, `<image>`, `<boi>`, `<eoi>` are added as special tokens
  (new ids after the model's vocabulary, `added_ids`), whose embedding and LM-head rows the
  VLM trains (see `models.hf_backbone.AddedTokenEmbedding`).

Chat template: the model's own template (if any) is NOT used. Sequences keep the project's
format (`collate.SequenceBuilder`): single-token turn markers are what the masks, the image
slots, classifier-free guidance's prompt hiding and generation's stop tokens are built on,
and one format for every backbone keeps runs comparable. The turn markers are learned in
fine-tuning (their rows are trainable even under LoRA); an instruct model loses the prior of
its chat format, which a LLaVA-style fine-tune relearns anyway.

Model and data agree when both name the same folder: `UnifiedVLM.setup` compares the two
tokenizers' serialised form (`.tokenizer.to_str()`), which includes the added tokens.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from .tokenizer import BOS, PAD, SPECIAL_TOKENS, UNK, TextTokenizer

HF_PREFIX = "hf:"
# Project tokens that become the model's own special token of that role, when it has one.
ALIASES = {BOS: "bos_token", UNK: "unk_token", PAD: "pad_token"}
STRUCTURAL = tuple(t for t in SPECIAL_TOKENS if t not in (UNK, PAD))  # must be distinct ids


def load_tokenizer(spec: str | Path) -> TextTokenizer:
    """`hf:/local/folder` -> that model's tokenizer (`HFTokenizer`); anything else -> a tokenizer.json (`TextTokenizer`)."""
    spec = str(spec)
    if spec.startswith(HF_PREFIX):
        return HFTokenizer.from_pretrained(spec[len(HF_PREFIX):])
    return TextTokenizer.from_file(spec)


def _auto_tokenizer(folder: str | Path, local_files_only: bool = True):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ImportError("an hf: tokenizer needs transformers: pip install 'lightning-vlm[hf]' (or transformers)") from None
    folder = Path(folder)
    if local_files_only and not folder.is_dir():
        raise FileNotFoundError(f"hf tokenizer: no model directory at {folder} (give the local folder written by save_pretrained)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=local_files_only)
    except (OSError, ValueError) as exn:
        raise FileNotFoundError(f"hf tokenizer: cannot read a tokenizer from {folder} ({str(exn)[:200]})") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise ValueError(f"hf tokenizer: {folder} gives a slow tokenizer; install sentencepiece/protobuf so it converts to a fast one, "
                         "or save the model's tokenizer.json there")
    return tok


def hf_tokenizer_with_specials(folder: str | Path, local_files_only: bool = True):
    """(transformers fast tokenizer with the project's tokens added, {project token: id}, added ids).

    The one place the mapping is decided: `HFTokenizer.from_pretrained` and `export` (which saves
    this tokenizer beside a merged model) both call it, so they agree id for id.
    """
    tok = _auto_tokenizer(folder, local_files_only)
    special: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        own = getattr(tok, ALIASES[token], None) if token in ALIASES else None
        if own is not None and tok.convert_tokens_to_ids(own) is not None:
            special[token] = tok.convert_tokens_to_ids(own)
    vocab = tok.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in special and t not in vocab]
    if missing:
        tok.add_tokens(missing, special_tokens=True)  # the same call in transformers 4 and 5
    vocab = tok.get_vocab()
    for token in SPECIAL_TOKENS:
        if token not in special:
            special[token] = vocab[token]
    added = sorted(special[t] for t in missing)
    ids = [special[t] for t in STRUCTURAL]
    if len(set(ids)) != len(ids):
        raise ValueError(f"hf tokenizer {folder}: the project's tokens {STRUCTURAL} do not get distinct ids ({ids})")
    return tok, special, added


class HFTokenizer(TextTokenizer):
    """TextTokenizer over a pretrained model's tokenizer; see the module docstring.

    `.tokenizer` is the `tokenizers.Tokenizer` (with the added tokens), as in TextTokenizer;
    `special` maps each project token to its id; `added_ids` are the ids added to the model's
    vocabulary; `vocab_size` is the largest id + 1 (the rows an embedding table needs).
    """

    def __init__(self, tokenizer: Tokenizer, special: dict[str, int], added_ids: list[int], source: str | None = None):
        self.tokenizer = tokenizer
        missing = [t for t in SPECIAL_TOKENS if t not in special]
        if missing:
            raise ValueError(f"hf tokenizer lacks project tokens {missing}")
        self.special = dict(special)
        self.added_ids = list(added_ids)
        self.source = source
        self._vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def from_pretrained(cls, folder: str | Path, local_files_only: bool = True) -> "HFTokenizer":
        tok, special, added = hf_tokenizer_with_specials(folder, local_files_only)
        return cls(Tokenizer.from_str(tok.backend_tokenizer.to_str()), special, added, str(folder))

    def __getstate__(self):  # picklable for DataLoader workers
        return {"json": self.tokenizer.to_str(), "special": self.special, "added": self.added_ids, "source": self.source}

    def __setstate__(self, state):
        self.__init__(Tokenizer.from_str(state["json"]), state["special"], state["added"], state.get("source"))

    @property
    def vocab_size(self) -> int:
        return self._vocab_size
