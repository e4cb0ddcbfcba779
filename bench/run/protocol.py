"""The two-stage protocol that one ``lorabench run`` follows when a suite has a training grid.

Stage 1 runs every run that needs no choice: each grid point of each method on the
selection seed (the suite's first seed), and every run outside a grid. Then
:func:`lorabench.selection.select` picks each method's point from the stage-1 records'
validation scores (never their test scores). Stage 2 runs the other seeds at the chosen
point only; the stage-1 run at the chosen point is that method's first-seed run (the same
config, so the same record: nothing is retrained).

Both stages go through the launcher, so a rerun skips every recorded run of either stage
and, with the stage-1 records on disk, makes the same choice again (resume).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from lorabench import selection
from lorabench.run.launch_local import SuiteOutcome
from lorabench.run.suite import RunSpec, Suite

log = logging.getLogger(__name__)


@dataclass
class ProtocolOutcome(SuiteOutcome):
    """A suite's outcome over both stages, with the choices made between them."""

    choices: dict[str, selection.Choice] = field(default_factory=dict)
    not_run: list[RunSpec] = field(default_factory=list)  # other seeds at points not chosen


def needs_choice(run: RunSpec) -> bool:
    """Whether ``run`` waits for a choice: a grid point on a seed other than the selection seed."""
    grid = selection.grid_of(run.config)
    return grid is not None and run.seed != grid["seed"]


def split_stages(runs: list[RunSpec]) -> tuple[list[RunSpec], list[RunSpec]]:
    """(stage 1, candidates for stage 2), each in plan order."""
    return [r for r in runs if not needs_choice(r)], [r for r in runs if needs_choice(r)]


def stage_two(candidates: list[RunSpec], choices: dict[str, selection.Choice]) -> list[RunSpec]:
    """The candidates at their method's chosen point (none for a method without a choice)."""
    return [r for r in candidates if selection.is_selected(r.config, choices, undecided=False)]


def run_protocol(launcher, suite: Suite, runs: list[RunSpec], out_dir: Path, **options):
    """Run ``runs`` in two stages through ``launcher`` (see the module docstring)."""
    first, candidates = split_stages(runs)
    stage1 = launcher.run(suite, first, out_dir, **options)
    outcome = ProtocolOutcome(list(stage1.executed), list(stage1.skipped))
    outcome.held = list(stage1.held)
    if not candidates:
        return outcome
    wanted = {r.run_id for r in first}
    outcome.choices = selection.select([r for r in stage1.records if r["run_id"] in wanted])
    for label in sorted({run.label for run, _ in stage1.held} & set(outcome.choices)):
        # another process still trains part of this grid: choose when every point is in
        log.info("%s: part of its grid runs elsewhere; no choice yet (rerun to continue)", label)
        del outcome.choices[label]
    for label, choice in outcome.choices.items():
        log.info(
            "%s: %s selected on validation (seed %d, macro %s)",
            label,
            selection.point_text(choice.point),
            choice.seed,
            "n/a" if choice.score is None else f"{choice.score:.4f}",
        )
    second = stage_two(candidates, outcome.choices)
    outcome.not_run = [r for r in candidates if r not in second]
    if second:
        stage2 = launcher.run(suite, second, out_dir, **options)
        outcome.executed += stage2.executed
        outcome.skipped += stage2.skipped
        outcome.held += stage2.held
    return outcome
