"""lorabench: a benchmark harness that compares LoRA variants fairly.

The source folder ``bench/`` is installed as the import package ``lorabench`` (and
``methods/`` as ``lorabench.methods``); see ``pyproject.toml``. The parts of the pipeline:

- :mod:`lorabench.api` — what a method plugin imports (layer bases, routing, registry, checks,
  conformance kit);
- :mod:`lorabench.run` — suite → plan → launch → worker → train / evaluate / measure → record;
- :mod:`lorabench.models` — built-in base models and the atomic user cache;
- :mod:`lorabench.tasks` — task data;
- :mod:`lorabench.report` — records → statistics → tables, plots → report.md / results.csv;
- :mod:`lorabench.perf` — layer and train-step benchmarks;
- :mod:`lorabench.cli` — argument parsing and printing.
"""

if __name__ != "lorabench":  # imported as `bench` from a checkout: that name is not ours
    raise ImportError(
        "the harness is the package `lorabench` (its source folder is bench/); "
        "install it with `pip install -e .` and `import lorabench`"
    )

__version__ = "0.1.0"
