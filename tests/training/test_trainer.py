import json
import logging
import math
import multiprocessing

import pytest
import torch

from rodpo.ranking import evaluate_model
from rodpo.training.checkpoints import LOCK_FILE, STATE_FILE, RunCheckpoint, RunInProgressError, RunLock
from rodpo.training.stage import Stage, set_policy_mode
from rodpo.training.trainer import DPOConfig, TrainConfig, run_directory, train

FAST = dict(batch_size=32, progress_bar=False, eval_batch_size=256)


def _valid_ndcg(model, data) -> float:
    return evaluate_model(model, data.valid, ks=(10,))["metrics"]["ndcg@10"]


def test_warmup_learns_the_planted_pattern(planted_data, make_model):
    torch.manual_seed(0)
    model = make_model()
    untrained = _valid_ndcg(model, planted_data)
    best, history = train(model, planted_data, TrainConfig(epochs=6, lr=5e-3, **FAST))
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4, 5, 6]
    assert _valid_ndcg(best, planted_data) > untrained + 0.1
    assert _valid_ndcg(model, planted_data) == untrained  # the caller's model is not modified
    assert not best.training


def test_dpo_stage_logs_trl_style_statistics(planted_data, make_model, caplog):
    torch.manual_seed(0)
    warm, _ = train(make_model(), planted_data, TrainConfig(epochs=2, lr=5e-3, **FAST))
    config = TrainConfig(stage="dpo", epochs=2, dpo=DPOConfig(k=5, lambda_dpo=0.5), **FAST)
    with caplog.at_level(logging.INFO, logger="rodpo.training"):
        _, history = train(warm, planted_data, config)
    assert history[0]["epoch"] == 0 and "valid_ndcg@10" in history[0]  # warm-up score for reference
    for key in ("dpo_loss", "ce_loss", "rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy"):
        assert math.isfinite(history[1][key]), key
    assert 0.0 <= history[1]["rewards_accuracy"] <= 1.0
    assert "dpo epoch 1:" in caplog.text and "rewards_accuracy=" in caplog.text


def test_first_dpo_step_starts_at_ln2_only_without_policy_dropout(planted_data, make_model):
    torch.manual_seed(0)
    warm = make_model(hidden_dropout=0.5, attn_dropout=0.5)
    batch = (torch.from_numpy(planted_data.train.items[:32]), torch.from_numpy(planted_data.train.timestamps[:32]))
    for dropout_on, expect_ln2 in ((False, True), (True, False)):
        stage = Stage(warm, planted_data, TrainConfig(stage="dpo", dpo=DPOConfig(k=5, policy_dropout_in_dpo=dropout_on),
                                                       device="cpu", **FAST), None)
        set_policy_mode(stage.policy, stochastic=dropout_on)
        dpo_loss = stage.step_losses(*batch)["dpo_loss"].item()
        assert (dpo_loss == pytest.approx(math.log(2), abs=1e-5)) == expect_ln2


def _interrupt_at_epoch(monkeypatch, stop_epoch: int) -> None:
    """Stage.train_epoch raises KeyboardInterrupt (a Ctrl-C) when it reaches `stop_epoch`."""
    real_epoch = Stage.train_epoch

    def train_epoch(stage, epoch, run_dir):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return real_epoch(stage, epoch, run_dir)

    monkeypatch.setattr(Stage, "train_epoch", train_epoch)


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(planted_data, make_model, tmp_path, caplog,
                                                                  monkeypatch):
    torch.manual_seed(0)
    model = make_model()
    config = dict(lr=5e-3, checkpoint_dir=str(tmp_path), **FAST)
    with monkeypatch.context() as patch:  # Ctrl-C during epoch 3 of 4
        _interrupt_at_epoch(patch, stop_epoch=3)
        with pytest.raises(KeyboardInterrupt):
            train(model, planted_data, TrainConfig(epochs=4, **config))
    (run_dir,) = tmp_path.iterdir()
    assert not (run_dir / LOCK_FILE).exists()  # the interrupted writer let go of its run
    first = RunCheckpoint(run_dir).load_state()["history"]
    assert [entry["epoch"] for entry in first] == [1, 2]
    with caplog.at_level(logging.INFO, logger="rodpo.training"):
        resumed, history = train(model, planted_data, TrainConfig(epochs=4, **config))
    assert "from epoch 3" in caplog.text
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4]
    assert history[:2] == first  # epochs 1-2 were not trained again

    uninterrupted, _ = train(model, planted_data, TrainConfig(epochs=4, **dict(config, checkpoint_dir=None)))
    for name, tensor in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, msg=name)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rodpo.training"):
        again, history_again = train(model, planted_data, TrainConfig(epochs=4, **config))
    assert "finished run" in caplog.text and history_again == history
    torch.testing.assert_close(again.state_dict(), resumed.state_dict())


def test_changed_config_starts_a_fresh_run(planted_data, make_model, tmp_path):
    model = make_model()
    train(model, planted_data, TrainConfig(epochs=1, checkpoint_dir=str(tmp_path), **FAST))
    train(model, planted_data, TrainConfig(epochs=1, lr=1e-2, checkpoint_dir=str(tmp_path), **FAST))
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_different_epoch_budgets_get_different_run_directories(planted_data, make_model, tmp_path):
    """A finished 1-epoch run is not the 2-epoch one (nor one with another patience): no shared folder."""
    model = make_model()
    budgets = ((1, 10), (2, 10), (2, 3))
    folders = {run_directory(model, planted_data, TrainConfig(epochs=epochs, patience=patience,
                                                              checkpoint_dir=str(tmp_path), **FAST))
               for epochs, patience in budgets}
    assert len(folders) == len(budgets)


def test_changed_item_features_start_a_fresh_run(planted_data, make_model, tmp_path, caplog):
    """Features are non-persistent buffers, outside the weights fingerprint: they key the run on their own."""
    caplog.set_level(logging.INFO, logger="rodpo.training")
    text = torch.randn(planted_data.n_items + 1, 4)
    model = make_model(modalities=("id", "text"), text_dim=4)
    model.set_item_features(text=text)
    config = TrainConfig(epochs=1, checkpoint_dir=str(tmp_path), **FAST)
    train(model, planted_data, config)
    caplog.clear()
    train(model, planted_data, config)  # same features: the finished run is reused
    assert "not training again" in caplog.text
    re_extracted = text.clone()
    re_extracted[3] += 1e-3
    model.set_item_features(text=re_extracted)
    caplog.clear()
    train(model, planted_data, config)
    assert "not training again" not in caplog.text
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_nan_loss_raises_a_clear_error(planted_data, make_model, tmp_path):
    model = make_model()
    with torch.no_grad():
        model.item_embedding.weight[1:] = float("nan")
    with pytest.raises(FloatingPointError, match=r"warmup stage, epoch 1, step 1: loss is nan.*lr=") as error:
        train(model, planted_data, TrainConfig(epochs=2, checkpoint_dir=str(tmp_path), **FAST))
    assert not list(tmp_path.rglob("best.safetensors"))
    assert "nothing was saved" in str(error.value) and str(tmp_path) not in str(error.value)


def test_length_sorted_encoder_chunks_give_the_same_losses(planted_data, make_model):
    torch.manual_seed(0)
    model = make_model(moe_mode="mlp")
    batch = (torch.from_numpy(planted_data.train.items[:40]), torch.from_numpy(planted_data.train.timestamps[:40]))
    losses = []
    for chunks in (1, 3):
        stage = Stage(model, planted_data, TrainConfig(encoder_chunks=chunks, device="cpu", **FAST), None)
        stage.policy.eval()  # no dropout: both calls are deterministic
        losses.append(stage.step_losses(*batch)["ce_loss"])
    torch.testing.assert_close(losses[0], losses[1])


def test_cached_reference_states_train_like_a_reference_model(planted_data, make_model):
    """The frozen reference never changes, so its states at every target can be computed once:
    the same DPO trajectory as re-encoding each batch with a copy, within float rounding."""
    torch.manual_seed(0)
    warm = make_model()
    results = {}
    for reference in ("model", "cached_states"):
        config = TrainConfig(stage="dpo", epochs=1, device="cpu", dpo=DPOConfig(k=5, reference=reference), **FAST)
        policy, history = train(warm, planted_data, config)
        results[reference] = (policy, history[-1])
    (model_policy, model_entry), (cached_policy, cached_entry) = results["model"], results["cached_states"]
    assert cached_entry["dpo_loss"] == pytest.approx(model_entry["dpo_loss"], rel=1e-4)
    for name, tensor in model_policy.state_dict().items():
        torch.testing.assert_close(cached_policy.state_dict()[name], tensor, atol=1e-4, rtol=0, msg=name)


def test_reference_free_objectives_keep_no_reference(planted_data, make_model):
    torch.manual_seed(0)
    stage = Stage(make_model(), planted_data, TrainConfig(stage="dpo", device="cpu",
                                                           dpo=DPOConfig(k=5, objective="bpr"), **FAST), None)
    assert stage.reference is None
    batch = (torch.from_numpy(planted_data.train.items[:16]), torch.from_numpy(planted_data.train.timestamps[:16]))
    losses = stage.step_losses(*batch)
    assert "rewards_margin" not in losses and losses["dpo_loss"] > 0


def test_sdpo_with_several_negatives_trains(planted_data, make_model):
    torch.manual_seed(0)
    config = TrainConfig(stage="dpo", epochs=1, device="cpu",
                         dpo=DPOConfig(k=5, objective="sdpo", n_negatives=3), **FAST)
    _, history = train(make_model(), planted_data, config)
    assert math.isfinite(history[-1]["dpo_loss"]) and history[-1]["dpo_loss"] > 0


def _weights_equal(model, other) -> bool:
    return all(torch.equal(tensor, other.state_dict()[name]) for name, tensor in model.state_dict().items())


def test_stage2_whose_every_epoch_worsens_validation_returns_the_warmups_weights(planted_data, make_model, tmp_path,
                                                                                 monkeypatch, caplog):
    """Epoch 0 (the warm-up itself) is a candidate: a sabotaged stage 2 (gradient ascent on CE) keeps it."""
    from rodpo.experiments.aggregate import training_summary
    from rodpo.training import stage as stage_module
    from rodpo.training.checkpoints import RunCheckpoint

    torch.manual_seed(0)
    warm, _ = train(make_model(), planted_data, TrainConfig(epochs=3, lr=5e-3, **FAST))
    ascent = stage_module.chunked_cross_entropy
    monkeypatch.setattr(stage_module, "chunked_cross_entropy", lambda *args, **kwargs: -ascent(*args, **kwargs))
    ascent_and_pool = stage_module.cross_entropy_and_top_k  # a DPO step's CE comes with its negative pool

    def ascent_with_pool(*args, **kwargs):
        loss, *pool = ascent_and_pool(*args, **kwargs)
        return (-loss, *pool)

    monkeypatch.setattr(stage_module, "cross_entropy_and_top_k", ascent_with_pool)
    config = dict(stage="dpo", lr=5e-3, checkpoint_dir=str(tmp_path), dpo=DPOConfig(k=5), **FAST)
    with monkeypatch.context() as patch:  # interrupted during epoch 2 ...
        _interrupt_at_epoch(patch, stop_epoch=2)
        with pytest.raises(KeyboardInterrupt):
            train(warm, planted_data, TrainConfig(epochs=3, **config))
    with caplog.at_level(logging.INFO, logger="rodpo.training"):
        kept, history = train(warm, planted_data, TrainConfig(epochs=3, **config))  # ... and resumed
    assert "from epoch 2" in caplog.text and "best epoch 0" in caplog.text
    scores = [entry["valid_ndcg@10"] for entry in history]
    assert [entry["epoch"] for entry in history] == [0, 1, 2, 3] and max(scores[1:]) < scores[0]
    assert _weights_equal(kept, warm)
    (run_dir,) = [path for path in tmp_path.iterdir() if path.name.startswith("dpo-")]
    saved = make_model()
    RunCheckpoint(run_dir).load_weights(saved, "best")
    assert _weights_equal(saved, warm)  # best.safetensors holds the warm-up's weights
    assert json.loads((run_dir / "done.json").read_text())["best_epoch"] == 0
    summary = training_summary(history)
    assert summary["best_epoch"] == 0 and summary["best_valid"] == scores[0] and summary["passed_peak"]
    again, _ = train(warm, planted_data, TrainConfig(epochs=3, **config))  # the finished run, reused
    assert _weights_equal(again, warm)


def test_a_run_saved_before_epoch_0_was_a_candidate_lets_the_warmup_win():
    from rodpo.training.trainer import count_epoch_zero

    history = [{"epoch": 0, "valid_ndcg@10": 0.2}, {"epoch": 1, "valid_ndcg@10": 0.1},
               {"epoch": 2, "valid_ndcg@10": 0.15}]
    best = {"metric": 0.15, "epoch": 2, "evals_since": 0}
    count_epoch_zero(best, history, "ndcg@10")
    assert best == {"metric": 0.2, "epoch": 0, "evals_since": 2}
    counted = {"metric": 0.25, "epoch": 1, "evals_since": 1}
    count_epoch_zero(counted, history, "ndcg@10")  # a stage-2 epoch above the warm-up stays the best
    assert counted == {"metric": 0.25, "epoch": 1, "evals_since": 1}


def test_dpo_and_sdpo_with_m_losers_draw_the_same_losers(planted_data, make_model):
    """So S-DPO vs DPO-M differs in the softmax form only, not in the negatives."""
    torch.manual_seed(0)
    warm = make_model()
    batch = (torch.from_numpy(planted_data.train.items[:32]), torch.from_numpy(planted_data.train.timestamps[:32]))
    losers, losses = {}, {}
    for objective in ("dpo", "sdpo"):
        seen = []
        config = TrainConfig(stage="dpo", device="cpu", dpo=DPOConfig(k=5, objective=objective, n_negatives=3), **FAST)
        stage = Stage(warm, planted_data, config, None, pair_monitor=lambda **pairs: seen.append(pairs["losers"]))
        set_policy_mode(stage.policy, stochastic=False)
        losses[objective] = stage.step_losses(*batch)["dpo_loss"].item()
        losers[objective] = seen[0]
    assert losers["dpo"].shape[1] == 3 and torch.equal(losers["dpo"], losers["sdpo"])
    assert losses["dpo"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the start
    assert losses["sdpo"] == pytest.approx(math.log(4), abs=1e-5)  # -log σ(-log 3) = log 4


def test_continued_warmup_control_trains_exactly_like_more_warmup_epochs(planted_data, make_model):
    """Stage 2 with the control's overrides (λ = 0, dropout on, the warm-up's optimizer) follows the
    warm-up's own loss and dropout: the same CE curve and weights as warm-up epochs from the same start."""
    from rodpo.experiments.controls import CONTINUED_WARMUP, CONTROL_OVERRIDES
    from rodpo.experiments.overrides import apply_overrides

    torch.manual_seed(0)
    warm = make_model(hidden_dropout=0.3, attn_dropout=0.3)
    warmup = TrainConfig(epochs=2, lr=5e-3, seed=7, device="cpu", **FAST)
    overrides = {**CONTROL_OVERRIDES[CONTINUED_WARMUP], "rodpo.lr": warmup.lr, "rodpo.seed": warmup.seed}
    control = TrainConfig(**apply_overrides({"rodpo": TrainConfig(stage="dpo", epochs=2, device="cpu", **FAST)},
                                            overrides)["rodpo"])
    assert control.dpo.lambda_dpo == 0.0 and control.dpo.policy_dropout_in_dpo
    continued, continued_history = train(warm, planted_data, warmup)
    controlled, control_history = train(warm, planted_data, control)
    for name in ("ce_loss", "valid_ndcg@10"):
        assert [e[name] for e in control_history[1:]] == pytest.approx([e[name] for e in continued_history], rel=1e-6)
    assert control_history[0]["valid_ndcg@10"] < control_history[-1]["valid_ndcg@10"]  # both keep epoch 2
    torch.testing.assert_close(controlled.state_dict(), continued.state_dict())


def test_stage2_leaves_the_item_before_each_target_out_of_the_pool_with_earlier_items(planted_data, make_model):
    """The trainer wires `exclude_from_pool` into the sampler: with earlier_items no random loser is
    the item the user had just interacted with (one of the earlier items); with none, some are."""
    torch.manual_seed(0)
    warm = make_model()
    batch = (torch.from_numpy(planted_data.train.items[:64]), torch.from_numpy(planted_data.train.timestamps[:64]))
    hits = {}
    for mode in ("none", "earlier_items"):
        seen = []
        dpo = DPOConfig(negative_strategy="random", n_negatives=3, exclude_from_pool=mode)
        stage = Stage(warm, planted_data, TrainConfig(stage="dpo", device="cpu", dpo=dpo, **FAST), None,
                       pair_monitor=lambda **pairs: seen.append(pairs))
        stage.step_losses(*batch)
        hits[mode] = int((seen[0]["losers"] == seen[0]["last_items"][:, None]).sum())
    assert hits["none"] > 0 and hits["earlier_items"] == 0


def test_a_top_k_pool_larger_than_the_catalog_is_capped_with_a_warning(planted_data, make_model, caplog):
    config = TrainConfig(stage="dpo", device="cpu", dpo=DPOConfig(k=100_000), **FAST)
    with caplog.at_level(logging.WARNING, logger="rodpo.training"):
        stage = Stage(make_model(), planted_data, config, None)
    assert stage.pool_k == planted_data.n_items - 1  # every item but the positive
    assert "rodpo.dpo.k=100000 is more than the 19 items" in caplog.text and "capped at 19" in caplog.text
    batch = (torch.from_numpy(planted_data.train.items[:8]), torch.from_numpy(planted_data.train.timestamps[:8]))
    assert torch.isfinite(stage.step_losses(*batch)["loss"])
    caplog.clear()
    assert Stage(make_model(), planted_data, TrainConfig(stage="dpo", device="cpu", dpo=DPOConfig(k=5), **FAST),
                  None).pool_k == 5
    assert "capped" not in caplog.text
    with pytest.raises(ValueError, match=r"rodpo\.dpo\.n_negatives=25: the catalog has 20 items"):
        Stage(make_model(), planted_data, TrainConfig(stage="dpo", device="cpu", dpo=DPOConfig(
            k=100, objective="sdpo", n_negatives=25), **FAST), None)


@pytest.mark.parametrize(("dpo", "named"), [
    (DPOConfig(beta=100.0), "rodpo.dpo.beta=100.0 (|beta| > 50)"),
    (DPOConfig(lambda_dpo=1000.0), "rodpo.dpo.lambda_dpo=1000.0 (|lambda_dpo| > 100)"),
    (DPOConfig(objective="simpo", gamma=-80.0), "rodpo.dpo.gamma=-80.0 (|gamma| > 50)"),
    (DPOConfig(), None),
])
def test_a_nan_loss_names_extreme_preference_parameters(planted_data, make_model, dpo, named):
    stage = Stage(make_model(), planted_data, TrainConfig(stage="dpo", device="cpu", dpo=dpo, **FAST), None)
    losses = {"loss": torch.tensor(float("nan")), "ce_loss": torch.tensor(1.0), "dpo_loss": torch.tensor(float("nan")),
              "n_targets": 1}
    with pytest.raises(FloatingPointError) as error:
        stage.check_finite(losses, epoch=1, step=3, run_dir=None)
    message = str(error.value)
    assert "lr=" in message  # the learning rate stays a suspect
    if named:
        assert f"extreme preference parameters: {named}" in message
    else:
        assert "extreme" not in message


def _hold_run_lock(directory, locked, release) -> None:
    """Child process: another `kedro run` training this run."""
    with RunLock(directory):
        locked.set()
        release.wait(120)


def test_a_run_another_process_is_training_is_refused(planted_data, make_model, tmp_path):
    model = make_model()
    config = TrainConfig(epochs=1, checkpoint_dir=str(tmp_path), **FAST)
    run_dir = run_directory(model, planted_data, config)
    spawn = multiprocessing.get_context("spawn")
    locked, release = spawn.Event(), spawn.Event()
    other = spawn.Process(target=_hold_run_lock, args=(str(run_dir), locked, release))
    other.start()
    try:
        assert locked.wait(120)
        with pytest.raises(RunInProgressError, match=rf"run in progress \(pid {other.pid}, host "):
            train(model, planted_data, config)
        assert not (run_dir / STATE_FILE).exists()  # nothing written next to the other process
    finally:
        release.set()
        other.join(120)
    train(model, planted_data, config)  # the folder is free again
    assert (run_dir / STATE_FILE).exists() and not (run_dir / LOCK_FILE).exists()
