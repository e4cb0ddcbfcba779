"""Reports from result records only (no torch, no model, no training code).

``data`` loads records into tables and comparisons, ``stats`` holds the statistics,
``plots`` draws the figures, and ``document`` assembles report.md from an ordered list of
section functions (``section(data) -> list[str]``): the summary, per task, routing, sweeps,
paper claims and ablations, setup and failures.
"""
