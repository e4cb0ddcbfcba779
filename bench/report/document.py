"""Reports from result records: ``report.md``, ``results.csv`` and PNG plots.

Reads result records only (no torch, no model code). The report is the ordered list of
section functions in :data:`SECTIONS`; everything written is derived from the records and
the arguments, sorted and formatted with fixed precision, so the same records give
byte-identical ``report.md`` and ``results.csv``.
"""

from __future__ import annotations

from pathlib import Path

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
    results_dir: str | Path, out_dir: str | Path, baseline: str = "lora"
) -> list[Path]:
    """Write ``report.md``, ``results.csv`` and the PNG plots into ``out_dir``.

    ``baseline`` is the label the Δ column and paired tests compare against. Returns the
    written paths. Raises ConfigError for a missing folder or one with no readable record.
    """
    data = ReportData(load_records(results_dir), baseline, results_dir, out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(data, out)
    markdown = out / "report.md"
    markdown.write_text(render_markdown(data), encoding="utf-8", newline="\n")
    csv = out / "results.csv"
    data.frame.to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
    return [markdown, csv, *plots]
