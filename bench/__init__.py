"""lorabench: a benchmark harness that compares LoRA variants fairly.

The harness core. Method plugins live in the `methods` package (or in third-party
packages registered under the entry-point group ``lorabench.methods``) and are found
through :mod:`bench.registry`; nothing in `bench` names a specific method module.
"""

__version__ = "0.1.0"
