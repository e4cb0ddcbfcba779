"""Running a suite, in pipeline order.

``suite`` (TOML file → validated :class:`~lorabench.run.suite.Suite` → plan of runs)
→ a launcher (``launch_local``: one process per run; ``launch_ray``: one Ray task per run;
both call the same ``spawn`` and record the same way)
→ ``worker`` (one run's stages: load model, inject, train with :mod:`lorabench.train`,
``measure``, ``evaluate`` through lm-eval, router ``diagnostics``) → one JSON record.
"""
