"""In-tree method plugins, installed as ``lorabench.methods``.

Nothing is imported here: each module is declared as an entry point of the group
``lorabench.methods`` in ``pyproject.toml`` — the same way third-party plugins are found —
and registers its methods when the registry loads it. Adding a method = one module here and
one entry-point line (then ``pip install -e .`` again so the entry point is seen).
"""

if __name__ != "lorabench.methods":  # a top-level `methods` would shadow users' own folders
    raise ImportError(
        "the in-tree plugins are the package `lorabench.methods` (source folder methods/); "
        "install lorabench with `pip install -e .` and import it by that name"
    )
