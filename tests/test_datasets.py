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


def _tiny_model(**overrides):
    from rodpo.model import ModelConfig, RoDPOModel

    values = dict(n_items=6, hidden_size=8, max_seq_len=4, n_layers=1, n_heads=2, inner_size=16,
                  modalities=("id", "text"), text_dim=3, time_min=0, time_max=100)
    return RoDPOModel(ModelConfig(**{**values, **overrides}))


def _rewrite_header(path, edit) -> None:
    """Apply `edit` to a saved model's parsed JSON header and write the file back (a tampered file)."""
    import json

    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size :])


class _Trap:
    """Unpickling this touches `marker`: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_model_dataset_refuses_a_pickle_renamed_to_safetensors_without_unpickling(tmp_path, writer):
    import pickle

    import torch

    marker, path = tmp_path / "unpickled", tmp_path / "m.safetensors"
    if writer == "torch.save":
        torch.save({"weights": torch.zeros(2), "trap": _Trap(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(DatasetError, match=r"m\.safetensors is not a safetensors file .*never loads pickles.*re-save"):
        TorchModelDataset(filepath=str(path)).load()
    assert not marker.exists()


def test_model_dataset_refuses_a_header_that_is_not_a_json_object(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes((4).to_bytes(8, "little") + b"[1] " + b"\0" * 8)
    with pytest.raises(DatasetError, match="is not a safetensors file"):
        TorchModelDataset(filepath=str(path)).load()


@pytest.mark.parametrize("model_class", ["rodpo.data.download.shutil", "os.system", "rodpo.model.config.ModelConfig"])
def test_model_dataset_builds_only_registered_model_classes_and_imports_nothing_else(tmp_path, monkeypatch,
                                                                                     model_class):
    import importlib
    import sys

    import torch
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"model_class": model_class, "config": "{}"})
    monkeypatch.delitem(sys.modules, "rodpo.data.download", raising=False)
    imported = []
    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real_import(name, *a))
    with pytest.raises(DatasetError, match=r"refusing to build model class .*rodpo\.model\.encoder\.RoDPOModel"):
        TorchModelDataset(filepath=str(path)).load()
    assert imported == [] and "rodpo.data.download" not in sys.modules


def test_model_dataset_checks_header_shapes_against_the_config_before_allocating(tmp_path, monkeypatch):
    import json

    import torch

    path = tmp_path / "m.safetensors"
    TorchModelDataset(filepath=str(path)).save(_tiny_model())

    def huge_catalogue(header):  # item_embedding would be (2e9 + 1, 8) floats: 64 GB
        config = json.loads(header["__metadata__"]["config"])
        header["__metadata__"]["config"] = json.dumps({**config, "n_items": 2_000_000_000})

    _rewrite_header(path, huge_catalogue)

    class NoRealCatalogue(torch.nn.Embedding):
        def __init__(self, rows, *args, **kwargs):
            if rows > 1_000_000 and torch.get_default_device().type != "meta":
                raise AssertionError(f"allocated a {rows}-row embedding before checking the header")
            super().__init__(rows, *args, **kwargs)

    monkeypatch.setattr(torch.nn, "Embedding", NoRealCatalogue)
    with pytest.raises(DatasetError) as error:
        TorchModelDataset(filepath=str(path)).load()
    message = str(error.value)
    assert "'item_embedding.weight' has shape [7, 8] in the file header" in message
    assert "implies [2000000001, 8]" in message and "n_items=2000000000" in message


def test_model_dataset_saves_identical_bytes_and_round_trips_lineage(tmp_path):
    import torch

    model = _tiny_model()
    model.lineage = {"item_catalog": "ab12", "features": "cd34"}
    payloads = []
    for attempt in range(8):  # safetensors writes its metadata in hash-map order, different per save
        path = tmp_path / f"m{attempt}.safetensors"
        TorchModelDataset(filepath=str(path)).save(model)
        payloads.append(path.read_bytes())
    assert all(payload == payloads[0] for payload in payloads)

    loaded = TorchModelDataset(filepath=str(tmp_path / "m0.safetensors")).load()
    assert loaded.lineage == {"item_catalog": "ab12", "features": "cd34"}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    TorchModelDataset(filepath=str(tmp_path / "again.safetensors")).save(loaded)
    assert (tmp_path / "again.safetensors").read_bytes() == payloads[0]


def test_model_dataset_bytes_do_not_depend_on_config_key_order(tmp_path):
    import torch
    from torch import nn

    from rodpo.datasets import LOADABLE_MODEL_CLASSES

    class DictConfigured(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.weight = nn.Parameter(torch.arange(3.0))

    key = f"{DictConfigured.__module__}.{DictConfigured.__qualname__}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(LOADABLE_MODEL_CLASSES, key, ("unused", "unused"))
        for name, config in (("a", {"width": 3, "depth": 1}), ("b", {"depth": 1, "width": 3})):
            TorchModelDataset(filepath=str(tmp_path / f"{name}.safetensors")).save(DictConfigured(config))
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_model_dataset_without_lineage_loads_an_empty_one(tmp_path):
    path = tmp_path / "m.safetensors"
    TorchModelDataset(filepath=str(path)).save(_tiny_model())
    _rewrite_header(path, lambda header: header["__metadata__"].pop("lineage"))
    assert TorchModelDataset(filepath=str(path)).load().lineage == {}


def test_model_dataset_refuses_an_unregistered_class_or_bad_lineage_on_save(tmp_path):
    from torch import nn

    class Stray(nn.Module):
        config = {}

    with pytest.raises(DatasetError, match="LOADABLE_MODEL_CLASSES"):
        TorchModelDataset(filepath=str(tmp_path / "s.safetensors")).save(Stray())
    model = _tiny_model()
    model.lineage = {"features": 3}
    with pytest.raises(DatasetError, match="lineage must be a dict of str -> str"):
        TorchModelDataset(filepath=str(tmp_path / "m.safetensors")).save(model)
    assert not (tmp_path / "s.safetensors").exists() and not (tmp_path / "m.safetensors").exists()
