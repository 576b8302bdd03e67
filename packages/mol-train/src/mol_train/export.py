"""Exports a trained model as a model bundle (layout in :mod:`mol_core.bundle`).

The query encoder (plain embedding tables, the sequence encoder and the similarity's query side) is
exported with ``torch.export`` for a dynamic batch of right-aligned histories of width ``max_len``; the item
side of every item is precomputed; nothing in the bundle needs mol-train or torchrec to run. A model
trained with an index layer (``[index]``) also exports the trained layer: its tensors go into the item
tensors file as ``index_layer.*`` and its settings into the manifest parameters as ``index_layer.*``
(mol_index.layers reads them back). The bundle is
written into a temporary folder next to the destination and renamed into place when complete.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import mol_core
from mol_core.atomic import replace_directory
from mol_core.bundle import ITEM_TENSORS_FILE, ITEM_VOCABULARY_FILE, QUERY_ENCODER_FILE
from mol_core.errors import ArtifactError
from mol_core.manifest import BUNDLE_FORMAT_VERSION, MANIFEST_FILENAME, file_entry, write_manifest
from mol_core.proto.mol.v1.manifest_pb2 import ModelBundleManifest
from mol_core.similarity import similarity_to_config
from mol_train.model import QueryEncoder

__all__ = ["export_bundle"]


class _ExportedQueryPath(nn.Module):
    """Tensor-in, tensor-out wrapper of a :class:`QueryEncoder` for ``torch.export``."""

    def __init__(self, encoder: QueryEncoder, *, use_timestamps: bool, use_users: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.use_timestamps = use_timestamps
        self.use_users = use_users

    def forward(
        self,
        history: torch.Tensor,
        timestamps: torch.Tensor,
        next_timestamps: torch.Tensor,
        user_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        query = self.encoder(
            history,
            timestamps if self.use_timestamps else None,
            next_timestamps if self.use_timestamps else None,
            user_ids if self.use_users else None,
        )
        gating = query.gating
        if gating is None:
            gating = query.embeddings.new_zeros((history.shape[0], 0))  # (B, 0): no gating
        return query.embeddings, gating


@torch.no_grad()
def export_bundle(
    encoder: QueryEncoder,
    item_vocabulary: list[object],
    destination: str | Path,
    *,
    max_len: int,
    use_timestamps: bool,
    model_name: str = "",
    architecture: str = "",
    parameters: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a model bundle.

    Args:
        encoder: the trained query path (see :func:`mol_train.train.encoder_from_weights`).
        item_vocabulary: the N external item ids; entry i is internal id i + 1.
        destination: the bundle directory to create.
        max_len: L, the history width of the exported encoder.
        use_timestamps: whether the encoder reads timestamps (data sets with times).
        model_name: a label kept in the manifest.
        architecture: the encoder kind ("hstu", "sasrec").
        parameters: extra text parameters for the manifest.
        overwrite: replace an existing destination.

    Returns:
        The bundle directory.

    Raises:
        ArtifactError: the destination exists (without ``overwrite``), the vocabulary does not match the
            item table, or the model's index layer was never warm-started (warmup_steps not reached).

    Example::

        config, encoder = mol_train.train.restore_encoder("runs/ml1m", dataset.num_items)
        export_bundle(encoder, list(dataset.item_vocab), "bundles/ml1m", max_len=config.data.max_len,
                      use_timestamps=dataset.timestamps is not None, architecture="hstu")
    """
    target = Path(destination)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
    num_items = int(encoder.item_table.shape[0]) - 1
    if len(item_vocabulary) != num_items:
        raise ArtifactError(
            f"the vocabulary has {len(item_vocabulary)} ids but the item table {num_items} rows"
        )
    encoder = encoder.eval()
    similarity = encoder.similarity
    layer_parameters: dict[str, str] = {}
    layer_tensors: dict[str, torch.Tensor] = {}
    if encoder.index_layer is not None:
        if not bool(encoder.index_layer.warmed):
            raise ArtifactError(
                "the model's index layer was never warm-started: training ended before index.warmup_steps; "
                "train longer or lower index.warmup_steps"
            )
        from mol_index.layers import layer_parameters as stored_layer

        layer_parameters, layer_tensors = stored_layer(encoder.index_layer)
        # the exported program is the query path only
        encoder = QueryEncoder(encoder.item_table, encoder.user_table, encoder.encoder, similarity).eval()
    use_users = encoder.user_table is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        wrapper = _ExportedQueryPath(encoder, use_timestamps=use_timestamps, use_users=use_users).eval()
        example = (
            torch.ones(2, max_len, dtype=torch.long),
            torch.arange(max_len, dtype=torch.long).repeat(2, 1),
            torch.full((2,), max_len, dtype=torch.long),
            torch.zeros(2, dtype=torch.long),
        )
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic = ({0: batch}, {0: batch}, {0: batch}, {0: batch})
        program = torch.export.export(wrapper, example, dynamic_shapes=dynamic)
        torch.export.save(program, str(staging / QUERY_ENCODER_FILE))

        items = similarity.item_side(encoder.item_table[1:])  # (N, Px, d)
        tensors = {
            "item_embeddings": items.embeddings.float().contiguous(),
            "item_representations": encoder.item_table[1:].float().contiguous(),  # (N, Dx)
        }
        if items.gating is not None:
            tensors["item_gating"] = items.gating.float().contiguous()
        for name, value in similarity.state_dict().items():
            tensors[f"similarity.{name}"] = value.detach().float().contiguous()
        tensors.update(layer_tensors)
        save_file(tensors, str(staging / ITEM_TENSORS_FILE))
        (staging / ITEM_VOCABULARY_FILE).write_text(json.dumps([_plain(i) for i in item_vocabulary]))

        created = datetime.datetime.now(datetime.timezone.utc)
        manifest = ModelBundleManifest(
            format_version=BUNDLE_FORMAT_VERSION,
            mol_version=mol_core.__version__,
            model_name=model_name,
            architecture=architecture,
            similarity=similarity_to_config(similarity),
            num_items=num_items,
            item_vocabulary_file=ITEM_VOCABULARY_FILE,
            query_encoder_file=QUERY_ENCODER_FILE,
            item_tensors_file=ITEM_TENSORS_FILE,
        )
        manifest.created_at.FromDatetime(created)
        manifest.parameters.update(
            {
                "max_len": str(max_len),
                "temperature": repr(float(similarity.temperature)),
                "uses_timestamps": str(use_timestamps).lower(),
                "uses_user_ids": str(use_users).lower(),
                **layer_parameters,
                **(parameters or {}),
            }
        )
        for name, role in (
            (QUERY_ENCODER_FILE, "query_encoder"),
            (ITEM_TENSORS_FILE, "item_tensors"),
            (ITEM_VOCABULARY_FILE, "item_vocabulary"),
        ):
            manifest.files.append(file_entry(staging / name, staging, role))
        write_manifest(manifest, staging / MANIFEST_FILENAME)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _plain(item: object) -> object:
    """numpy scalars -> Python ints/strings for JSON."""
    return item.item() if hasattr(item, "item") else item
