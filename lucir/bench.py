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
* ``herding``: one batched feature pass (``lucir.learner.extract``) + ``lucir.memory.herding`` per
  class, as ``lucir.run`` does, vs the reference style: a fresh DataLoader (PIL eval transform,
  ``--workers`` workers, batch 128) per class, fp32 features, the same herding.
* ``eval``: an evaluation pass over the test images (``lucir.learner.extract`` at the eval batch, and
  fp32 at batch 100) vs a DataLoader with the PIL eval transform (batch 100, the reference's test batch).

The PIL training variant builds a fresh DataLoader per measurement (the reference builds one per
epoch), so each measurement pays one worker start-up; use enough ``--steps`` to make it small.
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
                   help="comma-separated subset of data,train_base,train_inc,herding,eval")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (1 step of batch 16, 1 round, few images): checks that everything runs")
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


@dataclass
class Section:
    name: str
    title: str
    variants: list[Variant]
    samples: dict[str, list[float]] = field(default_factory=dict)  # images/s per round
    images: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

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
    return sec


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
    """A ``Source`` look-alike whose ``train_batches`` comes from a DataLoader of PIL transforms.

    A fresh DataLoader (and its workers) per call, as the reference code builds one per epoch.
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
                          num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(seed))

    def _put(self, x, y):
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def train_batches(self, indices: torch.Tensor, batch_size: int, gen: torch.Generator, augment: bool = True):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        for x, y in self.loader(self.train if augment else self.train_eval, indices, batch_size, True, seed):
            yield self._put(x, y)


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


def train_section(setup: Setup, phase: int, sources: dict) -> Section:
    from lucir import learner

    a = setup.args
    n_seen = setup.base + (setup.per_phase if phase else 0)
    ctx = learner.PhaseContext(phase, setup.base if phase else 0, n_seen,
                               _config(setup).lambda_at(1) if phase else 0.0)
    pool = _pool(setup, phase)
    n = setup.steps * setup.batch_size
    specs = [("tensor fp32", False, False, False, "tensor"), ("tensor bf16", True, False, False, "tensor"),
             ("tensor channels_last", False, True, False, "tensor"),
             ("tensor bf16+channels_last", True, True, False, "tensor")]
    if a.compile:
        specs += [("tensor fp32+compile", False, False, True, "tensor"),
                  ("tensor bf16+compile", True, False, True, "tensor")]
    specs.append((f"PIL DataLoader fp32 ({a.workers} workers)", False, False, False, "pil"))
    variants = []
    for name, bf16, cl, comp, group in specs:
        cfg = _config(setup, bf16, cl, comp)
        model, ref = _models(setup, cfg, phase)
        src = sources[(group, cl)]

        def run(model=model, ref=ref, src=src, cfg=cfg):
            idx = _draw(pool, n, setup.gen)
            return _timed(setup.device, lambda: (learner.train_phase(model, ref, src, idx, cfg, ctx, setup.gen,
                                                                     setup.device), n)[1])

        variants.append(Variant(name, run, group))
    title = ("base-phase training step (cosine head, %d classes, CE)" % setup.base if phase == 0 else
             "incremental training step (%d frozen old + %d new rows, frozen ref model, CE + LF + MR)"
             % (setup.base, setup.per_phase))
    return Section("train_base" if phase == 0 else "train_inc", title, variants,
                   note=f"{setup.steps} steps of batch {setup.batch_size} per measurement, data pipeline included")


def data_section(setup: Setup, sources: dict, batches: int) -> Section:
    pool = _pool(setup, 0)
    n = batches * setup.batch_size

    def tensor():
        idx = _draw(pool, n, setup.gen)
        return _timed(setup.device, lambda: sum(len(y) for _, y in
                                                sources[("tensor", False)].train_batches(idx, setup.batch_size,
                                                                                         setup.gen)))

    def pil():
        idx = _draw(pool, n, setup.gen)
        return _timed(setup.device, lambda: sum(len(y) for _, y in
                                                sources[("pil", False)].train_batches(idx, setup.batch_size,
                                                                                      setup.gen)))

    return Section("data", "augmented batches only (no model)",
                   [Variant("tensor ImageAugment", tensor, "tensor"),
                    Variant(f"PIL DataLoader ({setup.args.workers} workers)", pil, "pil")],
                   note=f"{batches} batches of {setup.batch_size} per measurement; the PIL path includes "
                        "its worker start-up, once per epoch in the reference code")


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
                   note="tensor path: lucir.learner.extract with the eval batch (512 unless stated)")


# ----------------------------------------------------------------------------- report
def _ratios(secs: dict[str, Section], workers: int) -> list[dict]:
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
                  "tensor bf16+compile"):
            add(sec, v, "tensor fp32", f"{what}: {v[7:]} vs fp32 (tensor path)")
    herd_ref = f"per-class DataLoader fp32 ({workers} workers, batch 128)"
    add("herding", "tensor fp32: one batched pass", herd_ref, "herding: one batched pass fp32 vs per-class loaders")
    add("herding", "tensor bf16: one batched pass", "tensor fp32: one batched pass", "herding: bf16 vs fp32")
    ev_ref = f"PIL DataLoader fp32 ({workers} workers, batch 100)"
    add("eval", "tensor fp32", ev_ref, "evaluation: tensor fp32 vs PIL DataLoader")
    add("eval", "tensor fp32 (eval batch 100)", ev_ref, "evaluation: tensor fp32 at batch 100 vs PIL DataLoader (batch 100)")
    add("eval", "tensor fp32", "tensor fp32 (eval batch 100)", "evaluation: eval batch 512 vs 100 (tensor fp32)")
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
             f"OMP_WAIT_POLICY={meta['omp_wait_policy']}"]
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
                     s.images[v.name]])
    head = f"[{s.name}] {s.title}  ({s.note}; {s.seconds:.0f} s)"
    return head + "\n" + tabulate(rows, headers=["variant", "images/s (median)", "min", "max", "rounds", "images/meas."],
                                  tablefmt="github")


def cmd_bench(args) -> int:
    from lucir.config import DATASET_DEFAULTS, Config
    from lucir.data import Source
    from lucir.run import resolve_device

    t_start = time.perf_counter()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {"data", "train_base", "train_inc", "herding", "eval"})
    if unknown:
        raise SystemExit(f"lucir bench: --sections {unknown} unknown: allowed data,train_base,train_inc,herding,eval")
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
    builders = {
        "data": lambda: data_section(setup, sources, data_batches),
        "train_base": lambda: train_section(setup, 0, sources),
        "train_inc": lambda: train_section(setup, 1, sources),
        "herding": lambda: herding_section(setup, sources, herd_classes, herd_pc),
        "eval": lambda: eval_section(setup, sources, eval_n),
    }
    secs: dict[str, Section] = {}
    for name in ("data", "train_base", "train_inc", "herding", "eval"):
        if name not in wanted:
            continue
        log(f"lucir bench: section {name}")
        sec = builders[name]()
        if only:
            sec.variants = [v for v in sec.variants if any(o in v.name for o in only)]
        warm = (args.warmup == "on" or (args.warmup == "auto" and (device.type == "cuda" or args.compile)))
        secs[name] = run_section(sec, rounds, warm and name.startswith("train"), args.max_seconds, log)
        print(section_table(secs[name]), flush=True)
        print(flush=True)
    rss = _rss_mb()
    if device.type == "cuda":
        rss["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    ratios = _ratios(secs, args.workers)
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
    }
    print("Summary")
    print(format_report(meta, {}, ratios, rss))
    if args.json_path:
        out = {"meta": meta, "rss": rss, "ratios": ratios,
               "sections": {k: {"title": s.title, "note": s.note, "seconds": s.seconds,
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
