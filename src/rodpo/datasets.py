"""Custom Kedro datasets: NumPy arrays and torch models stored without pickle.

kedro-datasets has no ``.npy`` dataset, and pickling torch modules ties a checkpoint to the exact
code that wrote it (and unpickling an untrusted file runs arbitrary code). These two datasets keep
feature matrices as plain ``.npy`` (``allow_pickle=False``) and models as ``.safetensors`` weights
with their JSON config in the file header, so any saved artefact loads safely in NumPy or torch.
A model file is byte-reproducible (sorted header, fixed tensor order) and may carry a ``lineage``
dict (input name -> content hash) in its header.
"""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Mapping
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

# The only classes a model file may name (header "model_class" -> module, attribute). A file never
# chooses what gets imported: a name not listed here is refused before any import.
LOADABLE_MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "rodpo.model.encoder.RoDPOModel": ("rodpo.model.encoder", "RoDPOModel"),
}
SAFETENSORS_SIZE_BYTES = 8  # a safetensors file starts with its JSON header's size, little-endian u64
HEADER_ALIGNMENT = 8  # safetensors pads its JSON header with spaces to a multiple of 8 bytes


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

    The model class must be listed in ``LOADABLE_MODEL_CLASSES``, expose ``.config`` (a dataclass or
    dict) and a ``from_config(dict)`` classmethod. Before anything is allocated, the header is checked
    to be safetensors and its tensor shapes against the ones the config implies (the model is first
    built on the ``meta`` device). ``model.lineage`` (dict of str -> str) is saved under the header
    key "lineage" and restored on load ({} when absent). Non-persistent buffers (frozen item features)
    are not stored: the node that loads a model re-attaches them.
    """

    def load(self) -> Any:
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self._load_path()
        with self._fs.open(path, mode="rb") as handle:
            raw = handle.read()
        metadata = _safetensors_header(raw, path).get("__metadata__") or {}
        model_class = _import_model_class(metadata.get("model_class", ""), path)
        config = _header_json(metadata, "config", path)
        lineage = _lineage(_header_json(metadata, "lineage", path, default={}), f"{path}: header 'lineage'")
        try:
            state = load(raw)  # validates every tensor's offsets and size against the file first
        except SafetensorError as error:
            raise DatasetError(
                f"{path} is not a readable safetensors file ({error}); it is truncated or corrupt. "
                "Re-save the model with rodpo (rerun the node that wrote it)."
            ) from error
        with torch.device("meta"):  # shapes only: a config asking for 512 GB allocates nothing here
            skeleton = _build(model_class, config, path)
        _check_shapes(skeleton.state_dict(), state, config, path, model_class.__name__)
        model = _build(model_class, config, path)
        model.load_state_dict(state)
        model.lineage = lineage
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
        if model_class not in LOADABLE_MODEL_CLASSES:
            raise DatasetError(
                f"{self._filepath}: refusing to save a {model_class}: it could not be loaded back. Add it to "
                "rodpo.datasets.LOADABLE_MODEL_CLASSES (an nn.Module with from_config) first."
            )
        lineage = _lineage(getattr(model, "lineage", None) or {}, f"{self._filepath}: model.lineage")
        # clone() breaks storage sharing (tied weights), which safetensors refuses to write.
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        metadata = {
            "model_class": model_class,
            "config": json.dumps(config_dict, sort_keys=True),
            "lineage": json.dumps(lineage, sort_keys=True),
        }
        payload = _canonical_header(save(state, metadata=metadata))
        with self._fs.open(self._save_path(), mode="wb") as handle:
            handle.write(payload)
        self._release()


def _dataclass_dict(config: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)


def _safetensors_header(raw: bytes, path: str) -> dict[str, Any]:
    """The JSON header of a safetensors file, after checking the file is one (never unpickling it)."""

    def refuse(problem: str) -> DatasetError:
        if raw[:2] == b"PK" or raw[:1] == b"\x80":
            problem += "; it starts like a torch.save zip archive or a pickle"
        return DatasetError(f"{path} is not a safetensors file ({problem}); rodpo never loads pickles; re-save "
                            "the model with rodpo (rerun the node that wrote it).")

    if len(raw) < SAFETENSORS_SIZE_BYTES:
        raise refuse(f"{len(raw)} bytes, too short for the 8-byte header size")
    size = int.from_bytes(raw[:SAFETENSORS_SIZE_BYTES], "little")
    if size > len(raw) - SAFETENSORS_SIZE_BYTES:
        raise refuse(f"its first 8 bytes announce a {size}-byte header in a {len(raw)}-byte file")
    try:
        header = json.loads(raw[SAFETENSORS_SIZE_BYTES : SAFETENSORS_SIZE_BYTES + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refuse(f"its header is not UTF-8 JSON: {error}") from error
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise refuse("its header is not a JSON object with an object under '__metadata__'")
    return header


def _canonical_header(payload: bytes) -> bytes:
    """The same safetensors bytes with the header JSON key-sorted: safetensors writes its metadata
    in hash-map order, which changes from one save to the next. Data offsets are relative to the end
    of the header, so the tensor bytes are kept as they are."""
    size = int.from_bytes(payload[:SAFETENSORS_SIZE_BYTES], "little")
    header = json.loads(payload[SAFETENSORS_SIZE_BYTES : SAFETENSORS_SIZE_BYTES + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return len(text).to_bytes(SAFETENSORS_SIZE_BYTES, "little") + text + payload[SAFETENSORS_SIZE_BYTES + size :]


def _header_json(metadata: Mapping[str, str], key: str, path: str, default: Any = None) -> Any:
    """A JSON object stored as a string under ``key`` of the header metadata."""
    if key not in metadata and default is not None:
        return default
    try:
        value = json.loads(metadata.get(key, ""))
    except (TypeError, json.JSONDecodeError) as error:
        raise DatasetError(
            f"{path}: header entry {key!r} is missing or not JSON ({error}); re-save the model with rodpo."
        ) from error
    if not isinstance(value, dict):
        raise DatasetError(f"{path}: header entry {key!r} is a JSON {type(value).__name__}, expected an object; "
                           "re-save the model with rodpo.")
    return value


def _lineage(value: Any, where: str) -> dict[str, str]:
    """A lineage dict (input name -> content hash), checked to be str -> str."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise DatasetError(f"{where} must be a dict of str -> str (e.g. {{'features': '<sha256>'}}), got {value!r}.")
    return dict(value)


def _import_model_class(dotted: str, path: str) -> type:
    """The registered class a header names; anything else is refused before any import."""
    from torch import nn

    if dotted not in LOADABLE_MODEL_CLASSES:
        raise DatasetError(
            f"{path}: refusing to build model class {dotted!r} named in its header: only "
            f"{sorted(LOADABLE_MODEL_CLASSES)} load. A new rodpo model class goes into "
            "rodpo.datasets.LOADABLE_MODEL_CLASSES."
        )
    module_name, attribute = LOADABLE_MODEL_CLASSES[dotted]
    model_class = getattr(importlib.import_module(module_name), attribute, None)
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)
            and callable(getattr(model_class, "from_config", None))):
        raise DatasetError(f"rodpo.datasets.LOADABLE_MODEL_CLASSES[{dotted!r}] is not an nn.Module class with "
                           "from_config; fix the registry entry.")
    return model_class


def _build(model_class: type, config: dict[str, Any], path: str) -> Any:
    try:
        return model_class.from_config(config)
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{path}: the config in its header does not build a {model_class.__name__} ({error}); "
                           "re-save the model with rodpo.") from error


def _check_shapes(expected: Mapping[str, Any], stored: Mapping[str, Any], config: Mapping[str, Any], path: str,
                  class_name: str) -> None:
    """Every tensor of the file has the name and shape the header's config implies."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise DatasetError(
            f"{path}: weights do not match {class_name}: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            "Was it written by another version of rodpo? Retrain, or load it with that version."
        )
    for name, tensor in expected.items():
        implied, found = list(tensor.shape), list(stored[name].shape)
        if implied != found:
            raise DatasetError(
                f"{path}: tensor {name!r} has shape {found} in the file header, but the config in the header "
                f"implies {implied}{_explained(implied, found, config)}. Config and weights disagree (the file "
                "was edited or corrupted); re-save the model with rodpo or retrain."
            )


def _explained(implied: list[int], found: list[int], config: Mapping[str, Any]) -> str:
    """' (from n_items + 1 = 2000000001 with n_items=2000000000)': the config entries behind the differing sizes."""
    sizes = {k: v for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool)}
    terms = []
    for position, size in enumerate(implied):
        if position < len(found) and found[position] == size:
            continue
        terms += [f"{k}={v}" for k, v in sizes.items() if v == size]
        terms += [f"{k} + 1 = {size} with {k}={v}" for k, v in sizes.items() if v + 1 == size]
    return f" (from {', '.join(terms)})" if terms else ""
