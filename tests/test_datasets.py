"""Dataset registry: the shipped offline subset, and every torchvision-backed dataset read from tiny
fixtures written in that dataset's real on-disk format."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

import fedabd.data as data
from fedabd.data import DatasetUnavailableError, dataset_info, load_dataset
from fedabd.registry import UnknownNameError

TORCHVISION_BACKED = ["mnist", "fashion_mnist", "cifar10", "svhn", "gtsrb"]


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDABD_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def rng_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ------------------------------------------------------------------ the shipped offline default

def test_default_dataset_is_the_shipped_subset():
    assert data.DEFAULT_DATASET == "mnist_subset"


@pytest.mark.parametrize("split,n", [("train", 10_000), ("test", 2_000)])
def test_mnist_subset_loads_offline(split, n):
    s = load_dataset("mnist_subset", split)
    assert s.images.shape == (n, 1, 28, 28) and s.images.dtype == torch.uint8
    assert s.labels.shape == (n,) and s.labels.dtype == torch.int64
    assert int(s.labels.min()) == 0 and int(s.labels.max()) == 9
    counts = torch.bincount(s.labels, minlength=10)
    assert counts.tolist() == [n // 10] * 10  # class-balanced draw
    assert s.images.float().mean() / 255 == pytest.approx(0.1307, abs=0.01)  # real MNIST pixels
    assert s.info == dataset_info("mnist_subset") and s.info.shape == (1, 28, 28)
    # deterministic, and the caller owns its tensors
    again = load_dataset("mnist_subset", split)
    assert torch.equal(s.images, again.images) and torch.equal(s.labels, again.labels)
    s.images[0] = 0
    assert not torch.equal(s.images, load_dataset("mnist_subset", split).images)


def test_mnist_subset_splits_differ_and_npz_has_no_pickles():
    from importlib import resources

    ref = resources.files("fedabd.data").joinpath("assets", "mnist_subset.npz")
    with ref.open("rb") as f, np.load(f, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert all(npz[k].dtype == np.uint8 for k in npz.files)
    assert resources.files("fedabd.data").joinpath("assets", "MNIST_SUBSET_LICENSE.md").is_file()
    tr, te = load_dataset("mnist_subset", "train"), load_dataset("mnist_subset", "test")
    assert not torch.equal(tr.images[:100], te.images[:100])


def test_dataset_info_and_unknown_name():
    assert set(TORCHVISION_BACKED + ["mnist_subset"]) <= set(data.DATASETS.names())
    assert dataset_info("gtsrb").num_classes == 43 and dataset_info("gtsrb").default_target == 1
    assert dataset_info("cifar10").shape == (3, 32, 32)
    assert dataset_info("svhn").mean == (0.4377, 0.4438, 0.4728)
    assert dataset_info("fashion_mnist").std == (0.3530,)
    assert dataset_info("mnist").mean == (0.1307,)
    with pytest.raises(UnknownNameError, match="unknown dataset 'imagenet'.*mnist_subset"):
        load_dataset("imagenet", "train")
    with pytest.raises(UnknownNameError, match="choose one of"):
        dataset_info("imagenet")
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError
        dataset_info("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist_subset", "val")


# ------------------------------------------------------------------ MNIST / Fashion-MNIST (IDX)

def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_idx_set(folder: Path, gz: bool, n_train=12, n_test=7, seed=0) -> dict:
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng_images(n, (28, 28), seed + n)
        y = np.arange(n, dtype=np.uint8) % 10
        write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz)
        out[split] = (x, y)
    return out


def check_set(s, x_nchw: np.ndarray, y: np.ndarray, name: str) -> None:
    assert s.info.name == name
    assert s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
    assert s.images.shape == x_nchw.shape
    assert np.array_equal(s.images.numpy(), x_nchw)
    assert np.array_equal(s.labels.numpy(), y.astype(np.int64))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "decompressed"])
@pytest.mark.parametrize("name,sub", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_datasets_read_torchvision_layout(tmp_path, name, sub, gz):
    expected = make_idx_set(tmp_path / sub / "raw", gz=gz)
    for split in ("train", "test"):
        x, y = expected[split]
        check_set(load_dataset(name, split, data_dir=tmp_path), x[:, None], y, name)


def test_mnist_flat_folder_and_env_var(tmp_path, monkeypatch):
    expected = make_idx_set(tmp_path / "flat", gz=True, seed=5)
    monkeypatch.setenv("FEDABD_DATA_DIR", str(tmp_path / "flat"))
    s = load_dataset("mnist", "test")  # data_dir=None -> $FEDABD_DATA_DIR
    check_set(s, expected["test"][0][:, None], expected["test"][1], "mnist")
    # an explicit data_dir wins over the environment variable
    with pytest.raises(DatasetUnavailableError):
        load_dataset("mnist", "test", data_dir=tmp_path / "empty")


def test_mnist_missing_split_is_unavailable(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    make_idx_set(folder, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    load_dataset("mnist", "train", data_dir=tmp_path)
    with pytest.raises(DatasetUnavailableError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", "test", data_dir=tmp_path)


# ------------------------------------------------------------------ CIFAR-10 (pickled batches)

def write_cifar(root: Path, n_per_batch=4, numpy1_globals=False) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    names = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for i, (fname, split) in enumerate(names):
        x = rng_images(n_per_batch, (3, 32, 32), 100 + i)  # rows are R plane, G plane, B plane
        y = [(i + j) % 10 for j in range(n_per_batch)]
        entry = {"batch_label": f"batch {i}", "labels": y, "data": x.reshape(n_per_batch, 3072),
                 "filenames": [f"img_{i}_{j}.png" for j in range(n_per_batch)]}
        blob = pickle.dumps(entry, protocol=2)
        if numpy1_globals:  # the real files name numpy.core.multiarray (numpy < 2)
            blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            assert b"numpy.core.multiarray\n_reconstruct" in blob
        (folder / fname).write_bytes(blob)
        out[split][0].append(x)
        out[split][1].extend(y)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(c) for c in range(10)]}, protocol=2))
    return {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in out.items()}


@pytest.mark.parametrize("numpy1_globals", [False, True])
def test_cifar10_reads_python_batches(tmp_path, numpy1_globals):
    expected = write_cifar(tmp_path, numpy1_globals=numpy1_globals)
    tr = load_dataset("cifar10", "train", data_dir=tmp_path)
    check_set(tr, *expected["train"], "cifar10")
    assert len(tr) == 20
    te = load_dataset("cifar10", "test", data_dir=tmp_path)
    check_set(te, *expected["test"], "cifar10")


def test_cifar10_refuses_arbitrary_pickles(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", "test", data_dir=tmp_path)


def test_cifar10_download_failure_and_success(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(root, train=True, download=False, **kw):
        raise URLError("network is unreachable")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(DatasetUnavailableError, match=r"(?s)'cifar10'.*download.*failed.*unreachable"):
        load_dataset("cifar10", "train", data_dir=tmp_path / "dl", download=True)

    calls = []

    def fake_download(root, train=True, download=False, **kw):
        assert download is True
        calls.append(root)
        write_cifar(Path(root))

    monkeypatch.setattr(tvd, "CIFAR10", fake_download)
    s = load_dataset("cifar10", "test", data_dir=tmp_path / "dl2", download=True)
    assert len(s) == 4 and calls == [str(tmp_path / "dl2")]
    load_dataset("cifar10", "train", data_dir=tmp_path / "dl2", download=True)  # present: no download
    assert len(calls) == 1


# ------------------------------------------------------------------ SVHN (.mat)

def test_svhn_reads_mat_files(tmp_path):
    sio = pytest.importorskip("scipy.io", reason="SVHN's .mat files need scipy")
    for split, n in (("train", 9), ("test", 5)):
        x = rng_images(n, (3, 32, 32), n)  # (N,C,H,W)
        y = (np.arange(n) % 10 + 1).astype(np.uint8)  # SVHN labels 1..10, 10 is the digit 0
        # the real files store X as (H, W, C, N) and y as (N, 1)
        sio.savemat(tmp_path / f"{split}_32x32.mat", {"X": np.transpose(x, (2, 3, 1, 0)), "y": y[:, None]})
        s = load_dataset("svhn", split, data_dir=tmp_path)
        check_set(s, x, np.where(y == 10, 0, y), "svhn")
        assert int(s.labels.max()) <= 9


# ------------------------------------------------------------------ GTSRB (folders of .ppm)

def write_gtsrb(root: Path) -> dict:
    from PIL import Image

    base = root / "gtsrb"
    train = []
    for cls, sizes in ((0, [(30, 31), (45, 40)]), (1, [(29, 29)]), (42, [(64, 52), (33, 35), (40, 40)])):
        folder = base / "GTSRB" / "Training" / f"{cls:05d}"
        folder.mkdir(parents=True)
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for j, (w, h) in enumerate(sizes):
            colour = (cls * 5 % 256, 10 + j * 40, 200 - cls)
            name = f"{j:05d}_{0:05d}.ppm"
            Image.new("RGB", (w, h), colour).save(folder / name)
            rows.append(f"{name};{w};{h};5;5;{w - 5};{h - 5};{cls}")
            train.append((colour, cls))
        (folder / f"GT-{cls:05d}.csv").write_text("\n".join(rows) + "\n")
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    test = []
    for j, (cls, (w, h)) in enumerate([(14, (53, 54)), (1, (42, 45)), (33, (31, 30))]):
        colour = (j * 70, 255 - cls, cls)
        name = f"{j:05d}.ppm"
        Image.new("RGB", (w, h), colour).save(images / name)
        rows.append(f"{name};{w};{h};5;6;{w - 6};{h - 5};{cls}")
        test.append((colour, cls))
    (images / "GT-final_test.test.csv").write_text("\n".join(r.rsplit(";", 1)[0] for r in rows) + "\n")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return {"train": train, "test": test}


def test_gtsrb_reads_ppm_folders_and_resizes(tmp_path):
    expected = write_gtsrb(tmp_path)
    for split in ("train", "test"):
        s = load_dataset("gtsrb", split, data_dir=tmp_path)
        want = expected[split]
        assert s.images.shape == (len(want), 3, 32, 32) and s.images.dtype == torch.uint8
        assert s.labels.tolist() == [cls for _, cls in want]  # class id from the folder / CSV
        for img, (colour, _) in zip(s.images, want):
            assert img.reshape(3, -1).float().mean(1).round().tolist() == list(colour)
        assert s.info.num_classes == 43


# ------------------------------------------------------------------ missing data

@pytest.mark.parametrize("name", TORCHVISION_BACKED)
def test_missing_data_raises_helpful_error(tmp_path, name):
    empty = tmp_path / "nothing-here"
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset(name, "train", data_dir=empty)
    msg = str(err.value)
    assert repr(name) in msg and str(empty) in msg and "--data-dir" in msg and "--download" in msg
    assert not empty.exists()  # nothing created without --download


def test_missing_data_without_data_dir_names_default_folder(tmp_path):
    with pytest.raises(DatasetUnavailableError, match=r"(?s)'mnist'.*xdg-cache.*FEDABD_DATA_DIR"):
        load_dataset("mnist", "test")
