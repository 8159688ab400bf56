"""MU-Mis's mechanism plots (issue 20), on a model and data set that run on two CPU cores, in one command.

Cheng et al. (arXiv 2402.15109) motivate MU-Mis with three observations and one training curve; this script
measures each on ``small_cnn`` (or any registered classifier) and draws them side by side:

- **Fig. 1-2 (sensitivity before and after training).** Per-sample input sensitivity ``||d f_k(x)/dx||`` of
  the sample's own class (target) and of one irrelevant class drawn once per sample, on training samples of
  the untrained and of the trained model, and on unseen test samples of the trained model. The paper's claim:
  training raises the target sensitivity of the samples it fits above the irrelevant one.
- **Fig. 3 (rise and fall of the gap).** ``Δ = ||d f_c/dx|| - ||d f_c'/dx||`` per forget sample, on the
  original and on the retrained model: the share of forget samples whose Δ falls when the sample is removed
  from training (the paper: most of them), for a class and a random-10 % request.
- **Fig. 4 (unlearning curve).** FA / RA / TA, the objective and the irrelevant-class sensitivity ratio
  ``S_t / S_0`` over MU-Mis steps on the class request, with the paper's 0.9 line and the step at which the
  registered ``mu_mis`` stopped (and why); the curve goes on past the stop to show what the stop avoided.
  The replayed run is checked step by step against the registered method's own loss curve.

A phenomenon that does not appear is drawn as measured and said so in the printed summary.

    OMP_NUM_THREADS=1 python benchmarks/mu_mis_mechanism.py [--dataset mnist|digits] [--model small_cnn]
        [--width 16] [--epochs 15] [--seed 0]

Writes ``docs/mu_mis_mechanism_<dataset>.png`` and the numbers in the ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("EXCISE_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from excise._files import save_figure  # noqa: E402
from excise.checkpoint import atomic_write_text, versions  # noqa: E402
from excise.data import load_dataset  # noqa: E402
from excise.data.base import LabeledData  # noqa: E402
from excise.experiment import build_model, run_method, train_original  # noqa: E402
from excise.methods import get_method  # noqa: E402
from excise.methods.mu_mis import _Monitor, draw_irrelevant, input_gradients  # noqa: E402
from excise.metrics import EvalViews  # noqa: E402
from excise.metrics.evaluate import predict_logits  # noqa: E402
from excise.requests import ForgetRequest  # noqa: E402
from excise.training import TrainConfig, make_loader  # noqa: E402


def sensitivities(model: nn.Module, data: LabeledData, seed: int, limit: int = 500) -> dict[str, np.ndarray]:
    """Per-sample target and irrelevant-class input-gradient norms on at most ``limit`` rows (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(data), generator=generator)[:limit]
    inputs, targets = data.inputs[rows], data.targets[rows]
    irrelevant = draw_irrelevant(targets, data.num_classes, generator)
    model.eval()
    target_norms, irrelevant_norms = [], []
    for start in range(0, len(rows), 256):
        part = slice(start, start + 256)
        (g_target, g_other), _ = input_gradients(model, inputs[part], (targets[part], irrelevant[part]),
                                                 create_graph=False)
        target_norms.append(g_target.flatten(1).norm(dim=1))
        irrelevant_norms.append(g_other.flatten(1).norm(dim=1))
    return {"target": torch.cat(target_norms).numpy(), "irrelevant": torch.cat(irrelevant_norms).numpy()}


def accuracy(model: nn.Module, data: LabeledData) -> float:
    return 100 * float((predict_logits(model, data).argmax(1) == data.targets).float().mean())


def gap_changes(original: nn.Module, retrained: nn.Module, forget: LabeledData, seed: int) -> dict[str, float]:
    """Share of forget samples whose Δ = target - irrelevant sensitivity falls / rises from original to retrained
    (the same rows and the same irrelevant class on both models)."""
    before, after = sensitivities(original, forget, seed), sensitivities(retrained, forget, seed)
    delta_before = before["target"] - before["irrelevant"]
    delta_after = after["target"] - after["irrelevant"]
    return {"fall": float(np.mean(delta_after < delta_before)), "rise": float(np.mean(delta_after > delta_before)),
            "mean_delta_original": float(delta_before.mean()), "mean_delta_retrained": float(delta_after.mean())}


def unlearning_curve(model: nn.Module, views: EvalViews, seed: int, past_stop: int,
                     retain_rows: int = 600) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Run the registered ``mu_mis``, then replay it step by step (same generator draws, so the same updates)
    evaluating FA / RA / TA after every step, up to ``past_stop`` steps beyond where it stopped; returns the
    curve and the registered run's stats."""
    method = get_method("mu_mis")
    result = method.unlearn(model, views.request, views.forget_set, seed=seed)
    steps = result.stats["steps"] + past_stop
    cfg, forget = method.config, views.forget_set
    generator = torch.Generator().manual_seed(seed)
    monitor = _Monitor.build(forget, cfg.monitor_size, generator)
    loader = make_loader(forget, cfg.batch_size, shuffle=True, generator=generator)
    net = copy.deepcopy(model)
    net.eval()
    optimizer = method.make_optimizer(net)
    retain = views.retain_set.subset(torch.randperm(len(views.retain_set), generator=torch.Generator().manual_seed(
        seed))[:retain_rows])
    initial = monitor.sensitivity(net)

    def point(step: int, loss: float | None) -> dict[str, float]:
        return {"step": step, "loss": loss, "ratio": monitor.sensitivity(net) / initial,
                "FA": accuracy(net, forget), "RA": accuracy(net, retain), "TA": accuracy(net, views.test_retain)}

    curve = [point(0, None)]
    stats = dict(result.stats, diverged_at=None)
    while len(curve) <= steps and stats["diverged_at"] is None:
        for batch in loader:
            try:
                loss = method._step(net, optimizer, batch, forget.num_classes, generator)
            except FloatingPointError:  # past the stop the objective can blow up: that is part of the picture
                stats["diverged_at"] = len(curve)
                break
            curve.append(point(len(curve), loss))
            if len(curve) > steps:
                break
    return curve, stats


def plot(record: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(22, 3.8))
    for ax, key, title in zip(axes[:3], ("untrained_train", "trained_train", "trained_test"),
                              ("untrained model, training samples", "trained model, training samples",
                               "trained model, unseen test samples"), strict=True):
        found = record["sensitivity"][key]
        top = max(max(found["target"]), max(found["irrelevant"]))
        bins = np.linspace(0, top, 40)
        ax.hist(found["target"], bins=bins, alpha=0.6, label="target class c")
        ax.hist(found["irrelevant"], bins=bins, alpha=0.6, label="irrelevant class c'")
        ax.set_title(f"Fig. 1-2: {title}", fontsize=9)
        ax.set_xlabel("||d f_k(x) / dx||")
    axes[0].legend(fontsize=8)
    changes = record["gap_changes"]
    for name, found in changes.items():
        axes[3].bar([f"{name}\nfall", f"{name}\nrise"], [100 * found["fall"], 100 * found["rise"]],
                    color=["tab:green", "tab:red"])
    axes[3].tick_params(axis="x", labelsize=7)
    axes[3].set_ylabel("% of forget samples")
    axes[3].set_title("Fig. 3: Δ = ||∇f_c|| - ||∇f_c'||, original → retrained", fontsize=9)
    curve, stats = record["curve"], record["registered_run"]
    steps = [p["step"] for p in curve]
    ax = axes[4]
    for key in ("FA", "RA", "TA"):
        ax.plot(steps, [p[key] for p in curve], label=key)
    ax.set_ylabel("accuracy (%)")
    twin = ax.twinx()
    twin.plot(steps, [p["ratio"] for p in curve], color="black", linewidth=1, label="S_t / S_0")
    twin.axhline(0.9, color="black", linestyle=":", linewidth=1)
    twin.set_yscale("log")  # past the stop the ratio can run to 1e16 before the objective diverges
    twin.set_ylabel("S_t / S_0 (irrelevant-class sensitivity, log)")
    ax.axvline(stats["steps"], color="grey", linestyle="--", linewidth=1)
    ax.set_title(f"Fig. 4: MU-Mis on {record['class_request']}; dashed: registered stop "
                 f"({stats['stop_reason']}, step {stats['steps']})", fontsize=9)
    ax.set_xlabel("MU-Mis step")
    ax.legend(fontsize=8, loc="center left")
    fig.suptitle(f"MU-Mis mechanism on {record['dataset']} ({record['model']}, seed {record['seed']})", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=100, overwrite=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forget-class", default="3")
    parser.add_argument("--past-stop", type=int, default=30, help="steps drawn after the registered stop")
    parser.add_argument("--out", type=Path, default=None, help="figure path (default docs/mu_mis_mechanism_<data>.png)")
    args = parser.parse_args(argv)
    recipe = TrainConfig(epochs=args.epochs, batch_size=64, lr=0.05)
    bundle = load_dataset(args.dataset, seed=args.seed)
    untrained = build_model(bundle, args.model, seed=args.seed, width=args.width)
    model, _ = train_original(bundle, args.model, recipe, seed=args.seed, width=args.width)
    sensitivity = {
        "untrained_train": sensitivities(untrained, bundle.train, args.seed),
        "trained_train": sensitivities(model, bundle.train, args.seed),
        "trained_test": sensitivities(model, bundle.test, args.seed),
    }
    class_request = ForgetRequest(kind="class", labels=(args.forget_class,))
    changes = {}
    for label, request in (("class", class_request), ("random 10%", ForgetRequest(kind="samples", fraction=0.1,
                                                                                  seed=args.seed))):
        views = EvalViews.from_bundle(bundle, request)
        retrained, _ = run_method("retrain", model, views, recipe, seed=args.seed)
        changes[label] = gap_changes(model, retrained, views.forget_set, args.seed)
    views = EvalViews.from_bundle(bundle, class_request)
    curve, stats = unlearning_curve(model, views, args.seed, args.past_stop)
    replayed = [p["loss"] for p in curve[1:stats["steps"] + 1]]
    same_run = bool(np.allclose(replayed, stats["loss_curve"], rtol=1e-5, atol=1e-6))
    record = {
        "dataset": args.dataset, "model": f"{args.model} width {args.width}, {args.epochs} epochs",
        "seed": args.seed, "class_request": class_request.describe(),
        "sensitivity": {k: {n: v.tolist() for n, v in found.items()} for k, found in sensitivity.items()},
        "gap_changes": changes, "curve": curve, "replay_matches_registered_run": same_run,
        "registered_run": {k: stats[k] for k in ("steps", "stop_reason", "min_sensitivity_ratio", "diverged_at")},
        "versions": versions(),
    }
    out = args.out or Path("docs") / f"mu_mis_mechanism_{args.dataset}.png"
    plot(record, out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=1), overwrite=True)
    means = {k: {n: float(np.mean(v)) for n, v in found.items()} for k, found in sensitivity.items()}
    for key, found in means.items():
        print(f"Fig. 1-2 {key}: mean target {found['target']:.3f}, irrelevant {found['irrelevant']:.3f}, "
              f"ratio {found['target'] / found['irrelevant']:.2f}")
    for label, found in changes.items():
        print(f"Fig. 3 {label}: Δ falls for {100 * found['fall']:.1f}% of forget samples, rises for "
              f"{100 * found['rise']:.1f}% (mean Δ {found['mean_delta_original']:.3f} -> "
              f"{found['mean_delta_retrained']:.3f})")
    ratios = [p["ratio"] for p in curve]
    dipped = min(ratios[1:stats["steps"] + 1], default=1.0) < 0.9
    print(f"Fig. 4: registered run stopped at step {stats['steps']} ({stats['stop_reason']}); S_t/S_0 min "
          f"{min(ratios):.3f}, max {max(ratios):.3f}; dipped below 0.9 before the stop: {dipped}; at the stop FA "
          f"{curve[stats['steps']]['FA']:.1f} RA {curve[stats['steps']]['RA']:.1f} TA {curve[stats['steps']]['TA']:.1f}"
          f"; {curve[-1]['step'] - stats['steps']} steps later FA {curve[-1]['FA']:.1f} RA {curve[-1]['RA']:.1f}"
          + (f" (the objective diverged at step {stats['diverged_at']})" if stats["diverged_at"] else "")
          + f"; replay identical to the registered run: {same_run}")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
