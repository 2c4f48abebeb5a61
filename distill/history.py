"""The metrics schema of a distillation run: `History`, per-epoch records that become the store's
``metrics`` Dataset (dims epoch, model, probe) and are read back from it to resume, and the
tables of probe accuracies read from that Dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from distill.config import DistillConfig
from distill.init import parameter_distance
from distill.schema import result_dataset

if TYPE_CHECKING:
    import xarray

MODELS = ("teacher", "teacher_bn", "student", "input")


def _probe_interval(cfg: DistillConfig) -> str:
    """What the probed epochs of ``cfg`` are, and what that means for a best over epochs (metrics attrs)."""
    every = f"every {cfg.probe_every} epochs" if cfg.probe_every else "at epoch 0 and the last epoch only"
    n = 1 + (cfg.epochs // cfg.probe_every + (cfg.epochs % cfg.probe_every > 0) if cfg.probe_every else 1)
    seeds = "a fresh probe seed each (probe_seed + epoch)" if cfg.probe_reseed else "one probe seed"
    return (
        f"probes {every} ({n} probed epochs of {cfg.epochs}, {seeds}); a best over epochs is a maximum over "
        f"these {n} fits, where the reference code probes every epoch ({cfg.epochs + 1} fits)"
    )


@dataclass
class History:
    """Per-epoch records, turned into the store's ``metrics`` Dataset."""

    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    student_norm: list[float] = field(default_factory=list)
    teacher_norm: list[float] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    probes: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    dynamics: Any = None  # a distill.dynamics.DynamicsRecorder when cfg.dynamics
    provenance: dict[str, Any] = field(default_factory=dict)  # distill.provenance keys, added to the attrs

    def record(self, epoch: int, student: nn.Module, teacher: nn.Module, **values: float) -> None:
        """Append epoch ``epoch``: ``values`` loss and kl (nats), student_norm and teacher_norm, seconds;
        the parameter distance and the dynamics (when recorded) are measured on the two models."""
        self.epochs.append(epoch)
        for name in ("loss", "kl", "student_norm", "teacher_norm"):
            getattr(self, name).append(float(values[name]))
        self.distance.append(parameter_distance(student, teacher))
        self.seconds.append(values["seconds"])
        if self.dynamics is not None:
            self.dynamics.measure(epoch, teacher, student)

    def to_dataset(self, cfg: DistillConfig, device: torch.device, n_probe: int = 0) -> xarray.Dataset:
        """The metrics Dataset (dims epoch, model, probe) that the store holds as ``metrics``."""
        import distill

        probes = list(cfg.probes)
        acc = np.full((len(self.epochs), len(MODELS), len(probes)), np.nan)
        for i, e in enumerate(self.epochs):
            for j, m in enumerate(MODELS):
                for k, p in enumerate(probes):
                    acc[i, j, k] = self.probes.get(e, {}).get(m, {}).get(p, np.nan)

        def var(values: list[float]) -> Any:
            return ("epoch", np.asarray(values, dtype=np.float64))

        names = ("loss", "kl", "student_norm", "teacher_norm", "distance", "seconds")
        extra, extra_coords = ({}, {}) if self.dynamics is None else self.dynamics.variables(self.epochs, MODELS)
        return result_dataset(
            "metrics",
            {**extra, "accuracy": (("epoch", "model", "probe"), acc), **{k: var(getattr(self, k)) for k in names}},
            coords={
                "epoch": np.asarray(self.epochs, dtype=np.int64),
                "model": list(MODELS),
                "probe": probes,
                **extra_coords,
            },
            attrs={
                "config": cfg.to_json(),
                "toolkit_version": distill.__version__,
                "torch_version": str(torch.__version__),
                "device": str(device),
                "precision": cfg.precision,
                "recipe": cfg.recipe,
                "probe_train_images": int(n_probe),
                "models": "teacher: random teacher as used in distillation; teacher_bn: teacher weights with BN "
                "statistics re-estimated on training data; student; input: raw pixels",
                "epoch_0": "before any training",
                "probe_interval": _probe_interval(cfg),
                **self.provenance,
            },
        )

    @classmethod
    def from_dataset(cls, ds: Any, upto: int) -> History:
        """The history of epochs <= ``upto`` restored from a stored metrics Dataset (to resume)."""
        ds = ds.sel(epoch=ds.epoch <= upto)
        h = cls(epochs=[int(e) for e in ds.epoch.values])
        for name in ("loss", "kl", "student_norm", "teacher_norm", "distance", "seconds"):
            setattr(h, name, [float(v) for v in ds[name].values])
        for e in h.epochs:
            row = ds.accuracy.sel(epoch=e)
            got = {
                str(m): {
                    str(p): float(row.sel(model=m, probe=p))
                    for p in ds.probe.values
                    if not np.isnan(row.sel(model=m, probe=p))
                }
                for m in ds.model.values
            }
            if any(got.values()):
                h.probes[e] = got
        return h


def probed_accuracy(metrics: Any) -> xarray.DataArray:
    """``metrics.accuracy`` without the epochs that were not probed (their rows are all NaN):
    dims (epoch, model, probe), fractions."""
    acc: xarray.DataArray = metrics.accuracy.dropna("epoch", how="all")
    return acc


def summary_table(metrics: Any) -> str:
    """Probe accuracies (percent) of the last probed epoch, one row per model, with the
    distillation gain: student minus the better of teacher and BN-recalibrated teacher."""
    acc = probed_accuracy(metrics)
    last = acc.isel(epoch=-1)
    probes = [str(p) for p in acc.probe.values]
    lines = [f"epoch {int(last.epoch)}".ljust(14) + "".join(f"{p:>12}" for p in probes)]
    for m in metrics.model.values:
        lines.append(f"{m:<14}" + "".join(f"{100 * float(last.sel(model=m, probe=p)):12.2f}" for p in probes))
    gain = distillation_gain(metrics)
    lines.append(f"{'gain':<14}" + "".join(f"{100 * float(gain.sel(probe=p)):+12.2f}" for p in probes))
    return "\n".join(lines)


def distillation_gain(metrics: Any, epoch: int | None = None) -> xarray.DataArray:
    """Student minus max(teacher, teacher_bn) accuracy per probe, at ``epoch`` (default: last probed)."""
    acc = probed_accuracy(metrics)
    row = acc.isel(epoch=-1) if epoch is None else acc.sel(epoch=epoch)
    return row.sel(model="student") - np.maximum(row.sel(model="teacher"), row.sel(model="teacher_bn"))
