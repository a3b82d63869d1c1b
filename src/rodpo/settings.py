"""Kedro project settings.

Parameters merge softly across environments, so ``conf/local/parameters*.yml`` can add a dataset
preset or change one field without copying the whole file.
"""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
}
