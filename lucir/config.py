"""Run configuration: protocol, method switches, hyperparameters, schedule, runtime.

Frozen dataclasses, validated at construction (DESIGN §7): every invalid value is a
``ConfigError`` that names the field and the allowed values.  The flat key/value form
(``Config.to_flat`` / ``Config.from_flat``) is what Ray Tune param spaces, MLflow params
and the command line use; every field name is unique across the sections.

Defaults are the reference code's (DESIGN §3, LUCIR_REFERENCE §1-§4): seed-1993 class
order, 20 exemplars per class, eta_init 1.0, lambda_base 5 (10 for ImageNet-size data),
margin 0.5, K 2, 160 epochs at lr 0.1 with milestones 80/120 for CIFAR-100.

Memory: ``exemplars_per_class`` per class, kept for ever; or, with ``memory_total`` > 0, a fixed total
budget shared among the seen classes as the reference's ``--fix_budget`` does: ceil(memory_total / seen)
per class (``Config.quota``), each class keeping its herding prefix.  The ceiling (the reference's
``np.ceil``) can exceed the total by up to seen - 1 exemplars (2000 over 60 classes: 34 each, 2040).

Per-phase weight of the less-forget term: ``lambda_t`` (``Config.lambda_at``; the metric of that name).

``Runtime.deterministic`` (CLI ``--deterministic``; what it sets: ``lucir.run.set_deterministic``).  On the
CPU runs are already bit-identical for the same config, seed and threads, and the switch changes nothing.  On a
GPU it forbids cuDNN's autotuned and atomics-based kernels: usually 10-30% slower training steps in PyTorch's
own guidance (not measured for this project: no GPU was available); an op with no deterministic CUDA
kernel gives PyTorch's warning instead of failing the run.  ``bf16``, ``channels_last`` and ``compile``
change the summation order: they are part of ``base_key`` (a bf16 base phase never seeds fp32 trials).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and what is allowed."""


DATASETS = {
    # name: (number of classes or None when read from disk, default base, default phases)
    "digits": 10,
    "cifar100": 100,
    "imagefolder": None,
}
BACKBONES = ("auto", "convnet", "resnet32", "resnet18")
#: training augmentations: RandomResizedCrop + flip; pad-crop + flip; pad-crop only; nothing
AUGMENTS = ("imagenet", "cifar", "crop", "none")
#: what the NME class means average with (the reference's CIFAR block reverses RGB; DESIGN §3)
CLASS_MEAN_FLIPS = ("channels", "mirror", "none")
#: tensor datasets whose images have one size and channel count
NATIVE_IMAGES = {"digits": (8, 1), "cifar100": (32, 3)}
IN_MEMORY = ("auto", "true", "false")
VERIFY_IMAGES = ("header", "full", "off")  # lucir.data.verify_images

# Ablation ladder (paper Fig. 7, official run.sh).  Each preset sets every switch (1 = on), in this order:
_SWITCHES = ("cosine", "imprint", "less_forget", "adaptive_lambda", "margin_ranking", "kd",
             "mimic_scores", "cbf", "joint")
PRESETS: dict[str, dict[str, bool]] = {name: dict(zip(_SWITCHES, map(bool, row))) for name, row in (
    #             cos imp lf ada mr kd ms cbf joint
    ("finetune",  (0, 0, 0, 0, 0, 0, 0, 0, 0)),
    ("baseline",  (0, 0, 0, 0, 0, 1, 0, 0, 0)),
    ("cn",        (1, 1, 0, 0, 0, 0, 1, 0, 0)),
    ("cn_lf",     (1, 1, 1, 1, 0, 0, 0, 0, 0)),
    ("lucir",     (1, 1, 1, 1, 1, 0, 0, 0, 0)),
    ("lucir_cbf", (1, 1, 1, 1, 1, 0, 0, 1, 0)),
    ("joint",     (1, 1, 0, 0, 0, 0, 0, 0, 1)),
)}
LADDER = tuple(PRESETS)

# Per-dataset defaults, applied where the user gave no value.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # digits: 5 exemplars per class keep ~3.7% of a class's ~135 training images, the share that
    # 20 of CIFAR-100's 500 keep (4%); with 20 (15%) replay alone nearly closes the gap to joint.
    "digits": dict(base_classes=4, phases=3, exemplars_per_class=5, backbone="convnet", lambda_base=5.0,
                   image_size=8, channels=1, augment="crop", class_mean_flip="none",
                   epochs=30, lr=0.1, milestones=(20, 25), weight_decay=5e-4, batch_size=64,
                   cbf_epochs=10, cbf_milestones=(5,)),
    "cifar100": dict(base_classes=50, phases=5, backbone="resnet32", lambda_base=5.0,
                     image_size=32, channels=3, augment="cifar", class_mean_flip="channels",
                     exemplars_per_class=20, epochs=160, lr=0.1, milestones=(80, 120), weight_decay=5e-4,
                     batch_size=128,
                     cbf_epochs=20, cbf_milestones=(10,)),
    "imagefolder": dict(base_classes=50, phases=5, backbone="resnet18", lambda_base=10.0,
                        image_size=224, channels=3, augment="imagenet", class_mean_flip="none",
                        exemplars_per_class=20, epochs=90, lr=0.1, milestones=(30, 60), weight_decay=1e-4,
                        batch_size=128,
                        cbf_epochs=20, cbf_milestones=(10,)),
}


def _err(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is invalid: allowed {allowed}")


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(lo: float, hi: float = math.inf, *, above: bool = False) -> Callable[[Any], bool]:
    return lambda v: _finite(v) and (v > lo if above else v >= lo) and v <= hi


def _one_of(choices) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {list(choices)}"


_INT0, _INT1 = (_int_at_least(0), "an integer >= 0"), (_int_at_least(1), "an integer >= 1")
_BOOL = (lambda v: isinstance(v, bool)), "true or false"
_POSITIVE, _NONNEGATIVE = (_number(0, above=True), "a finite number > 0"), (_number(0), "a finite number >= 0")
_BUDGET = _int_at_least(0), "an integer >= 0 (a memory budget cannot be negative)"

#: the one home of the single-field checks: field -> (predicate, the allowed values as the error names them);
#: the dataclasses below run them at construction (``check_field``; ``lucir.data`` uses it for its arguments)
FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    # Protocol (and, across fields, Protocol.__post_init__)
    "dataset": _one_of(sorted(DATASETS)), "base_classes": _INT1, "phases": _INT1, "num_classes": _INT1,
    "exemplars_per_class": _BUDGET, "memory_total": _BUDGET, "class_order_seed": _INT0, "seed": _INT0,
    "image_size": (_int_at_least(4), "an integer >= 4 (pixels)"),
    "channels": ((lambda v: v in (1, 3) and not isinstance(v, bool)), "1 (grayscale) or 3 (RGB)"),
    "augment": _one_of(AUGMENTS),
    "val_fraction": (_number(0, 0.5), "a number in [0, 0.5] (0: no validation split)"),
    # Method
    "preset": ((lambda v: v in PRESETS or v == "custom"), f"one of {list(LADDER)} or 'custom'"),
    **dict.fromkeys(_SWITCHES, _BOOL),
    "backbone": _one_of(BACKBONES), "class_mean_flip": _one_of(CLASS_MEAN_FLIPS),
    "eta_init": _POSITIVE, "kd_T": _POSITIVE, "K": _INT1,
    **dict.fromkeys(("lambda_base", "margin", "mr_weight", "kd_beta", "ms_weight"), _NONNEGATIVE),
    # Schedule (the milestones: Schedule.__post_init__)
    "epochs": _INT1, "batch_size": _INT1, "cbf_epochs": _INT1, "lr": _POSITIVE, "cbf_lr": _POSITIVE,
    **dict.fromkeys(("gamma", "momentum", "weight_decay", "cbf_weight_decay"), _NONNEGATIVE),
    # Runtime
    "device": ((lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None),
               "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    **dict.fromkeys(("bf16", "channels_last", "compile", "download", "deterministic"), _BOOL),
    "threads": _INT0, "eval_batch_size": _INT1, "checkpoint_every": _INT0, "workers": _INT0,
    "gpu_memory_fraction": (_number(0, 1), "a number in [0, 1]"),
    "in_memory": _one_of(IN_MEMORY), "verify_images": _one_of(VERIFY_IMAGES),
}


def check_field(name: str, value: Any) -> None:
    """A ``ConfigError`` naming the field and the allowed values unless ``FIELD_CHECKS[name]`` accepts ``value``."""
    ok, allowed = FIELD_CHECKS[name]
    if not ok(value):
        raise _err(name, value, allowed)


def _check_fields(section) -> None:
    for f in fields(section):
        if f.name in FIELD_CHECKS:
            check_field(f.name, getattr(section, f.name))


@dataclass(frozen=True)
class Protocol:
    """Class-incremental protocol (DESIGN §3 'Protocol')."""

    dataset: str = "digits"
    data_root: str = "data"
    base_classes: int = 4
    phases: int = 3
    exemplars_per_class: int = 5
    memory_total: int = 0  # > 0: fixed total budget shared among seen classes (overrides per class)
    class_order_seed: int = 1993
    seed: int = 0
    num_classes: int = 10  # filled from the dataset; imagefolder: number of class folders
    image_size: int = 8  # side of the (square) training crop; fixed for digits (8) and cifar100 (32)
    channels: int = 1  # 1 (grayscale) or 3 (RGB; grayscale files are repeated to 3)
    augment: str = "crop"  # one of AUGMENTS; pad-crops pad by max(1, round(image_size / 8)) pixels
    mean: tuple[float, ...] = ()  # () = the dataset's (cifar100: the reference's; imagenet augment:
    std: tuple[float, ...] = ()  # ImageNet's; otherwise computed once from the training split)
    val_fraction: float = 0.0  # share of each class's training images held out for validation (search)

    def __post_init__(self):
        _check_fields(self)
        if self.base_classes >= self.num_classes:
            raise _err("base_classes", self.base_classes,
                       f"1..{self.num_classes - 1} ({self.dataset} has {self.num_classes} classes "
                       "and at least one incremental phase needs classes)")
        check_normalisation(self.mean, self.std, self.channels)
        native = NATIVE_IMAGES.get(self.dataset)
        if native and (self.image_size, self.channels) != native:
            bad = "image_size" if self.image_size != native[0] else "channels"
            raise _err(bad, getattr(self, bad), f"{native[0] if bad == 'image_size' else native[1]} "
                                                f"for {self.dataset} (its images are {native[1]}x{native[0]}x{native[0]})")
        rest = self.num_classes - self.base_classes
        if rest % self.phases:
            ok = [p for p in range(1, rest + 1) if rest % p == 0]
            raise _err("phases", self.phases,
                       f"a divisor of the {rest} non-base classes: {ok} "
                       f"(uneven phase split with base_classes={self.base_classes})")

    @property
    def classes_per_phase(self) -> int:
        return (self.num_classes - self.base_classes) // self.phases

    def phase_classes(self, phase: int) -> range:
        """Class positions (in the shuffled order) that phase ``phase`` introduces."""
        if phase == 0:
            return range(0, self.base_classes)
        lo = self.base_classes + (phase - 1) * self.classes_per_phase
        return range(lo, lo + self.classes_per_phase)

    def seen_classes(self, phase: int) -> int:
        return self.base_classes + phase * self.classes_per_phase


@dataclass(frozen=True)
class Method:
    """Method switches and hyperparameters (DESIGN §3 'Losses', 'Ablation ladder')."""

    preset: str = "lucir"
    cosine: bool = True
    imprint: bool = True
    less_forget: bool = True
    adaptive_lambda: bool = True
    margin_ranking: bool = True
    kd: bool = False
    mimic_scores: bool = False
    cbf: bool = False
    joint: bool = False
    eta_init: float = 1.0
    lambda_base: float = 5.0
    margin: float = 0.5
    K: int = 2
    mr_weight: float = 1.0
    kd_T: float = 2.0
    kd_beta: float = 0.25
    ms_weight: float = 1.0
    backbone: str = "auto"
    class_mean_flip: str = "none"  # one of CLASS_MEAN_FLIPS (lucir.memory.class_means)

    def __post_init__(self):
        _check_fields(self)
        needs_cos = [s for s in ("imprint", "less_forget", "margin_ranking", "mimic_scores", "cbf")
                     if getattr(self, s)]
        if needs_cos and not self.cosine:
            raise _err(needs_cos[0], True, "false unless cosine=true (it acts on the cosine classifier)")


@dataclass(frozen=True)
class Schedule:
    """Optimisation schedule (DESIGN §3 'Schedule', 'CBF'); the same for base and incremental phases."""

    epochs: int = 30
    lr: float = 0.1
    milestones: tuple[int, ...] = (20, 25)
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    cbf_epochs: int = 10
    cbf_lr: float = 0.01
    cbf_milestones: tuple[int, ...] = (5,)
    cbf_weight_decay: float = 1e-4

    def __post_init__(self):
        _check_fields(self)
        for name, limit in (("milestones", self.epochs), ("cbf_milestones", self.cbf_epochs)):
            ms = getattr(self, name)
            if list(ms) != sorted(set(ms)) or any((not isinstance(m, int)) or m < 1 or m >= limit for m in ms):
                raise _err(name, ms, f"strictly increasing integers in 1..{limit - 1}")


@dataclass(frozen=True)
class Runtime:
    """How to run, not what: never part of the result's identity (DESIGN §5)."""

    device: str = "auto"
    bf16: bool = False
    # channels_last: 1.2-1.4x on CPU training steps, 1.1x on eval passes (docs/PERFORMANCE.md, issue 8);
    # changes the summation order, not the algorithm (digits avg_inc_acc_cnn within the seed std)
    channels_last: bool = True
    compile: bool = False
    threads: int = 0  # 0: leave torch's default
    # 128 (the reference's eval batch): on the CPU a batch of 512 makes 32 MB activations that glibc
    # maps fresh for every op (page faults): 0.6x the images/s of 128 (docs/PERFORMANCE.md, issue 8)
    eval_batch_size: int = 128
    gpu_memory_fraction: float = 0.0  # > 0: cap this process's share of the GPU
    checkpoint_every: int = 10  # epochs between mid-phase checkpoints (0: at phase ends only)
    in_memory: str = "auto"  # imagefolder: decode once into uint8 tensors ("auto": when images are small)
    workers: int = 0  # DataLoader workers of the folder path (0: the threads the run was given)
    download: bool = True  # cifar100 missing under data_root: download it (Tune trials: never, DESIGN §6)
    # DataLoader path: check every file before training ("header": PIL verify, "full": decode all, "off")
    verify_images: str = "header"
    deterministic: bool = False  # deterministic GPU kernels (module docstring: what it sets and costs)

    def __post_init__(self):
        _check_fields(self)


#: dataset name -> function(data_root) -> number of classes, for datasets whose class count lies on disk
#: (``lucir.data`` registers ``imagefolder``'s on import: config stays a leaf, data depends on config)
CLASS_COUNTERS: dict[str, Callable[[str], int]] = {}
_INT_TUPLES = ("milestones", "cbf_milestones")
_FLOAT_TUPLES = ("mean", "std")

_SECTIONS = {"protocol": Protocol, "method": Method, "schedule": Schedule, "runtime": Runtime}
FIELD_SECTION: dict[str, str] = {f.name: sec for sec, cls in _SECTIONS.items() for f in fields(cls)}
RUNTIME_FIELDS = frozenset(f.name for f in fields(Runtime))


@dataclass(frozen=True)
class Config:
    protocol: Protocol = field(default_factory=Protocol)
    method: Method = field(default_factory=Method)
    schedule: Schedule = field(default_factory=Schedule)
    runtime: Runtime = field(default_factory=Runtime)

    def __post_init__(self):
        m, p = self.method, self.protocol
        if m.margin_ranking and m.K > p.classes_per_phase:
            raise _err("K", m.K, f"1..{p.classes_per_phase} (the classes per phase: "
                                 f"{p.num_classes - p.base_classes} non-base classes / {p.phases} phases)")
        if m.class_mean_flip == "channels" and p.channels == 1:
            raise _err("class_mean_flip", m.class_mean_flip,
                       "'mirror' or 'none' for 1-channel images (channels=1: reversing the colour channels "
                       "would do nothing)")
        if p.memory_total and p.memory_total < p.num_classes:
            raise _err("memory_total", p.memory_total,
                       f"0 (per-class budget) or >= {p.num_classes} (one exemplar per class at the end)")

    # ------------------------------------------------------------------ flat form
    def to_flat(self) -> dict[str, Any]:
        """One level of unique keys; tuples become lists (JSON friendly)."""
        out: dict[str, Any] = {}
        for sec in _SECTIONS:
            for k, v in dataclasses.asdict(getattr(self, sec)).items():
                out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any] | None = None, *, num_classes_of: Callable[[str], int] | None = None,
                  **overrides: Any) -> "Config":
        """Build a config from flat keys.

        Order of precedence: explicit keys > preset switches > dataset defaults > field defaults.
        ``epochs`` given without ``milestones`` scales the dataset's default milestones in
        proportion (a reduced schedule is one flag).  Unknown keys are an error.

        ``imagefolder`` without ``num_classes``: ``num_classes_of(data_root)`` gives it, else the counter
        ``lucir.data`` registers in ``CLASS_COUNTERS`` (this module does no file-system I/O of its own and
        imports nothing of lucir; the caller's data layer counts the class folders).
        """
        flat = {**(flat or {}), **overrides}
        unknown = sorted(k for k in flat if k not in FIELD_SECTION)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}: allowed {sorted(FIELD_SECTION)}")
        dataset, preset = flat.get("dataset", "digits"), flat.get("preset", "lucir")
        check_field("dataset", dataset)
        check_field("preset", preset)
        values: dict[str, Any] = {**DATASET_DEFAULTS[dataset], **PRESETS.get(preset, {})}
        for epochs, milestones in (("epochs", "milestones"), ("cbf_epochs", "cbf_milestones")):
            if epochs in flat and milestones not in flat:
                values[milestones] = scale_milestones(values[milestones], values[epochs],
                                                      _as_int(epochs, flat[epochs]))
        values.update(flat)
        if DATASETS[dataset] is not None:
            if "num_classes" in flat and _as_int("num_classes", flat["num_classes"]) != DATASETS[dataset]:
                raise _err("num_classes", flat["num_classes"], f"{DATASETS[dataset]} for {dataset}")
            values["num_classes"] = DATASETS[dataset]
        elif "num_classes" not in flat:
            counter = num_classes_of or CLASS_COUNTERS.get(dataset)
            if counter is None:
                raise _err("num_classes", None, f"an integer >= 2 for {dataset} (the number of class folders; "
                                                "give it, or import lucir.data, which counts the folders)")
            values["num_classes"] = counter(values.get("data_root", "data"))
        for k, v in values.items():
            if k in _INT_TUPLES or k in _FLOAT_TUPLES:
                if isinstance(v, str):
                    v = [x for x in v.strip("[]()").replace(",", " ").split() if x]
                conv = _as_int if k in _INT_TUPLES else _as_float
                v = tuple(conv(k, x, v) for x in (v if isinstance(v, (list, tuple)) else [v]))
            elif k == "in_memory" and isinstance(v, bool):
                v = "true" if v else "false"
            values[k] = _coerce(_SECTIONS[FIELD_SECTION[k]], k, v)
        return cls._of_sections(values)

    def replace(self, **flat: Any) -> "Config":
        """A copy with some flat fields changed (other fields kept, no defaults re-applied)."""
        unknown = [k for k in flat if k not in FIELD_SECTION]
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}: allowed {sorted(FIELD_SECTION)}")
        values = {**self.to_flat(), **flat}
        return self._of_sections({k: tuple(v) if k in _INT_TUPLES + _FLOAT_TUPLES else v for k, v in values.items()})

    @classmethod
    def _of_sections(cls, values: dict[str, Any]) -> "Config":
        """The config of a value for every flat field; a preset whose switches were changed becomes "custom"."""
        preset = values.get("preset")
        if preset in PRESETS and any(values[s] != PRESETS[preset][s] for s in _SWITCHES):
            values["preset"] = "custom"
        kwargs: dict[str, dict[str, Any]] = {sec: {} for sec in _SECTIONS}
        for k, v in values.items():
            kwargs[FIELD_SECTION[k]][k] = v
        return cls(**{sec: c(**kwargs[sec]) for sec, c in _SECTIONS.items()})

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        """Everything that decides the result (runtime fields and where the data lies excluded)."""
        return {k: v for k, v in self.to_flat().items() if k not in RUNTIME_FIELDS and k != "data_root"}

    def base_key(self) -> str:
        """Key of the base phase (DESIGN §5): configs with equal keys train an identical phase 0.

        Phase 0 depends on the data (and its image size, channels, augmentation, normalisation), class
        order, base classes, backbone and head type, eta_init, the schedule, the seed, and (for herding
        and the phase-0 NME evaluation) the memory budget and the class-mean flip; and on the numerics
        of the runtime: ``bf16``, ``channels_last`` and ``compile`` (a bf16 base phase must not seed
        fp32 trials).  It does not depend on lambda_base, margin, K, the later phases or the other switches.
        """
        f = self.to_flat()
        keys = ("dataset", "num_classes", "class_order_seed", "base_classes", "seed",
                "exemplars_per_class", "memory_total", "cosine", "backbone",
                "epochs", "lr", "milestones", "gamma", "momentum", "weight_decay", "batch_size",
                "image_size", "channels", "augment", "mean", "std", "class_mean_flip", "val_fraction",
                "bf16", "channels_last", "compile")
        ident = {k: f[k] for k in keys}
        ident["memory_total_per_class0"] = self.quota(0)
        if self.method.cosine:
            ident["eta_init"] = f["eta_init"]
        blob = json.dumps(ident, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def quota(self, phase: int) -> int:
        """Exemplars kept per class after ``phase``: fixed per class, or ceil(total / seen classes), the
        reference's ``--fix_budget`` rule (``int(np.ceil(nb_protos * 100 / nb_cl / (iteration + 1)))``)."""
        p = self.protocol
        if p.memory_total:
            return -(-p.memory_total // p.seen_classes(phase))
        return p.exemplars_per_class

    def lambda_at(self, phase: int) -> float:
        """``lambda_t``, the less-forget weight of phase t >= 1: lambda_base * sqrt(N_old / N_new) (code's form,
        §3); lambda_base when ``adaptive_lambda`` is off."""
        p, m = self.protocol, self.method
        if not m.adaptive_lambda:
            return m.lambda_base
        n_old = p.seen_classes(phase - 1)
        return m.lambda_base * math.sqrt(n_old / p.classes_per_phase)

    def resolved_backbone(self) -> str:
        if self.method.backbone != "auto":
            return self.method.backbone
        return DATASET_DEFAULTS[self.protocol.dataset]["backbone"]


def check_normalisation(mean, std, channels: int) -> None:
    """``mean``/``std``: both empty (the dataset's) or both ``channels`` finite numbers, std > 0."""
    for name, v in (("mean", mean), ("std", std)):
        if v and (len(v) != channels or not all(_finite(x) for x in v)):
            raise _err(name, v, f"empty (the dataset's) or {channels} finite numbers (one per channel)")
    if any(x <= 0 for x in std):
        raise _err("std", std, "numbers > 0")
    if bool(mean) != bool(std):
        raise _err("mean" if not mean else "std", mean or std, "given together with " + ("std" if mean else "mean"))


def scale_milestones(milestones, old_epochs: int, new_epochs: int) -> tuple[int, ...]:
    """Milestones scaled in proportion to a changed number of epochs (80/120 of 160 -> 5/8 of 10)."""
    out: list[int] = []
    for m in milestones:
        s = max(1, min(new_epochs - 1, round(m * new_epochs / old_epochs)))
        if new_epochs > 1 and (not out or s > out[-1]):
            out.append(s)
    return tuple(out)


def _as_int(name: str, value: Any, shown: Any = None) -> int:
    try:
        f = float(value)
        if f.is_integer():
            return int(f)
    except (TypeError, ValueError):
        pass
    raise _err(name, value if shown is None else shown, "an integer" if shown is None else "a list of integers")


def _as_float(name: str, value: Any, shown: Any = None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _err(name, value if shown is None else shown, "a list of numbers") from None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _coerce(cls, name: str, value: Any) -> Any:
    """Accept strings from the command line / JSON for typed fields; leave the rest to validation."""
    ftype = {f.name: f.type for f in fields(cls)}[name]
    if isinstance(value, str):
        if ftype == "bool":
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise _err(name, value, "true or false")
        try:
            if ftype == "int":
                return int(value)
            if ftype == "float":
                return float(value)
        except ValueError:
            raise _err(name, value, f"a value of type {ftype}") from None
    if ftype == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if ftype == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
