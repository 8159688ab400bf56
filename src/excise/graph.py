"""Essential graphs: which channels of a network carry one target, and the channels to prune to forget it.

Xu, Zhu, Zhang, Zhou, Zhao, "Towards Efficient Target-Level Machine Unlearning Based on Essential
Graph" (arXiv 2406.10954); official code IMoonKeyBoy/Towards-Efficient-Target-Level-Machine-Unlearning-
Based-on-Essential-Graph (``*_generate_graph*.py``, ``*_unlearning*.py``). This module holds the data
structure and every step that does not depend on the unlearning interface, so the CLI can build a graph
once (``excise graph``), store it, and prune with it later (``excise unlearn --graph``):

1. **Importance** (:func:`gradcam_channel_weights`): Grad-CAM channel weights — the gradient of one
   target's *sigmoid output* (not the logit) with respect to a conv layer's *output* (before its
   BatchNorm), averaged over space, per output channel, **signed** — in eval mode.
2. **Essential graph** (:func:`top_channels`): per layer, each target's ``int(C * proportion)`` (floor)
   largest weights; ties go to the lower channel index. (The official ``heapq.nlargest`` + ``list.index``
   maps equal values to the *first* index only, so a tie inside the top set selects fewer channels; here
   the set always has ``int(C * proportion)`` channels. Averaged gradients practically never tie: none of
   the top sets of the multidigits test fixture does, with 1 or 10 images.)
3. **Balanced graph** (:func:`select_channels`): the paper's scores — every forgotten target adds ``K``
   to the channels in its top set, every remaining target subtracts 1 — pruned where the score exceeds
   ``K - 1``. For one forgotten target that is "in its top set and in no remaining target's"; with
   several forgotten targets a channel chosen by two of them and one remaining target (``2K - 1``) is
   still pruned, as in the code's ``_multi`` scripts. The unbalanced ablation drops the ``-1`` terms.
4. **Pruning** (:func:`prune`): zero the selected output filters of each conv (and its bias, if any) and
   the affine ``weight``/``bias`` of the BatchNorm the conv feeds, so the channel is exactly 0 after that
   BatchNorm for every input. Running statistics are left as they are (the code does the same). The
   BatchNorm is found in the ``torch.fx`` module graph (the conv's only consumer), never by renaming
   ``conv`` to ``batchnorm`` as the official script does — that substitution silently prunes nothing on
   torchvision-style names (``bn1``). A conv that does not feed exactly one BatchNorm is refused.

Layer set. The official rule is "the last six convs in registration order minus the very last one",
which in its SE-ResNet picks the last five *main-path* convs (the dropped conv is the final projection
shortcut). Read literally on a CIFAR ResNet-18, whose last block has no projection, it would drop the
final main-path conv and keep a stride-2 projection instead; :func:`default_layers` follows the intent:
the last ``num_layers`` (5) convs that are not projection shortcuts, found structurally in the fx graph
(a conv feeding a residual ``add`` whose input also reaches the other operand of that ``add``).

A graph records the sha256 of the exact weights it was computed on (:func:`excise.hashing.model_sha256`, equal to the
sha256 of the model's excise checkpoint file) and is refused for any other model.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from excise.hashing import model_sha256

#: Images per target for the Grad-CAM importance (1 in the official code). Chosen by the numbers in
#: ``benchmarks/essential_graph.py``; see :mod:`excise.methods.essential_graph`.
DEFAULT_NUM_IMAGES = 10
GRAPH_FORMAT = "excise-essential-graph"
GRAPH_VERSION = 1
_ADD_OPS = (operator.add, operator.iadd, torch.add)


class GraphError(ValueError):
    """An essential graph that cannot be built, stored, loaded or applied; the message says why."""


# --- module graph: conv -> BatchNorm, projection shortcuts ---------------------------------------
def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError, ...) on dynamic control flow
        raise GraphError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); the essential "
            "graph needs the module graph to find the BatchNorm after each conv"
        ) from err


def _conv_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def conv_batchnorm_map(model: nn.Module) -> dict[str, str | None]:
    """For every ``Conv2d`` (registration order), the BatchNorm its output feeds, or ``None``.

    A conv maps to a BatchNorm only when, at every call site in the fx graph, the conv's output has exactly
    one consumer and that consumer is a BatchNorm module over the conv's output channels.
    """
    traced = _trace(model)
    modules = dict(model.named_modules())
    found: dict[str, set[str | None]] = {}
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        bn: str | None = None
        if len(users) == 1 and users[0].op == "call_module":
            candidate = modules.get(users[0].target)
            conv = modules[node.target]
            if isinstance(candidate, nn.modules.batchnorm._BatchNorm) and candidate.num_features == conv.out_channels:
                bn = users[0].target
        found.setdefault(node.target, set()).add(bn)
    # A conv never called, or called at sites that disagree, maps to nothing.
    return {name: next(iter(found[name])) if len(found.get(name, ())) == 1 else None for name in _conv_names(model)}


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    seen: set[torch.fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        for parent in current.all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_OPS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def projection_convs(model: nn.Module) -> set[str]:
    """Convs on the skip path of a residual block (projection / downsample shortcuts).

    Found structurally: follow the conv's output through single-consumer nodes to a residual ``add``; the
    conv is a shortcut when no other conv lies on that way and its own input also reaches the *other*
    operand of the ``add`` (the main path branches off the same tensor). The last conv of a main path
    starts from an intermediate of its own branch, which the other operand never sees.
    """
    traced = _trace(model)
    modules = dict(model.named_modules())
    out: set[str] = set()
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        current, branch = node, node
        while len(current.users) == 1:
            user = next(iter(current.users))
            if _is_add(user):
                others = [a for a in user.all_input_nodes if a is not branch]
                source = node.all_input_nodes[0] if node.all_input_nodes else None
                if source is not None and any(source is o or source in _ancestors(o) for o in others):
                    out.add(node.target)
                break
            if user.op == "call_module" and isinstance(modules.get(user.target), nn.modules.conv._ConvNd):
                break  # another conv follows: this one is inside a branch, not a one-conv shortcut
            current = branch = user
    return out


def default_layers(model: nn.Module, num_layers: int = 5) -> list[str]:
    """The last ``num_layers`` main-path convs (registration order), projection shortcuts excluded."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise GraphError(f"num_layers={num_layers!r} must be a positive integer")
    skip = projection_convs(model)
    main = [name for name in _conv_names(model) if name not in skip]
    if not main:
        raise GraphError(f"{type(model).__name__} has no Conv2d layer: the essential graph prunes conv channels")
    return main[-num_layers:]


def resolve_layers(model: nn.Module, layers: Sequence[str] | None, num_layers: int = 5) -> list[tuple[str, str]]:
    """``(conv, batchnorm)`` module names for the requested layers, refusing any that cannot be pruned."""
    names = list(layers) if layers is not None else default_layers(model, num_layers)
    if not names:
        raise GraphError("layers=[] is empty: name at least one conv layer")
    mapping = conv_batchnorm_map(model)
    out = []
    for name in names:
        if name not in mapping:
            raise GraphError(f"layers contains {name!r}, which is not a Conv2d of this model; convs: {list(mapping)}")
        if mapping[name] is None:
            prunable = [c for c, bn in mapping.items() if bn is not None]
            raise GraphError(
                f"conv layer {name!r} cannot be mapped to a BatchNorm: in the module graph its output does not "
                f"feed exactly one BatchNorm over its channels, so zeroing the channel would not be exact; " + (
                    f"choose among the convs that do: {prunable}" if prunable else
                    "no conv of this model feeds one (the Essential Graph prunes a channel through the BatchNorm "
                    "after its conv, as in the paper's ResNet and VGG): use target_erasure, target_erasure_body or "
                    "target_finetune on this model")
            )
        out.append((name, mapping[name]))
    if len(set(names)) != len(names):
        raise GraphError(f"layers={names} names a layer twice")
    return out


# --- importance ----------------------------------------------------------------------------------
ScoreFn = Callable[[Tensor, list[int], int], Tensor]


def gradcam_channel_weights(
    model: nn.Module,
    layers: Sequence[str],
    inputs: Tensor,
    target: int,
    score: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Signed Grad-CAM weights ``N x C`` per layer: d sigmoid(output[target]) / d conv output, mean over space.

    ``score(outputs) -> N`` replaces the sigmoid of the target's output (dense tasks sum a target's map).
    Eval mode (BatchNorm running statistics), so the images of a batch do not interact and one backward
    pass of the summed scores gives each image's own gradients. The caller's model mode is restored.
    """
    modules = dict(model.named_modules())
    captured: dict[str, Tensor] = {}

    def hook(name: str):
        def store(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            captured[name] = output
        return store

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = inputs.detach().clone().requires_grad_(True)  # a graph even if every parameter is frozen
            outputs = model(x)
            scores = torch.sigmoid(outputs[:, target]) if score is None else score(outputs)
            grads = torch.autograd.grad(scores.sum(), [captured[name] for name in layers], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = {}
    for name, grad in zip(layers, grads, strict=True):
        if grad is None:  # the layer does not influence the output at all
            grad = torch.zeros_like(captured[name])
        out[name] = grad.detach().flatten(2).mean(dim=2)
    return out


def channel_count(channels: int, proportion: float) -> int:
    """How many of a layer's ``channels`` a target's essential graph holds: ``int(C * proportion)`` (floor,
    as the official code)."""
    return int(channels * proportion)


def top_channels(weights: Tensor, proportion: float, layer: str = "") -> list[int]:
    """Indices of the ``int(C * proportion)`` largest signed weights; ties to the lower index."""
    count = channel_count(weights.numel(), proportion)
    if count < 1:
        raise GraphError(
            f"proportion={proportion} selects no channel of layer {layer!r} ({weights.numel()} channels: "
            f"int({weights.numel()} * {proportion}) = 0); use proportion >= {1 / weights.numel():.3g} or other layers"
        )
    order = torch.sort(-weights.double(), stable=True).indices
    return sorted(order[:count].tolist())


def select_channels(
    tops: dict[int, list[int]], channels: int, forgotten: Sequence[int], num_targets: int, balanced: bool = True
) -> tuple[list[int], list[int]]:
    """The paper's scores (+K per forgotten target, -1 per remaining target) and the channels > K - 1."""
    scores = [0] * channels
    for target, chosen in tops.items():
        for c in chosen:
            if target in forgotten:
                scores[c] += num_targets
            elif balanced:
                scores[c] -= 1
    return scores, [c for c in range(channels) if scores[c] > num_targets - 1]


def target_images(targets: Tensor, target: int, num_images: int) -> list[int]:
    """Rows of the first ``num_images`` instances that carry ``target``, in data-set order (the official
    code takes the first image of the unshuffled attribute-positive training set)."""
    rows = torch.nonzero(targets[:, target] > 0.5).flatten()[:num_images].tolist()
    if not rows:
        raise GraphError(f"no training instance carries target {target}: its importance cannot be measured")
    return rows


# --- the graph -----------------------------------------------------------------------------------
@dataclass
class LayerGraph:
    """One conv layer of an essential graph."""

    name: str
    batchnorm: str
    channels: int
    top: dict[int, list[int]]  # target index -> its top-``proportion`` channels (the per-target graph)
    scores: list[int]
    pruned: list[int]


@dataclass
class EssentialGraph:
    """The balanced (or unbalanced) essential graph of one model for one forget request."""

    classes: tuple[str, ...]
    forgotten: tuple[int, ...]
    layers: list[LayerGraph]
    proportion: float
    num_images: int
    balanced: bool
    model_sha256: str
    model_spec: dict[str, Any] | None = None
    image_rows: dict[int, list[int]] = field(default_factory=dict)
    seconds: float = 0.0
    # Targets an earlier request of a sequence forgot: neither scored nor spared. None: a file written before
    # excise recorded them (unknown).
    gone: tuple[int, ...] | None = ()

    @property
    def num_targets(self) -> int:
        return len(self.classes)

    @property
    def threshold(self) -> int:
        return self.num_targets - 1

    @property
    def forgotten_names(self) -> list[str]:
        return [self.classes[t] for t in self.forgotten]

    def pruned_channels(self) -> dict[str, list[int]]:
        return {layer.name: list(layer.pruned) for layer in self.layers}

    @property
    def num_pruned(self) -> int:
        return sum(len(layer.pruned) for layer in self.layers)

    def check_model(self, model: nn.Module, source: str = "the graph") -> None:
        """Refuse a model whose weights are not the ones this graph was computed on."""
        actual = model_sha256(model)
        if actual != self.model_sha256:
            raise GraphError(
                f"{source} was built for the model with sha256 {self.model_sha256[:16]}…, but this model's weights "
                f"hash to {actual[:16]}…: an essential graph only holds for the exact weights it was computed on; "
                "build one for this model (excise graph MODEL --target T --out FILE)"
            )

    def check_request(self, classes: Sequence[str], forgotten: Sequence[int], source: str = "the graph",
                      gone: Sequence[int] | None = ()) -> None:
        """Refuse a graph built for other targets, another request, or (``gone`` given) other targets forgotten
        by earlier requests of a sequence."""
        if tuple(classes) != tuple(self.classes):
            raise GraphError(f"{source} was built for targets {list(self.classes)}, the data has {list(classes)}")
        if sorted(forgotten) != sorted(self.forgotten):
            raise GraphError(
                f"{source} forgets target(s) {self.forgotten_names}, but the request forgets "
                f"{[classes[t] for t in forgotten]}; build a graph for this request"
            )
        if gone is not None and self.gone is None and set(gone) - set(forgotten):
            raise GraphError(
                f"{source} was written by an older excise that did not record targets forgotten by earlier "
                f"requests, and this model has forgotten {[classes[t] for t in sorted(set(gone) - set(forgotten))]} "
                "before: rebuild the graph (excise graph MODEL ...)")
        if gone is not None and self.gone is not None and sorted(set(gone) - set(forgotten)) != sorted(self.gone):
            raise GraphError(
                f"{source} was built with target(s) {[self.classes[t] for t in self.gone]} forgotten by earlier "
                f"requests, but for this model they are {[classes[t] for t in sorted(set(gone) - set(forgotten))]}; "
                "build the graph from the checkpoint that serves this request (excise graph MODEL ...)"
            )

    # --- storage ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from excise.checkpoint import versions

        return {
            "format": GRAPH_FORMAT,
            "version": GRAPH_VERSION,
            "model_sha256": self.model_sha256,
            "model": self.model_spec,
            "classes": list(self.classes),
            "forgotten": self.forgotten_names,
            "proportion": self.proportion,
            "num_images": self.num_images,
            "balanced": self.balanced,
            "threshold": self.threshold,
            "image_rows": {self.classes[t]: rows for t, rows in self.image_rows.items()},
            "gone": None if self.gone is None else [self.classes[t] for t in self.gone],
            "seconds": self.seconds,
            "layers": [
                {
                    "name": layer.name,
                    "batchnorm": layer.batchnorm,
                    "channels": layer.channels,
                    "top": {self.classes[t]: chosen for t, chosen in layer.top.items()},
                    "scores": layer.scores,
                    "pruned": layer.pruned,
                }
                for layer in self.layers
            ],
            "versions": versions(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "graph") -> EssentialGraph:
        if not isinstance(data, dict) or data.get("format") != GRAPH_FORMAT:
            raise GraphError(f"{source} is not an excise essential graph (format field is not {GRAPH_FORMAT!r})")
        if data.get("version") != GRAPH_VERSION:
            raise GraphError(f"{source} has version {data.get('version')!r}; this excise reads {GRAPH_VERSION}")
        try:
            classes = tuple(data["classes"])
            index = {name: i for i, name in enumerate(classes)}
            layers = [
                LayerGraph(
                    name=layer["name"], batchnorm=layer["batchnorm"], channels=int(layer["channels"]),
                    top={index[name]: [int(c) for c in chosen] for name, chosen in layer["top"].items()},
                    scores=[int(s) for s in layer["scores"]], pruned=[int(c) for c in layer["pruned"]],
                )
                for layer in data["layers"]
            ]
            return cls(
                classes=classes,
                forgotten=tuple(index[name] for name in data["forgotten"]),
                layers=layers,
                proportion=float(data["proportion"]),
                num_images=int(data["num_images"]),
                balanced=bool(data["balanced"]),
                model_sha256=str(data["model_sha256"]),
                model_spec=data.get("model"),
                image_rows={index[name]: rows for name, rows in data.get("image_rows", {}).items()},
                seconds=float(data.get("seconds", 0.0)),
                gone=None if data.get("gone") is None else tuple(index[name] for name in data["gone"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise GraphError(f"{source} is malformed: {type(err).__name__}: {err}") from err

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        from excise.checkpoint import atomic_write_text

        path = Path(path)
        if path.suffix != ".json":
            raise GraphError(f"out={str(path)!r} must end in .json (a graph is a small JSON file)")
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> EssentialGraph:
        path = Path(path)
        if not path.is_file():
            raise GraphError(f"graph file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise GraphError(f"graph file {str(path)!r} is not valid JSON: {err}") from err
        return cls.from_dict(data, source=f"graph file {str(path)!r}")

    # --- picture ---------------------------------------------------------------------------------
    def plot(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Layers x channels: pruned (forgotten target only), forgotten but kept (shared with a remaining
        target), remaining targets' top channels, unselected."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        from excise._files import save_figure

        width = max(layer.channels for layer in self.layers)
        grid = np.full((len(self.layers), width), np.nan)
        for row, layer in enumerate(self.layers):
            forgotten = {c for t in self.forgotten for c in layer.top.get(t, [])}
            remaining = {c for t, chosen in layer.top.items() if t not in self.forgotten for c in chosen}
            grid[row, : layer.channels] = 0
            for c in remaining:
                grid[row, c] = 1
            for c in forgotten:
                grid[row, c] = 2
            for c in layer.pruned:
                grid[row, c] = 3
        colours = ["#eeeeee", "#4c72b0", "#dd8452", "#c44e52"]
        labels = ["unselected", "remaining targets' top channels", "forgotten target's, kept (shared)", "pruned"]
        fig, ax = plt.subplots(figsize=(min(2 + width * 0.12, 18), 1.2 + 0.5 * len(self.layers)))
        ax.imshow(np.ma.masked_invalid(grid), cmap=ListedColormap(colours), vmin=-0.5, vmax=3.5,
                  aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(self.layers)))
        ax.set_yticklabels([f"{layer.name} ({len(layer.pruned)}/{layer.channels})" for layer in self.layers])
        ax.set_xlabel("output channel")
        kind = "balanced" if self.balanced else "unbalanced"
        ax.set_title(f"{kind} essential graph: forget {self.forgotten_names} "
                     f"(proportion {self.proportion}, {self.num_images} image(s)/target)")
        ax.legend(handles=[Patch(color=c, label=lbl) for c, lbl in zip(colours, labels, strict=True)],
                  loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(self.layers) > 2 else -0.5),
                  ncol=4, fontsize="small", frameon=False)
        fig.tight_layout()
        return save_figure(fig, path, dpi=120, overwrite=overwrite)


def build_graph(
    model: nn.Module,
    data_targets: Tensor,
    data_inputs: Tensor,
    forgotten: Sequence[int],
    *,
    classes: Sequence[str],
    proportion: float = 0.1,
    num_images: int = DEFAULT_NUM_IMAGES,
    layers: Sequence[str] | None = None,
    num_layers: int = 5,
    balanced: bool = True,
    score_fn: ScoreFn | None = None,
    gone: Sequence[int] = (),
) -> EssentialGraph:
    """Score every target's channels on ``model`` and select the channels to prune for ``forgotten``.

    ``data_inputs``/``data_targets`` are the training instances (multi-hot targets: which targets each
    carries); each target is scored on the first ``num_images`` instances that carry it. ``gone``: targets an
    earlier request of a sequence already forgot; they are neither scored nor spared (a remaining target's
    ``-1``), since the model need no longer recognise them.
    ``score_fn(outputs, rows, target) -> per-image score`` replaces the target's sigmoid output (rows index
    ``data_inputs``); dense tasks use it.
    """
    return build_graphs(model, data_targets, data_inputs, forgotten, classes=classes, proportions=[proportion],
                        num_images=num_images, layers=layers, num_layers=num_layers, balanced=balanced,
                        score_fn=score_fn, gone=gone)[0]


def build_graphs(
    model: nn.Module,
    data_targets: Tensor,
    data_inputs: Tensor,
    forgotten: Sequence[int],
    *,
    classes: Sequence[str],
    proportions: Sequence[float],
    num_images: int = DEFAULT_NUM_IMAGES,
    layers: Sequence[str] | None = None,
    num_layers: int = 5,
    balanced: bool = True,
    score_fn: ScoreFn | None = None,
    gone: Sequence[int] = (),
) -> list[EssentialGraph]:
    """:func:`build_graph` at each of ``proportions``, scoring the channels once (the Grad-CAM passes are the
    cost; selecting at another proportion is free). Each graph's ``seconds`` is the scoring time plus its own
    selection."""
    from excise.progress import progress_bar

    if not proportions:
        raise GraphError("proportions must name at least one proportion")
    for proportion in proportions:
        if isinstance(proportion, bool) or not isinstance(proportion, (int, float)) or not 0 < proportion <= 1:
            raise GraphError(f"proportion={proportion!r} must lie in (0, 1]")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise GraphError(f"num_images={num_images!r} must be a positive integer")
    num_targets = len(classes)
    if data_targets.dim() != 2 or data_targets.shape[1] != num_targets:
        raise GraphError(f"targets must be N x {num_targets} multi-hot (one column per target)")
    forgotten = tuple(sorted(set(int(t) for t in forgotten)))
    if not forgotten or any(not 0 <= t < num_targets for t in forgotten):
        raise GraphError(f"forgotten={list(forgotten)} must name targets in [0, {num_targets - 1}]")
    gone = tuple(sorted(set(int(t) for t in gone) - set(forgotten)))
    if any(not 0 <= t < num_targets for t in gone):
        raise GraphError(f"gone={list(gone)} must name targets in [0, {num_targets - 1}]")
    if len(forgotten) + len(gone) == num_targets:
        raise GraphError("cannot forget every target: at least one must remain")
    scored = [t for t in range(num_targets) if t not in gone]
    pairs = resolve_layers(model, layers, num_layers)
    names = [conv for conv, _ in pairs]
    modules = dict(model.named_modules())
    start = time.perf_counter()
    rows = {t: target_images(data_targets, t, num_images) for t in scored}
    weights: dict[int, dict[str, Tensor]] = {}
    with progress_bar("essential graph", len(scored)) as bar:
        for t in scored:
            score = None if score_fn is None else (lambda out, t=t: score_fn(out, rows[t], t))
            per_image = gradcam_channel_weights(model, names, data_inputs[rows[t]], t, score)
            weights[t] = {name: w.mean(dim=0) for name, w in per_image.items()}
            bar.advance()
    scoring_seconds = time.perf_counter() - start
    sha256, spec = model_sha256(model), getattr(model, "excise_spec", None)
    graphs = []
    for proportion in proportions:
        start = time.perf_counter()
        graph_layers = []
        for conv, bn in pairs:
            channels = modules[conv].out_channels
            tops = {t: top_channels(weights[t][conv], proportion, conv) for t in scored}
            scores, pruned = select_channels(tops, channels, forgotten, num_targets, balanced)
            graph_layers.append(LayerGraph(conv, bn, channels, tops, scores, pruned))
        graphs.append(EssentialGraph(
            gone=gone,
            classes=tuple(classes),
            forgotten=forgotten,
            layers=graph_layers,
            proportion=float(proportion),
            num_images=num_images,
            balanced=balanced,
            model_sha256=sha256,
            model_spec=spec,
            image_rows=rows,
            seconds=scoring_seconds + time.perf_counter() - start,
        ))
    return graphs


@torch.no_grad()
def prune(model: nn.Module, graph: EssentialGraph) -> dict[str, Any]:
    """Zero, in place, the pruned output channels of every graph layer: conv filter (and bias) and the
    affine weight and bias of the BatchNorm that follows it. Returns what was zeroed and how long it took."""
    start = time.perf_counter()
    mapping = dict(resolve_layers(model, [layer.name for layer in graph.layers]))
    modules = dict(model.named_modules())
    zeroed = {}
    for layer in graph.layers:
        conv, bn = modules[layer.name], modules[mapping[layer.name]]
        if conv.out_channels != layer.channels:
            raise GraphError(
                f"graph layer {layer.name!r} has {layer.channels} channels, the model's has {conv.out_channels}"
            )
        if mapping[layer.name] != layer.batchnorm:
            raise GraphError(
                f"graph layer {layer.name!r} was paired with BatchNorm {layer.batchnorm!r}, but in this model it "
                f"feeds {mapping[layer.name]!r}"
            )
        index = torch.as_tensor(layer.pruned, dtype=torch.long)
        if len(index):
            conv.weight[index] = 0
            if conv.bias is not None:
                conv.bias[index] = 0
            if bn.weight is not None:
                bn.weight[index] = 0
            if bn.bias is not None:
                bn.bias[index] = 0
        zeroed[layer.name] = len(layer.pruned)
    return {"pruned_per_layer": zeroed, "pruned_channels": sum(zeroed.values()),
            "prune_seconds": time.perf_counter() - start}
