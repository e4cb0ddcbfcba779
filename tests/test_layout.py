"""The package layout: one import package, the plugin surface, typed records, docs.

These tests pin the contracts of the layout: only ``lorabench`` is importable (never
``bench`` or ``methods``), a wheel holds only ``lorabench/...``, a plugin written as the
README shows and declared through the entry point passes the conformance kit, plugins
import from ``lorabench.api`` only, and lower layers never import higher ones.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import jsonschema
import pytest

from lorabench.records import SCHEMA_FILE, Record, RecordError, RunConfig, config_hash, load_record

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bench"


def _python(code: str, cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess:
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": env_path}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize("cwd", [ROOT, None], ids=["repo-root", "elsewhere"])
def test_only_lorabench_is_importable(cwd, tmp_path):
    where = cwd or tmp_path
    ok = _python("import lorabench, lorabench.api, lorabench.methods; print('ok')", where)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    for name in ("bench", "methods"):
        result = _python(f"import {name}", where)
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        # from the checkout the folder is found and refuses; elsewhere it does not exist
        assert (
            ("ModuleNotFoundError" in last)
            or ("import it by that name" in last)
            or ("`import lorabench`" in last)
        ), last


@pytest.mark.slow
@pytest.mark.network  # the isolated build environment fetches setuptools from the registry
def test_wheel_contains_only_lorabench(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("lorabench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"lorabench", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert "lorabench/methods/mor.py" in names
    assert "lorabench/api/__init__.py" in names
    assert "lorabench/schema/record.schema.json" in names
    assert "lorabench/report/claims.toml" in names and "lorabench/perf/targets.toml" in names
    templates = {n for n in names if n.startswith("lorabench/tasks/templates/")}
    assert templates == {
        f"lorabench/tasks/templates/cs_{t}.yaml"
        for t in ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy",
                  "arc_challenge", "openbookqa")
    }  # fmt: skip
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "[lorabench.methods]" in entry_points
    assert "mor = lorabench.methods.mor" in entry_points


def readme_plugin_example() -> str:
    """The first ```python block under the README heading "## Adding a method"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Adding a method") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python block under '## Adding a method'"
    return match.group(1)


def test_readme_plugin_in_a_fresh_package_passes_the_conformance_kit(tmp_path):
    """The README's diag-LoRA, as a separate distribution that depends on lorabench and
    registers through the entry point, found by the registry and run through the kit."""
    code = readme_plugin_example()
    assert "from lorabench.api import" in code
    (tmp_path / "diag_plugin.py").write_text(code)
    dist = tmp_path / "diag_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: diag-plugin\nVersion: 0.1\nRequires-Dist: lorabench\n"
    )
    (dist / "entry_points.txt").write_text("[lorabench.methods]\ndiag-lora = diag_plugin\n")
    check = textwrap.dedent(
        """
        from lorabench.api import available_methods, conformance, get_method
        assert "diag-lora" in available_methods(), available_methods()
        assert "lora" in available_methods()
        spec = get_method("diag-lora")
        conformance.run_all("diag-lora")
        conformance.run_all("diag-lora", {"r": 3}, family="qwen2")
        print(spec.description)
        """
    )
    result = _python(check, tmp_path, env_path=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "LoRA with a learned diagonal: Δ(x) = B diag(d) A x."


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("plugin", sorted(p.stem for p in (ROOT / "methods").glob("[!_]*.py")))
def test_plugins_import_only_the_api(plugin):
    ours = {m for m in _imports(ROOT / "methods" / f"{plugin}.py") if m.startswith("lorabench")}
    assert ours == {"lorabench.api"}, ours


def test_in_tree_plugins_are_declared_as_entry_points():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    modules = set(declared["lorabench.methods"].values())
    on_disk = {f"lorabench.methods.{p.stem}" for p in (ROOT / "methods").glob("[!_]*.py")}
    assert modules == on_disk


# lower layers never import higher ones (report reads records only)
LAYERS = {
    "errors": 0, "records": 1, "selection": 1, "throughput": 1, "api": 1, "train": 2,
    "models": 3, "tasks": 3,
    "run": 4, "report": 5, "perf": 5, "cli": 6,
}  # fmt: skip
FORBIDDEN = {"report": {"lorabench.run", "lorabench.train", "lorabench.cli"}}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


@pytest.mark.parametrize(
    "module", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")), ids=str
)
def test_imports_point_down_the_layers(module):
    path = PACKAGE / module
    part = _part(path)
    if part == "__init__":
        return
    for imported in _imports(path):
        if not imported.startswith("lorabench."):
            continue
        target = imported.split(".")[1]
        if target == "methods":
            pytest.fail(f"{module} names a method module ({imported}); use the registry")
        assert LAYERS[target] <= LAYERS[part], f"{module} ({part}) imports {imported}"
        assert not any(imported.startswith(f) for f in FORBIDDEN.get(part, ())), imported


def test_a_plugin_class_without_a_docstring_is_a_clear_error():
    from dataclasses import dataclass

    from lorabench.api import AdaptedLinear, knob, register_method

    @dataclass
    class Cfg:
        r: int = knob(2, "rank")

    class NoDoc(AdaptedLinear):
        mergeable = False

        @staticmethod
        def param_count(config, d_in, d_out):
            return 0

    NoDoc.__doc__ = None
    with pytest.raises(TypeError, match="NoDoc has no docstring; give the class one"):
        register_method("no-doc", config=Cfg)(NoDoc)


# ---- typed records ------------------------------------------------------------------------

SCHEMA = json.loads(SCHEMA_FILE.read_text())
COMMITTED = sorted(ROOT.glob("reports/*/runs/*.json"))


def test_there_are_committed_records():
    assert len(COMMITTED) >= 60


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_every_committed_record_loads_and_matches_the_schema(path):
    raw = json.loads(path.read_text())
    record = load_record(path)
    jsonschema.validate(record, SCHEMA)
    assert record["schema_version"] == 2
    assert record["config"] == raw["config"]  # migration leaves the config (and hash) alone
    assert config_hash(record["config"]) == raw["config_hash"] == record["config_hash"]
    assert path.stem.endswith(record["config_hash"][:8])


def test_record_dataclasses_and_schema_agree():
    import dataclasses

    assert {f.name for f in dataclasses.fields(Record)} == set(SCHEMA["properties"])
    config_schema = SCHEMA["properties"]["config"]
    assert {f.name for f in dataclasses.fields(RunConfig)} == set(config_schema["properties"])
    required = {f.name for f in dataclasses.fields(RunConfig) if f.default is dataclasses.MISSING}
    assert required == set(config_schema["required"])


def _schema_names(schema: dict, prefix: str = "") -> set[str]:
    names = set()
    for name, sub in (schema.get("properties") or {}).items():
        names.add(name)
        names |= _schema_names(sub, f"{prefix}{name}.")
    return names


def test_docs_document_every_record_field():
    docs = (ROOT / "docs" / "records.md").read_text()
    missing = sorted(n for n in _schema_names(SCHEMA) if f"`{n}`" not in docs)
    assert not missing, f"docs/records.md lacks {missing}"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("label"), "record: missing field(s) label"),
        (lambda r: r.update(extra=1), "record: unknown field(s) extra"),
        (lambda r: r.update(status="done"), "status: expected one of ok, failed"),
        (lambda r: r["config"].pop("model"), "config: missing field(s) model"),
        # whichever schema the first committed record has (1: `schema`, 2: `schema_version`)
        (
            lambda r: [
                r.pop("schema", None),
                r.pop("schema_version", None),
                r.update(schema_version=7),
            ],
            "schema_version: expected 2 (or 1), got 7",
        ),
        (lambda r: r.update(metrics=[]), "metrics: expected an object, got list"),
    ],
)
def test_invalid_records_are_refused_with_the_field(mutate, message, tmp_path):
    raw = json.loads(COMMITTED[0].read_text())
    mutate(raw)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(RecordError) as info:
        load_record(path)
    assert str(info.value).startswith("r.json: ")
    assert message in str(info.value)


def test_a_status_only_record_is_invalid(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"status": "ok"}')
    with pytest.raises(RecordError, match="bad.json: schema_version: expected 2"):
        load_record(path)


OUTSIDE = (  # spelled in pieces so that this file does not match itself
    "/".join(["..", "shared"]),
    "/".join(["", "work", "shared"]),
    *(name.upper() + ".md" for name in ("methods", "design", "layout")),
)


def test_no_project_file_points_outside_the_repository():
    texts = [p for p in ROOT.rglob("*") if p.suffix in {".md", ".py", ".toml", ".yaml"}]
    for path in texts:
        if {".venv", ".git", "results"} & set(path.parts):
            continue
        text = path.read_text(errors="ignore")
        assert not any(outside in text for outside in OUTSIDE), path


def test_display_path_keeps_an_absolute_path_outside_the_working_folder(tmp_path, monkeypatch):
    from lorabench.report.data import display_path

    inside = tmp_path / "work"
    (inside / "results").mkdir(parents=True)
    monkeypatch.chdir(inside)
    assert display_path("results/x") == "results/x"
    assert display_path(inside / "results") == "results"
    elsewhere = tmp_path / "elsewhere" / "report"
    assert display_path(elsewhere) == elsewhere.resolve().as_posix()
