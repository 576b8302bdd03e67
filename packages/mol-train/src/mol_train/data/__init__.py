"""Data pipeline of mol-train: raw loaders, preprocessing, prepared data sets, batches, synthetic data.

Typical use::

    from mol_train.data import SequenceDataset, iter_eval_batches, iter_train_batches, prepare

    dataset = prepare("ml-1m/ratings.dat", "movielens-dat", "prepared/ml-1m")  # max_len 200
    dataset = SequenceDataset.load("prepared/ml-1m")
    for batch in iter_train_batches(dataset, batch_size=128, seed=0, epoch=0):
        ...  # batch.inputs, batch.targets: (B, L) int64, right-aligned, 0 = padding

Item ids are internal ids 1..N (0 = padding); score matrices are ``(B, N)`` with column j = id j + 1.
See docs/mol-train-data.md.
"""

from mol_train.data.batching import (
    EVAL_SPLITS,
    EvalBatch,
    TrainBatch,
    eval_batch,
    iter_eval_batches,
    iter_train_batches,
    train_batch,
    train_rows,
)
from mol_train.data.beir import BeirDataset, load_beir
from mol_train.data.dataset import DATASET_FILE, FORMAT_VERSION, MIN_SEQUENCE_LENGTH, SequenceDataset
from mol_train.data.download import DATASETS, PublicDataset, download
from mol_train.data.errors import DataError, DataFormatError, DownloadError
from mol_train.data.loaders import (
    FORMATS,
    Interactions,
    detect_format,
    k_core_filter,
    load_amazon_ratings,
    load_interactions,
    load_movielens_100k,
    load_movielens_csv,
    load_movielens_dat,
    load_user_item_text,
)
from mol_train.data.prepare import DEFAULT_MAX_LEN, INFO_FILE, build_sequences, prepare
from mol_train.data.synthetic import make_synthetic, synthetic_clusters

__all__ = [
    "DATASETS",
    "DATASET_FILE",
    "DEFAULT_MAX_LEN",
    "EVAL_SPLITS",
    "FORMATS",
    "FORMAT_VERSION",
    "INFO_FILE",
    "MIN_SEQUENCE_LENGTH",
    "BeirDataset",
    "DataError",
    "DataFormatError",
    "DownloadError",
    "EvalBatch",
    "Interactions",
    "PublicDataset",
    "SequenceDataset",
    "TrainBatch",
    "build_sequences",
    "detect_format",
    "download",
    "eval_batch",
    "iter_eval_batches",
    "iter_train_batches",
    "k_core_filter",
    "load_amazon_ratings",
    "load_beir",
    "load_interactions",
    "load_movielens_100k",
    "load_movielens_csv",
    "load_movielens_dat",
    "load_user_item_text",
    "make_synthetic",
    "prepare",
    "synthetic_clusters",
    "train_batch",
    "train_rows",
]
