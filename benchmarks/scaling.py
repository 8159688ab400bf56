"""How unlearning cost and quality scale with the forget-set size and the model width.

Builds a suite in code — random-sample forgetting of 1%, 5%, 10% and 25% of the training set at the base
width, and 10% at every width — runs it through the bench runner (so it is cached and resumable: run the
same command again after an interruption) and plots, per method, time and avg gap to retrain against
forget-set size and width, next to retrain's own time. Prints the ratios it plotted.

    python benchmarks/scaling.py --out /tmp/scaling                     # digits, a few fast methods
    python benchmarks/scaling.py --out /tmp/scaling-mnist --dataset mnist --methods all --seeds 0,1

Writes OUT/results.jsonl (the bench store: `excise report OUT/results.jsonl --out OUT/report` also works),
OUT/scaling.png and OUT/scaling.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from excise.bench import latest, parse_suite, read_records, run_suite
from excise.bench.report import Stat, Table
from excise.checkpoint import atomic_write, atomic_write_text

FRACTIONS = (0.01, 0.05, 0.1, 0.25)
WIDTHS = (8, 16, 32, 64)
DEFAULT_METHODS = ("gradient_ascent", "finetune", "random_labels", "ssd", "imu", "salun")
BASE_FRACTION = 0.1


def build_spec(dataset: str, methods: list[str], fractions: list[float], widths: list[int], base_width: int,
               seeds: list[int], epochs: int) -> dict[str, Any]:
    """The scaling suite as a suite mapping (validated by :func:`excise.bench.parse_suite`)."""
    scenarios = [{"name": f"fraction-{f:g}", "request": {"kind": "samples", "fraction": f, "seed": 0},
                  "description": f"forget a random {100 * f:g}% at width {base_width}"} for f in fractions]
    for width in widths:
        if width == base_width and BASE_FRACTION in fractions:
            continue  # the same cells as fraction-0.1
        scenarios.append({"name": f"width-{width}", "model": {"name": "small_cnn", "width": width},
                          "request": {"kind": "samples", "fraction": BASE_FRACTION, "seed": 0}})
    return {
        "suite": "scaling", "seeds": seeds, "dataset": dataset,
        "model": {"name": "small_cnn", "width": base_width},
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.05},
        "methods": methods, "scenarios": scenarios,
    }


def _points(records: list[dict[str, Any]], base_width: int) -> dict[str, dict[str, list[tuple[float, Stat, Stat]]]]:
    """method -> {"fraction": [(x, time, gap)], "width": [...]} from the results store."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for record in latest(records).values():
        if record["suite"] != "scaling" or record["status"] != "ok":
            continue
        scenario = record["config"]["scenario"]
        fraction = record["request"]["fraction"]
        width = scenario["model"].get("width", base_width)
        if record["scenario"].startswith("fraction-"):
            groups.setdefault((record["method"], "fraction", fraction), []).append(record)
            if fraction == BASE_FRACTION:
                groups.setdefault((record["method"], "width", width), []).append(record)
        else:
            groups.setdefault((record["method"], "width", width), []).append(record)
    out: dict[str, dict[str, list[tuple[float, Stat, Stat]]]] = {}
    for (method, axis, x), recs in sorted(groups.items()):
        time = Stat.of([r["time_s"] for r in recs])
        gap = Stat.of([r["avg_gap"] for r in recs])
        out.setdefault(method, {}).setdefault(axis, []).append((x, time, gap))
    return out


def plot(points: dict[str, dict[str, list[tuple[float, Stat, Stat]]]], path: Path) -> Path:
    import io

    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    ticks: dict[int, set[float]] = {0: set(), 1: set()}
    for method, axes_points in points.items():
        if method == "original":
            continue
        style = {"linestyle": "--", "marker": "*"} if method == "retrain" else {"marker": "o"}
        for col, axis in enumerate(("fraction", "width")):
            series = sorted(axes_points.get(axis, []))
            if not series:
                continue
            xs = [100 * x if axis == "fraction" else x for x, _, _ in series]
            ticks[col].update(xs)
            axes[0][col].errorbar(xs, [t.mean for _, t, _ in series], yerr=[t.std or 0 for _, t, _ in series],
                                  capsize=2, label=method, **style)
            if method != "retrain":
                axes[1][col].errorbar(xs, [g.mean for _, _, g in series], yerr=[g.std or 0 for _, _, g in series],
                                      capsize=2, label=method, **style)
    for col, label in enumerate(("forget-set size, % of the training set", "model width (channels)")):
        axes[0][col].set_yscale("log")
        axes[0][col].set_ylabel("time, s (log)")
        axes[1][col].set_ylabel("avg gap to retrain, points")
        for row in (0, 1):
            axes[row][col].set_xlabel(label)
            axes[row][col].set_xscale("log", base=2 if col else 10)
            axes[row][col].set_xticks(sorted(ticks[col]), [f"{x:g}" for x in sorted(ticks[col])])
            axes[row][col].xaxis.set_minor_locator(NullLocator())
            axes[row][col].grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Unlearning time and quality vs forget-set size and model width (mean ± std over seeds)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()), overwrite=True)


def ratio_table(records: list[dict[str, Any]]) -> Table:
    rows = []
    for record in sorted(latest(records).values(), key=lambda r: (r["scenario"], r["method"], r["seed"])):
        if record["status"] != "ok" or record["method"] in ("original", "retrain"):
            continue
        rows.append([
            record["scenario"], record["method"], str(record["seed"]), str(record["sizes"]["forget"]),
            f"{record['time_s']:.3f}", f"{record['time_s'] / record['retrain_time_s']:.3f}",
            f"{record['floor_ratio']:.1f}", f"{record['avg_gap']:.2f}",
        ])
    return Table(["scenario", "method", "seed", "forget size", "time s", "time ÷ retrain", "time ÷ fwd+bwd",
                  "avg gap"], rows, "every cell of the scaling suite, from OUT/results.jsonl")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated registered methods, or 'all' (unregistered defaults are dropped)")
    parser.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS))
    parser.add_argument("--widths", default=",".join(str(w) for w in WIDTHS))
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)

    from excise.methods import list_methods

    if args.methods == "all":
        methods: list[str] = ["all"]
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if args.methods == parser.get_default("methods"):
            methods = [m for m in methods if m in list_methods()]
    spec = build_spec(args.dataset, methods, [float(f) for f in args.fractions.split(",")],
                      [int(w) for w in args.widths.split(",")], args.base_width,
                      [int(s) for s in args.seeds.split(",")], args.epochs)
    summary = run_suite(parse_suite(spec, "scaling.py"), args.out)
    records = read_records(summary.results_path)
    figure = plot(_points(records, args.base_width), args.out / "scaling.png")
    table = ratio_table(records)
    atomic_write_text(args.out / "scaling.md", f"# Scaling\n\n![scaling](scaling.png)\n\n{table.markdown()}\n",
                      overwrite=True)
    print(table.markdown())
    print(f"\n{summary.ran} cells run, {summary.reused} reused in {summary.seconds:.0f}s; wrote {figure}")


if __name__ == "__main__":
    main()
