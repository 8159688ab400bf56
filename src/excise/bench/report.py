"""Turn a results store into a report people can read: Markdown plus one self-contained HTML file.

Every number comes from the records of the results file (validated by :mod:`excise.bench.store`); the
report computes only means, standard deviations and ratios of them. Per scenario:

- a quality table: FA/RA/TA/MIA (and TA_forget, AP for target requests) as mean ± std over seeds with
  the mean gap to the retrained model of the same seed in brackets, the average gap with its 95% bootstrap
  interval, the original (do-nothing) model's gap beside it, and whether the method is distinguishable from
  doing nothing: its gap interval and the original's do not overlap (the interval of the mean over seeds: seeds
  redrawn with replacement, each with its own paired bootstrap replicates of the gap,
  :mod:`excise.metrics.uncertainty`);
- the metrics' 95% bootstrap intervals (each seed's, averaged over seeds);
- a performance table, measured in the same run as the method: wall time, time ÷ retrain time,
  speed-up over retrain, time ÷ one forward+backward pass over the forget set (the practical floor of a
  gradient method), peak RSS and its increase during the method;
- every MIA variant with its direction and its gap to retrain;
- failed and skipped cells with their reasons;
- plots: average gap against time (log scale), per-metric bars with error bars, and for sequential
  scenarios each metric against the step.

``std`` is the sample standard deviation (ddof=1) over seeds; with one seed only the mean is shown.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from excise.bench.runner import current_cells
from excise.bench.store import latest, read_records, resolve_results_path, status_of
from excise.bench.suite import Suite
from excise.checkpoint import atomic_write, atomic_write_text
from excise.metrics.uncertainty import percentile_interval

QUALITY_KEYS = ("FA", "FA_class_max", "RA", "TA", "TA_forget", "TA_sibling_min", "MIA", "forget_AP", "retain_mAP")
CURVE_KEYS = ("FA", "RA", "TA", "MIA")
REFERENCE_ROWS = ("original", "retrain")


# --- statistics --------------------------------------------------------------------------------
@dataclass
class Stat:
    mean: float | None
    std: float | None
    n: int
    total: int = 0  # values offered, finite or not: n < total means some seeds' values were missing or NaN

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not vals:
            return cls(None, None, 0, len(values))
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        return cls(mean, std, len(vals), len(values))

    def fmt(self, digits: int = 2) -> str:
        if self.mean is None:
            return "—"
        text = f"{self.mean:.{digits}f}"
        text = text if self.std is None else f"{text} ± {self.std:.{digits}f}"
        # A seed whose value diverged (stored as null) must not vanish from the mean unnoticed.
        return text if self.n >= self.total else f"{text} (n={self.n}/{self.total})"


@dataclass
class MethodSummary:
    label: str
    name: str
    records: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    skipped: list[dict[str, Any]]

    def stat(self, path: Sequence[str]) -> Stat:
        return Stat.of([_get(r, path) for r in self.records])

    def metric(self, name: str, part: str = "value") -> Stat:
        return self.stat(("metrics", name, part))

    @property
    def metric_names(self) -> list[str]:
        names: list[str] = []
        for record in self.records:
            names.extend(k for k in record.get("metrics", {}) if k not in names)
        return names

    def step_stat(self, step: int, name: str) -> Stat:
        values = []
        for record in self.records:
            steps = record.get("steps") or []
            if step < len(steps):
                values.append(steps[step]["avg_gap"] if name == "avg_gap"
                              else _get(steps[step], ("metrics", name, "value")))
        return Stat.of(values)

    def gap_interval(self, level: float = 0.95) -> list[float] | None:
        """95% interval of the mean over seeds of the average gap, by a two-level bootstrap: replicate ``j`` draws
        the seeds with replacement (training noise: a method that forgot on one seed and did nothing on another
        must not look certain) and takes each drawn seed's own replicate ``j`` (evaluation noise, paired with the
        reference). With one seed it is that seed's interval. ``None`` when a record has no replicates (an older
        record, or intervals off)."""
        replicates = [r.get("avg_gap_replicates") for r in self.records]
        if not replicates or any(not r for r in replicates) or len({len(r) for r in replicates}) != 1:
            return None
        table = np.asarray(replicates, dtype=float)  # seeds x replicates
        seeds = np.random.default_rng(0).integers(0, len(table), size=table.shape)
        return percentile_interval(table[seeds, np.arange(table.shape[1])].mean(axis=0), level)

    def mean_interval(self, name: str) -> list[float] | None:
        """Each seed's bootstrap interval of metric ``name``, averaged over the seeds that have one."""
        found = [_get(r, ("metrics", name, "interval")) for r in self.records]
        found = [i for i in found if i is not None]
        if not found:
            return None
        return [sum(i[0] for i in found) / len(found), sum(i[1] for i in found) / len(found)]

    def ratio(self, numerator: str, denominator: str) -> Stat:
        """Per-seed ratio of two record fields, then mean ± std (not a ratio of means)."""
        values = []
        for record in self.records:
            num, den = record.get(numerator), record.get(denominator)
            if num is not None and den:
                values.append(num / den)
        return Stat.of(values)


@dataclass
class ScenarioSummary:
    suite: str
    name: str
    kind: str
    request: Any
    config: dict[str, Any]
    sizes: dict[str, Any]
    methods: list[MethodSummary] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for m in self.methods for r in m.records})

    @property
    def steps(self) -> int:
        return max((len(r.get("steps") or []) for m in self.methods for r in m.records), default=0)


def _get(record: dict[str, Any], path: Sequence[str]) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def summarize(records: list[dict[str, Any]]) -> list[ScenarioSummary]:
    """Group the latest record of every cell by (suite, scenario) and method, in file order."""
    scenarios: dict[tuple[str, str], ScenarioSummary] = {}
    for record in latest(records).values():
        key = (record["suite"], record["scenario"])
        if key not in scenarios:
            config = record.get("config", {}).get("scenario", {})
            scenarios[key] = ScenarioSummary(record["suite"], record["scenario"], record["kind"],
                                             record.get("request"), config, record.get("sizes", {}))
        summary = scenarios[key]
        method = next((m for m in summary.methods if m.label == record["method"]), None)
        if method is None:
            method = MethodSummary(record["method"], record.get("method_name", record["method"]), [], [], [])
            summary.methods.append(method)
        {"ok": method.records, "failed": method.failed, "skipped": method.skipped}[status_of(record)].append(record)
        if status_of(record) == "ok" and record.get("sizes"):
            summary.sizes = record["sizes"]
    for summary in scenarios.values():
        summary.methods.sort(key=_order)
    return list(scenarios.values())


def _order(method: MethodSummary) -> tuple[int, float, str]:
    if method.label in REFERENCE_ROWS:
        return (REFERENCE_ROWS.index(method.label), 0.0, method.label)
    gap = Stat.of([r.get("avg_gap") for r in method.records]).mean
    return (2, math.inf if gap is None else gap, method.label)


# --- tables ------------------------------------------------------------------------------------
@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(cell(h) for h in self.headers) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.rows]
        if self.caption:
            lines += ["", f"*{self.caption}*"]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        caption = f"<p class='caption'>{html.escape(self.caption)}</p>" if self.caption else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"


def _value_gap(method: MethodSummary, name: str) -> str:
    value = method.metric(name)
    if value.mean is None:
        return "—"
    if method.label == "retrain":
        return value.fmt()
    gap = method.metric(name, "gap")
    return value.fmt() if gap.mean is None else f"{value.fmt()} [{gap.mean:.2f}]"


def _interval(interval: list[float] | None) -> str:
    return "—" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def versus_nothing(method: MethodSummary, original: MethodSummary | None) -> str:
    """Whether ``method``'s average gap to retrain is distinguishable from the original (do-nothing) model's: their
    95% intervals overlap -> not distinguishable; else closer to retrain, or further from it, than doing nothing."""
    if original is None or method.label in REFERENCE_ROWS:
        return ""
    mine, theirs = method.gap_interval(), original.gap_interval()
    if mine is None or theirs is None:
        return "—"
    if mine[0] <= theirs[1] and theirs[0] <= mine[1]:
        return NOT_DISTINGUISHABLE
    return "closer than doing nothing" if mine[1] < theirs[0] else "further than doing nothing"


NOT_DISTINGUISHABLE = "not distinguishable from doing nothing"


def _ulira_bands(summary: ScenarioSummary) -> list[str]:
    """Retrain's U-LiRA null band per seed (``ulira_null_band`` of the cells), the noise an AUC is read against."""
    bands = {r["seed"]: r["ulira_null_band"] for m in summary.methods for r in m.records if r.get("ulira_null_band")}
    if not bands:
        return []
    shown = "; ".join(f"seed {seed}: {low:.1f}-{high:.1f}" for seed, (low, high) in sorted(bands.items()))
    return [f"ulira_auc noise band (central 95% of retrain's AUC under random membership; inside it = noise): "
            f"{shown}"]


def _original(summary: ScenarioSummary) -> MethodSummary | None:
    return next((m for m in summary.methods if m.label == "original" and m.records), None)


def quality_table(summary: ScenarioSummary) -> Table:
    present = [k for k in QUALITY_KEYS if any(k in m.metric_names for m in summary.methods)]
    original = _original(summary)
    original_gap = "—" if original is None else Stat.of([r.get("avg_gap") for r in original.records]).fmt()
    rows = []
    for m in summary.methods:
        if not m.records:
            continue
        gap = Stat.of([r.get("avg_gap") for r in m.records])
        rows.append([m.label, str(len(m.records)), *(_value_gap(m, k) for k in present), gap.fmt(),
                     _interval(m.gap_interval()), original_gap, versus_nothing(m, original)])
    return Table(
        ["method", "seeds", *present, "avg gap ↓", "95% interval", "original's gap", "vs doing nothing"], rows,
        "mean ± std over seeds, in %; [mean |gap| to the retrained model of the same seed, in points]. "
        "Avg gap = mean |gap| over FA, RA, TA, MIA (lower is better); its 95% interval is a two-level bootstrap of "
        "the mean over seeds (seeds redrawn, and each seed's evaluated populations, paired with the reference); "
        "the original row is the cost of "
        "doing nothing, and a method whose interval overlaps it is not distinguishable from doing nothing. TA is on "
        "the test samples of the remaining (sub)classes, TA_forget on those of the forgotten one, TA_sibling_min "
        "the worst test accuracy among a forgotten sub-class's siblings (its super-class's other fine classes), "
        "FA_class_max the highest forget accuracy among the forgotten classes of a multi-class (sequence) request. "
        "MIA = SVC "
        "confidence MIA-efficacy (share of the forget set called non-member).",
    )


def interval_table(summary: ScenarioSummary) -> Table:
    """Each quality metric's 95% bootstrap interval (each seed's, averaged over seeds)."""
    present = [k for k in QUALITY_KEYS if any(m.mean_interval(k) is not None for m in summary.methods)]
    rows = [[m.label, *(_interval(m.mean_interval(k)) for k in present)] for m in summary.methods if m.records]
    return Table(["method", *present], rows,
                 "95% percentile bootstrap interval of each metric on one seed's evaluation (forget, retain and "
                 "test sets redrawn, MIA attacks re-fitted), averaged over seeds: the evaluation's own sampling "
                 "noise, beside the seed spread of the quality table.")


def performance_table(summary: ScenarioSummary) -> Table:
    rows = []
    for m in summary.methods:
        if not m.records:
            continue
        if m.label == "original":  # doing nothing takes no time; the row is there so every table has it
            rows.append([m.label, *(["—"] * 6)])
            continue
        rows.append([
            m.label,
            m.stat(("time_s",)).fmt(3),
            m.ratio("time_s", "retrain_time_s").fmt(3),
            m.stat(("speedup_vs_retrain",)).fmt(1),
            "—" if m.label == "retrain" else m.stat(("floor_ratio",)).fmt(1),
            "—" if m.label == "retrain" else m.stat(("peak_rss_mb",)).fmt(0),
            "—" if m.label == "retrain" else m.stat(("peak_rss_delta_mb",)).fmt(1),
        ])
    return Table(
        ["method", "time s", "time ÷ retrain", "speed-up ×", "time ÷ fwd+bwd", "peak RSS MB", "ΔRSS MB"], rows,
        "Measured in the same run and process as the method. time ÷ retrain and speed-up are per-seed ratios "
        "to the retrained reference's training time; time ÷ fwd+bwd divides by one forward+backward pass over "
        "the forget set (the practical floor of a gradient method). Peak RSS: whole process, sampled every 5 ms "
        "plus the kernel high-water mark; ΔRSS: increase over the RSS at the method's start (a lower bound). "
        "Sequential scenarios: sums over steps.",
    )


def _metric_table(summary: ScenarioSummary, keep: Callable[[str], bool], prefix: str,
                  caption: str) -> tuple[Table, dict[str, str]]:
    """The metrics ``keep`` selects, in the order the records hold them, with their directions."""
    names: list[str] = []
    directions: dict[str, str] = {}
    for m in summary.methods:
        for r in m.records:
            for name, block in r.get("metrics", {}).items():
                if keep(name) and name not in names:
                    names.append(name)
                    directions[name] = block.get("direction", "")
    rows = [[m.label, *(_value_gap(m, n) for n in names)] for m in summary.methods if m.records]
    return Table(["method", *(n.removeprefix(prefix) for n in names)], rows, caption), directions


def mia_table(summary: ScenarioSummary) -> tuple[Table, dict[str, str]]:
    return _metric_table(summary, lambda name: name.startswith("MIA:"), "MIA:",
                         "every MIA variant, value in % (mean ± std) [mean |gap| to retrain]; directions below.")


def task_metrics_table(summary: ScenarioSummary) -> tuple[Table, dict[str, str]]:
    """Every other metric the task's evaluator reports: per-target accuracy/AP, a sequence's KL to the true
    chain and token loss, dense IoU/AP — where the headline columns do not tell the whole story."""
    return _metric_table(
        summary, lambda name: name not in QUALITY_KEYS and name != "MIA" and not name.startswith("MIA:"), "",
        "the task's own metrics (units as the evaluator reports them: %, nats, ...), mean ± std over seeds "
        "[mean |gap| to retrain]; directions below.",
    )


def overview_table(summaries: list[ScenarioSummary]) -> Table:
    labels: list[str] = []
    for s in summaries:
        for m in s.methods:
            if m.label not in labels:
                labels.append(m.label)
    labels.sort(key=lambda lbl: (lbl not in REFERENCE_ROWS, REFERENCE_ROWS.index(lbl)
                                 if lbl in REFERENCE_ROWS else 0, lbl))
    rows = []
    for label in labels:
        cells = [next((x for x in s.methods if x.label == label), None) for s in summaries]
        if not any(m is not None and (m.records or m.failed) for m in cells):
            continue  # applies to no scenario here: listed under the table instead
        row = [label]
        for s in summaries:
            m = next((x for x in s.methods if x.label == label), None)
            if m is None:
                row.append("")
            elif not m.records:
                row.append("skipped" if m.skipped and not m.failed else "failed")
            else:
                gap = Stat.of([r.get("avg_gap") for r in m.records]).mean
                speed = m.stat(("speedup_vs_retrain",)).mean
                text = "—" if gap is None else f"{gap:.2f}"
                if speed is not None and label != "original":
                    text += f" / {speed:.1f}×"
                if versus_nothing(m, _original(s)) == NOT_DISTINGUISHABLE:
                    text += " ≈"
                row.append(text)
        rows.append(row)
    return Table(["method", *(s.name for s in summaries)], rows,
                 "avg gap to retrain (points, lower is better) / speed-up over retrain, mean over seeds; ≈: not "
                 "distinguishable from doing nothing (its gap's 95% interval overlaps the original model's).")


# --- plots -------------------------------------------------------------------------------------
def _figure(width: float = 6.4, height: float = 4.2) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def plot_gap_vs_time(summary: ScenarioSummary) -> bytes | None:
    points = []
    for m in summary.methods:
        if m.label == "original" or not m.records:
            continue
        t, g = m.stat(("time_s",)), Stat.of([r.get("avg_gap") for r in m.records])
        if t.mean is None or g.mean is None or t.mean <= 0:
            continue
        points.append((m.label, t, g))
    if not points:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    # Neighbours along the time axis get their labels above and below in turn, so clustered ones stay legible.
    for rank, (label, t, g) in enumerate(sorted(points, key=lambda p: p[1].mean)):
        ax.errorbar(t.mean, g.mean, xerr=t.std or 0.0, yerr=g.std or 0.0, fmt="*" if label == "retrain" else "o",
                    ms=10 if label == "retrain" else 6, capsize=3, label=label)
        ax.annotate(label, (t.mean, g.mean), textcoords="offset points", xytext=(5, 4 if rank % 2 == 0 else -11),
                    fontsize=8)
    original = _original(summary)
    nothing = None if original is None else Stat.of([r.get("avg_gap") for r in original.records]).mean
    if nothing is not None:  # doing nothing takes no time: a line, not a point
        ax.axhline(nothing, color="grey", linestyle="--", linewidth=1)
        ax.annotate("original (doing nothing)", (0.01, nothing), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("unlearning time, s (log scale)")
    ax.set_ylabel("avg gap to retrain, points (lower is better)")
    ax.set_title(f"{summary.name}: quality vs time")
    ax.grid(True, which="both", alpha=0.3)
    return _png(fig)


def plot_metric_bars(summary: ScenarioSummary) -> bytes | None:
    methods = [m for m in summary.methods if m.records]
    keys = [k for k in CURVE_KEYS if any(k in m.metric_names for m in methods)]
    if not methods or not keys:
        return None
    fig = _figure(max(6.4, 1.1 * len(methods) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        stats = [m.metric(key) for m in methods]
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(methods))]
        ax.bar(xs, [s.mean or 0.0 for s in stats], width, yerr=[s.std or 0.0 for s in stats], capsize=2, label=key)
    ax.set_xticks(range(len(methods)), [m.label for m in methods], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 118)  # head-room so the legend never covers a bar at 100 %
    ax.set_title(f"{summary.name}: metrics (mean ± std over seeds)")
    ax.legend(fontsize=8, ncols=len(keys), loc="upper center")
    return _png(fig)


def plot_sequential(summary: ScenarioSummary) -> bytes | None:
    n_steps = summary.steps
    if n_steps < 2:
        return None
    keys = [*CURVE_KEYS, "avg_gap"]
    fig = _figure(10, 6)
    axes = fig.subplots(2, 3).flatten()
    steps = list(range(1, n_steps + 1))
    for ax, key in zip(axes, keys, strict=False):
        for m in summary.methods:
            stats = [m.step_stat(k, key) for k in range(n_steps)]
            if all(s.mean is None for s in stats):
                continue
            ax.errorbar(steps, [s.mean if s.mean is not None else math.nan for s in stats],
                        yerr=[s.std or 0.0 for s in stats], marker="o", ms=3, capsize=2, label=m.label,
                        linestyle="--" if m.label in REFERENCE_ROWS else "-")
        ax.set_title(key if key != "avg_gap" else "avg gap to retrain")
        ax.set_xlabel("step (requests forgotten so far)")
        ax.set_xticks(steps)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles, labels, loc="center", fontsize=8)
    fig.suptitle(f"{summary.name}: sequential unlearning (cumulative forget set at each step)")
    return _png(fig)


# --- assembly ----------------------------------------------------------------------------------
@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    figures: list[Path]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
.caption{font-size:.85em;color:#555;margin-top:0}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
code{background:#f3f3f3;padding:0 .2em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
"""


class _Doc:
    """Writes the same content to Markdown and HTML."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        if items:
            self.md.append("\n".join(f"- {i}" for i in items) + "\n")
            self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, table: Table) -> None:
        self.md.append(table.markdown() + "\n")
        self.html.append(table.html())

    def image(self, png: bytes, relative: str, alt: str) -> None:
        self.md.append(f"![{alt}]({relative})\n")
        encoded = base64.b64encode(png).decode("ascii")
        self.html.append(f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{encoded}'>")


def _describe_request(request: Any) -> str:
    if isinstance(request, list):
        return " → ".join(_describe_request(r) for r in request)
    if not isinstance(request, dict):
        return str(request)
    if request.get("kind") == "samples":
        if "fraction" in request:
            return f"samples: random {100 * request['fraction']:g}% (request seed {request.get('seed', 0)})"
        return f"samples: {len(request.get('indices', []))} given indices"
    return f"{request.get('kind')}: {', '.join(str(x) for x in request.get('labels', []))}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def build_report(results: str | Path, out_dir: str | Path, *, title: str | None = None,
                 suite: Suite | None = None) -> ReportFiles:
    """Write ``report.md``, ``report.html`` (images embedded) and ``figures/*.png`` into ``out_dir``.

    Without ``suite`` every cell stored in the results file is reported, including cells of a seed, method or
    scenario since removed from its suite file (a results file is append-only). With ``suite`` only the cells
    that suite defines now, computed with its current configuration, as ``excise bench`` prints them.
    The three report files are derived data and are replaced if they exist.
    """
    path = resolve_results_path(results)
    records = read_records(path)
    if not records:
        raise ValueError(f"results file {str(path)!r} holds no records")
    scope = f"every cell stored in {path.name}"
    if suite is not None:
        cells = current_cells(suite)
        # The latest record of each cell decides: an older record that happens to match the current
        # configuration (a suite edited, re-run with --rerun-changed, then edited back) is superseded, not current.
        stored = latest(records)
        kept = [r for key, r in stored.items() if cells.get(key) == r["cell_hash"]]
        if not kept:
            raise ValueError(f"results file {str(path)!r} holds no record of suite {suite.name!r} with its current "
                             "configuration (run `excise bench` on it first)")
        missing = len(cells) - len(kept)
        scope = (f"{len(kept)} of the {len(cells)} cells suite {suite.name!r} ({suite.source}) defines now"
                 + (f" ({missing} not run yet, or stored with another configuration: run `excise bench` on it)"
                    if missing else "")
                 + f"; {len(stored) - len(kept)} other stored cell(s) left out")
        records = kept
    summaries = summarize(records)
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    suites = sorted({s.suite for s in summaries})
    doc = _Doc()
    doc.heading(1, title or f"excise bench report — {', '.join(suites)}")
    first = records[0]
    doc.para(
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {path.name} (sha256 {digest[:16]}…): {scope}, "
        f"{len(records)} records. Every number below is computed from that file. "
        f"excise {first['versions'].get('excise')}, "
        f"torch {first['versions'].get('torch')}, host: {first.get('host', {}).get('platform', '?')}, "
        f"{first.get('host', {}).get('cpu_count', '?')} CPUs, {first.get('host', {}).get('torch_threads', '?')} "
        "torch threads."
        if "versions" in first else f"Generated from {path.name}: {scope}."
    )
    doc.heading(2, "Overview")
    doc.table(overview_table(summaries))
    inapplicable = sorted({m.label for s in summaries for m in s.methods}
                          - {m.label for s in summaries for m in s.methods if m.records or m.failed})
    if inapplicable:
        doc.para(f"Registered but applicable to none of these scenarios (skipped everywhere, reasons per "
                 f"scenario below): {', '.join(inapplicable)}.")
    figures: list[Path] = []
    for summary in summaries:
        doc.heading(2, f"{summary.name} ({summary.kind})" + (f" — suite {summary.suite}" if len(suites) > 1 else ""))
        cfg = summary.config
        sizes = summary.sizes
        doc.para(
            f"Request: {_describe_request(summary.request)}. Data: {cfg.get('dataset', {}).get('name', '?')} "
            f"({sizes.get('train', '?')} train / {sizes.get('test', '?')} test; "
            f"forget set {sizes.get('forget', '?')}). "
            f"Model: {cfg.get('model', {})}. Recipe: {cfg.get('training', {})}. Seeds: {summary.seeds}."
        )
        doc.heading(3, "Quality")
        doc.table(quality_table(summary))
        intervals = interval_table(summary)
        if intervals.headers[1:]:
            doc.heading(3, "Uncertainty of one evaluation")
            doc.table(intervals)
        doc.heading(3, "Performance")
        doc.table(performance_table(summary))
        table, directions = task_metrics_table(summary)
        if table.headers[1:]:
            doc.heading(3, "Task metrics")
            doc.table(table)
            doc.bullets([f"{name}: {direction}" for name, direction in directions.items()])
        table, directions = mia_table(summary)
        if table.headers[1:]:
            doc.heading(3, "Membership inference, every variant")
            doc.table(table)
            doc.bullets([f"{name.removeprefix('MIA:')}: {direction}" for name, direction in directions.items()]
                        + _ulira_bands(summary))
        problems = []
        for m in summary.methods:
            for r in m.failed:
                problems.append(f"{m.label} (seed {r['seed']}): {r['status']}")
            reasons = sorted({r["status"].removeprefix("skipped: ") for r in m.skipped})
            if reasons:
                problems.append(f"{m.label}: skipped on seeds {sorted(r['seed'] for r in m.skipped)} — "
                                + "; ".join(reasons))
        if problems:
            doc.heading(3, "Failed and skipped")
            doc.bullets(problems)
        plots = [("gap_vs_time", plot_gap_vs_time(summary), "avg gap vs time"),
                 ("metrics", plot_metric_bars(summary), "metrics with error bars"),
                 ("sequential", plot_sequential(summary), "sequential unlearning curves")]
        for kind, png, alt in plots:
            if png is None:
                continue
            name = f"{_slug(summary.suite)}-{_slug(summary.name)}-{kind}.png"
            figures.append(atomic_write(figures_dir / name, lambda tmp, png=png: tmp.write_bytes(png), overwrite=True))
            doc.image(png, f"figures/{name}", f"{summary.name}: {alt}")
    doc.heading(2, "How to read this report")
    doc.bullets([
        "Every metric is judged against the model retrained from scratch without the forget set (same recipe, "
        "same seed): a method is good when it is close to retrain, not when a metric is extreme.",
        "original = the model before unlearning (the cost of doing nothing); retrain = the reference itself.",
        "mean ± std over seeds (sample std, ddof=1); the bench seed changes initialisation, data order and "
        "the methods' randomness; the data split and the forget set are fixed.",
        "Times are wall-clock on the machine that ran the suite; on a shared machine they carry noise. The "
        "retrained reference may come from the model cache (an earlier run of the same configuration).",
        "Peak RSS is process-wide and sampled (5 ms) plus the kernel high-water mark; ΔRSS can be ~0 when the "
        "allocator reuses memory freed by an earlier cell. GPU memory is not measured.",
    ])
    md_path = atomic_write_text(out_dir / "report.md", "\n".join(doc.md), overwrite=True)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title or 'excise bench report')}"
            f"</title><style>{_CSS}</style></head><body>{''.join(doc.html)}</body></html>")
    html_path = atomic_write_text(out_dir / "report.html", page, overwrite=True)
    return ReportFiles(md_path, html_path, figures)


def summary_rows(records: list[dict[str, Any]]) -> Table:
    """The overview table (avg gap / speed-up per scenario and method), for printing after a run."""
    return overview_table(summarize(records))
