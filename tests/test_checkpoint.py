import json
import os

import pytest
import torch

from excise.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, save_checkpoint, sha256_file
from excise.models import create_model


def _model():
    torch.manual_seed(0)
    return create_model("small_cnn", in_channels=1, num_classes=10, width=4)


def test_round_trip_restores_weights_and_records_sha256(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"seed": 3})
    loaded = load_checkpoint(path)
    assert loaded.meta["sha256"] == sha256_file(path)
    assert loaded.meta["seed"] == 3 and "torch" in loaded.meta["versions"]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_existing_file_is_never_overwritten_without_asking(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    before = path.read_bytes()
    other = create_model("small_cnn", in_channels=1, num_classes=10, width=4)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        save_checkpoint(path, other)
    assert path.read_bytes() == before
    save_checkpoint(path, other, overwrite=True)
    assert path.read_bytes() != before


def test_corrupt_weights_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was replaced: its sha256"):
        load_checkpoint(path)


def test_mismatched_architecture_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["model"]["kwargs"]["width"] = 8
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit model 'small_cnn'"):
        load_checkpoint(path)


def test_missing_or_broken_sidecar_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load_checkpoint(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="has no sidecar"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_failed_write_leaves_the_earlier_file_intact(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_text(target, "first")

    def explode(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    from excise.checkpoint import atomic_write

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, explode, overwrite=True)
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


def test_a_save_that_fails_on_the_sidecar_leaves_the_earlier_checkpoint_whole(tmp_path, monkeypatch):
    """Weights and sidecar are staged together: an error while writing the sidecar replaces neither."""
    path = save_checkpoint(tmp_path / "m.safetensors", _model(), {"seed": 1})
    weights, sidecar = path.read_bytes(), path.with_suffix(".json").read_text()
    other = create_model("small_cnn", in_channels=1, num_classes=10, width=4)
    import excise.checkpoint

    def disk_full():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(excise.checkpoint, "versions", disk_full)  # fails while the sidecar is written
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, other, overwrite=True)
    assert path.read_bytes() == weights and path.with_suffix(".json").read_text() == sidecar
    assert load_checkpoint(path).meta["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_written_files_follow_the_umask_and_keep_a_replaced_files_mode(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", _model())
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
        assert path.with_suffix(".json").stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        save_checkpoint(path, _model(), overwrite=True)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)


def test_a_sidecar_that_is_not_an_object_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    path.with_suffix(".json").write_text("5")
    with pytest.raises(CheckpointError, match="must hold a JSON object, not int"):
        load_checkpoint(path)


def test_a_full_disk_is_an_error_naming_the_file_and_leaves_the_earlier_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    class SafetensorError(Exception):  # what safetensors raises, not an OSError
        pass

    def full(state, filename):
        open(filename, "wb").write(b"partial")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    monkeypatch.setattr("excise.checkpoint.save_file", full)
    with pytest.raises(OSError, match=r"could not write '.*m.safetensors'.*No space left"):
        save_checkpoint(path, _model(), overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file left either


SLOW_WRITER = """
import sys, time
import excise.checkpoint as checkpoint
from excise.cli import app
real = checkpoint.save_file
def slow(state, filename, *args, **kwargs):
    real(state, filename, *args, **kwargs)
    print("staged", flush=True)
    time.sleep(60)  # a large model on a slow disk
checkpoint.save_file = slow
app(["--quiet", "train", "--out", sys.argv[1], "--width", "4", "--epochs", "1"])
"""


def test_sigterm_while_writing_leaves_no_temporary_file(tmp_path):
    """`timeout`, `docker stop` and Slurm send SIGTERM; by Python's default it ended the process at once and left a
    full-size hidden temporary file beside the output, which nothing removed."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "m.safetensors"
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "EXCISE_PROGRESS": "0", "OMP_NUM_THREADS": "1"})
    assert writer.stdout.readline().strip() == "staged"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the staged weights exist now
    writer.send_signal(signal.SIGTERM)
    assert writer.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_a_path_that_is_not_a_checkpoint_says_what_to_pass_instead(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    with pytest.raises(CheckpointError, match="looks like a checkpoint's sidecar: pass its weights .*m.safetensors"):
        load_checkpoint(path.with_suffix(".json"))
    foreign = tmp_path / "mine.pt"
    torch.save(_model().state_dict(), foreign)
    with pytest.raises(CheckpointError, match="brought in first with `excise adopt`"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)
