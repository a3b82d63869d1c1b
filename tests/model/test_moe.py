import torch

from rodpo.model.moe import ItemRefinement, SparseNoisyMoE


def _moe(top_k: int = 2) -> SparseNoisyMoE:
    torch.manual_seed(0)
    moe = SparseNoisyMoE(hidden_size=8, inner_size=16, n_experts=4, top_k=top_k, noise_scale=1.0)
    torch.nn.init.normal_(moe.w_gate.weight)  # a non-uniform router
    torch.nn.init.normal_(moe.w_noise.weight)
    return moe


def test_gates_select_k_experts_and_sum_to_one():
    moe = _moe(top_k=2).train()
    gates, aux_loss = moe.gates(torch.randn(64, 8))
    assert ((gates > 0).sum(dim=1) == 2).all()
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(64))
    assert torch.isfinite(aux_loss) and aux_loss > 0


def test_noise_only_in_training_mode():
    moe = _moe()
    hidden = torch.randn(256, 8)
    moe.eval()
    eval_gates = [moe.gates(hidden)[0] for _ in range(2)]
    torch.testing.assert_close(eval_gates[0], eval_gates[1])
    moe.train()
    train_gates = [moe.gates(hidden)[0] for _ in range(2)]
    assert not torch.equal(train_gates[0], train_gates[1])


def test_moe_output_is_gate_weighted_sum_of_experts():
    moe = _moe().eval()
    hidden = torch.randn(5, 8)
    out, _ = moe(hidden)
    gates, _ = moe.gates(hidden)
    expected = sum(gates[:, j : j + 1] * expert(hidden) for j, expert in enumerate(moe.experts))
    torch.testing.assert_close(out, expected)


def test_experts_are_registered_and_trained():
    moe = _moe().train()
    out, aux_loss = moe(torch.randn(128, 8))
    (out.pow(2).mean() + aux_loss).backward()
    names = set(moe.state_dict())
    assert {f"experts.{j}.fc_in.weight" for j in range(4)} <= names
    assert all(expert.fc_in.weight.grad is not None for expert in moe.experts)  # 128 tokens reach all 4
    assert moe.w_gate.weight.grad is not None and moe.w_noise.weight.grad is not None


def test_refinement_leaves_padding_tokens_alone():
    torch.manual_seed(0)
    tokens = torch.randn(2, 3, 8)
    is_real = torch.tensor([[True, True, False], [True, False, False]])
    for mode in ("sparse", "mlp"):
        refined, aux_loss = ItemRefinement(mode, 8, 16, 4, 2, 1.0)(tokens, is_real)
        torch.testing.assert_close(refined[~is_real], tokens[~is_real])
        assert not torch.allclose(refined[is_real], tokens[is_real])
    refined, aux_loss = ItemRefinement("none", 8, 16, 4, 2, 1.0)(tokens, is_real)
    assert refined is tokens and aux_loss.item() == 0.0
