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

One call loads a saved run back (base model, adapter, record): :func:`load_run` (from
:mod:`lorabench.run.rescore`, imported on first use so that ``import lorabench`` stays light).
"""

if __name__ != "lorabench":  # imported as `bench` from a checkout: that name is not ours
    raise ImportError(
        "the harness is the package `lorabench` (its source folder is bench/); "
        "install it with `pip install -e .` and `import lorabench`"
    )

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]


def __getattr__(name: str):
    if name == "load_run":  # lazily: it imports torch, transformers and lm-eval
        from lorabench.run.rescore import load_run

        return load_run
    raise AttributeError(f"module 'lorabench' has no attribute {name!r}")
