"""Target-level unlearning on dense tasks: segmentation and detection of the multi-digit canvases.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dense.py`` (a few minutes on one core).

For each task (``multidigits-seg`` with ``unet``, ``multidigits-det`` with ``centernet``) one run trains the
original model, forgets one digit class with every dense method — the retrained reference (``retrain``:
the class's pixels relabelled background / its boxes removed), the Essential Graph balanced and unbalanced,
gradient ascent on the target's loss and relabel-and-fine-tune — and prints one table: the forgotten
class's test score (IoU, or AP50 and AP@[.5:.95]) next to the retrained model's, the remaining classes'
mean score against the original's, a linear probe's AP for the forgotten class on the features the class maps
read (:func:`excise.metrics.probe.dense_probe_ap`: the class's ink pixels / object centres among every class's;
detection also probes the neck, which the box heads share), unlearning time and speed-up over retraining. It
then writes the
before/after picture grid (ground truth, original, retrained, balanced Essential Graph, target mask; images
with the forgotten class first) for both tasks to ``docs/dense_grid.png``.

``--forget`` picks the class; ``--all-classes`` repeats the Essential Graph for every class as the forgotten
one; ``--seeds 0,1,2,3,4`` repeats it on originals of other training seeds (both are the spread behind the
tests' seeded cases).

What the runs behind the defaults found (seed 0, digit 2, on the machine of an earlier session):

- Segmentation with a softmax head (background + classes) cannot be pruned into the retrained behaviour:
  pruning the digit's channels drove its IoU to 0 but handed most of its pixels to another digit (e.g. 2932 of
  3840 pixels of "2" became "0"), costing the remaining classes ~14 points of mIoU at any layer choice or
  proportion tried (widths 8 and 16). Per-class sigmoid maps fix that: a switched-off class falls back to
  background. Width 8 was too narrow (1-2 channels per class in the last layers); at width 16 the last two
  decoder convs, 10% of channels and 8 images per class gave forgotten IoU 0.6 (retrain 0.0) at -1.6 mIoU.
- Detection: pruning only the heat-map head (1 layer) lowers the class's peaks but keeps their order, so AP
  stays > 90; the last five convs on the heat-map path at 20% bring AP50 at the 0.3 operating threshold to
  ~1 (retrain 0) at -1.2 remaining mAP50, but the threshold-free AP50 of the forgotten class stays ~90 and the
  remaining classes' AP@[.5:.95] drops ~36 points, because the pruned neck channels also feed the size head.
  Protecting the box heads as an extra "remaining target" of the balanced graph was tried: it kept the boxes
  only partly (AP@[.5:.95] -6) and the class was no longer forgotten (AP50 45), so it was not kept.
- Those defaults were chosen on one trained model each, and that was not enough. Re-measured on 2026-12-04
  on the same data with originals of training seeds 0-4 (``--seeds``, one thread), the outcome is a coin flip
  at these widths: segmentation forgot digit 2 (IoU <= 10, mIoU within 3) on 2 of 5 (IoU 97.0 / 5.8 / 8.3 /
  0.0 / 92.8, the first with nothing pruned), detection on 1 of 5 (AP50 31.7 / 11.9 / 1.0 / 86.1 / 64.4);
  with the data seed varied as well it was 1 of 5 for each. The seed-0 models themselves now differ from the
  ones above (the same code and seeds on another machine/library build). A sweep of proportion x layer count
  x image count (segmentation 0.1-0.3 x 2-4 x {8, 32}, detection 0.1-0.3 x 3-7 x {8, 32}; digits 2 and 4)
  found no setting that met both bounds on more than 3 of 5 (segmentation) or 3 of 8 (detection) models, so
  the defaults were left as they are. What held on every model: the forgotten class is hit harder than the
  others (its heat-map peaks fall by a factor 0.07-0.82, the others' by 0.84-1.00 on average; its IoU falls
  more than the remaining mIoU whenever something is pruned).
- The probe columns (added 2026-12-07; seeds 0-3 with ``--seed S --grid /tmp/grid.png``, so that the committed
  picture stays seed 0's): the retrained reference's features read the forgotten class where the class maps read
  it (AP 99.6-100 segmentation, 94.8-98.1 detection, prevalence ~19), because leaving it unsegmented or undetected
  takes telling it apart. At the detector's neck retraining reads less on three seeds of four (77.7-92.6 against
  the original's and the mask's 97.8-99.0); on seed 3 it reads 98.9, above the original's 98.1. A one-hidden-layer
  reader ("neck, MLP") still finds the class in the retrained neck (94.2-99.1). ``dense_target_erasure`` (detection
  only) brings the neck's linear probe to 22-26 and its MLP reader to 90.6-98.5 at -0.7 to +0.2 remaining mAP50
  and -0.7 to -1.8 remaining AP@[.5:.95].
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from excise.data import load_dataset
from excise.experiment import run_method, train_original
from excise.metrics import EvalViews, evaluate
from excise.metrics.probe import dense_probe_ap
from excise.requests import ForgetRequest
from excise.tasks.common import original_view
from excise.tasks.dense import plot_dense_grid
from excise.training import TrainConfig

DATA = {"num_train": 600, "num_test": 300, "canvas_size": 24, "max_digits": 3}
SETUPS: dict[str, dict[str, Any]] = {
    "segmentation": {
        "dataset": "multidigits-seg", "model": "unet", "width": 16,
        "recipe": TrainConfig(epochs=15, batch_size=16, lr=0.003, optimizer="adam", weight_decay=0.0),
        "forget": "forget_IoU", "remain": "retain_mIoU", "extra": (),
        "probes": {"class-map input": {}},
    },
    "detection": {
        "dataset": "multidigits-det", "model": "centernet", "width": 16,
        "recipe": TrainConfig(epochs=15, batch_size=16, lr=0.003, optimizer="adam", weight_decay=0.0),
        "forget": "forget_AP50", "remain": "retain_mAP50",
        "extra": ("forget_AP", "retain_mAP", "forget_AP50_all", "retain_mAP50_all"),
        # The heat-map head's hidden layer is class-specific; the neck also feeds the size and offset heads.
        "probes": {"class-map input": {}, "neck": {"layer": "heatmap.0.0"},
                   "neck, MLP": {"layer": "heatmap.0.0", "reader": "mlp"}},
        "methods": ("dense_target_erasure",),  # the neck's erasure: detection only (its module docstring)
    },
}
METHODS = ("dense_essential_graph", "dense_essential_graph_unbalanced", "dense_target_mask", "dense_gradient_ascent",
           "dense_finetune")


def run_task(task: str, forget: str, seed: int, all_classes: bool) -> dict[str, Any]:
    setup = SETUPS[task]
    bundle = load_dataset(setup["dataset"], seed=seed, **DATA)
    recipe = setup["recipe"]
    original, train_seconds = train_original(bundle, setup["model"], recipe, seed=seed, width=setup["width"])
    views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(forget,)))
    target = bundle.classes.index(forget)

    def probes(model: torch.nn.Module) -> dict[str, float]:
        found = {name: dense_probe_ap(model, bundle.train, bundle.test, target, seed=seed, **options)
                 for name, options in setup["probes"].items()}
        return {f"probe AP, {name}": probe.ap for name, probe in found.items()} | {
            "prevalence": next(iter(found.values())).prevalence}

    rows: list[tuple[str, dict[str, float], float, float | None]] = []
    base = evaluate(original, views, seed=seed)
    rows.append(("original", base | probes(original), train_seconds, None))
    retrained, reference = run_method("retrain", original, views, recipe, seed=seed)
    rows.append(("retrain", reference.metrics | probes(retrained), reference.seconds, 1.0))
    models = {"original": original, "retrained": retrained}
    for method in (*METHODS, *setup.get("methods", ())):
        model, record = run_method(method, original, views, recipe, seed=seed, reference=reference)
        rows.append((method, record.metrics | probes(model), record.seconds, record.speedup))
        if method == "dense_essential_graph":
            models["essential graph"] = model
        if method == "dense_target_mask":
            models["target mask"] = model
    print_table(task, forget, setup, rows)
    spread = per_class_spread(bundle, original, recipe, seed, setup) if all_classes else None
    return {"bundle": bundle, "views": views, "models": models, "spread": spread,
            "reference_forget": reference.metrics[setup["forget"]]}


def print_table(task: str, forget: str, setup: dict[str, Any], rows: list) -> None:
    f, r = setup["forget"], setup["remain"]
    extra = (*setup["extra"], *(f"probe AP, {name}" for name in setup["probes"]))
    retrain_forget = rows[1][1][f]
    original_remain = rows[0][1][r]
    headers = ["method", f, "retrain", r, "Δ vs original", *extra, "time s", "speed-up"]
    print(f"\n{task}: forget class {forget} (test canvases; percent; width {setup['width']}; probe: the class's "
          f"instance cells among all classes' cells, prevalence {rows[0][1]['prevalence']:.1f})")
    print(" | ".join(headers))
    print(" | ".join("---" for _ in headers))
    for name, metrics, seconds, speedup in rows:
        cells = [name, f"{metrics[f]:.1f}", f"{retrain_forget:.1f}", f"{metrics[r]:.1f}",
                 f"{metrics[r] - original_remain:+.1f}", *(f"{metrics[k]:.1f}" for k in extra),
                 f"{seconds:.2f}" if name != "original" else f"{seconds:.1f} (train)",
                 "" if speedup is None else f"{speedup:.0f}x"]
        print(" | ".join(cells))
    sys.stdout.flush()


def per_class_spread(bundle, original, recipe, seed, setup) -> list[tuple[str, float, float, float, float]]:  # noqa: ANN001
    """Balanced and unbalanced Essential Graph with every class as the forgotten one (no retraining)."""
    from excise.methods import get_method

    f, r = setup["forget"], setup["remain"]
    out = []
    for name in bundle.classes:
        views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(name,)))
        base = evaluate(original, views, seed=seed)
        cells = [name, base[r]]
        for method in ("dense_essential_graph", "dense_essential_graph_unbalanced"):
            unlearner = get_method(method)
            result = unlearner.unlearn(original, views.request, views.forget_set, views.retain_set,
                                       recipe=recipe, seed=seed)
            metrics = evaluate(result.model, views, seed=seed)
            cells += [metrics[f], metrics[r]]
        out.append(tuple(cells))
    print(f"\nevery class forgotten in turn ({f} / {r}; original {r} first)")
    print("class | original | balanced forget | balanced remain | unbalanced forget | unbalanced remain")
    for cells in out:
        print(" | ".join([cells[0], *(f"{c:.1f}" for c in cells[1:])]))
    return out


def seed_spread(task: str, result: dict[str, Any], seeds: list[int]) -> None:
    """The balanced Essential Graph at its defaults on originals trained with other seeds on the main run's
    data (no retraining: each forgotten score is read against the main run's retrained level)."""
    from excise.methods import get_method

    setup = SETUPS[task]
    f, r = setup["forget"], setup["remain"]
    bundle, views, reference_forget = result["bundle"], result["views"], result["reference_forget"]
    print(f"\n{task}: forget {views.request.describe()} on originals of training seeds {seeds}, same data "
          f"(balanced Essential Graph, defaults; retrained {f} {reference_forget:.1f})")
    print(f"seed | pruned | {f} | {r} Δ vs original | {' | '.join(setup['extra'])}")
    met = 0
    for seed in seeds:
        original, _ = train_original(bundle, setup["model"], setup["recipe"], seed=seed, width=setup["width"])
        base = evaluate(original, views, seed=seed)
        result = get_method("dense_essential_graph").unlearn(original, views.request, views.forget_set,
                                                             views.retain_set, recipe=setup["recipe"], seed=seed)
        metrics = evaluate(result.model, views, seed=seed)
        delta = metrics[r] - base[r]
        met += metrics[f] <= reference_forget + 10 and delta >= -3
        print(" | ".join([str(seed), str(result.stats["pruned_channels"]), f"{metrics[f]:.1f}", f"{delta:+.1f}",
                          *(f"{metrics[k]:.1f}" for k in setup["extra"])]))
        sys.stdout.flush()
    print(f"within 10 of the retrained {f} and within 3 of the original {r}: {met} of {len(seeds)} seeds")


def write_grid(results: dict[str, dict[str, Any]], path: Path) -> None:
    from PIL import Image

    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, result in results.items():
            views = result["views"]
            test = original_view(views.test_forget, views.test_retain)
            forgotten = [int(c) for c in torch.nonzero(views.forget_set.label_mask.any(dim=0)).flatten()]
            file = Path(tmp) / f"{task}.png"
            plot_dense_grid(result["models"], test, forgotten, file, n_with=4, n_without=2)
            parts.append(Image.open(file).convert("RGB"))
        width = max(p.width for p in parts)
        canvas = Image.new("RGB", (width, sum(p.height for p in parts)), "white")
        y = 0
        for part in parts:
            canvas.paste(part, (0, y))
            y += part.height
        path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path)
    print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--forget", default="2", help="the digit class to forget (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default="segmentation,detection")
    parser.add_argument("--all-classes", action="store_true", help="also forget every class in turn (EG only)")
    parser.add_argument("--seeds", default="", help="also run the balanced graph on originals of these training "
                        "seeds, e.g. 0,1,2,3,4 (the spread behind the tests' seeds)")
    parser.add_argument("--width", type=int, default=None, help="model width for both tasks (default 16)")
    parser.add_argument("--grid", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "dense_grid.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.width is not None:
        if args.width < 1:
            parser.error(f"--width={args.width} must be a positive integer")
        for setup in SETUPS.values():
            setup["width"] = args.width
    start = time.perf_counter()
    results = {task: run_task(task, args.forget, args.seed, args.all_classes) for task in args.tasks.split(",")}
    for task, result in results.items():
        if args.seeds:
            seed_spread(task, result, [int(x) for x in args.seeds.split(",")])
    write_grid(results, args.grid)
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
