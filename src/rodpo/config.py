"""The project's config loader: parameters are resolved once, after every environment is merged.

Kedro's ``OmegaConfigLoader`` resolves the interpolations of each environment (``conf/base``,
``conf/local`` or ``--env``) on its own and only then merges the results. An interpolation in
``conf/base`` therefore never sees a value added in another environment: ``dataset_spec:
${datasets.${dataset}}`` fails for a preset written to ``conf/local`` and silently ignores an
override of one field of a base preset there. This loader merges the raw parameter files of the
base and the run environment (soft merge: the run environment wins key by key), adds the runtime
parameters, and resolves the result once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from omegaconf import DictConfig

PARAMETERS = "parameters"


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
