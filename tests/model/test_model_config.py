"""ModelConfig checks its numbers when it is built, named as `model.<field>` of parameters_warmup.yml."""

from __future__ import annotations

import numpy as np
import pytest

from rodpo.model.config import ModelConfig


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hidden_size", "64", r"model\.hidden_size='64': expected an integer, got str"),
    ("n_layers", 2.0, r"model\.n_layers=2\.0: expected an integer"),
    ("hidden_dropout", float("nan"), r"model\.hidden_dropout=nan: must be a finite number"),
    ("attn_dropout", 1.5, r"model\.attn_dropout=1\.5: must be <= 1"),
    ("moe_aux_weight", -0.01, r"model\.moe_aux_weight=-0\.01: must be >= 0"),
    ("temporal", "false", r"model\.temporal='false': expected true or false"),
    ("n_gap_buckets", 1, r"model\.n_gap_buckets=1: must be >= 2; bucket 0 is padding"),
    ("n_items", 0, r"model\.n_items=0: must be >= 1"),
])
def test_bad_numbers_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{"n_items": 10, "modalities": ("id",), field: value})


def test_numbers_from_the_data_pass():
    config = ModelConfig(n_items=np.int64(10), modalities=("id",), time_min=np.int64(1_500_000_000),
                         time_max=1_600_000_000)
    assert config.n_items == 10
