"""The ``excise`` command line: a thin layer over :mod:`excise.api`.

Each command parses flags, calls one API function and prints the result; validation and all work live
in the API so Python users get the same behaviour. Everything that imports torch is imported inside the
commands: ``excise --help`` and a refused request start in a fraction of a second (``benchmarks/startup.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from excise._files import DuplicateKeyError, unique_key_loader
from excise.progress import set_progress

if TYPE_CHECKING:
    from excise.requests import ForgetRequest

app = typer.Typer(
    help="excise: make a trained model forget samples, classes, sub-classes or targets — and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

# OSError covers what only the file system can tell (permissions, a full disk): its message names the path.
# A RequestError is a ValueError.
USER_ERRORS = (ValueError, OSError, ImportError, TypeError)


def fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/bold red] {err}")
    raise typer.Exit(code=2)


def interrupted(out: Path | None) -> None:
    """Ctrl-C in a command that writes: its outputs are written all or nothing (excise._files), so the user is told
    that nothing was written and that what was there is as it was, instead of a bare exit status 130."""
    where = f"; {out} and the files beside it are as they were" if out is not None else ""
    err_console.print(f"[yellow]interrupted[/yellow]: nothing was written{where}")
    raise typer.Exit(code=130)


AUGMENT_HELP = ("Training augmentation: none, crop (zero-pad 4 pixels, random crop) or crop-flip (and a random "
                "horizontal flip; not for digits or text). Recorded in the recipe: the retrained reference repeats it.")
MOVED_ROOT_HELP = ("Where the model's data set is now, if its files moved since it was trained (default: the directory "
                   "its sidecar records); the data must be the same (its fingerprint is checked).")
MOMENTUM_HELP = "SGD momentum (ignored by adam/adamw). Recorded in the recipe, like every training flag."
WEIGHT_DECAY_HELP = "Weight decay (0: none). The retrained reference and the fine-tuning methods follow it."
SCHEDULE_HELP = "Learning-rate schedule: cosine (annealed to 0 over the epochs) or constant."


def training_recipe(epochs: int, batch_size: int, lr: float, optimizer: str, momentum: float, weight_decay: float,
                    schedule: str, augment: str, crop_padding: int) -> Any:
    """The recipe `train` follows and `adopt` records: every field the command line can set."""
    from excise.training import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                       weight_decay=weight_decay, schedule=schedule, augment=augment, crop_padding=crop_padding)


def parse_params(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """``key=value`` pairs; values are read as YAML scalars (numbers, booleans, null, lists)."""
    out: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} {item!r} must look like key=value")
        if key in raw:  # the earlier value would be dropped without a word
            raise ValueError(f"{option} {key}= is given twice ({raw[key]!r} and {value!r}); give it once")
        raw[key] = value
        try:
            out[key] = yaml.load(value, Loader=unique_key_loader())  # a SafeLoader that refuses repeated keys
        except DuplicateKeyError as err:
            raise ValueError(f"{option} {item!r}: {err}") from err
        except (yaml.YAMLError, RecursionError) as err:
            problem = " ".join(str(getattr(err, "problem", None) or err).split())
            raise ValueError(f"{option} {item!r}: the value is not valid YAML ({problem})") from err
    return out


def model_options(width: int | None, model_option: list[str] | None) -> dict[str, Any]:
    """``--model-option key=value`` pairs with ``--width`` folded in (refused when both set the width)."""
    model_kwargs = parse_params(model_option, "--model-option")
    if width is not None:
        if "width" in model_kwargs:
            raise ValueError(f"--width {width} and --model-option width={model_kwargs['width']} both set the "
                             "width; give one")
        model_kwargs["width"] = width
    return model_kwargs


def set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        if threads < 1:
            raise ValueError(f"--threads={threads} must be >= 1")
        torch.set_num_threads(threads)


def parse_request(text: str | None, required: bool = True) -> ForgetRequest | None:
    from excise.requests import ForgetRequest

    if text is None:
        if required:
            raise ValueError("--request is required (e.g. class:3, samples:fraction=0.1, subclass:8, target:2, "
                             "or a file)")
        return None
    return ForgetRequest.parse(text)


def metrics_table(metrics: dict[str, float], title: str, intervals: dict[str, list[float]] | None = None,
                  level: float = 0.95) -> Table:
    from excise.metrics.directions import metric_direction

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if intervals:
        table.add_column(f"{100 * level:g}% interval", justify="right")
    # Variants read in opposite directions (svc_* count forget rows called non-member, entropy_logreg those called
    # member): the table says how to read each, as the report and the certificate do.
    table.add_column("how to read it", max_width=60, overflow="fold", style="dim")
    for key, value in metrics.items():
        row = [key, f"{value:.2f}"]
        if intervals:
            interval = intervals.get(key)
            row.append("" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]")
        table.add_row(*row, metric_direction(key))
    if intervals:
        table.caption = ("intervals: percentile bootstrap over the evaluated populations (forget, retain and test "
                         "sets redrawn; MIA attacks re-fitted), seeded by --seed — the evaluation data's noise only: "
                         "a second retrain with another seed lands elsewhere too (README, the gap's noise floor)")
    return table


def print_information_left(metrics: dict[str, float], reference: dict[str, float] | None, note: str | None) -> None:
    """Under a target request's table: how well each forgotten target can still be read (``probe_AP:t``), beside
    what reads nothing (its prevalence) and, with a reference, what a retrained model still reads."""
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    names = [key.split(":", 1)[1] for key in metrics if key.startswith("probe_AP:")]
    if not names:
        return
    parts = []
    for name in names:
        text = f"{name!r} {metrics[f'probe_AP:{name}']:.1f}"
        if f"probe_AP_head:{name}" in metrics:
            text += f" ({metrics[f'probe_AP_head:{name}']:.1f} at the head's first layer)"
        text += f", prevalence {metrics[f'prevalence:{name}']:.1f}"
        if reference and f"probe_AP:{name}" in reference:
            text += f", retrained {reference[f'probe_AP:{name}']:.1f}"
        parts.append(text)
    console.print("information left — AP of a linear probe (5-fold on the test rows) reading the forgotten target "
                  "from the features the classifier reads; at the prevalence it reads nothing: " + "; ".join(parts))


ATTACK_REFITS_HELP = ("Of the replicates, how many re-fit each membership attack (the others reuse those fits): "
                      "more give an attack that rarely inverts a steadier interval (README, An interval).")


def uncertainty_option(replicates: int, attack_refits: int = 40) -> Any:
    from excise.metrics.uncertainty import Uncertainty

    try:
        return Uncertainty(replicates=replicates, attack_refits=attack_refits)
    except ValueError as err:
        raise ValueError(f"--replicates / --attack-refits: {err}") from None


def gap_text(gap: float, interval: list[float] | None) -> str:
    return f"avg gap to retrain {gap:.2f}" + ("" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]")


@app.callback()
def main(ctx: typer.Context,
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars.")) -> None:
    # Under torchrun every rank runs the same command; only rank 0 draws progress and writes files. torchrun's
    # environment says whether that is the case, so a single-process command does not import torch here.
    writes = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from excise import distributed

        distributed.init_from_env()
        writes = distributed.is_main()
    set_progress(not quiet and writes and os.environ.get("EXCISE_PROGRESS", "1") != "0")
    console.quiet = not writes
    _exit_cleanly_on_sigterm()
    _warnings_as_messages(ctx)


def _warnings_as_messages(ctx: typer.Context) -> None:
    """A warning reaches a CLI user as ``GuardWarning: message``, without Python's ``file.py:143`` and the source
    line that raised it (``result = method.unlearn(``), which say nothing to someone who typed a command (an
    outside audit). Only the formatting changes — what is warned, and ``-W`` filters, are Python's — and the
    former format is put back when the command ends."""
    import warnings

    former = warnings.formatwarning

    def message_only(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
        return f"{category.__name__}: {message}\n"

    warnings.formatwarning = message_only
    ctx.call_on_close(lambda: setattr(warnings, "formatwarning", former))


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (what `timeout`, `docker stop` and Slurm send) ends the command as an exception would: the
    ``finally`` blocks that remove half-written temporary files and put back replaced outputs run. Python's default
    for SIGTERM ends the process at once, and left a full-size hidden temporary file beside the output."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, stop)


@app.command("train")
def train_command(
    out: Path = typer.Option(..., help="Where to write the model (.safetensors; a .json sidecar goes beside it)."),
    dataset: str | None = typer.Option(
        None, "--dataset", "--data",
        help="Registered data set (see `excise datasets`) or your own as package.module:function; default digits, "
             "or the --task's data set."),
    model: str | None = typer.Option(
        None, help="Registered model (small_cnn, resnet18, unet, centernet, ...) or your own as "
                   "package.module:function; default small_cnn, or the --task's."),
    task: str | None = typer.Option(
        None, "--task",
        help="Dense task: segmentation (multidigits-seg, unet) or detection (multidigits-det, centernet)."),
    width: int | None = typer.Option(
        None, help="Model width (first-stage channels; a GPT's n_embd). Omitted: the model's own default."),
    model_option: list[str] | None = typer.Option(
        None, "--model-option", help="Other model argument key=value (e.g. tail=1024 for bottleneck_resnet)."),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(0.05),
    optimizer: str = typer.Option("sgd", help="sgd, adam or adamw."),
    momentum: float = typer.Option(0.9, help=MOMENTUM_HELP),
    weight_decay: float = typer.Option(5e-4, help=WEIGHT_DECAY_HELP),
    schedule: str = typer.Option("cosine", help=SCHEDULE_HELP),
    augment: str = typer.Option("none", help=AUGMENT_HELP),
    crop_padding: int = typer.Option(4, help="Pixels of zero padding that --augment crop / crop-flip crops back from."),
    root: str | None = typer.Option(None, help="Local directory of a data set that is not bundled (CIFAR, CelebA)."),
    data_option: list[str] | None = typer.Option(None, "--data-option", help="Data-set option key=value."),
    request: list[str] | None = typer.Option(
        None, help="Train on the retain set of this request: the retrained reference (e.g. class:3). Repeat it "
                   "for a sequence (--request class:3 --request samples:0.1): the reference of its last step."),
    seed: int = typer.Option(0, help="Seeds the training and, without --data-seed, the data split."),
    data_seed: int | None = typer.Option(
        None, "--data-seed", help="Seed of the data split when it differs from --seed (a benchmark cell splits with "
                                  "its suite's dataset.seed and trains with the cell's seed)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Train an original model, or (with --request) the retrained reference that never saw the forget set."""
    from excise import api

    try:
        from excise.tasks.dense import train_defaults

        dataset, model = train_defaults(task, dataset, model)
        recipe = training_recipe(epochs, batch_size, lr, optimizer, momentum, weight_decay, schedule, augment,
                                 crop_padding)
        model_kwargs = model_options(width, model_option)
        checkpoint = api.train_model(
            dataset, model, out, recipe=recipe, model_kwargs=model_kwargs,
            dataset_options=parse_params(data_option, "--data-option"), root=root,
            request=[parse_request(r) for r in request] if request else None, seed=seed, overwrite=overwrite,
            data_seed=data_seed,
        )
    except KeyboardInterrupt:
        interrupted(out)
    except USER_ERRORS as err:
        fail(err)
    print_written(checkpoint, f"in {checkpoint.meta['train_seconds']:.1f}s")
    if checkpoint.meta.get("metrics"):
        console.print(metrics_table(checkpoint.meta["metrics"], "retrained reference"))


def print_written(checkpoint: Any, origin: str) -> None:
    """Where a new checkpoint went, its sidecar, and (for a classifier) what it scores: `train` and `adopt` say
    what they built."""
    meta = checkpoint.meta
    console.print(f"wrote {checkpoint.path} (sha256 {checkpoint.sha256[:12]}…) {origin}; "
                  f"sidecar {checkpoint.path.with_suffix('.json')}")
    if "train_accuracy" in meta:
        console.print(f"{meta['accuracy_of']} accuracy: train {meta['train_accuracy']:.1f}%, "
                      f"test {meta['test_accuracy']:.1f}%")


@app.command("adopt")
def adopt_command(
    weights: Path = typer.Argument(..., help="Your trained weights: .safetensors, or a torch.save(state_dict) file "
                                             "(read with weights_only=True). Never modified."),
    model: str = typer.Option(..., help="The architecture: your factory as package.module:function (importable from "
                                        "here or PYTHONPATH), or a registered model."),
    dataset: str = typer.Option(..., "--data", "--dataset",
                                help="The data it was trained on: package.module:function returning (train, test) "
                                     "torch Datasets or LabeledData, or a registered data set."),
    out: Path = typer.Option(..., help="Where to write the excise checkpoint (.safetensors + .json sidecar)."),
    width: int | None = typer.Option(None, help="Model width, if the factory takes one."),
    model_option: list[str] | None = typer.Option(None, "--model-option", help="Factory argument key=value."),
    data_option: list[str] | None = typer.Option(None, "--data-option", help="Data factory argument key=value."),
    root: str | None = typer.Option(None, help="Local directory of a data set that is not bundled."),
    epochs: int = typer.Option(20, help="How the model was trained (the retrained reference repeats it)."),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(0.05),
    optimizer: str = typer.Option("sgd", help="sgd, adam or adamw."),
    momentum: float = typer.Option(0.9, help=MOMENTUM_HELP),
    weight_decay: float = typer.Option(5e-4, help=WEIGHT_DECAY_HELP),
    schedule: str = typer.Option("cosine", help=SCHEDULE_HELP),
    augment: str = typer.Option("none", help=AUGMENT_HELP),
    crop_padding: int = typer.Option(4, help="Pixels of zero padding that --augment crop / crop-flip crops back from."),
    seed: int = typer.Option(0, help="Seed of the data split (and of a retrained reference)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Bring a model excise did not train into excise: then `excise unlearn` / `evaluate` / `train --request`
    work on it like on one of excise's own."""
    from excise import api

    try:
        checkpoint = api.adopt_model(
            weights, model, dataset, out,
            recipe=training_recipe(epochs, batch_size, lr, optimizer, momentum, weight_decay, schedule, augment,
                                   crop_padding),
            model_kwargs=model_options(width, model_option),
            dataset_options=parse_params(data_option, "--data-option"), root=root, seed=seed, overwrite=overwrite,
        )
    except KeyboardInterrupt:
        interrupted(out)
    except USER_ERRORS as err:
        fail(err)
    print_written(checkpoint, f"from {weights}")


@app.command("unlearn")
def unlearn_command(
    model: Path = typer.Argument(..., help="The trained model (.safetensors). It is never modified."),
    method: str = typer.Option(..., help="Registered method (see `excise methods`)."),
    request: str = typer.Option(..., help="What to forget: class:3, samples:fraction=0.1, samples:indices=0,5,9, "
                                         "subclass:8, target:2, or a .json/.yaml request file."),
    out: Path | None = typer.Option(None, help="Where to write the unlearned model (.safetensors)."),
    param: list[str] | None = typer.Option(None, "--param", help="Method hyper-parameter key=value (repeatable)."),
    reference: Path | None = typer.Option(None, help="Retrained reference model, for the gap to retrain."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
    graph: Path | None = typer.Option(None, help="Essential-graph file from `excise graph` (essential_graph methods)."),
    replicates: int = typer.Option(200, help="Bootstrap replicates for the 95% intervals (0 = none)."),
    attack_refits: int = typer.Option(40, "--attack-refits", help=ATTACK_REFITS_HELP),
    allow_reference_mismatch: bool = typer.Option(
        False, help="Compare with a --reference trained differently from the model (architecture, recipe, seed); "
                    "the differences are recorded."),
    ledger: Path | None = typer.Option(
        None, help="Append the deletion certificate to this model lineage's ledger (.jsonl; created if new)."),
    sign_key: Path | None = typer.Option(
        None, help="Sign the certificate with this Ed25519 private key (PEM, from `excise keygen`)."),
    guard: str = typer.Option(
        "rollback", help="If the run drops the held-out test rows' accuracy by more than 5 points (a samples "
                         "request: 1, when also beyond the rows' noise), or leaves a samples request's forget rows "
                         "further from looking unseen than it found them: rollback "
                         "(write nothing and exit with an error: the input model is unchanged; so too for a class "
                         "request that forgot nothing and a run that returned the model unchanged), warn (write the "
                         "damaged model, with the finding in its sidecar) or off."),
    config: Path | None = typer.Option(
        None, help="A calibration file from `excise calibrate`: use its values for --method (a --param wins)."),
    root: Path | None = typer.Option(None, help=MOVED_ROOT_HELP),
) -> None:
    """Make a model forget what --request names, then print the evidence. With --out, a deletion certificate is
    written beside the model (OUT.certificate.json)."""
    from excise import api
    from excise.methods import Guard

    try:
        outcome = api.unlearn_checkpoint(
            model, method, parse_request(request), out=out, hyperparameters=parse_params(param),
            reference_path=reference, seed=seed, overwrite=overwrite, graph=graph,
            uncertainty=uncertainty_option(replicates, attack_refits),
            allow_reference_mismatch=allow_reference_mismatch,
            ledger=ledger, sign_key=sign_key, guard=Guard(action=guard), config=config,
            inputs={"--request": request} if request is not None and Path(request).is_file() else None,
            root=root,
        )
    except KeyboardInterrupt:
        interrupted(out)
    except USER_ERRORS as err:
        fail(err)
    record = outcome.record
    found = record.evidence
    title = f"{method}: {request} in {record.seconds:.2f}s"
    if record.avg_gap is not None:
        title += "; " + gap_text(record.avg_gap, None if found is None else found.avg_gap_interval)
    console.print(metrics_table(record.metrics, title, None if found is None else found.intervals))
    print_information_left(record.metrics, outcome.reference_metrics, record.stats.get("information_left"))
    if (record.stats.get("guard") or {}).get("rolled_back"):
        console.print("[yellow]the guard rolled the run back: these are the numbers of the model as it was[/yellow]")
    if outcome.path:
        from excise.provenance.certificate import certificate_path

        signed = " (signed)" if sign_key is not None else ""
        console.print(f"wrote {outcome.path} and its certificate {certificate_path(outcome.path)}{signed}")
        if ledger is not None:
            console.print(f"appended to {ledger}; check with `excise verify {ledger}`")


@app.command("calibrate")
def calibrate_command(
    model: Path = typer.Argument(..., help="The trained model (.safetensors). It is never modified."),
    method: list[str] = typer.Option(
        ..., "--method", help="Method(s) to calibrate: repeat the option or separate with commas."),
    proxy: str = typer.Option(
        ..., help="The proxy request you can afford to retrain: another class than the one you will forget "
                  "(class:5), or a random subset of the same size (samples:fraction=0.1,seed=1)."),
    reference: Path | None = typer.Option(
        None, help="The proxy's retrained reference (`excise train --request PROXY`); without it the one retrain is "
                   "trained here with the model's recorded recipe."),
    n_trials: int = typer.Option(20, "--n-trials", "--trials", help="Trials per method; trial 0 runs the defaults."),
    out: Path | None = typer.Option(
        None, help="Where to write the calibration (.json; default beside the model: MODEL.calibration.json)."),
    seed: int = typer.Option(0, help="Seeds every trial's run and the sampler."),
    max_drop: float = typer.Option(
        5.0, help="The guard: a trial that drops the guard rows' accuracy by more points than this (or, on a "
                  "samples proxy, by more than 2 when that is beyond the rows' noise, or leaves the forget rows "
                  "further from looking unseen) is not kept."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
) -> None:
    """Tune each method's key hyper-parameters against one retrain on a proxy request (optuna); then
    `excise unlearn MODEL --method M --config FILE --request ...` uses them."""
    from excise import api
    from excise.methods import Guard

    try:
        names = [name.strip() for item in method for name in item.split(",") if name.strip()]
        outcome = api.calibrate_checkpoint(
            model, names, parse_request(proxy), reference_path=reference, n_trials=n_trials, out=out, seed=seed,
            overwrite=overwrite, guard=Guard(max_drop=max_drop, action="warn"),
        )
    except KeyboardInterrupt:
        interrupted(out)
    except USER_ERRORS as err:
        fail(err)
    result = outcome.result
    table = Table(title=f"calibrated on {proxy}: avg gap to its retrained model, {n_trials} trials per method "
                        "and one per tuned knob put back to its default",
                  title_justify="left",
                  caption="trial 0 runs the defaults; guard: trials the guard objected to (a collapse, forget rows "
                          "left further from looking unseen, a class that was not forgotten, an unchanged model), "
                          "failed: refused or diverged configurations (neither can be chosen)")
    for header in ("method", "defaults", "calibrated", "params", "ok", "guard", "failed"):
        table.add_column(header, justify="left" if header in ("method", "params") else "right")
    for name, found in result.methods.items():
        statuses = [t.status for t in found.trials]
        default = "-" if found.default_value is None else f"{found.default_value:.2f}"
        if found.default_status != "ok":
            default += f" ({found.default_status})"
        params = "none passed" if found.params is None else ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in found.params.items())
        table.add_row(name, default, "-" if found.value is None else f"{found.value:.2f}", params,
                      *(str(statuses.count(s)) for s in ("ok", "guard", "failed")))
    console.print(table)
    if outcome.reference_seconds is not None:
        console.print(f"the proxy's retrain was trained here in {outcome.reference_seconds:.1f}s")
    console.print(f"wrote {outcome.path}; apply with `excise unlearn {model} --method METHOD --config {outcome.path} "
                  "--request ...`")


@app.command("evaluate")
def evaluate_command(
    model: Path = typer.Argument(..., help="A model trained or unlearned by excise."),
    request: str | None = typer.Option(
        None, help="The forget request to judge the model against (default: every request an unlearned model "
                   "has served, from its sidecar's history)."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the metrics with the model's sha256, the "
                                 "request, seed, data set record and versions."),
    plot: Path | None = typer.Option(
        None, help="Dense models: write a PNG grid of masks/boxes (truth, --before model, this model)."),
    before: Path | None = typer.Option(None, help="With --plot: the model before unlearning, drawn beside it."),
    overwrite: bool = typer.Option(False, help="Replace an existing --plot file."),
    reference: Path | None = typer.Option(
        None, help="Retrained reference model: also the avg gap to it (with its interval) and the distances of the "
                   "predictions. Checked like `excise unlearn --reference`."),
    replicates: int = typer.Option(200, help="Bootstrap replicates for the 95% intervals (0 = none)."),
    attack_refits: int = typer.Option(40, "--attack-refits", help=ATTACK_REFITS_HELP),
    allow_reference_mismatch: bool = typer.Option(
        False, help="Compare with a --reference trained differently from the model (architecture, recipe, seed); "
                    "the differences are recorded."),
    root: Path | None = typer.Option(None, help=MOVED_ROOT_HELP),
) -> None:
    """FA/RA/TA and every MIA variant of a model for a request, with bootstrap intervals."""
    from excise import api
    from excise.requests import ForgetRequest

    try:
        if plot is not None:  # first: a bad picture path fails before the (longer) evaluation
            from excise.tasks.dense import plot_checkpoints

            models = {"before": before, "after": model} if before is not None else {str(model.name): model}
            plot_checkpoints(models, parse_request(request), plot, overwrite=overwrite)  # needs --request
        elif before is not None:
            raise ValueError("--before only makes sense with --plot (it is drawn, not evaluated)")
        record = api.evaluation_record(model, parse_request(request, required=False), seed=seed,
                                       reference_path=reference,
                                       uncertainty=uncertainty_option(replicates, attack_refits),
                                       allow_reference_mismatch=allow_reference_mismatch, root=root)
    except USER_ERRORS as err:
        fail(err)
    if as_json:  # metrics with their provenance (model sha256, request, seed, data, versions)
        console.print_json(json.dumps(record))
    else:
        described = " then ".join(ForgetRequest.from_dict(r).describe() for r in record["history"])
        title = f"{model} on {described}"
        if "avg_gap" in record:
            title += "; " + gap_text(record["avg_gap"], record["avg_gap_interval"])
        console.print(metrics_table(record["metrics"], title, record["intervals"]))
        print_information_left(record["metrics"], (record.get("reference") or {}).get("metrics"),
                               record.get("information_left"))
    if plot is not None and not as_json:
        console.print(f"wrote {plot}")


@app.command("methods")
def methods_command(
    long: bool = typer.Option(False, "--long", help="Full citations (one per line under each method)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: every method's description."),
) -> None:
    """Every registered method with its paper, the data it needs and the requests it serves."""
    from excise.methods import list_methods, method_class

    described = [method_class(name).describe() for name in list_methods()]
    if as_json:
        print(json.dumps(described, indent=2, default=str))
        return
    # Names are what a user types: never cut. Everything else goes in one wrapping cell, so 80 columns suffice.
    table = Table(title="excise methods", title_justify="left", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("data · requests (tasks) · paper")
    for info in described:
        tasks = "" if info["tasks"] == ["multiclass"] else f" ({', '.join(info['tasks'])})"
        table.add_row(info["name"], f"{info['data']} · {', '.join(info['kinds'])}{tasks}\n"
                                    f"{info['paper'] if long else info['citation']}")
    console.print(table)


@app.command("datasets")
def datasets_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON: every data set's description."),
) -> None:
    """Registered data sets: task, size, classes, super-classes, the requests they serve, where they come from."""
    from excise.data import dataset_info, list_datasets

    described = [dataset_info(name).to_dict(name) for name in list_datasets()]
    if as_json:
        print(json.dumps(described, indent=2))
        return
    table = Table(title="excise datasets (local ones need --root DIR)", title_justify="left", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("task · classes · requests · size · source · licence")
    for info in described:
        groups = f" · fine classes: {info['superclasses']}" if info["superclasses"] else ""
        table.add_row(info["name"], f"{info['task']} · {info['classes']}{groups} · requests: {info['requests']}\n"
                                    f"{info['size']}\n{info['source']} · {info['licence']}")
    console.print(table)


@app.command("demo")
def demo_command(
    dataset: str = typer.Option("digits", help="Bundled data set to run on."),
    request: str = typer.Option("class:3", help="What to forget."),
    methods: str | None = typer.Option(None, help="Comma-separated methods (default: all that serve the request)."),
    seed: int = typer.Option(0),
    out: Path | None = typer.Option(Path("demo_out"), help="Directory for demo_results.json."),
) -> None:
    """Train on bundled digits, retrain without one class, unlearn it with every method, print one table."""
    from excise.demo import run_demo

    try:
        run_demo(
            dataset=dataset, request=parse_request(request),
            methods=None if methods is None else [m.strip() for m in methods.split(",") if m.strip()],
            seed=seed, out_dir=out, console=console,
        )
    except USER_ERRORS as err:
        fail(err)


@app.command("ulira")
def ulira_command(
    methods: str | None = typer.Option(
        None, help="Comma-separated methods to attack (default: every method that serves 'samples' requests)."),
    param: list[str] | None = typer.Option(
        None, "--param", help="A method's hyper-parameter as METHOD.key=value (repeatable), e.g. imu.epochs=10."),
    dataset: str = typer.Option("digits", help="Registered single-label data set."),
    data_option: list[str] | None = typer.Option(None, "--data-option", help="Data-set option key=value."),
    model: str = typer.Option("small_cnn", help="Registered model."),
    width: int | None = typer.Option(None, help="Model width. Omitted: the model's own default."),
    model_option: list[str] | None = typer.Option(None, "--model-option", help="Other model argument key=value."),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(0.05),
    shadows: int = typer.Option(16, help="Shadow models (even); every pool example is forgotten in half of them."),
    pool: float = typer.Option(0.2, help="Share of the training set whose membership is attacked."),
    variance: str = typer.Option("auto", help="auto, global or per_example (auto: global below 64 shadows)."),
    root: str | None = typer.Option(None, help="Local directory of a data set that is not bundled."),
    cache: Path | None = typer.Option(None, help="Cache the trained shadows here; a later run reuses them."),
    out: Path | None = typer.Option(None, help="Write the report as JSON (.json)."),
    seed: int = typer.Option(0),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
) -> None:
    """U-LiRA: can a per-example attack tell unlearned samples from never-seen ones? (Hayes et al. 2024)

    Trains --shadows models, unlearns a random half of the pool from each with every method, and reports the
    attack's AUC, accuracy and TPR at low FPR (ideal: 0.5 / 50 / = FPR, where retrain sits) beside the
    shadows' forget and test accuracy.
    """
    from excise import api
    from excise.bench.ulira import ULiraConfig
    from excise.demo import demo_methods
    from excise.training import TrainConfig

    try:
        set_threads(threads)
        config = ULiraConfig(num_shadows=shadows, pool=pool, variance=variance, seed=seed)
        model_kwargs = model_options(width, model_option)
        names = ([m.strip() for m in methods.split(",") if m.strip()] if methods is not None
                 else ["retrain", *demo_methods("samples")])
        hyperparameters: dict[str, dict[str, Any]] = {}
        for key, value in parse_params(param).items():
            method_name, dot, field_name = key.partition(".")
            if not dot or not field_name or method_name not in names:
                raise ValueError(f"--param {key}=: expected METHOD.key=value with METHOD one of {names}")
            hyperparameters.setdefault(method_name, {})[field_name] = value
        report = api.ulira_audit(
            dataset, model, names, hyperparameters=hyperparameters,
            recipe=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr), config=config,
            model_kwargs=model_kwargs, dataset_options=parse_params(data_option, "--data-option"), root=root,
            cache_dir=cache, out=out, overwrite=overwrite,
        )
    except USER_ERRORS as err:
        fail(err)
    table = Table(title=f"U-LiRA on {dataset}: {report.pool_size} attacked examples of {report.train_size}, "
                        f"{shadows} shadows", title_justify="left",
                  caption="AUC 0.5 / accuracy 50 / TPR = FPR: the attacker cannot tell unlearned from never seen. "
                          "FA, TA: the unlearned shadows' forget-set and test accuracy (a ruined model also "
                          "reaches 0.5). —: too few pairs to resolve that FPR.")
    for header in ("method", "AUC", "acc %", "TPR@1%FPR", "TPR@0.1%FPR", "FA", "TA", "time s"):
        table.add_column(header, justify="left" if header == "method" else "right")
    for row in report.rows:
        attack = row.attack
        tprs = ["—" if v is None else f"{v:.1f}" for v in (attack.tpr_at_1pct_fpr, attack.tpr_at_01pct_fpr)]
        table.add_row(row.method, f"{attack.auc:.3f}", f"{attack.accuracy:.1f}", *tprs,
                      f"{row.forget_accuracy:.1f}", f"{row.test_accuracy:.1f}", f"{row.seconds:.2f}")
    console.print(table)
    if report.null_auc_band is not None:
        low, high = report.null_auc_band
        console.print(f"noise: retrain's AUC under random membership spans {low:.3f}-{high:.3f} (95%) at this "
                      "size; AUC differences inside that band are not evidence")
    console.print(f"{report.seconds:.0f}s, {report.shadow_cache_hits} of {shadows} shadows from the cache"
                  + (f" → {out}" if out is not None else ""))


@app.command("graph")
def graph_command(
    model: Path = typer.Argument(..., help="A multi-label model trained by excise (.safetensors)."),
    target: str = typer.Option(..., help="Target(s) to forget, by name or index (comma-separated for several)."),
    out: Path | None = typer.Option(None, help="Where to write the graph (.json); it records the model's sha256."),
    plot: Path | None = typer.Option(None, help="Write a picture of the graph (.png): layers x channels."),
    graph: Path | None = typer.Option(None, help="Plot this existing graph file instead of building one."),
    proportion: float = typer.Option(0.1, help="Share of each layer's channels in a target's essential graph."),
    num_images: int | None = typer.Option(None, help="Training images per target for the Grad-CAM scores."),
    layers: str | None = typer.Option(None, help="Comma-separated conv module names (default: last main-path convs)."),
    num_layers: int = typer.Option(5, help="How many of the last main-path convs, when --layers is not given."),
    unbalanced: bool = typer.Option(False, help="The paper's ablation: prune the target's whole essential graph."),
    overwrite: bool = typer.Option(False, help="Replace existing output files."),
) -> None:
    """Build the (balanced) essential graph of MODEL for forgetting --target; prune later with
    `excise unlearn MODEL --method essential_graph_paper --graph FILE --request target:T` (the paper), or
    `--method essential_graph` (the same pruning plus a re-fit of the remaining outputs' biases)."""
    from excise.api import graph_checkpoint

    try:
        built = graph_checkpoint(
            model, [t.strip() for t in target.split(",") if t.strip()], out=out, plot=plot, graph=graph,
            proportion=proportion, num_images=num_images,
            layers=None if layers is None else [x.strip() for x in layers.split(",") if x.strip()],
            num_layers=num_layers, balanced=not unbalanced, overwrite=overwrite,
        )
    except USER_ERRORS as err:
        fail(err)
    kind = "balanced" if built.balanced else "unbalanced"
    table = Table(title=f"{kind} essential graph: forget {built.forgotten_names}", title_justify="left")
    for column in ("layer", "channels", "pruned"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in built.layers:
        table.add_row(layer.name, str(layer.channels), str(len(layer.pruned)))
    console.print(table)
    for path in (out, plot):
        if path is not None:
            console.print(f"wrote {path}")


@app.command("bench")
def bench_command(
    suite: Path = typer.Argument(..., help="A suite file, e.g. benchmarks/suites/quick.yaml."),
    out: Path = typer.Option(..., help="Directory for results.jsonl (and the model cache). Re-run to resume."),
    root: str | None = typer.Option(None, help="Local directory of data sets that are not bundled (CIFAR, CelebA)."),
    cache: Path | None = typer.Option(None, help="Model cache directory (default OUT/cache); can be shared."),
    retry_failed: bool = typer.Option(False, help="Run failed cells again (finished cells are never redone)."),
    rerun_changed: bool = typer.Option(
        False, help="Recompute cells whose configuration (suite file), results code or data changed since stored."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    check: bool = typer.Option(False, "--check", help="Only validate the suite (and load its data); run nothing."),
    certify: bool = typer.Option(
        False, help="Keep each cell's model under OUT/certified/ with its deletion certificate (`excise verify`); "
                    "a run whose guard found it collapsed the model, left random rows further from looking unseen, "
                    "forgot nothing of a class or returned the model unchanged is recorded, not certified."),
) -> None:
    """Run a benchmark suite: every method on every scenario and seed, cached and resumable."""
    from excise.bench import load_suite, plan, read_records, run_suite
    from excise.bench.report import summary_rows

    try:
        set_threads(threads)
        spec = load_suite(suite)
        if check:
            plan(spec, root=root)
            console.print(f"suite {spec.name!r} is valid: {len(spec.scenarios)} scenarios, {len(spec.methods)} "
                          f"methods, seeds {list(spec.seeds)}; {len(spec.skips)} (scenario, method) pairs skipped")
            return
        summary = run_suite(spec, out, root=root, cache_dir=cache, retry_failed=retry_failed,
                            rerun_changed=rerun_changed, certify=certify)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/yellow]: finished cells are saved in {out}; "
                          "run the same command again to resume")
        raise typer.Exit(code=130) from None
    except USER_ERRORS as err:
        fail(err)
    table = summary_rows(summary.of_this_suite(read_records(summary.results_path)))
    console.print(_rich_table(table, f"suite {spec.name}"))
    console.print(f"{summary.ran} cells run, {summary.reused} reused, {summary.skipped} skipped, "
                  f"{len(summary.failed)} failed in {summary.seconds:.0f}s → {summary.results_path}")
    for scenario, method, seed, status in summary.failed:
        err_console.print(f"[red]{scenario}/{method}/seed {seed}[/red]: {status}")
    console.print(f"report: excise report {summary.results_path} --out {Path(out) / 'report'} --suite {suite}")


def _rich_table(table: Any, title: str) -> Table:
    out = Table(title=title, title_justify="left", caption=table.caption)
    for i, header in enumerate(table.headers):
        out.add_column(header, justify="left" if i == 0 else "right")
    for row in table.rows:
        out.add_row(*row)
    return out


@app.command("report")
def report_command(
    results: Path = typer.Argument(..., help="A results.jsonl written by `excise bench` (or its directory)."),
    out: Path = typer.Option(..., help="Directory for report.md, report.html and figures/."),
    title: str | None = typer.Option(None, help="Report title."),
    suite: Path | None = typer.Option(
        None, help="Report only the cells this suite file defines now (by default every stored cell, including "
                   "seeds, methods or scenarios since removed from the suite)."),
) -> None:
    """Markdown + self-contained HTML report (tables and plots) from a results file."""
    from excise.bench import load_suite
    from excise.bench.report import build_report

    try:
        files = build_report(results, out, title=title, suite=None if suite is None else load_suite(suite))
    except USER_ERRORS as err:
        fail(err)
    console.print(f"wrote {files.markdown} and {files.html} ({len(files.figures)} figures)")


@app.command("verify")
def verify_command(
    path: Path = typer.Argument(..., help="A deletion certificate (*.certificate.json) or a ledger (.jsonl)."),
    public_key: Path | None = typer.Option(
        None, help="The issuer's Ed25519 public key (PEM): signatures must be by this key, not just any."),
    head: str | None = typer.Option(
        None, help="A ledger head hash you kept (`excise ledger show`): entries removed from its end then fail."),
    evaluate: bool = typer.Option(
        True, "--evaluate/--no-evaluate", help="Re-evaluate each unlearned model on its recorded views."),
    json_output: bool = typer.Option(False, "--json", help="Print every check as JSON."),
) -> None:
    """Re-check a certificate or a ledger: hashes, chain, data, signature, metrics. Exits 1 naming the first
    mismatch."""
    from excise.provenance.verify import VerificationError, verify

    try:
        found = verify(path, public_key=public_key, reevaluate=evaluate, head=head)
    except VerificationError as err:
        if json_output:  # a script reading --json gets the failure as JSON too, with what passed before it
            console.print_json(json.dumps({"subject": str(path), "verified": False,
                                           "failed": {"check": err.check, "message": str(err)},
                                           "checks": [c.__dict__ for c in err.passed]}))
        else:
            console.print(_checks_table(err.passed, f"{path}: checks passed before the failure"))
        err_console.print(f"[bold red]verification failed[/bold red] at {err}")
        raise typer.Exit(code=1) from None
    except USER_ERRORS as err:
        fail(err)
    if json_output:
        console.print_json(json.dumps({**found.to_dict(), "verified": True}))
        return
    console.print(_checks_table(found.checks, str(path)))
    skipped = sum(c.status == "skipped" for c in found.checks)
    console.print(f"verified: {len(found.checks) - skipped} checks passed"
                  + (f", {skipped} skipped (see why above)" if skipped else ""))


def _checks_table(checks: list[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("check", "status", "detail"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(check.name, check.status, check.detail)
    return table


@app.command("prove")
def prove_command(
    certificate: Path = typer.Argument(..., help="A deletion certificate (*.certificate.json)."),
    index: int | None = typer.Option(None, help="The training row to prove was forgotten."),
    out: Path | None = typer.Option(None, help="Write the proof here (JSON) instead of printing it."),
    check: Path | None = typer.Option(None, help="Check this proof against the certificate instead."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """An inclusion proof that a training row was among the rows a request forgot (--index), or its check
    (--check): the row's content is rehashed from the data and its audit path must reach the Merkle root."""
    from excise._files import atomic_write_text
    from excise.provenance.verify import check_proof, prove

    if (index is None) == (check is None):
        fail(ValueError("give exactly one of --index (make a proof) and --check (check one)"))
    if check is not None:
        try:
            proof = json.loads(check.read_text())
        except (OSError, json.JSONDecodeError) as err:
            fail(ValueError(f"proof {str(check)!r} cannot be read as JSON: {err}"))
        try:
            said = check_proof(certificate, proof)
        except USER_ERRORS as err:
            err_console.print(f"[bold red]proof rejected:[/bold red] {err}")
            raise typer.Exit(code=1) from None
        console.print(f"proof holds: {said}")
        return
    try:
        made = prove(certificate, index)
        text = json.dumps(made.to_dict(), indent=2)
        if out is not None:
            atomic_write_text(out, text + "\n", overwrite=overwrite)
    except USER_ERRORS as err:
        fail(err)
    if out is None:
        console.print_json(text)
    else:
        console.print(f"wrote {out}: row {index} is leaf {made.position} of {made.tree_size}")


@app.command("keygen")
def keygen_command(
    out: Path = typer.Argument(..., help="Where to write the Ed25519 private key (PEM); the public key goes to "
                                        "OUT.pub. Keep the private key to yourself; hand out the .pub."),
    overwrite: bool = typer.Option(False, help="Replace existing key files."),
) -> None:
    """A key pair for signing deletion certificates (`excise unlearn --sign-key`)."""
    from excise.provenance.certificate import generate_key

    try:
        private, public = generate_key(out, overwrite=overwrite)
    except USER_ERRORS as err:
        fail(err)
    console.print(f"wrote {private} (private, mode 600) and {public} (public)")


ledger_app = typer.Typer(help="The deletion ledger of a model lineage.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("show")
def ledger_show_command(
    path: Path = typer.Argument(..., help="A ledger written by `excise unlearn --ledger`."),
    json_output: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
) -> None:
    """The entries of a ledger, its head hash (keep it to detect later truncation) and whether its chain holds."""
    from excise.provenance.ledger import read_ledger

    try:
        state = read_ledger(path)
    except USER_ERRORS as err:
        fail(err)
    if json_output:
        console.print_json(json.dumps({"entries": state.entries, "head": state.head}))
        return
    table = Table(title=f"{path}: {len(state.entries)} entries, chain intact", title_justify="left",
                  caption=f"head {state.head}")
    for column in ("seq", "time", "kind", "request", "method", "model", "certificate"):
        table.add_column(column, overflow="fold")
    for entry in state.entries:
        certificate = entry.get("certificate") or {}
        table.add_row(str(entry["seq"]), entry["time"][:16].replace("T", " "), entry["kind"], entry.get("request", ""),
                      entry.get("method", ""), entry["model"]["sha256"][:10], str(certificate.get("path", "")))
    console.print(table)


if __name__ == "__main__":
    app()
