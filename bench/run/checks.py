"""Plan-time checks: what would make runs fail, found before any training starts.

``plan()`` calls :func:`check_plan` (``lorabench run --dry-run`` included), so each of these
is a one-line :class:`~lorabench.errors.ConfigError` naming the suite file:

- seeds: none, or one given twice (it would train the same run twice);
- the device: ``cuda`` (or ``cuda:N``) where torch sees no such CUDA device, and
  ``precision = "bf16"`` on a GPU without bf16 arithmetic;
- the model: a local model folder that does not exist (a name that is no built-in, no
  existing path and no hub id ``name`` / ``org/name``);
- tasks: a ``tasks_dir`` that is missing or no lorabench tasks folder, task names it does not
  hold, and ``[eval].primary`` naming a task the suite does not evaluate; a built-in task source (``tasks_dir = "commonsense"``) is fetched and converted
  (once) so that its task names and an ``[eval].limit`` table are checked too; and, without ``tasks_dir``, names that are not in lm-eval's registry (checked with
  lm-eval's ``TaskManager``; its name list is cached per lm-eval version);
- training data: ``train_data = "tasks"`` without a ``tasks_dir``, a missing JSONL file, and
  a ``batch_size`` larger than the training data;
- suite code: task configs with ``!function`` (or Python) tags, or Python files in the tasks
  folder, are refused (:class:`~lorabench.errors.SuiteCodeError`) unless
  ``trust_suite_code``: lm-eval would import and run that code.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import re
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorabench.errors import ConfigError, LorabenchError, SuiteCodeError

if TYPE_CHECKING:
    from lorabench.run.suite import MethodEntry, Suite

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_plan(
    suite: Suite,
    entries: list[MethodEntry],
    seeds: list[int],
    device: str | None,
    *,
    trust_suite_code: bool = False,
) -> None:
    """Every plan-time check for running ``entries`` × ``seeds`` of ``suite``."""
    where = str(suite.path)
    s = suite.settings
    check_seeds(seeds, where)
    if device is not None:
        check_device(device, "--device")
    else:
        check_device(s.device, f"{where}: [suite].device")
    check_model(s.model, where)
    trained = [entry for entry in entries if entry.name != "base"]
    precisions = {entry.train.get("precision", suite.train.precision) for entry in trained}
    check_precision(precisions, device or s.device, where)
    from lorabench.tasks import commonsense

    if commonsense.is_task_source(s.tasks_dir):
        tasks, source = check_task_source(suite)
        rows = None
        if source is not None and s.train_data == "tasks":
            sizes = source.environment()["tasks"]
            rows = sum(sizes[task]["train"] for task in tasks)
        elif s.train_data != "tasks":
            rows = training_rows(s.train_data, tasks, None, where)
    else:
        tasks, tasks_dir = check_tasks(suite, trust_suite_code)
        rows = training_rows(s.train_data, tasks, tasks_dir, where)
    check_primary(suite.eval.primary, tasks, where)
    if rows is None:
        return
    for entry in entries:
        if entry.name == "base":
            continue
        train = {**dataclasses.asdict(suite.train), **entry.train}
        sizes = (
            train["batch_size"] if isinstance(train["batch_size"], list) else [train["batch_size"]]
        )
        too_big = [b for b in sizes if isinstance(b, int) and b > rows]
        if too_big:
            raise ConfigError(
                f"{where}: method '{entry.label}': batch_size={max(too_big)} is larger than the "
                f"{rows} training examples of train_data; lower [train].batch_size"
            )


def check_primary(primary: dict[str, str] | None, tasks: list[str], where: str) -> None:
    """``[eval].primary`` may name only tasks the suite evaluates."""
    unknown = sorted(set(primary or {}) - set(tasks))
    if unknown:
        raise ConfigError(
            f"{where}: [eval].primary names task(s) {', '.join(unknown)} that the suite does "
            f"not evaluate; its tasks: {', '.join(tasks)}"
        )


def check_precision(precisions: set[str], device: str, where: str) -> None:
    """bf16 autocast on CUDA needs a GPU with bf16 arithmetic (Ampere or newer)."""
    if "bf16" not in precisions or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(torch.device(device))
        raise ConfigError(
            f"{where}: [train].precision: bf16, but {name} has no bf16 support; use fp16"
        )


def check_seeds(seeds: list[int], where: str) -> None:
    if not seeds:
        raise ConfigError(f"{where}: no seeds; give at least one")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ConfigError(
            f"{where}: seed(s) {', '.join(map(str, repeated))} given more than once; "
            "each seed is one run"
        )


def check_device(device: str, source: str) -> None:
    """``cuda`` / ``cuda:N`` must be a CUDA device torch sees."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"{source}: device {device!r}, but torch ({torch.__version__}, {build}) sees no "
            "CUDA device; use --device cpu"
        )
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise ConfigError(
            f"{source}: device {device!r}, but torch sees {torch.cuda.device_count()} CUDA "
            "device(s)"
        )


def check_model(model: str, where: str) -> None:
    """A name that is no built-in, no existing path and no hub id must be a missing folder."""
    from lorabench.models.zoo import BUILTIN_MODELS

    if model in BUILTIN_MODELS:
        return
    path = Path(model).expanduser()
    if path.exists():
        return  # its config is read (and checked) by planning
    local = (
        path.is_absolute()
        or model.startswith((".", "~"))
        or model.endswith("/")
        or not HUB_ID.fullmatch(model)
    )
    if local:
        raise ConfigError(
            f"{where}: model folder {model!r} not found ({path.absolute()}); give an existing "
            f"model folder, a built-in ({', '.join(BUILTIN_MODELS)}) or a hub name org/name"
        )


def check_tasks(suite: Suite, trust_suite_code: bool) -> tuple[list[str], Path | None]:
    """The suite's task names and tasks folder, checked; (names, folder or None)."""
    where = str(suite.path)
    s = suite.settings
    if s.tasks_dir is None:
        names = [t.strip() for t in s.tasks.split(",")] if isinstance(s.tasks, str) else s.tasks
        names = [n for n in names if n]
        if "all" in names:
            raise ConfigError(
                f"{where}: tasks = 'all' needs a tasks_dir; without one, name the lm-eval tasks"
            )
        check_registry_tasks(names, where)
        return names, None
    from lorabench.tasks.lm_eval_yaml import suite_code
    from lorabench.tasks.synthetic import prepare_task_folder, resolve_tasks

    folder = suite.root / s.tasks_dir
    if not folder.is_dir():
        raise ConfigError(f"{where}: tasks_dir {s.tasks_dir!r} not found ({folder.absolute()})")
    try:
        prepare_task_folder(folder)
        names = resolve_tasks(folder, s.tasks)
    except LorabenchError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if not trust_suite_code:
        code = suite_code(folder)
        if code:
            more = f" (and {len(code) - 1} more)" if len(code) > 1 else ""
            raise SuiteCodeError(
                f"{where}: its tasks run code: {code[0]}{more}; lm-eval would import and run "
                "it. Pass --trust-suite-code only if you trust this suite"
            )
    return names, folder


def check_task_source(suite: Suite) -> tuple[list[str], Any]:
    """The task names of a built-in task source and the source, fetched and converted (once)
    after the names are checked, so that unknown names in ``tasks`` or an ``[eval].limit``
    table fail before anything is fetched or runs."""
    from lorabench.tasks import commonsense

    where = str(suite.path)
    try:
        tasks = commonsense.resolve_tasks(suite.settings.tasks)
    except LorabenchError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    limit = suite.eval.limit
    unknown = sorted(set(limit) - set(tasks)) if isinstance(limit, dict) else []
    if unknown:
        raise ConfigError(
            f"{where}: [eval].limit names task(s) {', '.join(unknown)} that the suite does not "
            f"evaluate; its tasks: {', '.join(tasks)}"
        )
    return tasks, commonsense.open_commonsense()


def check_registry_tasks(names: list[str], where: str) -> None:
    known = registry_task_names()
    unknown = [name for name in names if name not in known]
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"{where}: unknown task(s) {', '.join(unknown)}: not in lm-eval's task registry "
        f"(lm-eval {_lm_eval_version()}; tasks_dir is empty){hint}"
    )


def _lm_eval_version() -> str:
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def registry_task_names() -> frozenset[str]:
    """Every task, group and tag name of lm-eval's registry (``TaskManager().all_tasks``).

    Indexing the registry takes about a minute, so the names are cached per lm-eval version
    in the lorabench cache (``LORABENCH_CACHE``).
    """
    from lorabench.models.cache import cache_root
    from lorabench.records import write_json_atomic

    cache = cache_root() / "lm_eval" / f"task-names-{_lm_eval_version()}.json"
    try:
        return frozenset(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    from lm_eval.tasks import TaskManager

    log.info("indexing lm-eval's task registry once (about a minute) to check task names")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    names = sorted(TaskManager().all_tasks)
    try:
        write_json_atomic(cache, names)
    except OSError:
        pass
    return frozenset(names)


def training_rows(
    train_data: Any, tasks: list[str], tasks_dir: Path | None, where: str
) -> int | None:
    """How many training examples ``train_data`` gives at most; None when unknown offline."""
    if train_data == "tasks":
        if tasks_dir is None:
            raise ConfigError(f"{where}: train_data = 'tasks' needs a tasks_dir with train splits")
        return sum(_count_rows(tasks_dir / task / "train.jsonl", where) for task in tasks)
    if isinstance(train_data, dict) and "jsonl" in train_data:
        rows = _count_rows(Path(train_data["jsonl"]), where)
        limit = train_data.get("limit")
        return min(rows, limit) if isinstance(limit, int) else rows
    if isinstance(train_data, dict) and isinstance(train_data.get("limit"), int):
        return train_data["limit"]
    return None


def _count_rows(path: Path, where: str) -> int:
    try:
        with open(path, encoding="utf-8") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError as exc:
        raise ConfigError(f"{where}: training data {path} cannot be read ({exc.strerror})") from exc
