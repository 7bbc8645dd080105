"""E4T: encoder-based domain tuning for fast personalization of text-to-image models."""

__version__ = "0.1.0"
