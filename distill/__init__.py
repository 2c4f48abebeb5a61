"""Distil students from frozen, randomly initialised teachers (no labels, no augmentation).

The public API is imported lazily, so ``import distill`` is cheap:

```python
import distill
data = distill.load_dataset("fashion-mnist")
cfg = distill.DistillConfig(dataset="fashion-mnist", arch="convnet", epochs=4)
store = distill.distill(cfg, out="runs/demo.rts")
```
"""

from distill._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Dataset": "data",
    "Split": "data",
    "load_dataset": "data",
    "list_datasets": "data",
    "build_model": "models",
    "list_models": "models",
    "register_model": "models",
    "init_student": "init",
    "recalibrate_bn": "bn",
    "Store": "store",
    "StoreBusy": "store",
    "StoreError": "store",
    "as_module": "store",
    "DistillConfig": "config",
    "SupervisedConfig": "config",
    "distill": "train",
    "register_probe": "probe",
    "list_probes": "probe",
    "load_plugins": "plugins",
    "train_supervised": "supervised",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
