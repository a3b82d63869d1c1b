"""Kedro project settings.

Parameters merge softly across environments, so ``conf/local/parameters*.yml`` can add a dataset
preset or change one field without copying the whole file.

Experiment tracking: kedro-mlflow's hook, as ``rodpo.hooks.TrackingHook`` (the project's store
location, dataclass parameters logged field by field), replaces the instance the plugin registers
by itself.
"""

from kedro.config import OmegaConfigLoader

from rodpo.hooks import TrackingHook

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
}

HOOKS = (TrackingHook(),)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
