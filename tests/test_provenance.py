"""Proof of deletion: certificates, the hash-chained ledger, `excise verify` and `excise prove`.

Every tamper test breaks exactly one thing and checks that verification names it; each would pass if the check
it exercises were removed, so none of them can pass by accident."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from excise.provenance import ledger
from excise.provenance.certificate import certificate_path
from tests.test_cli import invoke

UNLEARN = ("--param", "epochs=2")
# The lineage's method: it forgets classes 3 and 5 of this small model without costing any kept class (gradient
# ascent at two epochs cost class 8 12 points, which the guard rolls back; NegGrad+ at two left class 5 in part).
METHOD = "imu_forgotten_rows"


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """original → (class 3, signed, with a reference) → (class 5, chained), both in one ledger."""
    folder = tmp_path_factory.mktemp("provenance")
    original, retrained = folder / "original.safetensors", folder / "retrained.safetensors"
    for out, extra in ((original, ()), (retrained, ("--request", "class:3"))):
        result = invoke("train", "--out", out, "--width", 8, "--epochs", 4, *extra)
        assert result.exit_code == 0, result.output
    result = invoke("keygen", folder / "issuer.pem")
    assert result.exit_code == 0, result.output
    book = folder / "ledger.jsonl"
    first, second = folder / "step1.safetensors", folder / "step2.safetensors"
    result = invoke("unlearn", original, "--method", METHOD, "--request", "class:3", "--out", first,
                    "--ledger", book, "--sign-key", folder / "issuer.pem", "--reference", retrained)
    assert result.exit_code == 0, result.output
    result = invoke("unlearn", first, "--method", METHOD, "--request", "class:5", "--out", second,
                    "--ledger", book, "--sign-key", folder / "issuer.pem")
    assert result.exit_code == 0, result.output
    return folder


def copy_of(lineage, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(lineage, target)
    return target


def verify(*args):
    return invoke("verify", *args)


def text(result) -> str:
    return " ".join(result.output.split())


def test_a_ledger_of_two_deletions_verifies(lineage):
    result = verify(lineage / "ledger.jsonl", "--public-key", lineage / "issuer.pem.pub")
    assert result.exit_code == 0, result.output
    printed = text(result)
    assert "3 entries" in printed and "verified" in printed
    assert "metrics reproduced within 1e-06" in printed  # exact at the thread count it was recorded with
    entries = [json.loads(line) for line in (lineage / "ledger.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["origin", "deletion", "deletion"]
    assert entries[0]["model"]["sha256"] == json.loads((lineage / "original.json").read_text())["sha256"]
    assert [e["previous"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]


def test_the_certificate_says_what_was_asked_done_and_measured(lineage):
    cert_file = certificate_path(lineage / "step1.safetensors")
    assert cert_file.name == "step1.certificate.json"
    cert = json.loads(cert_file.read_text())
    sidecar = json.loads((lineage / "step1.json").read_text())
    assert cert["request"] == {"kind": "class", "labels": ["3"], "seed": 0} and cert["step"] == 1
    # The forgotten rows: every training row of class 3, under a Merkle root.
    assert cert["forgotten"]["count"] == sidecar["forget_size"] == len(cert["forgotten"]["indices"])
    assert len(cert["forgotten"]["merkle_root"]) == 64
    assert cert["models"]["unlearned"]["sha256"] == sidecar["sha256"]
    assert cert["models"]["original"]["sha256"] == sidecar["parent_sha256"]
    assert cert["models"]["data"]["fingerprint"] == sidecar["dataset"]["fingerprint"]
    assert cert["run"]["method"] == METHOD and cert["run"]["config"]["rows"] == "forgotten"
    assert cert["run"]["versions"]["excise_source"] == sidecar["versions"]["excise_source"]
    assert cert["evidence"]["metrics"] == sidecar["metrics"]
    assert cert["evidence"]["reference"]["avg_gap"] == sidecar["reference"]["avg_gap"]
    assert "MIA" in cert["evidence"]["directions"]
    measures = {m["measure"] for m in cert["evidence"]["retrain_free"]}
    assert "FA - TA_forget" in measures and "MIA" in measures
    # What the guard found is stated in the certificate itself: a partial deletion is not certified silently.
    guard = cert["evidence"]["guard"]
    assert guard == {k: sidecar["method_stats"]["guard"][k] for k in guard} and "incomplete" in guard
    assert guard["incomplete"] == (sidecar["method_stats"]["guard"]["forget_accuracy_after"] > 10)
    assert cert["limits"].startswith("Approximate unlearning")
    assert cert["signature"]["algorithm"] == "ed25519"
    assert "PRIVATE" not in cert_file.read_text()  # the public key is recorded, never the private one
    chained = json.loads(certificate_path(lineage / "step2.safetensors").read_text())
    assert chained["step"] == 2 and [r["labels"] for r in chained["history"]] == [["3"], ["5"]]
    assert chained["evidence"]["reference"] is None  # no reference: the retrain-free evidence carries it
    assert {m["measure"] for m in chained["evidence"]["retrain_free"]} >= {"FA - TA_forget", "MIA"}


def test_a_flipped_weight_byte_fails_verification(lineage, tmp_path):
    folder = copy_of(lineage, tmp_path)
    weights = folder / "step2.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    result = verify(folder / "ledger.jsonl")
    assert result.exit_code == 1
    assert "entry 2 unlearned model" in text(result) and "step2.safetensors" in text(result)
    assert "changed" in text(result)


def test_an_edited_metric_fails_verification(lineage, tmp_path):
    folder = copy_of(lineage, tmp_path)
    cert_file = certificate_path(folder / "step1.safetensors")
    cert = json.loads(cert_file.read_text())
    cert["evidence"]["metrics"]["FA"] = cert["evidence"]["metrics"]["FA"] + 7.0
    cert_file.write_text(json.dumps(cert))
    # Signed: the signature no longer matches the content.
    result = verify(cert_file)
    assert result.exit_code == 1 and "signature" in text(result) and "changed after it was signed" in text(result)
    # Through the ledger: the certificate no longer hashes to what its entry recorded.
    result = verify(folder / "ledger.jsonl")
    assert result.exit_code == 1 and "entry 1" in text(result) and "changed after it was appended" in text(result)
    # Unsigned, on its own: the recorded gap to the reference no longer follows from the recorded metrics ...
    del cert["signature"]
    cert_file.write_text(json.dumps(cert))
    result = verify(cert_file)
    assert result.exit_code == 1 and "reference: avg_gap" in text(result)
    # ... and without a reference, re-evaluating the model does not give the recorded number.
    cert_file = certificate_path(folder / "step2.safetensors")
    cert = json.loads(cert_file.read_text())
    del cert["signature"]
    cert["evidence"]["metrics"]["RA"] -= 0.5
    cert_file.write_text(json.dumps(cert))
    result = verify(cert_file)
    assert result.exit_code == 1 and "evidence: metric RA" in text(result)


@pytest.mark.parametrize("edit", ["delete", "swap"])
def test_a_deleted_or_swapped_entry_fails_verification(lineage, tmp_path, edit):
    folder = copy_of(lineage, tmp_path)
    book = folder / "ledger.jsonl"
    lines = book.read_text().splitlines(keepends=True)
    lines = [lines[0], lines[2]] if edit == "delete" else [lines[0], lines[2], lines[1]]
    book.write_text("".join(lines))
    result = verify(book, "--no-evaluate")
    assert result.exit_code == 1 and "chain" in text(result)
    assert "deleted, inserted or" in text(result)


def test_a_truncated_tail_shows_only_against_a_kept_head(lineage, tmp_path):
    folder = copy_of(lineage, tmp_path)
    book = folder / "ledger.jsonl"
    head = json.loads(book.read_text().splitlines()[-1])["hash"]
    book.write_text("".join(book.read_text().splitlines(keepends=True)[:2]))
    assert verify(book, "--no-evaluate").exit_code == 0  # a shorter chain is still a chain
    result = verify(book, "--no-evaluate", "--head", head)
    assert result.exit_code == 1 and "removed from its end" in text(result)


def test_a_wrong_public_key_fails_verification(lineage, tmp_path):
    assert invoke("keygen", tmp_path / "other.pem").exit_code == 0
    result = verify(lineage / "ledger.jsonl", "--public-key", tmp_path / "other.pem.pub", "--no-evaluate")
    assert result.exit_code == 1 and "signature" in text(result) and "not with the given public key" in text(result)


def test_an_inclusion_proof_holds_for_a_forgotten_row_only(lineage, tmp_path):
    cert_file = certificate_path(lineage / "step1.safetensors")
    cert = json.loads(cert_file.read_text())
    forgotten = cert["forgotten"]["indices"][7]
    kept = next(i for i in range(10_000) if i not in set(cert["forgotten"]["indices"]))
    proof = tmp_path / "proof.json"
    result = invoke("prove", cert_file, "--index", forgotten, "--out", proof)
    assert result.exit_code == 0, result.output
    assert invoke("prove", cert_file, "--check", proof).exit_code == 0
    # A row the request did not forget has no proof ...
    result = invoke("prove", cert_file, "--index", kept)
    assert result.exit_code == 2 and "not among" in text(result)
    # ... and a proof re-labelled to claim it fails: its content does not hash to that leaf.
    forged = json.loads(proof.read_text())
    forged["index"] = kept
    proof.write_text(json.dumps(forged))
    result = invoke("prove", cert_file, "--check", proof)
    assert result.exit_code == 1 and f"row {kept}" in text(result)


def test_ledger_show_prints_the_chain(lineage):
    result = invoke("ledger", "show", lineage / "ledger.jsonl")
    assert result.exit_code == 0, result.output
    printed = text(result)
    assert "origin" in printed and "class:3" in printed and "class:5" in printed and "head" in printed


def test_a_ledger_for_another_lineage_is_refused_before_any_work(lineage, tmp_path):
    result = invoke("unlearn", lineage / "original.safetensors", "--method", "gradient_ascent", "--request", "class:4",
                    "--out", tmp_path / "x.safetensors", "--ledger", lineage / "ledger.jsonl", *UNLEARN)
    assert result.exit_code == 2 and "current model" in text(result)
    assert not (tmp_path / "x.safetensors").exists()
    result = invoke("unlearn", lineage / "original.safetensors", "--method", "gradient_ascent", "--request", "class:4",
                    "--ledger", tmp_path / "l.jsonl", *UNLEARN)
    assert result.exit_code == 2 and "--out" in text(result)


ORIGIN = {"model": {"path": "m.safetensors", "sha256": "0" * 64}}

APPENDER = textwrap.dedent("""
    import sys
    from excise.provenance import ledger
    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    origin = {"model": {"path": "m.safetensors", "sha256": "0" * 64}}
    for i in range(count):
        ledger.append(path, {"model": {"path": f"{name}-{i}", "sha256": f"{i:064x}"}, "parent_sha256": None,
                             "certificate": {"path": "c", "sha256": "c" * 64}, "padding": "x" * 20000},
                      origin=origin)
""")


def test_two_processes_appending_leave_one_valid_chain(tmp_path):
    book = tmp_path / "ledger.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(book), name, "50"]) for name in ("a", "b")]
    assert [w.wait(timeout=240) for w in writers] == [0, 0]
    state = ledger.read_ledger(book)
    assert len(state.entries) == 101 and state.entries[0]["kind"] == "origin"  # one origin, 100 deletions
    names = [e["model"]["path"].split("-")[0] for e in state.entries[1:]]
    assert names.count("a") == 50 and names.count("b") == 50


def test_a_kill_during_appends_leaves_a_ledger_that_verifies(tmp_path):
    book = tmp_path / "ledger.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, str(book), "k", "100000"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not book.exists() or book.read_bytes().count(b"\n") < 30):
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn last line, if the kill landed mid-write (tested below)
        state = ledger.read_ledger(book)
    assert len(state.entries) >= 30
    # The next append goes on from the last complete entry.
    ledger.append(book, {"model": {"path": "after", "sha256": "1" * 64}, "parent_sha256": None,
                         "certificate": {"path": "c", "sha256": "c" * 64}}, origin=ORIGIN)
    assert ledger.read_ledger(book).entries[-1]["model"]["path"] == "after"


def test_a_torn_last_line_is_ignored_then_cut_off(tmp_path):
    book = tmp_path / "ledger.jsonl"
    entry = {"model": {"path": "a", "sha256": "1" * 64}, "parent_sha256": None,
             "certificate": {"path": "c", "sha256": "c" * 64}}
    ledger.append(book, entry, origin=ORIGIN)
    complete = book.read_bytes()
    line = complete.splitlines(keepends=True)[-1]
    book.write_bytes(complete + line[: len(line) // 2])  # what a kill in the middle of a write leaves
    with pytest.warns(UserWarning, match="torn last line"):
        assert len(ledger.read_ledger(book).entries) == 2
    ledger.append(book, entry, origin=ORIGIN)
    assert len(ledger.read_ledger(book).entries) == 3 and book.read_bytes().startswith(complete)
    # A corrupt line that is not the last one is an error naming the line, not skipped.
    book.write_bytes(complete.replace(b'"deletion"', b'"deletion', 1) + line)
    with pytest.raises(ledger.LedgerError, match=":2: not valid JSON"):
        ledger.read_ledger(book)


def test_a_last_entry_without_its_newline_is_kept_not_cut_off(tmp_path):
    """An editor that strips the final newline leaves a whole entry, not a torn one: it was dropped as torn and the
    next append cut a recorded deletion out of the ledger (a compliance audit, 2026-12-07)."""
    book = tmp_path / "ledger.jsonl"
    entry = {"model": {"path": "a", "sha256": "1" * 64}, "parent_sha256": None,
             "certificate": {"path": "c", "sha256": "c" * 64}}
    ledger.append(book, entry, origin=ORIGIN)
    book.write_bytes(book.read_bytes().rstrip(b"\n"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is ignored
        assert [e["kind"] for e in ledger.read_ledger(book).entries] == ["origin", "deletion"]
    ledger.append(book, {**entry, "model": {"path": "b", "sha256": "2" * 64}}, origin=ORIGIN)
    assert [e["model"]["path"] for e in ledger.read_ledger(book).entries] == ["m.safetensors", "a", "b"]
    assert book.read_bytes().count(b"\n") == 3
    # A whole last line that was edited is corrupt, not torn.
    book.write_bytes(book.read_bytes().rstrip(b"\n").replace(b'"path":"b"', b'"path":"z"'))
    with pytest.raises(ledger.LedgerError, match="edited after it was written"):
        ledger.read_ledger(book)


def test_bench_certify_certifies_no_deletion_a_run_did_not_make(tmp_path):
    """The bench keeps a run its guard found wanting, for the table (COMPARE_GUARD only warns), but writes no model
    or certificate for it: SSD that selects no parameter forgets nothing; gradient ascent collapses this tiny model.
    A cell certified before and refused when re-run loses its old files: they would certify what it did not do."""
    from excise.bench import parse_suite, read_records, run_suite
    from excise.methods import guard_objection
    from tests.test_bench import TINY, tiny

    inert = {"name": "ssd", "label": "ssd-selects-nothing", "params": {"selection_weighting": 1e9}}
    certified = tmp_path / "run" / "certified" / "class-3"
    # A stale certificate of the cell, as an earlier run of other code would have left it.
    certified.mkdir(parents=True)
    stale = [certified / f"ssd-selects-nothing-seed0{suffix}" for suffix in (".safetensors", ".json",
                                                                            ".certificate.json")]
    for path in stale:
        path.write_text("{}")
    summary = run_suite(parse_suite(tiny(methods=[inert, "gradient_ascent"], scenarios=TINY["scenarios"][:1])),
                        tmp_path / "run", certify=True)
    records = {r["method"]: r for r in read_records(summary.results_path)}
    for label, found_text in (("ssd-selects-nothing", "the run forgot nothing (accuracy on "),
                              ("gradient_ascent", "accuracy on ")):
        record = records[label]
        found = (record["steps"][-1]["stats"] if "steps" in record else record["stats"])["guard"]
        assert record["status"] == "ok" and found["action"] == "warn" and not found.get("rolled_back")
        assert record["certificate"] == {"refused": guard_objection(found), "path": None}
        assert record["certificate"]["refused"].startswith(found_text), record["certificate"]
        assert not list(certified.glob(f"{label}-seed0*"))
    assert records["ssd-selects-nothing"]["stats"]["guard"]["forgot_nothing"]
    assert records["gradient_ascent"]["stats"]["guard"]["fired"]
    assert not any(path.exists() for path in stale)
    assert os.path.exists(records["retrain"]["certificate"]["path"])  # exact unlearning is certified


def test_guard_objection_words_what_the_guard_found():
    from excise.methods import guard_objection

    collapse = {"fired": True, "rows": 40, "data": "held-out guard_set", "accuracy_before": 90.0,
                "accuracy_after": 70.0}
    nothing = {"fired": False, "forgot_nothing": True, "forget_rows": 12, "forget_accuracy_before": 100.0,
               "forget_accuracy_after": 99.5}
    assert guard_objection(None) is None and guard_objection({}) is None
    assert guard_objection({"data": None, "fired": None, "reason": "no rows"}) is None  # not checked: no finding
    assert guard_objection({**nothing, "forgot_nothing": False}) is None
    assert guard_objection(collapse) == "accuracy on 40 held-out guard_set rows fell from 90.0 to 70.0"
    assert guard_objection(nothing) == "the run forgot nothing (accuracy on 12 forget rows went from 100.0 to 99.5)"
    further = {"further_from_goal": True, "goal": {"auc_before": 0.55, "auc_after": 0.31}}
    assert guard_objection(further).endswith("(membership AUC 0.55 -> 0.31, 0.5 = unseen)")
    broken = {"further_from_goal": True, "goal": {"reason": "non-finite losses after the run"}}
    assert guard_objection(broken).endswith("than they started (non-finite losses after the run)")
    both = guard_objection({**collapse, **further, "rolled_back": True})
    assert both.startswith("the guard rolled the run back (accuracy on 40 ") and "; the forget rows ended" in both


def test_bench_certify_writes_a_certificate_per_cell_that_verifies(tmp_path):
    """`excise bench --certify`: every cell but the original keeps its model and certificate; each verifies,
    re-evaluation included — a sequence's final model against the cumulative views of the whole sequence. (IMU on the
    forgotten rows only: gradient ascent collapses this tiny model, and random labels cost a kept class 33 points in
    the sequence; such runs are not certified, see above.)"""
    from excise.bench import parse_suite, read_records, run_suite
    from excise.provenance.verify import verify_certificate
    from tests.test_bench import tiny

    summary = run_suite(parse_suite(tiny(methods=["imu_forgotten_rows"])), tmp_path / "run", certify=True)
    records = {(r["scenario"], r["method"]): r for r in read_records(summary.results_path)}
    assert "certificate" not in records[("class-3", "original")]
    for key in [("class-3", "retrain"), ("class-3", "imu_forgotten_rows"), ("seq", "imu_forgotten_rows")]:
        assert "refused" not in records[key]["certificate"], records[key]["certificate"]
        cert_file = records[key]["certificate"]["path"]
        checks = {c.name: c for c in verify_certificate(cert_file).checks}
        assert checks["evidence"].status == "ok" and "reproduced" in checks["evidence"].detail
        assert checks["forgotten data"].status == "ok"
        cert = json.loads(open(cert_file).read())
        assert cert["models"]["original"]["sha256"] == records[key]["hashes"]["original"]
        assert cert["models"]["unlearned"]["sha256"] == records[key]["hashes"]["unlearned"]
    seq = json.loads(open(records[("seq", "imu_forgotten_rows")]["certificate"]["path"]).read())
    assert [[str(label) for label in r["labels"]] for r in seq["forgotten"]["requests"]] == [["1"], ["4"]]
    assert seq["evidence"]["reference"]["avg_gap"] == pytest.approx(records[("seq", "imu_forgotten_rows")]["avg_gap"])
    assert json.loads(open(records[("class-3", "retrain")]["certificate"]["path"]).read())["limits"].startswith(
        "Exact unlearning")
    # The guard's finding travels with the certified model: the bench keeps what the method did (COMPARE_GUARD).
    for key in [("class-3", "imu_forgotten_rows"), ("seq", "imu_forgotten_rows")]:
        sidecar = json.loads(open(records[key]["certificate"]["path"].replace(".certificate.json", ".json")).read())
        found = records[key]["steps"][-1]["stats"] if "steps" in records[key] else records[key]["stats"]
        assert sidecar["method_stats"]["guard"] == found["guard"] and found["guard"]["action"] == "warn"


def test_an_overwritten_private_key_is_owner_only(tmp_path):
    from excise.provenance.certificate import generate_key

    key = tmp_path / "issuer.pem"
    key.write_text("an old key\n")
    key.chmod(0o644)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_key(key)
    generate_key(key, overwrite=True)
    assert key.stat().st_mode & 0o077 == 0 and key.read_text().startswith("-----BEGIN PRIVATE KEY")
    assert not list(tmp_path.glob(".*.tmp"))


def test_verify_pointed_at_a_model_names_its_certificate(tmp_path):
    model = tmp_path / "step4.safetensors"
    model.write_bytes(b"\xa4 not json")
    result = verify(model)
    assert result.exit_code != 0 and "is a model; verify its certificate" in text(result)
    assert "step4.certificate.json" in text(result) and "missing" in text(result)
    as_json = verify(model, "--json")  # a script reading --json gets the failure as JSON too
    assert as_json.exit_code == 1 and '"verified": false' in as_json.stdout and '"check": "input"' in as_json.stdout


def test_python_dash_m_excise_is_the_command_line():
    done = subprocess.run([sys.executable, "-m", "excise", "verify", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Usage: excise verify" in " ".join(done.stdout.split())


def test_a_sidecar_whose_history_left_its_certificate_is_refused_and_a_broken_history_fails_verify(lineage,
                                                                                                   tmp_path):
    """The history the next certificate states (and its evidence is judged on) comes from the model's sidecar,
    which nothing signs: a sidecar edited to drop an earlier request gave a certificate that left it out, and
    `verify` passed the ledger (a compliance audit, 2026-12-07)."""
    from excise.provenance.verify import check_history

    folder = copy_of(lineage, tmp_path)
    sidecar = folder / "step2.json"
    meta = json.loads(sidecar.read_text())
    meta["history"] = meta["history"][1:]  # class:3 dropped
    sidecar.write_text(json.dumps(meta))
    result = invoke("unlearn", folder / "step2.safetensors", "--method", "gradient_ascent", "--request", "class:4",
                    "--out", folder / "step3.safetensors", "--ledger", folder / "ledger.jsonl", *UNLEARN)
    assert result.exit_code == 2 and "the sidecar was changed after the model was written" in text(result)
    assert not (folder / "step3.safetensors").exists()
    # verify holds each ledgered certificate's history to the previous one's plus its own request.
    cert = json.loads(certificate_path(folder / "step2.safetensors").read_text())
    first = json.loads(certificate_path(folder / "step1.safetensors").read_text())
    assert check_history(cert, first["history"]) is None
    with pytest.raises(ValueError, match="is not the previous certificate's"):
        check_history({**cert, "history": cert["history"][1:], "step": 1}, first["history"])
    with pytest.raises(ValueError, match="says step 3"):
        check_history({**cert, "step": 3}, first["history"])
    assert "already served 1 request" in check_history(cert, None)


def test_verify_fails_a_certificate_that_certifies_no_deletion(lineage, tmp_path):
    """Written at --guard warn, a run its own guard objected to, or one that returned its input, still gets a
    certificate (with the finding); `excise verify` passed them (a compliance audit, 2026-12-07). It fails them now,
    naming why."""
    folder = copy_of(lineage, tmp_path)
    original = folder / "original.safetensors"
    idle = folder / "idle.safetensors"
    result = invoke("unlearn", original, "--method", "finetune", "--request", "class:3", "--param", "epochs=1",
                    "--param", "lr_scale=0.01", "--out", idle, "--guard", "warn")
    assert result.exit_code == 0, result.output
    result = verify(certificate_path(idle))
    assert result.exit_code == 1 and "deletion: the run's own guard found that the run forgot nothing" in text(result)
    # Chaining from it says that its step was not served: its history lists class:3, which is not forgotten again.
    from excise.methods import GuardWarning

    with pytest.warns(GuardWarning, match=r"was written \(--guard warn\) although its own run's guard found that "
                                          "the run forgot nothing .* its history lists class:3 as served"):
        result = invoke("unlearn", idle, "--method", "finetune", "--request", "class:5", "--replicates", 0)
    assert result.exit_code == 0, result.output
    same = folder / "same.safetensors"
    result = invoke("unlearn", original, "--method", "ssd", "--request", "class:3", "--param",
                    "selection_weighting=1e9", "--out", same, "--guard", "warn")
    assert result.exit_code == 0, result.output
    result = verify(certificate_path(same))
    assert result.exit_code == 1 and "the certified model is its input model, bit for bit" in text(result)
    # Replacing a certified model says what is lost.
    with pytest.warns(UserWarning, match="--overwrite replaces .* and its deletion certificate"):
        result = invoke("unlearn", original, "--method", "ssd", "--request", "class:3", "--param",
                        "selection_weighting=1e9", "--out", same, "--guard", "warn", "--overwrite")
    assert result.exit_code == 0, result.output


def test_the_cli_prints_a_warning_as_its_message_without_the_source_line(lineage):
    """Every GuardWarning reached a CLI user as `experiment.py:143: GuardWarning: ...` followed by the source line
    `result = method.unlearn(` (an outside audit)."""
    import sys
    import warnings

    with warnings.catch_warnings():  # not recorded (pytest records them): shown, as Python shows them in a terminal
        warnings.simplefilter("always")
        warnings._showwarnmsg_impl = lambda msg: sys.stderr.write(warnings._formatwarnmsg(msg))
        result = invoke("evaluate", lineage / "original.safetensors", "--request", "samples:indices=1,2,3",
                        "--replicates", 0)
        assert warnings.formatwarning is warnings._formatwarning_orig  # put back when the command ended
    assert result.exit_code == 0, result.output
    shown = result.stderr
    assert "UserWarning: 3 forget row(s): one membership verdict" in shown, shown
    assert ".py:" not in shown and "warnings.warn(" not in shown, shown


def test_a_handful_of_forget_rows_is_evaluated_with_a_warning(lineage):
    with pytest.warns(UserWarning, match=r"3 forget row\(s\): one membership verdict moves an attack by 33 points"):
        result = invoke("evaluate", lineage / "original.safetensors", "--request", "samples:indices=1,2,3",
                        "--replicates", 0)
    assert result.exit_code == 0, result.output


def _files_of(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_a_ledger_that_refuses_the_entry_leaves_no_unrecorded_certified_model(lineage, tmp_path, monkeypatch):
    """The lineage check before the run passed; another run extended the ledger while this one worked. The append
    is refused under the ledger's lock, and the model, sidecar and certificate this run had written are removed:
    a certified model that no ledger records is a deletion claim nobody can audit."""
    folder = copy_of(lineage, tmp_path)
    book = folder / "ledger.jsonl"
    real_append = ledger.append

    def raced(path, entry, **kwargs):
        state = ledger.read_ledger(path)
        ledger.append(path, {**entry, "model": {"path": "other.safetensors", "sha256": "e" * 64},
                             "parent_sha256": state.head_model})
        return real_append(path, entry, **kwargs)

    monkeypatch.setattr("excise.provenance.issue.append_entry", raced)
    before = {name: data for name, data in _files_of(folder).items() if not name.startswith("ledger.jsonl")}
    result = invoke("unlearn", folder / "step2.safetensors", "--method", METHOD, "--request", "class:7",
                    "--out", folder / "step3.safetensors", "--ledger", book, *UNLEARN)
    assert result.exit_code != 0 and "current model" in text(result), result.output
    after = {name: data for name, data in _files_of(folder).items() if not name.startswith("ledger.jsonl")}
    assert after == before  # no step3 model, sidecar or certificate; no temporary or backup file left
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_an_overwrite_whose_ledger_entry_fails_restores_the_files_it_replaced(lineage, tmp_path, monkeypatch):
    folder = copy_of(lineage, tmp_path)

    def full_disk(path, entry, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("excise.provenance.issue.append_entry", full_disk)
    before = _files_of(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # --overwrite of a certified model warns; that is tested elsewhere
        result = invoke("unlearn", folder / "step1.safetensors", "--method", METHOD, "--request", "class:5",
                        "--out", folder / "step2.safetensors", "--overwrite", "--ledger", folder / "new.jsonl",
                        *UNLEARN)
    assert result.exit_code != 0 and "No space left" in text(result), result.output
    assert _files_of(folder) == before  # step2's weights, sidecar and certificate byte for byte, no new ledger
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert verify(folder / "ledger.jsonl").exit_code == 0


def test_verify_repeats_a_subclass_runs_forgot_nothing_instead_of_finding_nothing_against_it(tmp_path):
    """A sub-class run that forgot nothing is said, not refused (a retrained model may keep the fine class near the
    original's level); `excise verify` had then printed that the guard "found nothing against it"."""
    from tests.test_cli import invoke

    original, out = tmp_path / "super.safetensors", tmp_path / "idle.safetensors"
    assert invoke("train", "--out", original, "--dataset", "digits-super", "--width", 8, "--epochs", 4).exit_code == 0
    ran = invoke("unlearn", original, "--method", "finetune", "--param", "epochs=1", "--param", "lr_scale=0.01",
                 "--request", "subclass:8", "--out", out, "--replicates", 0)
    assert ran.exit_code == 0, ran.output
    result = invoke("verify", out.with_suffix(".certificate.json"), "--json")
    assert result.exit_code == 0, result.output
    checks = {check["name"]: check for check in json.loads(result.output)["checks"]}
    said = checks["deletion"]["detail"]
    assert checks["deletion"]["status"] == "ok" and said.startswith(
        "the weights changed; the run's guard said it forgot nothing of the sub-class (accuracy on 131"), said
