import gzip
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill import data as D
from distill.data import Dataset, Split, iterate, list_datasets, load_dataset, normalize

CIFAR_MEAN = (0.4913, 0.4821, 0.4465)
CIFAR_STD = (0.245, 0.243, 0.261)


@pytest.fixture(scope="session")
def fmnist(fmnist_root: Path) -> Dataset:
    return load_dataset("fashion-mnist", root=fmnist_root)


@pytest.fixture(scope="session")
def cifar(cifar_tarball: Path) -> Dataset:
    return load_dataset("cifar10", root=cifar_tarball)


def chunked_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units by plain float64 sums (independent of the histogram)."""
    s = torch.zeros(images.shape[1], dtype=torch.float64)
    ss = torch.zeros_like(s)
    for start in range(0, len(images), 5000):
        x = images[start : start + 5000].double() / 255
        s += x.sum(dim=(0, 2, 3))
        ss += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    return mean.tolist(), (ss / n - mean**2).sqrt().tolist()


# ----------------------------------------------------------------------------- real datasets


def test_fashion_mnist_shapes_counts_and_stats(fmnist: Dataset) -> None:
    assert len(fmnist.train) == 60_000 and len(fmnist.test) == 10_000
    assert fmnist.train.images.shape == (60_000, 1, 28, 28) and fmnist.train.images.dtype == torch.uint8
    assert fmnist.test.images.shape == (10_000, 1, 28, 28)
    assert fmnist.train.labels.dtype == torch.int64
    assert torch.bincount(fmnist.train.labels).tolist() == [6000] * 10
    assert torch.bincount(fmnist.test.labels).tolist() == [1000] * 10
    assert fmnist.in_shape == (1, 28, 28) and fmnist.num_classes == 10 and fmnist.classes[9] == "Ankle boot"
    mean, std = chunked_stats(fmnist.train.images)
    assert fmnist.mean == pytest.approx(mean, abs=1e-9) and fmnist.std == pytest.approx(std, abs=1e-9)
    assert fmnist.mean[0] == pytest.approx(0.2860, abs=1e-3)


def test_cifar_tarball_loads_with_canonical_classes_and_stats(cifar: Dataset, cifar_tarball: Path) -> None:
    assert cifar.train.images.shape == (50_000, 3, 32, 32) and cifar.test.images.shape == (10_000, 3, 32, 32)
    assert cifar.train.images.dtype == torch.uint8 and cifar.train.labels.dtype == torch.int64
    assert torch.bincount(cifar.train.labels).tolist() == [5000] * 10
    assert torch.bincount(cifar.test.labels).tolist() == [1000] * 10
    assert cifar.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert cifar.mean == pytest.approx(CIFAR_MEAN, abs=0.002)
    assert cifar.std == pytest.approx(CIFAR_STD, abs=0.002)
    mean, std = chunked_stats(cifar.train.images)
    assert cifar.mean == pytest.approx(mean, abs=1e-9) and cifar.std == pytest.approx(std, abs=1e-9)

    again = load_dataset("cifar10", root=cifar_tarball)
    assert D.cache_path(cifar_tarball).is_file()
    for a, b in [
        (cifar.train.images, again.train.images),
        (cifar.train.labels, again.train.labels),
        (cifar.test.images, again.test.images),
        (cifar.test.labels, again.test.labels),
    ]:
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- CIFAR pickle batches


def write_cifar_batches(folder: Path, protocol: int, per_batch: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=per_batch).tolist()
        batch = {
            b"batch_label": fname.encode(),
            b"labels": y,
            b"data": x,
            b"filenames": [f"{fname}_{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / fname, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        split = "test" if fname == "test_batch" else "train"
        written[f"{split}_x"].append(x.reshape(-1, 3, 32, 32))
        written[f"{split}_y"] += y
    names = [f"class{i}".encode() for i in reversed(range(10))]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=protocol)
    return {
        "train_x": np.concatenate(written["train_x"]),
        "test_x": np.concatenate(written["test_x"]),
        "train_y": written["train_y"],
        "test_y": written["test_y"],
        "classes": [n.decode() for n in names],
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickle_batches_round_trip(tmp_path: Path, protocol: int) -> None:
    written = write_cifar_batches(tmp_path / "cifar-10-batches-py", protocol)
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):
        ds = load_dataset("cifar10", root=root)
        assert torch.equal(ds.train.images, torch.from_numpy(written["train_x"]))
        assert torch.equal(ds.test.images, torch.from_numpy(written["test_x"]))
        assert ds.train.labels.tolist() == written["train_y"] and ds.test.labels.tolist() == written["test_y"]
        assert ds.classes == written["classes"]
        assert len(ds.train) == 20 and ds.in_shape == (3, 32, 32)


def test_cifar_pickle_batches_inside_a_tarball(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    written = write_cifar_batches(tmp_path / "src" / "cifar-10-batches-py", protocol=2)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", root=tmp_path)
    assert torch.equal(ds.train.images, torch.from_numpy(written["train_x"]))
    assert ds.test.labels.tolist() == written["test_y"]
    assert D.cache_path(tarball) == tmp_path / "cifar-10-python.tar.gz.rtt-cache.npz"
    assert D.cache_path(tarball).is_file()


def _py2_str(s: bytes) -> bytes:
    return b"U" + bytes([len(s)]) + s  # SHORT_BINSTRING: a Python 2 str


def test_python2_style_batch_pickle() -> None:
    # Hand-assembled the way Python 2 + numpy wrote the real CIFAR batches (str keys, str raw data).
    raw = bytes([0, 127, 128, 200, 255, 1])
    blob = (
        b"\x80\x02}q\x00("
        + _py2_str(b"data")
        + b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85"
        + _py2_str(b"b")
        + b"\x87Rq\x03(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x04"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87Rq\x05"
        + b"(K\x03"
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + _py2_str(raw)
        + b"tb"
        + _py2_str(b"labels")
        + b"]q\x06(K\x01K\x02eu."
    )
    batch = D.unpickle_restricted(blob)
    assert batch["labels"] == [1, 2] and batch["data"].dtype == np.uint8
    assert batch["data"].tolist() == [[0, 127, 128], [200, 255, 1]]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_restricted_unpickler_refuses_foreign_globals(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder, protocol=2)
    payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Exploit(marker)]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(ValueError, match=r"refusing global (posix|os|nt)\.system") as err:
        load_dataset("cifar10", root=folder)
    assert "data_batch_3" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # the encode hook only turns latin-1 text into bytes, nothing else
    sneaky = pickle.dumps(b"x", protocol=2).replace(b"latin1", b"rot_13")
    with pytest.raises(ValueError, match="latin-1"):
        D.unpickle_restricted(sneaky)


# ----------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_set(folder: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 5, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(12, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 5, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 0, 9], dtype=np.uint8),
    }
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_raw_and_gz_load(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_set(tmp_path / "mnist", gz)
    for root in (tmp_path / "mnist", tmp_path):
        ds = load_dataset("mnist", root=root)
        assert ds.train.images.shape == (12, 1, 5, 4) and ds.in_shape == (1, 5, 4)
        assert torch.equal(ds.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
        assert torch.equal(ds.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
        assert ds.train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
        assert ds.test.labels.tolist() == [7, 0, 9] and ds.test.labels.dtype == torch.int64
        pixels = arrays["train-images-idx3-ubyte"] / 255
        assert ds.mean[0] == pytest.approx(pixels.mean(), abs=1e-12)
        assert ds.std[0] == pytest.approx(pixels.std(), abs=1e-12)


def test_idx_corrupt_files_raise_value_error(tmp_path: Path) -> None:
    raw = idx_bytes(np.zeros((4, 3, 3), np.uint8))
    cases = {
        "cut-idx3-ubyte": raw[:-5],
        "short-idx3-ubyte": raw[:6],
        "magic-idx3-ubyte": b"\x12\x34" + raw[2:],
        "cut-idx3-ubyte.gz": gzip.compress(raw)[:-12],
    }
    for fname, blob in cases.items():
        (tmp_path / fname).write_bytes(blob)
        with pytest.raises(ValueError, match=fname.replace(".", r"\.")):
            D.read_idx(tmp_path / fname)
    arrays = write_idx_set(tmp_path / "fashion-mnist", gz=False)
    path = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(arrays["t10k-images-idx3-ubyte"])[:-1])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("fashion-mnist", root=tmp_path)


# ----------------------------------------------------------------------------- image trees and the cache


def write_png_tree(root: Path, seed: int = 0, prefix: str = "") -> dict[tuple[str, str, str], np.ndarray]:
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for cls in ("zebra", "ant", "moth"):
            folder = root / prefix / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
                written[(split, cls, f"{i:04d}.png")] = pixels
    return written


def expected_split(written: dict, split: str) -> tuple[torch.Tensor, list[int]]:
    classes = sorted({cls for (_, cls, _) in written})
    keys = sorted(k for k in written if k[0] == split)
    images = torch.from_numpy(np.stack([written[k] for k in keys]).transpose(0, 3, 1, 2).copy())
    return images, [classes.index(k[1]) for k in keys]


def test_image_tree_folder_and_cache_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    tree = tmp_path / "tree"
    written = write_png_tree(tree)
    ds = load_dataset("cifar10", root=tree)
    assert ds.classes == ["ant", "moth", "zebra"] and ds.in_shape == (3, 4, 5)
    for split in ("train", "test"):
        images, labels = expected_split(written, split)
        assert torch.equal(getattr(ds, split).images, images)
        assert getattr(ds, split).labels.tolist() == labels
    cache = D.cache_path(tree)
    assert cache == tmp_path / "tree.rtt-cache.npz" and cache.is_file()
    with np.load(cache, allow_pickle=False) as z:  # the cache holds no pickled objects
        assert z["train_images"].dtype == np.uint8

    cached = load_dataset("cifar10", root=tree)
    assert torch.equal(cached.train.images, ds.train.images) and torch.equal(cached.test.labels, ds.test.labels)

    new = np.full((4, 5, 3), 77, np.uint8)
    target = tree / "train" / "ant" / "0000.png"
    Image.fromarray(new).save(target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**10))
    changed = load_dataset("cifar10", root=tree)
    assert torch.equal(changed.train.images[0], torch.from_numpy(new.transpose(2, 0, 1).copy()))


def test_image_tree_tarball_with_prefix_and_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    written = write_png_tree(tmp_path / "src", prefix="CIFAR-images-master")
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    tarball = shelf / "tiny-png.tar.gz"
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(tmp_path / "src" / "CIFAR-images-master", arcname="CIFAR-images-master")
    shelf.chmod(0o555)
    try:
        assert D.cache_path(tarball).parent == tmp_path / "xdg" / "random-teachers"
        ds = load_dataset("cifar10", root=tarball)
        assert D.cache_path(tarball).is_file() and not any(p.name.endswith(".npz") for p in shelf.iterdir())
    finally:
        shelf.chmod(0o755)
    images, labels = expected_split(written, "train")
    assert torch.equal(ds.train.images, images) and ds.train.labels.tolist() == labels


# ----------------------------------------------------------------------------- subsets and gaussian


def test_stratified_subset(fmnist: Dataset, fmnist_root: Path) -> None:
    a = load_dataset("fashion-mnist", root=fmnist_root, subset=1000, seed=0)
    assert torch.bincount(a.train.labels, minlength=10).tolist() == [100] * 10
    b = fmnist.subset(1000, seed=0)
    c = fmnist.subset(1000, seed=1)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.equal(a.test.images, fmnist.test.images) and torch.equal(a.test.labels, fmnist.test.labels)
    assert a.mean == fmnist.mean and a.std == fmnist.std
    # every kept image is a real, distinct training image with its own label
    idx = D.stratified_indices(fmnist.train.labels, 1000, 10, seed=0)
    assert len(set(idx.tolist())) == 1000
    assert torch.equal(fmnist.train.images[idx], a.train.images)


def test_stratified_indices_uneven_and_capped_classes() -> None:
    labels = torch.tensor([0] * 2 + [1] * 50 + [2] * 50 + [3] * 50)
    for seed in range(5):
        idx = D.stratified_indices(labels, 23, 4, seed)
        counts = torch.bincount(labels[idx], minlength=4).tolist()
        assert counts[0] == 2 and sum(counts) == 23 and max(counts[1:]) - min(counts[1:]) <= 1
        assert len(set(idx.tolist())) == 23 and idx.tolist() == sorted(idx.tolist())
    counts = torch.bincount(labels[D.stratified_indices(labels, 22, 4, 0)], minlength=4).tolist()
    assert counts[0] == 2 and sorted(counts[1:]) == [6, 7, 7]
    balanced = torch.arange(200) % 4
    picks = {
        tuple(torch.bincount(balanced[D.stratified_indices(balanced, 22, 4, seed)]).tolist()) for seed in range(20)
    }
    assert all(sorted(p) == [5, 5, 6, 6] for p in picks) and len(picks) > 1  # extras go to seeded classes
    with pytest.raises(ValueError, match="between 1 and 152"):
        D.stratified_indices(labels, 153, 4)


def test_gaussian_noise_like_fashion_mnist(fmnist: Dataset, fmnist_root: Path) -> None:
    g = load_dataset("gaussian:fashion-mnist", root=fmnist_root, seed=3)
    assert g.name == "gaussian:fashion-mnist"
    assert g.train.images.shape == fmnist.train.images.shape and g.train.images.dtype == torch.uint8
    assert torch.equal(g.train.labels, fmnist.train.labels)
    assert torch.equal(g.test.images, fmnist.test.images)  # the test split stays real
    x = g.train.images.double() / 255
    # the clamped noise keeps the source's mean and std (brute-force over all 47M noise pixels)
    assert x.mean().item() == pytest.approx(fmnist.mean[0], abs=0.003)
    assert x.std().item() == pytest.approx(fmnist.std[0], abs=0.003)
    assert g.mean == fmnist.mean and g.std == fmnist.std
    assert not torch.equal(g.train.images, fmnist.train.images)
    small = load_dataset("gaussian:fashion-mnist", root=fmnist_root, subset=500, seed=3)
    assert torch.bincount(small.train.labels).tolist() == [50] * 10
    assert torch.equal(
        small.train.images, load_dataset("gaussian:fashion-mnist", root=fmnist_root, subset=500, seed=3).train.images
    )


def test_gaussian_noise_like_cifar(cifar: Dataset, cifar_tarball: Path) -> None:
    g = load_dataset("gaussian", root=cifar_tarball, subset=2000, seed=0)
    assert g.name == "gaussian:cifar10" and g.in_shape == (3, 32, 32) and len(g.train) == 2000
    x = g.train.images.double() / 255
    assert x.mean(dim=(0, 2, 3)).tolist() == pytest.approx(cifar.mean, abs=0.005)
    assert x.std(dim=(0, 2, 3)).tolist() == pytest.approx(cifar.std, abs=0.005)
    assert torch.bincount(g.train.labels).tolist() == [200] * 10
    assert len(g.test) == 10_000 and torch.equal(g.test.labels, cifar.test.labels)


# ----------------------------------------------------------------------------- errors


def test_missing_data_and_unknown_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    for name in ("fashion-mnist", "mnist", "cifar10", "cifar100"):
        with pytest.raises(FileNotFoundError) as err:
            load_dataset(name, root=missing)
        assert str(missing) in str(err.value) and "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("RTT_DATA", str(empty))
    monkeypatch.chdir(empty)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10")
    msg = str(err.value)
    assert str(empty / "cifar10") in msg and "shared" not in msg  # no repository-specific fallback path
    assert "cifar-10-batches-py" in msg
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=empty)
    with pytest.raises(ValueError, match="cifar10.*fashion-mnist"):
        load_dataset("imagenet")
    assert {"cifar10", "cifar100", "fashion-mnist", "mnist", "gaussian", "gaussian:cifar10"} <= set(list_datasets())


# ----------------------------------------------------------------------------- batching


def toy_split(n: int = 103) -> Split:
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    images[:, 1] = 255 - images[:, 1]
    return Split(images, torch.arange(n))


def test_normalize_matches_manual_loop() -> None:
    x = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for b, c, i, j in np.ndindex(*x.shape):
        assert out[b, c, i, j].item() == pytest.approx((x[b, c, i, j].item() / 255 - mean[c]) / std[c], abs=1e-6)
    with pytest.raises(ValueError, match="3 values"):
        normalize(x, (0.5,), (0.5,))


def test_iterate_covers_each_example_once_and_is_reproducible() -> None:
    split = toy_split()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def order(**kw) -> list[int]:
        labels = []
        for x, y in iterate(split, 10, mean, std, **kw):
            assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 2, 2)
            assert torch.equal(x, normalize(split.images[y], mean, std))  # images travel with their labels
            labels += y.tolist()
        return labels

    plain = order()
    assert plain == list(range(103))
    shuffled = order(shuffle=True, seed=7)
    assert sorted(shuffled) == list(range(103)) and shuffled != plain
    assert order(shuffle=True, seed=7) == shuffled
    assert order(shuffle=True, seed=8) != shuffled
    dropped = order(shuffle=True, seed=7, drop_last=True)
    assert dropped == shuffled[:100]
    sizes = [len(y) for _, y in iterate(split, 10, mean, std)]
    assert sizes == [10] * 10 + [3]


def test_dataset_helpers() -> None:
    split = toy_split(20)
    ds = Dataset("toy", split, split, ["a"], (0.5,) * 3, (0.2,) * 3)
    assert ds.in_shape == (3, 2, 2) and ds.num_classes == 1
    moved = ds.to("cpu")
    assert torch.equal(moved.train.images, split.images) and moved.classes == ["a"]
    with pytest.raises(ValueError, match="uint8"):
        Split(split.images.float(), split.labels)


def test_rtt_data_is_searched_and_rtt_cache_moves_the_decoded_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("RTT_CACHE", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"
    written = write_png_tree(data_dir / "cifar10")
    monkeypatch.setenv("RTT_DATA", str(data_dir))
    ds = load_dataset("cifar10")  # found as $RTT_DATA/cifar10
    images, labels = expected_split(written, "train")
    assert torch.equal(ds.train.images, images) and ds.train.labels.tolist() == labels
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1 and D.cache_path(data_dir / "cifar10") == cached[0]
    assert not list(tmp_path.glob("data/*.npz")) and not (tmp_path / "xdg").exists()  # nowhere else
