"""IMU on sequence models: the three-chain Markov benchmark of the IMU paper, with the paper's curves.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/language.py`` (``--scale small``, about a minute on one
core) or ``--scale paper`` (the README's setting: 10,000 / 5,000 / 5,000 sequences of length 20 over 10 states,
data seed 42, GPT 4 layers x 4 heads x 128, AdamW 5e-4, batch 128, 5 epochs; ~10 minutes on one core, most of
it training the original and the retrained model — ``--cache DIR`` keeps them for the next run, and
``--cache <out>/cache`` after ``excise bench benchmarks/suites/language.yaml --out <out>`` reuses the bench's).

One run trains the original model (retain + forget1 chains) and the retrained reference (retain only) with the
shared training loop, forgets ``class:forget1`` with IMU (``imu_sequence``, the spec's defaults: AdamW 5e-4,
batch 4, alpha 0.002, 50 iterations), plain gradient ascent (``gradient_ascent``: SGD lr 1e-3, momentum 0.9,
batch 4, one pass over the forget set) and NegGrad+ (``neggrad_plus``, which also reads the retain set; one
pass over it), and prints one table: the registered evaluator's metrics of each final model (next-token
accuracies, losses and KL to the true chains per test chain) plus the KL to the retrained model's predictions.
Every optimizer step of the first ``--steps`` is probed (:func:`excise.tasks.sequence.step_probe`) on the test
sequences (at most ``--curve-sequences`` per chain), and the curves — forget-test KL to the retrained model,
retain-test KL to the true chain, both test losses — are drawn against unlearning iterations (the paper's
figure) to ``docs/language_curves_<scale>.png``, with the numbers in a ``.json`` next to it.

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

import torch

from excise.bench.cache import ModelCache, code_version
from excise.checkpoint import atomic_write, atomic_write_text
from excise.data import load_dataset
from excise.experiment import run_method, train_original
from excise.methods import get_method
from excise.metrics import EvalViews, evaluate
from excise.requests import ForgetRequest
from excise.tasks.sequence import concat_views, log_probs, source_metrics, step_probe
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
METHODS: dict[str, dict[str, Any]] = {
    "imu_sequence": {},
    "gradient_ascent": {"batch_size": 4, "epochs": 1, "lr": 1e-3},
    "neggrad_plus": {"epochs": 1, "lr_scale": 25.0},
}
REQUEST = ForgetRequest(kind="class", labels=("forget1",))
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
        reference, _ = build_reference()
    else:
        payload = {**base, "requests": [REQUEST.to_dict()]}
        reference, _, hit = ModelCache(cache).get_or_build("retrain", payload, build_reference)
        if hit:
            print(f"retrained model read from {cache}")
    return original, reference


def curve_set(views: EvalViews, per_chain: int):
    test = concat_views(views.test_retain, views.test_forget)
    chains = test.extras["class_targets"]
    rows = torch.cat([torch.nonzero(chains == c).flatten()[:per_chain] for c in range(len(test.classes))])
    return test.subset(rows)


def run(scale: str, seed: int, steps: int, per_chain: int, cache: Path | None, out: Path) -> dict[str, Any]:
    setup = SCALES[scale]
    bundle = load_dataset("markov", seed=setup["data_seed"], **setup["data"])
    views = EvalViews.from_bundle(bundle, REQUEST)
    original, reference = trained_models(scale, seed, cache, bundle, views)
    full_test = concat_views(views.test_retain, views.test_forget)
    full_ref = log_probs(reference, full_test)
    small_test = curve_set(views, per_chain)
    small_ref = log_probs(reference, small_test)

    def point(net: torch.nn.Module) -> dict[str, float]:
        metrics = source_metrics(log_probs(net, small_test), small_test, reference=small_ref)
        return {k: metrics[k] for k in CURVE_KEYS}

    def final(net: torch.nn.Module) -> dict[str, float]:
        return {**evaluate(net, views, seed=seed), **source_metrics(net, full_test, reference=full_ref)}

    rows = {"original": {"metrics": final(original), "seconds": 0.0, "steps": 0},
            "retrain": {"metrics": final(reference), "seconds": None, "steps": None}}
    start = point(original)
    curves: dict[str, list[dict[str, float]]] = {"retrain": [point(reference)]}
    for name, params in METHODS.items():
        method = get_method(name, **params)
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
        rows[name] = {"metrics": final(model), "seconds": record.seconds - probing[0],
                      "steps": record.stats.get("steps"), "params": params}
    print_table(rows, scale)
    results = {"scale": scale, "seed": seed, "setup": {**setup, "recipe": setup["recipe"].to_dict()},
               "methods": METHODS, "rows": rows, "curves": curves, "curve_sequences_per_chain": per_chain}
    plot(curves, out, scale)
    atomic_write_text(out.with_suffix(".json"), json.dumps(results, indent=1), overwrite=True)
    print(f"curves: {out} (numbers: {out.with_suffix('.json')})")
    return results


def print_table(rows: dict[str, dict[str, Any]], scale: str) -> None:
    print(f"\nmarkov ({scale}), forget class:forget1 — accuracies in %, losses and KL in nats "
          "(KL_true: to the true chain; KL_ref: to the retrained model's predictions)")
    header = ["method", "steps", "time s", *TABLE_KEYS]
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
        print(" | ".join(cells))


def plot(curves: dict[str, list[dict[str, float]]], out: Path, scale: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("KL_ref:forget1", "forget test: KL to retrained"), ("KL_true:retain", "retain test: KL to true chain"),
              ("loss:forget1", "forget test loss"), ("loss:retain", "retain test loss")]
    labels = {"imu_sequence": "IMU", "gradient_ascent": "GA", "neggrad_plus": "NegGrad+"}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, points in curves.items():
            if name == "retrain":
                # The retrained model's KL to itself is 0: the bottom of the first panel.
                ax.axhline(points[0][key], color="black", linestyle="--", linewidth=1, label="retrained")
                continue
            ax.plot([p["step"] for p in points], [p[key] for p in points], label=labels.get(name, name))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("unlearning iteration")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"IMU vs GA on the three-chain Markov benchmark ({scale}); forget = chain forget1", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110), overwrite=True)
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seed", type=int, default=0, help="model / method seed (the data seed is the scale's)")
    parser.add_argument("--steps", type=int, default=50, help="unlearning iterations drawn on the curves")
    parser.add_argument("--curve-sequences", type=int, default=500, help="test sequences per chain for the curves")
    parser.add_argument("--cache", type=Path, default=None, help="directory to keep / reuse the trained models")
    parser.add_argument("--out", type=Path, default=None, help="figure path (default docs/language_curves_<scale>.png)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.curve_sequences < 1:
        sys.exit("--steps and --curve-sequences must be >= 1")
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = args.out or Path("docs") / f"language_curves_{args.scale}.png"
    run(args.scale, args.seed, args.steps, args.curve_sequences, args.cache, out)
    print(f"done in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
