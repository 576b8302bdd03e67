"""Query and passage towers on one transformer, with a dot-product or a Mixture-of-Logits head.

Both towers run the same encoder (shared weights, as sentence-embedding models are trained). The dot
head scores the L2-normalised mean of the token states, which is exactly the zero-shot sentence model;
the MoL head feeds ``K`` learned attention poolings of the token states (each starting as the mean) to
:class:`~mol_core.similarity.MoLSimilarity`, whose own query and item projections and gating make the
``Pq x Px`` component logits and mix them.

Shape symbols: B texts, T tokens, H hidden width, K poolings, Pq / Px components, d component width.
"""

from __future__ import annotations

import torch
from torch import nn

from mol_core.errors import ConfigError
from mol_core.similarity import DotProductSimilarity, ItemSide, MoLSimilarity, QuerySide, Similarity
from mol_train.text.encoder import TextEncoder

__all__ = ["HEADS", "LearnedPoolings", "TextRetriever", "build_text_retriever", "mean_pooling"]

#: The similarity heads a text retriever can have.
HEADS = ("dot", "mol")


def mean_pooling(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, H)`` token states and ``(B, T)`` attention mask -> ``(B, H)`` mean of the real tokens."""
    weights = mask.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class LearnedPoolings(nn.Module):
    """``K`` attention poolings: ``(B, T, H)`` states and ``(B, T)`` mask -> ``(B, K, H)``.

    Pooling ``k`` weighs token ``t`` by ``softmax_t(<w_k, s_t> + b_k)`` over the real tokens. The weights
    start at zero, so every pooling starts as :func:`mean_pooling`.
    """

    def __init__(self, hidden: int, count: int) -> None:
        super().__init__()
        if count < 1:
            raise ConfigError(f"poolings must be >= 1; got {count}")
        self.attention = nn.Linear(hidden, count)
        nn.init.zeros_(self.attention.weight)
        nn.init.zeros_(self.attention.bias)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.attention(states).float()  # (B, T, K)
        logits = logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        weights = torch.softmax(logits, dim=1).to(states.dtype)  # (B, T, K), over the tokens
        return torch.einsum("btk,bth->bkh", weights, states)  # (B, K, H)


class TextRetriever(nn.Module):
    """A dual encoder: one transformer, its representation of a text, and a similarity head.

    Args:
        encoder: the tokenizer and transformer.
        similarity: the head, taking ``(B, D)`` representations (D = H for the dot head, K * H for MoL).
        poolings: the MoL head's learned poolings, ``None`` for the dot head (mean pooling).
        max_query_tokens: queries are cut at this many tokens.
        max_passage_tokens: passages are cut at this many tokens.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        similarity: Similarity,
        poolings: LearnedPoolings | None,
        *,
        max_query_tokens: int = 64,
        max_passage_tokens: int = 256,
    ) -> None:
        super().__init__()
        self.encoder = encoder.model
        self.tokenizer = encoder.tokenizer
        self.text_encoder = encoder
        self.similarity = similarity
        self.poolings = poolings
        self.max_query_tokens = max_query_tokens
        self.max_passage_tokens = max_passage_tokens

    def representations(self, texts: list[str], max_tokens: int) -> torch.Tensor:
        """``(B, D)``: the mean of the token states (dot head) or the ``K`` poolings side by side (MoL)."""
        tokens = self.text_encoder.tokenize(texts, max_tokens)
        return self.token_representations(tokens["input_ids"], tokens["attention_mask"])

    def token_representations(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """:meth:`representations` of tokenised texts: ``(B, T)`` ids and mask -> ``(B, D)``."""
        states = self.text_encoder.token_states(
            {"input_ids": input_ids, "attention_mask": attention_mask}
        )  # (B, T, H)
        if self.poolings is None:
            return mean_pooling(states, attention_mask)  # (B, H)
        pooled: torch.Tensor = self.poolings(states, attention_mask)  # (B, K, H)
        return pooled.flatten(1)  # (B, K * H)

    def query_side(self, queries: list[str]) -> QuerySide:
        """The similarity's query side of B query texts."""
        return self.similarity.query_side(self.representations(queries, self.max_query_tokens))

    def item_side(self, passages: list[str]) -> ItemSide:
        """The similarity's item side of B passage texts."""
        return self.similarity.item_side(self.representations(passages, self.max_passage_tokens))


def build_text_retriever(
    encoder: TextEncoder,
    head: str = "dot",
    *,
    poolings: int = 4,
    query_components: int = 4,
    item_components: int = 4,
    component_dim: int | None = None,
    gating_hidden_dim: int = 128,
    temperature: float = 0.05,
    start_from_dot: bool = True,
    symmetry_noise: float = 1e-3,
    max_query_tokens: int = 64,
    max_passage_tokens: int = 256,
) -> TextRetriever:
    """A :class:`TextRetriever` with a ``dot`` head (cosine of mean-pooled states over ``temperature``)
    or a ``mol`` head (:class:`MoLSimilarity` over ``poolings`` learned poolings).

    With ``start_from_dot`` (the default) the MoL head starts as the dot head: ``component_dim`` is the
    encoder's width H, each query and item component is an identity map of one pooling (plus Gaussian
    noise of std ``symmetry_noise``, so that the components can grow apart), and the gating starts
    uniform, so every component logit, and their mixture, is the cosine of the mean-pooled states. A
    pretrained encoder's geometry is kept at step 0 instead of being scrambled by random projections.
    Without it, Xavier weights and zero biases, as in the reference recipe (``component_dim`` default 64).

    Raises:
        ConfigError: an unknown head, a bad size, or ``start_from_dot`` with a ``component_dim`` other
            than H.
    """
    hidden = encoder.hidden_size
    if head == "dot":
        similarity: Similarity = DotProductSimilarity(hidden, l2_normalize=True, temperature=temperature)
        pooling = None
    elif head == "mol":
        if start_from_dot and component_dim not in (None, hidden):
            raise ConfigError(
                f"start_from_dot needs component_dim = the encoder's width {hidden}; got {component_dim}"
            )
        pooling = LearnedPoolings(hidden, poolings)
        mol = MoLSimilarity(
            query_input_dim=poolings * hidden,
            item_input_dim=poolings * hidden,
            query_components=query_components,
            item_components=item_components,
            component_dim=hidden if start_from_dot else (component_dim or 64),
            gating_hidden_dim=gating_hidden_dim,
            temperature=temperature,
            init="xavier",
        )
        if start_from_dot:
            _start_from_dot(mol, poolings, hidden, symmetry_noise)
        similarity = mol
    else:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    return TextRetriever(
        encoder,
        similarity,
        pooling,
        max_query_tokens=max_query_tokens,
        max_passage_tokens=max_passage_tokens,
    )


@torch.no_grad()
def _start_from_dot(similarity: MoLSimilarity, poolings: int, hidden: int, noise: float) -> None:
    """Component ``p`` of each side := pooling ``p mod K`` (identity blocks + noise); uniform gating."""
    for projection, count in (
        (similarity.query_proj, similarity.num_query_components),
        (similarity.item_proj, similarity.num_item_components),
    ):
        if not isinstance(projection, nn.Linear):
            raise ConfigError("start_from_dot needs linear query and item projections (query_hidden_dim 0)")
        weight = torch.zeros(count * hidden, poolings * hidden)
        for component in range(count):
            source = component % poolings
            block = weight[
                component * hidden : (component + 1) * hidden, source * hidden : (source + 1) * hidden
            ]
            block.copy_(torch.eye(hidden))
        projection.weight.copy_(weight + noise * torch.randn_like(weight))
        nn.init.zeros_(projection.bias)
    # gate = silu(query part * item part + pair part): zero query and pair parts give uniform weights
    for final in (similarity.gating.query_mlp.out, similarity.gating.logits_mlp.out):
        nn.init.zeros_(final.weight)
        nn.init.zeros_(final.bias)
