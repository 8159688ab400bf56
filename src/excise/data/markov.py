"""Three Markov chains over one state space: the synthetic sequence benchmark of the IMU paper.

Fan et al., "Influence-guided Machine Unlearning", arXiv 2508.01620, ``synthetic/`` experiments (official code
``goodluckisallyouneed/IMU``), built on the Unlearn-Simple / SimNPO synthetic setting
(``OPTML-Group/Unlearn-Simple``, ``synthetic/data_generation.py``). Generated from the seed; nothing is read
or downloaded. Spec: ``shared/methods/imu_language.md``.

Generator (as the official ``prepare_datasets``):

- ``S = state_size`` states, ``k = S // 3``; disjoint subsets retain = ``{0..k-1}``, forget1 = ``{k..2k-1}``,
  forget2 = ``{2k..3k-1}`` (with the README's ``S = 10`` state 9 belongs to no subset: it is reached only
  through leakage);
- chain ``c``'s transition matrix starts at ``leakage / (S - k)`` everywhere; each row of a state *in* the
  chain's subset gets ``(1 - leakage) / k`` on the subset's columns; rows are then normalised (so from a
  state outside the subset the next state is uniform). The initial distribution is built the same way;
- sequences are drawn with ``torch.multinomial`` in the official order (retain, forget1, forget2; initial
  states, then one step at a time) from a generator seeded with ``seed``, and each chain is split train/test
  with ``sklearn.model_selection.train_test_split(test_size, random_state=seed)``, as the official code does.

Defaults are the IMU README's: ``S = 10``, 10,000 / 5,000 / 5,000 sequences of length 20, leakage 0.2, 80/20
split (the README's data seed is 42; excise's registry default seed is 0 — pass ``seed=42`` to match).

What excise stores (see :mod:`excise.tasks.sequence` for the representation): ``inputs`` = each sequence
without its last state, ``targets`` = without its first (next-state targets, -100 where a shorter chain is
padded), ``classes = ("retain", "forget1", "forget2")``, ``extras["class_targets"]`` = the chain of each
sequence and ``extras["true_next"]`` = the true next-state distribution at each position. Forgetting a
chain is ``ForgetRequest(kind="class", labels=("forget1",))`` (CLI ``--request class:forget1``); forgetting
chosen sequences is a ``samples`` request over the training rows.

``train_chains`` picks the chains whose *training* sequences form the training set. The default
``("retain", "forget1")`` is the README's ``--only_forget1``: the original model is trained on retain +
forget1, the retrained reference on retain only, and forget2 is a chain the model never saw (its test
sequences stay in the test set as a control). The test set always holds the test sequences of all three
chains. (The official unlearning script's forget set is forget1 + forget2 training sequences, although
forget2 was never trained on; excise forgets exactly what the request names.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from excise.data.base import CLASS_TARGETS, DatasetBundle, LabeledData
from excise.data.registry import DatasetInfo, register_dataset

TASK = "sequence"
IGNORE_INDEX = -100
"""Target of a padding position (no token to predict)."""
TRUE_NEXT = "true_next"
"""``LabeledData.extras`` key of the true next-token distribution at each position."""

CHAINS = ("retain", "forget1", "forget2")


def chain_parameters(state_size: int, leakage: float) -> tuple[np.ndarray, np.ndarray]:
    """``(transitions, initial)``: ``3 x S x S`` row-stochastic matrices and ``3 x S`` initial distributions."""
    k = state_size // 3
    transitions = np.empty((3, state_size, state_size))
    initial = np.empty((3, state_size))
    for c in range(3):
        subset = list(range(c * k, (c + 1) * k))
        matrix = np.full((state_size, state_size), leakage / (state_size - k))
        for s in subset:
            matrix[s, subset] = (1.0 - leakage) / k
        transitions[c] = matrix / matrix.sum(axis=1, keepdims=True)
        start = np.full(state_size, leakage / (state_size - k))
        start[subset] = (1.0 - leakage) / k
        initial[c] = start / start.sum()
    return transitions, initial


def sample_chain(transitions: np.ndarray, initial: np.ndarray, count: int, length: int,
                 generator: torch.Generator) -> torch.Tensor:
    """``count x length`` state sequences of one chain (vectorised over sequences, one step at a time)."""
    matrix = torch.tensor(transitions, dtype=torch.float32)
    start = torch.tensor(initial, dtype=torch.float32)
    sequences = torch.zeros(count, length, dtype=torch.long)
    sequences[:, 0] = torch.multinomial(start, count, replacement=True, generator=generator)
    for t in range(1, length):
        sequences[:, t] = torch.multinomial(matrix[sequences[:, t - 1]], 1, generator=generator).squeeze(1)
    return sequences


def _lengths(seq_length: int | Sequence[int]) -> tuple[int, int, int]:
    values = (seq_length,) * 3 if isinstance(seq_length, (int, np.integer)) else tuple(seq_length)
    if len(values) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2 for v in values):
        raise ValueError(
            f"seq_length={seq_length!r} must be an integer >= 2 or three of them (retain, forget1, forget2)"
        )
    return tuple(int(v) for v in values)  # type: ignore[return-value]


@register_dataset("markov", DatasetInfo(
    "sequence", "20,000 token sequences of three Markov chains (options)", "3 chains (retain, forget1, forget2)",
    "synthetic (IMU's benchmark)", "excise's own (Apache-2.0)"))
def markov(
    *,
    root: str | Path | None = None,
    seed: int = 0,
    state_size: int = 10,
    leakage: float = 0.2,
    num_retain: int = 10000,
    num_forget1: int = 5000,
    num_forget2: int = 5000,
    seq_length: int | Sequence[int] = 20,
    test_size: float = 0.2,
    train_chains: Sequence[str] = ("retain", "forget1"),
) -> DatasetBundle:
    if isinstance(state_size, bool) or not isinstance(state_size, int) or state_size < 3:
        raise ValueError(f"state_size={state_size!r} must be an integer >= 3 (three disjoint state subsets)")
    if isinstance(leakage, bool) or not isinstance(leakage, (int, float)) or not 0 < leakage < 1:
        raise ValueError(f"leakage={leakage!r} must lie in (0, 1)")
    counts = {"num_retain": num_retain, "num_forget1": num_forget1, "num_forget2": num_forget2}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name}={value!r} must be an integer >= 2 (each chain is split train/test)")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        raise ValueError(f"test_size={test_size!r} must lie in (0, 1)")
    if isinstance(train_chains, str):
        train_chains = (train_chains,)
    train_chains = tuple(train_chains)
    unknown = [c for c in train_chains if c not in CHAINS]
    if unknown or not train_chains or len(set(train_chains)) != len(train_chains):
        raise ValueError(f"train_chains={list(train_chains)!r} must be distinct names from {list(CHAINS)}")
    lengths = _lengths(seq_length)
    width = max(lengths) - 1

    transitions, initial = chain_parameters(state_size, float(leakage))
    generator = torch.Generator().manual_seed(seed)
    sequences = [
        sample_chain(transitions[c], initial[c], n, lengths[c], generator)
        for c, n in enumerate(counts.values())
    ]
    splits = [
        train_test_split(np.arange(len(s)), test_size=test_size, random_state=seed) for s in sequences
    ]
    matrices = torch.tensor(transitions, dtype=torch.float32)

    def part(rows: list[tuple[int, np.ndarray]]) -> LabeledData:
        inputs, targets, chains, true_next = [], [], [], []
        for c, idx in rows:
            seqs = sequences[c][torch.as_tensor(idx, dtype=torch.long)]
            n, t = len(seqs), lengths[c] - 1
            x = torch.zeros(n, width, dtype=torch.long)
            y = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
            truth = torch.zeros(n, width, state_size)
            x[:, :t], y[:, :t] = seqs[:, :-1], seqs[:, 1:]
            truth[:, :t] = matrices[c][seqs[:, :-1]]
            inputs.append(x)
            targets.append(y)
            true_next.append(truth)
            chains.append(torch.full((n,), c, dtype=torch.long))
        return LabeledData(
            inputs=torch.cat(inputs), targets=torch.cat(targets), classes=CHAINS, task=TASK,
            extras={CLASS_TARGETS: torch.cat(chains), TRUE_NEXT: torch.cat(true_next)},
            name="markov",
        )

    train = part([(CHAINS.index(c), splits[CHAINS.index(c)][0]) for c in train_chains])
    test = part([(c, splits[c][1]) for c in range(3)])
    meta = {
        "source": "generated: three Markov chains (IMU / Unlearn-Simple synthetic setting)",
        "state_size": state_size,
        "seq_lengths": dict(zip(CHAINS, lengths, strict=True)),
        "train_chains": list(train_chains),
        "transitions": transitions,
        "initial": initial,
        # excise.experiment.build_model sizes a model from these instead of (in_channels, num_classes).
        "model_kwargs": {"vocab_size": state_size, "context_length": width},
    }
    return DatasetBundle("markov", train, test, meta)
