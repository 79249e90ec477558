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

Chat template: by default the model's own template (if any) is NOT used. Sequences keep the
project's format (`collate.SequenceBuilder`): single-token turn markers are what the masks, the
image slots, classifier-free guidance's prompt hiding and generation's stop tokens are built on,
and one format for every backbone keeps runs comparable. The turn markers are learned in
fine-tuning (their rows are trainable even under LoRA). With `chat_template: true` (data module
and model) conversations are rendered with the template kept here (`chat_template`, rendered
by `render_chat` through transformers' `apply_chat_template`; see `data.chat_format`), so an
instruct model keeps the prior of its own conversation format.

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


def template_tokens(tok) -> dict[str, str]:
    """The model's own special-token strings a chat template may print (`{{ bos_token }}`, `{{ eos_token }}`)."""
    names = ("bos_token", "eos_token", "unk_token", "pad_token")
    return {name: str(getattr(tok, name)) for name in names if getattr(tok, name, None) is not None}


def own_chat_template(tok) -> str | None:
    """The tokenizer's chat template as one string (a dict of named templates gives its "default"), or None."""
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


class HFTokenizer(TextTokenizer):
    """TextTokenizer over a pretrained model's tokenizer; see the module docstring.

    `.tokenizer` is the `tokenizers.Tokenizer` (with the added tokens), as in TextTokenizer;
    `special` maps each project token to its id; `added_ids` are the ids added to the model's
    vocabulary; `vocab_size` is the largest id + 1 (the rows an embedding table needs);
    `chat_template` is the model's own template (None when it has none) and `template_tokens`
    the special-token strings it prints.
    """

    def __init__(self, tokenizer: Tokenizer, special: dict[str, int], added_ids: list[int], source: str | None = None,
                 chat_template: str | None = None, template_tokens: dict[str, str] | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.template_tokens = dict(template_tokens or {})
        self._chat_tokenizer = None
        missing = [t for t in SPECIAL_TOKENS if t not in special]
        if missing:
            raise ValueError(f"hf tokenizer lacks project tokens {missing}")
        self.special = dict(special)
        self.added_ids = list(added_ids)
        self.source = source
        self._vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def from_pretrained(cls, folder: str | Path, local_files_only: bool = True) -> HFTokenizer:
        tok, special, added = hf_tokenizer_with_specials(folder, local_files_only)
        return cls(Tokenizer.from_str(tok.backend_tokenizer.to_str()), special, added, str(folder),
                   own_chat_template(tok), template_tokens(tok))

    def __getstate__(self):  # picklable for DataLoader workers
        return {"json": self.tokenizer.to_str(), "special": self.special, "added": self.added_ids, "source": self.source,
                "chat_template": self.chat_template, "template_tokens": self.template_tokens}

    def __setstate__(self, state):
        self.__init__(Tokenizer.from_str(state["json"]), state["special"], state["added"], state.get("source"),
                      state.get("chat_template"), state.get("template_tokens"))

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """`messages` ({role, content}) as the model's chat template writes them (text, not ids)."""
        if self.chat_template is None:
            raise ValueError(f"the tokenizer of {self.source} has no chat template: use an instruct model's folder "
                             "(or add a chat_template to its tokenizer_config.json), or set chat_template: false")
        if self._chat_tokenizer is None:  # built once per process (workers unpickle without it)
            from transformers import PreTrainedTokenizerFast

            self._chat_tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(self.tokenizer.to_str()),
                                                           **self.template_tokens)
        return self._chat_tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size
