"""Forget requests: what a user asks the model to forget, validated before anything runs.

Four kinds, one type:

- ``samples``: explicit training-set ``indices``, or a random ``fraction`` drawn with ``seed``;
- ``class``: every training sample of one (or several) classes, ``labels``;
- ``subclass``: every sample of a fine class inside its super-class (the model predicts the coarse
  class; CIFAR-100 fine label inside CIFAR-20), ``labels`` name the fine classes;
- ``target``: one label of a multi-label task, forgotten in every instance that carries it while the
  instance's other labels are kept. ``split`` returns label masks: the forget view is *about* the
  forgotten columns, the retain view about the remaining ones.

A request is checked twice: on construction for what it says on its own (kind, fraction, index
signs), and against a data set in :func:`split` (out-of-range index, unknown class, task mismatch,
empty forget set). Every refusal names the field, the bad value and what was allowed.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from excise._files import DuplicateKeyError, read_json_or_yaml, refuse_duplicate_json_keys
from excise.data.base import CLASS_TARGETS, LabeledData, _resolve_label, load_task

KINDS: tuple[str, ...] = ("samples", "class", "subclass", "target")


class RequestError(ValueError):
    """A forget request that cannot be served; the message names the field and what was expected."""


def _integer_indices(indices: object) -> tuple[int, ...]:
    """Training-set indices as ints; anything that is not an integer is refused rather than truncated
    (``int(1.7)`` would silently forget sample 1)."""
    if isinstance(indices, torch.Tensor | np.ndarray):
        indices = indices.tolist()
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
        raise RequestError(f"indices={indices!r} must be a list of integer training-set indices")
    for position, index in enumerate(indices):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise RequestError(f"indices[{position}]={index!r} must be an integer training-set index")
    return tuple(int(i) for i in indices)


def _scalar_or_list(value: object) -> object:
    """numpy/torch values as the Python values they hold (a 0-d array gives a scalar), anything else as is."""
    if isinstance(value, torch.Tensor | np.ndarray | np.generic):
        return value.tolist()
    return value


@dataclass(frozen=True)
class ForgetRequest:
    kind: str
    indices: tuple[int, ...] | None = None
    fraction: float | None = None
    labels: tuple[str | int, ...] = ()
    seed: int = 0
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RequestError(f"kind={self.kind!r} is not a request kind; allowed: {list(KINDS)}")
        labels = _scalar_or_list(self.labels)
        if isinstance(labels, (str, int, np.integer)):
            labels = (labels,)
        # bytes is a Sequence of ints: b"3" would silently become class 51.
        if isinstance(labels, (bytes, bytearray)) or not isinstance(labels, Sequence):
            raise RequestError(f"labels={labels!r} must be a class name/index or a list of them (a list, so the "
                               "order is defined: not a set or mapping)")
        for position, label in enumerate(labels):
            if isinstance(label, bool) or not isinstance(label, (str, int, np.integer)):
                raise RequestError(f"labels[{position}]={label!r} must be a class name or an integer class index")
        object.__setattr__(self, "labels", tuple(int(x) if isinstance(x, np.integer) else x for x in labels))
        seed = _scalar_or_list(self.seed)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise RequestError(f"seed={self.seed!r} must be an integer")
        object.__setattr__(self, "seed", int(seed))  # np.int64 would not serialise to JSON
        if self.indices is not None:
            object.__setattr__(self, "indices", _integer_indices(self.indices))
        if self.kind == "samples":
            if (self.indices is None) == (self.fraction is None):
                raise RequestError(
                    "a 'samples' request needs exactly one of indices (explicit training-set indices) "
                    f"or fraction (a random share in (0, 1)); got indices={self.indices!r}, "
                    f"fraction={self.fraction!r}"
                )
            if self.labels:
                raise RequestError(f"labels={list(self.labels)!r} has no meaning for kind='samples'")
            if self.fraction is not None:
                fraction = _scalar_or_list(self.fraction)
                if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, (int, float, np.number)):
                    raise RequestError(f"fraction={self.fraction!r} must be a number in (0, 1)")
                object.__setattr__(self, "fraction", float(fraction))
                if not 0.0 < float(self.fraction) < 1.0:
                    raise RequestError(f"fraction={self.fraction!r} is outside (0, 1)")
            if self.indices is not None:
                if len(self.indices) == 0:
                    raise RequestError("indices=[] is empty: the forget set would be empty")
                negative = [i for i in self.indices if i < 0]
                if negative:
                    raise RequestError(f"indices contains negative values {negative[:5]}; expected >= 0")
                if len(set(self.indices)) != len(self.indices):
                    raise RequestError("indices contains duplicates; each sample can be forgotten once")
        else:
            if self.indices is not None or self.fraction is not None:
                raise RequestError(
                    f"indices/fraction belong to kind='samples'; kind={self.kind!r} names labels instead"
                )
            if not self.labels:
                raise RequestError(f"kind={self.kind!r} needs labels (the class names or indices to forget)")
            if len(set(self.labels)) != len(self.labels):
                # Recorded as asked (class:3,3) in the history and the certificate, which then read as two requests.
                raise RequestError(f"labels={list(self.labels)!r} contains duplicates; name each class once")

    # --- constructors ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ForgetRequest:
        if not isinstance(spec, Mapping):
            raise RequestError(f"a request must be a mapping with a 'kind' key, got {type(spec).__name__}")
        allowed = {"kind", "indices", "fraction", "labels", "label", "seed", "name"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise RequestError(f"unknown request field(s) {unknown}; allowed: {sorted(allowed)}")
        if "kind" not in spec:
            raise RequestError(f"request is missing 'kind'; allowed kinds: {list(KINDS)}")
        data = dict(spec)
        if "label" in data:
            if "labels" in data:
                raise RequestError("give either 'label' or 'labels', not both")
            data["labels"] = (data.pop("label"),)
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> ForgetRequest:
        """Read a request from a ``.json`` or ``.yaml``/``.yml`` file."""
        return cls.from_dict(read_json_or_yaml(Path(path), "request file", RequestError))

    @classmethod
    def parse(cls, text: str) -> ForgetRequest:
        """Parse the CLI shorthand: ``class:3``, ``subclass:7``, ``target:2``, ``samples:fraction=0.1`` (or
        ``samples:0.1``; ``samples:fraction=0.1,seed=1`` for another random draw of that size),
        ``samples:indices=0,5,9`` (or ``samples:0,5,9``), a path to a JSON/YAML file, or inline JSON. A lone
        ``samples:0`` or ``samples:1`` is refused as ambiguous."""
        text = text.strip()
        if text.startswith("{"):
            try:
                return cls.from_dict(json.loads(text, object_pairs_hook=refuse_duplicate_json_keys))
            except DuplicateKeyError as err:
                raise RequestError(f"request {text!r}: {err}") from err
            except json.JSONDecodeError as err:
                raise RequestError(f"request {text!r} is not valid JSON: {err}") from err
        if Path(text).suffix in (".json", ".yaml", ".yml"):
            return cls.from_file(text)
        kind, sep, value = text.partition(":")
        if not sep or not value:
            raise RequestError(
                f"request {text!r} is not of the form KIND:VALUE (e.g. class:3, samples:fraction=0.1, "
                "samples:indices=0,5,9, subclass:7, target:2) nor a .json/.yaml file"
            )
        if kind == "samples":
            drawn = re.fullmatch(r"(.+?),\s*seed=(.*)", value)
            if drawn:  # samples:fraction=0.1,seed=1: another random draw of the same size (a calibration proxy)
                try:
                    seed = int(drawn.group(2))
                except ValueError as err:
                    raise RequestError(f"seed={drawn.group(2)!r} in request {text!r} must be an integer") from err
                spelled, _, rest = drawn.group(1).partition("=")
                share = rest if spelled == "fraction" else drawn.group(1)
                if spelled == "indices" or "," in share or not any(c in share for c in ".eE"):
                    raise RequestError(f"request {text!r}: seed= draws a random fraction (samples:fraction=0.1,"
                                       "seed=1); given indices are not drawn")
                return replace(cls._samples(share, as_fraction=True), seed=seed)
            spelled, equals, rest = value.partition("=")
            if equals and spelled.strip() in ("fraction", "indices"):
                if not rest.strip():
                    raise RequestError(f"request {text!r}: {spelled.strip()}= is empty (e.g. samples:indices=0,5,9 "
                                       "or samples:fraction=0.1)")
                return cls._samples(rest, as_fraction=spelled.strip() == "fraction")
            if equals and spelled.strip() == "seed":
                raise RequestError(f"request {text!r}: seed= goes after a fraction, as samples:fraction=0.1,"
                                   f"seed={rest.strip() or 1}: another random draw of that size")
            if "," not in value and value.strip() in ("0", "1"):
                # samples:1 read as "training index 1" while samples:1.0 or samples:0.0 mean a share of the set.
                raise RequestError(
                    f"request {text!r} is ambiguous: write samples:indices={value.strip()} to forget the training "
                    f"sample with index {value.strip()}, or samples:fraction=0.1 (say) to forget a random share "
                    "of the training set (a fraction lies strictly between 0 and 1)")
            return cls._samples(value, as_fraction="," not in value and any(c in value for c in ".eE"))
        return cls(kind=kind, labels=tuple(v.strip() for v in value.split(",")))

    @classmethod
    def _samples(cls, value: str, *, as_fraction: bool) -> ForgetRequest:
        if as_fraction:
            try:
                return cls(kind="samples", fraction=float(value))
            except ValueError as err:
                if "could not convert" in str(err):
                    raise RequestError(f"fraction={value!r} is not a number") from err
                raise
        try:
            indices = tuple(int(v) for v in value.split(","))
        except ValueError as err:
            raise RequestError(f"indices={value!r} must be comma-separated integers") from err
        return cls(kind="samples", indices=indices)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["indices"] = None if self.indices is None else list(self.indices)
        return {k: v for k, v in d.items() if v is not None and v != []}

    def describe(self) -> str:
        if self.name:
            return self.name
        if self.kind == "samples":
            if self.fraction is not None:
                return f"samples:fraction={self.fraction}" + (f",seed={self.seed}" if self.seed else "")
            # The spelling `parse` reads back, when it is short enough to be read; else how many rows it names.
            if len(self.indices) <= 10:
                return f"samples:indices={','.join(str(i) for i in self.indices)}"
            return f"samples: {len(self.indices)} given training indices"
        return f"{self.kind}:{','.join(str(x) for x in self.labels)}"


@dataclass
class ResolvedRequest:
    """A request checked against one data set: the class indices it names and its forget rows."""

    request: ForgetRequest
    forget_indices: np.ndarray
    label_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class TargetSplitter:
    """How a ``target`` request splits a task whose targets are not multi-hot columns (a dense task).

    ``presence(data)`` is the ``N x K`` bool matrix of which classes each instance carries;
    ``drop(data, labels)`` returns the same rows with those classes removed from the targets (and from
    any extras that name them) — the retain view, what the retrained reference trains on.
    """

    presence: Callable[[LabeledData], torch.Tensor]
    drop: Callable[[LabeledData, tuple[int, ...]], LabeledData]


_TARGET_SPLITTERS: dict[str, TargetSplitter] = {}


def register_target_splitter(task: str, splitter: TargetSplitter) -> None:
    """Let ``target`` requests serve ``task`` (segmentation, detection): see :func:`split`."""
    _TARGET_SPLITTERS[task] = splitter


def resolve(data: LabeledData, request: ForgetRequest) -> ResolvedRequest:
    """Check ``request`` against ``data`` and find the training rows it names."""
    load_task(data.task)  # a dense task registers its target splitter when first used
    n = len(data)
    if request.kind == "target" and data.task != "multilabel" and data.task not in _TARGET_SPLITTERS:
        raise RequestError(
            f"kind='target' forgets one label of a multi-label task, but data set {data.name!r} is "
            f"{data.task}; use kind='class' to forget a whole class"
        )
    by_class_targets = request.kind == "class" and data.task != "multiclass" and CLASS_TARGETS in data.extras
    if request.kind in ("class", "subclass") and data.task != "multiclass" and not by_class_targets:
        raise RequestError(
            f"kind={request.kind!r} needs a single-label (multiclass) data set; {data.name!r} is {data.task} "
            "— use kind='target' to forget one of its labels"
        )
    if request.kind == "samples":
        if request.indices is not None:
            bad = [i for i in request.indices if i >= n]
            if bad:
                raise RequestError(f"indices {bad[:5]} are out of range: the training set has {n} samples (0..{n - 1})")
            forget = np.asarray(sorted(request.indices), dtype=np.int64)
        else:
            count = int(round(request.fraction * n))
            if count == 0:
                raise RequestError(f"fraction={request.fraction} of {n} samples selects no sample")
            rng = np.random.default_rng(request.seed)
            forget = np.sort(rng.choice(n, size=count, replace=False))
        return ResolvedRequest(request, forget)
    if request.kind == "class":
        labels = tuple(_class_label(lbl, data) for lbl in request.labels)
        owners = data.extras[CLASS_TARGETS] if by_class_targets else data.targets
        forget = np.flatnonzero(np.isin(owners.numpy(), labels))
    elif request.kind == "subclass":
        if data.subclass_targets is None:
            raise RequestError(
                f"kind='subclass' needs a data set with super-classes (fine labels inside coarse ones); "
                f"{data.name!r} has none — try 'digits-super' or 'cifar20'"
            )
        labels = tuple(_resolve_label(lbl, data.subclasses, "labels", "fine class") for lbl in request.labels)
        forget = np.flatnonzero(np.isin(data.subclass_targets.numpy(), labels))
    else:
        labels = tuple(_resolve_label(lbl, data.classes, "labels", "target") for lbl in request.labels)
        if len(set(labels)) == data.num_classes:
            raise RequestError("kind='target' cannot forget every target: at least one must remain")
        if data.task in _TARGET_SPLITTERS:
            present = _TARGET_SPLITTERS[data.task].presence(data)
            forget = np.flatnonzero(present[:, list(labels)].numpy().any(axis=1))
        else:
            forget = np.flatnonzero(data.targets[:, list(labels)].numpy().max(axis=1) > 0.5)
    if len(forget) == 0:
        raise RequestError(f"request {request.describe()!r} selects no training sample: the forget set is empty")
    if request.kind != "target" and len(forget) == n:
        raise RequestError(f"request {request.describe()!r} selects every training sample: nothing would remain")
    if request.kind == "class" and not by_class_targets and data.num_classes - len(set(labels)) == 1:
        # Served as asked, but a user should know what the reference is (a new user's breast-cancer model: the
        # retrained model predicted "benign" for every input, and a method matching it had a gap of 0.00).
        warnings.warn(f"request {request.describe()!r} leaves a single class: a model retrained without it predicts "
                      f"that class for every input, so the retained accuracies are 100 by construction and the "
                      "gap to retrain says little", UserWarning, stacklevel=2)
    return ResolvedRequest(request, forget, labels)


def _class_label(label: str | int, data: LabeledData) -> int:
    """A ``class`` request's label as a class index — refused when, on a data set with super-classes, the text names
    no class but a fine class: read as an index it would be another super-class's (an outside audit's `class:3` on
    digits-super forgot super-class 3, "3|8", all 8s included, under the record `class:3`)."""
    text = str(label)
    if (not isinstance(label, (int, np.integer)) and data.subclasses and text not in data.classes
            and text in data.subclasses):
        parent = data.classes[data.subclass_parent[list(data.subclasses).index(text)]]
        raise RequestError(f"labels={text!r} names a fine class of this data set (inside the super-class {parent!r}), "
                           f"not a class: forget it with subclass:{text}; to forget the whole super-class, name it "
                           f"(class:{parent})")
    return _resolve_label(label, data.classes, "labels")


def named_classes(data: LabeledData, request: ForgetRequest) -> tuple[int, ...]:
    """The classes a ``class`` request names on ``data`` (for a ``subclass`` request, its fine classes; for any
    other, none), as indices — read from the request, not from the rows it selects, which after a sequence hold
    rows of other classes too."""
    if request.kind == "class":
        return tuple(_class_label(label, data) for label in request.labels)
    if request.kind == "subclass" and data.subclasses:
        return tuple(_resolve_label(label, data.subclasses, "labels", "fine class") for label in request.labels)
    return ()


def split(data: LabeledData, request: ForgetRequest) -> tuple[LabeledData, LabeledData]:
    """``(forget_set, retain_set)`` of ``data`` for ``request``.

    For ``samples``, ``class`` and ``subclass`` the two sets partition the rows. For ``target`` the
    forget set is every instance that carries a forgotten target, with ``label_mask`` selecting only the
    forgotten columns and the other columns' labels hidden (0), and the retain set is *every* instance
    with ``label_mask`` selecting the remaining columns: the other labels of a forgotten instance are
    still to be known. Tasks with a registered :class:`TargetSplitter` (segmentation, detection) define
    their own retain view, see ``excise.tasks``.
    """
    resolved = resolve(data, request)
    if request.kind == "target" and data.task in _TARGET_SPLITTERS:
        # Dense tasks: the forget view is the instances that carry the class, with their original targets and
        # a label mask naming the forgotten class(es); the retain view is every instance with the class removed
        # (its pixels relabelled background, its boxes dropped).
        forget_set = data.subset(resolved.forget_indices)
        forget_set.label_mask = torch.zeros(len(forget_set), data.num_classes, dtype=torch.bool)
        forget_set.label_mask[:, list(resolved.label_indices)] = True
        return forget_set, _TARGET_SPLITTERS[data.task].drop(data.subset(np.arange(len(data))),
                                                             tuple(resolved.label_indices))
    if request.kind != "target":
        keep = np.ones(len(data), dtype=bool)
        keep[resolved.forget_indices] = False
        return data.subset(resolved.forget_indices), data.subset(np.flatnonzero(keep))
    forgotten = torch.zeros(data.num_classes, dtype=torch.bool)
    forgotten[list(resolved.label_indices)] = True
    base = data.label_mask if data.label_mask is not None else torch.ones(len(data), data.num_classes, dtype=torch.bool)
    forget_mask = base & forgotten
    retain_mask = base & ~forgotten
    forget_set = data.subset(resolved.forget_indices)
    forget_set.label_mask = forget_mask[torch.as_tensor(resolved.forget_indices)]
    # The forget view carries only the forgotten labels: the remaining ones are retain data, which a forget-only
    # method must not be able to read. They are set to 0 (absent), not NaN, so a masked loss stays finite.
    forget_set.targets = forget_set.targets.clone()
    forget_set.targets[:, ~forgotten] = 0
    retain_set = data.subset(np.arange(len(data)))
    retain_set.label_mask = retain_mask
    return forget_set, retain_set


def split_test(test: LabeledData, request: ForgetRequest) -> tuple[LabeledData | None, LabeledData]:
    """Test-set views for a request: ``(test_forget, test_retain)``.

    For class/sub-class requests the test samples of the forgotten (sub)class, and the rest; for
    ``samples`` there is no forgotten test population (``None``, the whole test set); for ``target``
    the test instances carrying the target (labels masked as in :func:`split`) and the full test set
    with the remaining columns.
    """
    if request.kind == "samples":
        return None, test
    proxy = ForgetRequest(kind=request.kind, labels=request.labels)
    try:
        return split(test, proxy)
    except RequestError as err:
        if "selects no training sample" in str(err):
            return None, test
        raise


def cumulative_target_requests(requests: Sequence[ForgetRequest], classes: Sequence[str]) -> list[ForgetRequest]:
    """For a sequence of ``target`` requests: after step ``k``, one request forgetting every target named so far.

    A target is a label column, not a set of rows: a step is judged (and its reference retrained) as if every
    target forgotten so far had been forgotten together. A step that names a target an earlier step forgot is
    refused: its forget view would hand that target over again, as a row-level step never hands a row over
    twice."""
    if any(r.kind != "target" for r in requests):
        kinds = sorted({r.kind for r in requests})
        raise RequestError(f"a sequence mixing kind='target' with other kinds ({kinds}) is not supported: a target "
                           "request forgets a label column, the others forget rows")
    cumulative: list[ForgetRequest] = []
    gone: list[int] = []
    for k, request in enumerate(requests):
        try:
            labels = [_resolve_label(label, classes, "labels", "target") for label in request.labels]
        except ValueError as err:
            raise RequestError(f"request {k} ({request.describe()!r}): {err}") from None
        again = [classes[label] for label in dict.fromkeys(labels) if label in gone]
        if again:
            # Its forget view would hand the earlier target over a second time (rows are never handed over twice
            # either); with nothing new it would forget nothing.
            raise RequestError(f"request {k} ({request.describe()!r}) names target(s) {again} that an earlier request "
                               "of the sequence already forgot; name only targets not forgotten yet")
        gone += list(dict.fromkeys(labels))
        cumulative.append(ForgetRequest(kind="target", labels=tuple(classes[t] for t in gone), seed=request.seed))
    return cumulative


def apply_sequence(data: LabeledData, requests: Sequence[ForgetRequest]) -> list[tuple[LabeledData, LabeledData]]:
    """Cumulative ``(forget_set, retain_set)`` after each request of a sequence (sequential unlearning).

    Step ``k``'s forget set is everything asked to be forgotten by requests ``0..k``: the retrained
    reference for step ``k`` is trained on what remains after all of them. For ``target`` requests that is
    the split of one request naming every target forgotten so far (:func:`cumulative_target_requests`).
    """
    if not requests:
        raise RequestError("a request sequence needs at least one request")
    if any(r.kind == "target" for r in requests):
        return [split(data, request) for request in cumulative_target_requests(requests, data.classes)]
    out = []
    forgotten = np.zeros(len(data), dtype=bool)
    for request in requests:
        forgotten[resolve(data, request).forget_indices] = True
        if forgotten.all():
            raise RequestError("the request sequence forgets every training sample: nothing would remain")
        out.append((data.subset(np.flatnonzero(forgotten)), data.subset(np.flatnonzero(~forgotten))))
    return out
