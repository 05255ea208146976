"""Parameter spaces: the named ablation grids, the Optuna search space, and their validation.

Every space is a dict of flat lucir config keys (``Config.from_flat``).  A value is either fixed or a
grid (``{"grid_search": [...]}``, i.e. ``tune.grid_search``).  Before any Ray work starts, every grid
point is turned into a ``Config``; the first invalid one is reported with its grid values (DESIGN §7).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from lucir.config import FIELD_SECTION, LADDER, Config, ConfigError

# Named grids (DESIGN §3 'Known numbers'; the paper's Fig. 7 ladder).  Keys are flat config fields.
GRIDS: dict[str, dict[str, Any]] = {
    # finishes in minutes on 2 CPU cores: the ladder on digits' default protocol (B4, 3 phases of 2 classes)
    "digits": {"dataset": "digits", "preset": ["finetune", "baseline", "cn", "cn_lf", "lucir", "joint"]},
    # CIFAR-100 B50 x {5, 10, 25} phases, 20 exemplars per class, ResNet-32, 160 epochs
    "paper-cifar": {"dataset": "cifar100", "base_classes": 50, "phases": [5, 10, 25],
                    "preset": ["finetune", "baseline", "cn", "cn_lf", "lucir", "lucir_cbf", "joint"]},
    # ImageNet-Subset (an ImageFolder of 100 classes) B50 x {5, 10}, ResNet-18, 90 epochs
    "paper-imagenet": {"dataset": "imagefolder", "base_classes": 50, "phases": [5, 10],
                       "preset": ["finetune", "baseline", "cn", "cn_lf", "lucir", "lucir_cbf", "joint"]},
}
DEFAULT_SEEDS = {"digits": 1, "paper-cifar": 1, "paper-imagenet": 1}

# the columns that tell a protocol apart in the summary table
PROTOCOL_KEYS = ("dataset", "base_classes", "phases", "exemplars_per_class", "memory_total")


def is_grid(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"grid_search"}


def grid(values: list) -> dict:
    return {"grid_search": list(values)}


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true/false, lists), else the string."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def parse_grid_set(items: list[str]) -> dict[str, dict]:
    """``--grid-set k=v1,v2`` (repeatable) -> {k: grid_search([v1, v2])}; unknown fields are an error."""
    out: dict[str, dict] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid-set {item!r} is invalid: allowed KEY=V1,V2,... with KEY one of "
                              f"{sorted(FIELD_SECTION)}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in FIELD_SECTION:
            raise ConfigError(f"--grid-set {k}: unknown config field; allowed {sorted(FIELD_SECTION)}")
        vals = [parse_value(x) for x in v.split(",") if x.strip()]
        if not vals:
            raise ConfigError(f"--grid-set {k}= has no values: allowed KEY=V1,V2,...")
        if len(set(map(repr, vals))) != len(vals):
            raise ConfigError(f"--grid-set {k}={v}: a value is repeated")
        out[k] = grid(vals)
    return out


def parse_presets(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in LADDER]
    if not names or bad:
        raise ConfigError(f"--presets {text!r} is invalid: allowed a comma-separated list of {list(LADDER)}"
                          + (f" (unknown: {bad})" if bad else ""))
    return names


def ablation_space(grid_name: str, *, fixed: dict | None = None, gridded: dict | None = None,
                   presets: list[str] | None = None, seeds: int | None = None) -> dict:
    """The param space of ``lucir ablate``: named grid, then fixed fields, then presets/seeds/grids.

    Precedence (later wins): named grid < ``--set``/flags (fixed) < ``--presets`` < ``--seeds`` <
    ``--grid-set``.  Scalars in the named grid are fixed values, lists become ``grid_search``.
    """
    if grid_name not in GRIDS:
        raise ConfigError(f"--grid {grid_name!r} is invalid: allowed one of {sorted(GRIDS)}")
    space: dict[str, Any] = {k: (grid(v) if isinstance(v, list) else v) for k, v in GRIDS[grid_name].items()}
    for k, v in (fixed or {}).items():
        space[k] = v
    if presets:
        space["preset"] = grid(presets)
    if seeds is None and "seed" not in (fixed or {}) and "seed" not in (gridded or {}):
        seeds = DEFAULT_SEEDS.get(grid_name, 1)
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds} is invalid: allowed an integer >= 1 (seeds 0..N-1)")
        space["seed"] = grid(list(range(seeds))) if seeds > 1 else 0
    space.update(gridded or {})
    for k in space:
        if k not in FIELD_SECTION:
            raise ConfigError(f"unknown config field {k!r}: allowed {sorted(FIELD_SECTION)}")
    return space


def grid_points(space: dict) -> list[dict]:
    """Every point of the grid (the cartesian product of the grid_search values), fixed values kept."""
    keys = [k for k, v in space.items() if is_grid(v)]
    fixed = {k: v for k, v in space.items() if not is_grid(v)}
    if not keys:
        return [dict(fixed)]
    for k in keys:
        if not space[k]["grid_search"]:
            raise ConfigError(f"grid of {k!r} is empty: give at least one value")
    return [{**fixed, **dict(zip(keys, combo))} for combo in itertools.product(*(space[k]["grid_search"]
                                                                                 for k in keys))]


def validate_points(points: list[dict], grid_keys: list[str] | None = None) -> list[Config]:
    """Build every point's Config up front; the first error names the point by its grid values."""
    out = []
    for pt in points:
        try:
            out.append(Config.from_flat(pt))
        except ConfigError as exc:
            where = ", ".join(f"{k}={pt[k]!r}" for k in (grid_keys or []) if k in pt)
            raise ConfigError(f"grid point {{{where}}}: {exc}" if where else str(exc)) from None
    return out


def absolute_data_root(space: dict) -> dict:
    """Trials run in their own working directories (DESIGN §6): make data_root absolute."""
    space = dict(space)
    dr = space.get("data_root")
    if is_grid(dr):
        space["data_root"] = grid([str(Path(x).absolute()) for x in dr["grid_search"]])
    else:
        space["data_root"] = str(Path(dr if dr is not None else "data").absolute())
    return space


# ---------------------------------------------------------------------------------------------- search
PAPER_DEFAULTS = {"eta_init": 1.0, "margin": 0.5, "K": 2, "lambda_base": 5.0}
SEARCHED = ("eta_init", "margin", "K", "lambda_base")
# eta_init is part of the base-phase key (DESIGN §5): searching it over a few values, not a continuum,
# keeps the shared base-phase cache useful (trials with the same eta_init share their base phase).
ETA_CHOICES = [1.0, 2.0, 4.0, 8.0, 16.0]


def search_domains(base: Config, fixed: dict) -> dict[str, dict]:
    """What a search searches, as data for ``lucir_experiment.json`` (``tune.study`` makes Optuna
    distributions of it; the reports read it): eta_init in ``ETA_CHOICES`` (log axis); margin uniform
    [0, 1] (cosine scores lie in [-1, 1]); K integer in 1..classes per phase; lambda_base log-uniform
    [0.5, 50] (5 CIFAR, 10 ImageNet in the paper).  A field fixed with ``--set`` is not searched."""
    cpp = base.protocol.classes_per_phase
    doms = {"eta_init": {"kind": "choice", "values": list(ETA_CHOICES), "log": True},
            "margin": {"kind": "uniform", "low": 0.0, "high": 1.0, "log": False},
            "K": {"kind": "randint", "low": 1, "high": cpp, "log": False},
            "lambda_base": {"kind": "loguniform", "low": 0.5, "high": 50.0, "log": True}}
    out = {k: v for k, v in doms.items() if k not in fixed}
    if not out:
        raise ConfigError("lucir search: every searched field (eta_init, margin, K, lambda_base) is fixed "
                          "with --set; nothing left to search")
    return out


def paper_defaults(base: Config, fixed: dict) -> dict:
    """The paper's values of the searched fields (slot 0 of every search): K capped at the classes per
    phase, lambda_base the protocol's (5 CIFAR/digits, 10 ImageNet)."""
    d = {**PAPER_DEFAULTS, "K": min(PAPER_DEFAULTS["K"], base.protocol.classes_per_phase),
         "lambda_base": float(base.method.lambda_base)}
    return {k: d[k] for k in search_domains(base, fixed)}


def search_corners(base_flat: dict, base: Config) -> list[dict]:
    """Configs at the corners of the search ranges, for validating before any trial starts."""
    cpp = base.protocol.classes_per_phase
    corners = []
    for eta in (min(ETA_CHOICES), max(ETA_CHOICES)):
        for K in (1, cpp):
            corners.append({**base_flat, "eta_init": eta, "K": K, "margin": 0.0, "lambda_base": 0.5})
    return corners


def fuse_points(points: list[dict], cfgs: list[Config], size: int) -> list[list[dict]]:
    """The sweep's trials as fused arrays (``lucir.fused``) of at most ``size`` members: trials with the same
    ``fuse_key`` (same data, protocol, seed, schedule shape, backbone) in grid order; a trial that cannot be
    fused (linear head, joint, KD) is an array of one."""
    from lucir.fused import fuse_key

    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"--fuse={size!r} is invalid: allowed an integer >= 1 (1: no fusion)")
    groups: dict[object, list[dict]] = {}
    order: list[object] = []
    for i, (pt, cfg) in enumerate(zip(points, cfgs)):
        key = fuse_key(cfg) if size > 1 else None
        key = key if key is not None else ("alone", i)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(pt)
    return [g[i:i + size] for key in order for g in [groups[key]] for i in range(0, len(g), size)]

