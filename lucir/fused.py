"""Fused trial arrays: N trials of one protocol trained as one model (HFTA: Wang et al., "Horizontally
Fused Training Array", MLSys 2021), so that a sweep's trials that share the data, class order, schedule
and seed cost one pass of the data instead of N.

There is one trainer: ``lucir.run.run_members`` over a leading member axis, of which ``lucir.run`` is N = 1.
This module says which configs may be one array (``FUSABLE_FIELDS``, ``fuse_key``, ``check_array``,
``member_keys``); ``run_members`` runs an array. Each trial keeps its own ``IncrementalNet`` in a
``lucir.models.Members`` (backbones "grouped", or "loop": faster on the CPU, docs/PERFORMANCE.md), so its
phase states are ordinary ``lucir.run`` states, and its own loss (switches, lambda, margin, K) and param
group of torch's SGD (``lucir.learner.train_phase``). Shared work is done once: one augmented batch stream
for all N (the same generator draws as each run alone), a shared base phase (equal ``Config.base_key``)
trained as one run, whose model is the frozen model of every member in phase 1 (one forward for all N), and
fused feature passes (imprinting, herding, evaluation).

Equivalence: each trial gets the result of its own ``lucir.run`` up to summation order (tests: fp64 weights
after SGD steps with ``torch.allclose``; accuracy matrices of a reduced digits run).
"""

from __future__ import annotations

import hashlib
import json

from lucir.config import Config

#: config fields that may differ between the members of one array (everything else must be equal)
FUSABLE_FIELDS = ("preset", "eta_init", "lambda_base", "adaptive_lambda", "margin", "K", "mr_weight", "ms_weight",
                  "less_forget", "margin_ranking", "mimic_scores", "cbf", "lr", "weight_decay", "cbf_lr",
                  "cbf_weight_decay")


class FusionError(ValueError):
    """Configs that cannot be trained as one array; the message names the field."""


def unfusable_reason(cfg: Config) -> str | None:
    """Why ``cfg`` cannot be a member of a fused array (None: it can): the fused head is the cosine
    classifier, and the joint and KD rungs change the data or need the linear head."""
    m = cfg.method
    if not m.cosine:
        return f"preset={m.preset!r} uses the linear head (cosine=false); fused arrays fuse cosine classifiers"
    if m.joint:
        return "joint=true trains on all data of the seen classes, not on new classes + exemplars"
    if m.kd:
        return "kd=true (knowledge distillation) is not fused"
    if cfg.protocol.dataset == "imagefolder" and cfg.runtime.in_memory == "false":
        return "in_memory=false: fused arrays need the in-memory tensor path"
    return None


def fuse_key(cfg: Config) -> str | None:
    """Configs with equal keys can be one array (None: ``cfg`` cannot be fused): the identity without
    ``FUSABLE_FIELDS`` (same data, protocol, seed, schedule shape, backbone, imprint, class-mean flip)."""
    if unfusable_reason(cfg) is not None:
        return None
    ident = {k: v for k, v in cfg.identity().items() if k not in FUSABLE_FIELDS}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def check_array(configs: list[Config]) -> None:
    """Raise ``FusionError`` naming the first field that keeps ``configs`` from being one array."""
    if not configs:
        raise FusionError("a fused array needs at least one config")
    for i, c in enumerate(configs):
        why = unfusable_reason(c)
        if why:
            raise FusionError(f"member {i} cannot be fused: {why}")
    first = configs[0].identity()
    for i, c in enumerate(configs[1:], 1):
        ident = c.identity()
        diff = sorted(k for k in first if k not in FUSABLE_FIELDS and ident[k] != first[k])
        if diff:
            raise FusionError(f"member {i} differs from member 0 in {diff[0]} ({ident[diff[0]]!r} vs "
                              f"{first[diff[0]]!r}); only {list(FUSABLE_FIELDS)} may differ within an array")


def member_keys(configs: list[Config]) -> list[str]:
    """What an array checkpoint records of its members (their identities): it resumes only the same array."""
    return [json.dumps(c.identity(), sort_keys=True) for c in configs]
