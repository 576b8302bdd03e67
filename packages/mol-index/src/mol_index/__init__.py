"""mol-index: exact and approximate Mixture-of-Logits top-k retrieval over versioned index artifacts.

Status: an installable skeleton. Exact and RAILS top-k, FAISS candidate stages and index artifacts
arrive with the mol-index issue (#5); the learned index builders with #7.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
