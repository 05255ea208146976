"""Datasets as uint8 image tensors + int labels + class names, and the seed-1993 class order.

* ``digits``: scikit-learn's ``load_digits`` (shipped in the wheel), 8x8 grey images scaled
  0..16 -> 0..255, a fixed stratified 75/25 train/test split (``random_state=0``).
* ``cifar100``: ``<root>/cifar-100-python/`` (the torchvision layout; downloaded through
  torchvision when absent and the network allows) or ``<root>/cifar-100-binary/`` (the
  official binary version).
* ``imagefolder``: ``<root>/train/<class>/...`` and ``<root>/val/<class>/...`` (ImageNet-Subset, or
  any folder of images), decoded once into uint8 tensors (then the CIFAR-100 path) or read through a
  DataLoader (the reference's ImageNet pipeline): ``load_imagefolder`` says when and how, ``dataset_stats``
  where its mean/std come from.  See docs/DATASETS.md.

Labels are remapped to positions in the class order (DESIGN §3): class k in training is the
original label ``order[k]``.
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lucir.augment import ImageAugment, augment_settings
from lucir.config import CLASS_COUNTERS, check_field, check_normalisation


class DatasetMissingError(FileNotFoundError):
    """The dataset is not on disk and cannot be downloaded; the message says what to put where."""


class DatasetError(ValueError):
    """The dataset is there but unusable (a corrupt image, mismatched folders); the message names the file."""


CIFAR100_MEAN = (0.5071, 0.4866, 0.4409)
CIFAR100_STD = (0.2009, 0.1984, 0.2023)  # the reference code's std (LUCIR_REFERENCE §4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def class_order(num_classes: int, seed: int = 1993) -> np.ndarray:
    """``np.random.seed(seed); np.random.shuffle(arange(C))`` as the reference code does (DESIGN §3).

    A private RandomState seeded the same way draws the same stream as the global one.
    For CIFAR-100 and seed 1993 the order starts 68 56 78 8 23 84 90 65 74 76.
    """
    order = np.arange(num_classes)
    np.random.RandomState(seed).shuffle(order)
    return order


@dataclass
class TensorDataset:
    """A whole dataset as tensors; augmentation is done batch-wise on the training device."""

    name: str
    train_x: torch.Tensor  # uint8 N x C x H x W
    train_y: torch.Tensor  # int64, original labels
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 4
    flip: bool = True
    resized_crop: bool = False  # train augmentation: RandomResizedCrop instead of the pad-crop (lucir.augment)
    kind: str = field(default="tensor", init=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


@dataclass
class FolderDataset:
    """An ImageFolder dataset (ImageNet-Subset): file lists; decoding happens in DataLoader workers.

    The transforms come from ``augment`` and ``image_size`` (``Source._folder_loader``); ``channels`` 1
    loads the files as grayscale, 3 as RGB (grayscale files repeated to 3 channels)."""

    name: str
    train_samples: list[tuple[str, int]]
    test_samples: list[tuple[str, int]]
    class_names: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    image_size: int = 224
    channels: int = 3
    augment: str = "imagenet"
    kind: str = field(default="folder", init=False)

    @property
    def train_y(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.train_samples], dtype=torch.int64)

    @property
    def test_y(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.test_samples], dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


# ---------------------------------------------------------------------------- loaders
def load_digits_dataset() -> TensorDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    xtr_t = torch.from_numpy(xtr)
    mean = (float(xtr_t.float().mean() / 255),)
    std = (float(xtr_t.float().std() / 255),)
    return TensorDataset("digits", xtr_t, torch.from_numpy(ytr), torch.from_numpy(xte),
                         torch.from_numpy(yte), [str(i) for i in range(10)], mean, std, pad=1, flip=False)


CIFAR_HELP = (
    "CIFAR-100 not found under {root}. Put either the python version (torchvision layout) at "
    "{root}/cifar-100-python/{{train,test,meta}} or the binary version at "
    "{root}/cifar-100-binary/{{train.bin,test.bin,fine_label_names.txt}}, or pass --data-root "
    "pointing to the folder that holds one of them ({why})."
)


def _cifar_from_binary(d: Path):
    def read(name):
        rec = np.fromfile(d / name, np.uint8).reshape(-1, 3074)
        return rec[:, 2:].reshape(-1, 3, 32, 32), rec[:, 1].astype(np.int64)

    xtr, ytr = read("train.bin")
    xte, yte = read("test.bin")
    names = (d / "fine_label_names.txt").read_text().split()
    return xtr, ytr, xte, yte, names


def _cifar_from_python(d: Path):
    def read(name):
        with open(d / name, "rb") as fh:
            obj = pickle.load(fh, encoding="latin1")
        return (np.asarray(obj["data"], np.uint8).reshape(-1, 3, 32, 32),
                np.asarray(obj["fine_labels"], np.int64))

    xtr, ytr = read("train")
    xte, yte = read("test")
    with open(d / "meta", "rb") as fh:
        names = pickle.load(fh, encoding="latin1")["fine_label_names"]
    return xtr, ytr, xte, yte, list(names)


def cifar100_paths(root: str | os.PathLike) -> tuple[Path, str] | None:
    """Where a readable copy of CIFAR-100 lies under ``root`` (also accepts the copy's own folder)."""
    root = Path(root)
    for cand, kind in ((root / "cifar-100-python", "python"), (root / "cifar-100-binary", "binary"),
                       (root, "python"), (root, "binary")):
        need = ("train", "test", "meta") if kind == "python" else ("train.bin", "test.bin",
                                                                   "fine_label_names.txt")
        if all((cand / n).is_file() for n in need):
            return cand, kind
    return None


def load_cifar100(root: str | os.PathLike, download: bool = True) -> TensorDataset:
    found = cifar100_paths(root)
    if found is None and download:
        import socket

        old_timeout = socket.getdefaulttimeout()
        try:
            import torchvision

            socket.setdefaulttimeout(30)  # a network that drops packets fails in seconds, not minutes
            torchvision.datasets.CIFAR100(str(root), train=True, download=True)
            found = cifar100_paths(root)
        except Exception as exc:  # no network, no permission, ...
            raise DatasetMissingError(CIFAR_HELP.format(root=root, why=f"the download failed: {type(exc).__name__}: "
                                                                      f"{exc}")) from None
        finally:
            socket.setdefaulttimeout(old_timeout)
    if found is None:
        raise DatasetMissingError(CIFAR_HELP.format(root=root, why="download disabled"))
    path, kind = found
    xtr, ytr, xte, yte, names = (_cifar_from_binary if kind == "binary" else _cifar_from_python)(path)
    return TensorDataset("cifar100", torch.from_numpy(np.ascontiguousarray(xtr)), torch.from_numpy(ytr),
                         torch.from_numpy(np.ascontiguousarray(xte)), torch.from_numpy(yte), names,
                         CIFAR100_MEAN, CIFAR100_STD, pad=4, flip=True)


IMAGEFOLDER_HELP = ("ImageFolder dataset not found: expected {root}/train/<class>/<images> and "
                    "{root}/val/<class>/<images> (e.g. the 100 ImageNet-Subset classes); pass --data-root")


def count_imagefolder_classes(root: str | os.PathLike) -> int:
    train = Path(root) / "train"
    if not train.is_dir() or not (Path(root) / "val").is_dir():
        raise DatasetMissingError(IMAGEFOLDER_HELP.format(root=root))
    n = sum(1 for p in train.iterdir() if p.is_dir())
    if n < 2:
        raise DatasetMissingError(IMAGEFOLDER_HELP.format(root=root) + f" (found {n} class folders)")
    return n


CLASS_COUNTERS["imagefolder"] = count_imagefolder_classes  # Config.from_flat's num_classes of a folder

#: a computed mean/std averages at most this many training images (evenly spaced over the split)
STATS_SAMPLE = 10_000
#: where computed mean/std are cached, keyed by image size and channels (``<root>/lucir_stats.json``)
STATS_FILE = "lucir_stats.json"
#: ``in_memory="auto"`` decodes a folder only if its uint8 tensors take at most this share of the RAM
IN_MEMORY_RAM_SHARE = 0.5


def _n_workers(workers: int = 0) -> int:
    """DataLoader workers / decoding threads: ``workers``, else the threads torch was given."""
    return int(workers) if workers else max(1, torch.get_num_threads())


def _imagefolder_samples(root) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    from torchvision.datasets import ImageFolder

    count_imagefolder_classes(root)
    try:
        tr = ImageFolder(str(Path(root) / "train"))
    except FileNotFoundError as exc:  # a class folder without a single image file
        raise DatasetError(f"{root}/train: {exc}") from None
    te = ImageFolder(str(Path(root) / "val"), allow_empty=True)  # a class may have few (or no) test images
    if tr.classes != te.classes:
        raise DatasetMissingError(f"{root}/train and {root}/val hold different class folders")
    return list(tr.samples), list(te.samples), list(tr.classes)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def fits_in_memory(paths: list[str], image_size: int, channels: int, workers: int = 1) -> bool:
    """``in_memory="auto"``: every image has at most ``image_size``^2 pixels (PIL reads only the headers;
    the scan stops at the first larger one) and the uint8 tensors fit in ``IN_MEMORY_RAM_SHARE`` of the RAM.
    An unreadable header raises ``DatasetError`` naming the file."""
    limit = image_size * image_size
    ram = _physical_memory()
    if ram and len(paths) * channels * limit > IN_MEMORY_RAM_SHARE * ram:
        return False

    def small(lo, hi):
        return all(w * h <= limit for w, h in (read_image(p, "read", lambda im: im.size) for p in paths[lo:hi]))

    return all(_in_threads(small, len(paths), 256, workers))  # ``all`` stops at the first chunk with a large image


def _in_threads(fn, n: int, chunk: int, workers: int, progress: bool = False, desc: str = ""):
    """``fn(lo, hi)`` over ``range(n)`` in chunks, in ``workers`` threads (PIL releases the GIL), yielding the
    results in order, with a tqdm bar of the items when ``progress``.  An exception (the first bad file), or the
    caller stopping early, cancels the chunks not started yet: the scan stops at once."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    ex, starts = ThreadPoolExecutor(max(1, workers)), range(0, n, chunk)
    try:
        with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for lo, result in zip(starts, ex.map(lambda lo: fn(lo, min(lo + chunk, n)), starts)):
                bar.update(min(lo + chunk, n) - lo)
                yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def eval_resize(augment: str, image_size: int) -> int:
    """The shorter side the eval transform resizes to before its centre crop of S = ``image_size``:
    round(S * 256 / 224) for ``imagenet`` (the reference's Resize(256) + CenterCrop(224)), else S."""
    return round(image_size * 256 / 224) if augment == "imagenet" else image_size


def read_image(path: str, what: str, fn, note: str = ""):
    """``fn`` of the PIL image of ``path`` (opened lazily: the header only until ``fn`` reads pixels); a truncated,
    corrupt or unsupported file raises a one-line ``DatasetError`` naming it (``what``: "read" or "decode")."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return fn(im)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; all mean "not a usable image"
        msg = " ".join(str(exc).split())
        raise DatasetError(f"cannot {what} image {path}: {type(exc).__name__}: {msg}{note}") from None


def open_image(path: str, mode: str):
    """The file as a PIL image of ``mode`` ("RGB" or "L"), or a ``DatasetError`` naming it."""
    return read_image(path, "decode", lambda im: im.convert(mode))


def decode_image(path: str, image_size: int, channels: int, resize: int | None = None) -> np.ndarray:
    """One file as a uint8 C x S x S array: grayscale (``channels`` 1) or RGB (3; grayscale repeated),
    the shorter side resized to ``resize`` (default S) and the centre S x S kept (no resize when the file
    is S x S already and ``resize`` is S): exactly the DataLoader path's eval transform
    (``folder_transform``) with ``resize = eval_resize(augment, S)``."""
    from torchvision.transforms import functional as TF

    resize = resize or image_size
    img = open_image(path, "L" if channels == 1 else "RGB")
    if img.size != (image_size, image_size) or resize != image_size:
        img = TF.center_crop(TF.resize(img, resize), [image_size, image_size])
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_images(paths: list[str], image_size: int, channels: int, workers: int = 1, progress: bool = False,
                  desc: str = "decoding", resize: int | None = None) -> torch.Tensor:
    """All ``paths`` through ``decode_image`` (``workers`` threads; PIL releases the GIL while decoding),
    as one uint8 N x C x S x S tensor, with a tqdm progress bar when ``progress``."""
    out = np.empty((len(paths), channels, image_size, image_size), np.uint8)

    def fill(lo, hi):
        for i in range(lo, hi):
            out[i] = decode_image(paths[i], image_size, channels, resize)

    for _ in _in_threads(fill, len(paths), 64, workers, progress, desc):
        pass
    return torch.from_numpy(out)


def stats_sample(n: int, k: int = STATS_SAMPLE) -> np.ndarray:
    """Indices of the training images a computed mean/std averages: all of them, or ``k`` evenly spaced."""
    return np.arange(n) if n <= k else np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N x C x H x W images, on the 0..1 scale (ToTensor's)."""
    xd = x.double().div_(255.0).transpose(0, 1).reshape(x.shape[1], -1)
    return tuple(float(v) for v in xd.mean(1)), tuple(float(v) for v in xd.std(1))


def dataset_stats(root, image_size: int, channels: int, augment: str, mean=(), std=(), *, n_train: int,
                  compute, variant: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation of an image folder: ``mean``/``std`` when given; ImageNet's for the ``imagenet``
    augmentation of RGB images (the reference's ImageNet driver); otherwise ``compute()`` over the
    training split, cached in ``<root>/lucir_stats.json`` under ``"<S>x<S>x<C>"`` (reused while the split
    has ``n_train`` images; written atomically; a read-only folder is simply not cached).  ``variant``: another
    decode of the same size (e.g. ``"resize18"``), cached under ``"<S>x<S>x<C>-<variant>"``."""
    import json

    from lucir.checkpoint import atomic_write_json

    if mean:
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if augment == "imagenet" and channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    path = Path(root) / STATS_FILE
    key = f"{image_size}x{image_size}x{channels}" + (f"-{variant}" if variant else "")
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if (isinstance(hit, dict) and hit.get("train_images") == n_train and len(hit.get("mean", ())) == channels
            and len(hit.get("std", ())) == channels):
        return tuple(float(v) for v in hit["mean"]), tuple(float(v) for v in hit["std"])
    m, s = compute()
    cache[key] = {"mean": list(m), "std": list(s), "train_images": n_train,
                  "sampled_images": int(len(stats_sample(n_train)))}
    try:
        atomic_write_json(path, cache)
    except OSError:  # read-only data folder: compute again next time
        pass
    return m, s


def verify_images(paths: list[str], mode: str = "header", workers: int = 1, progress: bool = False,
                  desc: str = "checking images") -> None:
    """Check every file before any training (the DataLoader path would otherwise find a corrupt file only when
    its class's phase starts, hours into a run): ``header`` opens it and runs PIL's ``verify`` (the header and,
    for PNG, the chunk checksums), ``full`` decodes every pixel (catches truncated JPEGs), ``off`` nothing.
    ``workers`` threads, a tqdm bar when ``progress``; the first bad file raises a one-line ``DatasetError``
    naming it."""
    check_field("verify_images", mode)
    if mode == "off" or not paths:
        return

    what, fn = ("decode", lambda im: im.load()) if mode == "full" else ("read", lambda im: im.verify())

    def check(lo, hi):
        for p in paths[lo:hi]:
            read_image(p, what, fn, f" (verify_images={mode})")

    for _ in _in_threads(check, len(paths), 256, workers, progress, desc):
        pass


def load_imagefolder(root: str | os.PathLike, image_size: int = 224, channels: int = 3, augment: str = "imagenet",
                     mean: tuple[float, ...] = (), std: tuple[float, ...] = (), in_memory: str = "false",
                     workers: int = 0, progress: bool = False,
                     verify: str = "header") -> "FolderDataset | TensorDataset":
    """``<root>/{train,val}/<class>/<images>`` as a ``TensorDataset`` (decoded once) or a ``FolderDataset``.

    ``in_memory``: "true" decodes the folder into uint8 N x C x S x S tensors, which then take the CIFAR-100
    path; "false" keeps file lists for a DataLoader; "auto" decodes when ``fits_in_memory``.  Both paths see
    the same eval inputs for every ``augment``: the decode is the DataLoader's eval transform
    (``decode_image``: shorter side resized to ``eval_resize(augment, S)``, i.e. S, or round(S * 256 / 224)
    for ``imagenet``, then the centre S x S); so with ``imagenet`` the in-memory training crops
    (RandomResizedCrop) are drawn from that central S x S region, where the DataLoader draws them from the
    whole file (and the random draws of the two paths differ anyway: not bit-identical runs).  The defaults
    are the reference's ImageNet pipeline (224 px RGB, RandomResizedCrop + flip, ImageNet statistics,
    DataLoader).  A corrupt file raises ``DatasetError`` naming it: before training (the DataLoader path scans
    every file, ``verify``: ``verify_images``; the in-memory path decodes every file), or later in the
    DataLoader (``verify="off"``, or a truncated file that only a "full" scan finds).
    """
    for name, value in (("image_size", image_size), ("channels", channels), ("augment", augment),
                        ("in_memory", in_memory), ("verify_images", verify)):
        check_field(name, value)  # the checks of lucir.config, for callers without a Config: before any I/O
    check_normalisation(mean, std, channels)
    train, test, classes = _imagefolder_samples(root)
    n_workers = _n_workers(workers)
    resize = eval_resize(augment, image_size)
    tr_paths, te_paths = [s for s, _ in train], [s for s, _ in test]
    tr_y = torch.tensor([y for _, y in train], dtype=torch.int64)
    te_y = torch.tensor([y for _, y in test], dtype=torch.int64)
    stats_key = None if resize == image_size else f"resize{resize}"
    if in_memory == "true" or (in_memory == "auto" and fits_in_memory(tr_paths + te_paths, image_size, channels,
                                                                      n_workers)):
        x = decode_images(tr_paths + te_paths, image_size, channels, n_workers, progress,
                          desc=f"decoding {root} ({image_size}x{image_size}x{channels})", resize=resize)
        xtr, xte = x[:len(tr_paths)], x[len(tr_paths):]
        mean, std = dataset_stats(root, image_size, channels, augment, mean, std, n_train=len(tr_paths),
                                  compute=lambda: channel_stats(xtr[torch.from_numpy(stats_sample(len(xtr)))]),
                                  variant=stats_key)
        return TensorDataset("imagefolder", xtr, tr_y, xte, te_y, classes, mean, std,
                             **augment_settings(augment, image_size))

    verify_images(tr_paths + te_paths, verify, n_workers, progress, desc=f"checking {root} ({verify})")

    def compute():
        idx = stats_sample(len(tr_paths))
        return channel_stats(decode_images([tr_paths[i] for i in idx], image_size, channels, n_workers, progress,
                                           desc=f"mean/std of {root}", resize=resize))

    mean, std = dataset_stats(root, image_size, channels, augment, mean, std, n_train=len(tr_paths),
                              compute=compute, variant=stats_key)
    return FolderDataset("imagefolder", train, test, classes, mean, std, num_workers=n_workers,
                         image_size=image_size, channels=channels, augment=augment)


def load_dataset(name: str, root: str | os.PathLike = "data", download: bool = True):
    check_field("dataset", name)
    if name == "digits":
        return load_digits_dataset()
    if name == "cifar100":
        return load_cifar100(root, download=download)
    return load_imagefolder(root)


def load_dataset_for(cfg, progress: bool = False):
    """The dataset of ``cfg`` (a ``lucir.config.Config``) with its protocol's image settings applied.

    ``imagefolder``: ``load_imagefolder`` with ``image_size``, ``channels``, ``augment``, ``mean``/``std``,
    ``in_memory`` and ``workers`` (0: ``threads``, then torch's thread count).  ``digits``/``cifar100``:
    their fixed images, with the ``augment`` mode's crop/flip (the defaults, ``crop`` and ``cifar``, are
    exactly the loaders' own pad 1 / pad 4 + flip) and ``mean``/``std`` when given.
    """
    p, rt = cfg.protocol, cfg.runtime
    if p.dataset == "imagefolder":
        return load_imagefolder(p.data_root, image_size=p.image_size, channels=p.channels, augment=p.augment,
                                mean=p.mean, std=p.std, in_memory=rt.in_memory, workers=rt.workers or rt.threads,
                                progress=progress, verify=rt.verify_images)
    data = load_dataset(p.dataset, p.data_root, download=rt.download)
    settings = augment_settings(p.augment, p.image_size)
    data.pad, data.flip, data.resized_crop = settings["pad"], settings["flip"], settings["resized_crop"]
    if p.mean:
        data.mean, data.std = tuple(p.mean), tuple(p.std)
    return data


def check_dataset(name: str, root: str | os.PathLike = "data", download: bool = True) -> None:
    """Fail early (before any training or Ray work) when a dataset cannot be had."""
    if name == "cifar100" and cifar100_paths(root) is None:
        load_cifar100(root, download=download)  # downloads (if allowed) or raises DatasetMissingError
    elif name == "imagefolder":
        count_imagefolder_classes(root)


def flip_images(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``mode`` "channels": reverse the channel axis (RGB -> BGR); "mirror": reverse the width; "none".
    Works on one C x H x W image or an N x C x H x W batch (before normalisation)."""
    if mode == "channels":
        return x.flip(-3)
    if mode == "mirror":
        return x.flip(-1)
    return x


# ---------------------------------------------------------------------------- phase view
class Source:
    """The dataset seen through a class order, with batch iterators for one device.

    ``train_batches`` yields augmented, normalised float batches; ``eval_batches`` yields
    normalised batches without augmentation (the eval transform).  Labels are order positions.
    For tensor datasets everything stays on ``device`` and augmentation is batched there
    (DESIGN §5); folder datasets go through a DataLoader with JPEG decoding.
    """

    def __init__(self, data, order: np.ndarray, device: torch.device, channels_last: bool = False):
        self.data = data
        self.device = device
        self.channels_last = channels_last
        remap = torch.empty(len(order), dtype=torch.int64)
        remap[torch.as_tensor(order)] = torch.arange(len(order))
        self.train_y = remap[data.train_y]
        self.test_y = remap[data.test_y]
        self.class_names = [data.class_names[i] for i in order]
        if data.kind == "tensor":
            self.train_x = data.train_x.to(device)
            self.test_x = data.test_x.to(device)
            self.augment = ImageAugment(data.mean, data.std, data.pad, data.flip, device,
                                        resized_crop=getattr(data, "resized_crop", False))

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_batches(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator,
                      augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled, augmented batches of ``indices``.  A k x L index matrix (tensor datasets) gives the
        batches of the k members of an array (``lucir.models.Members``): the same shuffle of the L positions
        and the same crops and flips as one 1-D run of L indices draws from ``gen``, applied to every row and
        stacked on the channel axis (B x kC x H x W); the labels are row 0's (``lucir.run.run_members``
        checks that the rows agree position by position)."""
        rows = indices if indices.dim() == 2 else indices[None]  # 1-D: one row
        perm = rows[:, torch.randperm(rows.shape[1], generator=gen)]
        if self.data.kind != "tensor":
            self._one_row(indices)
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            yield from self._folder_loader(perm[0], batch_size, train=augment, split="train", seed=seed)
            return
        ydev = self.train_y.to(self.device)
        for i in range(0, perm.shape[1], batch_size):
            idx = perm[:, i:i + batch_size].to(self.device)
            x = self._stack(self.train_x[idx.reshape(-1)], idx.shape)
            x = self.augment(x, gen) if augment else self.augment.normalize(x)
            yield self._fmt(x), ydev[idx[0]]

    def eval_batches(self, split: str, indices: torch.Tensor | None, batch_size: int, flip: str = "none"):
        """Eval-transform batches; ``flip`` (``Method.class_mean_flip``) acts on the uint8 image before
        normalising: "channels" reverses the colour channels (the reference's ``[:, :, :, ::-1]`` on NHWC
        arrays in ``class_incremental_cosine_cifar100.py``), "mirror" reverses the width.  A k x L index
        matrix (tensor datasets) gives the k rows' images stacked on the channel axis, as ``train_batches``."""
        ys = self.train_y if split == "train" else self.test_y
        if indices is None:
            indices = torch.arange(len(ys))
        if self.data.kind != "tensor":
            self._one_row(indices)
            yield from self._folder_loader(indices, batch_size, train=False, split=split, seed=0, flip=flip)
            return
        xs, rows = self.train_x if split == "train" else self.test_x, indices if indices.dim() == 2 else indices[None]
        for i in range(0, rows.shape[1], batch_size):
            idx = rows[:, i:i + batch_size].to(self.device)
            x = self._stack(flip_images(xs[idx.reshape(-1)], flip), idx.shape)  # each row's images flipped
            yield self._fmt(self.augment.normalize(x)), ys[idx[0].cpu()].to(self.device)

    @staticmethod
    def _stack(x: torch.Tensor, shape) -> torch.Tensor:
        """(k B) x C x H x W images, row-major, as B x (k C) x H x W (k = 1: a view of the same images)."""
        k, b = shape
        return x.view(k, b, *x.shape[1:]).transpose(0, 1).reshape(b, k * x.shape[1], *x.shape[2:])

    @staticmethod
    def _one_row(indices: torch.Tensor) -> None:
        if indices.dim() != 1:
            raise ValueError("fused arrays need a tensor dataset (digits, cifar100, or an in-memory image folder)")

    def _folder_loader(self, indices, batch_size, train: bool, split: str, seed: int, flip: str = "none"):
        from torch.utils.data import DataLoader, Subset

        d = self.data
        tf = folder_transform(d.augment, d.image_size, d.mean, d.std, train, flip)
        samples = d.train_samples if split == "train" else d.test_samples
        ys = self.train_y if split == "train" else self.test_y
        g = torch.Generator().manual_seed(seed)
        files = _ImageFiles([s for s, _ in samples], ys, tf, "L" if d.channels == 1 else "RGB",
                            seed=seed if train else None)
        loader = DataLoader(Subset(files, indices.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=d.num_workers, pin_memory=self.device.type == "cuda", generator=g,
                            persistent_workers=False)
        for x, y in loader:
            yield self._fmt(x.to(self.device, non_blocking=True)), y.to(self.device)


def folder_transform(augment: str, image_size: int, mean, std, train: bool, flip: str = "none"):
    """torchvision transforms of the DataLoader path (one PIL image -> normalised float tensor).

    ``imagenet`` (the reference's ImageNet driver, ``class_incremental_cosine_imagenet.py``): train
    RandomResizedCrop(S) + RandomHorizontalFlip; eval Resize(round(S * 256 / 224)) + CenterCrop(S), i.e.
    Resize(256) + CenterCrop(224) at S = 224.  ``cifar``/``crop``/``none``: Resize(S) + CenterCrop(S), then
    for training RandomCrop(S, padding=``crop_padding(S)``) (+ flip for ``cifar``), as the tensor path.
    ``flip`` ("channels"/"mirror"/"none", ``flip_images``) acts on eval images before normalising.
    """
    from torchvision import transforms as T

    from lucir.augment import crop_padding

    s = image_size
    norm = T.Normalize(mean, std)
    if train:
        if augment == "imagenet":
            ops = [T.RandomResizedCrop(s), T.RandomHorizontalFlip()]
        else:
            ops = [T.Resize(s), T.CenterCrop(s)]
            if augment in ("cifar", "crop"):
                ops.append(T.RandomCrop(s, padding=crop_padding(s)))
            if augment == "cifar":
                ops.append(T.RandomHorizontalFlip())
        return T.Compose(ops + [T.ToTensor(), norm])
    resize = eval_resize(augment, s)
    return T.Compose([T.Resize(resize), T.CenterCrop(s), T.ToTensor(),
                      T.Lambda(functools.partial(flip_images, mode=flip)), norm])


class _ImageFiles(torch.utils.data.Dataset):
    """Decode one JPEG/PNG per item (PIL mode ``mode``: "RGB" or "L") and apply the transform (module
    level: picklable for spawn).  With ``seed``, item i's random transform draws from torch's RNG seeded
    with (seed, i), so an epoch's augmentation does not depend on the number of workers."""

    def __init__(self, paths: list[str], labels: torch.Tensor, transform, mode: str = "RGB",
                 seed: int | None = None):
        self.paths, self.labels, self.transform = paths, labels, transform
        self.mode, self.seed = mode, seed

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = open_image(self.paths[i], self.mode)
        if self.seed is None:
            return self.transform(img), self.labels[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + i)
            return self.transform(img), self.labels[i]


def validation_split(train_y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Boolean mask over the training images: a fixed, seeded, class-stratified held-out share.

    Per class, ``round(fraction * n_c)`` images (at least one when ``fraction > 0``, at most
    ``n_c - 1``) chosen by a generator seeded with ``seed`` alone, so every trial of a search (any
    training seed, any hyperparameters) holds out the same images; none of them is ever trained on,
    imprinted from or herded (``lucir search`` selects on them, never on the test set).
    """
    mask = torch.zeros(len(train_y), dtype=torch.bool)
    if fraction <= 0:
        return mask
    gen = torch.Generator().manual_seed(int(seed))
    for c in torch.unique(train_y).tolist():
        idx = torch.nonzero(train_y == c).flatten()
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        mask[idx[torch.randperm(len(idx), generator=gen)[:k]]] = True
    return mask
