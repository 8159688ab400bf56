"""The CLI end to end: train, retrain, unlearn, evaluate — and bad input refused with a clear message."""

import json

import pytest
from typer.testing import CliRunner

from excise.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["--quiet", *map(str, args)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "original.safetensors"
    result = invoke("train", "--out", out, "--width", 8, "--epochs", 6)
    assert result.exit_code == 0, result.output
    return out


def test_train_unlearn_evaluate(trained, tmp_path):
    reference = tmp_path / "retrained.safetensors"
    result = invoke("train", "--out", reference, "--width", 8, "--epochs", 6, "--request", "class:3")
    assert result.exit_code == 0, result.output
    assert json.loads(reference.with_suffix(".json").read_text())["metrics"]["FA"] < 5

    original_bytes = trained.read_bytes()
    out = tmp_path / "unlearned.safetensors"
    result = invoke("unlearn", trained, "--method", "gradient_ascent", "--request", "class:3", "--out", out,
                    "--reference", reference, "--param", "epochs=3")
    assert result.exit_code == 0, result.output
    assert trained.read_bytes() == original_bytes  # the input model is never modified
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["method"] == "gradient_ascent" and meta["method_config"]["epochs"] == 3
    assert meta["parent_sha256"] == json.loads(trained.with_suffix(".json").read_text())["sha256"]

    result = invoke("evaluate", out, "--request", "class:3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["FA"] == pytest.approx(meta["metrics"]["FA"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--method", "nope", "--request", "class:3"), "method='nope' is not registered"),
        (("--method", "gradient_ascent", "--request", "class:cat"), "labels='cat' is not a known class"),
        (("--method", "gradient_ascent", "--request", "samples:1.5"), "fraction=1.5 is outside (0, 1)"),
        (("--method", "gradient_ascent", "--request", "class:3", "--param", "lr"), "must look like key=value"),
        (("--method", "finetune", "--request", "class:3", "--param", "epochs=-1"), "epochs=-1"),
    ],
)
def test_bad_input_is_refused_with_a_message(trained, args, message):
    result = invoke("unlearn", trained, *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_output_is_not_overwritten_and_input_is_protected(trained, tmp_path):
    result = invoke("train", "--out", trained, "--epochs", 1)
    assert result.exit_code == 2 and "refusing to overwrite" in result.output
    result = invoke("unlearn", trained, "--method", "gradient_ascent", "--request", "class:3", "--out", trained,
                    "--overwrite")
    assert result.exit_code == 2 and "never overwritten" in result.output


def test_methods_lists_papers_and_data_needs():
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "gradient_ascent" in result.output and "forget only" in result.output and "Thudi" in result.output
