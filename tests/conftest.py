import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_TARBALL = SHARED_DATA / "cifar10-jpg.tar.gz"


def fashion_mnist_root() -> Path | None:
    for root in [
        os.environ.get("RTT_DATA") and Path(os.environ["RTT_DATA"]) / "fashion-mnist",
        Path("/usr/share/datasets/fashion-mnist"),
    ]:
        if root and any(Path(root).glob("train-images-idx3-ubyte*")):
            return Path(root)
    return None


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    root = fashion_mnist_root()
    if root is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or set RTT_DATA)")
    return root


@pytest.fixture(scope="session")
def cifar_tarball() -> Path:
    if not CIFAR_TARBALL.exists():
        pytest.skip(f"{CIFAR_TARBALL} absent (the shared data folder is not beside the project)")
    return CIFAR_TARBALL


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped with a reason without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu; scripts/gpu-check.sh runs these)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
