"""Custom Kedro datasets: NumPy arrays and torch models stored without pickle.

kedro-datasets has no ``.npy`` dataset, and pickling torch modules ties a checkpoint to the exact
code that wrote it (and unpickling an untrusted file runs arbitrary code). These two datasets keep
feature matrices as plain ``.npy`` (``allow_pickle=False``) and models as ``.safetensors`` weights
with their JSON config in the file header, so any saved artefact loads safely in NumPy or torch.
"""

from __future__ import annotations

import importlib
import io
import json
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

_ALLOWED_MODEL_PACKAGE = "rodpo."


class _VersionedFileDataset(AbstractVersionedDataset):
    """Shared plumbing: an fsspec filesystem and a (possibly versioned) single file."""

    def __init__(
        self,
        *,
        filepath: str,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        fs_args = deepcopy(fs_args) or {}
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(credentials or {}), **fs_args)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def _load_path(self) -> str:
        return get_filepath_str(self._get_load_path(), self._protocol)

    def _save_path(self) -> str:
        return get_filepath_str(self._get_save_path(), self._protocol)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}

    def _exists(self) -> bool:
        try:
            return self._fs.exists(self._load_path())
        except DatasetError:
            return False

    def _release(self) -> None:
        super()._release()
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))


class NumpyDataset(_VersionedFileDataset):
    """One ``np.ndarray`` in a ``.npy`` file; object arrays are refused on save and load."""

    def load(self) -> np.ndarray:
        with self._fs.open(self._load_path(), mode="rb") as handle:
            return np.load(io.BytesIO(handle.read()), allow_pickle=False)

    def save(self, data: np.ndarray) -> None:
        array = np.asarray(data)
        if array.dtype == object:
            raise DatasetError(
                f"{self._filepath}: refusing to save an object array (it would need pickle); "
                "convert it to a numeric or boolean dtype first."
            )
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        with self._fs.open(self._save_path(), mode="wb") as handle:
            handle.write(buffer.getvalue())
        self._release()


class TorchModelDataset(_VersionedFileDataset):
    """A model as ``.safetensors`` weights plus its JSON config in the safetensors header.

    The model class must live in the ``rodpo`` package, expose ``.config`` (a dataclass or dict)
    and a ``from_config(dict)`` classmethod. Non-persistent buffers (frozen item features) are not
    stored: the node that loads a model re-attaches them.
    """

    def load(self) -> Any:
        from safetensors.torch import load

        with self._fs.open(self._load_path(), mode="rb") as handle:
            raw = handle.read()
        header = _safetensors_metadata(raw)
        model_class = _import_model_class(header.get("model_class", ""))
        model = model_class.from_config(json.loads(header["config"]))
        missing, unexpected = model.load_state_dict(load(raw), strict=False)
        if missing or unexpected:
            raise DatasetError(
                f"{self._filepath}: weights do not match {model_class.__name__}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}. Was it written by another "
                "version of rodpo? Retrain, or load it with that version."
            )
        model.eval()
        return model

    def save(self, model: Any) -> None:
        from safetensors.torch import save

        config = model.config
        if isinstance(config, dict):
            config_dict = config
        elif hasattr(config, "to_dict"):
            config_dict = config.to_dict()
        else:
            config_dict = _dataclass_dict(config)
        model_class = f"{type(model).__module__}.{type(model).__qualname__}"
        # clone() breaks storage sharing (tied weights), which safetensors refuses to write.
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        payload = save(
            state, metadata={"model_class": model_class, "config": json.dumps(config_dict)}
        )
        with self._fs.open(self._save_path(), mode="wb") as handle:
            handle.write(payload)
        self._release()


def _dataclass_dict(config: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    header_size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_size])
    return header.get("__metadata__", {})


def _import_model_class(dotted: str) -> type:
    if not dotted.startswith(_ALLOWED_MODEL_PACKAGE):
        raise DatasetError(
            f"refusing to build model class {dotted!r}: only classes from the rodpo package load."
        )
    module_name, _, class_name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)
