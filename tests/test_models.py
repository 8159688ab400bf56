"""Registered models beyond the small CNN: the MLP serves any input size through its pooled grid."""

from __future__ import annotations

import pytest
import torch

from excise.models import create_model


@pytest.mark.parametrize(("size", "grid"), [(8, 8), (28, 14), (32, 8)])
def test_mlp_pools_any_image_to_its_grid(size: int, grid: int) -> None:
    model = create_model("mlp", in_channels=3, num_classes=7, hidden=32, depth=3, grid=grid)
    out = model(torch.randn(5, 3, size, size))
    assert out.shape == (5, 7)
    first = model.features[2]
    assert isinstance(first, torch.nn.Linear) and first.in_features == 3 * grid * grid
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 4  # depth 3 + the classifier
    assert model.excise_spec["name"] == "mlp"


@pytest.mark.parametrize("bad", [{"hidden": 0}, {"depth": -1}, {"grid": 2.5}, {"hidden": True}])
def test_mlp_refuses_bad_sizes_by_name(bad) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(bad))}="):
        create_model("mlp", **bad)
