"""torch.distributed for rodpo: who this process is, who writes, and how N local workers start.

The one place the trainer and the hooks ask about ranks. Two ways in:
- ``torchrun`` (one or several machines) starts every rank itself and sets RANK / WORLD_SIZE /
  LOCAL_RANK / MASTER_ADDR / MASTER_PORT; the process group is initialised from those.
- ``warmup.world_size=N`` on one machine: the training node's process becomes rank 0 and starts
  N - 1 worker processes (spawned, one per GPU with NCCL, gloo on CPU) on a free local port.
Only rank 0 writes (checkpoints, catalog outputs, MLflow); everything else is collective.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rodpo.devices import configure_torch_threads, usable_cores

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Set to 1 to start more local CPU ranks than usable cores (each rank still gets one thread).
OVERSUBSCRIBE_VARIABLE = "RODPO_ALLOW_OVERSUBSCRIBE"


class DistributedError(RuntimeError):
    """A distributed run could not start or lost a rank."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a run; the single-process run is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files, catalog outputs and MLflow."""
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def environment_rank() -> int:
    """The rank torchrun gave this process (0 outside torchrun), readable before any process group."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def current_context() -> DistributedContext:
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local)
    return SINGLE_PROCESS


def rank_device(requested: str, context: DistributedContext) -> str:
    """The device of one rank: "auto" (or "cuda") means this rank's own GPU, cuda:<local rank>."""
    choice = requested.strip().lower()
    if context.enabled and choice in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{context.local_rank}"
    if context.enabled and choice == "auto":
        return "cpu"
    return requested


def check_world_size(world_size: Any, device: str, parameter: str = "world_size") -> int:
    """A clear error, before any process starts, for a world size this machine cannot run: GPUs are
    one per rank; CPU (gloo) ranks at most one per usable core (`rodpo.devices.usable_cores`, the
    count the thread defaults share out) unless RODPO_ALLOW_OVERSUBSCRIBE=1."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"{parameter}={world_size!r}: use a positive integer (1 = no distributed training).")
    uses_cuda = device.strip().lower() in ("auto", "cuda") and torch.cuda.is_available() or device.startswith("cuda")
    if uses_cuda and world_size > torch.cuda.device_count():
        raise ValueError(f"{parameter}={world_size} but only {torch.cuda.device_count()} CUDA device(s) are "
                         f"visible: use at most one rank per GPU, or device=cpu (gloo).")
    if device.startswith("cuda:") and world_size > 1:
        raise ValueError(f"{parameter}={world_size} with device={device!r}: each rank takes its own GPU; "
                         "use device=auto or cuda.")
    cores = usable_cores()
    if not uses_cuda and world_size > cores and os.environ.get(OVERSUBSCRIBE_VARIABLE, "").strip() != "1":
        raise ValueError(f"{parameter}={world_size} CPU processes but this process may use {cores} core(s) "
                         f"(affinity and cgroup quota): every rank is a process with its own copy of torch and the "
                         f"data, so more ranks than cores only wait on each other. Use {parameter} <= {cores}, "
                         f"or set {OVERSUBSCRIBE_VARIABLE}=1 to start them anyway.")
    return world_size


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def init_process_group(rank: int, world_size: int, backend: str, *, address: str, port: int,
                       timeout_s: float = DEFAULT_TIMEOUT_S, local: bool = False) -> None:
    """Join the group at address:port; an unreachable rendezvous becomes an error naming it, and how
    many ranks joined when torch says so. `local`: every rank is a process of this machine."""
    try:
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as error:  # noqa: BLE001 - torch raises several types here
        _forget_failed_group()
        raise DistributedError(
            f"rank {rank}/{world_size}: could not join the process group at {address}:{port} with {backend} "
            f"within {timeout_s:.0f} s ({type(error).__name__}: {error}).{_joined(error)} "
            + _rendezvous_advice(world_size, local)
        ) from error


def _forget_failed_group() -> None:
    """torch names the default group by a per-process counter that a failed init still advances; a
    later init in this process (a retry, a notebook) would then wait on keys fresh workers never write."""
    world = getattr(dist.distributed_c10d, "_world", None)
    if world is not None and not dist.is_initialized() and hasattr(world, "group_count"):
        world.group_count = 0


def _joined(error: Exception) -> str:
    """How many ranks reached rank 0's store, from torch's timeout message ("3/40 clients joined")."""
    found = re.search(r"(\d+)/(\d+) clients joined", str(error))
    return f" Only {found[1]} of {found[2]} ranks joined." if found else ""


def _rendezvous_advice(world_size: int, local: bool) -> str:
    if not local:
        return ("Check MASTER_ADDR/MASTER_PORT (torchrun --rdzv-endpoint / --master-addr), that every rank can "
                "reach it, and that all ranks started.")
    cores = usable_cores()
    if world_size > cores:
        return (f"The ranks are local processes, {world_size} of them on {cores} usable core(s): too many local "
                f"ranks to start within the timeout; lower world_size to <= {cores} (or unset "
                f"{OVERSUBSCRIBE_VARIABLE}).")
    return ("The ranks are local processes: one that did not join failed to start (see its log above), or the "
            "machine is too busy to start them in time; lower world_size or raise dist_timeout_s.")


def init_from_torchrun(backend: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext:
    """The group of a torchrun launch (initialised once per process)."""
    if not dist.is_initialized():
        init_process_group(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), backend,
                           address=os.environ["MASTER_ADDR"], port=int(os.environ["MASTER_PORT"]),
                           timeout_s=timeout_s)
    return current_context()


def _worker_main(rank: int, world_size: int, backend: str, port: int, timeout_s: float,
                 function: Callable[..., Any], arguments: tuple, finished: Any = None) -> None:
    """Entry point of a spawned worker (rank >= 1): join, run, say it finished, leave."""
    configure_torch_threads("auto", processes=world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    init_process_group(rank, world_size, backend, address="127.0.0.1", port=port, timeout_s=timeout_s, local=True)
    try:
        function(DistributedContext(rank, world_size, rank), *arguments)
        if finished is not None:
            finished[rank] = 1
    finally:
        dist.destroy_process_group()


def launch_local(function: Callable[..., Any], world_size: int, arguments: tuple, *, backend: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S, task: str = "training",
                 recovery: str = "The last checkpoint is kept: rerun to resume from it.") -> Any:
    """Run `function(context, *arguments)` on `world_size` local ranks and return rank 0's result.

    This process is rank 0 (so its result needs no transfer); ranks 1..N-1 are spawned processes,
    which receive `arguments` pickled by multiprocessing (in-memory objects of this process only).
    A rank that dies ends the run with an error naming it, the `task` and what survives (`recovery`).
    """
    if world_size == 1:
        return function(SINGLE_PROCESS, *arguments)
    if dist.is_initialized():
        raise DistributedError("world_size > 1 inside an existing process group (torchrun?): under torchrun "
                               "leave world_size at 1; torchrun's --nproc-per-node sets the ranks.")
    port = _free_local_port()
    spawn = mp.get_context("spawn")
    finished = spawn.Array("b", world_size)  # a worker sets its flag once its work is done
    workers = [spawn.Process(target=_worker_main, args=(rank, world_size, backend, port, timeout_s, function,
                                                        arguments, finished), name=f"rodpo-rank{rank}")
               for rank in range(1, world_size)]
    for worker in workers:
        worker.start()
    threads_before = torch.get_num_threads()
    configure_torch_threads("auto", processes=world_size)
    os.environ["LOCAL_RANK"] = "0"
    try:
        init_process_group(0, world_size, backend, address="127.0.0.1", port=port, timeout_s=timeout_s,
                           local=True)
        try:
            result = function(DistributedContext(0, world_size, 0), *arguments)
        finally:
            dist.destroy_process_group()
    except BaseException as error:
        for worker in workers:
            worker.join(timeout=5)
        dead = [(worker.name, worker.exitcode) for worker in workers if worker.exitcode not in (None, 0)]
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        if dead:
            names = ", ".join(f"{name.removeprefix('rodpo-')} (exit code {code})" for name, code in dead)
            raise DistributedError(f"distributed {task} failed: {names} died; rank 0 stopped with "
                                   f"{type(error).__name__}: {error}. {recovery}") from error
        raise
    finally:
        torch.set_num_threads(threads_before)
        os.environ.pop("LOCAL_RANK", None)
    for rank, worker in enumerate(workers, start=1):
        worker.join(timeout=timeout_s)
        if worker.exitcode != 0 and finished[rank]:  # gloo can abort in teardown after the work is done
            logger.warning("%s finished its work, then exited with code %s while leaving the process group; "
                           "the result is complete.", worker.name.removeprefix("rodpo-"), worker.exitcode)
        elif worker.exitcode != 0:
            raise DistributedError(f"{worker.name.removeprefix('rodpo-')} ended with exit code {worker.exitcode} "
                                   "after rank 0 finished; see its log above.")
    return result


# ------------------------------------------------------------------ collectives
def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_ranks_ok(ok: bool, context: DistributedContext, device: torch.device | str = "cpu") -> bool:
    """Whether `ok` holds on every rank (collective: every rank calls it; `device`: the backend's)."""
    if not context.enabled:
        return ok
    failed = all_reduce_sum(torch.tensor([0.0 if ok else 1.0], device=device), context)
    return float(failed.item()) == 0.0


def all_gather_rows(rows: torch.Tensor, context: DistributedContext) -> list[torch.Tensor]:
    """Every rank's `rows` (first dimension may differ between ranks), in rank order."""
    if not context.enabled:
        return [rows]
    sizes = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(context.world_size)]
    dist.all_gather(sizes, torch.tensor([rows.shape[0]], device=rows.device))
    longest = int(max(size.item() for size in sizes))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[:rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    return [part[:int(size.item())] for part, size in zip(gathered, sizes)]


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()
