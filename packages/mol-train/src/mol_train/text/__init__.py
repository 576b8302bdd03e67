"""Text retrieval with MoL: transformer towers for queries and passages, a dot-product or MoL head,
training on BEIR-format judgments and evaluation over the whole corpus (docs/text-retrieval.md).

Needs the ``text`` extra (``transformers``); encoders load from a local folder or an installed weights
package, never from the network.
"""

from mol_train.text.cross_encoder import CROSS_ENCODER_PACKAGES, CrossEncoder, load_cross_encoder
from mol_train.text.encoder import TRAINABLE_HELP, TextEncoder, load_text_encoder, set_trainable
from mol_train.text.export import export_text_bundle
from mol_train.text.synthetic import synthetic_beir, synthetic_words, tiny_cross_encoder, tiny_text_encoder
from mol_train.text.towers import LearnedPoolings, TextRetriever, build_text_retriever, mean_pooling
from mol_train.text.training import TextTrainConfig, encode_corpus, evaluate_text, fit_text, training_pairs

__all__ = [
    "CROSS_ENCODER_PACKAGES",
    "TRAINABLE_HELP",
    "CrossEncoder",
    "LearnedPoolings",
    "TextEncoder",
    "TextRetriever",
    "TextTrainConfig",
    "build_text_retriever",
    "encode_corpus",
    "evaluate_text",
    "export_text_bundle",
    "fit_text",
    "load_cross_encoder",
    "load_text_encoder",
    "mean_pooling",
    "set_trainable",
    "synthetic_beir",
    "synthetic_words",
    "tiny_cross_encoder",
    "tiny_text_encoder",
    "training_pairs",
]
