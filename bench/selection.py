"""Hyperparameter selection on validation data: result records in, one choice per method out.

A method entry whose ``[train]`` settings hold lists (e.g. ``lr = [1e-3, 3e-3, 1e-2]``) is a
*training grid*: every run of it carries ``config.train_sweep = {"fields": [...], "seed": s}``
(the swept train fields and the seed the choice is made on), and its point is the values of
those fields in ``config.train``. The protocol (``lorabench.run.protocol``) trains every
point on seed ``s``, calls :func:`select` on those records, and runs the other seeds at the
chosen point only; the report calls the same :func:`select` to show each method at its
chosen point. Nothing else decides a choice.

The rule (:data:`RULE`): among the ``ok`` records of a label at the selection seed that
have a finite validation score (``metrics.validation.macro_avg``), take the highest score;
ties (equal scores) go to the smallest point, comparing ``lr`` first and then the other
swept fields by name — the smaller learning rate is the more conservative choice. Test
scores (``metrics.eval``, ``metrics.accuracy``) are never read here.

This module reads plain dicts and imports nothing from lorabench, so every layer may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RULE = (
    "highest validation macro-average accuracy (metrics.validation.macro_avg) on the "
    "selection seed among ok runs; ties go to the smaller lr (then the smaller value of the "
    "other swept train fields, by name)"
)
TIE_FIRST = "lr"  # the field compared first when breaking ties


@dataclass(frozen=True)
class Candidate:
    """One grid point of a method at the selection seed, as recorded."""

    point: dict[str, Any]
    status: str
    score: float | None  # validation macro average; None when not ok or not measured
    run_id: str | None


@dataclass(frozen=True)
class Choice:
    """The chosen point of one method (label), with every candidate it was chosen from."""

    label: str
    fields: tuple[str, ...]
    seed: int
    point: dict[str, Any] | None  # None: no candidate has a validation score
    score: float | None
    candidates: list[Candidate] = field(default_factory=list)


def grid_of(config: dict | None) -> dict | None:
    """``config["train_sweep"]`` (``{"fields": [...], "seed": s}``) or None for other runs."""
    sweep = (config or {}).get("train_sweep")
    return sweep if isinstance(sweep, dict) and sweep.get("fields") else None


def _config(record_or_config: dict) -> dict:
    """A record's config, or the argument itself when it is a run config."""
    config = record_or_config.get("config")
    return config if isinstance(config, dict) else record_or_config


def point_of(record_or_config: dict) -> dict[str, Any]:
    """The swept train values of a run (``{}`` for a run outside any grid)."""
    config = _config(record_or_config)
    grid = grid_of(config)
    if grid is None:
        return {}
    train = config.get("train") or {}
    return {name: train.get(name) for name in ordered_fields(grid["fields"])}


def point_key(record_or_config: dict) -> tuple:
    """A hashable form of :func:`point_of` (``()`` outside a grid)."""
    return tuple(sorted(point_of(record_or_config).items()))


def point_text(point: dict[str, Any] | None) -> str:
    """``lr=0.003`` (fields in tie-break order, ``, `` between them); ``n/a`` for None."""
    if point is None:
        return "n/a"
    return ", ".join(f"{name}={_value_text(point[name])}" for name in ordered_fields(point))


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def ordered_fields(fields: Any) -> list[str]:
    """Swept train fields in tie-break order: ``lr`` first, then by name."""
    return sorted(fields, key=lambda name: (name != TIE_FIRST, name))


def validation_score(record: dict) -> float | None:
    """``metrics.validation.macro_avg`` of an ok record, or None."""
    if record.get("status") != "ok":
        return None
    validation = (record.get("metrics") or {}).get("validation") or {}
    score = validation.get("macro_avg")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        return None
    return float(score)


def _tie_key(point: dict[str, Any]) -> tuple:
    return tuple(
        (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))
        for value in (point[name] for name in ordered_fields(point))
    )


def select(records: list[dict]) -> dict[str, Choice]:
    """label -> :class:`Choice`, for every label that has grid records at its selection seed.

    Records outside a grid and records of other seeds are ignored, so the whole results
    folder (or a stage's records) may be passed in. Deterministic: the input order does
    not matter.
    """
    by_label: dict[str, list[dict]] = {}
    for record in records:
        grid = grid_of(_config(record))
        if grid is None or record.get("seed") != grid.get("seed"):
            continue
        by_label.setdefault(str(record.get("label")), []).append(record)
    choices = {}
    for label, group in sorted(by_label.items()):
        grid = grid_of(_config(group[0]))
        candidates = sorted(
            (
                Candidate(point_of(r), str(r.get("status")), validation_score(r), r.get("run_id"))
                for r in group
            ),
            key=lambda c: (_tie_key(c.point), str(c.run_id)),
        )
        scored = [c for c in candidates if c.score is not None]
        best = None
        for candidate in scored:  # in tie-break order: a later point must score strictly higher
            if best is None or candidate.score > best.score:
                best = candidate
        choices[label] = Choice(
            label=label,
            fields=tuple(ordered_fields(grid["fields"])),
            seed=int(grid["seed"]),
            point=best.point if best else None,
            score=best.score if best else None,
            candidates=candidates,
        )
    return choices


def is_selected(record_or_config: dict, choices: dict[str, Choice], undecided: bool = True) -> bool:
    """Whether a run is at its method's chosen point (always True outside a grid).

    ``undecided`` answers for a method without a choice (no candidate scored): the report
    keeps its runs visible (failed ones included); the protocol runs nothing more of it.
    """
    config = _config(record_or_config)
    if grid_of(config) is None:
        return True
    choice = choices.get(str(config.get("label")))
    if choice is None or choice.point is None:
        return undecided
    return point_of(config) == choice.point
