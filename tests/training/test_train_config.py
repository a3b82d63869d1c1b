"""Training settings are checked once, when the config is built: every numeric parameter with its
type and range, named as the user sets it (`rodpo.dpo.beta`, `warmup.lr`), including the values
`kedro run --params` hands over (its parser makes `beta=.nan` a float NaN, `beta=nan` a string)."""

from __future__ import annotations

import pytest
from kedro.framework.cli.utils import _split_params

from rodpo.training.config import DPOConfig, TrainConfig


def _from_cli(params: str, block: str) -> TrainConfig:
    """The config `kedro run --params=<params>` would build for `block` (stage from the block)."""
    values = _split_params(None, None, params)[block]
    return TrainConfig(stage={"warmup": "warmup", "rodpo": "dpo"}[block], **values)


@pytest.mark.parametrize(("params", "message"), [
    ("rodpo.dpo.lambda_dpo=-1", r"rodpo\.dpo\.lambda_dpo=-1: must be >= 0; λ < 0 maximises L_DPO"),
    ("rodpo.dpo.lambda_dpo=.nan", r"rodpo\.dpo\.lambda_dpo=nan: must be a finite number"),
    ("rodpo.dpo.beta=nan", r"rodpo\.dpo\.beta='nan': expected a finite number, got str \(NaN and infinity"),
    ("rodpo.dpo.beta=.inf", r"rodpo\.dpo\.beta=inf: must be a finite number"),
    ("rodpo.dpo.beta=0", r"rodpo\.dpo\.beta=0: must be > 0; β <= 0 removes or inverts"),
    ("rodpo.dpo.k=big", r"rodpo\.dpo\.k='big': expected an integer, got str"),
    ("rodpo.dpo.k=10.0", r"rodpo\.dpo\.k=10\.0: expected an integer, got float"),
    ("rodpo.dpo.gamma=.nan", r"rodpo\.dpo\.gamma=nan: must be a finite number"),
    ("rodpo.dpo.n_negatives=true", r"rodpo\.dpo\.n_negatives=True: expected an integer, got bool"),
    ("rodpo.dpo.exclude_history=no_thanks", r"rodpo\.dpo\.exclude_history='no_thanks': expected true or false"),
    ("rodpo.lr=0", r"rodpo\.lr=0: must be > 0"),
    ("rodpo.epochs=ten", r"rodpo\.epochs='ten': expected an integer, got str"),
    ("warmup.lr=.inf", r"warmup\.lr=inf: must be a finite number"),
    ("warmup.lr=fast", r"warmup\.lr='fast': expected a finite number, got str"),
    ("warmup.weight_decay=-0.1", r"warmup\.weight_decay=-0\.1: must be >= 0"),
    ("warmup.grad_clip=.nan", r"warmup\.grad_clip=nan: must be a finite number"),
    ("warmup.batch_size=0", r"warmup\.batch_size=0: must be >= 1"),
    ("warmup.world_size=2.5", r"warmup\.world_size=2\.5: expected an integer"),
    ("warmup.seed=abc", r"warmup\.seed='abc': expected an integer"),
    ("warmup.dist_timeout_s=0", r"warmup\.dist_timeout_s=0: must be > 0"),
    ("warmup.score_chunk_items=0", r"warmup\.score_chunk_items=0: must be >= 1; use 'auto'"),
    ("warmup.score_chunk_items=many", r"warmup\.score_chunk_items='many': expected an integer"),
])
def test_bad_values_from_the_command_line_are_refused_by_name(params, message):
    with pytest.raises(ValueError, match=message):
        _from_cli(params, params.split(".")[0])


def test_sound_values_from_the_command_line_pass():
    config = _from_cli("rodpo.dpo.beta=0.5,rodpo.dpo.lambda_dpo=0,rodpo.dpo.k=10,rodpo.lr=1e-4,rodpo.grad_clip=0",
                       "rodpo")
    assert (config.dpo.beta, config.dpo.lambda_dpo, config.dpo.k, config.lr, config.grad_clip) == (0.5, 0, 10, 1e-4, 0)


def test_a_config_object_is_checked_too():
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.lambda_dpo=-1\.0"):
        DPOConfig(lambda_dpo=-1.0)
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.beta='1\.0'.*a quoted number"):
        TrainConfig(stage="dpo", dpo={"beta": "1.0"})


def test_the_epoch_budget_is_part_of_the_run_key():
    base = TrainConfig(stage="dpo")
    for changed in (TrainConfig(stage="dpo", epochs=base.epochs + 1), TrainConfig(stage="dpo", patience=1)):
        assert changed.run_key_fields() != base.run_key_fields()
    assert TrainConfig(stage="dpo", eval_batch_size=7).run_key_fields() == base.run_key_fields()
