"""The boundary to multi-process training (``accelerate launch``, torchrun): who this process is, its
share of a batch, and the collective operations the trainers need.

A trainer asks :func:`current` for a :class:`Dist`. Started by ``accelerate launch --num_processes N``
(or anything else that sets ``WORLD_SIZE`` > 1 with ``RANK``/``LOCAL_RANK``/``MASTER_ADDR``), it is the
process group that accelerate's ``PartialState`` sets up (nccl on CUDA; gloo on a machine without GPUs or
with ``ACCELERATE_USE_CPU=1``: accelerate's own ``--cpu`` starts several processes only through MPI,
so on CPUs launch with ``accelerate launch --multi_gpu --num_processes N`` and that variable); in a plain single
process it is :data:`SINGLE`, which does nothing and imports neither accelerate nor ``torch.distributed``.

How the trainers use it (data-parallel, no wrapper around the model):

- every rank computes the same global batch of a step from the seed and the step (``BatchPlan``) and
  keeps its contiguous share (:meth:`Dist.shard`);
- the statistics a loss is normalised by (e.g. the target-token count of the global batch) are summed
  over ranks (:meth:`Dist.sum`) so each rank's loss is its share of the global mean;
- ``TrainingLoop`` averages the trainable parameters' gradients over ranks (:meth:`Dist.average_grads`)
  before clipping, so every rank takes the same update and holds the same (full, unsharded) weights
  and optimizer moments; a trainer that does not shard its batch computes the same gradient on every
  rank and gets the single-process result;
- only rank 0 writes files and shows progress bars (:attr:`Dist.is_main`); the others wait at
  :meth:`Dist.barrier` so that no rank reads a file before it is whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place among ``world_size`` training processes (rank 0 writes files)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs, plots and the result, and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process: the collective operations talk to the others."""
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (shares differ in size by at most one; a rank gets
        none when there are fewer items than ranks)."""
        n, w, r = len(items), self.world_size, self.rank
        lo, hi = r * n // w, (r + 1) * n // w
        return list(items[lo:hi])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each of ``values`` summed over all ranks (in float64, so token counts stay exact)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch
        import torch.distributed as tdist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def step_mean(self, total: Any, count: float, *extra: float) -> tuple[Any, list[float]]:
        """A training step's loss when this process computed ``total`` (a loss tensor summed over its share
        of the step's items: tokens, pairs) over ``count`` of them; and the sums over all processes of
        ``[total, count, *extra]`` (for the step's logged means). One process: ``total / count``. Several:
        ``total`` times the number of processes over the whole step's count, so the gradients
        ``TrainingLoop`` averages over the processes are those of the whole step's mean."""
        sums = self.sum([float(total.detach()), count, *extra])
        return total * (self.world_size / max(1.0, sums[1])), sums

    def average_grads(self, params: Sequence[Any]) -> None:
        """Replace the gradient of each of ``params`` by its mean over ranks (a missing gradient, e.g.
        from a rank with an empty share, counts as zeros), in one flat all-reduce."""
        if not self.enabled:
            return
        import torch
        import torch.distributed as tdist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads]) if grads else torch.zeros(0)
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        flat /= self.world_size
        at = 0
        for p in params:
            k = p.numel()
            p.grad = flat[at : at + k].view_as(p).to(p.dtype)
            at += k

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing in a single process)."""
        if self.enabled:
            import torch.distributed as tdist

            tdist.barrier()

    def comm_device(self) -> str:
        """Where tensors for collectives live: the process's GPU under nccl, else the CPU."""
        import torch.distributed as tdist

        return f"cuda:{self.local_rank}" if tdist.get_backend() == "nccl" else "cpu"

    def device(self, requested: str | None) -> str | None:
        """The torch device for this process's model: ``requested`` (``None``: cuda if available, else
        cpu), with the process's own GPU (``cuda:LOCAL_RANK``) when several processes share a machine."""
        if requested is None and not self.enabled:
            return None
        import torch

        if requested is None:
            requested = "cuda" if torch.cuda.is_available() and not _cpu_requested() else "cpu"
        if requested == "cuda" and self.enabled:
            return f"cuda:{self.local_rank}"
        return requested


#: A plain single process: shard keeps everything, the collectives do nothing.
SINGLE = Dist()


def no_share(device: Any = None) -> Any:
    """The summed loss of a process whose share of a step is empty (fewer items than processes): zero, and
    part of the graph, so its backward pass and the gradient averaging run as on the other processes."""
    import torch

    return torch.zeros((), device=device, requires_grad=True)


def _cpu_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def launched() -> bool:
    """Whether this process is one of several started by ``accelerate launch``/torchrun (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current() -> Dist:
    """This process's :class:`Dist`: :data:`SINGLE` unless launched as one of several processes, in
    which case accelerate's ``PartialState`` joins (or has already joined) the process group."""
    if not launched():
        return SINGLE
    from accelerate import PartialState  # only on the multi-process path

    import torch

    # on a machine without GPUs (or with ACCELERATE_USE_CPU set) the processes talk over gloo on the CPU
    state = PartialState(cpu=_cpu_requested() or not torch.cuda.is_available())
    return Dist(rank=state.process_index, world_size=state.num_processes, local_rank=state.local_process_index)
