"""Adapter cost benchmarks: one adapted layer and one train step, as ratios to the frozen
base (``lorabench bench-layers``; pytest-benchmark wrappers live in ``benchmarks/``)."""
