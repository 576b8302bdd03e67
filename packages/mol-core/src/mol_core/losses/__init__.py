"""Training losses: sampled softmax, in-batch softmax with logQ correction, MI load balancing."""

from mol_core.losses.in_batch import in_batch_softmax_loss
from mol_core.losses.mutual_information import mutual_information_loss
from mol_core.losses.sampled_softmax import sample_uniform_negatives, sampled_softmax_loss

__all__ = [
    "in_batch_softmax_loss",
    "mutual_information_loss",
    "sample_uniform_negatives",
    "sampled_softmax_loss",
]
