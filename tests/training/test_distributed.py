"""torch.distributed on the CPU (gloo): two ranks train like one process with the same global batch,
only rank 0 writes, a run whose worker is killed resumes from its checkpoint, and bad settings fail
clearly. Tolerances: the two ranks sum the same per-target losses in another order, so weights agree
to float rounding amplified by Adam (atol 1e-4 after one epoch of ~40 steps on a tiny model)."""

from __future__ import annotations

import os
import signal
import threading
import time

import multiprocessing

import pytest
import torch

import rodpo.distributed
from rodpo.distributed import (
    OVERSUBSCRIBE_VARIABLE,
    DistributedError,
    _free_local_port,
    check_world_size,
    init_process_group,
    launch_local,
)
from rodpo.training.checkpoints import STATE_FILE
from rodpo.training.trainer import TrainConfig, train

pytestmark = pytest.mark.slow

FAST = dict(batch_size=16, progress_bar=False, eval_batch_size=64, device="cpu", lr=5e-3)
WEIGHT_ATOL = 1e-4


@pytest.fixture(autouse=True)
def _two_ranks_even_on_one_core(monkeypatch):
    """These tests run 2 gloo ranks on any machine, a 1-core one included (the core limit is tested below)."""
    monkeypatch.setenv(OVERSUBSCRIBE_VARIABLE, "1")


def _deterministic_model(make_model):
    """No dropout and no router noise: the ranks' own random streams cannot change the result."""
    torch.manual_seed(0)
    return make_model(hidden_dropout=0.0, attn_dropout=0.0, moe_mode="mlp")


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(planted_data, make_model, tmp_path):
    model = _deterministic_model(make_model)
    single, single_history = train(model, planted_data, TrainConfig(epochs=1, **FAST))
    double, double_history = train(model, planted_data, TrainConfig(epochs=1, world_size=2,
                                                                   checkpoint_dir=str(tmp_path), **FAST))
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(double.state_dict()[name], tensor, atol=WEIGHT_ATOL, rtol=0, msg=name)
    assert double_history[-1]["ce_loss"] == pytest.approx(single_history[-1]["ce_loss"], rel=1e-5)
    # validation is sharded over the users and gathered: the same metrics within float rounding
    assert double_history[-1]["valid_ndcg@10"] == pytest.approx(single_history[-1]["valid_ndcg@10"], abs=1e-3)
    run_dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1  # one run, written once (rank 0), no per-rank copies or leftovers
    assert sorted(p.name for p in run_dirs[0].iterdir()) == ["best.safetensors", "done.json", "last.safetensors",
                                                              STATE_FILE]


def test_a_dpo_stage_with_the_moe_runs_on_two_ranks(planted_data, make_model):
    torch.manual_seed(0)
    warm = make_model()  # sparse MoE (unused experts per batch) and dropout in the warm-up
    config = TrainConfig(stage="dpo", epochs=1, world_size=2, dpo={"k": 5}, **FAST)
    policy, history = train(warm, planted_data, config)
    assert history[-1]["dpo_loss"] > 0 and torch.isfinite(torch.tensor(history[-1]["loss"]))
    assert not torch.equal(policy.item_embedding.weight, warm.item_embedding.weight)


def _kill_rank_one_after_first_checkpoint(run_root, stop: threading.Event) -> None:
    """Wait for rank 0's first epoch checkpoint, then kill -9 the rank-1 worker."""
    while not stop.is_set():
        if list(run_root.rglob(STATE_FILE)):
            for child in multiprocessing.active_children():
                if child.name == "rodpo-rank1":
                    os.kill(child.pid, signal.SIGKILL)
                    return
        time.sleep(0.02)


def test_a_run_whose_worker_is_killed_resumes_from_its_checkpoint(planted_data, make_model, tmp_path):
    model = _deterministic_model(make_model)
    config = dict(epochs=3, world_size=2, **FAST)
    reference, _ = train(model, planted_data, TrainConfig(checkpoint_dir=str(tmp_path / "reference"), **config))
    stop = threading.Event()
    killer = threading.Thread(target=_kill_rank_one_after_first_checkpoint, args=(tmp_path / "killed", stop))
    killer.start()
    try:
        with pytest.raises(DistributedError, match="rank1 .*died.*last checkpoint is kept"):
            train(model, planted_data, TrainConfig(checkpoint_dir=str(tmp_path / "killed"), **config))
    finally:
        stop.set()
        killer.join()
    resumed, history = train(model, planted_data, TrainConfig(checkpoint_dir=str(tmp_path / "killed"), **config))
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    for name, tensor in reference.state_dict().items():  # the same trajectory, bit for bit
        assert torch.equal(resumed.state_dict()[name], tensor), name


def test_world_sizes_the_machine_cannot_run_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="world_size=0"):
        check_world_size(0, "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"warmup.world_size=4 but only 2 CUDA device"):
        check_world_size(4, "auto", parameter="warmup.world_size")
    with pytest.raises(ValueError, match="TrainConfig|world_size"):
        TrainConfig(world_size=0)


def test_an_unreachable_rendezvous_names_the_address():
    with pytest.raises(DistributedError, match=r"127\.0\.0\.1:1 .*MASTER_ADDR"):
        init_process_group(1, 2, "gloo", address="127.0.0.1", port=1, timeout_s=2)


def _no_spawning(*args, **kwargs):
    raise AssertionError("a worker process was about to start")


def test_a_world_size_above_the_cores_is_refused_at_once_before_any_worker_starts(planted_data, make_model,
                                                                                    monkeypatch):
    monkeypatch.delenv(OVERSUBSCRIBE_VARIABLE)
    monkeypatch.setattr(rodpo.distributed, "usable_cores", lambda: 2)
    monkeypatch.setattr(rodpo.distributed.mp, "get_context", _no_spawning)
    started = time.perf_counter()
    with pytest.raises(ValueError) as error:
        train(make_model(), planted_data, TrainConfig(epochs=1, world_size=3, **FAST))
    assert time.perf_counter() - started < 5
    assert not multiprocessing.active_children()
    message = str(error.value)
    assert message.startswith("warmup.world_size=3 CPU processes but this process may use 2 core(s)")
    assert "Use warmup.world_size <= 2" in message and f"{OVERSUBSCRIBE_VARIABLE}=1" in message


def test_the_override_allows_more_cpu_ranks_than_cores(monkeypatch):
    monkeypatch.setattr(rodpo.distributed, "usable_cores", lambda: 2)
    assert check_world_size(3, "cpu") == 3  # the autouse fixture set the override
    monkeypatch.setenv(OVERSUBSCRIBE_VARIABLE, "0")
    with pytest.raises(ValueError, match=r"world_size=3 CPU processes"):
        check_world_size(3, "cpu")
    assert check_world_size(2, "cpu") == 2


def test_a_local_rendezvous_that_times_out_says_how_many_ranks_joined(monkeypatch):
    monkeypatch.setattr(rodpo.distributed, "usable_cores", lambda: 2)
    with pytest.raises(DistributedError) as error:  # rank 0 alone of 3: the other two never start
        init_process_group(0, 3, "gloo", address="127.0.0.1", port=_free_local_port(), timeout_s=1, local=True)
    message = str(error.value)
    assert "Only 1 of 3 ranks joined" in message and "3 of them on 2 usable core(s): too many local ranks" in message
    assert "MASTER_ADDR" not in message
    # torch's group counter, advanced by the failed init, is reset: a retry in this process meets its workers
    assert launch_local(_rank_of, 2, (), backend="gloo", timeout_s=60) == 0


def _rank_of(context) -> int:
    rodpo.distributed.barrier(context)  # every rank is in the group before any leaves it
    return context.rank
