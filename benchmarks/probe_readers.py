"""Linear probe and MLP reader of a forgotten target after target-level unlearning, against retrain's.

What a linear probe and a one-hidden-layer reader each still read of a forgotten target, on the features the
classifier reads.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_readers.py --models bottleneck_resnet,resnet18
--seeds 0,1`` (distractor canvases and recipe of ``benchmarks/target_level.py``; a few minutes per model and seed).

Why: LEACE (``target_erasure``) makes the class means of the features equal, so no *linear* probe reads the
target — the bound issue 16 set. A non-linear reader can still find it in what the means do not describe. This
prints, per (model, seed, target) and method, both readers' AP (``excise.metrics.probe.probe_ap``, ``reader``
``"linear"`` / ``"mlp"``: 64 hidden units), then per model and method the medians and the share of runs within
the retrained model's AP + 5 by each reader. Methods run through their ``unlearn`` API, as
``tests/test_target_level.py`` runs them (no evaluation pass).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from excise.data import load_dataset  # noqa: E402
from excise.experiment import train_original  # noqa: E402
from excise.methods import get_method  # noqa: E402
from excise.metrics import EvalViews  # noqa: E402
from excise.metrics.probe import probe_ap  # noqa: E402
from excise.requests import ForgetRequest  # noqa: E402
from target_level import CANVASES, MODELS, RECIPE, SIZE  # noqa: E402 - a sibling benchmark's setting

READERS = ("linear", "mlp")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="bottleneck_resnet,resnet18")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--methods", default="target_erasure,target_erasure_body")
    parser.add_argument("--canvas", default="distractor", choices=sorted(CANVASES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    methods = ("original", "retrain", *args.methods.split(","))
    rows = []
    print("model | seed | target | prevalence | " + " | ".join(f"{m} lin / mlp" for m in methods))
    for arch in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            bundle = load_dataset("multidigits", seed=seed, **CANVASES[args.canvas], **SIZE)
            original, _ = train_original(bundle, arch, RECIPE, seed=seed, **MODELS[arch])
            train, test = bundle.train, bundle.test
            for target in range(train.targets.shape[1]):
                views = EvalViews.from_bundle(bundle, ForgetRequest(kind="target", labels=(str(target),)))
                found = {}
                for name in methods:
                    model = original if name == "original" else get_method(name).unlearn(
                        original, views.request, views.forget_set, views.retain_set, recipe=RECIPE, seed=seed).model
                    found[name] = [probe_ap(model, train.inputs, train.targets[:, target], test.inputs,
                                            test.targets[:, target], seed=seed, reader=reader) for reader in READERS]
                rows.append((arch, found))
                prevalence = 100.0 * float(test.targets[:, target].mean())
                print(f"{arch} | {seed} | {target} | {prevalence:.1f} | "
                      + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in found.values()), flush=True)
    print("\nmodel | method | median linear | median MLP | linear <= retrain's + 5 | MLP <= retrain's + 5")
    for arch in dict.fromkeys(a for a, _ in rows):
        mine = [found for a, found in rows if a == arch]
        for name in methods:
            within = [sum(f[name][i] <= f["retrain"][i] + 5 for f in mine) for i in range(len(READERS))]
            medians = [statistics.median(f[name][i] for f in mine) for i in range(len(READERS))]
            print(f"{arch} | {name} | {medians[0]:.1f} | {medians[1]:.1f} | {within[0]}/{len(mine)} | "
                  f"{within[1]}/{len(mine)}")


if __name__ == "__main__":
    main()
