"""The probes of a distillation run: on which images, with which options, and `EpochProbes`, which
probes the teacher, the BN-recalibrated teacher, the raw input and the student at a probed epoch."""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any, cast

import torch
from torch import nn

from distill.bn import has_batchnorm, recalibrate_bn
from distill.config import DistillConfig
from distill.data import Dataset, iterate, load_dataset
from distill.device import has_conv2d, in_mode
from distill.history import History

note = logging.getLogger("distill.progress")  # what a long step is about to do (before it starts)


def backbone_of(model: nn.Module) -> nn.Module:
    """``model.backbone`` of a `distill.models.Model` (torch types module attributes loosely)."""
    return cast(nn.Module, model.backbone)


def probe_dataset(cfg: DistillConfig, data: Dataset) -> Dataset:
    """Real images to probe on: the FULL training split of the dataset (as the paper), whatever
    ``cfg.subset`` is; a stratified ``cfg.probe_subset`` of it only when that is set explicitly.
    For Gaussian-noise runs the source dataset's real images."""
    n = cfg.probe_subset
    if cfg.dataset.startswith("gaussian"):
        source = cfg.dataset.split(":", 1)[1] if ":" in cfg.dataset else "cifar10"
        return load_dataset(source, root=cfg.data_root, subset=n, seed=cfg.probe_seed)
    if n is None:
        return data if cfg.subset is None else load_dataset(cfg.dataset, root=cfg.data_root)
    if n == len(data.train.labels) and n == cfg.subset:
        return data
    return load_dataset(cfg.dataset, root=cfg.data_root, subset=n, seed=cfg.probe_seed)


def run_probes(
    cfg: DistillConfig, backbone: nn.Module | None, data: Dataset, device: torch.device, seed: int | None = None
) -> dict[str, float]:
    """All configured probes on ``backbone``'s embedding (raw pixels when ``backbone`` is None);
    ``seed`` overrides ``cfg.probe_seed``."""
    from distill import probe

    kw = probe_options(cfg, seed)
    if backbone is None:
        return probe.probe_input(data, **kw)
    return probe.probe_model(backbone, data, device=device, **kw)


def probe_options(cfg: DistillConfig, seed: int | None = None) -> dict[str, Any]:
    """The keyword arguments of `distill.probe.probe_features` that ``cfg`` sets: its `ProbeConfig`
    (``cfg.probe``), the vote the k-NN metric implies and the seed (``seed`` overrides ``cfg.probe_seed``)."""
    return dict(
        config=cfg.probe, knn_weighted=cfg.knn_metric == "cosine", seed=cfg.probe_seed if seed is None else seed
    )


def recalibrated_teacher(
    teacher: nn.Module, data: Dataset, cfg: DistillConfig, device: torch.device, max_batches: int = 50
) -> nn.Module:
    """The teacher's weights with BN running statistics re-estimated on training data (no training)."""
    t = copy.deepcopy(teacher)
    if has_batchnorm(t):
        split = iterate(
            data.train,
            cfg.batch_size,
            data.mean,
            data.std,
            shuffle=True,
            seed=cfg.probe_seed,
            device=device,
            channels_last=has_conv2d(t),
        )
        recalibrate_bn(t, (x for x, _ in itertools.islice(split, max_batches)))
    return t.eval()


class EpochProbes:
    """The probes of a run's probed epochs, into ``history.probes[epoch]``, on ``pdata``.

    The teacher, BN-recalibrated teacher and raw-input probes are taken once and reused, unless the
    teacher is an EMA of the student. With ``cfg.probe_reseed`` (the reference code) the frozen
    teachers are probed again at every probed epoch with that epoch's seed, on embeddings computed
    once, so that their best over epochs is the reference code's number.
    """

    def __init__(
        self, cfg: DistillConfig, pdata: Dataset, device: torch.device, enabled: bool, announce_later: bool = True
    ) -> None:
        self.cfg, self.pdata, self.device, self.enabled = cfg, pdata, device, enabled
        self.fixed: dict[str, dict[str, float]] = {}  # teacher / teacher_bn / input probes
        self.features: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.announce_later = announce_later  # announce the probes of epochs after 0 (epoch 0's always)

    def say(self, epoch: int, what: str, embed: bool = True) -> None:
        """Announce a long step (probing embeds every probe image) before it starts."""
        if epoch > 0 and not self.announce_later:
            return
        n = (len(self.pdata.train.labels), len(self.pdata.test.labels))
        images = f", embedding {n[0]:,} + {n[1]:,} images" if embed else ""
        note.info(f"{self.cfg.run_name} epoch {epoch}: probing the {what} ({', '.join(self.cfg.probes)}{images})")

    def __call__(self, epoch: int, teacher: nn.Module, student: nn.Module, history: History) -> None:
        """Probe every model at ``epoch`` (on the main process, when ``cfg.probes`` names any)."""
        cfg, pdata, device = self.cfg, self.pdata, self.device
        if not cfg.probes or not self.enabled:
            return
        seed = cfg.probe_seed + epoch if cfg.probe_reseed else None
        if cfg.probe_reseed and not cfg.ema_teacher:
            self._reprobe_teachers(epoch, teacher, seed)
        elif not self.fixed or cfg.ema_teacher:
            self.say(epoch, "teacher")
            self.fixed["teacher"] = run_probes(cfg, backbone_of(teacher), pdata, device)
            if has_batchnorm(teacher):
                self.say(epoch, "BN-recalibrated teacher")
            self.fixed["teacher_bn"] = (
                run_probes(cfg, backbone_of(recalibrated_teacher(teacher, pdata, cfg, device)), pdata, device)
                if has_batchnorm(teacher)
                else self.fixed["teacher"]
            )
        if "input" not in self.fixed:
            self.say(epoch, "input (raw pixels)", embed=False)
            self.fixed["input"] = run_probes(cfg, None, pdata, device)
        self.say(epoch, "student")
        with in_mode(student):
            student_probes = run_probes(cfg, backbone_of(student), pdata, device, seed)
        history.probes[epoch] = {**self.fixed, "student": student_probes}

    def _reprobe_teachers(self, epoch: int, teacher: nn.Module, seed: int | None) -> None:
        from distill.probe import embed_splits, probe_features

        cfg, pdata, device, bn = self.cfg, self.pdata, self.device, has_batchnorm(teacher)
        self.say(epoch, "teacher" + (" and the BN-recalibrated teacher" if bn else ""), embed=not self.features)
        if not self.features:
            self.features["teacher"] = embed_splits(backbone_of(teacher), pdata, device=device)
            if bn:
                t_bn = backbone_of(recalibrated_teacher(teacher, pdata, cfg, device))
                self.features["teacher_bn"] = embed_splits(t_bn, pdata, device=device)
        for name in ("teacher", "teacher_bn"):
            feats = self.features.get(name, self.features["teacher"])
            self.fixed[name] = probe_features(*feats, device=device, **probe_options(cfg, seed))
