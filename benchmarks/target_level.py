"""Target-level unlearning across seeds, targets, canvas kinds and architectures: what each variant buys.

Run (about 4 minutes per cell on one core; cells are cached, so an interrupted run resumes)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/target_level.py --seeds 0,1,2,3
    .venv/bin/python benchmarks/target_level.py --summary   # the table from the cached cells

A cell is one (architecture, canvas kind, training seed): a model trained on ``multidigits`` canvases, then
every one of its 5 targets forgotten in turn by every method. Canvas kinds:

- ``distractor``: 2-4 digits of classes 0-9 per canvas, only 0-4 labelled; no target is a function of the
  others (the leakage column shows it: a logistic regression from the other labels to the target);
- ``dense``: 3-4 of the 5 labelled digits per canvas, no distractors; the other labels partly imply a target.

Per (cell, target, method) row:

- ``recall``: the forgotten target's recall at 0.5 on its test positives;
- remaining targets: worst and mean accuracy / AP drop against the original on all test instances, and the
  worst accuracy drop on the test instances that also carry the forgotten target;
- ``probe``: linear-probe AP of the forgotten target on the classifier-input features (the input of the layer
  producing the logits; :mod:`excise.metrics.probe`), next to retrain's and the prevalence; ``probe_head``:
  the same at the head's first linear layer (the pooled body features; equal to ``probe`` on ResNet-18);
  ``probe_mlp``: a one-hidden-layer reader on the classifier-input features (added 2026-12-07, after the last full
  run; ``benchmarks/probe_readers.py`` measures it alone);
- ``MIA``: the evaluator's MIA-efficacy on the forgotten target;
- ``inversion``: the original model's recognition of the target in each model's inversions painted into test
  instances without it (:mod:`excise.metrics.inversion`; the starts score ``inversion_start``);
- ``seconds`` (every repair step included) and ``speedup`` over retraining.

The summary counts, per (architecture, canvas kind, method), the runs meeting each bound of issue 16:
recall <= 5, every remaining target within 2 accuracy points and 0.5 AP, probe <= retrain's probe + 5,
inversion within 15 of retrain's, speed-up >= 20.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from excise.data import load_dataset
from excise.data.base import DatasetBundle
from excise.experiment import run_method, train_original
from excise.metrics import EvalViews, evaluate
from excise.metrics.accuracy import per_target_accuracy, per_target_ap
from excise.metrics.inversion import InversionConfig, inversion_scores, target_negatives
from excise.metrics.probe import label_leakage, probe_ap
from excise.models.heads import affine_head
from excise.requests import ForgetRequest
from excise.training import TrainConfig, predict_logits

METHODS = ("essential_graph_paper", "essential_graph", "target_erasure", "target_erasure_body",
           "essential_graph_erasure", "target_finetune", "gradient_ascent")
CANVASES = {
    "distractor": dict(num_classes=5, distractor_classes=5, min_digits=2, max_digits=4),
    "dense": dict(num_classes=5, min_digits=3, max_digits=4),
}
SIZE = dict(canvas_size=20, num_train=2000, num_test=500)
RECIPE = TrainConfig(epochs=12, batch_size=128, lr=0.003, optimizer="adam")
MODELS = {"bottleneck_resnet": {}, "resnet18": {"width": 8}}
BOUNDS = {"recall": 5.0, "acc_drop": 2.0, "ap_drop": 0.5, "probe_margin": 5.0, "inversion_margin": 15.0,
          "speedup": 20.0}


def protocol(model: torch.nn.Module, bundle: DatasetBundle, target: int) -> dict[str, Any]:
    test = bundle.test
    logits = predict_logits(model, test)
    y = test.targets
    carrying = y[:, target] > 0.5
    return {"acc": per_target_accuracy(logits, y), "ap": per_target_ap(logits, y),
            "acc_carrying": per_target_accuracy(logits[carrying], y[carrying]),
            "recall": 100.0 * float((logits[carrying, target] > 0).float().mean())}


def probes(model: torch.nn.Module, bundle: DatasetBundle, target: int) -> dict[str, float]:
    train, test = bundle.train, bundle.test
    args = (train.inputs, train.targets[:, target], test.inputs, test.targets[:, target])
    out = {"probe": probe_ap(model, *args), "probe_mlp": probe_ap(model, *args, reader="mlp")}
    head = affine_head(model)
    out["probe_head"] = out["probe"] if len(head) == 1 else probe_ap(model, *args, layer=head[0])
    return out


def run_cell(arch: str, canvas: str, seed: int, methods: tuple[str, ...], inversion_steps: int) -> list[dict]:
    bundle = load_dataset("multidigits", seed=seed, **CANVASES[canvas], **SIZE)
    start = time.perf_counter()
    original, _ = train_original(bundle, arch, RECIPE, seed=seed, **MODELS[arch])
    train_seconds = time.perf_counter() - start
    rows = []
    num_targets = bundle.train.targets.shape[1]
    for target in range(num_targets):
        remaining = [k for k in range(num_targets) if k != target]
        views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(str(target),)))
        base = protocol(original, bundle, target)
        models = {"original": (original, None)}
        retrained, retrain_record = run_method("retrain", original, views, RECIPE, seed=seed)
        models["retrain"] = (retrained, retrain_record)
        for name in methods:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model, record = run_method(name, original, views, RECIPE, seed=seed)
            record.stats["warnings"] = [str(w.message) for w in caught if "jit" not in str(w.message)]
            models[name] = (model, record)
        negatives = target_negatives(bundle.test.inputs, bundle.test.targets, target, 16, seed=seed)
        inversion = inversion_scores({name: m for name, (m, _) in models.items()}, original, target,
                                     tuple(bundle.test.inputs.shape[1:]),
                                     config=InversionConfig(steps=inversion_steps, seed=seed), negatives=negatives)
        shared = {"arch": arch, "canvas": canvas, "seed": seed, "target": target,
                  "prevalence": 100.0 * float(bundle.test.targets[:, target].mean()),
                  "leakage": label_leakage(bundle.train.targets, bundle.test.targets, target),
                  "train_seconds": train_seconds,
                  "inversion_start": inversion["original"].get("start_recognition", float("nan"))}
        for name, (model, record) in models.items():
            after = protocol(model, bundle, target)
            acc_drop = base["acc"][remaining] - after["acc"][remaining]
            ap_drop = base["ap"][remaining] - after["ap"][remaining]
            carrying_drop = base["acc_carrying"][remaining] - after["acc_carrying"][remaining]
            metrics = record.metrics if record is not None else evaluate(model, views, seed=seed)
            row = {**shared, "method": name, "recall": after["recall"],
                   "worst_acc_drop": float(acc_drop.max()), "mean_acc_drop": float(acc_drop.mean()),
                   "worst_ap_drop": float(ap_drop.max()), "mean_ap_drop": float(ap_drop.mean()),
                   "worst_acc_drop_carrying": float(np.nanmax(carrying_drop)),
                   **probes(model, bundle, target), "MIA": float(metrics.get("MIA", float("nan"))),
                   "inversion": inversion[name]["recognition"],
                   "seconds": record.seconds if record is not None else 0.0,
                   "retrain_seconds": retrain_record.seconds}
            row["speedup"] = retrain_record.seconds / max(row["seconds"], 1e-9) if record is not None else None
            if record is not None:
                row["stats"] = {k: record.stats[k] for k in ("proportion", "proportion_met", "erased", "warnings",
                                                            "fold_max_error") if k in record.stats}
            rows.append(row)
        print(f"[target_level] {arch} {canvas} seed {seed} target {target} done", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (arch, canvas, method): medians and the share of runs meeting each bound."""
    retrain = {(r["arch"], r["canvas"], r["seed"], r["target"]): r for r in rows if r["method"] == "retrain"}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["canvas"], r["method"]), []).append(r)
    out = []
    for (arch, canvas, method), runs in sorted(groups.items()):
        refs = [retrain[(r["arch"], r["canvas"], r["seed"], r["target"])] for r in runs]
        checks = {
            "recall": [r["recall"] <= BOUNDS["recall"] for r in runs],
            "keep": [r["worst_acc_drop"] <= BOUNDS["acc_drop"] and r["worst_ap_drop"] <= BOUNDS["ap_drop"]
                     for r in runs],
            "probe": [r["probe"] <= ref["probe"] + BOUNDS["probe_margin"] for r, ref in zip(runs, refs, strict=True)],
            "inversion": [abs(r["inversion"] - ref["inversion"]) <= BOUNDS["inversion_margin"]
                          for r, ref in zip(runs, refs, strict=True)],
            "speedup": [(r["speedup"] or 0) >= BOUNDS["speedup"] for r in runs],
        }
        out.append({
            "arch": arch, "canvas": canvas, "method": method, "runs": len(runs),
            **{f"{k}_share": 100.0 * float(np.mean(v)) for k, v in checks.items()},
            **{f"median_{k}": float(np.median([r[k] for r in runs]))
               for k in ("recall", "worst_acc_drop", "worst_ap_drop", "probe", "probe_head", "MIA", "inversion")},
            "median_retrain_probe": float(np.median([ref["probe"] for ref in refs])),
            "median_retrain_inversion": float(np.median([ref["inversion"] for ref in refs])),
            "median_prevalence": float(np.median([r["prevalence"] for r in runs])),
            "median_leakage": float(np.median([r["leakage"] for r in runs])),
            "median_speedup": float(np.median([r["speedup"] for r in runs])) if runs[0]["speedup"] else None,
        })
    return out


def print_summary(summary: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Target-level unlearning: share of (seed, target) runs meeting each bound, and medians")
    for column in ("model", "canvas", "method", "n", "rec<=5", "keep", "probe", "inv", ">=20x", "recall",
                   "dAcc", "dAP", "probe", "probe head", "ret. probe", "prev", "leak", "MIA", "inv", "ret. inv",
                   "speed-up"):
        table.add_column(column, justify="left" if column in ("model", "canvas", "method") else "right")
    for s in summary:
        speed = "" if s["median_speedup"] is None else f"{s['median_speedup']:.0f}x"
        table.add_row(
            s["arch"].replace("bottleneck_resnet", "bottleneck"), s["canvas"], s["method"], str(s["runs"]),
            *(f"{s[k]:.0f}%" for k in ("recall_share", "keep_share", "probe_share", "inversion_share",
                                        "speedup_share")),
            *(f"{s[k]:.1f}" for k in ("median_recall", "median_worst_acc_drop")), f"{s['median_worst_ap_drop']:.2f}",
            *(f"{s[k]:.1f}" for k in ("median_probe", "median_probe_head", "median_retrain_probe",
                                        "median_prevalence", "median_leakage", "median_MIA", "median_inversion",
                                        "median_retrain_inversion")),
            speed)
    Console(width=250).print(table)
    print("keep: every remaining target within 2 accuracy points and 0.5 AP of the original; probe: linear-probe AP "
          "<= retrain's + 5; inv: inversion score within 15 of retrain's; dAcc/dAP: worst remaining-target drop; "
          "probe head: the probe at the head's first linear layer (pooled body features); leak: AP of the other "
          "labels alone; prev: prevalence (a probe that reads nothing)")


def markdown(summary: list[dict]) -> str:
    """The summary as a Markdown table (README, docs/target_level.md)."""
    head = ("| model | canvases | method | runs | recall <= 5 | keep | probe | inversion | >= 20x | recall "
            "| worst dAcc | worst dAP | probe AP (retrain / prevalence) | probe AP, pooled | inversion (retrain) "
            "| speed-up |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        speed = "" if s["median_speedup"] is None else f"{s['median_speedup']:.0f}x"
        lines.append(
            f"| {s['arch']} | {s['canvas']} | {s['method']} | {s['runs']} | {s['recall_share']:.0f}% | "
            f"{s['keep_share']:.0f}% | {s['probe_share']:.0f}% | {s['inversion_share']:.0f}% | "
            f"{s['speedup_share']:.0f}% | {s['median_recall']:.1f} | {s['median_worst_acc_drop']:.1f} | "
            f"{s['median_worst_ap_drop']:.2f} | {s['median_probe']:.1f} ({s['median_retrain_probe']:.1f} / "
            f"{s['median_prevalence']:.1f}) | {s['median_probe_head']:.1f} | {s['median_inversion']:.1f} "
            f"({s['median_retrain_inversion']:.1f}) | {speed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--canvases", default=",".join(CANVASES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--inversion-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/target_level"))
    parser.add_argument("--summary", action="store_true", help="only print the table from the cached cells")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    methods = tuple(m for m in args.methods.split(",") if m)
    if not args.summary:
        for arch in args.models.split(","):
            for canvas in args.canvases.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    path = args.out / f"{arch}_{canvas}_{seed}.json"
                    if path.exists():
                        stored = json.loads(path.read_text())
                        if tuple(stored["methods"]) == methods and stored.get("inversion_steps") in (
                                None, args.inversion_steps):
                            continue
                        print(f"[target_level] {path} holds other methods or settings: recomputed", file=sys.stderr)
                    rows = run_cell(arch, canvas, seed, methods, args.inversion_steps)
                    tmp = path.with_suffix(".tmp")
                    record = {"methods": methods, "inversion_steps": args.inversion_steps, "rows": rows}
                    tmp.write_text(json.dumps(record, indent=1))
                    tmp.replace(path)
    rows = [row for path in sorted(args.out.glob("*_*_*.json"))
            for row in json.loads(path.read_text())["rows"]]
    summary = summarise(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "summary.md").write_text(markdown(summary))
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
