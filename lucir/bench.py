"""``lucir bench``: images/s of the trainer's hot paths on synthetic data of the real shapes (DESIGN §5).

Airbench style: sections (data, train_base, train_inc, herding, eval, fused) x variants (precision fp32 /
tf32 (CUDA) / bf16 autocast x layout nchw / cl = channels_last x mode eager / compile (``--compile``,
training only)).  A variant is a closure that runs the trainer's own code (``lucir.learner.train_phase``,
``extract``, ``lucir.memory.herding``; an array of N trials through the same ``train_phase``) and returns its images.
``timed``, the one timing helper, calls each variant once untimed (a compiled variant's compile, reported
as ``compile_s``), then in interleaved rounds with a CUDA synchronize around each call; the median counts.
Per variant: images/s, share of the compute limit (FlopCounterMode FLOPs per image x images/s / peak:
``--peak-gflops``, a known card's data sheet, or a measured fp32 matrix product on the CPU), peak memory
(CUDA ``max_memory_allocated``, else peak RSS).  ``--json`` writes it atomically with the machine.
History (the reference PIL DataLoader path, the pre-issue-8 forwards, ...) is in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import itertools
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lucir.config import ConfigError

SHAPES = {  # image shape, classes, train/test images per class of the real datasets
    "cifar100": dict(shape=(3, 32, 32), classes=100, train_per_class=500, test_per_class=100),
    "digits": dict(shape=(1, 8, 8), classes=10, train_per_class=135, test_per_class=45),
}
SECTIONS = ("data", "train_base", "train_inc", "herding", "eval", "fused")
DEFAULT_SECTIONS = "data,train_base,train_inc,herding,eval"
PRECISIONS, LAYOUTS = ("fp32", "tf32", "bf16"), ("nchw", "cl")
QUICK = dict(steps=1, rounds=1, batch_size=16, train_per_class=24, test_per_class=8, eval_images=64,
             herd_classes=1)
#: dense peak TFLOP/s (fp32, tf32, bf16) from NVIDIA's data sheets (SXM unless named; sparsity halved away),
#: matched as a substring of the device name, first match wins
CUDA_PEAK_TFLOPS = {"H100 PCIe": (51.2, 378.0, 756.0), "H100 NVL": (60.0, 417.5, 835.5),
                    "H200 NVL": (60.0, 417.5, 835.5), "H100": (66.9, 494.7, 989.4), "H200": (66.9, 494.7, 989.4),
                    "A100": (19.5, 156.0, 312.0)}
FUSE_MEMBER_HP = ((5.0, 0.5, 2), (2.0, 0.3, 1), (10.0, 0.7, 3), (3.5, 0.4, 2))  # lambda_base, margin, K


def add_bench_args(p) -> None:
    p.add_argument("--dataset", choices=sorted(SHAPES), default="cifar100",
                   help="shapes and protocol: cifar100 (ResNet-32, B50 + 10/phase) or digits (B4 + 2/phase)")
    p.add_argument("--steps", type=int, default=4, help="training steps per measurement (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="training batch (default: the dataset's, 128)")
    p.add_argument("--eval-images", dest="eval_images", type=int, default=1000,
                   help="test images per eval measurement (default 1000; 0 = the whole synthetic test set)")
    p.add_argument("--herd-classes", dest="herd_classes", type=int, default=2,
                   help="classes per herding measurement, all their training images (default 2; 0 = one phase's)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; 0 = torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants of the training steps")
    p.add_argument("--sections", default=DEFAULT_SECTIONS,
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default {DEFAULT_SECTIONS})")
    p.add_argument("--only", default="", help="comma-separated substrings: run only the variants whose name "
                                              "contains one (e.g. 'bf16 cl', 'compile'); not the fused section")
    p.add_argument("--fuse-sizes", dest="fuse_sizes", default="1,2,4,8", help="fused: array sizes (default 1,2,4,8)")
    p.add_argument("--fuse-variant", dest="fuse_variant", default="fp32 cl", help="fused: default 'fp32 cl'")
    p.add_argument("--quick", action="store_true", help="tiny sizes (1 step of batch 16, 1 round)")
    p.add_argument("--peak-gflops", dest="peak_gflops", type=float, default=0.0,
                   help="peak GFLOP/s (default: a known CUDA card's data sheet; CPU: a measured matrix product)")
    p.add_argument("--barrier", default="", metavar="DIR:N",
                   help="after the warm-up, wait until N processes reached DIR (benches side by side on one GPU)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the results as JSON (atomically)")


# ----------------------------------------------------------------------------- timing
def _call(fn: Callable, device: torch.device) -> tuple:
    """``fn()`` with a CUDA synchronize before and after: its result and seconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    sync(device)
    t0 = time.perf_counter()
    n = fn()
    sync(device)
    return n, time.perf_counter() - t0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _wait_barrier(spec: str, timeout: float = 300.0) -> None:
    folder, n = spec.rsplit(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{os.getpid()}.ready").touch()
    t_end = time.time() + timeout
    while len(list(Path(folder).glob("*.ready"))) < int(n) and time.time() < t_end:
        time.sleep(0.05)


def timed(variants: dict[str, Callable[[], int]], device: torch.device, rounds: int, log=print,
          barrier: str = "") -> dict[str, dict]:
    """The one timing helper.  Each variant is called once untimed (its seconds and peak memory kept),
    then ``rounds`` interleaved rounds; each call is synchronised before and after and must return the
    images it processed.  Returns per variant the images/s samples and their median."""
    out = {}
    for name, fn in variants.items():
        _reset_peak(device)
        out[name] = {"first_call_s": _call(fn, device)[1], "peak_mem_mb": peak_memory_mb(device), "samples": []}
    if barrier:
        _wait_barrier(barrier)
    for r in range(rounds):
        for name, fn in variants.items():
            n, dt = _call(fn, device)
            out[name]["samples"].append(n / max(dt, 1e-9))
            out[name]["images"] = n
            log(f"  round {r + 1}/{rounds} {name}: {n / max(dt, 1e-9):.1f} images/s ({dt:.2f} s)")
    for v in out.values():
        v["images_per_s"] = statistics.median(v["samples"])
        v["measure_s"] = v["images"] / v["images_per_s"]
    return out


@contextlib.contextmanager
def precision(prec: str, device: torch.device):
    """TF32 on for ``tf32`` and off otherwise (CUDA; cuDNN's default is on, so fp32 here is true fp32)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = prec == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def gflop_per_image(fn: Callable[[], int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        n = fn()
    return fc.get_total_flops() / max(n, 1) / 1e9


# ----------------------------------------------------------------------------- setup
class Bench:
    """What every section needs: the arguments, device, synthetic data, sizes, the protocol's numbers (base
    classes, classes per incremental phase, exemplars per old class) and the fused section's arrays."""

    def __init__(self, args, device: torch.device, fuse_sizes: list[int], fuse_variant: list[str]):
        from lucir.config import Config
        from lucir.data import CIFAR100_MEAN, CIFAR100_STD, Source, TensorDataset

        q, shp = (QUICK if args.quick else {}), SHAPES[args.dataset]
        args.herd_classes = q.get("herd_classes", args.herd_classes)
        self.args, self.device, self.cfg0 = args, device, Config.from_flat(dataset=args.dataset)
        self.fuse_sizes, (self.fuse_prec, self.fuse_lay) = fuse_sizes, fuse_variant
        # synthetic data: uint8 images of the dataset's shape, balanced labels, its normalisation and augmentation
        c, g = shp["classes"], torch.Generator().manual_seed(0)
        ntr = c * q.get("train_per_class", shp["train_per_class"])
        nte = c * q.get("test_per_class", shp["test_per_class"])
        x = torch.randint(0, 256, (ntr + nte, *shp["shape"]), generator=g, dtype=torch.uint8)
        y = torch.arange(ntr + nte) % c
        norm = (CIFAR100_MEAN, CIFAR100_STD, 4, True) if args.dataset == "cifar100" else ((0.3,), (0.35,), 1, False)
        self.data = TensorDataset(args.dataset, x[:ntr], y[:ntr], x[ntr:], y[ntr:], [f"c{i}" for i in range(c)], *norm)
        self.batch = args.batch_size or q.get("batch_size") or self.cfg0.schedule.batch_size
        self.steps, self.rounds = q.get("steps", args.steps), q.get("rounds", args.rounds)
        p = self.cfg0.protocol
        self.base, self.per_phase, self.exemplars = p.base_classes, p.classes_per_phase, p.exemplars_per_class
        self.sources = {lay: Source(self.data, np.arange(c), device, lay == "cl") for lay in LAYOUTS}
        self.gen = torch.Generator().manual_seed(0)

    def grid(self, make: Callable, training: bool) -> dict[str, Callable[[], int]]:
        """{variant name: make(precision, layout, mode)} over the precisions, layouts and modes to run."""
        precs = PRECISIONS if self.device.type == "cuda" else ("fp32", "bf16")
        modes = ("eager", "compile") if training and self.args.compile else ("eager",)
        return {f"{p} {lay}" + (" compile" if m == "compile" else ""): make(p, lay, m)
                for m in modes for p in precs for lay in LAYOUTS}

    def config(self, prec="fp32", layout="nchw", mode="eager", **kw):
        from lucir.config import Config

        return Config.from_flat(dataset=self.args.dataset, epochs=1, batch_size=self.batch, bf16=prec == "bf16",
                                channels_last=layout == "cl", compile=mode == "compile", device=str(self.device),
                                threads=int(self.args.threads), **kw)

    def job(self, cfg, phase: int, seed: int = 1) -> tuple:
        """(model, frozen model or None, ``cfg``, ``lucir.learner.PhaseContext``) as ``lucir.run`` builds them
        for phase 0 or 1."""
        from lucir.learner import PhaseContext
        from lucir.run import build_model

        fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
        net = build_model(cfg, self.data.image_shape()[0], {"kind": "cosine", "old": 0, "new": self.base})
        ref, ctx = None, PhaseContext(0, 0, self.base, 0.0)
        if phase:
            ref = copy.deepcopy(net).eval().requires_grad_(False).to(self.device, memory_format=fmt)
            net.head.expand(self.per_phase, None, torch.Generator().manual_seed(seed))
            ctx = PhaseContext(1, self.base, self.base + self.per_phase, cfg.lambda_at(1))
        return net.to(self.device, memory_format=fmt), ref, cfg, ctx

    def pool(self, phase: int) -> torch.Tensor:
        """Train positions of phase 0 (base classes) or 1 (new classes + ``exemplars`` per old class)."""
        y = self.data.train_y
        if phase == 0:
            return torch.nonzero(y < self.base).flatten()
        new = torch.nonzero((y >= self.base) & (y < self.base + self.per_phase)).flatten()
        return torch.cat([new, *[torch.nonzero(y == c).flatten()[:self.exemplars] for c in range(self.base)]])

    def draw(self, pool: torch.Tensor, n: int) -> torch.Tensor:
        return torch.cat([pool[torch.randperm(len(pool), generator=self.gen)]
                          for _ in range(math.ceil(n / len(pool)))])[:n]


# ----------------------------------------------------------------------------- sections
def data_section(b: Bench) -> tuple[dict, Callable | None]:
    pool, n = b.pool(0), b.steps * b.batch

    def make(src):
        return lambda: sum(len(y) for _, y in src.train_batches(b.draw(pool, n), b.batch, b.gen))
    return {lay: make(b.sources[lay]) for lay in LAYOUTS}, None


def train_step(b: Bench, phase: int, prec="fp32", lay="nchw", mode="eager", steps: int = 0, jobs: list = (),
               trials: int = 1) -> Callable[[], int]:
    """``steps`` (default ``--steps``) training steps of phase 0 or 1 through ``lucir.learner.train_phase``, of
    a new model of the variant or of each of ``jobs`` (as ``Bench.job``, or arrays); images x ``trials``."""
    from lucir.learner import train_phase

    pool, images = b.pool(phase), (steps or b.steps) * b.batch
    jobs = jobs or [b.job(b.config(prec, lay, mode), phase)]

    def run():
        with precision(prec, b.device):
            for net, ref, cfg, ctx in jobs:
                train_phase(net, ref, b.sources[lay], b.draw(pool, images), cfg, ctx, b.gen, b.device)
        return images * trials
    return run


def train_section(b: Bench, phase: int) -> tuple[dict, Callable]:
    return b.grid(partial(train_step, b, phase), training=True), train_step(b, phase, steps=1)


def pass_section(b: Bench, herd: bool) -> tuple[dict, Callable]:
    """``eval``: one ``extract`` over test images; ``herding``: over the training images of
    ``--herd-classes`` new classes, then herding per class on the CPU as ``lucir.run`` does."""
    from lucir.learner import extract
    from lucir.memory import herding

    if herd:
        classes = range(b.base, min(b.base + (b.args.herd_classes or b.per_phase), b.data.num_classes))
        idx = torch.cat([torch.nonzero(b.data.train_y == c).flatten() for c in classes])
    else:
        n_test = len(b.data.test_y)
        idx = torch.arange(QUICK["eval_images"] if b.args.quick else min(b.args.eval_images or n_test, n_test))

    def make(prec="fp32", lay="nchw", mode="eager", select=herd):
        cfg = b.config(prec, lay)
        net = b.job(cfg, 0)[0]

        def run():
            with precision(prec, b.device):
                f, _, y = extract(net, b.sources[lay], "train" if herd else "test", idx, cfg, b.device)
            if select:
                f, y = F.normalize(f, dim=1).cpu(), y.cpu()
                for c in classes:
                    herding(f[y == c], b.exemplars)
            return len(idx)
        return run
    return b.grid(make, training=False), make(select=False)


def fused_section(b: Bench) -> tuple[dict, Callable]:
    """Incremental step of an array of N trials (``lucir.models.Members``; each member its own frozen model, one
    shared batch stream, as from phase 2 on) vs the same N members' ``train_phase`` one after another.
    Images count x N: images/s per trial; FLOPs per image are one member's."""
    from lucir.fused import check_array
    from lucir.models import Members

    prec, lay = b.fuse_prec, b.fuse_lay
    backend = "loop" if b.device.type == "cpu" else "grouped"  # what lucir.run.run_members uses ("auto")
    out = {}
    for n in b.fuse_sizes:
        # N members differing in lambda_base, margin and K; K is capped at the classes per phase (digits: 2)
        configs = [b.config(prec, lay, preset="lucir", lambda_base=lam + i // len(FUSE_MEMBER_HP), margin=margin,
                            K=min(k, b.per_phase))
                   for i, (lam, margin, k) in zip(range(n), itertools.cycle(FUSE_MEMBER_HP))]
        check_array(configs)
        members = [b.job(c, 1, seed=1 + i) for i, c in enumerate(configs)]  # the separate runs keep their own
        model, ref = (Members([copy.deepcopy(m[j]) for m in members], backend) for j in (0, 1))
        array = (model, ref.eval().requires_grad_(False), configs, [m[3] for m in members])
        out[f"N={n} fused"] = train_step(b, 1, prec, lay, jobs=[array], trials=n)
        out[f"N={n} separate"] = train_step(b, 1, prec, lay, jobs=members, trials=n)
    return out, train_step(b, 1, prec, lay, steps=1)


# ----------------------------------------------------------------------------- report
def peaks(device: torch.device, stated: float, seconds: float = 0.3) -> tuple[dict[str, float], str]:
    """Peak GFLOP/s per precision and where they come from.  Measured (CPU): the best fp32 GFLOP/s of 1024^2
    matrix products for ``seconds`` at the current threads, a lower bound of the peak."""
    if stated:
        return dict.fromkeys(PRECISIONS, stated), "stated (--peak-gflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, t in CUDA_PEAK_TFLOPS.items():
            if key in name:
                return {p: v * 1000 for p, v in zip(PRECISIONS, t)}, f"data sheet of {key} (dense)"
        return {}, f"unknown card {name!r}: pass --peak-gflops"
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        best = max(best, 2 * 1024**3 / _call(lambda: a @ b, device)[1] / 1e9)
    return dict.fromkeys(("fp32", "bf16"), best), "measured: best fp32 1024^2 matrix product, used for every precision"


def meta(b: Bench, peak: dict, peak_source: str, wall_seconds: float) -> dict:
    """The run (arguments, sizes, peaks) and the machine (CPU, versions, git sha, ``OMP_WAIT_POLICY``)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    sha = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        sha = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": {k: v for k, v in vars(b.args).items() if k != "func"}, "dataset": b.args.dataset,
            "image_shape": list(SHAPES[b.args.dataset]["shape"]), "backbone": b.cfg0.resolved_backbone(),
            "batch_size": b.batch, "steps": b.steps, "rounds": b.rounds, "device": str(b.device),
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(b.device) if b.device.type == "cuda" else None,
            "peak_gflops": peak, "peak_source": peak_source, "wall_seconds": wall_seconds, "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda, "git_sha": sha, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def section_table(name: str, sec: dict) -> str:
    from tabulate import tabulate

    def num(x, fmt):
        return "" if x is None else format(x, fmt)
    rows = [[v, num(r["images_per_s"], ".1f"), num(min(r["samples"]), ".1f"), num(max(r["samples"]), ".1f"),
             num(r["share_of_peak"], ".1%"), num(r["peak_mem_mb"], ".0f"), num(r["first_call_s"], ".3f"),
             num(r["compile_s"], ".1f")] for v, r in sec["variants"].items()]
    gflop = f"; {sec['gflop_per_image']:.4f} GFLOP/image" if sec["gflop_per_image"] else ""
    out = f"[{name}] {sec['title']}{gflop}\n" + tabulate(
        rows, ["variant", "images/s", "min", "max", "of peak", "peak MB", "first call s", "compile s"], "github")
    if sec.get("fused"):
        out += "\n\n" + tabulate([[r["N"], r["fused"], r["separate"], f"{r['ratio']:.2f}x"] for r in sec["fused"]],
                                 ["N", "fused, per trial", "one after another, per trial", "fused / one after another"],
                                 "github", floatfmt=".1f")
    return out


RUNS = {  # section: its title, its builder (variants, the one call whose FLOPs are counted)
    "data": ("augmented batches only (lucir.data.Source.train_batches)", data_section),
    "train_base": ("base-phase training steps (lucir.learner.train_phase: cosine head, CE)",
                   partial(train_section, phase=0)),
    "train_inc": ("incremental training steps (old rows frozen, frozen model, CE + LF + MR)",
                  partial(train_section, phase=1)),
    "herding": ("feature pass (lucir.learner.extract) + herding per class", partial(pass_section, herd=True)),
    "eval": ("evaluation pass (lucir.learner.extract) over test images", partial(pass_section, herd=False)),
    "fused": ("incremental step of fused arrays of N trials (lucir.fused) vs N trials one after another, "
              "images/s per trial", fused_section),
}


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def cmd_bench(args) -> int:
    from lucir.checkpoint import atomic_write_json
    from lucir.run import resolve_device

    t_start = time.perf_counter()
    wanted, sizes, fuse = _items(args.sections), _items(args.fuse_sizes), args.fuse_variant.split()
    bad = [s for s in wanted if s not in SECTIONS] or ([] if wanted else [args.sections])
    if bad:
        raise ConfigError(f"--sections {bad[0]!r} is invalid: allowed {','.join(SECTIONS)}")
    if not sizes or not all(x.isdigit() and int(x) >= 1 for x in sizes):
        raise ConfigError(f"--fuse-sizes {args.fuse_sizes!r} is invalid: allowed comma-separated integers >= 1")
    if len(fuse) != 2 or fuse[0] not in PRECISIONS or fuse[1] not in LAYOUTS:
        raise ConfigError(f"--fuse-variant {args.fuse_variant!r} is invalid: allowed '<fp32|tf32|bf16> <nchw|cl>'")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"--device {args.device!r} is invalid: {e}") from None
    b = Bench(args, device, list(dict.fromkeys(int(x) for x in sizes)), fuse)
    peak, peak_source = peaks(device, args.peak_gflops)
    only, log = _items(args.only), partial(print, file=sys.stderr, flush=True)
    secs = {}
    for name, (title, build) in ((s, r) for s, r in RUNS.items() if s in wanted):
        log(f"lucir bench: section {name}")
        variants, one = build(b)
        gflop = gflop_per_image(one) if one else 0.0
        if only and name != "fused":
            variants = {k: v for k, v in variants.items() if any(o in k for o in only)}
        res = timed(variants, device, b.rounds, log, args.barrier)
        for v, r in res.items():
            prec = b.fuse_prec if name == "fused" else v.split()[0]
            r["share_of_peak"] = r["images_per_s"] * gflop / peak[prec] if gflop and peak.get(prec) else None
            r["compile_s"] = r["first_call_s"] - r["measure_s"] if v.endswith("compile") else None
        secs[name] = {"title": title, "gflop_per_image": gflop, "variants": res}
        if name == "fused":
            pairs = [(n, res[f"N={n} fused"], res[f"N={n} separate"]) for n in b.fuse_sizes]
            secs[name]["fused"] = [{"N": n, "fused": f["images_per_s"], "separate": s["images_per_s"], "ratio":
                                    statistics.median(x / y for x, y in zip(f["samples"], s["samples"]))}
                                   for n, f, s in pairs]
        print(section_table(name, secs[name]) + "\n", flush=True)
    m = meta(b, peak, peak_source, time.perf_counter() - t_start)
    print(f"{device} {m['device_name'] or m['cpu']}, torch {m['torch']}, {m['threads']} threads, batch "
          f"{b.batch}, {b.steps} steps x {b.rounds} rounds; peak {peak_source}; {m['wall_seconds']:.0f} s")
    if args.json_path:
        atomic_write_json(args.json_path, {"meta": m, "sections": secs})
        print(f"results written to {args.json_path}")
    return 0
