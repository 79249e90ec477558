"""The text head: backbone hidden states -> vocabulary logits."""

from __future__ import annotations

from torch import nn


def lm_head(embedding: nn.Embedding, tied: bool = True) -> nn.Linear:
    """Linear hidden [.., dim] -> vocabulary logits; shares the text embedding matrix when `tied`.

    Tying saves vocab x dim parameters and is the usual choice for small models.
    """
    head = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False)
    if tied:
        head.weight = embedding.weight
    else:
        nn.init.normal_(head.weight, std=0.02)
    return head
