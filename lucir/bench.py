"""``lucir bench``: images/s of the trainer's hot paths on synthetic data of the real shapes (DESIGN §5).

Sections (each a set of *variants* measured in interleaved rounds, A B C A B C ..., the median per
variant reported, ratios taken per round between neighbours in time and then the median):

* ``data``: producing augmented batches only: the tensor path (uint8 tensor on the device +
  ``lucir.augment.ImageAugment`` through ``lucir.data.Source.train_batches``) vs a DataLoader that
  turns every sample into a PIL image and runs torchvision's RandomCrop/RandomHorizontalFlip/
  ToTensor/Normalize in ``--workers`` worker processes, as the reference code does.
* ``train_base``: base-phase training steps (cosine head over the base classes, CE) and
  ``train_inc``: incremental-phase steps (cosine head with the old rows frozen + new rows, frozen
  reference model under inference mode, CE + less-forget + margin ranking).  Both call
  ``lucir.learner.train_phase`` itself (one "epoch" of ``--steps`` batches) with a
  ``PhaseContext``, so the benchmark runs exactly the trainer's code: batch production, autocast,
  ``phase_loss``, backward and SGD step.  Tensor variants: fp32, bf16 autocast, channels_last,
  bf16 + channels_last (and torch.compile ones with ``--compile``); the PIL variant feeds the same
  ``train_phase`` from a DataLoader (fp32), so data pipeline + step are timed together.
* ``fused_base`` and ``fused_inc`` (``--sections fused`` = both; not in the default sections): fused trial
  arrays (``lucir.fused``, issue 11) for every N in ``--fuse-sizes`` (default 1,2,4,8), images/s **per
  trial** (steps x batch x N / seconds).  ``fused N``: one ``lucir.fused.train_fused_phase`` over a
  ``FusedNet`` of N members (``lucir.run.build_model`` nets) on one shared batch stream (1-D index);
  in ``fused_inc`` (phase 1, CE + LF + MR, members differing in lambda_base/margin/K, the same
  start except their new head rows) the frozen model is one shared ``IncrementalNet``
  (``_Broadcast``), as after a shared base phase.  ``fused N stacked`` (``fused_inc`` only): each
  member its own exemplars (N x L index matrix, N images stacked on the channel axis) and its own
  frozen model (a ``FusedNet``), as in phase >= 2 of an array, at phase-1 shapes.  ``N separate``: the
  same N members' ``lucir.learner.train_phase`` one after another, each with its own model, frozen
  model and batches, the same steps.  Ratios per N: fused / separate (what an array gains), stacked /
  separate (the grouped convolutions with nothing shared) and fused / stacked (what the shared batch
  and frozen model save).  ``--fuse-bf16`` and ``--fuse-channels-last`` set the precision and memory
  format of all these variants (default fp32, the Runtime's channels_last), ``--fuse-backend`` the fused
  model's backend (``lucir.fused.BACKENDS``: grouped convolutions, or the members' backbones one after
  another; default as ``run_fused``: loop on the CPU, grouped on CUDA); no torch.compile variant.  ``scripts/bench_fused_gpu.sh`` runs them on a GPU.
* ``herding``: one batched feature pass (``lucir.learner.extract``) + ``lucir.memory.herding`` per
  class, as ``lucir.run`` does, vs the reference style: a fresh DataLoader (PIL eval transform,
  ``--workers`` workers, batch 128) per class, fp32 features, the same herding.
* ``eval``: an evaluation pass over the test images (``lucir.learner.extract`` at the eval batch, and
  fp32 at batch 100) vs a DataLoader with the PIL eval transform (batch 100, the reference's test batch).

The PIL training variants draw from one DataLoader epoch over the phase's training set kept running
across measurements (``PILEpochs``): worker start-up once per epoch, as the reference pays it.
The training sections also give the compute limit (FLOPs of one step by ``FlopCounterMode`` over the
fp32 peak, measured by ``measure_peak_gflops`` or ``--peak-gflops``) and, with ``--profile N``, the
top operators of each tensor variant; ``before: ...`` is fp32 NCHW with the backbone forwards of before
issue 8 (out-of-place ReLU/add), the baseline of the issue's target.
* peak RSS of this process and of its reaped children (DataLoader workers).

Timings use ``time.perf_counter`` with ``torch.cuda.synchronize`` around each measurement on CUDA.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- shapes
SHAPES = {
    # dataset: image shape, classes, train/test images per class (the real datasets' sizes)
    "cifar100": dict(shape=(3, 32, 32), classes=100, train_per_class=500, test_per_class=100),
    "digits": dict(shape=(1, 8, 8), classes=10, train_per_class=135, test_per_class=45),
}

#: every section in run order; "fused" on the command line means fused_base,fused_inc
ALL_SECTIONS = ("data", "train_base", "train_inc", "fused_base", "fused_inc", "herding", "eval")

QUICK = dict(steps=1, rounds=1, batch_size=16, eval_images=64, herd_classes=1, herd_per_class=48,
             data_batches=2, train_per_class=48, test_per_class=8)


def add_bench_args(p) -> None:
    p.add_argument("--dataset", choices=sorted(SHAPES), default="cifar100",
                   help="shapes, backbone and protocol: cifar100 (3x32x32, ResNet-32, B50 + 10/phase) "
                        "or digits (1x8x8, conv net, B4 + 2/phase)")
    p.add_argument("--steps", type=int, default=2, help="training steps per measurement (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                   help="training batch (default: the dataset's, 128 for cifar100)")
    p.add_argument("--eval-images", dest="eval_images", type=int, default=1000,
                   help="test images per evaluation measurement (default 1000; 0 = the whole test set, "
                        "10,000 for cifar100)")
    p.add_argument("--herd-classes", dest="herd_classes", type=int, default=2,
                   help="classes per herding measurement, each with all its training images "
                        "(default 2; 0 = the classes of one incremental phase, 10 for cifar100)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the PIL path (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants of the training steps")
    p.add_argument("--warmup", choices=["auto", "on", "off"], default="auto",
                   help="an untimed call of every training variant before the rounds (auto: on for CUDA or "
                        "--compile, off on the CPU, where the first call costs little extra)")
    p.add_argument("--max-seconds", dest="max_seconds", type=float, default=60.0,
                   help="a variant whose measurement takes longer than this is measured in the first round "
                        "only (bf16 without bf16 hardware can be 10x slower; default 60)")
    p.add_argument("--only", default="",
                   help="comma-separated substrings: run only the variants whose name contains one of them")
    p.add_argument("--sections", default="data,train_base,train_inc,herding,eval",
                   help="comma-separated subset of " + ",".join(ALL_SECTIONS) + " (fused = fused_base,fused_inc; "
                        "the fused sections are not in the default)")
    p.add_argument("--fuse-sizes", dest="fuse_sizes", default="1,2,4,8",
                   help="fused sections: comma-separated array sizes N (default 1,2,4,8)")
    p.add_argument("--fuse-bf16", dest="fuse_bf16", action="store_true",
                   help="fused sections: bf16 autocast for every variant (default fp32)")
    p.add_argument("--fuse-channels-last", dest="fuse_channels_last", choices=["default", "on", "off"],
                   default="default", help="fused sections: channels_last memory format for every variant "
                                           "(default: the Runtime default, on)")
    p.add_argument("--fuse-backend", dest="fuse_backend", choices=["auto", "grouped", "loop"], default="auto",
                   help="fused sections: how the fused model runs its backbones (lucir.fused.BACKENDS; default "
                        "auto = what run_fused uses: loop on the CPU, grouped on CUDA)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (1 step of batch 16, 1 round, few images): checks that everything runs")
    p.add_argument("--peak-gflops", dest="peak_gflops", type=float, default=0.0,
                   help="the device's fp32 peak in GFLOP/s for the compute limit (default 0: measured, the best "
                        "of a few large fp32 matrix products at --threads)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the rounds, profile one more measurement of every training variant and print its "
                        "top N operators by self time (default 0: off)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the results as JSON")


# ----------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], int]) -> tuple[int, float]:
    _sync(device)
    t0 = time.perf_counter()
    n = fn()
    _sync(device)
    return n, time.perf_counter() - t0


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _rss_mb() -> dict[str, float]:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self_peak_mb": self_kb / 1024.0, "children_peak_mb": child_kb / 1024.0}


def cpu_info() -> dict:
    info = {"model": platform.processor() or platform.machine(), "cores": os.cpu_count(), "flags": []}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1].split()
                info["flags"] = sorted(f for f in flags if f.startswith(("amx", "avx512")) or f == "avx2")
    except (OSError, subprocess.SubprocessError):
        pass
    info["bf16_hw"] = any(f in ("avx512_bf16", "amx_bf16") for f in info["flags"])
    from lucir.run import cpu_has_bf16

    info["onednn_bf16"] = cpu_has_bf16()
    return info


@dataclass
class Variant:
    name: str
    run: Callable[[], tuple[int, float]]  # one measurement: (images, seconds)
    group: str = ""  # "tensor" or "pil"
    close: Callable[[], None] | None = None  # called once the section is done (DataLoader workers)


@dataclass
class Section:
    name: str
    title: str
    variants: list[Variant]
    samples: dict[str, list[float]] = field(default_factory=dict)  # images/s per round
    images: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""
    gflop_per_image: float = 0.0  # training sections: FLOPs of one step / batch (FlopCounterMode)
    limit: float = 0.0  # compute limit, images/s: peak GFLOP/s / GFLOP per image
    profiles: dict[str, list] = field(default_factory=dict)  # --profile: variant -> top ops
    fuse_sizes: list[int] = field(default_factory=list)  # fused sections: the array sizes N

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of images/s(a) / images/s(b), a and b measured next to each other."""
        return statistics.median([x / y for x, y in zip(self.samples[a], self.samples[b])])


def run_section(sec: Section, rounds: int, warmup: bool, max_seconds: float, log) -> Section:
    """Warm-up (optional), then rounds of A B C ...; a variant slower than ``max_seconds`` drops out
    after the first round (its median then comes from fewer samples; ratios pair rounds)."""
    t0 = time.perf_counter()
    if warmup:
        for v in sec.variants:
            log(f"  {sec.name}: warm-up {v.name}")
            v.run()
    slow: set[str] = set()
    for r in range(rounds):
        for v in sec.variants:
            if v.name in slow:
                continue
            n, dt = v.run()
            sec.samples.setdefault(v.name, []).append(n / max(dt, 1e-9))
            sec.images[v.name] = n
            if dt > max_seconds:
                slow.add(v.name)
            log(f"  {sec.name}: round {r + 1}/{rounds} {v.name}: {n / max(dt, 1e-9):.1f} images/s ({dt:.1f} s)"
                + (" [slow: measured once]" if dt > max_seconds and r == 0 and rounds > 1 else ""))
    sec.seconds = time.perf_counter() - t0
    for v in sec.variants:
        if v.close is not None:
            v.close()
    return sec


def measure_peak_gflops(device: torch.device, seconds: float = 1.0) -> float:
    """Best fp32 GFLOP/s of large matrix products (n = 1024 on the CPU, 8192 on CUDA) within ``seconds``:
    what this device reaches on its best-tuned kernel at the current thread count (a lower bound of
    the hardware peak, and under load a lower bound of that)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync(device)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def step_gflop_per_image(run_one_step: Callable[[], int]) -> float:
    """FLOPs (``torch.utils.flop_counter.FlopCounterMode``: convolutions, their backward, matrix
    products) of one training step, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        images = run_one_step()
    return fc.get_total_flops() / max(images, 1) / 1e9


def profile_variant(v: Variant, device: torch.device, top: int, batch: int) -> list[dict]:
    """Top ``top`` operators by self time of one measurement of ``v`` (``torch.profiler``), per step."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        n, _ = v.run()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ev = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in ev) or 1.0
    steps = max(math.ceil(n / batch), 1)
    return [{"op": e.key, "self_ms_per_step": getattr(e, key) / 1e3 / steps, "share": getattr(e, key) / total,
             "calls_per_step": e.count / steps} for e in ev[:top]]


# ----------------------------------------------------------------------------- synthetic data
def synthetic_dataset(name: str, train_per_class: int, test_per_class: int, seed: int = 0):
    """uint8 images of the dataset's shape, balanced labels, the dataset's normalisation."""
    from lucir.data import CIFAR100_MEAN, CIFAR100_STD, TensorDataset

    s = SHAPES[name]
    c = s["classes"]
    g = torch.Generator().manual_seed(seed)
    ntr, nte = c * train_per_class, c * test_per_class
    train_x = torch.randint(0, 256, (ntr, *s["shape"]), generator=g, dtype=torch.uint8)
    test_x = torch.randint(0, 256, (nte, *s["shape"]), generator=g, dtype=torch.uint8)
    train_y = torch.arange(ntr) % c
    test_y = torch.arange(nte) % c
    if name == "cifar100":
        return TensorDataset(name, train_x, train_y, test_x, test_y, [f"c{i}" for i in range(c)],
                             CIFAR100_MEAN, CIFAR100_STD, pad=4, flip=True)
    return TensorDataset(name, train_x, train_y, test_x, test_y, [str(i) for i in range(c)],
                         (0.3,), (0.35,), pad=1, flip=False)


class _PILImages(torch.utils.data.Dataset):
    """The reference pipeline: a uint8 HWC array, ``Image.fromarray`` + torchvision transforms per sample."""

    def __init__(self, x_hwc: np.ndarray, y: torch.Tensor, transform):
        self.x = x_hwc
        self.y = y.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


class PILSource:
    """The reference's data pipeline (``class_incremental_cosine_cifar100.py``): a uint8 HWC array,
    ``Image.fromarray`` per sample, train transform ``RandomCrop(32, padding=4)``,
    ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` (eval: ``ToTensor``,
    ``Normalize``), ``DataLoader(batch_size, shuffle, num_workers)`` without pinned memory.
    ``loader`` builds one such DataLoader; ``PILEpochs`` keeps one epoch of it running across
    measurements, as the reference iterates one loader per epoch.
    """

    def __init__(self, data, device: torch.device, workers: int, channels_last: bool = False):
        from torchvision import transforms as T

        x = data.train_x.permute(0, 2, 3, 1).numpy()
        tx = data.test_x.permute(0, 2, 3, 1).numpy()
        if x.shape[-1] == 1:  # grey images: PIL mode "L" wants H x W
            x, tx = x[..., 0], tx[..., 0]
        x, tx = np.ascontiguousarray(x), np.ascontiguousarray(tx)
        size = data.train_x.shape[-1]
        aug = [T.RandomCrop(size, padding=data.pad)] + ([T.RandomHorizontalFlip()] if data.flip else [])
        norm = [T.ToTensor(), T.Normalize(data.mean, data.std)]
        self.train = _PILImages(x, data.train_y, T.Compose(aug + norm))
        self.train_eval = _PILImages(x, data.train_y, T.Compose(norm))
        self.test = _PILImages(tx, data.test_y, T.Compose(norm))
        self.device = device
        self.workers = workers
        self.channels_last = channels_last

    def loader(self, ds, indices, batch_size: int, shuffle: bool, seed: int = 0):
        from torch.utils.data import DataLoader, Subset

        return DataLoader(Subset(ds, [int(i) for i in indices]), batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.workers, generator=torch.Generator().manual_seed(seed))

    def _put(self, x, y):
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device)


class PILEpochs:
    """A ``Source`` look-alike for ``train_phase`` whose batches come from one running epoch of the
    reference DataLoader over ``pool`` (a whole phase's training set), kept alive across measurements:
    its workers start once per epoch (every ``len(pool) / batch`` batches, 196 for the CIFAR-100 base
    phase), not once per measurement, and between two batches they work concurrently with the
    training step, as in the reference.  ``train_batches`` yields ``ceil(len(indices) / batch_size)``
    batches (the ``indices`` themselves are not used; the epoch's shuffle decides) and counts images.
    """

    def __init__(self, pil: PILSource, pool: torch.Tensor, batch_size: int, seed: int = 0):
        self.pil, self.pool, self.batch_size, self.seed = pil, pool, batch_size, seed
        self.epochs = 0
        self.images = 0
        self._it = None

    def next_batch(self):
        while True:
            if self._it is None:
                self._it = iter(self.pil.loader(self.pil.train, self.pool, self.batch_size, True,
                                                self.seed + self.epochs))
                self.epochs += 1
            try:
                x, y = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self.images += len(y)
            return self.pil._put(x, y)

    def train_batches(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator, augment: bool = True):
        for _ in range(math.ceil(len(indices) / batch_size)):
            yield self.next_batch()

    def close(self) -> None:
        self._it = None  # shuts the workers down


# ----------------------------------------------------------------------------- the benchmark
@dataclass
class Setup:
    args: object
    device: torch.device
    dataset: str
    data: object
    batch_size: int
    steps: int
    base: int
    per_phase: int
    exemplars: int
    gen: torch.Generator


def _config(setup: Setup, bf16=False, channels_last=False, compile=False):
    from lucir.config import Config

    return Config.from_flat(dataset=setup.dataset, epochs=1, batch_size=setup.batch_size, bf16=bf16,
                            channels_last=channels_last, compile=compile, device=str(setup.device),
                            threads=int(setup.args.threads))


def _models(setup: Setup, cfg, phase: int):
    """(model, ref_model) built by ``lucir.run.build_model`` as in a real phase ``phase`` (0 or 1)."""
    from lucir.run import build_model

    in_ch = setup.data.image_shape()[0]
    model = build_model(cfg, in_ch, {"kind": "cosine", "old": 0, "new": setup.base}).to(setup.device)
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    ref = None
    if phase > 0:
        ref = copy.deepcopy(model).eval()
        for q in ref.parameters():
            q.requires_grad_(False)
        model.head.expand(setup.per_phase, None, torch.Generator().manual_seed(1))
        model.to(setup.device)
    return model, ref


def _pool(setup: Setup, phase: int) -> torch.Tensor:
    """Train positions of a phase: base classes, or new classes + ``exemplars`` per old class."""
    y = setup.data.train_y  # identity class order: labels are positions
    if phase == 0:
        return torch.nonzero(y < setup.base).flatten()
    new = torch.nonzero((y >= setup.base) & (y < setup.base + setup.per_phase)).flatten()
    old = [torch.nonzero(y == c).flatten()[:setup.exemplars] for c in range(setup.base)]
    return torch.cat([new, *old])


def _draw(pool: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    reps = math.ceil(n / len(pool))
    return torch.cat([pool[torch.randperm(len(pool), generator=gen)] for _ in range(reps)])[:n]


def _legacy_forward(model) -> None:
    """Bind the backbone forwards of before issue 8 to ``model``'s modules: out-of-place ReLU and
    residual add (``F.relu(x)``, ``out = out + shortcut``), the "before" variant of the training
    sections.  Same values as today's in-place forwards, only new activation buffers per op."""
    import types

    from lucir.models import BasicBlock, ConvNet, ResNetCifar

    def block(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return out if self.last else F.relu(out)

    def resnet(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def convnet(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = self.bn3(self.conv3(x))
        if self.last_relu:
            x = F.relu(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    for m in model.modules():
        for cls, fn in ((BasicBlock, block), (ResNetCifar, resnet), (ConvNet, convnet)):
            if type(m) is cls:
                m.forward = types.MethodType(fn, m)


BEFORE = "before: tensor fp32 NCHW, out-of-place ReLU/add"


def default_variant(setup: Setup) -> str:
    """The training variant that today's ``Runtime`` defaults run."""
    from lucir.config import Config

    rt = Config.from_flat(dataset=setup.dataset).runtime
    name = {(False, False): "tensor fp32", (True, False): "tensor bf16", (False, True): "tensor channels_last",
            (True, True): "tensor bf16+channels_last"}[(rt.bf16, rt.channels_last)]
    return name if not rt.compile else name.replace("channels_last", "cl") + "+compile"


def train_section(setup: Setup, phase: int, sources: dict) -> Section:
    from lucir import learner

    a = setup.args
    n_seen = setup.base + (setup.per_phase if phase else 0)
    ctx = learner.PhaseContext(phase, setup.base if phase else 0, n_seen,
                               _config(setup).lambda_at(1) if phase else 0.0)
    pool = _pool(setup, phase)
    n = setup.steps * setup.batch_size
    specs = [(BEFORE, False, False, False, "tensor"),
             ("tensor fp32", False, False, False, "tensor"), ("tensor bf16", True, False, False, "tensor"),
             ("tensor channels_last", False, True, False, "tensor"),
             ("tensor bf16+channels_last", True, True, False, "tensor")]
    if a.compile:
        specs += [("tensor fp32+compile", False, False, True, "tensor"),
                  ("tensor fp32+cl+compile", False, True, True, "tensor"),
                  ("tensor bf16+cl+compile", True, True, True, "tensor")]
    specs.append((f"PIL DataLoader fp32 ({a.workers} workers)", False, False, False, "pil"))
    variants = []
    for name, bf16, cl, comp, group in specs:
        cfg = _config(setup, bf16, cl, comp)
        model, ref = _models(setup, cfg, phase)
        if name == BEFORE:
            for m in (model, ref):
                if m is not None:
                    _legacy_forward(m)
        if group == "pil":
            src = PILEpochs(sources[("pil", False)], pool, setup.batch_size)
        else:
            src = sources[(group, cl)]

        def run(model=model, ref=ref, src=src, cfg=cfg):
            idx = _draw(pool, n, setup.gen)
            before = getattr(src, "images", 0)

            def go():
                learner.train_phase(model, ref, src, idx, cfg, ctx, setup.gen, setup.device)
                return getattr(src, "images", before + n) - before
            return _timed(setup.device, go)

        variants.append(Variant(name, run, group, close=getattr(src, "close", None)))
        if name == "tensor fp32":
            one = _draw(pool, setup.batch_size, setup.gen)
            gflop = step_gflop_per_image(lambda: (learner.train_phase(
                model, ref, src, one, cfg, ctx, setup.gen, setup.device), len(one))[1])
    title = ("base-phase training step (cosine head, %d classes, CE)" % setup.base if phase == 0 else
             "incremental training step (%d frozen old + %d new rows, frozen ref model, CE + LF + MR)"
             % (setup.base, setup.per_phase))
    return Section("train_base" if phase == 0 else "train_inc", title, variants, gflop_per_image=gflop,
                   note=f"{setup.steps} steps of batch {setup.batch_size} per measurement, data pipeline included; "
                        f"PIL: one DataLoader epoch over the phase's {len(pool)} images kept running across "
                        "measurements (workers start once per epoch, as in the reference)")


def data_section(setup: Setup, sources: dict, batches: int) -> Section:
    pool = _pool(setup, 0)
    n = batches * setup.batch_size
    epochs = PILEpochs(sources[("pil", False)], pool, setup.batch_size)

    def tensor():
        idx = _draw(pool, n, setup.gen)
        return _timed(setup.device, lambda: sum(len(y) for _, y in
                                                sources[("tensor", False)].train_batches(idx, setup.batch_size,
                                                                                         setup.gen)))

    def pil():
        # the batches its workers prefetched while the other variant ran are taken untimed, so the
        # timed ones are produced while we wait: the workers' own rate, start-up once per epoch
        for _ in range(2 * max(setup.args.workers, 1)):
            epochs.next_batch()
        k0 = epochs.images

        def go():
            for _ in range(batches):
                epochs.next_batch()
            return epochs.images - k0
        return _timed(setup.device, go)

    return Section("data", "augmented batches only (no model)",
                   [Variant("tensor ImageAugment", tensor, "tensor"),
                    Variant(f"PIL DataLoader ({setup.args.workers} workers)", pil, "pil", close=epochs.close)],
                   note=f"{batches} batches of {setup.batch_size} per measurement; PIL: one DataLoader epoch "
                        f"over {len(pool)} images kept running, its prefetched batches taken untimed")


def herding_section(setup: Setup, sources: dict, classes: list[int], per_class: int) -> Section:
    from lucir import learner
    from lucir.memory import herding

    y = setup.data.train_y
    cls_idx = {c: torch.nonzero(y == c).flatten()[:per_class] for c in classes}
    all_idx = torch.cat([cls_idx[c] for c in classes])
    n = len(all_idx)
    quota = setup.exemplars
    variants = []
    for name, bf16 in (("tensor fp32: one batched pass", False), ("tensor bf16: one batched pass", True)):
        cfg = _config(setup, bf16)
        model, _ = _models(setup, cfg, 0)

        def run(model=model, cfg=cfg):
            def go():
                f, _, yy = learner.extract(model, sources[("tensor", False)], "train", all_idx, cfg, setup.device)
                f = F.normalize(f, dim=1).cpu()
                yy = yy.cpu()
                for c in classes:
                    pos = torch.nonzero(yy == c).flatten()
                    herding(f[pos], quota)
                return n
            return _timed(setup.device, go)

        variants.append(Variant(name, run, "tensor"))
    cfg = _config(setup)
    model_ref, _ = _models(setup, cfg, 0)
    pil = sources[("pil", False)]

    def run_ref():
        def go():
            model_ref.eval()
            for c in classes:
                feats = []
                with torch.no_grad():
                    for x, _ in pil.loader(pil.train_eval, cls_idx[c], 128, shuffle=False):
                        feats.append(model_ref.backbone(x.to(setup.device)))
                f = F.normalize(torch.cat(feats), dim=1).cpu()
                herding(f, quota)
            return n
        return _timed(setup.device, go)

    variants.append(Variant(f"per-class DataLoader fp32 ({setup.args.workers} workers, batch 128)", run_ref, "pil"))
    return Section("herding", f"herding: feature pass + herding ({quota} exemplars) of {len(classes)} classes x "
                              f"{per_class} images", variants,
                   note="reference style: a fresh DataLoader with the PIL eval transform per class")


def eval_section(setup: Setup, sources: dict, n_images: int) -> Section:
    from lucir import learner

    idx = torch.arange(n_images)
    variants = []
    for name, bf16, cl in (("tensor fp32", False, False), ("tensor bf16", True, False),
                           ("tensor channels_last", False, True), ("tensor bf16+channels_last", True, True)):
        cfg = _config(setup, bf16, cl)
        model, _ = _models(setup, cfg, 0)
        src = sources[("tensor", cl)]

        def run(model=model, cfg=cfg, src=src):
            return _timed(setup.device, lambda: len(learner.extract(model, src, "test", idx, cfg, setup.device)[2]))

        variants.append(Variant(name, run, "tensor"))
    # the tensor path at the reference's test batch, to separate the batch size from the data path
    cfg100 = _config(setup).replace(eval_batch_size=100)
    model100, _ = _models(setup, cfg100, 0)
    variants.append(Variant("tensor fp32 (eval batch 100)", lambda: _timed(setup.device, lambda: len(
        learner.extract(model100, sources[("tensor", False)], "test", idx, cfg100, setup.device)[2])), "tensor"))
    # the default eval batch before issue 8
    cfg512 = _config(setup).replace(eval_batch_size=512)
    model512, _ = _models(setup, cfg512, 0)
    variants.append(Variant("tensor fp32 (eval batch 512)", lambda: _timed(setup.device, lambda: len(
        learner.extract(model512, sources[("tensor", False)], "test", idx, cfg512, setup.device)[2])), "tensor"))
    cfg = _config(setup)
    model_ref, _ = _models(setup, cfg, 0)
    pil = sources[("pil", False)]

    def run_ref():
        def go():
            model_ref.eval()
            k = 0
            with torch.no_grad():
                for x, yy in pil.loader(pil.test, idx, 100, shuffle=False):
                    model_ref(x.to(setup.device))
                    k += len(yy)
            return k
        return _timed(setup.device, go)

    variants.append(Variant(f"PIL DataLoader fp32 ({setup.args.workers} workers, batch 100)", run_ref, "pil"))
    return Section("eval", f"evaluation pass over {n_images} test images", variants,
                   note=f"tensor path: lucir.learner.extract with the eval batch "
                        f"({_config(setup).runtime.eval_batch_size} unless stated)")


# ----------------------------------------------------------------------------- fused trial arrays
FUSE_MEMBER_HP = ((5.0, 0.5, 2), (2.0, 0.3, 1), (10.0, 0.7, 3), (3.5, 0.4, 2))  # (lambda_base, margin, K)


def _fuse_configs(setup: Setup, n: int, bf16: bool, cl: bool) -> list:
    """The N members of one array: the bench's config (``_config``, preset lucir) with lambda_base, margin
    and K differing between members (cycled from ``FUSE_MEMBER_HP``, lambda_base + 1 per cycle)."""
    from lucir.config import Config

    out = []
    for i in range(n):
        lam, margin, k = FUSE_MEMBER_HP[i % len(FUSE_MEMBER_HP)]
        out.append(Config.from_flat(dataset=setup.dataset, preset="lucir", lambda_base=lam + i // len(FUSE_MEMBER_HP),
                                    margin=margin, K=k, epochs=1, batch_size=setup.batch_size, bf16=bf16,
                                    channels_last=cl, compile=False, device=str(setup.device),
                                    threads=int(setup.args.threads)))
    return out


def _fuse_nets(setup: Setup, configs: list) -> list:
    """One ``IncrementalNet`` per member (``lucir.run.build_model``, base-phase head, on the device)."""
    from lucir.run import build_model

    in_ch = setup.data.image_shape()[0]
    nets = []
    for c in configs:
        net = build_model(c, in_ch, {"kind": "cosine", "old": 0, "new": setup.base}).to(setup.device)
        if c.runtime.channels_last:
            net.to(memory_format=torch.channels_last)
        nets.append(net)
    return nets


def _frozen(model):
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model


def _new_rows(setup: Setup, n: int, dim: int) -> torch.Tensor:
    """N x n_new x D fresh new-class rows, a different draw per member (``CosineHead.expand`` style)."""
    from lucir.heads import _uniform_rows

    return torch.stack([_uniform_rows(setup.per_phase, dim, torch.Generator().manual_seed(1 + i)) for i in range(n)])


def _exemplar_pools(setup: Setup, n: int) -> torch.Tensor:
    """N x L train positions of phase 1 with different exemplars per member, position by position the same
    labels: the new classes' images, then for every old class member i's ``exemplars`` images (a
    different permutation of the class per member), as phase 2 of an array whose members herded apart."""
    y = setup.data.train_y
    new = torch.nonzero((y >= setup.base) & (y < setup.base + setup.per_phase)).flatten()
    rows = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        old = []
        for c in range(setup.base):
            pos = torch.nonzero(y == c).flatten()
            old.append(pos[torch.randperm(len(pos), generator=g)[:setup.exemplars]])
        rows.append(torch.cat([new, *old]))
    return torch.stack(rows)


def fused_section(setup: Setup, phase: int, sources: dict, sizes: list[int], bf16: bool, cl: bool,
                  backend: str = "auto") -> Section:
    """Fused trial arrays (``lucir.fused``) vs the same members trained one after another, per N in
    ``sizes``; every variant's images are steps x batch x N (per-trial images), so images/s is per trial.

    * ``fused N``: one ``train_fused_phase`` over a ``FusedNet`` of N members on one shared batch stream
      (1-D index); phase 1: the frozen model is one shared ``IncrementalNet`` (``_Broadcast``), as after a
      shared base phase.
    * ``fused N stacked`` (phase 1 only): each member its own exemplars (N x L index matrix: N images per
      position stacked on the channel axis) and its own frozen model (a fused ``FusedNet`` ref), as in
      phase >= 2 of an array; at phase-1 shapes, so that it differs from ``fused N`` only in the shared work.
    * ``N separate``: the N members' ``lucir.learner.train_phase`` one after another, each with its own
      model, frozen model and batches from ``Source.train_batches``, the same steps.
    """
    from lucir import learner
    from lucir.fused import FusedNet, _Broadcast, check_array, train_fused_phase

    if backend == "auto":
        backend = "loop" if setup.device.type == "cpu" else "grouped"
    src = sources[("tensor", cl)]
    pool = _pool(setup, phase)
    steps_images = setup.steps * setup.batch_size
    n_old = setup.base if phase else 0
    variants = []
    for n in sizes:
        configs = _fuse_configs(setup, n, bf16, cl)
        check_array(configs)
        nets = _fuse_nets(setup, configs)

        # fused N: shared batch stream, shared frozen model in phase 1
        ref = None
        if phase:
            ref = _frozen(_Broadcast(copy.deepcopy(nets[0])))
        model = FusedNet(nets, backend).to(setup.device)
        if cl:
            model.to(memory_format=torch.channels_last)
        if phase:
            model.head.expand(_new_rows(setup, n, model.feature_dim))
            model.to(setup.device)

        def run_fused(model=model, ref=ref, configs=configs, n=n):
            idx = _draw(pool, steps_images, setup.gen)

            def go():
                train_fused_phase(model, ref, src, idx, configs, phase, n_old, setup.gen, setup.device)
                return steps_images * n
            return _timed(setup.device, go)

        variants.append(Variant(f"fused {n}", run_fused, "fused"))

        if phase:  # fused N stacked: N x L index matrix, a FusedNet ref (phase >= 2 of an array)
            st_model = FusedNet(_fuse_nets(setup, configs), backend).to(setup.device)
            if cl:
                st_model.to(memory_format=torch.channels_last)
            st_ref = _frozen(copy.deepcopy(st_model))
            st_model.head.expand(_new_rows(setup, n, st_model.feature_dim))
            st_model.to(setup.device)
            rows = _exemplar_pools(setup, n)

            def run_stacked(model=st_model, ref=st_ref, configs=configs, n=n, rows=rows):
                pos = _draw(torch.arange(rows.shape[1]), steps_images, setup.gen)
                idx = rows[:, pos]

                def go():
                    train_fused_phase(model, ref, src, idx, configs, phase, n_old, setup.gen, setup.device)
                    return steps_images * n
                return _timed(setup.device, go)

            variants.append(Variant(f"fused {n} stacked", run_stacked, "fused"))

        # N separate: each member its own model, frozen model and batches
        members = []
        for i, (c, net) in enumerate(zip(configs, _fuse_nets(setup, configs))):
            r = None
            if phase:
                r = _frozen(copy.deepcopy(net))
                net.head.expand(setup.per_phase, None, torch.Generator().manual_seed(1 + i))
                net.to(setup.device)
            ctx = learner.PhaseContext(phase, n_old, setup.base + (setup.per_phase if phase else 0),
                                       c.lambda_at(1) if phase else 0.0)
            members.append((net, r, c, ctx))

        def run_separate(members=members, n=n):
            idxs = [_draw(pool, steps_images, setup.gen) for _ in members]

            def go():
                for (net, r, c, ctx), idx in zip(members, idxs):
                    learner.train_phase(net, r, src, idx, c, ctx, setup.gen, setup.device)
                return steps_images * n
            return _timed(setup.device, go)

        variants.append(Variant(f"{n} separate", run_separate, "separate"))
        del nets
    prec = ("bf16" if bf16 else "fp32") + (" channels_last" if cl else " NCHW") + f", {backend} backend"
    if phase == 0:
        title = f"fused trial arrays, base-phase step ({setup.base} classes, CE), images/s per trial, {prec}"
    else:
        title = (f"fused trial arrays, incremental step ({setup.base} frozen old + {setup.per_phase} new rows, "
                 f"CE + LF + MR, members differ in lambda_base/margin/K), images/s per trial, {prec}")
    note = (f"N in {','.join(map(str, sizes))}; {setup.steps} steps of batch {setup.batch_size} per member and "
            f"measurement, images counted x N; fused N: one train_fused_phase on a shared batch"
            + (" and one shared frozen model; stacked: N x L index matrix + FusedNet frozen model"
               if phase else "") + "; N separate: N train_phase calls one after another; no torch.compile variant")
    return Section("fused_base" if phase == 0 else "fused_inc", title, variants, note=note, fuse_sizes=list(sizes))


def fused_summary(s: Section) -> list[dict]:
    """Per N of a fused section: per-trial images/s of fused N / fused N stacked / N separate and the paired
    median ratios fused/separate, stacked/separate (grouped convolutions alone, nothing shared) and
    fused/stacked (what the shared batch and frozen model save)."""
    out = []
    for n in s.fuse_sizes:
        f, st, sep = f"fused {n}", f"fused {n} stacked", f"{n} separate"
        if f not in s.samples or sep not in s.samples:
            continue
        row = {"N": n, "fused_images_per_s": s.median(f), "separate_images_per_s": s.median(sep),
               "fused_vs_separate": s.ratio(f, sep)}
        if st in s.samples:
            row.update(stacked_images_per_s=s.median(st), stacked_vs_separate=s.ratio(st, sep),
                       fused_vs_stacked=s.ratio(f, st))
        out.append(row)
    return out


def fused_table(s: Section) -> str:
    from tabulate import tabulate

    rows = fused_summary(s)
    if not rows:
        return ""
    stacked = any("stacked_images_per_s" in r for r in rows)
    headers = ["N", "fused images/s per trial", "separate images/s per trial", "fused / separate"]
    if stacked:
        headers += ["stacked images/s per trial", "stacked / separate", "fused / stacked"]
    body = []
    for r in rows:
        line = [r["N"], f"{r['fused_images_per_s']:.1f}", f"{r['separate_images_per_s']:.1f}",
                f"{r['fused_vs_separate']:.2f}x"]
        if stacked:
            line += ([f"{r['stacked_images_per_s']:.1f}", f"{r['stacked_vs_separate']:.2f}x",
                      f"{r['fused_vs_stacked']:.2f}x"] if "stacked_images_per_s" in r else ["", "", ""])
        body.append(line)
    return tabulate(body, headers=headers, tablefmt="github")


# ----------------------------------------------------------------------------- report
def _ratios(secs: dict[str, Section], workers: int, default: str = "tensor channels_last") -> list[dict]:
    out = []

    def add(sec, a, b, label, target=None):
        if sec in secs and a in secs[sec].samples and b in secs[sec].samples:
            r = {"section": sec, "label": label, "a": a, "b": b, "ratio": secs[sec].ratio(a, b)}
            if target is not None:
                r["target"] = target
                r["met"] = r["ratio"] >= target
            out.append(r)

    pil_train = f"PIL DataLoader fp32 ({workers} workers)"
    add("data", "tensor ImageAugment", f"PIL DataLoader ({workers} workers)", "data only: tensor vs PIL DataLoader")
    for sec, what in (("train_inc", "incremental step"), ("train_base", "base step")):
        add(sec, default, BEFORE, f"{what}: default ({default[7:]}) vs before issue 8 (fp32 NCHW, out-of-place) "
                                  "(issue 8 target)", 2.0)
        add(sec, "tensor fp32", BEFORE, f"{what}: fp32 NCHW today (in-place ReLU/add) vs before issue 8")
        if sec == "train_inc":
            add(sec, "tensor bf16", pil_train, f"{what}: tensor bf16 vs fp32 PIL/DataLoader (issue target)", 2.0)
        add(sec, "tensor fp32", pil_train, f"{what}: tensor fp32 vs fp32 PIL/DataLoader")
        if sec in secs:
            best = max((v.name for v in secs[sec].variants if v.group == "tensor" and v.name in secs[sec].samples),
                       key=secs[sec].median, default=None)
            if best is not None:
                add(sec, best, pil_train,
                    f"{what}: best tensor variant ({best}) vs fp32 PIL/DataLoader")
        for v in ("tensor bf16", "tensor channels_last", "tensor bf16+channels_last", "tensor fp32+compile",
                  "tensor fp32+cl+compile", "tensor bf16+cl+compile"):
            add(sec, v, "tensor fp32", f"{what}: {v[7:]} vs fp32 (tensor path)")
        if sec in secs and secs[sec].limit > 0:
            for v in dict.fromkeys(x for x in (default, best) if x in secs[sec].samples):
                out.append({"section": sec, "label": f"{what}: {v} / compute limit ({secs[sec].limit:.0f} images/s)",
                            "a": v, "b": "compute limit", "ratio": secs[sec].median(v) / secs[sec].limit})
    for sec, what in (("fused_base", "fused base step"), ("fused_inc", "fused incremental step")):
        if sec not in secs:
            continue
        for n in secs[sec].fuse_sizes:
            f, st, sep = f"fused {n}", f"fused {n} stacked", f"{n} separate"
            add(sec, f, sep, f"{what}, N={n}: fused {n} / {n} separate (images/s per trial)")
            add(sec, st, sep, f"{what}, N={n}: fused {n} stacked / {n} separate (grouped convs, nothing shared)")
            add(sec, f, st, f"{what}, N={n}: fused {n} / fused {n} stacked (what the shared batch + frozen "
                            "model save)")
    herd_ref = f"per-class DataLoader fp32 ({workers} workers, batch 128)"
    add("herding", "tensor fp32: one batched pass", herd_ref, "herding: one batched pass fp32 vs per-class loaders")
    add("herding", "tensor bf16: one batched pass", "tensor fp32: one batched pass", "herding: bf16 vs fp32")
    ev_ref = f"PIL DataLoader fp32 ({workers} workers, batch 100)"
    add("eval", "tensor fp32", ev_ref, "evaluation: tensor fp32 vs PIL DataLoader")
    add("eval", "tensor fp32 (eval batch 100)", ev_ref, "evaluation: tensor fp32 at batch 100 vs PIL DataLoader (batch 100)")
    for other in (100, 512):
        add("eval", "tensor fp32", f"tensor fp32 (eval batch {other})",
            f"evaluation: default eval batch vs {other} (tensor fp32)")
    for v in ("tensor bf16", "tensor channels_last", "tensor bf16+channels_last"):
        add("eval", v, "tensor fp32", f"evaluation: {v[7:]} vs fp32")
    if "train_base" in secs and "train_inc" in secs:
        b, i = secs["train_base"], secs["train_inc"]
        if "tensor fp32" in b.samples and "tensor fp32" in i.samples:
            out.append({"section": "train", "label": "incremental / base step images/s (tensor fp32)",
                        "a": "train_inc tensor fp32", "b": "train_base tensor fp32",
                        "ratio": i.median("tensor fp32") / b.median("tensor fp32")})
    return out


def format_report(meta: dict, secs: dict[str, Section], ratios: list[dict], rss: dict) -> str:
    from tabulate import tabulate

    lines = [f"lucir bench: {meta['dataset']} shapes {meta['image_shape']}, {meta['backbone']}, batch "
             f"{meta['batch_size']}, device {meta['device']}, {meta['threads']} threads, "
             f"{meta['rounds']} rounds, torch {meta['torch']}",
             f"CPU: {meta['cpu']['model']} ({meta['cpu']['cores']} logical cores; flags: "
             f"{' '.join(meta['cpu']['flags']) or 'none of avx2/avx512/amx'}; bf16 hardware: "
             f"{'yes' if meta['cpu']['bf16_hw'] else 'no'}; oneDNN bf16: {meta['cpu']['onednn_bf16']}); "
             f"OMP_WAIT_POLICY={meta['omp_wait_policy']}; load average {meta['loadavg_start']} at the start, "
             f"{meta['loadavg_end']} at the end",
             "; ".join([f"Compute limit: fp32 peak {meta['peak_gflops']:.0f} GFLOP/s ({meta['peak_source']})"]
                       + [f"{k}: {v['gflop_per_image']:.3f} GFLOP/image -> {v['limit']:.0f} images/s"
                          for k, v in meta["compute_limit"].items()]
                       + [f"the default variant is {meta['default_variant']!r}"])]
    if meta.get("fuse_sections"):
        lines.append(f"Fused sections: N in {','.join(map(str, meta['fuse_sizes']))}, "
                     f"{'bf16' if meta['fuse_bf16'] else 'fp32'}, "
                     f"{'channels_last' if meta['fuse_channels_last'] else 'NCHW'}, backend "
                     f"{meta.get('fuse_backend', 'grouped')}; images/s per trial = "
                     "steps x batch x N / seconds")
    for s in secs.values():
        lines.append("")
        lines.append(section_table(s))
    lines.append("")
    lines.append("Ratios (median over rounds of paired images/s ratios):")
    rows = [[r["label"], f"{r['ratio']:.2f}x" + ("" if "target" not in r else
                                                  f"  (target >= {r['target']:.0f}x: "
                                                  f"{'met' if r['met'] else 'NOT met'})")] for r in ratios]
    lines.append(tabulate(rows, headers=["ratio", "value"], tablefmt="github"))
    lines.append("")
    lines.append(f"Peak RSS: this process {rss['self_peak_mb']:.0f} MB, reaped children (DataLoader workers) "
                 f"{rss['children_peak_mb']:.0f} MB" + (f"; CUDA max allocated {rss['cuda_max_allocated_mb']:.0f} MB"
                                                         if "cuda_max_allocated_mb" in rss else ""))
    lines.append(f"Wall time: {meta['wall_seconds']:.0f} s")
    return "\n".join(lines)


def section_table(s: Section) -> str:
    from tabulate import tabulate

    rows = []
    for v in s.variants:
        xs = s.samples.get(v.name, [])
        if not xs:
            continue
        rows.append([v.name, f"{statistics.median(xs):.1f}", f"{min(xs):.1f}", f"{max(xs):.1f}", len(xs),
                     s.images[v.name]] + ([f"{100 * statistics.median(xs) / s.limit:.0f}%"] if s.limit else []))
    head = f"[{s.name}] {s.title}  ({s.note}; {s.seconds:.0f} s)"
    if s.limit:
        head += (f"\ncompute limit {s.limit:.0f} images/s ({s.gflop_per_image:.3f} GFLOP per image and step, "
                 "FlopCounterMode)")
    headers = ["variant", "images/s (median)", "min", "max", "rounds", "images/meas."] + (
        ["of limit"] if s.limit else [])
    out = head + "\n" + tabulate(rows, headers=headers, tablefmt="github")
    if s.fuse_sizes and fused_table(s):
        out += "\n\nper trial, by array size N (paired median ratios):\n" + fused_table(s)
    for name, ops in s.profiles.items():
        out += f"\n\nprofile of {name} (self time per step, top {len(ops)}):\n" + tabulate(
            [[o["op"], f"{o['self_ms_per_step']:.1f}", f"{100 * o['share']:.1f}%", f"{o['calls_per_step']:.0f}"]
             for o in ops], headers=["op", "self ms/step", "share", "calls/step"], tablefmt="github")
    return out


def cmd_bench(args) -> int:
    from lucir.config import DATASET_DEFAULTS, Config
    from lucir.data import Source
    from lucir.run import resolve_device

    t_start = time.perf_counter()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    if "fused" in wanted:
        wanted += ["fused_base", "fused_inc"]
    unknown = sorted(set(wanted) - set(ALL_SECTIONS) - {"fused"})
    if unknown:
        raise SystemExit(f"lucir bench: --sections {unknown} unknown: allowed {','.join(ALL_SECTIONS)},fused")
    try:
        fuse_sizes = [int(x) for x in args.fuse_sizes.split(",") if x.strip()]
    except ValueError:
        fuse_sizes = []
    if not fuse_sizes or min(fuse_sizes) < 1:
        raise SystemExit(f"lucir bench: --fuse-sizes {args.fuse_sizes!r}: comma-separated integers >= 1")
    fuse_sizes = list(dict.fromkeys(fuse_sizes))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ds = args.dataset
    shp = SHAPES[ds]
    q = QUICK if args.quick else {}
    steps = q.get("steps", args.steps)
    rounds = q.get("rounds", args.rounds)
    batch = args.batch_size or q.get("batch_size") or DATASET_DEFAULTS[ds]["batch_size"]
    train_pc = q.get("train_per_class", shp["train_per_class"])
    test_pc = q.get("test_per_class", shp["test_per_class"])
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"lucir bench: building synthetic {ds} data ({shp['classes']} classes x {train_pc} train / {test_pc} test)")
    data = synthetic_dataset(ds, train_pc, test_pc)
    load_start = _loadavg()
    peak = args.peak_gflops or measure_peak_gflops(device, 0.2 if args.quick else 1.0)
    log(f"lucir bench: fp32 peak {peak:.0f} GFLOP/s ({'stated' if args.peak_gflops else 'measured'})")
    cfg0 = Config.from_flat(dataset=ds)
    p = cfg0.protocol
    setup = Setup(args, device, ds, data, batch, steps, p.base_classes, p.classes_per_phase,
                  p.exemplars_per_class, torch.Generator().manual_seed(0))
    order = np.arange(shp["classes"])
    sources = {("tensor", False): Source(data, order, device, False),
               ("tensor", True): Source(data, order, device, True)}
    sources[("pil", False)] = PILSource(data, device, args.workers)  # the reference path runs NCHW fp32

    only = [o.strip() for o in args.only.split(",") if o.strip()]
    n_test = len(data.test_y)
    eval_n = q.get("eval_images") or (min(args.eval_images, n_test) if args.eval_images else n_test)
    herd_k = q.get("herd_classes") or (args.herd_classes or p.classes_per_phase)
    herd_classes = list(range(p.base_classes, p.base_classes + min(herd_k, shp["classes"] - p.base_classes)))
    herd_pc = q.get("herd_per_class", train_pc)
    data_batches = q.get("data_batches", max(4, steps))
    fuse_cl = {"on": True, "off": False}.get(args.fuse_channels_last, cfg0.runtime.channels_last)
    builders = {
        "data": lambda: data_section(setup, sources, data_batches),
        "train_base": lambda: train_section(setup, 0, sources),
        "train_inc": lambda: train_section(setup, 1, sources),
        "herding": lambda: herding_section(setup, sources, herd_classes, herd_pc),
        "eval": lambda: eval_section(setup, sources, eval_n),
        "fused_base": lambda: fused_section(setup, 0, sources, fuse_sizes, args.fuse_bf16, fuse_cl, args.fuse_backend),
        "fused_inc": lambda: fused_section(setup, 1, sources, fuse_sizes, args.fuse_bf16, fuse_cl, args.fuse_backend),
    }
    secs: dict[str, Section] = {}
    for name in ALL_SECTIONS:
        if name not in wanted:
            continue
        log(f"lucir bench: section {name}")
        sec = builders[name]()
        if sec.gflop_per_image:
            sec.limit = peak / sec.gflop_per_image
        if only:
            sec.variants = [v for v in sec.variants if any(o in v.name for o in only)]
        warm = (args.warmup == "on" or (args.warmup == "auto" and (device.type == "cuda" or args.compile)))
        secs[name] = run_section(sec, rounds, warm and name.startswith(("train", "fused")), args.max_seconds, log)
        if args.profile > 0 and name.startswith("train"):
            for v in sec.variants:
                if v.group == "tensor":
                    log(f"  {name}: profile {v.name}")
                    sec.profiles[v.name] = profile_variant(v, device, args.profile, batch)
        print(section_table(secs[name]), flush=True)
        print(flush=True)
    if not args.peak_gflops:  # under load a single measurement is low: keep the better of start and end
        peak_end = measure_peak_gflops(device, 0.2 if args.quick else 1.0)
        if peak_end > peak:
            peak = peak_end
            for s in secs.values():
                if s.gflop_per_image:
                    s.limit = peak / s.gflop_per_image
    rss = _rss_mb()
    if device.type == "cuda":
        rss["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    default = default_variant(setup)
    ratios = _ratios(secs, args.workers, default)
    meta = {
        "command": "lucir " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("lucir") else None,
        "argv": {k: v for k, v in vars(args).items() if k != "func"},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": ds, "image_shape": list(shp["shape"]), "backbone": cfg0.resolved_backbone(),
        "batch_size": batch, "steps": steps, "rounds": rounds, "workers": args.workers,
        "eval_images": eval_n, "herd_classes": len(herd_classes), "herd_images_per_class": herd_pc,
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "cpu": cpu_info(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "quick": bool(args.quick), "wall_seconds": time.perf_counter() - t_start,
        "loadavg_start": load_start, "loadavg_end": _loadavg(),
        "peak_gflops": peak, "peak_source": "stated (--peak-gflops)" if args.peak_gflops else
        "measured: best fp32 matrix product at these threads, the better of the start and the end",
        "compute_limit": {k: {"gflop_per_image": s.gflop_per_image, "limit": s.limit}
                          for k, s in secs.items() if s.limit},
        "default_variant": default,
        "fuse_sections": [k for k in secs if k.startswith("fused")],
        "fuse_sizes": fuse_sizes, "fuse_bf16": bool(args.fuse_bf16), "fuse_channels_last": fuse_cl,
        "fuse_backend": args.fuse_backend if args.fuse_backend != "auto" else
        ("loop" if device.type == "cpu" else "grouped"),
    }
    print("Summary")
    print(format_report(meta, {}, ratios, rss))
    if args.json_path:
        out = {"meta": meta, "rss": rss, "ratios": ratios,
               "sections": {k: {"title": s.title, "note": s.note, "seconds": s.seconds,
                                "gflop_per_image": s.gflop_per_image, "limit_images_per_s": s.limit,
                                "profiles": s.profiles,
                                **({"fuse_sizes": s.fuse_sizes, "per_n": fused_summary(s)} if s.fuse_sizes else {}),
                                "variants": [{"name": v.name, "group": v.group,
                                              "images_per_s": s.median(v.name),
                                              "samples": s.samples[v.name], "images": s.images[v.name]}
                                             for v in s.variants if v.name in s.samples]}
                            for k, s in secs.items()}}
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
        print(f"results written to {path}")
    return 0
