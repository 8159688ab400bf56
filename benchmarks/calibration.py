"""Calibration transfer (issue 19, part 4): calibrated on one proxy class, does it beat the defaults elsewhere?

Per setting (data set, model, recipe) one original model is trained; each method is calibrated
(:func:`excise.calibrate.calibrate`: optuna TPE, trial 0 = the defaults, guard on, then each knob put back to its
default where that does not cost on the proxy) against the retrain of a proxy
class A, then the calibrated and the default configuration both serve two *real* requests the calibration never saw
— class B, and a random request of class B's size — each judged by its own retrained model. Printed per (setting,
method, real request): the default and the calibrated gap to retrain (avg over FA, RA, TA, MIA, points), whether
the guard fired on the real run (``!``; a forget-only method is not checked there: it has no retain data), and the
share of cells and of (setting, method) pairs (mean gap over both requests) where the calibrated configuration is
strictly better. Every run of a setting uses the same seed, so default and calibrated runs are paired.

    OMP_NUM_THREADS=1 python benchmarks/calibration.py [--trials 12] [--seed 0] [--methods imu,mu_mis,...]
        [--proxy-class 5] [--real-class 3] [--mnist-size 2000] [--random-proxy]

Measured (defaults above: 12 trials, seed 0, proxy class 5, real class 3, MNIST 2,000 images; small_cnn width 16,
15 epochs SGD 0.05 cosine; one thread; 717 s wall on a shared 2-core machine; MU-Mis at the absolute lr it had
before 2026-12-07). The printed table, narrowed to fit here (the tuned values on their own line):

    setting      method           proxy            runs    request     default  calibrated  better
    digits       imu              0.12 -> 0.12     12/0/0  class:3        0.19        0.19  same config
                                                           random 137     0.60        0.60  same config
                   tuned: lr=0.01, epochs=10
                 mu_mis           0.95 -> 0.78     15/0/0  class:3        4.57        4.59  no
                                                           random 137     1.59        1.41  yes
                   tuned: lr=1.24e-05, irrelevant_weight=1, class_max_passes=20
                 gradient_ascent  7.31 -> 4.72     10/4/0  class:3       11.50       12.14  no
                                                           random 137     1.56        1.39  yes
                   tuned: lr=0.001, epochs=6
                 salun            0.12 -> 0.12     12/0/0  class:3        0.29        0.29  same config
                                                           random 137     3.68        3.68  same config
                   tuned: lr_scale=0.3, epochs=3, mask_fraction=0.5
                 scrub            0.08 -> 0.08     11/1/0  class:3        0.19        0.19  same config
                                                           random 137     0.40        0.40  same config
                   tuned: lr_scale=0.1, max_epochs=2
                 random_labels    0.19 -> 0.00     14/0/0  class:3        0.39        0.12  yes
                                                           random 137     5.97        9.59  no
                   tuned: lr_scale=0.2, epochs=6
    mnist-2000   imu              0.92 -> 0.75     14/0/0  class:3        0.07        0.57  no
                                                           random 160     3.27        3.72  no
                   tuned: lr=0.0161, epochs=10
                 mu_mis           18.16! -> none   0/12/0  class:3       12.12       12.12  no
                                                           random 160     3.32        3.32  no
                   tuned: none passed
                 gradient_ascent  20.26! -> 18.65  4/10/0  class:3       22.64       23.12  no
                                                           random 160    12.52        3.08  yes
                   tuned: lr=0.001, epochs=1
                 salun            0.64 -> 0.26     14/1/0  class:3        0.57        0.28  yes
                                                           random 160     2.62        3.90  no
                   tuned: lr_scale=0.323, epochs=8, mask_fraction=0.173
                 scrub            2.12 -> 1.81     8/5/0   class:3        2.69!       2.73! no
                                                           random 160     3.37        3.73  no
                   tuned: lr_scale=0.106, max_epochs=2
                 random_labels    4.81! -> 1.84    4/10/0  class:3        8.52!       2.15  yes
                                                           random 160    22.31!       3.92  yes
                   tuned: lr_scale=0.0258, epochs=3
    calibrated beats default in 7/24 (setting, method, request) cells (29%) and in 3/12 (setting, method) pairs on
    the mean over both requests (25%); in 6 cells calibration kept the defaults

So the issue's bar (calibrated better than the defaults in >= 80% of the pairs) is **not met** by calibrating on one
proxy class. What the table says:

- Calibration pays where the defaults fail the guard: MNIST random_labels (class 8.52! -> 2.15, random 22.31! ->
  3.92) and gradient ascent on the random request (12.52 -> 3.08).
- On the digits the defaults of imu, salun and scrub already sit at the proxy's floor (a gap of 0.08-0.12): nothing
  to gain, the defaults are kept (6 cells).
- Small gains on the proxy do not carry over: imu on MNIST, 0.92 -> 0.75 on class 5 with lr 0.016, costs class 3
  (0.07 -> 0.57) — differences of tenths of a point on one request are within what changes from class to class.
- A class proxy does not calibrate a random request's budget: salun's epochs=8 (MNIST random 2.62 -> 3.90) and
  random_labels' epochs=6 (digits random 5.97 -> 9.59) were fitted to forgetting a whole class.
- Before :func:`excise.calibrate.toward_defaults` (the same run without it: 8/24 cells, 3/12 pairs) MU-Mis on the
  digits kept ``class_max_passes=4``, a cap class 5 never reached, and on class 3 ended at a gap of 26.18 against the
  defaults' 4.57; MNIST gradient ascent kept lr 1.9e-4 (proxy 25.10, now 18.65). Putting unexercised knobs back
  removed that harm without raising the share.

**A proxy of the real request's kind** (``--random-proxy``: the random request is calibrated on another random draw
of the same size, the issue's second proxy; the class rows as above). Measured 2026-12-07 on today's code, both
runs the same settings and seed (so the class rows are identical and the random rows differ only by the proxy; 582
s and 923 s wall, run side by side): with the class proxy calibrated beats default in 5/24 cells (21%) and 4/12
pairs (33%), random cells 2 of 12; with the random proxy in **10/24 cells (42%) and 7/12 pairs (58%)**, random
cells 7 of 12: MU-Mis 2.50 -> 1.15 and 4.95 -> 4.67 (digits, MNIST), gradient ascent 1.56 -> 1.21 and 12.52 ->
3.02, SalUn 1.94 -> 0.97 (digits), random labels 1.94 -> 1.01 (digits), IMU 3.48 -> 3.27 (MNIST); worse in 4: IMU
on the digits (0.60 -> 3.98, the guard fired: its tuned max_accuracy_drop 0.005 on 137 rows is under one row),
SCRUB twice (0.40 -> 2.58, 3.37 -> 3.85), SalUn on MNIST (3.56 -> 3.83); random labels on MNIST kept its defaults.
Two of the "better" random runs still fire the guard on the real request (MU-Mis on MNIST, whose default fires it
too, and gradient ascent on MNIST): under the default rollback they would be returned as the original. Still under
the issue's 80%: a random draw of 137-160 rows is a noisy proxy for another (the twin rows of
``benchmarks/zoo.py``: two retrains of the same data sit 0.4-2.2 apart on random 10%), and where the defaults
already sit at the proxy's floor (the class rows of IMU, SalUn and SCRUB on the digits) calibration can only tie.
(The 2026-12-06 table above ran older code: 7/24 and 3/12 there.)

Re-measured 2026-12-08 under the guard of that day (each kept class held to 5 points beyond its rows' noise,
BatchNorm statistics recomputed, a samples request held to 1 point), same settings and seed (1,187 s and 1,530 s
wall, run side by side): class proxy 3/24 cells (12%) and 3/12 pairs (25%); random proxy 10/24 cells (42%) and
7/12 pairs (58%). No trial passed the guard — trial 0, the defaults, included — for MU-Mis and gradient ascent on
the class proxy (digits and MNIST) and for random labels on MNIST (both proxies); their calibrated configuration is
the defaults. A retrained reference itself tripped the per-class check once, in the random-proxy run on MNIST
(kept class "4" 85.0 -> 72.5 on its 40 guard rows, the mean 87.7 -> 86.3; recorded, never acted on for retrain):
the check's false-alarm rate measured on the zoo (0 of 144 retrained models) does not hold on every setting.

Not measured here: several proxies or seeds.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("EXCISE_PROGRESS", "0")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from excise.calibrate import calibrate  # noqa: E402
from excise.data import load_dataset  # noqa: E402
from excise.experiment import run_method, train_original  # noqa: E402
from excise.methods import COMPARE_GUARD, GuardWarning, get_method  # noqa: E402
from excise.metrics import EvalViews  # noqa: E402
from excise.requests import ForgetRequest  # noqa: E402
from excise.training import TrainConfig  # noqa: E402

METHODS = "imu,mu_mis,gradient_ascent,salun,scrub,random_labels"
RECIPE = TrainConfig(epochs=15, batch_size=64, lr=0.05)


def settings(mnist_size: int) -> list[tuple[str, str, dict, dict]]:
    """(label, data set, its options, model arguments): the digits and the 28x28 MNIST sample, small_cnn."""
    return [
        ("digits / small_cnn w16", "digits", {}, {"width": 16}),
        (f"mnist-{mnist_size} / small_cnn w16", "mnist", {"size": mnist_size}, {"width": 16}),
    ]


def random_request_like(views: EvalViews, size: int, seed: int) -> ForgetRequest:
    """A random ``samples`` request of exactly ``size`` training rows (a fraction would round)."""
    n = len(views.forget_set) + len(views.retain_set)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return ForgetRequest(kind="samples", indices=tuple(int(i) for i in rows), name=f"random {size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--proxy-class", default="5")
    parser.add_argument("--real-class", default="3")
    parser.add_argument("--mnist-size", type=int, default=2000)
    parser.add_argument("--only", default=None, help="Run only the settings whose label contains this text.")
    parser.add_argument("--random-proxy", action="store_true",
                        help="Calibrate the random request on a proxy of its own kind: another random draw of the "
                             "same size (the issue's second proxy), instead of on the proxy class.")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    console = Console(width=170)
    started = time.perf_counter()
    random_proxy_text = ("a random proxy of the same size (another draw)" if args.random_proxy else
                         f"class {args.proxy_class}")
    table = Table(title=f"calibrated on class {args.proxy_class} ({args.trials} trials), applied to class "
                        f"{args.real_class}, and on {random_proxy_text}, applied to a random request of class "
                        f"{args.real_class}'s size; avg gap to each request's retrain, seed {args.seed}",
                  title_justify="left",
                  caption="proxy: gap on the row's proxy (defaults -> calibrated; none: no run passed); runs: "
                          "calibration runs ok/guard fired/failed; better: calibrated < default (same config: "
                          "calibration kept the defaults); !: the guard fired on that run")
    for column in ("setting", "method", "proxy", "runs", "tuned", "request", "default", "calibrated", "better"):
        table.add_column(column, justify="left" if column in ("setting", "method", "tuned", "request") else "right")
    cells: list[bool] = []
    kept_defaults: list[bool] = []
    pairs: list[bool] = []
    for label, name, options, model_kwargs in settings(args.mnist_size):
        if args.only and args.only not in label:
            continue
        bundle = load_dataset(name, seed=args.seed, **options)
        model, _ = train_original(bundle, "small_cnn", RECIPE, seed=args.seed, **model_kwargs)
        proxy = EvalViews.from_bundle(bundle, ForgetRequest(kind="class", labels=(args.proxy_class,)))
        real_class = EvalViews.from_bundle(bundle, ForgetRequest(kind="class", labels=(args.real_class,)))
        real_random = EvalViews.from_bundle(
            bundle, random_request_like(real_class, len(real_class.forget_set), args.seed + 1))
        # The random proxy is a draw disjoint in seed from the real random request's (seed + 2 vs + 1).
        proxies = {"class": proxy, "random": EvalViews.from_bundle(
            bundle, random_request_like(real_class, len(real_class.forget_set), args.seed + 2))
            if args.random_proxy else proxy}
        references = {}
        for views in (*{id(v): v for v in proxies.values()}.values(), real_class, real_random):
            _, references[id(views)] = run_method("retrain", model, views, RECIPE, seed=args.seed)
        found = {kind: calibrate(model, views, RECIPE, methods, reference=references[id(views)],
                                 n_trials=args.trials, seed=args.seed).methods
                 for kind, views in proxies.items() if kind == "class" or args.random_proxy}
        found.setdefault("random", found["class"])
        for method in methods:
            totals = {"default": 0.0, "calibrated": 0.0}
            for row, (kind, views, request_text) in enumerate((("class", real_class, real_class.request.describe()),
                                                               ("random", real_random, real_random.request.name))):
                result = found[kind][method]
                default_text = "failed" if result.default_value is None else f"{result.default_value:.2f}"
                if result.default_status == "guard":
                    default_text += "!"
                proxy_text = f"{default_text} -> " + ("none" if result.value is None else f"{result.value:.2f}")
                statuses = [t.status for t in result.trials]
                runs = "/".join(str(statuses.count(status)) for status in ("ok", "guard", "failed"))
                tuned = "none passed" if result.params is None else ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.params.items())
                shown = row == 0 or args.random_proxy  # a second calibration has its own proxy, runs and values
                gap, text = {}, {}
                for which, params in (("default", {}), ("calibrated", result.params or {})):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", GuardWarning)  # shown as "!" instead
                        _, record = run_method(get_method(method, **params), model, views, RECIPE, seed=args.seed,
                                               reference=references[id(views)], guard=COMPARE_GUARD)
                    gap[which] = record.avg_gap
                    totals[which] += record.avg_gap
                    guard = record.stats.get("guard") or {}
                    fired = guard.get("fired") or guard.get("further_from_goal")
                    text[which] = f"{record.avg_gap:.2f}" + ("!" if fired else "")
                better = gap["calibrated"] < gap["default"]
                cells.append(better)
                kept = result.params == result.defaults  # calibration kept the defaults: a tie by construction
                kept_defaults.append(kept)
                first = row == 0
                table.add_row(label if first and method == methods[0] else "", method if first else "",
                              proxy_text if shown else "", runs if shown else "", tuned if shown else "",
                              request_text, text["default"], text["calibrated"],
                              "yes" if better else "same config" if kept else "no")
            pairs.append(totals["calibrated"] < totals["default"])
        table.add_section()
    console.print(table)
    if cells:
        console.print(f"calibrated beats default in {sum(cells)}/{len(cells)} (setting, method, request) cells "
                      f"({100 * sum(cells) / len(cells):.0f}%) and in {sum(pairs)}/{len(pairs)} (setting, method) "
                      f"pairs on the mean over both requests ({100 * sum(pairs) / len(pairs):.0f}%); in "
                      f"{sum(kept_defaults)} cells calibration kept the defaults; {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
