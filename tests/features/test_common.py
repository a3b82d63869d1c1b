import numpy as np
import polars as pl
import pytest
import torch

from rodpo.devices import resolve_device
from rodpo.features.common import autocast_for, check_item_ids, with_padding_row


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") != torch.device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("tpu-please")


def test_reduced_precision_only_on_cuda():
    assert autocast_for(torch.device("cpu"), "bf16")[1] == "fp32"
    assert autocast_for(torch.device("cpu"), "auto")[1] == "fp32"
    with pytest.raises(ValueError, match="precision"):
        autocast_for(torch.device("cpu"), "int8")


def test_item_ids_must_be_one_to_n_in_row_order():
    assert check_item_ids(pl.DataFrame({"item_id": [1, 2, 3]})) == 3
    with pytest.raises(ValueError, match="row 1 holds 3"):
        check_item_ids(pl.DataFrame({"item_id": [1, 3, 2]}))


def test_padding_row_is_prepended():
    rows = np.ones((2, 3), dtype=np.float32)
    padded = with_padding_row(rows)
    assert padded.shape == (3, 3) and padded.dtype == np.float32
    assert not padded[0].any() and padded[1:].all()
