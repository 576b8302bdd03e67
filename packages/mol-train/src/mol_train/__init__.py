"""mol-train: TorchRec sequential recommenders (HSTU, SASRec) with Mixture-of-Logits heads.

Status: an installable skeleton. Its data loaders, encoders, TorchRec training loop, full-corpus
evaluation and model bundle export arrive with the mol-train issue (#4).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
