"""Query encoders: SASRec and HSTU over right-aligned item histories.

Both take already looked-up item embeddings (the embedding tables live with the training code) and share
one signature, ``forward(item_embeddings (B, L, D), valid (B, L) bool, timestamps (B, L) int64 | None,
next_timestamps (B,) int64 | None) -> (B, L, D)``, so a training loop or a serving bundle can swap them.
Both are plain ``torch.nn.Module`` s without data-dependent control flow and export with
``torch.export.export`` (dynamic batch size). See docs/mol-train-models.md.
"""

from mol_train.models.hstu import HSTUEncoder
from mol_train.models.sasrec import SASRecEncoder

__all__ = ["HSTUEncoder", "SASRecEncoder"]
