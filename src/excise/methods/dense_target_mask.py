"""Dense target-level unlearning by masking the forgotten class's output map: the dense form of the mask that
``target_erasure`` (:mod:`excise.methods.target_erasure`) applies to a multi-label head.

Xu et al. (arXiv 2406.10954) set the task — forget one class of a segmenter or detector, keep the others — and
prune the class's essential graph (``dense_essential_graph``). Measured here, that pruning was unreliable at
this scale (forgotten IoU 0.0-97.0 and AP50 1.0-86.1 over five training seeds; README "Segmentation and
detection"). Both dense models of excise predict one sigmoid map per class from a final 1x1 conv (the U-Net's
``head``, CenterNet's ``heatmap.1``; each model names it in ``class_maps``), so the class's map can be set to a
constant: its output channel's weights are zeroed and its bias set to ``MASKED_LOGIT`` (probability 0.001).
Its pixels then fall to background and its heat-map has no peak above any detection threshold, and every other
class's map, box size and offset are bit-identical to the original's: nothing else is touched, nothing trains,
no data is read (``needs_retain=False``).

What it does not do: the decoder's features, which the masked channel read, are unchanged, so whatever they
carry about the class stays in the model. Measured (:func:`excise.metrics.probe.dense_probe_ap`,
``benchmarks/dense.py``, seeds 0-3, digit 2, prevalence ~19): a linear probe tells the class's ink pixels / object
centres from the other digits' at AP 99.3-100 there, as on the original. On dense tasks that is also about what
the retrained reference keeps: trained to leave the class unsegmented or undetected, its class-map input reads it
at 99.6-100 (segmentation) and 94.8-98.1 (detection), a ceiling that does not rank methods. At the detector's neck,
which the box heads share, retrain reads less on three seeds of four (77.7-92.6; 98.9 on the fourth) and the mask
leaves the original's 97.8-99.0; ``dense_target_erasure`` trains the neck to bring it down. The record says
``forgotten_output: "masked"`` and names the layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from excise.erasure import MASKED_LOGIT
from excise.methods.base import UnlearnData, UnlearningMethod, register_method
from excise.methods.essential_graph import forgotten_targets
from excise.models.heads import HeadError

__all__ = ["DenseTargetMask", "class_map_layer", "mask_class_maps"]


def class_map_layer(model: nn.Module) -> nn.Conv2d:
    """The conv whose output channel ``c`` is class ``c``'s map, as the model names it in ``class_maps``."""
    name = getattr(model, "class_maps", None)
    module = dict(model.named_modules()).get(name) if isinstance(name, str) else None
    if not isinstance(module, nn.Conv2d) or module.bias is None:
        raise HeadError(f"{type(model).__name__} does not name its class-map conv: dense_target_mask needs a "
                        "`class_maps` attribute naming the Conv2d (with bias) whose output channel c is class c's "
                        f"map; found {name!r}")
    return module


@register_method
class DenseTargetMask(UnlearningMethod):
    name = "dense_target_mask"
    paper = ("output masking of the forgotten class's map (excise), for the target-level task of Xu et al., "
             "arXiv 2406.10954")
    needs_retain = False
    kinds = ("target",)
    tasks = ("segmentation", "detection")

    def _unlearn(self, model: nn.Module, data: UnlearnData, seed: int) -> dict[str, Any]:
        return mask_class_maps(model, data)


def mask_class_maps(model: nn.Module, data: UnlearnData) -> dict[str, Any]:
    """Set the forgotten classes' maps of ``model`` to the constant :data:`MASKED_LOGIT`, in place; the record."""
    layer = class_map_layer(model)
    forgotten = list(forgotten_targets(data))
    index = torch.as_tensor(forgotten, dtype=torch.long)
    with torch.no_grad():
        layer.weight[index] = 0
        layer.bias[index] = MASKED_LOGIT
    return {"forgotten_output": "masked", "masked_logit": MASKED_LOGIT, "masked_layer": model.class_maps,
            "masked_classes": [data.forget_set.classes[c] for c in forgotten]}
