"""The custom catalog datasets store arrays and models without pickle, and load them back."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.io.core import DatasetError, Version

from rodpo.datasets import NumpyDataset, TorchModelDataset


def test_numpy_dataset_round_trip_is_exact_and_versioned(tmp_path):
    first = NumpyDataset(filepath=str(tmp_path / "x.npy"), version=Version(None, "2026-01-01T00.00.00.000Z"))
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    first.save(array)
    second = NumpyDataset(filepath=str(tmp_path / "x.npy"), version=Version(None, "2026-01-02T00.00.00.000Z"))
    second.save(array * 2)

    latest = NumpyDataset(filepath=str(tmp_path / "x.npy"), version=Version(None, None)).load()
    np.testing.assert_array_equal(latest, array * 2)
    pinned = NumpyDataset(filepath=str(tmp_path / "x.npy"), version=Version("2026-01-01T00.00.00.000Z", None))
    np.testing.assert_array_equal(pinned.load(), array)
    assert latest.dtype == np.float32


def test_numpy_dataset_refuses_object_arrays(tmp_path):
    dataset = NumpyDataset(filepath=str(tmp_path / "x.npy"))
    with pytest.raises(DatasetError, match="object array"):
        dataset.save(np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "x.npy").exists()


def test_numpy_dataset_never_unpickles(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError):
        NumpyDataset(filepath=str(path)).load()


def test_model_dataset_refuses_classes_outside_rodpo(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"model_class": "os.system", "config": "{}"})
    with pytest.raises(DatasetError, match="only classes from the rodpo package"):
        TorchModelDataset(filepath=str(path)).load()
