"""Thread defaults that never oversubscribe the cores a process may use."""

from __future__ import annotations

import pytest
import torch

from rodpo import devices


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_cores_of_the_process_are_shared_by_its_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "usable_cores", lambda: 8)
    assert devices.default_torch_threads() == 8
    assert devices.default_torch_threads(processes=2) == 4
    assert devices.default_torch_threads(processes=16) == 1  # never zero


def test_omp_num_threads_is_the_users_choice(monkeypatch):
    monkeypatch.setattr(devices, "usable_cores", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert devices.default_torch_threads(processes=2) == 3


def test_usable_cores_follow_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert devices.usable_cores() <= 3


def test_configure_sets_torch_threads_and_rejects_bad_values(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    assert devices.configure_torch_threads("auto", processes=2) == 1
    assert torch.get_num_threads() == 1
    assert devices.configure_torch_threads(2) == 2 and torch.get_num_threads() == 2
    for bad in (0, -1, "many", True):
        with pytest.raises(ValueError, match="threads="):
            devices.configure_torch_threads(bad)
