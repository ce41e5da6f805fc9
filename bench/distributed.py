"""The one place that knows about processes: rank, world size, barrier, gathers, and sharding work by rank.

A run started by `accelerate launch` (or `torchrun`) with N processes trains data-parallel (bench.train.Loop),
and everything else follows three rules built on this module:

- Work that is a list of independent jobs (sampling batches, scoring batches) is shared out by `map_sharded`:
  job k runs on rank k % N and every rank receives all results, in job order. A job's inputs (and its seed:
  sampling batch b is seeded with (seed, b)) do not depend on N, so the results equal a one-process run's.
- Anything written to disk (run records, caches, checkpoints, logs) is written by the main process (rank 0) only.
- What must happen once, such as a task build, runs on the main process by itself (`run_on_main`): inside it,
  this module reports a world of one, so the build's own sampling, scoring and training run exactly as in a
  one-process run, while the other processes wait and then receive its result.

With one process (a plain `bench run`) every function here is a no-op that never imports accelerate: the code
paths and numbers are those of a run that knows nothing about processes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

from bench.errors import UserError

T = TypeVar("T")
R = TypeVar("R")


class MainError(UserError):
    """The main process's UserError, raised again on another process (`run_on_main`): the main one prints it."""


_alone = 0
"""Depth of `alone()` blocks: the main process working by itself while the others wait for it."""


def launched_processes() -> int:
    """How many processes the launcher started (WORLD_SIZE, set by accelerate launch and torchrun); 1 otherwise."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else 1


WAIT_S = 24 * 3600
"""How long a process waits for the others at a collective before the run fails: long, since the others may wait
while the main process builds a task or trains a reward model by itself (torch's default is 10 to 30 minutes).
A process that dies is noticed sooner: the launcher then stops the others."""


def env_flag(name: str, default: bool = False) -> bool:
    """A launcher's yes/no environment variable (ACCELERATE_USE_CPU, ACCELERATE_USE_FSDP, ...), read as accelerate
    reads them: 1, true or yes (any case) is yes."""
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes")


def _state():
    """accelerate's PartialState, which sets up the process group on first use (the same one Loop's Accelerator
    uses): gloo on CPU, nccl on GPUs."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    cpu = env_flag("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu, timeout=timedelta(seconds=WAIT_S))


def close() -> None:
    """Leave the process group at the end of a command of a launch of several processes, as torch asks: a group
    left open until the interpreter exits can abort a process that has finished its work."""
    if launched_processes() == 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes that share the work here: 1 in a one-process run and inside `alone()`."""
    if _alone or launched_processes() == 1:
        return 1
    return _state().num_processes


def rank() -> int:
    """This process's index, 0 to world_size() - 1."""
    return 0 if world_size() == 1 else _state().process_index


_rank = rank  # for the functions below whose `rank` argument hides this one


def is_main() -> bool:
    """Whether this is the process that writes and prints (rank 0)."""
    return rank() == 0


def launched_main() -> bool:
    """Whether this process is rank 0 of its launch, from the environment alone (no process group needed):
    where an error is printed, which may happen before the processes have met."""
    return launched_processes() == 1 or os.environ.get("RANK", "0").strip() == "0"


def alone_in_launch() -> bool:
    """Whether the main process is working by itself (`alone()`) in a run of several processes: no collectives."""
    return bool(_alone) and launched_processes() > 1


def barrier() -> None:
    """Wait until every process gets here."""
    if world_size() > 1:
        _state().wait_for_everyone()


def gather(obj: Any) -> list:
    """Every process's `obj` (picklable), in rank order, on every process: [obj] with one process."""
    if world_size() == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def broadcast(obj: Any) -> Any:
    """The main process's `obj` (picklable), on every process."""
    if world_size() == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj if is_main() else None])[0]


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every process (each process's own flag gathered): decisions that must agree."""
    return all(gather(bool(flag)))


def shard(items: Sequence[T], *, rank: int | None = None, world: int | None = None, strided: bool = True) -> list[T]:
    """This rank's share of `items`: every world-th item from position rank (strided), or one contiguous block
    (the first len % world ranks one item longer). `unshard` puts the shares back in order."""
    world = world_size() if world is None else world
    rank = _rank() if rank is None else rank
    if not 0 <= rank < world:
        raise ValueError(f"shard: rank {rank} outside a world of {world}")
    if strided:
        return list(items[rank::world])
    size, extra = divmod(len(items), world)
    start = rank * size + min(rank, extra)
    return list(items[start : start + size + (rank < extra)])


def unshard(parts: Sequence[Sequence[T]], *, strided: bool = True) -> list[T]:
    """The items that `shard` split into `parts` (one list per rank, in rank order), back in their order."""
    if not strided:
        return [item for part in parts for item in part]
    out: list[T] = []
    for k in range(max((len(p) for p in parts), default=0)):
        out.extend(part[k] for part in parts if k < len(part))
    return out


def map_sharded(fn: Callable[[int, T], R], jobs: Sequence[T]) -> list[R]:
    """`[fn(k, job) for k, job in enumerate(jobs)]`, the jobs shared out by rank, every result on every rank.

    Job k runs on rank k % world_size() and gets its own index k, so a job that seeds itself from k draws
    the same numbers whatever the number of processes. With one process this is the plain loop.
    """
    world = world_size()
    if world == 1:
        return [fn(k, job) for k, job in enumerate(jobs)]
    from bench.fsdp import whole_weights

    with whole_weights():  # an FSDP2-sharded policy gathers its weights: the jobs' forward passes are independent
        mine = [fn(k, jobs[k]) for k in shard(range(len(jobs)), world=world)]
    return unshard(gather(mine))


def my_jobs(n: int) -> list[int]:
    """The indices of the jobs out of `n` that `map_sharded` runs on this process (for progress bars)."""
    return shard(range(n))


@contextmanager
def alone() -> Iterator[None]:
    """The main process by itself for the block: world_size() is 1 and every collective here a no-op."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def run_on_main(fn: Callable[[], R]) -> R:
    """`fn()` on the main process by itself (`alone()`) while the others wait; every process gets its result.

    For work that must happen once: a cache build, calls to a paid service. A UserError on the main process
    is raised on every process (the others exit quietly with the same status); any other error ends the main
    process, and the launcher stops the rest.
    """
    if world_size() == 1:
        return fn()
    outcome: tuple[str, Any] | None = None
    if is_main():
        try:
            with alone():
                outcome = ("ok", fn())
        except UserError as exc:
            broadcast(("error", str(exc)))
            raise
    outcome = broadcast(outcome)
    if outcome[0] == "error":
        raise MainError(outcome[1])
    return outcome[1]
