"""Index layers trained jointly with the model: the interface mol-train drives, and how they are stored.

An index layer sits on the item side of a similarity. mol-train trains the model unquantized for
``warmup_steps``, then calls :meth:`IndexLayer.warm_start` with the item side of the whole corpus (k-means),
and from then on scores the items the layer returns (``layer(items)``) and adds ``layer.loss(...)`` to
the training loss. Two layers implement the interface:

- ``pq`` (:class:`PQItemLayer`, Poeem): every item component embedding is rotated, assigned to a coarse
  centroid and product-quantized; training scores the quantized embeddings through a straight-through
  estimator, so the model learns embeddings that survive quantization.
- ``hierarchical`` (:class:`mol_index.search.hierarchy.HierarchicalLayer`, HSNN): learned cluster centroids
  per level, soft assignment during training; training scores the items themselves.

A model bundle stores a trained layer as ``index_layer.*`` tensors in its item tensors file and its
constructor arguments as ``index_layer.kind`` / ``index_layer.<name>`` manifest parameters
(:func:`layer_parameters`, :func:`layer_from_bundle`); ``mol-index build --kind pq|hierarchical --bundle``
turns it into an index without another k-means pass.

Shapes: ``N`` items, ``Px`` item components of width ``d``, ``P`` gating features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from mol_core.errors import ArtifactError, ConfigError
from mol_core.similarity import ItemSide, QuerySide, Similarity
from mol_index.layers.pq import ProductQuantizer

__all__ = [
    "LAYER_KINDS",
    "IndexLayer",
    "PQItemLayer",
    "build_index_layer",
    "layer_from_bundle",
    "layer_parameters",
    "parse_options",
]

#: Kinds of jointly trained index layers.
LAYER_KINDS = ("pq", "hierarchical")
_PREFIX = "index_layer."


class IndexLayer(Protocol):
    """What mol-train needs from a jointly trained index layer (an ``nn.Module``)."""

    kind: str
    warmed: torch.Tensor  # () bool buffer: True once warm_start ran

    def warm_start(self, corpus: ItemSide, *, iterations: int = 20, seed: int = 0) -> None:
        """Initialises the layer from the ``(N, Px, d)`` item side of the whole corpus (k-means)."""

    def __call__(self, items: ItemSide) -> ItemSide:
        """The item side training scores: ``(*, Px, d)`` in, the same shape out."""

    def loss(
        self,
        query: QuerySide,
        positives: ItemSide,
        similarity: Similarity,
        negatives: ItemSide | None = None,
    ) -> torch.Tensor:
        """The layer's own training loss (scalar) on a batch of ``M`` queries and their positives, with the
        batch's uniformly sampled negatives (``(*, Px, d)``, a sample of the whole catalogue) when the loss
        has them."""

    def config(self) -> dict[str, str]:
        """Constructor arguments as text (stored in bundle manifests)."""

    def state_dict(self) -> dict[str, Any]: ...

    def parameters(self) -> Any: ...


class PQItemLayer(nn.Module):
    """Poeem's jointly trained product quantizer over the item component embeddings.

    All ``Px`` components share one :class:`~mol_index.layers.pq.ProductQuantizer` of width ``d``; the gating
    features are not quantized (an index stores them as they are).

    Args:
        dim: ``d``, the component width (divisible by ``subspaces``).
        coarse: coarse centroids ``C`` (1 = plain PQ).
        subspaces: ``M``; an item component costs ``M`` codes of ``log2(codebook_size)`` bits (+ a coarse id).
        codebook_size: ``K`` codewords per subspace.
        rotation: learn a Givens rotation before the split.
        commitment: weight of the commitment term of the layer loss.
        ema_decay: 0 = centroids and codebooks learned by gradient; in ``(0, 1)``, moved towards the mean of
            their assigned embeddings at every training batch instead (see ``ProductQuantizer``).
    """

    kind = "pq"
    warmed: torch.Tensor

    def __init__(
        self,
        dim: int,
        *,
        coarse: int = 1,
        subspaces: int = 8,
        codebook_size: int = 256,
        rotation: bool = True,
        commitment: float = 0.25,
        ema_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.quantizer = ProductQuantizer(
            dim,
            coarse=coarse,
            subspaces=subspaces,
            codebook_size=codebook_size,
            rotation=rotation,
            commitment=commitment,
            ema_decay=ema_decay,
        )
        self._config = {
            "dim": str(dim),
            "coarse": str(coarse),
            "subspaces": str(subspaces),
            "codebook_size": str(codebook_size),
            "rotation": str(rotation).lower(),
            "commitment": repr(float(commitment)),
            "ema_decay": repr(float(ema_decay)),
        }
        self.register_buffer("warmed", torch.zeros((), dtype=torch.bool))

    def config(self) -> dict[str, str]:
        """Constructor arguments as text."""
        return dict(self._config)

    @torch.no_grad()
    def warm_start(self, corpus: ItemSide, *, iterations: int = 20, seed: int = 0) -> None:
        """k-means of the centroids and codebooks on every item component embedding of the corpus.

        Raises:
            ConfigError: fewer component embeddings than coarse centroids or codewords per subspace.
        """
        flat = corpus.embeddings.detach().reshape(-1, corpus.embeddings.shape[-1]).float()
        self.quantizer.warm_start(flat.to(self.quantizer.codebooks.device), iterations=iterations, seed=seed)
        self.warmed.fill_(True)

    def forward(self, items: ItemSide) -> ItemSide:
        """Quantized ``(*, Px, d)`` embeddings with a straight-through gradient; gating unchanged."""
        embeddings = items.embeddings
        flat = embeddings.reshape(-1, embeddings.shape[-1])
        quantized = self.quantizer(flat.float()).to(embeddings.dtype).view_as(embeddings)
        return ItemSide(quantized, items.gating)

    def loss(
        self,
        query: QuerySide,
        positives: ItemSide,
        similarity: Similarity,
        negatives: ItemSide | None = None,
    ) -> torch.Tensor:
        """Reconstruction + commitment of the component embeddings of the positives and the sampled
        negatives (the query is unused). Positives follow item popularity while the index must quantize
        every item, and uniformly sampled negatives are a sample of the catalogue; on ML-1M adding them did
        not raise the index's overlap with brute force, though (docs/benchmarks.md)."""
        width = positives.embeddings.shape[-1]
        parts = [positives.embeddings.reshape(-1, width)]
        if negatives is not None:
            parts.append(negatives.embeddings.reshape(-1, width))
        return self.quantizer.loss(torch.cat(parts).float())


def build_index_layer(kind: str, similarity: Similarity, options: dict[str, Any]) -> nn.Module:
    """A new index layer of ``kind`` for ``similarity``'s item side.

    Args:
        kind: ``pq`` or ``hierarchical``.
        similarity: gives ``Px``, ``d`` and the gating width.
        options: constructor arguments of the layer (``dim`` and the shapes are taken from ``similarity``).

    Raises:
        ConfigError: an unknown kind or option, or options the layer rejects.
    """
    options = {k: v for k, v in options.items() if k not in ("dim", "item_components", "gating_dim")}
    if kind == "pq":
        known = {"coarse", "subspaces", "codebook_size", "rotation", "commitment", "ema_decay"}
        _check_options(kind, options, known)
        return PQItemLayer(similarity.component_dim, **options)
    if kind == "hierarchical":
        from mol_index.layers.hierarchical import HierarchicalLayer

        return HierarchicalLayer.for_similarity(similarity, **options)
    raise ConfigError(f"unknown index layer kind {kind!r}; expected one of {', '.join(LAYER_KINDS)}")


def _check_options(kind: str, options: dict[str, Any], known: set[str]) -> None:
    unknown = set(options) - known
    if unknown:
        raise ConfigError(
            f"unknown option(s) {sorted(unknown)} of the {kind} index layer; valid: {sorted(known)}"
        )


def layer_parameters(layer: nn.Module) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """What a bundle stores of a trained layer: ``(manifest parameters, tensors)``, both prefixed
    ``index_layer.``."""
    kind = str(layer.kind)
    parameters = {f"{_PREFIX}kind": kind, **{f"{_PREFIX}{k}": v for k, v in layer.config().items()}}  # type: ignore[operator]
    tensors = {f"{_PREFIX}{k}": v.detach().float().cpu().contiguous() for k, v in layer.state_dict().items()}
    return parameters, tensors


def layer_from_bundle(bundle_path: str | Path, similarity: Similarity) -> nn.Module | None:
    """The trained index layer stored in a model bundle, or ``None`` when the bundle has none.

    Raises:
        ArtifactError: the bundle's layer parameters or tensors are incomplete or do not fit.
    """
    from safetensors.torch import load_file

    from mol_core.manifest import BUNDLE_FORMAT_VERSION, MANIFEST_FILENAME, read_manifest
    from mol_core.proto.mol.v1.manifest_pb2 import ModelBundleManifest

    root = Path(bundle_path)
    manifest = read_manifest(root / MANIFEST_FILENAME, ModelBundleManifest, BUNDLE_FORMAT_VERSION)
    params = {k.removeprefix(_PREFIX): v for k, v in manifest.parameters.items() if k.startswith(_PREFIX)}
    if not params:
        return None
    kind = params.pop("kind", "")
    try:
        layer = build_index_layer(kind, similarity, parse_options(params))
        tensors = load_file(str(root / manifest.item_tensors_file))
        state = {k.removeprefix(_PREFIX): v for k, v in tensors.items() if k.startswith(_PREFIX)}
        current = layer.state_dict()
        layer.load_state_dict({k: v.to(current[k].dtype) if k in current else v for k, v in state.items()})
    except (ConfigError, RuntimeError, KeyError) as err:
        raise ArtifactError(
            f"{root}: the bundle's {kind or '(no kind)'} index layer cannot be loaded: {err}"
        ) from err
    if not bool(layer.warmed):
        raise ArtifactError(f"{root}: the bundle's {kind} index layer was never warmed up; train longer")
    return layer.eval()


def parse_options(params: dict[str, str]) -> dict[str, Any]:
    """Manifest text -> constructor arguments (ints, floats, booleans, comma-separated int tuples)."""
    options: dict[str, Any] = {}
    for name, text in params.items():
        if text in ("true", "false"):
            options[name] = text == "true"
            continue
        try:
            options[name] = int(text)
            continue
        except ValueError:
            pass
        try:
            options[name] = float(text)
            continue
        except ValueError:
            pass
        if "," in text:
            try:
                options[name] = tuple(int(part) for part in text.split(","))
                continue
            except ValueError:
                pass
        options[name] = text
    return options
