"""Per-epoch progress of a distillation: a log line, a JSON-lines record beside the store, TensorBoard.

On a terminal the tqdm bar shows progress; otherwise (a batch job, stderr redirected) every epoch
gives one ``logging`` line on the ``distill.train`` logger:

```text
cifar10-vgg11-a1e-10-lr0.001-s0 epoch 3/150 loss 9.721347 kl 4.13e-06 student knn 31.2 linear 35.0 | 41.2 s, ETA 1:41:00
```

The loss has six decimals and the KL three significant digits in scientific notation, so that
both can be seen to move (the KL to a random teacher is often of the order of 1e-6 nats). The
time of epoch 0 (before training) is that of its probes. Before a long step (probing the teacher,
the student or the input, which embeds every probe image) a line on the ``distill.progress``
logger says what is starting.

Whatever the terminal, the same record is appended to ``<store stem>.jsonl`` beside the store (one
JSON object per line: ``epoch``, ``loss``, ``kl`` in nats, ``seconds`` of the epoch, ``eta_seconds``,
``probes`` {model: {probe: accuracy}} of the latest probed epoch and ``probed_epoch``, ``time``
UTC), and, with ``tensorboard=DIR``, loss, KL and probe accuracies become TensorBoard scalars
(the ``tensorboard`` extra). NaN (the loss of epoch 0, before training) is written as null.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from distill.provenance import now

log = logging.getLogger("distill.train")


def progress_path(store: str | Path) -> Path:
    """The JSON-lines progress file beside ``store`` (``runs/x.rts`` -> ``runs/x.jsonl``)."""
    store = Path(store)
    return store.with_name(store.stem + ".jsonl")


def read_progress(store: str | Path) -> list[dict[str, Any]]:
    """The records of ``store``'s progress file, in order (empty when there is none)."""
    path = progress_path(store)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _num(v: Any) -> float | None:
    v = float(v)
    return None if not math.isfinite(v) else v


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class EpochReporter:
    """Writes one record per epoch (see the module docstring); a no-op when ``enabled`` is False.

    store: the store path; run: the name in log lines; epochs: the last epoch of the run;
    start: the epoch the run (re)starts from (records after it are dropped from the file);
    log_lines: also emit the ``logging`` line (when no progress bar is shown).
    """

    def __init__(
        self,
        store: str | Path,
        run: str,
        epochs: int,
        start: int,
        *,
        enabled: bool = True,
        log_lines: bool = True,
        tensorboard: str | Path | None = None,
    ) -> None:
        self.path, self.run, self.epochs, self.start = progress_path(store), run, int(epochs), int(start)
        self.enabled, self.log_lines = enabled, log_lines
        self.writer = None
        if not enabled:
            return
        kept = [r for r in read_progress(store) if int(r.get("epoch", -1)) <= self.start] if self.start else []
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError(
                    "--tensorboard needs the tensorboard package: pip install 'random-teachers[tensorboard]'"
                ) from None
            self.writer = SummaryWriter(str(tensorboard))

    def record(self, epoch: int, history: Any) -> dict[str, Any] | None:
        """Append the record of ``epoch`` (the last row of ``history``, a `distill.train.History`)."""
        if not self.enabled:
            return None
        i = history.epochs.index(epoch)
        probed = [e for e in history.probes if e <= epoch]
        last = max(probed) if probed else None
        done = [s for e, s in zip(history.epochs, history.seconds) if self.start < e <= epoch]
        eta = (sum(done) / len(done)) * (self.epochs - epoch) if done else None
        rec: dict[str, Any] = {
            "epoch": int(epoch),
            "loss": _num(history.loss[i]),
            "kl": _num(history.kl[i]),
            "seconds": _num(history.seconds[i]),
            "eta_seconds": eta,
            "probes": {m: {p: _num(v) for p, v in got.items()} for m, got in history.probes[last].items()}
            if last is not None
            else {},
            "probed_epoch": last,
            "time": now(),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        if self.log_lines:
            log.info(self.line(rec))
        if self.writer is not None:
            for key in ("loss", "kl"):
                if rec[key] is not None:
                    self.writer.add_scalar(f"distill/{key}", rec[key], epoch)
            if last == epoch:
                for m, got in rec["probes"].items():
                    for p, v in got.items():
                        if v is not None:
                            self.writer.add_scalar(f"probe/{m}/{p}", v, epoch)
            self.writer.flush()
        return rec

    def line(self, rec: dict[str, Any]) -> str:
        """The log line of a record."""

        def fmt(v: float | None, spec: str = ".4f") -> str:
            return "-" if v is None else format(v, spec)

        text = (
            f"{self.run} epoch {rec['epoch']}/{self.epochs} loss {fmt(rec['loss'], '.6f')} kl {fmt(rec['kl'], '.2e')}"
        )
        student = rec["probes"].get("student", {})
        if student:
            text += " student " + " ".join(
                f"{p} {fmt(None if v is None else 100 * v, '.1f')}" for p, v in student.items()
            )
            if rec["probed_epoch"] != rec["epoch"]:
                text += f" (epoch {rec['probed_epoch']})"
        text += f" | {fmt(rec['seconds'], '.1f')} s"
        if rec["eta_seconds"] is not None:
            text += f", ETA {_duration(rec['eta_seconds'])}"
        return text

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
