"""Run under ``torchrun`` (or plainly) by test_distributed.py: train, retrain and unlearn on the digits and
write what each rank ended with, so the test can compare against a single-process run."""

from __future__ import annotations

import hashlib
import json
import os
import sys

os.environ.setdefault("EXCISE_PROGRESS", "0")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from excise import distributed  # noqa: E402
from excise.data import load_dataset  # noqa: E402
from excise.experiment import run_method, train_original  # noqa: E402
from excise.metrics import EvalViews  # noqa: E402
from excise.requests import ForgetRequest  # noqa: E402
from excise.training import TrainConfig  # noqa: E402

RECIPE = TrainConfig(epochs=12, batch_size=64, lr=0.05)


def param_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for tensor in model.state_dict().values():
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out_path: str, method: str) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env()
    bundle = load_dataset("digits", seed=0)
    views = EvalViews.from_bundle(bundle, ForgetRequest(kind="class", labels=("3",)))
    original, _ = train_original(bundle, "small_cnn", RECIPE, seed=0, width=8)
    from excise.metrics import evaluate

    result = {"original": evaluate(original, views)}
    retrained, retrain_record = run_method("retrain", original, views, RECIPE, seed=0)
    result["retrain"] = retrain_record.metrics
    unlearned, record = run_method(method, original, views, RECIPE, seed=0)
    result["unlearn"] = record.metrics
    result["unlearn_stats"] = {k: v for k, v in record.stats.items() if k in ("steps", "stop_reason")}
    hashes = {name: param_hash(m) for name, m in (("original", original), ("retrain", retrained),
                                                   ("unlearn", unlearned))}
    hashes["steps"] = record.stats.get("steps")
    gathered = [hashes]
    if distributed.is_distributed():
        gathered = [None] * distributed.world_size()
        dist.all_gather_object(gathered, hashes)
    result["per_rank"] = gathered
    result["world_size"] = distributed.world_size()
    if distributed.is_main():
        with open(out_path, "w") as handle:
            json.dump(result, handle)
    distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "gradient_ascent")
