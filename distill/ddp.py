"""Data-parallel distillation: the same ``rtt distill`` under ``torchrun --nproc-per-node N``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; `from_env`
then joins the process group (gloo on CPU, NCCL on CUDA, one GPU per process: ``cuda:LOCAL_RANK``).
Every rank builds the same teacher and student (seeded), walks the same shuffled order of global
batches and trains on its contiguous share of each (``batch_size / world_size`` images);
gradients, the loss and the KL are averaged over the ranks after every backward pass, so every
rank takes the same optimiser step as one process on the whole global batch, up to float
reassociation. BatchNorm layers in training mode use the statistics of the whole global batch
(`sync_batchnorm`: two all-reduces per layer, differentiable), as in one process. Only rank 0
writes the store (the others read it to resume and skip every write) and runs the probes.

Without torchrun (``WORLD_SIZE`` unset or 1) `from_env` returns a single-process
`Ranks` whose methods change nothing, so the training loop has one code path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
from torch import nn

_SYNC = {"active": False}  # BN layers of synced modules use global-batch statistics only inside Ranks.step()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of a sum over ranks is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


class _GlobalBatchNorm:
    """Mixin put in front of a BatchNorm class: in training mode inside `Ranks.step`, batch
    statistics (mean, biased variance; two passes) are taken over the global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: Any = self
        if not (_SYNC["active"] and bn.training):
            return super().forward(x)  # type: ignore[misc]
        bn._check_input_dim(x)
        world = torch.distributed.get_world_size()
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = (x.numel() // x.shape[1]) * world  # equal shards on every rank
        mean = _AllReduceSum.apply(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + bn.eps).view(shape)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        if bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                bn.running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        return y


_SYNCED: dict[type, type] = {}


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm layer of ``module`` use global-batch statistics inside `Ranks.step`
    (in place: the class of each layer gets the `_GlobalBatchNorm` mixin; the state_dict,
    the spec and behaviour outside a step are unchanged)."""
    for m in module.modules():
        cls = type(m)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _GlobalBatchNorm):
            if cls not in _SYNCED:
                _SYNCED[cls] = type(f"Global{cls.__name__}", (_GlobalBatchNorm, cls), {})
            m.__class__ = _SYNCED[cls]
    return module


class _ReadOnlyStore:
    """A store seen from a rank that does not write: reads go to the file, writes are skipped."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def save_module(self, *args: Any, **kwargs: Any) -> None:
        pass

    save_state = delete = write_result = rollback = save_module

    @contextlib.contextmanager
    def commit(self, epoch: int) -> Iterator[_ReadOnlyStore]:
        yield self

    def __repr__(self) -> str:
        return f"{self._store!r} (read-only on this rank)"


class Ranks:
    """The processes training one student together; ``world_size == 1`` is a plain run."""

    def __init__(
        self, rank: int = 0, world_size: int = 1, device: torch.device | None = None, joined: bool = False
    ) -> None:
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = device if device is not None else torch.device("cpu")
        self.joined = joined  # this object initialised the process group (and leaves it in close())

    @property
    def is_main(self) -> bool:
        """True on the rank that writes the store and runs the probes (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process reaches this point (nothing to wait for in one process)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def check_batch(self, batch_size: int, what: str = "batch_size", fix: str = "") -> None:
        """A global batch must split evenly over the ranks: ValueError naming the fix otherwise."""
        if batch_size % self.world_size:
            fix = fix or f"pass a --batch-size divisible by {self.world_size}"
            raise ValueError(f"{what} ({batch_size} images) does not split over {self.world_size} processes: {fix}")

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (B, ...) -> (B / world_size, ...)."""
        if self.world_size == 1:
            return x
        n = x.shape[0] // self.world_size
        return x[self.rank * n : (self.rank + 1) * n]

    def prepare(self, *modules: nn.Module) -> None:
        """Global-batch BatchNorm for ``modules`` and rank 0's tensors on every rank (they are built
        from the same seeds, so this changes nothing unless a rank diverged)."""
        if self.world_size == 1:
            return
        for module in modules:
            sync_batchnorm(module)
            with torch.no_grad():
                for t in list(module.parameters()) + list(module.buffers()):
                    torch.distributed.broadcast(t.data, 0)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Within: synced BatchNorm layers in training mode use global-batch statistics."""
        if self.world_size == 1:
            yield
            return
        _SYNC["active"] = True
        try:
            yield
        finally:
            _SYNC["active"] = False

    def average_gradients(self, model: nn.Module, *values: torch.Tensor | None) -> tuple[Any, ...]:
        """Average ``model``'s gradients over the ranks, and the tensors ``values`` (any shape; None
        passes through), in one all-reduce; returns the averaged values (detached)."""
        if self.world_size == 1:
            return values
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        extra = [v.detach().float().reshape(-1) for v in values if v is not None]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + extra)
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        parts = torch.split(flat, [t.numel() for t in grads] + [t.numel() for t in extra])
        for g, part in zip(grads, parts):
            g.copy_(part.view_as(g))
        rest = iter(parts[len(grads) :])
        return tuple(None if v is None else next(rest).view(v.shape).to(v.dtype) for v in values)

    def mean(self, values: Sequence[float]) -> list[float]:
        """The mean over the ranks of each number in ``values``."""
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return [float(v) for v in (t / self.world_size).tolist()]

    def open_store(self, open_main: Any, path: Any) -> tuple[Any, bool]:
        """``open_main()`` (-> (store, resumed)) on rank 0; the other ranks then open the same file
        for reading and skip every write."""
        if self.world_size == 1:
            return open_main()
        from distill.store import Store

        if self.is_main:
            got = open_main()
            self.barrier()
            return got
        self.barrier()
        return _ReadOnlyStore(Store(path, "r")), True

    def close(self) -> None:
        """Leave the process group (when this object joined it)."""
        if self.joined and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def from_env(device: torch.device) -> Ranks:
    """The `Ranks` described by torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``), joining the process group when there are several processes; on CUDA each
    process takes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks(0, 1, device)
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist = torch.distributed
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=60))
    return Ranks(rank, world, device, joined)
