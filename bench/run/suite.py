"""Suite files (TOML) → a validated plan of runs.

A suite names a model, tasks, training data, methods, seeds and an optional parameter
budget. ``load_suite`` checks every key and value (one-line errors naming the file, table
and key) and ``plan`` expands it into one :class:`RunSpec` per (method × seed), resolving
each method's size knob against the budget — all before any training starts.

A list for a numeric ``[train]`` field (globally, or in a method's ``train = {...}``) is a
*training grid*, e.g. ``lr = [1e-3, 3e-3, 1e-2]``; several lists combine as a product. A
grid is not a set of methods to compare but a hyperparameter to select: every point is
trained on the first seed and scored on the validation split, and the other seeds run at
the chosen point only (``lorabench.run.protocol``, rule in ``lorabench.selection``).
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorabench.api.layer import check_config, knob, positive_int
from lorabench.api.registry import available_methods, build_config, coerce, get_method
from lorabench.errors import ConfigError, LorabenchError, UnknownMethodError
from lorabench.train import TrainConfig

REFERENCE_ROWS = ("base", "full")  # no training / full fine-tuning: not plugins
FAULTS = ("raise", "oom", "nan", "crash")
# numeric [train] fields that cannot be a training grid, and why
NOT_GRIDDED = {"eval_every": "how often the validation loss is measured is no hyperparameter"}


@dataclass
class EvalConfig:
    batch_size: int = knob(32, "lm-eval batch size")
    limit: int | dict[str, int] | None = knob(
        None, "evaluate at most this many examples per task, or a table {task = n} (None = all)"
    )
    limit_seed: int | None = knob(
        None, "None: lm-eval's first `limit` examples; a seed: a seeded random subset per task"
    )
    num_fewshot: int = knob(0, "few-shot examples per prompt")
    latency_batch_size: int = knob(8, "sequences per batch when timing inference")
    latency_seq_len: int = knob(64, "tokens per sequence when timing inference")
    latency_repeats: int = knob(10, "timed forward passes (median reported) after 2 warm-ups")
    primary: dict[str, str] | None = knob(
        None,
        "{task = metric}: the lm-eval metric a task is ranked on, e.g. acc_norm "
        "(None: acc, else exact_match; a task source's own choice for its tasks)",
    )

    def __post_init__(self) -> None:
        check_config(
            "eval",
            batch_size=positive_int(self.batch_size),
            limit=(_limit_ok(self.limit), f"None, >= 1 or a table of them, got {self.limit}"),
            latency_repeats=(self.latency_repeats >= 1, f">= 1, got {self.latency_repeats}"),
            primary=(
                _primary_ok(self.primary),
                f'a table {{task = metric name}} such as {{arc_easy = "acc_norm"}} (a name '
                f"without lm-eval's ',filter' suffix), got {self.primary!r}",
            ),
        )


def _primary_ok(primary: Any) -> bool:
    return primary is None or all(
        isinstance(v, str) and v.strip() and "," not in v for v in primary.values()
    )


def _limit_ok(limit: Any) -> bool:
    values = limit.values() if isinstance(limit, dict) else [limit]
    return limit is None or (
        all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
        and isinstance(limit, (int, dict))
    )


@dataclass
class SuiteSettings:
    name: str = knob(None, "suite name (required)")
    model: str = knob(
        None, "'tiny', 'smollm2', a local model folder, or a Hugging Face hub name (required)"
    )
    description: str = knob("", "one line for reports")
    tasks: list[str] | str = knob("all", "lm-eval task names, or 'all' tasks found in tasks_dir")
    tasks_dir: str | None = knob(
        "tasks",
        "folder of lm-eval task YAML + JSONL, relative to the suite file; 'commonsense' = the "
        "built-in task source; None = lm-eval's registry",
    )
    train_data: str | dict = knob(
        "tasks",
        "'tasks' (train splits of tasks_dir) or a table {jsonl=...} / {hf_dataset=..., split=...}",
    )
    targets: str | list[str] = knob("all-linear", "linear layers to adapt, or all-linear")
    seeds: list[int] = knob([0], "one run per seed and method")
    param_budget: int | None = knob(
        None, "trainable parameters each method's size knob is tuned to"
    )
    budget_tolerance: float = knob(0.25, "largest relative miss of the budget that is accepted")
    device: str = knob("cpu", "cpu or cuda (the CLI's --device overrides)")
    dtype: str = knob("float32", "dtype the base model is loaded in: float32 or bfloat16")
    chat_template: bool = knob(False, "format prompts with the tokenizer's chat template")


@dataclass
class MethodEntry:
    name: str
    label: str
    config: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    inject_fault: str | None = None  # harness tests only: raise / oom / nan / crash at step 2
    sweep: dict | None = None  # {"group": label, "values": {field: value}} for sweep points
    train_grid: dict = field(
        default_factory=dict
    )  # {train field: [values]}: selected on validation


@dataclass
class Suite:
    path: Path
    settings: SuiteSettings
    train: TrainConfig
    eval: EvalConfig
    methods: list[MethodEntry]
    train_grid: dict = field(default_factory=dict)  # [train] fields given as lists

    @property
    def root(self) -> Path:
        return self.path.parent


@dataclass
class RunSpec:
    """One run, fully described: ``config`` is what the record stores and what is hashed."""

    run_id: str
    label: str
    method: str
    seed: int
    config: dict


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if path.is_dir() or (not path.exists() and path.with_suffix(".toml").exists()):
        path = path / "suite.toml" if path.is_dir() else path.with_suffix(".toml")
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read suite file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    where = str(path)
    _check_keys(raw, {"suite", "train", "eval", "methods"}, where, "top level")
    if "suite" not in raw:
        raise ConfigError(f"{where}: missing required table [suite]")
    settings = _dataclass_from(SuiteSettings, raw["suite"], where, "[suite]")
    if settings.tasks_dir == "":  # TOML has no null: "" means lm-eval's own registry
        settings.tasks_dir = None
    for required in ("name", "model"):
        if getattr(settings, required) is None:
            raise ConfigError(f"{where}: [suite] is missing the required key '{required}'")
    if not settings.seeds:
        raise ConfigError(f"{where}: [suite].seeds is empty; give at least one seed")
    if settings.device not in ("cpu", "cuda") and not settings.device.startswith("cuda:"):
        raise ConfigError(f"{where}: [suite].device: expected cpu or cuda, got {settings.device!r}")
    if settings.dtype not in ("float32", "bfloat16"):
        raise ConfigError(
            f"{where}: [suite].dtype: expected float32 or bfloat16, got {settings.dtype!r}"
        )
    train_table, train_grid = _split_grid(raw.get("train", {}), where, "[train]")
    train = _dataclass_from(TrainConfig, train_table, where, "[train]")
    eval_ = _dataclass_from(EvalConfig, raw.get("eval", {}), where, "[eval]")
    entries = raw.get("methods")
    if not entries:
        raise ConfigError(f"{where}: no [[methods]] entries; add at least one method")
    methods = [
        m for i, e in enumerate(entries) for m in _method_entries(e, i, where, train, train_grid)
    ]
    labels = [m.label for m in methods]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise ConfigError(
            f"{where}: duplicate method label(s) {dupes}; give each entry a unique label"
        )
    return Suite(path, settings, train, eval_, methods, train_grid)


def _check_keys(table: Any, known: set[str], where: str, name: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {name} must be a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' in {name}; known keys: {', '.join(sorted(known))}"
        )


def _dataclass_from(cls, table: Any, where: str, name: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(table, set(fields), where, name)
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        values[key] = coerce(value, hints[key], f"{where}: {name}.{key}")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _split_grid(table: Any, where: str, name: str) -> tuple[Any, dict[str, list]]:
    """A train table → (its scalar settings, its lists): lists only for numeric fields.

    A list-typed field (``betas``) is a scalar setting, not a grid.
    """
    if not isinstance(table, dict):
        return table, {}  # _dataclass_from says what is wrong
    hints = typing.get_type_hints(TrainConfig)
    scalars, grid = {}, {}
    for key, value in table.items():
        if not isinstance(value, list) or key not in hints or typing.get_origin(hints[key]) is list:
            scalars[key] = value
            continue
        numeric = _numeric_type(hints[key])
        if numeric is None:
            raise ConfigError(
                f"{where}: {name}.{key}: a list (a grid to select on validation) is allowed "
                f"for numeric fields only, got {value!r}"
            )
        if key in NOT_GRIDDED:
            raise ConfigError(
                f"{where}: {name}.{key}: {NOT_GRIDDED[key]}; give one value, got {value!r}"
            )
        if not value:
            raise ConfigError(f"{where}: {name}.{key}: a grid needs at least one value")
        values = [coerce(v, numeric, f"{where}: {name}.{key}") for v in value]
        if len(set(values)) < len(values):
            raise ConfigError(f"{where}: {name}.{key}: the grid repeats a value: {value!r}")
        grid[key] = values
    return scalars, grid


def _numeric_type(hint: Any) -> type | None:
    """``int`` or ``float`` for a numeric annotation (``int | None`` included), else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def merge_train(*tables: dict) -> dict:
    """Train settings, later tables overriding earlier ones. ``steps`` and ``epochs`` are
    alternatives: a table that sets one of them unsets the other from earlier tables."""
    merged: dict = {}
    for table in tables:
        for key, other in (("steps", "epochs"), ("epochs", "steps")):
            if table.get(key) is not None and other not in table:
                merged[other] = None
        merged.update(table)
    return merged


def grid_points(grid: dict[str, list]) -> list[dict]:
    """The product of a training grid's lists (``[{}]`` for no grid), in the order given."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def _method_entries(
    entry: Any, index: int, where: str, train: TrainConfig, train_grid: dict[str, list]
) -> list[MethodEntry]:
    """One [[methods]] table → its entries: one, or one per point of a sweep.

    A list value for a config field is a sweep; several lists combine as their product
    (``sweep = "product"``, the default) or element by element (``sweep = "zip"``).
    """
    name = f"[[methods]] #{index + 1}"
    known = {"name", "label", "config", "train", "inject_fault", "sweep"}
    _check_keys(entry, known, where, name)
    if "name" not in entry:
        raise ConfigError(f"{where}: {name} is missing the required key 'name'")
    method = entry["name"]
    if method not in REFERENCE_ROWS:
        try:
            get_method(method)
        except UnknownMethodError:
            known_methods = ", ".join([*REFERENCE_ROWS, *available_methods()])
            raise ConfigError(
                f"{where}: {name}: unknown method '{method}'; known: {known_methods}"
            ) from None
    config = entry.get("config", {})
    if method in REFERENCE_ROWS and config:
        raise ConfigError(f"{where}: {name}: '{method}' takes no config")
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: {name}.config must be a table")
    overrides, own_grid = _split_grid(entry.get("train", {}), where, f"{name}.train")
    # the method's own settings replace the suite's, lists and scalars alike
    own = overrides if isinstance(overrides, dict) else {}
    grid = {k: v for k, v in train_grid.items() if k not in own} | own_grid
    if method == "base":  # no training: nothing to select
        grid = {}
    for point in grid_points(grid):
        table = merge_train(dataclasses.asdict(train), own, point)
        _dataclass_from(TrainConfig, table, where, f"{name}.train")
    fault = entry.get("inject_fault")
    if fault is not None and fault not in FAULTS:
        raise ConfigError(
            f"{where}: {name}.inject_fault: expected one of {list(FAULTS)}, got {fault!r}"
        )
    label = entry.get("label", method)
    if not isinstance(label, str) or not label:
        raise ConfigError(f"{where}: {name}.label must be a non-empty string")
    points = _sweep_points(config, entry.get("sweep", "product"), where, name)
    entries = []
    for point in points:
        point_config = {**config, **point}
        if method not in REFERENCE_ROWS:
            try:
                build_config(method, point_config)  # validate now; resolved again in plan()
            except ConfigError as exc:
                raise ConfigError(f"{where}: {name}: {exc}") from exc
        point_label = label + "".join(f"[{k}={v}]" for k, v in point.items())
        sweep = {"group": label, "values": point} if point else None
        entries.append(
            MethodEntry(method, point_label, point_config, overrides, fault, sweep, grid)
        )
    return entries


def _sweep_points(config: dict, mode: Any, where: str, name: str) -> list[dict]:
    """The sweep's points (``[{}]`` when nothing is swept); one-line errors for bad sweeps."""
    swept = {k: v for k, v in config.items() if isinstance(v, list)}
    if mode not in ("product", "zip"):
        raise ConfigError(f"{where}: {name}.sweep: expected 'product' or 'zip', got {mode!r}")
    for key, values in swept.items():
        if not values:
            raise ConfigError(f"{where}: {name}.config.{key}: a sweep needs at least one value")
    if not swept:
        return [{}]
    keys = list(swept)
    if mode == "zip":
        lengths = {k: len(v) for k, v in swept.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                f"{where}: {name}: sweep = 'zip' needs lists of one length, got {lengths}"
            )
        return [
            dict(zip(keys, values, strict=True)) for values in zip(*swept.values(), strict=True)
        ]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*swept.values())]


# --- planning ---------------------------------------------------------------------------


def fit_budget(
    method: str,
    config,
    shapes: list[tuple[int, int]],
    budget: int,
    tolerance: float,
    max_value: int = 4096,
):
    """The config whose size knob gives the trainable count nearest to ``budget``.

    Counts grow with the knob, so the scan stops at the first value past the budget.
    Returns ``(config, count)``; ConfigError when the nearest count misses by more than
    ``tolerance`` (relative).
    """
    spec = get_method(method)
    if spec.size_knob is None:
        raise ConfigError(f"{method}: has no size knob, so a parameter budget cannot be met")
    best = None
    first_error: ConfigError | None = None
    for value in range(1, max_value + 1):
        try:
            candidate = dataclasses.replace(config, **{spec.size_knob: value})
        except ConfigError as exc:
            first_error = first_error or exc
            continue
        count = sum(spec.param_count(candidate, d_in, d_out) for d_in, d_out in shapes)
        if best is None or abs(count - budget) < abs(best[1] - budget):
            best = (candidate, count)
        if count > budget:
            break
    if best is None and first_error is not None:
        raise ConfigError(
            f"method '{method}' cannot be fitted to param_budget (no valid "
            f"{spec.size_knob}): {first_error}"
        )
    if best is None or abs(best[1] - budget) > tolerance * budget:
        nearest = (
            f"nearest is {spec.size_knob}={getattr(best[0], spec.size_knob)} with {best[1]:,}"
            if best
            else "no valid value"
        )
        raise ConfigError(
            f"method '{method}' cannot reach param_budget={budget:,} within {tolerance:.0%}: {nearest} parameters"
        )
    return best


def plan(
    suite: Suite,
    *,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    device: str | None = None,
    trust_suite_code: bool = False,
) -> list[RunSpec]:
    """Expand ``suite`` into runs (method × seed; ``base`` once), validating everything first
    (``lorabench.run.checks``; ``trust_suite_code`` allows task configs that run code)."""
    from lorabench.api.inject import parse_targets
    from lorabench.records import config_hash
    from lorabench.run.checks import check_plan

    s = suite.settings
    where = str(suite.path)
    entries = suite.methods
    if methods:
        known = {m.label for m in entries} | {m.name for m in entries}
        missing = [m for m in methods if m not in known]
        if missing:
            raise ConfigError(
                f"--methods: '{missing[0]}' is not in suite {s.name}; it has: {', '.join(m.label for m in entries)}"
            )
        # a label selects itself; a plugin name that is no label selects all its entries (sweeps)
        labels = {m.label for m in entries}
        entries = [
            m for m in entries if m.label in methods or (m.name in methods and m.name not in labels)
        ]
    seeds = list(seeds) if seeds is not None else list(s.seeds)
    check_plan(suite, entries, seeds, device, trust_suite_code=trust_suite_code)
    try:
        from lorabench.models.zoo import target_shapes

        shapes = target_shapes(s.model, s.targets)
    except LorabenchError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if shapes is None and s.param_budget is not None:
        raise ConfigError(
            f"{where}: param_budget needs the config of model '{s.model}', which is not available offline"
        )
    if any(entry.train_grid for entry in entries):
        _check_validation_splits(
            suite, where, "a [train] list is a grid selected on validation splits"
        )
    if any(_entry_train(suite, entry).eval_every for entry in entries if entry.name != "base"):
        from lorabench.tasks import commonsense

        if commonsense.is_task_source(s.tasks_dir):  # its validation parts are lm-eval docs
            raise ConfigError(
                f"{where}: [train].eval_every: not available with the built-in task source "
                f"'{s.tasks_dir}' yet; leave it out"
            )
        _check_validation_splits(suite, where, "eval_every scores the validation splits")
    runs = []
    for entry in entries:
        method_config, budget = {}, None
        if entry.name not in REFERENCE_ROWS:
            cfg = build_config(entry.name, entry.config)
            knob_name = get_method(entry.name).size_knob
            if s.param_budget is not None and knob_name is None:
                raise ConfigError(
                    f"{where}: method '{entry.label}' has no size knob, so param_budget cannot "
                    "be met; run it in a suite without param_budget"
                )
            if s.param_budget is not None and knob_name not in entry.config:
                try:
                    cfg, reached = fit_budget(
                        entry.name, cfg, shapes, s.param_budget, s.budget_tolerance
                    )
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from exc
                budget = {
                    "target": s.param_budget,
                    "reached": reached,
                    "knob": knob_name,
                    "value": getattr(cfg, knob_name),
                }
            if shapes is not None:
                _validate_on_meta(s.model, entry, cfg, s.targets, where)
            method_config = dataclasses.asdict(cfg)
        for point, seed in itertools.product(
            grid_points(entry.train_grid), seeds[:1] if entry.name == "base" else seeds
        ):
            train = TrainConfig(
                **merge_train(dataclasses.asdict(suite.train), entry.train, point)
            ).run_config(device or s.device)
            config = {
                "suite": s.name,
                "label": entry.label,
                "method": entry.name,
                "method_config": method_config,
                "budget": budget,
                "seed": seed,
                "model": s.model,
                "dtype": s.dtype,
                "device": device or s.device,
                "targets": parse_targets(s.targets),
                "tasks": s.tasks,
                "tasks_dir": s.tasks_dir,
                "train_data": s.train_data,
                "chat_template": s.chat_template,
                "train": train,
                "eval": _eval_config(suite.eval),
                "inject_fault": entry.inject_fault,
                # only sweep points carry this key, so other runs keep their config hash
                **({"sweep": entry.sweep} if entry.sweep else {}),
                # only training-grid runs: the swept train fields, and the seed choosing a point
                **(
                    {"train_sweep": {"fields": sorted(entry.train_grid), "seed": seeds[0]}}
                    if entry.train_grid
                    else {}
                ),
            }
            digest = config_hash(config)[:8]
            at = "".join(f"-{k}{_number(v)}" for k, v in point.items())
            runs.append(
                RunSpec(
                    f"{_slug(entry.label)}{_slug(at)}-seed{seed}-{digest}",
                    entry.label,
                    entry.name,
                    seed,
                    config,
                )
            )
    return runs


def _eval_config(eval_: EvalConfig) -> dict:
    """The eval settings of a run config; ``limit_seed`` and ``primary`` only when set, so the
    configs (and hashes) of suites without them are those they had before they existed."""
    config = dataclasses.asdict(eval_)
    if config["limit_seed"] is None:
        del config["limit_seed"]
    if not config["primary"]:  # None or {}
        del config["primary"]
    return config


def _validate_on_meta(model: str, entry: MethodEntry, cfg, targets, where: str) -> None:
    """Inject into the meta-device model: catches targets that match nothing and shape rules."""
    from lorabench.api.inject import inject
    from lorabench.models.zoo import build_on_meta, resolve_config

    try:
        inject(build_on_meta(resolve_config(model)), entry.name, cfg, targets)
    except LorabenchError as exc:
        raise ConfigError(f"{where}: method '{entry.label}': {exc}") from exc


def _entry_train(suite: Suite, entry: MethodEntry) -> TrainConfig:
    """The entry's train settings (its first grid point): what plan-time checks look at."""
    point = grid_points(entry.train_grid)[0]
    return TrainConfig(**merge_train(dataclasses.asdict(suite.train), entry.train, point))


def _check_validation_splits(suite: Suite, where: str, why: str) -> None:
    """A training grid and the validation loss need validation splits: every task one."""
    from lorabench.tasks import commonsense
    from lorabench.tasks import synthetic as task_data

    s = suite.settings
    if commonsense.is_task_source(s.tasks_dir):
        return  # every task of a built-in source has a validation part
    if s.tasks_dir is None:
        raise ConfigError(
            f"{where}: {why}, which needs a tasks_dir with <task>/validation.jsonl; "
            "lm-eval's registry tasks have none here"
        )
    tasks_dir = suite.root / s.tasks_dir
    try:
        tasks = task_data.resolve_tasks(tasks_dir, s.tasks)
    except LorabenchError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not task_data.has_validation(tasks_dir, tasks):
        raise ConfigError(
            f"{where}: {why}, but some task in {tasks_dir} has no validation.jsonl "
            "(regenerate: lorabench make-tasks)"
        )


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
