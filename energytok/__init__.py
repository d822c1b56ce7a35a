"""LLM inference measured as energy-to-token production."""

__version__ = "0.1.0"
