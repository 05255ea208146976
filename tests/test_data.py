"""lucir.data: class order (DESIGN §3, LUCIR_REFERENCE §1), digits split, CIFAR-100 readers, missing data,
ImageFolder, and the Source view (labels remapped to positions in the class order)."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch

from lucir_fixtures import cifar_root, digits, requires_cifar
from lucir.config import Config
from lucir.data import (DatasetMissingError, Source, check_dataset, class_order, load_cifar100, load_dataset)

# LUCIR_REFERENCE §1: seed-1993 CIFAR-100 order (iCaRL's order, FACIL's cifar100_icarl, PODNet's order).
CIFAR100_ORDER_1993 = [
    68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38, 58, 70, 77, 1, 85, 19, 17, 50, 28, 53,
    13, 81, 45, 82, 6, 59, 83, 16, 15, 44, 91, 41, 72, 60, 79, 52, 20, 10, 31, 54, 37, 95, 14, 71, 96, 98, 97, 2, 64, 66,
    42, 22, 35, 86, 24, 34, 87, 21, 99, 0, 88, 27, 18, 94, 11, 12, 47, 25, 30, 46, 62, 69, 36, 61, 7, 63, 75, 5, 32, 4,
    51, 48, 73, 93, 39, 67, 29, 49, 57, 33]


# ----------------------------------------------------------------------------- class order
def test_cifar100_order_seed_1993_begins_as_in_the_paper_code():
    order = class_order(100, 1993)
    assert list(order[:10]) == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert sorted(order.tolist()) == list(range(100))


def test_cifar100_order_seed_1993_is_the_reference_order():
    assert class_order(100, 1993).tolist() == CIFAR100_ORDER_1993


def test_class_order_equals_the_global_numpy_shuffle_and_leaves_the_global_rng_alone():
    saved = np.random.get_state()
    try:
        np.random.seed(1993)
        ref = np.arange(1000)
        np.random.shuffle(ref)  # what the reference driver does (ImageNet-Full starts 54 7 894 512 ...)
        np.random.seed(5)
        before = np.random.get_state()[1].copy()
        got = class_order(1000, 1993)
        assert np.array_equal(np.random.get_state()[1], before)
    finally:
        np.random.set_state(saved)
    assert got.tolist() == ref.tolist()
    assert got[:4].tolist() == [54, 7, 894, 512]


# ----------------------------------------------------------------------------- digits
def test_digits_split_is_fixed_and_stratified():
    from lucir.data import load_digits_dataset

    a, b = digits(), load_digits_dataset()
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.dtype == torch.uint8 and tuple(a.train_x.shape[1:]) == (1, 8, 8)
    assert len(a.train_y) + len(a.test_y) == 1797
    assert int(a.train_x.max()) == 255 and int(a.train_x.min()) == 0
    tr = torch.bincount(a.train_y, minlength=10)
    te = torch.bincount(a.test_y, minlength=10)
    total = tr + te
    # stratified: every class holds 25 % of its images in the test split (rounding aside)
    assert torch.all((te.float() - 0.25 * total.float()).abs() <= 1.0), (te, total)
    assert a.class_names == [str(i) for i in range(10)]
    assert a.pad == 1 and a.flip is False  # digits are not mirror-symmetric


def test_digits_train_and_test_partition_load_digits():
    from collections import Counter

    from sklearn.datasets import load_digits

    d = digits()
    sk = load_digits()
    raw = np.clip(np.round(sk.images * 255 / 16), 0, 255).astype(np.uint8)
    every = Counter(x.tobytes() + bytes([int(y)]) for x, y in zip(raw, sk.target))
    tr = Counter(x[0].numpy().tobytes() + bytes([int(y)]) for x, y in zip(d.train_x, d.train_y))
    te = Counter(x[0].numpy().tobytes() + bytes([int(y)]) for x, y in zip(d.test_x, d.test_y))
    assert tr + te == every  # each image of load_digits lands in exactly one split, with its label


# ----------------------------------------------------------------------------- missing CIFAR-100
def _assert_says_what_to_put_where(msg: str, root) -> None:
    assert str(root) in msg
    for name in ("cifar-100-python", "cifar-100-binary", "train.bin", "test.bin", "meta"):
        assert name in msg, (name, msg)


def test_missing_cifar100_without_download_says_which_files_to_put_where(tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        load_cifar100(tmp_path, download=False)
    _assert_says_what_to_put_where(str(info.value), tmp_path)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.timeout(120)
def test_missing_cifar100_with_failing_download_is_a_clear_error(tmp_path):
    """The default path: torchvision's download is tried; offline it fails and the error says what to do.

    torchvision's urlopen has no timeout, so on a network that drops packets this can take as long as the
    OS connect timeout; the pytest timeout bounds it."""
    root = tmp_path / "nowhere"
    t0 = time.perf_counter()
    try:
        data = load_cifar100(root, download=True)
    except DatasetMissingError as exc:
        _assert_says_what_to_put_where(str(exc), root)
        assert "download failed" in str(exc)
    else:  # the network allowed the download: then it must be the real thing
        assert len(data.train_y) == 50_000
    assert time.perf_counter() - t0 < 110


def test_check_dataset_fails_early_for_a_missing_imagefolder(tmp_path):
    with pytest.raises(DatasetMissingError, match=r"train/<class>.*val/<class>"):
        check_dataset("imagefolder", tmp_path)
    with pytest.raises(DatasetMissingError):
        Config.from_flat(dataset="imagefolder", data_root=str(tmp_path))


# ----------------------------------------------------------------------------- synthetic CIFAR-100 files
def _synthetic_cifar_arrays(n: int, seed: int):
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
    y = (np.arange(n) * 7) % 100
    return x, y


def test_cifar100_python_pickle_layout(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    xtr, ytr = _synthetic_cifar_arrays(12, 0)
    xte, yte = _synthetic_cifar_arrays(5, 1)
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        with open(d / name, "wb") as fh:  # the torchvision/official layout: rows of R(1024) G(1024) B(1024)
            pickle.dump({"data": x.reshape(len(x), 3072), "fine_labels": y.tolist(),
                         "coarse_labels": (y // 5).tolist(), "filenames": [f"{i}.png" for i in range(len(x))]}, fh)
    names = [f"class{i:02d}" for i in range(100)]
    with open(d / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"c{i}" for i in range(20)]}, fh)
    data = load_cifar100(tmp_path, download=False)
    assert data.train_x.dtype == torch.uint8 and tuple(data.train_x.shape) == (12, 3, 32, 32)
    assert np.array_equal(data.train_x.numpy(), xtr) and np.array_equal(data.test_x.numpy(), xte)
    # the red plane is the first 1024 values of a row, row-major
    assert int(data.train_x[3, 0, 1, 2]) == int(xtr.reshape(12, 3072)[3, 32 + 2])
    assert int(data.train_x[3, 2, 0, 0]) == int(xtr.reshape(12, 3072)[3, 2048])
    assert data.train_y.tolist() == ytr.tolist() and data.test_y.tolist() == yte.tolist()
    assert data.class_names == names and data.num_classes == 100
    assert data.pad == 4 and data.flip is True
    # also found when the root is the copy's own folder
    assert torch.equal(load_cifar100(d, download=False).test_x, data.test_x)


def test_cifar100_binary_layout(tmp_path):
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    xtr, ytr = _synthetic_cifar_arrays(6, 2)
    xte, yte = _synthetic_cifar_arrays(4, 3)
    for name, x, y in (("train.bin", xtr, ytr), ("test.bin", xte, yte)):
        # official binary records: <coarse label byte><fine label byte><3072 pixel bytes>
        rec = np.concatenate([(y // 5)[:, None], y[:, None], x.reshape(len(x), 3072)], 1).astype(np.uint8)
        rec.tofile(d / name)
    (d / "fine_label_names.txt").write_text("\n".join(f"name{i}" for i in range(100)) + "\n")
    data = load_cifar100(tmp_path, download=False)
    assert np.array_equal(data.train_x.numpy(), xtr) and np.array_equal(data.test_x.numpy(), xte)
    assert data.train_y.tolist() == ytr.tolist() and data.test_y.tolist() == yte.tolist()
    assert data.class_names[:2] == ["name0", "name1"] and data.num_classes == 100


# ----------------------------------------------------------------------------- real CIFAR-100
@pytest.fixture(scope="module")
def cifar():
    return load_dataset("cifar100", cifar_root(), download=False)


@requires_cifar
def test_cifar100_reader_on_the_shared_copy(cifar):
    data = cifar
    assert tuple(data.train_x.shape) == (50_000, 3, 32, 32) and tuple(data.test_x.shape) == (10_000, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.test_x.dtype == torch.uint8
    assert torch.bincount(data.train_y, minlength=100).tolist() == [500] * 100
    assert torch.bincount(data.test_y, minlength=100).tolist() == [100] * 100
    assert len(data.class_names) == 100 and data.class_names[0] == "apple"
    assert data.class_names[68] == "road" and data.class_names[56] == "palm_tree"
    # real images, not a blank buffer: pixel statistics near the published normalisation constants
    mean = data.train_x[:5000].float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.5071, 0.4866, 0.4409]), atol=0.02)


# ----------------------------------------------------------------------------- ImageFolder
def _write_imagefolder(root, classes=("cat", "dog", "eel"), per_split=(2, 1)):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, n in zip(("train", "val"), per_split):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                size = (20 + 3 * i, 14 + 5 * i)
                arr = rng.randint(0, 256, size=(size[1], size[0], 3)).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_imagefolder_dataset_loads_through_source_eval_batches(tmp_path):
    _write_imagefolder(tmp_path)
    cfg = Config.from_flat(dataset="imagefolder", data_root=str(tmp_path), base_classes=1, phases=2, K=1)
    assert cfg.protocol.num_classes == 3
    data = load_dataset("imagefolder", tmp_path)
    assert data.class_names == ["cat", "dog", "eel"] and len(data.train_samples) == 6 and len(data.test_samples) == 3
    data.num_workers = 0  # decoding in-process keeps the test light; the worker path is the same transform
    order = np.array([2, 0, 1])
    src = Source(data, order, torch.device("cpu"))
    batches = list(src.eval_batches("test", None, 2))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 3, 224, 224), (1, 3, 224, 224)]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    # labels are positions in the order: original 0 (cat) -> 1, 1 (dog) -> 2, 2 (eel) -> 0
    assert y.tolist() == [1, 2, 0]
    assert src.class_names == ["eel", "cat", "dog"]
    # the eval transform is deterministic
    x2 = torch.cat([b[0] for b in src.eval_batches("test", None, 3)])
    assert torch.equal(x, x2)


def test_imagefolder_train_and_val_with_different_classes_is_an_error(tmp_path):
    _write_imagefolder(tmp_path)
    (tmp_path / "val" / "fox").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "fox" / "0.png")
    with pytest.raises(DatasetMissingError, match="different class folders"):
        load_dataset("imagefolder", tmp_path)


# ----------------------------------------------------------------------------- Source
def test_source_remaps_labels_to_order_positions_and_normalises():
    d = digits()
    order = class_order(10, 1993)
    src = Source(d, order, torch.device("cpu"))
    for k in range(10):
        assert torch.equal(src.train_y == k, d.train_y == int(order[k]))
    assert src.class_names == [str(int(c)) for c in order]
    idx = torch.tensor([5, 0, 17])
    (x, y), = list(src.eval_batches("train", idx, 8))
    expect = (d.train_x[idx].float() / 255 - d.mean[0]) / d.std[0]
    assert torch.allclose(x, expect, atol=1e-5)
    assert torch.equal(y, src.train_y[idx])


def test_source_train_batches_cover_the_indices_once_per_epoch_and_are_seeded():
    d = digits()
    src = Source(d, class_order(10, 1993), torch.device("cpu"))
    idx = torch.arange(100, 170)
    ys = [y for _, y in src.train_batches(idx, 16, torch.Generator().manual_seed(1))]
    assert [len(y) for y in ys] == [16, 16, 16, 16, 6]
    assert sorted(torch.cat(ys).tolist()) == sorted(src.train_y[idx].tolist())
    xa = torch.cat([x for x, _ in src.train_batches(idx, 16, torch.Generator().manual_seed(1))])
    xb = torch.cat([x for x, _ in src.train_batches(idx, 16, torch.Generator().manual_seed(1))])
    assert torch.equal(xa, xb)


@requires_cifar
def test_cifar100_through_the_seed_1993_order(cifar):
    src = Source(cifar, class_order(100, 1993), torch.device("cpu"))
    assert src.class_names[:3] == ["road", "palm_tree", "snake"]  # original labels 68, 56, 78
    assert torch.equal(src.train_y == 0, cifar.train_y == 68)
    assert torch.bincount(src.test_y, minlength=100).tolist() == [100] * 100
    idx = torch.nonzero(src.train_y < 50).flatten()
    assert len(idx) == 25_000  # the base phase of B50
    x, y = next(src.train_batches(idx, 128, torch.Generator().manual_seed(0)))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32 and bool((y < 50).all())
    # normalised with the reference's mean/std: roughly zero-mean, unit-std per channel
    xe = torch.cat([b for b, _ in src.eval_batches("train", idx[:4096], 1024)])
    assert xe.mean(dim=(0, 2, 3)).abs().max() < 0.1
    # the reference's std (0.2009, 0.1984, 0.2023) is below the pixel std (about 0.27): normalised std about 1.3
    std = xe.std(dim=(0, 2, 3))
    assert bool((std > 1.15).all() and (std < 1.5).all()), std
