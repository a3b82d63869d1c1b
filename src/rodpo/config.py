"""The project's config loader: parameters are resolved once, after every environment is merged.

Kedro's ``OmegaConfigLoader`` resolves the interpolations of each environment (``conf/base``,
``conf/local`` or ``--env``) on its own and only then merges the results. An interpolation in
``conf/base`` therefore never sees a value added in another environment: ``dataset_spec:
${datasets.${dataset}}`` fails for a preset written to ``conf/local`` and silently ignores an
override of one field of a base preset there. This loader merges the raw parameter files of the
base and the run environment (soft merge: the run environment wins key by key), adds the runtime
parameters, and resolves the result once. A ``dataset`` that names no preset is refused with the
list of presets, not with OmegaConf's ``InterpolationKeyError`` on ``datasets.<name>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

PARAMETERS = "parameters"
PRESETS = "datasets"  # dataset presets, by name
CHOSEN_PRESET = "dataset"


class UnknownDatasetError(ValueError):
    """``dataset`` names no preset under ``datasets``."""


class MergedParametersConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` whose parameters are merged across environments before resolution."""

    def _resolve_from_raw_config(  # noqa: PLR0913 - Kedro's signature
        self,
        key: str,
        base_configs: dict[Path, DictConfig],
        env_configs: dict[Path, DictConfig],
        base_path: str,
        env_path: str,
        processed_files: set[Path],
    ) -> dict[str, Any]:
        if key != PARAMETERS or not env_configs or self.merge_strategy.get(key) != "soft":
            return super()._resolve_from_raw_config(
                key, base_configs, env_configs, base_path, env_path, processed_files
            )
        # Base files first, then the run environment's: OmegaConf's merge lets later files win.
        return self._merge_and_resolve(key, {**base_configs, **env_configs})

    def _merge_and_resolve(self, key: str, config_per_file: dict[Path, DictConfig]) -> dict[str, Any]:
        try:
            return super()._merge_and_resolve(key, config_per_file)
        except InterpolationKeyError:
            if key == PARAMETERS:
                _refuse_unknown_dataset(OmegaConf.unsafe_merge(*config_per_file.values(), self.runtime_params))
            raise


def _refuse_unknown_dataset(parameters: DictConfig) -> None:
    """Raise ``UnknownDatasetError`` listing the presets when ``dataset`` is not one of them."""
    presets = parameters.get(PRESETS)
    chosen = OmegaConf.select(parameters, CHOSEN_PRESET, throw_on_resolution_failure=False)
    if not isinstance(presets, DictConfig) or not isinstance(chosen, str) or chosen in presets:
        return
    raise UnknownDatasetError(
        f"dataset={chosen!r} is not a dataset preset; the presets are: {', '.join(sorted(presets))}. "
        "Pick one with --params=dataset=<name>, or add your own under `datasets:` in "
        "conf/local/parameters.yml (README: 'Your own data')."
    ) from None
