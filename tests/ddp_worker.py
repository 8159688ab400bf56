"""Run by test_distributed.py, under ``torchrun`` or as one plain process: train, retrain and unlearn on the
digits and write what every rank ended with, so the test can compare the two.

    python ddp_worker.py OUT.json METHOD[,METHOD...] START.safetensors

trains an original model, retrains without class 3, then unlearns class 3 with each METHOD starting from the
weights in START.safetensors, written by this script when absent (the single-process run writes them, the
torchrun run reads them, so the two unlearning runs start from the same weights). The training is shared by the
methods: it is the slow part.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("EXCISE_PROGRESS", "0")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from excise import distributed  # noqa: E402
from excise.data import load_dataset  # noqa: E402
from excise.experiment import build_model, run_method, train_original  # noqa: E402
from excise.metrics import EvalViews, evaluate  # noqa: E402
from excise.requests import ForgetRequest  # noqa: E402
from excise.training import TrainConfig, train  # noqa: E402

RECIPE = TrainConfig(epochs=12, batch_size=64, lr=0.05)
WIDTH = 16


def param_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for tensor in model.state_dict().values():
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out_path: str, methods: str, start_path: str) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env()
    bundle = load_dataset("digits", seed=0)
    views = EvalViews.from_bundle(bundle, ForgetRequest(kind="class", labels=("3",)))
    original, _ = train_original(bundle, "small_cnn", RECIPE, seed=0, width=WIDTH)
    retrained, retrain_record = run_method("retrain", original, views, RECIPE, seed=0)
    if not Path(start_path).exists():
        if distributed.is_distributed():
            raise SystemExit(f"{start_path} must be written by a single-process run first")
        save_file({k: v.contiguous() for k, v in original.state_dict().items()}, start_path)
    # A training set smaller than the batch size (45 samples, batch 64, 2 ranks): one step per epoch, as on one
    # process, instead of refusing a per-rank batch size the user never set.
    small = build_model(bundle, "small_cnn", seed=0, width=4)
    train(small, bundle.train.subset(list(range(45))), TrainConfig(epochs=2, batch_size=64, lr=0.05), seed=0)
    result = {"world_size": distributed.world_size(), "original": evaluate(original, views),
              "retrain": retrain_record.metrics, "methods": {}}
    for method in methods.split(","):
        start = build_model(bundle, "small_cnn", seed=0, width=WIDTH)
        start.load_state_dict(load_file(start_path))
        start.eval()
        unlearned, record = run_method(method, start, views, RECIPE, seed=0)
        mine = {
            "small": param_hash(small),
            "original": param_hash(original), "retrain": param_hash(retrained), "unlearn": param_hash(unlearned),
            # What this rank's own loop did (before the final broadcast of rank 0's model).
            "steps": record.stats.get("steps"), "stop_reason": record.stats.get("stop_reason"),
            # What SSD's per-request search chose (None for the iterative methods).
            "alpha": record.stats.get("selection_weighting"),
        }
        result["methods"][method] = {"unlearn": record.metrics, "per_rank": distributed.all_gather_objects(mine)}
    if distributed.is_main():
        Path(out_path).write_text(json.dumps(result))
    distributed.barrier()

if __name__ == "__main__":
    main(*sys.argv[1:4])
