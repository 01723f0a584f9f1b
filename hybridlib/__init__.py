"""hybridlib: hybrid batch training for multilingual dense retrieval, reproduced (arXiv 2408.10536)."""

__version__ = "0.1.0"
