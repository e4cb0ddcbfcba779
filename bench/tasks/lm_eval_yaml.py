"""lm-eval task folders as data: read their YAMLs without running code, find the code they
would run, and hand lm-eval a copy whose data files are absolute paths.

lm-eval imports any Python that a ``!function`` tag in a task YAML names, looking first for
a ``.py`` file beside the YAML, so a suite's ``tasks_dir`` can run code. lorabench's own
tasks are pure data (``dataset_path: json`` with ``data_files``); :func:`suite_code` finds
what in a tasks folder is not (``.py`` files, ``!function`` or Python YAML tags, also in
YAMLs reached through ``include`` outside lm-eval's own package), so that a suite can be
refused unless the user trusts it.

Relative ``data_files`` are relative to the task YAML that the task is defined in. lm-eval
itself would resolve them against the working folder (through ``datasets``' ``json``
builder), so :func:`lm_eval_task_folder` writes, for every YAML of the folder, a small YAML
that includes the original by absolute path and overrides ``dataset_kwargs`` with absolute
``data_files`` and a fresh ``cache_dir`` (the builder caches by path and modification time,
which could serve stale rows after the files change).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import yaml

_IGNORE_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # as lm-eval's index


class CodeTag(str):
    """A YAML value that names code: ``!function utils.f`` or a ``!!python/...`` tag."""


def _loader() -> type[yaml.SafeLoader]:
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc, valid-type]
        pass

    def code(loader, suffix, node):
        value = loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else ""
        return CodeTag(f"{node.tag} {value}".strip())

    Loader.add_multi_constructor("!", code)
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", code)
    return Loader


_LOADER = _loader()


def read_yaml(path: Path) -> Any:
    """One YAML file as data; tags that name code become :class:`CodeTag` strings."""
    with open(path, "rb") as handle:
        return yaml.load(handle, Loader=_LOADER)  # noqa: S506 (a safe loader)


def code_tags(value: Any) -> list[str]:
    """Every :class:`CodeTag` in a loaded YAML value."""
    if isinstance(value, CodeTag):
        return [str(value)]
    if isinstance(value, dict):
        return [tag for v in value.values() for tag in code_tags(v)]
    if isinstance(value, list):
        return [tag for v in value for tag in code_tags(v)]
    return []


def _includes(config: Any, path: Path) -> list[Path]:
    if not isinstance(config, dict) or "include" not in config:
        return []
    names = config["include"] if isinstance(config["include"], list) else [config["include"]]
    return [
        Path(name) if Path(name).is_absolute() else path.parent / name
        for name in names
        if isinstance(name, str)
    ]


def load_task_config(path: Path, _seen: frozenset[Path] = frozenset()) -> dict:
    """A task YAML merged with its ``include``s as lm-eval merges them (included first,
    local keys win, ``task_list`` not inherited), as data."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"include cycle at {path}")
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping")
    merged: dict = {}
    for included in _includes(config, path):
        inner = load_task_config(included, _seen | {path})
        inner.pop("task_list", None)
        merged.update(inner)
    merged.update({k: v for k, v in config.items() if k != "include"})
    return merged


def _lm_eval_package() -> Path | None:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _yaml_files(folder: Path) -> list[Path]:
    """Files lm-eval may read as YAML: ``*.yaml`` / ``*.yml`` and include targets (any name
    ending in ``yaml``, like ``_default_template_yaml``)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and (p.name.endswith("yaml") or p.suffix == ".yml")
        and not _IGNORE_DIRS & set(p.parts)
    )


def suite_code(tasks_dir: str | Path) -> list[str]:
    """What in ``tasks_dir`` would make lm-eval run Python: one ``"<file>: <what>"`` each.

    Python files anywhere in the folder; ``!function`` (and Python) tags in its YAMLs and in
    the files they include, except files of the installed lm-eval package (its stock
    configs, e.g. HellaSwag's ``utils.process_docs``).
    """
    folder = Path(tasks_dir).resolve()
    package = _lm_eval_package()
    found = [f"{p}: a Python file" for p in sorted(folder.rglob("*.py"))]
    todo = _yaml_files(folder)
    seen: set[Path] = set()
    while todo:
        path = todo.pop(0).resolve()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        if package is not None and path.is_relative_to(package):
            continue  # lm-eval's own stock configs: trusted with the package
        try:
            config = read_yaml(path)
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            if "!function" in path.read_text(errors="replace"):
                found.append(f"{path}: a !function tag")
            continue
        found += [f"{path}: {tag}" for tag in dict.fromkeys(code_tags(config))]
        todo += _includes(config, path)
    return found


# ---- data files by absolute path -------------------------------------------------------------


def _absolute(files: Any, folder: Path) -> tuple[Any, bool]:
    """``files`` (a path, a list, or a split → files mapping) with every relative path that
    matches a file under ``folder`` made absolute; and whether any local file was found."""
    if isinstance(files, str):
        path = Path(files)
        if path.is_absolute():
            return files, path.exists() or any(Path("/").glob(files.lstrip("/")))
        if (folder / path).exists() or any(folder.glob(files)):
            return str(folder / path), True
        return files, False
    if isinstance(files, list):
        pairs = [_absolute(f, folder) for f in files]
        return [p for p, _ in pairs], any(local for _, local in pairs)
    if isinstance(files, dict):
        pairs = {k: _absolute(v, folder) for k, v in files.items()}
        return {k: p for k, (p, _) in pairs.items()}, any(local for _, local in pairs.values())
    return files, False


def lm_eval_task_folder(tasks_dir: str | Path, out_dir: Path, cache_dir: Path) -> Path:
    """A folder for ``TaskManager(include_path=...)`` that defines ``tasks_dir``'s tasks
    (and groups) with local data files by absolute path and ``cache_dir`` as the datasets
    cache; ``out_dir``.

    Each ``*.yaml`` of ``tasks_dir`` gets a YAML at the same relative path in ``out_dir``
    that includes the original by absolute path (so its includes and any ``!function`` still
    resolve beside it) and overrides ``dataset_kwargs`` when the task has local data files.
    """
    folder = Path(tasks_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for original in sorted(folder.rglob("*.yaml")):
        if _IGNORE_DIRS & set(original.parts):
            continue
        wrapper: dict[str, Any] = {"include": str(original)}
        try:
            config = load_task_config(original)
        except (yaml.YAMLError, ValueError, OSError):
            config = {}
        kwargs = config.get("dataset_kwargs")
        if isinstance(kwargs, dict) and "data_files" in kwargs and not code_tags(kwargs):
            files, local = _absolute(kwargs["data_files"], original.parent)
            if local:
                wrapper["dataset_kwargs"] = {
                    **kwargs,
                    "data_files": files,
                    "cache_dir": str(cache_dir),
                }
        target = out_dir / original.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"# {original}, its data files by absolute path (written by lorabench)\n"]
        lines += [f"{key}: {json.dumps(value)}\n" for key, value in wrapper.items()]
        target.write_text("".join(lines), encoding="utf-8")
    return out_dir
