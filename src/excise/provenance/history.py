"""What a model has served: the history of forget requests a checkpoint records, whether that history is
complete, the cumulative views after all of its requests, and the checks a retrained reference must pass.

A request history is a domain object, not a detail of the command line: the API (`excise unlearn`/`evaluate`),
sequential unlearning (:mod:`excise.sequential`), the essential graph (:mod:`excise.graph`), the dense-task
pictures (:mod:`excise.tasks.dense`), the benchmark and the deletion certificates all read it from here.

Cumulative views (:func:`cumulative_views`): after requests ``r_1 … r_k`` the forget set is everything asked
so far (:func:`excise.requests.apply_sequence`), the retain set what remains, and for class / sub-class requests
the test views exclude every class forgotten so far (``TA`` on the remaining classes, ``TA_forget`` on the
forgotten ones together). Target requests (forget one label of a multi-label task everywhere) accumulate as
one request naming every target forgotten so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from excise._registry import check_trusted
from excise.checkpoint import Checkpoint, CheckpointError
from excise.data import DatasetBundle, LabeledData, load_dataset
from excise.metrics.evaluate import EvalViews
from excise.provenance.merkle import merkle_root, sample_sha256
from excise.requests import (
    ForgetRequest,
    RequestError,
    apply_sequence,
    cumulative_target_requests,
    resolve,
    split,
)
from excise.training import TrainConfig


def bundle_for(checkpoint: Checkpoint, root: str | Path | None = None) -> DatasetBundle:
    """Rebuild the data set a checkpoint was trained on, and check it is the same data. ``root``: where its files
    are now, when they moved since (default: the root its sidecar records); the fingerprint still has to match."""
    record = checkpoint.meta.get("dataset")
    if not record:
        raise ValueError(f"checkpoint {str(checkpoint.path)!r} records no data set; it was not trained by excise")
    return recorded_dataset(moved_record(record, root), f"the sidecar of {str(checkpoint.path)!r}", CheckpointError,
                            root_given=root is not None)


def absolute_root(root: str | Path | None) -> str | None:
    """A data directory as a sidecar records it: absolute, ``~`` expanded, so the data is found from anywhere."""
    return None if root is None else str(Path(root).expanduser().resolve())


def moved_record(record: Any, root: str | Path | None) -> Any:
    """A sidecar's data-set record with the data's new ``root`` (absolute), or as it was when ``root`` is None."""
    if root is None or not isinstance(record, dict):
        return record
    return {**record, "root": absolute_root(root)}


def recorded_dataset(record: Any, where: str, error: type[Exception] = ValueError, *,
                     root_given: bool = False) -> DatasetBundle:
    """Rebuild the data set a record describes (``name``, ``seed``, ``options``, ``root``, ``fingerprint``: what a
    sidecar's ``dataset`` and a certificate's ``models.data`` hold) and check it is the same data. ``where`` names
    the file in errors; a malformed record raises ``error``."""
    if not isinstance(record, dict):
        raise error(f"{where}: 'dataset' must be an object, not {type(record).__name__}")
    expected = {"name": str, "seed": int, "options": dict}
    for key, kind in expected.items():
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            raise error(
                f"{where}: dataset.{key}={record.get(key)!r} must be a {kind.__name__} (fields: {sorted(expected)})"
            )
    check_trusted(record["name"], "dataset", where)
    try:
        bundle = load_dataset(record["name"], root=record.get("root"), seed=record["seed"], **record["options"])
    except (FileNotFoundError, ValueError) as err:
        if record.get("root") is None or root_given or not (isinstance(err, FileNotFoundError) or "root" in str(err)):
            raise
        # Say where the directory came from, and how to point at the data where it is now.
        kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
        raise kind(f"{err} (the root {where} records, where the data was when the model was trained; if it has "
                   "moved, pass --root with its new directory)") from err
    if record.get("fingerprint") and bundle.fingerprint() != record["fingerprint"]:
        raise ValueError(
            f"the data set {record['name']!r} now differs from the one {where} records (fingerprint mismatch): "
            "refusing to evaluate against other data"
        )
    return bundle


def served_requests(checkpoint: Checkpoint) -> tuple[list[ForgetRequest], bool]:
    """The requests a checkpoint has served already, oldest first, and whether that history is complete.

    A retrained reference has served the request(s) it was retrained without; a trained model none. An unlearned
    checkpoint written before excise recorded histories knows only its own last request (incomplete), and so
    does every checkpoint continued from it. A sidecar that contradicts itself is refused, naming the field."""
    meta = checkpoint.meta
    kind = meta.get("kind")
    if kind not in ("unlearned", "retrained"):
        return [], True
    where = f"the sidecar of {str(checkpoint.path)!r}"
    if not meta.get("request"):
        raise CheckpointError(f"{where} is of kind {kind!r} but records no 'request'")
    history = meta.get("history")
    complete = True
    if history is None:
        history = [meta["request"]]
        complete = kind == "retrained"  # an unlearned model of an older excise: earlier requests unknown
    elif kind == "unlearned":
        complete = meta.get("history_complete", True) is True
    try:
        if not isinstance(history, list) or not history:
            raise ValueError(f"'history' must be a non-empty list of requests, got {history!r}")
        requests = [ForgetRequest.from_dict(r) for r in history]
        last = ForgetRequest.from_dict(meta["request"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where} records an invalid request history: {err}") from err
    if requests[-1] != last:
        raise CheckpointError(f"{where}: the last entry of 'history' ({requests[-1].describe()!r}) is not its "
                              f"'request' ({last.describe()!r})")
    return requests, complete


def history_warning(checkpoint: Checkpoint, requests: list[ForgetRequest]) -> str:
    """What an incomplete history means for the numbers built on it."""
    if "history" not in checkpoint.meta:
        return (f"{str(checkpoint.path)!r} was written by an excise that did not record request histories: only "
                f"its last request ({_describe(requests)}) is known, so anything forgotten before it is neither "
                "excluded from the retain set nor judged; start from the original model for an exact sequence")
    return (f"the request history of {str(checkpoint.path)!r} is incomplete: it continues a checkpoint written by "
            f"an older excise, so requests served before {requests[0].describe()!r} are unknown and neither "
            "excluded from the retain set nor judged")


def _describe(requests: list[ForgetRequest]) -> str:
    return " then ".join(repr(r.describe()) for r in requests)


def history_views(bundle: DatasetBundle, checkpoint: Checkpoint | None, requests: list[ForgetRequest],
                  earlier: int) -> tuple[EvalViews, LabeledData]:
    """The cumulative views of ``requests`` and the last one's own forget set; an error names the checkpoint's
    history (its first ``earlier`` requests) rather than a sequence the user never wrote."""
    if len(requests) == 1:
        views = EvalViews.from_bundle(bundle, requests[0])
        return views, views.forget_set
    try:
        return cumulative_views(bundle, requests)[-1], step_forget_sets(bundle.train, requests)[-1]
    except RequestError as err:
        if checkpoint is None:
            raise
        raise RequestError(f"{str(checkpoint.path)!r} has already served {_describe(requests[:earlier])}; "
                           f"{requests[-1].describe()!r} cannot follow it: {err}") from err


def _forgotten(data: LabeledData, requests: list[ForgetRequest]) -> tuple[list[int], list[int]]:
    """What ``requests`` forget together on ``data``: (training rows, label columns of ``target`` requests)."""
    rows: set[int] = set()
    labels: set[int] = set()
    for r in requests:
        resolved = resolve(data, r)
        rows |= set(np.asarray(resolved.forget_indices).tolist())
        if r.kind == "target":
            labels |= set(resolved.label_indices)
    return sorted(rows), sorted(labels)


def same_forgotten(data: LabeledData, first: list[ForgetRequest], second: list[ForgetRequest]) -> bool:
    """Whether two lists of requests forget the same on ``data`` together (rows, and a target request's labels):
    ``class:3,5`` and ``class:3`` then ``class:5`` do."""
    return ((first[0].kind == "target") == (second[0].kind == "target")
            and _forgotten(data, first) == _forgotten(data, second))


def check_reference(reference: Checkpoint, original: Checkpoint, request: ForgetRequest | list[ForgetRequest],
                    data: LabeledData, *, allow_mismatch: bool = False) -> list[str]:
    """A retrained reference must be one: trained by excise on the same data without exactly what ``request``
    (or a sequence of requests, together) forgets — compared as resolved on ``data``, so ``class:3`` and
    ``{"kind": "class", "labels": [3]}`` agree, and so do ``class:3`` then ``class:5`` and ``class:3,5`` — and
    trained like the original: the same architecture and arguments, recipe and training seed
    (:func:`reference_differences`). A difference there is refused unless ``allow_mismatch``; the differences
    found are returned, to be recorded beside the numbers they affect."""
    requests = request if isinstance(request, list) else [request]
    where = f"reference {str(reference.path)!r}"
    kind = reference.meta.get("kind")
    if kind != "retrained":
        raise ValueError(f"{where} records kind={kind!r}, not a retrained reference (train one with "
                         "`excise train --request ...`)")
    try:
        retrained_for, _ = served_requests(reference)
        if not retrained_for:
            raise ValueError("it records no request")
    except ValueError as err:
        raise CheckpointError(f"{where} records an invalid request: {err}") from err
    # The data first: a reference from another data set would otherwise be read against this one's classes and
    # fail on a label the user never typed (a new user's `malignant` against the digits' classes).
    fingerprints = []
    for role, checkpoint in (("reference", reference), ("original model", original)):
        record = checkpoint.meta.get("dataset")
        fingerprint = record.get("fingerprint") if isinstance(record, dict) else None
        if not fingerprint:
            raise CheckpointError(
                f"the sidecar of the {role} {str(checkpoint.path)!r} records no dataset.fingerprint, so the "
                "reference cannot be shown to be trained on the original's data; train both with this excise, "
                "or run without --reference")
        fingerprints.append(fingerprint)
    if fingerprints[0] != fingerprints[1]:
        raise ValueError(f"{where} was trained on other data than {str(original.path)!r} (data set fingerprint "
                         f"{str(fingerprints[0])[:12]} vs {str(fingerprints[1])[:12]})")
    if not same_forgotten(data, requests, retrained_for):
        raise ValueError(f"{where} was retrained without {_describe(retrained_for)}, but this run forgets "
                         f"{_describe(requests)}: its metrics are not this request's reference; retrain one with "
                         f"`{retrain_command(original, requests)}`")
    differences = reference_differences(reference, original)
    if differences and not allow_mismatch:
        # Measured: a width-8, 2-epoch reference for a width-32, 20-epoch original gave "avg gap to retrain 22.81";
        # the matching reference gives 3.42.
        raise ValueError(f"{where} was not trained like {str(original.path)!r} ({'; '.join(differences)}): the gap "
                         "to it would measure the difference in training, not in forgetting. Retrain it with the "
                         "original's settings, or pass --allow-reference-mismatch to compare anyway (recorded)")
    return differences


_RECIPE_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "optimizer": "--optimizer",
                 "momentum": "--momentum", "weight_decay": "--weight-decay", "schedule": "--schedule",
                 "augment": "--augment", "crop_padding": "--crop-padding"}
_DERIVED_MODEL_ARGUMENTS = ("in_channels", "num_classes")  # set from the data set by `excise train`


def retrain_command(original: Checkpoint, requests: Sequence[ForgetRequest],
                    out: str = "reference.safetensors") -> str:
    """The `excise train` command that retrains ``original`` without ``requests`` (a sequence: without all of them)
    as its sidecar says it was trained — data set and options, model and arguments, recipe, training and split
    seeds — quoted for a POSIX shell (a super-class's name holds a ``|``). An outside audit ran the bare hint
    `excise train --request subclass:8,3` and got a model of another data set, then one refused as "not trained
    like" the original."""
    import json
    import shlex

    meta = original.meta
    parts = ["excise", "train", "--out", out]
    data = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    if data.get("name"):
        parts += ["--dataset", str(data["name"])]
    for key, value in (data.get("options") or {}).items():
        parts += ["--data-option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    if data.get("root"):
        parts += ["--root", str(data["root"])]
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    if model.get("name"):
        parts += ["--model", str(model["name"])]
    for key, value in (model.get("kwargs") or {}).items():
        if key not in _DERIVED_MODEL_ARGUMENTS:
            parts += ["--model-option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    for key, value in (meta.get("recipe") or {}).items():
        if key in _RECIPE_FLAGS:
            parts += [_RECIPE_FLAGS[key], str(value)]
    seed = training_seed(original)
    if seed is not None:
        parts += ["--seed", str(seed)]
        if data.get("seed") is not None and data["seed"] != seed:
            parts += ["--data-seed", str(data["seed"])]
    for request in requests:
        parts += ["--request", request.describe()]
    return " ".join(shlex.quote(part) for part in parts)


def training_seed(checkpoint: Checkpoint) -> int | None:
    """The seed the weights were trained with (an unlearned checkpoint carries its original's; ``None`` when an
    older sidecar does not say)."""
    meta = checkpoint.meta
    return meta.get("seed") if meta.get("kind") in ("original", "retrained") else meta.get("train_seed")


def reference_differences(reference: Checkpoint, original: Checkpoint) -> list[str]:
    """Each way ``reference`` was trained differently from ``original``, as ``field: value (reference) vs value
    (original)``: the model's name and every argument, every recipe field, the training seed. A field one sidecar
    does not record is not compared."""
    def flat(meta: dict[str, Any]) -> dict[str, Any]:
        model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
        out: dict[str, Any] = {}
        if "name" in model:
            out["model"] = model["name"]
        out.update({key: value for key, value in (model.get("kwargs") or {}).items()})
        recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
        try:  # a sidecar from before a recipe field existed trained with its default: compare it as such
            recipe = TrainConfig.from_dict(recipe).to_dict()
        except (TypeError, ValueError):
            pass
        if recipe.get("augment") == "none":
            recipe.pop("crop_padding", None)  # no crop, so its padding never mattered
        out.update({f"recipe.{key}": value for key, value in recipe.items()})
        return out

    mine, theirs = flat(reference.meta), flat(original.meta)
    mine["seed"], theirs["seed"] = training_seed(reference), training_seed(original)
    return [f"{key}: {mine[key]!r} (reference) vs {theirs[key]!r} (original)"
            for key in dict.fromkeys([*mine, *theirs])
            if key in mine and key in theirs and mine[key] is not None and theirs[key] is not None
            and mine[key] != theirs[key]]


def _test_forget_mask(test: LabeledData, requests: Sequence[ForgetRequest]) -> np.ndarray:
    """Test rows of every class / sub-class forgotten so far (random-sample requests forget no test row), found
    by :func:`excise.requests.resolve` as for one request's test views (a class is a row's label, or its source
    for sequence tasks)."""
    mask = np.zeros(len(test), dtype=bool)
    for request in requests:
        if request.kind == "samples":
            continue
        try:
            mask[resolve(test, ForgetRequest(kind=request.kind, labels=request.labels)).forget_indices] = True
        except RequestError as err:
            if "selects no training sample" not in str(err):  # a class with no test row forgets none
                raise
    return mask


def cumulative_views(bundle: DatasetBundle, requests: Sequence[ForgetRequest]) -> list[EvalViews]:
    """One :class:`EvalViews` per step: cumulative forget/retain sets, test views of the classes so far.

    For ``target`` requests step ``k``'s views are exactly those of one request naming every target forgotten so
    far (:func:`excise.requests.cumulative_target_requests`), that request included: evaluators read the
    forgotten classes from it. The step's own request is the one handed to the method."""
    if any(r.kind == "target" for r in requests):
        return [EvalViews.from_bundle(bundle, together)
                for together in cumulative_target_requests(requests, bundle.train.classes)]
    splits = apply_sequence(bundle.train, requests)
    views = []
    for k, (forget_set, retain_set) in enumerate(splits):
        mask = _test_forget_mask(bundle.test, requests[: k + 1])
        test_forget = bundle.test.subset(np.flatnonzero(mask)) if mask.any() else None
        test_retain = bundle.test.subset(np.flatnonzero(~mask))
        views.append(EvalViews(forget_set, retain_set, test_retain, test_forget, requests[k], tuple(requests[: k + 1])))
    return views


def step_forget_sets(train: LabeledData, requests: Sequence[ForgetRequest]) -> list[LabeledData]:
    """What a method unlearns at each step: the training rows the step newly forgets (rows an earlier step
    already forgot are not handed over again; a step with none is refused). For ``target`` requests: the
    forget view of the step's own target(s) — every instance that carries them, only their labels visible."""
    if any(r.kind == "target" for r in requests):
        cumulative_target_requests(requests, train.classes)  # refuses a step that forgets no new target
        return [split(train, request)[0] for request in requests]
    forgotten = np.zeros(len(train), dtype=bool)
    out = []
    for k, request in enumerate(requests):
        rows = resolve(train, request).forget_indices
        new = rows[~forgotten[rows]]
        if len(new) == 0:
            # Numbered from 1, as certificates and ledgers number steps. A random draw is seeded by the request's
            # own seed, not the run's --seed: the same fraction twice draws the same rows (an outside audit).
            again = (f"; a random draw is seeded by the request's own seed, so the same fraction draws the same rows "
                     f"again: give another, e.g. samples:fraction={request.fraction},seed={request.seed + 1}"
                     if request.kind == "samples" and request.fraction is not None else "")
            raise RequestError(
                f"step {k + 1} ({request.describe()!r}) forgets nothing that earlier steps of the sequence did not "
                f"already forget{again}"
            )
        forgotten[rows] = True
        out.append(train.subset(new))
    return out



def forgotten_rows(bundle: DatasetBundle, requests: Sequence[ForgetRequest]) -> np.ndarray:
    """The training rows ``requests`` select together (what a deletion certificate lists)."""
    return np.unique(np.concatenate([np.asarray(resolve(bundle.train, r).forget_indices) for r in requests]))


def forget_commitment(train: LabeledData, indices: Sequence[int] | np.ndarray) -> tuple[list[int], list[str], str]:
    """``(sorted rows, their content hashes, Merkle root)`` of the training rows ``indices``
    (:mod:`excise.provenance.merkle`)."""
    rows = sorted(int(i) for i in indices)
    hashes = [sample_sha256(train, i) for i in rows]
    return rows, hashes, merkle_root(rows, hashes)
