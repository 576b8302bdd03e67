"""mol-train: TorchRec sequential recommenders (HSTU, SASRec) with Mixture-of-Logits heads.

Data pipelines (:mod:`mol_train.data`), sequence encoders (:mod:`mol_train.models`), TorchRec embedding
tables and sharding (:mod:`mol_train.distributed`), the training recipe (:func:`fit`), full-corpus
evaluation (:func:`evaluate`), model bundle export (:func:`export_bundle`) and the ``mol-train`` CLI.
"""

from mol_train.config import TrainConfig, config_from_dict, list_presets, load_config
from mol_train.data import SequenceDataset, download, make_synthetic, prepare
from mol_train.evaluate import evaluate, evaluate_encoder
from mol_train.export import export_bundle
from mol_train.model import QueryEncoder, SequentialRecommender, build_model
from mol_train.models import HSTUEncoder, SASRecEncoder
from mol_train.train import FitResult, encoder_from_weights, fit

__version__ = "0.1.0"

__all__ = [
    "FitResult",
    "HSTUEncoder",
    "QueryEncoder",
    "SASRecEncoder",
    "SequenceDataset",
    "SequentialRecommender",
    "TrainConfig",
    "__version__",
    "build_model",
    "config_from_dict",
    "download",
    "encoder_from_weights",
    "evaluate",
    "evaluate_encoder",
    "export_bundle",
    "fit",
    "list_presets",
    "load_config",
    "make_synthetic",
    "prepare",
]
