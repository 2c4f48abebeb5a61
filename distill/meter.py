"""Per-epoch sums kept on the device, and a NaN/Inf guard that does not synchronise every step.

A training step that calls ``loss.item()`` makes the host wait for the device at every step. The
loops in `distill.train` and `distill.supervised` instead hand each step's loss to an
`EpochMeter`, which adds it to device-resident sums and reads them once per epoch.

The finiteness guarantee (what `EpochMeter.check` promises):

- On the CPU there is nothing to wait for, so every loss is read at once and a NaN or infinite
  loss raises before that step's optimiser update (``check_every=1``).
- On CUDA the first non-finite step is recorded on the device and read every ``check_every``
  steps (default `CHECK_EVERY`) and by every `EpochMeter.epoch_means`. A non-finite
  loss is therefore reported at most ``check_every - 1`` steps after it happened, with the step
  at which it first happened, and always before the loop writes that epoch's metrics, checkpoint
  or training state: nothing computed after a non-finite loss is saved. The in-memory model
  may have taken those few extra (non-finite) steps; the store keeps the last finite epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor

# steps between two host reads of the finiteness flag on CUDA
CHECK_EVERY = 50


class EpochMeter:
    """Running sums of named scalars for one epoch, on ``device``.

    ``add("loss", value, weight)`` accumulates ``value * weight`` and ``weight``; the epoch mean
    is their ratio. Only the ``guard`` name is checked for finiteness.
    """

    def __init__(self, device: torch.device, check_every: int | None = None, guard: str = "loss"):
        self.device = torch.device(device)
        self.sync_free = self.device.type != "cpu"
        self.check_every = (CHECK_EVERY if self.sync_free else 1) if check_every is None else max(1, int(check_every))
        self.guard = guard
        self.sums: dict[str, Tensor] = {}
        self.weights: dict[str, float] = {}
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_value = torch.zeros((), dtype=torch.float64, device=self.device)
        self._since_check = 0

    def add(self, name: str, value: Tensor, step: int, weight: float = 1.0) -> None:
        """Accumulate a 0-d tensor ``value`` with ``weight`` (e.g. the batch size); ``step`` is the
        global step number reported when ``value`` is the guarded quantity and not finite."""
        v = value.detach().to(torch.float64)
        if name == self.guard:
            if not self.sync_free:
                f = float(v)
                if f != f or f in (float("inf"), float("-inf")):
                    raise NonFinite(step, f)
            else:
                bad = ~torch.isfinite(v) & (self._first_bad < 0)
                self._first_bad = torch.where(bad, torch.full_like(self._first_bad, step), self._first_bad)
                self._bad_value = torch.where(bad, v, self._bad_value)
        if name in self.sums:
            self.sums[name].add_(v, alpha=weight)
        else:
            self.sums[name] = v * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight
        if name == self.guard:
            self._since_check += 1
            if self._since_check >= self.check_every:
                self.check()

    def check(self) -> None:
        """Raise `NonFinite` when a guarded value so far was NaN or infinite (one host read)."""
        self._since_check = 0
        if self.sync_free:
            first = int(self._first_bad)
            if first >= 0:
                raise NonFinite(first, float(self._bad_value))

    def epoch_means(self) -> dict[str, float]:
        """Check finiteness, then read every mean (one transfer); NaN for names never added."""
        self.check()
        if not self.sums:
            return {}
        names = list(self.sums)
        values = torch.stack([self.sums[n] for n in names]).cpu().tolist()
        return {n: v / self.weights[n] for n, v in zip(names, values)}


class NonFinite(ArithmeticError):
    """A guarded value was NaN or infinite at global step ``step`` (0-based)."""

    def __init__(self, step: int, value: float):
        super().__init__(f"non-finite value {value} at step {step}")
        self.step, self.value = step, value
