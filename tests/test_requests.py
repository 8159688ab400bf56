import json

import numpy as np
import pytest
import torch

from excise.data import LabeledData
from excise.requests import ForgetRequest, RequestError, apply_sequence, split, split_test


def test_unknown_kind_is_refused_with_allowed_kinds():
    with pytest.raises(RequestError, match=r"kind='everything'.*allowed: \['samples', 'class', 'subclass', 'target'\]"):
        ForgetRequest(kind="everything", labels=(1,))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(RequestError, match=rf"fraction={fraction!r} is outside \(0, 1\)"):
        ForgetRequest(kind="samples", fraction=fraction)


def test_samples_needs_exactly_one_of_indices_or_fraction():
    with pytest.raises(RequestError, match="exactly one of indices"):
        ForgetRequest(kind="samples")
    with pytest.raises(RequestError, match="exactly one of indices"):
        ForgetRequest(kind="samples", indices=(1,), fraction=0.1)


def test_empty_and_negative_indices_are_refused():
    with pytest.raises(RequestError, match="indices=\\[\\] is empty"):
        ForgetRequest(kind="samples", indices=())
    with pytest.raises(RequestError, match="negative values \\[-3\\]"):
        ForgetRequest(kind="samples", indices=(1, -3))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "samples", "indices": [0.5, 1.7]}, r"indices\[0\]=0.5 must be an integer"),
        ({"kind": "samples", "indices": [2, True]}, r"indices\[1\]=True must be an integer"),
        ({"kind": "samples", "indices": 5}, "indices=5 must be a list of integer"),
        ({"kind": "samples", "indices": "0,5"}, "indices='0,5' must be a list of integer"),
        ({"kind": "class", "labels": [[1, 2]]}, r"labels\[0\]=\[1, 2\] must be a class name"),
        ({"kind": "class", "labels": [3], "seed": "abc"}, "seed='abc' must be an integer"),
    ],
)
def test_request_fields_of_the_wrong_type_are_refused_not_coerced(spec, message):
    """A deletion request must never be silently reinterpreted: int(1.7) would forget sample 1."""
    with pytest.raises(RequestError, match=message):
        ForgetRequest.from_dict(spec)


def test_numpy_and_torch_indices_and_scientific_fractions_are_accepted():
    import numpy as np

    assert ForgetRequest(kind="samples", indices=np.array([4, 2])).indices == (4, 2)
    assert ForgetRequest(kind="samples", indices=torch.tensor([3])).indices == (3,)
    assert ForgetRequest.parse("samples:1e-1").fraction == 0.1


def test_array_and_numpy_scalar_labels_and_seeds_are_accepted_and_serialise():
    """Labels and seeds often come out of numpy/torch code; they are taken as the ints they hold, and the
    request still serialises to JSON (np.int64 would not)."""
    expected = ForgetRequest(kind="class", labels=(5, 3), seed=7)
    for labels in (np.array([5, 3]), torch.tensor([5, 3]), [np.int64(5), np.int32(3)]):
        request = ForgetRequest(kind="class", labels=labels, seed=np.int64(7))
        assert request == expected and type(request.seed) is int
        assert all(type(label) is int for label in request.labels)
        assert json.loads(json.dumps(request.to_dict())) == {"kind": "class", "labels": [5, 3], "seed": 7}
    assert ForgetRequest(kind="class", labels=np.int64(3)).labels == (3,)
    assert ForgetRequest(kind="target", labels=torch.tensor(2)).labels == (2,)
    assert ForgetRequest.from_dict({"kind": "class", "labels": np.array([3])}).labels == (3,)
    with pytest.raises(RequestError, match=r"labels\[0\]=0.5 must be a class name"):
        ForgetRequest(kind="class", labels=np.array([0.5]))
    assert ForgetRequest(kind="class", labels=[3], seed=np.array(4)).seed == 4
    assert ForgetRequest(kind="samples", fraction=torch.tensor(0.25)).fraction == 0.25
    assert type(ForgetRequest(kind="samples", fraction=np.float32(0.5)).fraction) is float


@pytest.mark.parametrize("labels", [b"3", {3, 5}, {"a": 1}])
def test_labels_that_are_bytes_sets_or_mappings_are_refused(labels):
    """b"3" is a sequence of ints (it would forget class 51); a set has no order to record."""
    with pytest.raises(RequestError, match="must be a class name/index or a list of them"):
        ForgetRequest(kind="class", labels=labels)


def test_out_of_range_index_is_refused_against_the_data(digits):
    n = len(digits.train)
    with pytest.raises(RequestError, match=rf"indices \[{n}\] are out of range.*{n} samples"):
        split(digits.train, ForgetRequest(kind="samples", indices=(0, n)))


def test_unknown_class_name_lists_known_classes(digits):
    with pytest.raises(ValueError, match=r"labels='cat' is not a known class; known: \['0', '1'"):
        split(digits.train, ForgetRequest(kind="class", labels=("cat",)))
    with pytest.raises(ValueError, match=r"labels=12 is out of range"):
        split(digits.train, ForgetRequest(kind="class", labels=(12,)))


def test_target_request_on_single_label_task_is_refused(digits):
    with pytest.raises(RequestError, match="kind='target' forgets one label of a multi-label task.*multiclass"):
        split(digits.train, ForgetRequest(kind="target", labels=("3",)))


def test_subclass_request_needs_super_classes(digits):
    with pytest.raises(RequestError, match="kind='subclass' needs a data set with super-classes"):
        split(digits.train, ForgetRequest(kind="subclass", labels=("3",)))


def test_empty_forget_set_is_refused():
    data = LabeledData(torch.zeros(4, 1, 2, 2), torch.tensor([0, 0, 1, 1]), classes=("a", "b", "c"))
    with pytest.raises(RequestError, match="selects no training sample: the forget set is empty"):
        split(data, ForgetRequest(kind="class", labels=("c",)))


def test_class_split_partitions_the_training_set(digits):
    forget, retain = split(digits.train, ForgetRequest(kind="class", labels=("3",)))
    assert (forget.targets == 3).all() and not (retain.targets == 3).any()
    assert len(forget) + len(retain) == len(digits.train)
    both = torch.cat([forget.source_indices, retain.source_indices]).sort().values
    assert torch.equal(both, torch.arange(len(digits.train)))


def test_random_fraction_is_seeded(digits):
    a, _ = split(digits.train, ForgetRequest(kind="samples", fraction=0.1, seed=1))
    b, _ = split(digits.train, ForgetRequest(kind="samples", fraction=0.1, seed=1))
    c, _ = split(digits.train, ForgetRequest(kind="samples", fraction=0.1, seed=2))
    assert torch.equal(a.source_indices, b.source_indices)
    assert not torch.equal(a.source_indices, c.source_indices)
    assert len(a) == round(0.1 * len(digits.train))


def test_subclass_split_keeps_coarse_targets(digits_super):
    forget, retain = split(digits_super.train, ForgetRequest(kind="subclass", labels=("8",)))
    assert (forget.subclass_targets == 8).all()
    assert (forget.targets == 3).all()  # digit 8 lives in super-class 8 % 5
    assert (retain.targets == 3).any()  # its sibling digit 3 stays in the same super-class
    test_forget, test_retain = split_test(digits_super.test, ForgetRequest(kind="subclass", labels=("8",)))
    assert (test_forget.subclass_targets == 8).all() and not (test_retain.subclass_targets == 8).any()


def test_target_split_masks_labels_per_instance():
    targets = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.float)
    data = LabeledData(torch.zeros(4, 1, 2, 2), targets, classes=("a", "b", "c"), task="multilabel")
    forget, retain = split(data, ForgetRequest(kind="target", labels=("a",)))
    assert forget.source_indices.tolist() == [0, 2]
    assert forget.label_mask.tolist() == [[True, False, False]] * 2
    # The forget view cannot leak the remaining labels (retain data) to a forget-only method.
    assert forget.targets.tolist() == [[1, 0, 0], [1, 0, 0]]
    assert targets[2].tolist() == [1, 0, 1]  # the data set itself is untouched
    assert len(retain) == 4  # every instance keeps its other labels
    assert retain.label_mask.tolist() == [[False, True, True]] * 4
    with pytest.raises(RequestError, match="cannot forget every target"):
        split(data, ForgetRequest(kind="target", labels=("a", "b", "c")))


def test_request_from_json_yaml_and_cli_shorthand(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"kind": "class", "label": "3"}))
    (tmp_path / "r.yaml").write_text("kind: samples\nfraction: 0.2\nseed: 4\n")
    assert ForgetRequest.from_file(tmp_path / "r.json") == ForgetRequest(kind="class", labels=("3",))
    assert ForgetRequest.from_file(tmp_path / "r.yaml") == ForgetRequest(kind="samples", fraction=0.2, seed=4)
    (tmp_path / "e.yaml").write_text("kind: samples\nfraction: 1e-1\n")  # YAML 1.1 alone would read a string
    assert ForgetRequest.from_file(tmp_path / "e.yaml").fraction == 0.1
    assert ForgetRequest.parse("samples:0,5,9").indices == (0, 5, 9)
    assert ForgetRequest.parse("samples:0.1").fraction == 0.1
    assert ForgetRequest.parse("target:2").labels == ("2",)
    with pytest.raises(RequestError, match="unknown request field\\(s\\) \\['colour'\\]"):
        ForgetRequest.from_dict({"kind": "class", "labels": [1], "colour": "red"})
    with pytest.raises(RequestError, match="not of the form KIND:VALUE"):
        ForgetRequest.parse("forget-three")
    with pytest.raises(RequestError, match="does not exist"):
        ForgetRequest.from_file(tmp_path / "missing.yaml")


def test_samples_shorthand_is_unmistakable():
    """samples:1 was read as "training index 1" and samples:1.0 as a fraction: explicit spellings now exist, a
    lone 0 or 1 is refused naming both, and a request describes itself in a spelling parse reads back."""
    assert ForgetRequest.parse("samples:indices=1").indices == (1,)
    assert ForgetRequest.parse("samples:indices=0,5,9").indices == (0, 5, 9)
    assert ForgetRequest.parse("samples:fraction=0.1").fraction == 0.1
    for lone in ("samples:0", "samples:1", "samples: 1"):
        with pytest.raises(RequestError, match=r"ambiguous: write samples:indices=\d .* or samples:fraction=0\.1"):
            ForgetRequest.parse(lone)
    with pytest.raises(RequestError, match="fraction='x' is not a number"):
        ForgetRequest.parse("samples:fraction=x")
    with pytest.raises(RequestError, match="outside"):
        ForgetRequest.parse("samples:fraction=1")
    for request in (ForgetRequest.parse("samples:indices=1"), ForgetRequest.parse("samples:0.25"),
                    ForgetRequest.parse("samples:3,4")):
        assert ForgetRequest.parse(request.describe()) == request
    assert ForgetRequest(kind="samples", indices=tuple(range(50))).describe() == "samples: 50 given training indices"
    # Another random draw of the same size (a calibration proxy), in the spelling `excise calibrate --help` shows.
    drawn = ForgetRequest.parse("samples:fraction=0.1,seed=1")
    assert (drawn.fraction, drawn.seed) == (0.1, 1) and drawn != ForgetRequest.parse("samples:fraction=0.1")
    assert ForgetRequest.parse(drawn.describe()) == drawn and ForgetRequest.parse("samples:0.1, seed=1") == drawn
    with pytest.raises(RequestError, match="seed='x' .* must be an integer"):
        ForgetRequest.parse("samples:fraction=0.1,seed=x")
    with pytest.raises(RequestError, match="given indices are not drawn"):
        ForgetRequest.parse("samples:indices=3,4,seed=1")


def test_label_errors_say_what_the_labels_are(digits_super):
    from excise.data import load_dataset
    from excise.requests import resolve

    with pytest.raises(ValueError, match="labels='eleven' is not a known fine class"):
        resolve(digits_super.train, ForgetRequest(kind="subclass", labels=("eleven",)))
    # "3" names no class of digits-super but a fine class: read as an index it was super-class 3, "3|8", and the
    # user asking to forget digit 3 lost the 8s too (outside audit); "8" was refused without the way out.
    for fine in ("3", "8"):
        with pytest.raises(RequestError, match=rf"labels='{fine}' names a fine class of this data set \(inside the "
                                               rf"super-class '3\|8'\), not a class: forget it with subclass:{fine}"):
            resolve(digits_super.train, ForgetRequest.parse(f"class:{fine}"))
    # An int is an index.
    assert resolve(digits_super.train, ForgetRequest(kind="class", labels=(3,))).label_indices == (3,)
    assert resolve(digits_super.train, ForgetRequest.parse("class:3|8")).label_indices == (3,)
    canvases = load_dataset("multidigits", seed=0, num_train=20, num_test=10)
    with pytest.raises(ValueError, match="labels='9' is not a known target"):
        resolve(canvases.train, ForgetRequest(kind="target", labels=("9",)))


def test_repeated_keys_are_refused_in_inline_json_and_files_but_yaml_merge_keys_work(tmp_path):
    with pytest.raises(RequestError, match=r"key\(s\) \['labels'\] appear twice"):
        ForgetRequest.parse('{"kind": "class", "labels": [3], "labels": [5]}')
    (tmp_path / "twice.yaml").write_text("kind: class\nlabels: [3]\nlabels: [5]\n")
    with pytest.raises(RequestError, match=r"key 'labels' appears twice in one mapping \(line 3\)"):
        ForgetRequest.from_file(tmp_path / "twice.yaml")
    # ``<<: *anchor`` is how YAML users share fields; the merged key may be overridden, as YAML specifies.
    (tmp_path / "merged.yaml").write_text(
        "base: &base {kind: class, labels: [3], seed: 1}\nrequest:\n  <<: *base\n  seed: 4\n")
    from excise._files import read_json_or_yaml

    merged = read_json_or_yaml(tmp_path / "merged.yaml", "request file", RequestError)
    assert ForgetRequest.from_dict(merged["request"]) == ForgetRequest(kind="class", labels=(3,), seed=4)
    # An unhashable key is a YAML error naming the file, not a bare TypeError.
    (tmp_path / "listkey.yaml").write_text("? [1, 2]\n: x\nkind: class\n")
    with pytest.raises(RequestError, match=r"(?s)request file .*listkey.yaml.* is not valid YAML.*unhashable key"):
        ForgetRequest.from_file(tmp_path / "listkey.yaml")


def test_sequence_is_cumulative(digits):
    steps = apply_sequence(digits.train, [ForgetRequest(kind="class", labels=(c,)) for c in (1, 2)])
    assert set(np.unique(steps[0][0].targets)) == {1}
    assert set(np.unique(steps[1][0].targets)) == {1, 2}
    assert not np.isin(steps[1][1].targets.numpy(), [1, 2]).any()


def _tiny(classes):
    inputs = torch.randn(9, 1, 2, 2)
    return LabeledData(inputs, torch.tensor([0, 1, 2] * 3), classes=classes, name="tiny")


def test_a_number_that_is_one_class_by_index_and_another_by_name_is_refused_and_a_string_is_a_name():
    # UCI wine's cultivars are named "1", "2", "3": `class:1` (text, the CLI's) is the class named "1" (index 0),
    # while labels=(1,) is index 1 — and both read `class:1` in every record. The int is refused; text is a name.
    data = _tiny(("1", "2", "3"))
    forget, _ = split(data, ForgetRequest.parse("class:1"))
    assert set(forget.targets.tolist()) == {0}
    with pytest.raises(ValueError, match=r"labels=1 is ambiguous on this data: as an index it is the class named '2'"):
        split(data, ForgetRequest(kind="class", labels=(1,)))
    # Where names and indices agree (the digits) or names are not numbers, an int is an index as before.
    assert set(split(_tiny(("0", "1", "2")), ForgetRequest(kind="class", labels=(1,)))[0].targets.tolist()) == {1}
    assert set(split(_tiny(("a", "b", "c")), ForgetRequest(kind="class", labels=(1,)))[0].targets.tolist()) == {1}
    assert set(split(data, ForgetRequest(kind="class", labels=(0,)))[0].targets.tolist()) == {0}


def test_forgetting_all_but_one_class_is_served_with_a_warning():
    data = LabeledData(torch.randn(6, 1, 2, 2), torch.tensor([0, 1] * 3), classes=("benign", "malignant"))
    with pytest.warns(UserWarning, match="leaves a single class: a model retrained without it predicts that class"):
        forget, retain = split(data, ForgetRequest(kind="class", labels=("malignant",)))
    assert len(forget) == 3 and len(retain) == 3


@pytest.mark.parametrize(("text", "message"), [
    ("samples:indices=", "indices= is empty"),  # read as fraction='indices=' until 2026-12-07
    ("samples:fraction=", "fraction= is empty"),
    ("samples:seed=3", r"seed= goes after a fraction, as samples:fraction=0.1,seed=3"),
    ("class:3,3", r"labels=\['3', '3'\] contains duplicates"),  # recorded as two requests in the certificate
])
def test_shorthand_mistakes_name_the_field_they_are_about(text, message):
    with pytest.raises(RequestError, match=message):
        ForgetRequest.parse(text)


def test_a_request_file_that_is_a_directory_says_so(tmp_path):
    folder = tmp_path / "req.json"
    folder.mkdir()  # read like every JSON/YAML file a user hands excise (a --config directory said "does not exist")
    with pytest.raises(RequestError, match="request file .*req.json' is a directory, not a file"):
        ForgetRequest.parse(str(folder))
