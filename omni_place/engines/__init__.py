"""Engine flag dialects, one module each (one source of truth per dialect)."""
from . import llama_cpp

__all__ = ["llama_cpp"]
