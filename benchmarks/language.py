"""IMU on sequence models: the three-chain Markov benchmark of the IMU paper, with the paper's curves.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/language.py --scale small --seeds 0,1,2`` (under a minute on
one core) or ``--scale paper`` (the README's setting: 10,000 / 5,000 / 5,000 sequences of length 20 over 10 states,
data seed 42, GPT 4 layers x 4 heads x 128, AdamW 5e-4, batch 128, 5 epochs; ~7 minutes a seed on one core, most of
it training the original and the retrained model — ``--cache DIR`` keeps them for the next run, and
``--cache <out>/cache`` after ``excise bench benchmarks/suites/language.yaml --out <out>`` reuses the bench's).

Per seed it trains the original model (retain + forget1 chains) and the retrained reference (retain only) with the
shared training loop, forgets ``class:forget1`` with every entry of :data:`METHODS` and prints one table: the
registered evaluator's metrics of each final model (next-token accuracies, losses and KL to the true chains per
test chain, the sequence membership attacks with their bootstrap intervals) plus the KL to the retrained model's
predictions. Then a summary over seeds (mean [min, max]) of the issue's bound quantities: the forget chain's KL to
the truth over retrain's, the retain chain's KL over the original's, and the speed-up over retrain.

Methods: ``imu_sequence`` stopped by the forget-only rule (forget-set loss reaches ``log V``), the capped extension
``imu_sequence_capped`` with the same rule and with the *control* level (the original's loss on held-out sequences
of the chain it never learned, forget2 — test data of another distribution, resolved per seed), the paper's fixed
50 iterations (``imu_sequence_paper``), plain gradient ascent stopped by the same two rules, and NegGrad+ (reads
the retain set). Every optimizer step of the first ``--steps`` of the first seed is probed
(:func:`excise.tasks.sequence.step_probe`) on the test sequences (at most ``--curve-sequences`` per chain), and the
curves — forget-test KL to the retrained model, retain-test KL to the true chain, both test losses — are drawn
against unlearning iterations, with a dot where a stopping rule fired, to ``docs/language_curves_<scale>.png``; the
numbers of every seed go to the ``.json`` next to it.

Choices: GA's optimizer is excise's (SGD with momentum; the official synthetic GA uses AdamW 5e-4 over the full
model, which in our runs diverges within ~10 steps); GA's batch is IMU's (4) so iterations compare one for one.
NegGrad+'s learning rate is its ``lr_scale`` times the recipe's AdamW rate, with plain SGD; ``lr_scale`` 25 is
used here because the default (0.2, tuned for SGD recipes) does not move an AdamW-trained model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from excise._files import save_figure
from excise.bench.cache import ModelCache, code_version
from excise.checkpoint import atomic_write_text, versions
from excise.data import load_dataset
from excise.experiment import run_method, train_original
from excise.methods import get_method
from excise.metrics import EvalViews, evaluate
from excise.requests import ForgetRequest
from excise.tasks.sequence import (
    concat_views,
    heldout_of,
    log_probs,
    sequence_mia,
    source_metrics,
    step_probe,
    token_loss,
)
from excise.training import TrainConfig

SCALES: dict[str, dict[str, Any]] = {
    "small": {
        "data": {"num_retain": 2000, "num_forget1": 1000, "num_forget2": 200},
        "data_seed": 0,
        "model": {"n_embd": 32, "n_layer": 1, "n_head": 2},
        "recipe": TrainConfig(epochs=4, batch_size=64, lr=2e-3, optimizer="adamw", weight_decay=0.0),
    },
    "paper": {
        "data": {},
        "data_seed": 42,
        "model": {"n_embd": 128, "n_layer": 4, "n_head": 4},
        "recipe": TrainConfig(epochs=5, batch_size=128, lr=5e-4, optimizer="adamw", weight_decay=0.0,
                              schedule="constant"),
    },
}
CONTROL = "control"
"""A ``stop_loss`` the benchmark resolves per seed: the original model's loss on held-out sequences of the chain
it never learned (forget2, test only) — test data of another distribution: neither retain data nor a retrained
model, so a forget-only method may be handed it."""
GA = {"batch_size": 4, "epochs": 1, "lr": 1e-3}
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "imu_sequence": ("imu_sequence", {}),
    "imu_sequence_capped": ("imu_sequence_capped", {}),
    "imu_sequence_capped@control": ("imu_sequence_capped", {"stop_loss": CONTROL}),
    "imu_sequence_paper": ("imu_sequence_paper", {}),
    "gradient_ascent": ("gradient_ascent", {**GA, "stop_loss": "uniform"}),
    "gradient_ascent@control": ("gradient_ascent", {**GA, "stop_loss": CONTROL}),
    "neggrad_plus": ("neggrad_plus", {"epochs": 1, "lr_scale": 25.0}),
}
REQUEST = ForgetRequest(kind="class", labels=("forget1",))
_RETRAIN_SECONDS: dict[tuple[str, int], float] = {}  # (scale, seed) -> the retrained reference's training time
CURVE_KEYS = ("KL_ref:forget1", "KL_true:retain", "loss:forget1", "loss:retain")
TABLE_KEYS = ("FA", "RA", "TA", "TA_forget", "loss:retain", "loss:forget1", "KL_true:retain", "KL_true:forget1",
              "KL_true:forget2", "KL_ref:retain", "KL_ref:forget1")


def trained_models(scale: str, seed: int, cache: Path | None, bundle, views) -> tuple[torch.nn.Module, ...]:
    """The original and the retrained model, trained with the shared loop or read from ``cache``.

    ``cache`` is a bench model cache: the keys are the ones ``excise bench`` gives the same scenario (the two
    scenarios of ``benchmarks/suites/language.yaml``), so ``--cache <bench out>/cache`` reuses its models.
    """
    setup = SCALES[scale]
    recipe = setup["recipe"]
    base = {"dataset": {"name": "markov", "options": dict(setup["data"]), "seed": setup["data_seed"]},
            "data_fingerprint": bundle.fingerprint(), "model": {"name": "gpt", **setup["model"]},
            "training": recipe.to_dict(), "seed": seed, "code": code_version()}

    def build_original() -> tuple[torch.nn.Module, dict[str, Any]]:
        model, seconds = train_original(bundle, "gpt", recipe, seed=seed, **setup["model"])
        print(f"original trained in {seconds:.0f}s")
        return model, {"kind": "original", "train_seconds": seconds, "seed": seed, "recipe": recipe.to_dict()}

    if cache is None:
        original, _ = build_original()
    else:
        original, _, hit = ModelCache(cache).get_or_build("original", base, build_original)
        if hit:
            print(f"original model read from {cache}")

    def build_reference() -> tuple[torch.nn.Module, dict[str, Any]]:
        model, record = run_method("retrain", original, views, recipe, seed=seed)
        print(f"retrained reference trained in {record.seconds:.0f}s")
        return model, {"kind": "retrained", "train_seconds": record.seconds, "metrics": record.metrics,
                       "seed": seed, "request": REQUEST.to_dict(), "stats": record.stats}

    if cache is None:
        reference, meta = build_reference()
    else:
        payload = {**base, "requests": [REQUEST.to_dict()]}
        reference, meta, hit = ModelCache(cache).get_or_build("retrain", payload, build_reference)
        if hit:
            print(f"retrained model read from {cache}")
    _RETRAIN_SECONDS[(scale, seed)] = float(meta["train_seconds"])
    return original, reference


def curve_set(views: EvalViews, per_chain: int):
    test = concat_views(views.test_retain, views.test_forget)
    chains = test.extras["class_targets"]
    rows = torch.cat([torch.nonzero(chains == c).flatten()[:per_chain] for c in range(len(test.classes))])
    return test.subset(rows)


def run(scale: str, seed: int, steps: int, per_chain: int, cache: Path | None, replicates: int) -> dict[str, Any]:
    """One seed: the original, retrain and every method's final metrics, their sequence-MIA intervals, and the
    curves of the first ``steps`` unlearning iterations."""
    setup = SCALES[scale]
    bundle = load_dataset("markov", seed=setup["data_seed"], **setup["data"])
    views = EvalViews.from_bundle(bundle, REQUEST)
    original, reference = trained_models(scale, seed, cache, bundle, views)
    full_test = concat_views(views.test_retain, views.test_forget)
    full_ref = log_probs(reference, full_test)
    small_test = curve_set(views, per_chain)
    small_ref = log_probs(reference, small_test)
    heldout = heldout_of(views)

    def point(net: torch.nn.Module) -> dict[str, float]:
        metrics = source_metrics(log_probs(net, small_test), small_test, reference=small_ref)
        return {k: metrics[k] for k in CURVE_KEYS}

    def final(net: torch.nn.Module) -> dict[str, Any]:
        mia = sequence_mia(log_probs(net, views.forget_set), views.forget_set, log_probs(net, heldout), heldout,
                           replicates=replicates, seed=seed)
        return {"metrics": {**evaluate(net, views, seed=seed), **source_metrics(net, full_test, reference=full_ref)},
                "mia_intervals": {name: interval for name, (_, interval) in mia.items()}}

    reference_seconds = _RETRAIN_SECONDS[(scale, seed)]
    rows = {"original": {**final(original), "seconds": 0.0, "steps": 0},
            "retrain": {**final(reference), "seconds": reference_seconds, "steps": None}}
    start = point(original)
    curves: dict[str, list[dict[str, float]]] = {"retrain": [point(reference)]}
    never_learned = full_test.subset(torch.nonzero(full_test.extras["class_targets"] == 2).flatten())
    control = token_loss(log_probs(original, never_learned), never_learned)
    for name, (registered, params) in METHODS.items():
        params = {k: control if v == CONTROL else v for k, v in params.items()}
        method = get_method(registered, **params)
        points = [{"step": 0, **start}]
        probing = [0.0]  # seconds spent evaluating curve points inside the method's run, subtracted below

        def probe(k: int, net: torch.nn.Module, points: list = points, probing: list = probing) -> None:
            if k <= steps:
                tic = time.perf_counter()
                points.append({"step": k, **point(net)})
                probing[0] += time.perf_counter() - tic

        with step_probe(original, probe):
            model, record = run_method(method, original, views, setup["recipe"], seed=seed)
        curves[name] = points
        seconds = record.seconds - probing[0]
        rows[name] = {**final(model), "seconds": seconds, "steps": record.stats.get("steps"),
                      "stop_reason": record.stats.get("stop_reason"), "params": params,
                      "speedup": reference_seconds / max(seconds, 1e-9)}
    return {"seed": seed, "rows": rows, "curves": curves, "control_level": control}


def summary(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, over seeds: mean and spread of the bound quantities (forget-chain KL to the truth against
    retrain's, retain-chain KL against the original's), KL to retrain, steps, speed-up and the sequence MIA."""
    out: dict[str, dict[str, Any]] = {}
    for name in results[0]["rows"]:
        per_seed = []
        for result in results:
            rows = result["rows"]
            m = rows[name]["metrics"]
            per_seed.append({
                "forget_kl_vs_retrain": m["KL_true:forget1"] / rows["retrain"]["metrics"]["KL_true:forget1"],
                "retain_kl_vs_original": m["KL_true:retain"] / rows["original"]["metrics"]["KL_true:retain"],
                "KL_ref:forget1": m["KL_ref:forget1"], "KL_true:forget1": m["KL_true:forget1"],
                "KL_true:retain": m["KL_true:retain"], "steps": rows[name]["steps"],
                "speedup": rows[name].get("speedup"), "MIA:seq_loss": m.get("MIA:seq_loss"),
                "MIA:seq_min_k": m.get("MIA:seq_min_k"),
                "MIA:seq_loss_interval": rows[name]["mia_intervals"].get("MIA:seq_loss"),
                "MIA:seq_min_k_interval": rows[name]["mia_intervals"].get("MIA:seq_min_k"),
            })
        out[name] = {"per_seed": per_seed}
        for key in ("forget_kl_vs_retrain", "retain_kl_vs_original", "KL_ref:forget1", "KL_true:forget1",
                    "KL_true:retain", "steps", "speedup", "MIA:seq_loss", "MIA:seq_min_k"):
            values = [p[key] for p in per_seed if p[key] is not None]
            if values:
                out[name][key] = {"mean": float(np.mean(values)), "min": float(np.min(values)),
                                  "max": float(np.max(values))}
    return out


def print_summary(table: dict[str, dict[str, Any]], scale: str, seeds: list[int]) -> None:
    print(f"\nmarkov ({scale}), forget class:forget1, seeds {seeds}: mean [min, max] over seeds")
    keys = [("forget_kl_vs_retrain", "forget KL_true / retrain's", 2), ("retain_kl_vs_original",
            "retain KL_true / original's", 2), ("KL_ref:forget1", "forget KL to retrain", 3),
            ("steps", "steps", 0), ("speedup", "retrain time / time", 1), ("MIA:seq_loss", "MIA loss AUC", 1),
            ("MIA:seq_min_k", "MIA min-k AUC", 1)]
    print(" | ".join(["method", *(title for _, title, _ in keys)]))
    print("|".join("---" for _ in range(len(keys) + 1)))
    for name, row in table.items():
        cells = [name]
        for key, _, digits in keys:
            stat = row.get(key)
            cells.append("" if stat is None else
                         f"{stat['mean']:.{digits}f} [{stat['min']:.{digits}f}, {stat['max']:.{digits}f}]")
        print(" | ".join(cells))


def print_table(rows: dict[str, dict[str, Any]], scale: str) -> None:
    print(f"\nmarkov ({scale}), forget class:forget1 — accuracies in %, losses and KL in nats "
          "(KL_true: to the true chain; KL_ref: to the retrained model's predictions); MIA: AUC % with its "
          "bootstrap 95% interval (50 = forget set indistinguishable from held-out forget1 sequences)")
    header = ["method", "steps", "time s", *TABLE_KEYS, "MIA:seq_loss", "MIA:seq_min_k"]
    print(" | ".join(header))
    print("|".join("---" for _ in header))
    for name, row in rows.items():
        metrics = row["metrics"]
        cells = [name, "" if row["steps"] is None else str(row["steps"]),
                 "" if row["seconds"] is None else f"{row['seconds']:.2f}"]
        for key in TABLE_KEYS:
            value = metrics.get(key)
            cells.append("" if value is None else (f"{value:.1f}" if key[0].isupper() and ":" not in key
                                                    else f"{value:.4f}"))
        for key in ("MIA:seq_loss", "MIA:seq_min_k"):
            interval = row["mia_intervals"].get(key)
            bounds = "" if interval is None else f" [{interval[0]:.1f}, {interval[1]:.1f}]"
            cells.append(f"{metrics[key]:.1f}{bounds}")
        print(" | ".join(cells))


def plot(curves: dict[str, list[dict[str, float]]], out: Path, scale: str, rows: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("KL_ref:forget1", "forget test: KL to retrained"), ("KL_true:retain", "retain test: KL to true chain"),
              ("loss:forget1", "forget test loss"), ("loss:retain", "retain test loss")]
    labels = {"imu_sequence": "IMU (stop: log V)", "imu_sequence_capped": "IMU capped (stop: log V)",
              "imu_sequence_capped@control": "IMU capped (stop: control)",
              "imu_sequence_paper": "IMU (paper: 50 steps)", "gradient_ascent": "GA (stop: log V)",
              "gradient_ascent@control": "GA (stop: control)", "neggrad_plus": "NegGrad+"}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, points in curves.items():
            if name == "retrain":
                # The retrained model's KL to itself is 0: the bottom of the first panel.
                ax.axhline(points[0][key], color="black", linestyle="--", linewidth=1, label="retrained")
                continue
            line, = ax.plot([p["step"] for p in points], [p[key] for p in points], label=labels.get(name, name))
            if rows[name].get("stop_reason") == "stop_loss":  # where the forget-only rule stopped it
                ax.plot(points[-1]["step"], points[-1][key], "o", color=line.get_color(), markersize=5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("unlearning iteration")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"IMU vs GA on the three-chain Markov benchmark ({scale}); forget = chain forget1; dot = the "
                 "forget-only stopping rule fired", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=110, overwrite=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seeds", default="0", help="model / method seeds, comma-separated (data seed: the scale's)")
    parser.add_argument("--steps", type=int, default=150, help="unlearning iterations drawn on the curves")
    parser.add_argument("--curve-sequences", type=int, default=300, help="test sequences per chain for the curves")
    parser.add_argument("--replicates", type=int, default=200, help="bootstrap replicates of the sequence MIA")
    parser.add_argument("--cache", type=Path, default=None, help="directory to keep / reuse the trained models")
    parser.add_argument("--out", type=Path, default=None, help="figure path (default docs/language_curves_<scale>.png)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.steps < 1 or args.curve_sequences < 1:
        sys.exit("--steps and --curve-sequences must be >= 1")
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = args.out or Path("docs") / f"language_curves_{args.scale}.png"
    # Curves (a probe after every step) for the first seed only: the figure draws that one.
    results = [run(args.scale, seed, args.steps if k == 0 else 0, args.curve_sequences, args.cache, args.replicates)
               for k, seed in enumerate(seeds)]
    for result in results:
        print_table(result["rows"], f"{args.scale}, seed {result['seed']}")
    table = summary(results)
    print_summary(table, args.scale, seeds)
    plot(results[0]["curves"], out, args.scale, results[0]["rows"])
    setup = SCALES[args.scale]
    record = {"scale": args.scale, "seeds": seeds, "setup": {**setup, "recipe": setup["recipe"].to_dict()},
              "methods": METHODS, "summary": table, "results": results,
              "curve_sequences_per_chain": args.curve_sequences, "versions": versions()}
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1), overwrite=True)
    print(f"curves (seed {seeds[0]}): {out} (numbers: {out.with_suffix('.json')})")
    print(f"done in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
