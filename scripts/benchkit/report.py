"""The markdown report: machine and versions, the table of medians with ratios and targets,
failures, and every sample. The README's tables are copied from it, so keep its format."""

from __future__ import annotations

import re
import statistics
from typing import Any

from .runner import Bench
from .scenarios import Row, load
from .seed import Dataset
from .sites import Site


def rows_for(site: Site, data: Dataset) -> list[Row]:
    """Every scenario's rows, in table order."""
    rows = [row for scenario in load() for row in scenario.rows(site, data)]
    return sorted(rows, key=lambda row: row.position)


def fmt(value: float, digits: int) -> str:
    if value >= 100 and digits <= 1:
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.{digits}f}"


def target_check(target: str, value: float, ratio: float | None) -> str:
    if not target:
        return ""
    kind, op, bound_text = re.match(r"(ratio|abs)(>=|<=)(.+)", target).groups()  # type: ignore[union-attr]
    bound = float(bound_text)
    subject = ratio if kind == "ratio" else value
    if subject is None:
        return ""
    ok = subject >= bound if op == ">=" else subject <= bound
    return "✅" if ok else "❌"


def target_text(target: str, unit: str) -> str:
    if not target:
        return ""
    kind, op, bound = re.match(r"(ratio|abs)(>=|<=)(.+)", target).groups()  # type: ignore[union-attr]
    sign = "≥" if op == ">=" else "≤"
    return f"{sign} {bound}x ref" if kind == "ratio" else f"{sign} {bound} {unit}"


def render(bench: Bench, facts: dict[str, str], versions: dict[str, str], args: Any) -> str:
    r, site = bench.results, bench.site
    names = [c.name for c in bench.contenders]
    labels = {c.name: c.label for c in bench.contenders}
    lines = [
        f"# clearmount benchmark — {site.backend} ({site.server_name} on 127.0.0.1)",
        "",
        f"{facts['date']} on {facts['host']}: nproc {facts['nproc']}, RAM {facts['ram']}, "
        f"CPU {facts['cpu']}, kernel {facts['kernel']}, Python {facts['python']}; "
        f"load average {facts['load']} at the start, {facts['load_end']} at the end"
        + (
            " (other work was running: expect noise)"
            if max(float(facts["load"].split()[0]), float(facts["load_end"].split()[0])) > 1.5
            else ""
        ),
        "",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "command: `" + " ".join(["scripts/bench", *args.argv]) + "`",
        f"medians over {bench.reps} repetition(s) (start: over every session); "
        "cell = median (ratio to the reference of the same row, same run)",
        "page cache: "
        + (
            "dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every cold row"
            if bench.page_cache.works
            else f"NOT dropped — {bench.page_cache.problem}"
        ),
        "",
    ]
    header = ["row", "unit", "better", "reference", *(labels[n] for n in names)]
    if "clearmount" in names:
        header.append("clearmount target")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    selected = {scenario.name for scenario in bench.scenarios}
    measured = {
        row.key
        for scenario in load()
        if scenario.name in selected or not scenario.session  # "start": every session
        for row in scenario.rows(site, bench.data)
    }
    for row in rows_for(site, bench.data):
        if row.key not in measured:
            continue
        got = r.samples.get(row.key, {})
        ref = statistics.median(got["reference"]) if got.get("reference") else None
        ref_cell = row.reference if ref is None else f"{fmt(ref, row.digits)} ({row.reference})"
        if ref is None and row.measured_reference:
            ref_cell = f"error ({row.reference})"
        cells = [
            row.title,
            row.unit,
            "higher" if row.higher_is_better else "lower",
            ref_cell,
        ]
        verdict = ""
        for name in names:
            values = got.get(name)
            errors = r.errors.get(row.key, {}).get(name)
            if not values:
                cells.append("error" if errors else "—")
                continue
            value = statistics.median(values)
            ratio = value / ref if ref else None
            cell = fmt(value, row.digits)
            if ratio is not None:
                cell += f" ({ratio:.2f}x)"
            if errors:
                cell += f" [{len(errors)} failed]"
            cells.append(cell)
            if name == "clearmount":
                verdict = target_check(row.target, value, ratio)
        if "clearmount" in names:
            cells.append(f"{target_text(row.target, row.unit)} {verdict}".strip())
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "ratio = contender ÷ reference; for rows where lower is better a ratio below 1 "
        "beats the reference."
    )
    lines.append(
        "The small files are opened by path without listing their directory first; "
        "`ls -l` runs on a fresh mount (never listed before)."
    )
    for note in r.notes:
        lines.append(f"- {note}")
    if r.wrong_bytes:
        lines += ["", "## WRONG BYTES", "", *(f"- {w}" for w in r.wrong_bytes)]
    failures = [
        f"- {who}, {row}: {msg}"
        for row, by_who in r.errors.items()
        for who, msgs in by_who.items()
        for msg in msgs
    ]
    if failures:
        lines += ["", "## failures", "", *failures]
    lines += ["", "<details><summary>every sample</summary>", ""]
    for row in rows_for(site, bench.data):
        for who, values in r.samples.get(row.key, {}).items():
            shown = ", ".join(fmt(v, max(row.digits, 1)) for v in values)
            lines.append(f"- {row.key} / {who}: {shown} {row.unit}")
    lines += ["", "</details>", ""]
    return "\n".join(lines)
