"""The ``excise`` command line: a thin layer over :mod:`excise.api`.

Each command parses flags, calls one API function and prints the result; validation and all work live
in the API so Python users get the same behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from excise import api, distributed
from excise.progress import set_progress
from excise.requests import ForgetRequest, RequestError
from excise.training import TrainConfig

app = typer.Typer(
    help="excise: make a trained model forget samples, classes, sub-classes or targets — and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, RequestError, ImportError, TypeError)


def fail(err: Exception) -> None:
    err_console.print(f"[bold red]error:[/bold red] {err}")
    raise typer.Exit(code=2)


def parse_params(items: list[str] | None, option: str = "--param") -> dict[str, Any]:
    """``key=value`` pairs; values are read as YAML scalars (numbers, booleans, null, lists)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def parse_request(text: str | None, required: bool = True) -> ForgetRequest | None:
    if text is None:
        if required:
            raise ValueError("--request is required (e.g. class:3, samples:0.1, subclass:8, target:2, or a file)")
        return None
    return ForgetRequest.parse(text)


def metrics_table(metrics: dict[str, float], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.2f}")
    return table


@app.callback()
def main(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars.")) -> None:
    # Under torchrun every rank runs the same command; only rank 0 draws progress and writes files.
    distributed.init_from_env()
    set_progress(not quiet and distributed.is_main())
    console.quiet = not distributed.is_main()


@app.command("train")
def train_command(
    out: Path = typer.Option(..., help="Where to write the model (.safetensors; a .json sidecar goes beside it)."),
    dataset: str = typer.Option("digits", help="Registered data set (see `excise datasets`)."),
    model: str = typer.Option("small_cnn", help="Registered model: small_cnn or resnet18."),
    width: int = typer.Option(32, help="Model width (channels of the first stage)."),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(0.05),
    optimizer: str = typer.Option("sgd", help="sgd, adam or adamw."),
    root: str | None = typer.Option(None, help="Local directory of a data set that is not bundled (CIFAR, CelebA)."),
    data_option: list[str] | None = typer.Option(None, "--data-option", help="Data-set option key=value."),
    request: str | None = typer.Option(
        None, help="Train on the retain set of this request: the retrained reference (e.g. class:3)."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Train an original model, or (with --request) the retrained reference that never saw the forget set."""
    try:
        recipe = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer)
        checkpoint = api.train_model(
            dataset, model, out, recipe=recipe, model_kwargs={"width": width},
            dataset_options=parse_params(data_option, "--data-option"), root=root,
            request=parse_request(request, required=False), seed=seed, overwrite=overwrite,
        )
    except USER_ERRORS as err:
        fail(err)
    seconds = checkpoint.meta["train_seconds"]
    console.print(f"wrote {checkpoint.path} (sha256 {checkpoint.sha256[:12]}…) in {seconds:.1f}s")
    if checkpoint.meta.get("metrics"):
        console.print(metrics_table(checkpoint.meta["metrics"], "retrained reference"))


@app.command("unlearn")
def unlearn_command(
    model: Path = typer.Argument(..., help="The trained model (.safetensors). It is never modified."),
    method: str = typer.Option(..., help="Registered method (see `excise methods`)."),
    request: str = typer.Option(..., help="What to forget: class:3, samples:0.1, samples:0,5,9, subclass:8, "
                                         "target:2, or a .json/.yaml request file."),
    out: Path | None = typer.Option(None, help="Where to write the unlearned model (.safetensors)."),
    param: list[str] | None = typer.Option(None, "--param", help="Method hyper-parameter key=value (repeatable)."),
    reference: Path | None = typer.Option(None, help="Retrained reference model, for the gap to retrain."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Make a model forget what --request names, then print the evidence."""
    try:
        outcome = api.unlearn_checkpoint(
            model, method, parse_request(request), out=out, hyperparameters=parse_params(param),
            reference_path=reference, seed=seed, overwrite=overwrite,
        )
    except USER_ERRORS as err:
        fail(err)
    record = outcome.record
    title = f"{method}: {request} in {record.seconds:.2f}s"
    if record.avg_gap is not None:
        title += f"; avg gap to retrain {record.avg_gap:.2f}"
    console.print(metrics_table(record.metrics, title))
    if outcome.path:
        console.print(f"wrote {outcome.path}")


@app.command("evaluate")
def evaluate_command(
    model: Path = typer.Argument(..., help="A model trained or unlearned by excise."),
    request: str = typer.Option(..., help="The forget request to judge the model against."),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """FA/RA/TA and every MIA variant of a model for a request."""
    try:
        metrics = api.evaluate_checkpoint(model, parse_request(request), seed=seed)
    except USER_ERRORS as err:
        fail(err)
    if as_json:
        console.print_json(json.dumps(metrics))
    else:
        console.print(metrics_table(metrics, f"{model} on {request}"))


@app.command("methods")
def methods_command() -> None:
    """Every registered method with its paper, the data it needs and the requests it serves."""
    from excise.methods import list_methods, method_class

    table = Table(title="excise methods", title_justify="left", show_lines=True)
    for column in ("name", "data", "request kinds", "tasks", "paper"):
        table.add_column(column)
    for name in list_methods():
        info = method_class(name).describe()
        table.add_row(name, info["data"], ", ".join(info["kinds"]), ", ".join(info["tasks"]), info["paper"])
    console.print(table)


@app.command("datasets")
def datasets_command() -> None:
    """Registered data sets (bundled, synthetic, or local-directory loaders)."""
    from excise.data import list_datasets

    for name in list_datasets():
        console.print(name)


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


if __name__ == "__main__":
    app()
