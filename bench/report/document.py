"""Reports from result records: ``report.md``, ``results.csv`` and PNG plots.

Reads result records only (no torch, no model code). The report is the ordered list of
section functions in :data:`SECTIONS`; everything written is derived from the records and
the arguments, sorted and formatted with fixed precision, so the same records give
byte-identical ``report.md`` and ``results.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lorabench.errors import ConfigError
from lorabench.records import check_writable
from lorabench.report import sections
from lorabench.report.ablations import ablations_section
from lorabench.report.claims import claims_section
from lorabench.report.data import ReportData, load_records
from lorabench.report.plots import write_plots
from lorabench.report.protocol import protocol_section
from lorabench.report.sweeps import sweep_section

#: report.md, top to bottom: each section maps the report data to markdown lines
SECTIONS = (
    sections.intro,
    sections.summary,
    sections.per_task,
    protocol_section,
    sweep_section,
    sections.routing,
    sections.setup,
    sections.failures,
    claims_section,
    ablations_section,
)


def render_markdown(data: ReportData) -> str:
    lines = [line for section in SECTIONS for line in section(data)]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(
    results_dir: str | Path,
    out_dir: str | Path,
    baseline: str = "lora",
    *,
    merge: bool = False,
    check_baseline: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``report.md``, ``results.csv`` and the PNG plots into ``out_dir``.

    ``baseline`` is the label the Δ column and paired tests compare against; with
    ``check_baseline`` a baseline that is no label of the records is a ConfigError listing
    the labels (else the report says it has no ok run). ``merge`` allows records of several
    suites or configs in one folder (see :func:`load_records`). ``warn`` receives one line
    per file that is not a valid record. Returns the written paths. Raises ConfigError for a
    missing folder, one with no readable record or mixed records, and OutputError when
    ``out_dir`` cannot be written.
    """
    check_writable(out_dir, "report folder")
    records = load_records(results_dir, merge=merge)
    for problem in records.problems:
        if warn is not None:
            warn(f"{problem}; skipped")
    data = ReportData(records, baseline, results_dir, out_dir)
    if check_baseline and baseline not in data.labels:
        raise ConfigError(
            f"--baseline {baseline!r} is not a method label in {results_dir}; "
            f"labels: {', '.join(data.labels)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(data, out)
    markdown = out / "report.md"
    markdown.write_text(render_markdown(data), encoding="utf-8", newline="\n")
    csv = out / "results.csv"
    data.frame.to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
    return [markdown, csv, *plots]
