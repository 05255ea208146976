"""Datasets as uint8 image tensors + int labels + class names, and the seed-1993 class order.

* ``digits``: scikit-learn's ``load_digits`` (shipped in the wheel), 8x8 grey images scaled
  0..16 -> 0..255, a fixed stratified 75/25 train/test split (``random_state=0``).
* ``cifar100``: ``<root>/cifar-100-python/`` (the torchvision layout; downloaded through
  torchvision when absent and the network allows) or ``<root>/cifar-100-binary/`` (the
  official binary version).
* ``imagefolder``: ``<root>/train/<class>/...`` and ``<root>/val/<class>/...`` (ImageNet-Subset),
  read through a DataLoader with JPEG decoding and the standard ImageNet transforms.

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

from lucir.augment import ImageAugment


class DatasetMissingError(FileNotFoundError):
    """The dataset is not on disk and cannot be downloaded; the message says what to put where."""


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
    kind: str = field(default="tensor", init=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


@dataclass
class FolderDataset:
    """An ImageFolder dataset (ImageNet-Subset): file lists; decoding happens in DataLoader workers."""

    name: str
    train_samples: list[tuple[str, int]]
    test_samples: list[tuple[str, int]]
    class_names: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
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
        return (3, 224, 224)


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
    "pointing to the folder that holds one of them (the download failed: {why})."
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
            raise DatasetMissingError(CIFAR_HELP.format(root=root, why=f"{type(exc).__name__}: {exc}")) from None
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


def load_imagefolder(root: str | os.PathLike) -> FolderDataset:
    from torchvision.datasets import ImageFolder

    count_imagefolder_classes(root)
    tr = ImageFolder(str(Path(root) / "train"))
    te = ImageFolder(str(Path(root) / "val"))
    if tr.classes != te.classes:
        raise DatasetMissingError(f"{root}/train and {root}/val hold different class folders")
    return FolderDataset("imagefolder", list(tr.samples), list(te.samples), list(tr.classes))


def load_dataset(name: str, root: str | os.PathLike = "data", download: bool = True):
    if name == "digits":
        return load_digits_dataset()
    if name == "cifar100":
        return load_cifar100(root, download=download)
    if name == "imagefolder":
        return load_imagefolder(root)
    raise ValueError(f"dataset={name!r} is invalid: allowed one of ['cifar100', 'digits', 'imagefolder']")


def check_dataset(name: str, root: str | os.PathLike = "data") -> None:
    """Fail early (before any training or Ray work) when a dataset cannot be had."""
    if name == "cifar100" and cifar100_paths(root) is None:
        load_cifar100(root, download=True)  # downloads or raises DatasetMissingError
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
            self.augment = ImageAugment(data.mean, data.std, data.pad, data.flip, device)

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_batches(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator,
                      augment: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = indices[torch.randperm(len(indices), generator=gen)]
        if self.data.kind == "tensor":
            ydev = self.train_y.to(self.device)
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size].to(self.device)
                x = self.train_x[idx]
                x = self.augment(x, gen) if augment else self.augment.normalize(x)
                yield self._fmt(x), ydev[idx]
        else:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            yield from self._folder_loader(perm, batch_size, train=augment, split="train", seed=seed)

    def eval_batches(self, split: str, indices: torch.Tensor | None, batch_size: int, flip: str = "none"):
        """Eval-transform batches; ``flip`` (``Method.class_mean_flip``) acts on the uint8 image before
        normalising: "channels" reverses the colour channels (the reference's ``[:, :, :, ::-1]`` on NHWC
        arrays in ``class_incremental_cosine_cifar100.py``), "mirror" reverses the width."""
        ys = self.train_y if split == "train" else self.test_y
        if indices is None:
            indices = torch.arange(len(ys))
        if self.data.kind == "tensor":
            xs = self.train_x if split == "train" else self.test_x
            for i in range(0, len(indices), batch_size):
                idx = indices[i:i + batch_size].to(self.device)
                yield self._fmt(self.augment.normalize(flip_images(xs[idx], flip))), ys[idx.cpu()].to(self.device)
        else:
            yield from self._folder_loader(indices, batch_size, train=False, split=split, seed=0, flip=flip)

    def _folder_loader(self, indices, batch_size, train: bool, split: str, seed: int, flip: str = "none"):
        from torch.utils.data import DataLoader, Subset
        from torchvision import transforms as T

        d = self.data
        norm = T.Normalize(d.mean, d.std)
        tf = (T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if train
              else T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                              T.Lambda(functools.partial(flip_images, mode=flip)), norm]))
        samples = d.train_samples if split == "train" else d.test_samples
        ys = self.train_y if split == "train" else self.test_y
        g = torch.Generator().manual_seed(seed)
        files = _ImageFiles([s for s, _ in samples], ys, tf)
        loader = DataLoader(Subset(files, indices.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=d.num_workers, pin_memory=self.device.type == "cuda", generator=g,
                            persistent_workers=False)
        for x, y in loader:
            yield self._fmt(x.to(self.device, non_blocking=True)), y.to(self.device)


class _ImageFiles(torch.utils.data.Dataset):
    """Decode one JPEG/PNG per item and apply the transform (module level: picklable for spawn)."""

    def __init__(self, paths: list[str], labels: torch.Tensor, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from torchvision.datasets.folder import default_loader

        return self.transform(default_loader(self.paths[i])), self.labels[i]
