"""Kedro project settings.

Parameters merge softly across environments and are resolved after the merge
(``rodpo.config.MergedParametersConfigLoader``), so ``conf/local/parameters*.yml`` (or ``--env``)
can add a dataset preset or change one field of a base preset without copying the whole file.

Experiment tracking: kedro-mlflow's hook, as ``rodpo.hooks.TrackingHook`` (the project's store
location, dataclass parameters logged field by field), replaces the instance the plugin registers
by itself. ``TransactionalRunHook`` removes the dataset versions of a failed or killed run (a killed
one's when the next session starts) and moves unversioned outputs into place only when a run finishes.
"""

import warnings

from rodpo.config import MergedParametersConfigLoader
from rodpo.distributed import environment_rank
from rodpo.hooks import NonWriterRankHook, ThreadsHook, TrackingHook
from rodpo.transactions import TransactionalRunHook

# Two warnings of Kedro 1.7 itself, not of this project: its OmegaConfigLoader registers resolvers with
# OmegaConf 2.4's deprecated register_new_resolver, and it flags node inputs such as `warmup.metrics`
# (outputs of another namespace, read by the evaluation report) although that is how namespaces join.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", module=r"kedro\.config")
warnings.filterwarnings("ignore", message=r"One or more dataset names contain '\.' characters")

CONFIG_LOADER_CLASS = MergedParametersConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft"},
}

# Under torchrun only rank 0 journals, tracks and writes; the other ranks keep their outputs in memory.
HOOKS = (ThreadsHook(), TransactionalRunHook(), TrackingHook()) if environment_rank() == 0 else (
    ThreadsHook(), NonWriterRankHook())
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow",)
