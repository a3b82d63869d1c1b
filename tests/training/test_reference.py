"""The frozen reference π_ref = π_sft and TRL-style implicit-reward statistics."""

import torch

from rodpo.training.reference import frozen_reference, implicit_reward_stats


def test_implicit_reward_stats_are_sums_over_pairs():
    stats = implicit_reward_stats(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]),
                                  torch.zeros(2), torch.zeros(2), beta=2.0)
    assert stats["rewards_chosen"].item() == 2.0
    assert stats["rewards_margin"].item() == 0.0  # (2 - 0) + (0 - 2)
    assert stats["rewards_accuracy"].item() == 1.0


def test_frozen_reference_is_eval_mode_without_gradients_and_shares_buffers():
    policy = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    policy.register_buffer("features", torch.ones(3), persistent=False)
    reference = frozen_reference(policy)
    assert not reference.training
    assert all(not p.requires_grad for p in reference.parameters())
    assert reference.features is policy.features
    assert reference[0].weight is not policy[0].weight
