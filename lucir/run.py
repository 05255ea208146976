"""``lucir.run(config, state=None)``: the class-incremental run as a generator of phases.

Each iteration trains one phase (the base phase is phase 0), selects exemplars, evaluates, and
yields ``(PhaseResult, state)``.  ``state`` is a plain dict (tensors, lists, numbers, strings)
from which the run resumes exactly: pass it back as ``run(config, state)`` and the next phase
is trained as if the run had never stopped.  Every random draw of phase t comes from a generator
seeded with (seed, t), and the model is built under a seeded, forked RNG, so resuming needs no
global RNG state and the same config gives the same accuracy matrix on the CPU.

State keys: ``format``, ``phase`` (last completed), ``config`` (identity fields), ``base_key``,
``model`` (state dict), ``head`` (kind and row counts), ``memory`` (herding ranks per class),
``acc_cnn``/``acc_nme`` (accuracy matrices), ``results`` (the metrics of every phase so far),
``rng`` (torch CPU RNG state at the end of the phase, for information), ``partial`` (``None``, or
the training in progress of phase ``phase + 1``: ``phase``, ``epoch`` done, ``model``, ``head``,
``optimizer``, ``scheduler``, ``gen`` (the phase generator's state), ``train_seconds``).

With ``Runtime.checkpoint_every`` = k > 0, ``run(..., on_checkpoint=f)`` calls ``f(state)`` with such
a mid-phase state every k epochs and after a phase's last epoch; ``run(config, that_state)`` goes on
from that epoch and gives exactly the result of an uninterrupted run on the CPU (a crash loses at
most k epochs, not the phase).  Before the base phase completes, ``phase`` is -1.

A phase-0 state can seed any config with the same ``Config.base_key()`` (the runner's shared
base-phase cache); a later state only the config it came from.

One trainer for one run or many: ``run`` is ``run_members`` with one member; with N members it trains a
fused array of N trials (a leading member axis, ``lucir.models.Members``; ``lucir.fused`` says which configs
may be one), each member's states being ordinary states of this module.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import asdict, field, make_dataclass
from typing import Any, Callable, Iterator

import torch

from lucir import learner
from lucir.checkpoint import CheckpointError
from lucir.config import Config, ConfigError, check_field
from lucir.data import Source, class_order, load_dataset_for, validation_split
from lucir.fused import FusionError, check_array, member_keys
from lucir.heads import CosineHead, LinearHead, imprint_rows
from lucir.memory import Memory, class_means, herding, nme_scores
from lucir.metrics import (average_incremental_accuracy, backward_transfer, cross_group_shares, forgetting,
                           mean_norm, old_new_norms, pct, topk_accuracy, weighted_old_new)
from lucir.record import DIAGNOSTIC_METRICS, EXTRA_METRICS, METRICS, VAL_METRICS
from lucir.models import IncrementalNet, Members, make_backbone


def _metrics(self) -> dict[str, float]:
    """The phase's row: every field but the accuracy matrices (and the validation metrics without a split)."""
    d = asdict(self)
    del d["acc_matrix_cnn"], d["acc_matrix_nme"]
    return {k: v for k, v in d.items() if not (k in VAL_METRICS and math.isnan(self.val_acc_cnn))}


#: metrics of one phase (DESIGN §4; the names and their order are ``lucir.record``'s, which the results rows
#: keep: ``METRICS``, ``EXTRA_METRICS``, the imbalance diagnostics ``DIAGNOSTIC_METRICS`` (NaN where undefined),
#: then the validation metrics, NaN and not reported without ``Protocol.val_fraction``) plus the accuracy
#: matrices so far (phase x class group); ``metrics()`` is the row
PhaseResult = make_dataclass(
    "PhaseResult", [("phase", int), ("classes_seen", int)]
    + [(k, float, field(default=math.nan)) for k in METRICS + EXTRA_METRICS + DIAGNOSTIC_METRICS]
    + [(k, list, field(default_factory=list)) for k in ("acc_matrix_cnn", "acc_matrix_nme")]
    + [(k, float, field(default=math.nan)) for k in VAL_METRICS], namespace={"metrics": _metrics})


def resolve_device(name: str) -> torch.device:
    """``Runtime.device`` as a torch device; a device this machine lacks is a ``ConfigError`` naming the field
    (raised before any output is written: ``lucir train`` calls it first)."""
    check_field("device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is invalid here: no CUDA device is available (allowed 'cpu' or 'auto')")
    n = torch.cuda.device_count()
    if name != "cuda" and int(name[5:]) >= n:
        raise ConfigError(f"device={name!r} is invalid here: this machine has {n} CUDA device(s) "
                          f"(allowed 'cuda', 'cuda:0'..'cuda:{n - 1}', 'cpu' or 'auto')")
    return torch.device(name)


#: cuBLAS's workspace setting for reproducible results (PyTorch "Reproducibility" notes)
CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic(on: bool) -> None:
    """``Runtime.deterministic``: deterministic algorithms (warn-only where an op has no deterministic
    kernel), cuDNN deterministic and not autotuned, ``CUBLAS_WORKSPACE_CONFIG`` (kept if already set; it
    takes effect only before cuBLAS is first used, so ``lucir train --deterministic`` sets it at start-up).
    Off: deterministic algorithms and cuDNN deterministic are switched off again (a reused worker process)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX512-BF16/AMX); without them PyTorch runs bf16
    convolutions through a generic fallback (docs/PERFORMANCE.md)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _phase_gen(seed: int, phase: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed + 1) * 1_000_003 + phase)


def build_model(cfg: Config, in_channels: int, head_spec: dict[str, Any]) -> IncrementalNet:
    """Backbone + head, initialised under a forked RNG seeded with the training seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.protocol.seed)
        gen = torch.Generator().manual_seed(cfg.protocol.seed)
        backbone = make_backbone(cfg.resolved_backbone(), in_channels, last_relu=not cfg.method.cosine,
                                 image_size=cfg.protocol.image_size)
        if head_spec["kind"] == "cosine":
            head = CosineHead(backbone.feature_dim, head_spec["old"], head_spec["new"], cfg.method.eta_init, gen)
        else:
            head = LinearHead(backbone.feature_dim, head_spec["classes"], gen)
    return IncrementalNet(backbone, head)


def _head_spec(model: IncrementalNet) -> dict[str, Any]:
    h = model.head
    if isinstance(h, CosineHead):
        return {"kind": "cosine", "old": h.old.shape[0], "new": h.new.shape[0]}
    return {"kind": "linear", "classes": h.weight.shape[0]}


def check_state(cfg: Config, state: dict) -> None:
    """A state resumes only the config it belongs to (phase 0: any config with its base key)."""
    for key in ("phase", "config", "base_key", "model", "head", "memory", "acc_cnn", "acc_nme", "results"):
        if key not in state:
            raise CheckpointError(f"state is missing {key!r}: not a lucir run state")
    partial = state.get("partial")
    if state["phase"] == -1 and not partial:
        raise CheckpointError("state of phase -1 without training in progress: not a lucir run state")
    if state["phase"] <= 0 and not (partial and partial["phase"] > 0):
        if state["base_key"] != cfg.base_key():
            raise CheckpointError(f"base-phase state has base key {state['base_key']} but this config's is "
                                  f"{cfg.base_key()}: it was trained with another dataset, order, base, "
                                  "backbone, schedule, seed or memory budget")
        return
    mine = cfg.identity()
    diff = sorted(k for k in set(mine) | set(state["config"]) if mine.get(k) != state["config"].get(k))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {state['config'].get(k)!r} vs config {mine.get(k)!r}" for k in diff)
        raise CheckpointError(f"checkpoint of phase {state['phase']} belongs to another configuration ({detail})")
    if state["phase"] >= cfg.protocol.phases:
        raise CheckpointError(f"checkpoint is already at the last phase ({state['phase']}); nothing to resume")


def _empty_state(cfg: Config) -> dict:
    """The phase-end fields before any phase completed (what a base-phase checkpoint extends)."""
    return {"phase": -1, "config": cfg.identity(), "base_key": cfg.base_key(), "model": None, "head": None,
            "memory": {}, "acc_cnn": [], "acc_nme": [], "results": [], "format": 1}


def prepare(cfg: Config, data=None, progress: bool = False) -> tuple[torch.device, Source]:
    """Threads, determinism, device, and the dataset (loaded unless given) seen through the class order."""
    p, rt = cfg.protocol, cfg.runtime
    if rt.threads:
        torch.set_num_threads(rt.threads)
    set_deterministic(rt.deterministic)
    device = resolve_device(rt.device)
    if rt.bf16 and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn("bf16=True on a CPU without AVX512-BF16/AMX: PyTorch falls back to a generic "
                      "convolution that is 7-14x slower than fp32 here (docs/PERFORMANCE.md)", stacklevel=2)
    if device.type == "cuda" and rt.gpu_memory_fraction:
        torch.cuda.set_per_process_memory_fraction(rt.gpu_memory_fraction, device)
    if data is None:
        data = load_dataset_for(cfg, progress=progress)
    if data.num_classes != p.num_classes:
        raise ValueError(f"num_classes={p.num_classes} does not match the dataset ({data.num_classes} classes)")
    return device, Source(data, class_order(p.num_classes, p.class_order_seed), device, rt.channels_last)


def run(config: Config, state: dict | None = None, *, data=None, progress: bool = False,
        on_epoch: Callable[[int, int, float], None] | None = None,
        on_checkpoint: Callable[[dict], None] | None = None) -> Iterator[tuple[PhaseResult, dict]]:
    """Yield ``(PhaseResult, state)`` for every phase from the one after ``state`` to the last
    (``state`` may hold a phase in progress: it goes on from its last epoch checkpoint): ``run_members``
    with one member."""
    if state is not None:
        check_state(config, state)
    part = state.get("partial") if state is not None else None
    if part:  # the member lists of run_members' checkpoint
        part = {**part, "head": [part["head"]], "model": [part["model"]]}

    def checkpoint(p: dict, last: list[dict]) -> None:
        one = {k: v for k, v in p.items() if k != "config_ids"}
        on_checkpoint({**last[0], "partial": {**one, "head": p["head"][0], "model": p["model"][0]}})

    for out in run_members([config], [state], data=data, progress=progress, partial=part,
                           on_epoch=(lambda ph, ep, loss: on_epoch(ph, ep, loss[0])) if on_epoch else None,
                           on_checkpoint=checkpoint if on_checkpoint else None):
        yield out[0]


def _rows(index_rows: list[torch.Tensor]) -> torch.Tensor:
    """The members' index lists as one tensor: 1-D when every row is the same (one shared batch), else N x L."""
    if all(torch.equal(index_rows[0], r) for r in index_rows[1:]):
        return index_rows[0]
    if any(len(r) != len(index_rows[0]) for r in index_rows):
        raise ValueError("members' training sets differ in size")
    return torch.stack(index_rows)


def _same_weights(nets: list[IncrementalNet]) -> bool:
    first = nets[0].state_dict()
    return all(torch.equal(v, net.state_dict()[k]) for net in nets[1:] for k, v in first.items())


def run_members(configs: list[Config], states: list[dict | None] | None = None, *, data=None, progress: bool = False,
                on_epoch: Callable[[int, int, list[float]], None] | None = None, partial: dict | None = None,
                on_checkpoint: Callable[[dict, list[dict]], None] | None = None,
                backend: str = "auto") -> Iterator[list[tuple[PhaseResult, dict]]]:
    """The run of N members over a leading member axis (N = 1: ``run``; N > 1: a fused array,
    ``lucir.fused``): yields, per phase, each member's ``(PhaseResult, state)``.  The members share the data,
    class order, schedule shape and seed (``lucir.fused.check_array``); ``states`` (one per member, all at
    the same completed phase, or None) continue them.  One batch stream from the phase generator serves every
    member (the same draws as each member's run alone); each member has its own model, loss, param group,
    exemplars and metrics.  ``backend`` (``Members``): "auto" = grouped on CUDA for N > 1, else loop.  An array
    whose members share the base key and start from nothing trains its base phase once, as one run.

    ``partial`` is the phase in progress: {"phase", "epoch", "head" and "model" (one per member),
    "optimizer", "scheduler", "gen", "train_seconds", "config_ids" (``lucir.fused.member_keys``: it resumes only
    the same members)}; ``on_checkpoint(partial, last states)`` gets one every ``checkpoint_every`` epochs and
    after a phase's last (the last states: each member's state at the end of the previous phase, its own
    identity).  A member state's own training in progress (a single run's ``partial``) is not used: the array
    redoes that phase."""
    cfg, n = configs[0], len(configs)
    p, ids = cfg.protocol, member_keys(configs)
    states = list(states) if states is not None else [None] * n
    if n > 1:
        check_array(configs)
    if len(states) != n:
        raise FusionError(f"{len(states)} states for {n} configs")
    for c, st in zip(configs, states):
        if st is not None:
            check_state(c, st)
    if len({-1 if st is None else max(st["phase"], -1) for st in states}) > 1:
        raise FusionError("members' states are at different phases; an array resumes together")
    if partial is not None and partial.get("config_ids", ids) != ids:
        raise FusionError("the array checkpoint belongs to other members")
    device, source = prepare(cfg, data, progress)
    if n > 1 and states[0] is None and partial is None and len({c.base_key() for c in configs}) == 1:
        # one shared base phase (equal base keys): trained once, as one run, and given to every member; its
        # checkpoints are the array's (every member the one model), from which the array goes on as N members
        [(result, base)] = next(run_members(
            configs[:1], data=source.data, on_epoch=(lambda ph, ep, loss: on_epoch(ph, ep, loss * n)) if on_epoch
            else None, on_checkpoint=(lambda part, _last: on_checkpoint(
                {**part, "head": part["head"] * n, "model": part["model"] * n, "config_ids": ids},
                [_empty_state(c) for c in configs])) if on_checkpoint else None))
        states = [{**base, "config": c.identity()} for c in configs]
        yield [(copy.deepcopy(result), st) for st in states]
    train_y, test_y, in_channels = source.train_y, source.test_y, source.data.image_shape()[0]
    held_out = validation_split(train_y, p.val_fraction, p.class_order_seed)
    pool = torch.nonzero(~held_out).flatten()  # the training images that may be trained on
    val_pool = torch.nonzero(held_out).flatten()
    groups = [list(p.phase_classes(t)) for t in range(p.phases + 1)]
    test_group_sizes = [int(sum((test_y == c).sum() for c in g)) for g in groups]
    if backend == "auto":
        backend = "grouped" if device.type == "cuda" and n > 1 else "loop"

    def on_device(nets):
        for net in nets:
            net.to(device)
            if cfg.runtime.channels_last:
                net.to(memory_format=torch.channels_last)
        return Members(nets, backend)

    nets, memories, acc_cnn, acc_nme, results, last = [], [], [], [], [], []
    for c, st in zip(configs, states):
        if st is None or st["phase"] < 0:
            nets.append(build_model(c, in_channels, {"kind": "cosine", "old": 0, "new": p.base_classes}
                                    if c.method.cosine else {"kind": "linear", "classes": p.base_classes}))
            memories.append(Memory())
            acc_cnn.append([]), acc_nme.append([]), results.append([])
            last.append(_empty_state(c))
        else:
            nets.append(build_model(c, in_channels, st["head"]))
            nets[-1].load_state_dict(st["model"])
            memories.append(Memory(st["memory"]))
            acc_cnn.append([list(r) for r in st["acc_cnn"]])
            acc_nme.append([list(r) for r in st["acc_nme"]])
            results.append([dict(r) for r in st["results"]])
            # this run's own identity, also when the state came from another config's base phase (same base
            # key): its checkpoints must resume this config, not the one that trained phase 0
            last.append({**{k: v for k, v in st.items() if k != "partial"},
                         "config": c.identity(), "base_key": c.base_key()})
    start = 0 if states[0] is None else max(states[0]["phase"] + 1, 0)
    model = on_device(nets)

    for phase in range(start, p.phases + 1):
        t_phase = time.perf_counter()
        gen = _phase_gen(p.seed, phase)  # every random draw of phase t comes from it
        new_classes, n_old, n_seen = groups[phase], p.seen_classes(phase - 1) if phase else 0, p.seen_classes(phase)
        new_idx = pool[torch.isin(train_y[pool], torch.tensor(new_classes))]
        ctxs = [learner.PhaseContext(phase, n_old, n_seen, c.lambda_at(phase) if phase else 0.0) for c in configs]
        # training data: new classes + exemplars (joint: all data of the seen classes)
        idx = _rows([pool[train_y[pool] < n_seen] if c.method.joint else
                     torch.cat([new_idx, mem.indices(c.quota(phase - 1))]) if phase else new_idx
                     for c, mem in zip(configs, memories)])
        if idx.dim() == 2 and not bool((train_y[idx] == train_y[idx[0]]).all()):
            raise ValueError("members' training sets differ in their labels position by position")
        ref_model = None
        if any(learner.needs_reference(c, phase) for c in configs):
            shared = n > 1 and idx.dim() == 1 and _same_weights(nets)  # one frozen forward for all members
            ref_model = Members([copy.deepcopy(net) for net in (nets[:1] if shared else nets)], backend).eval()
            for q in ref_model.parameters():
                q.requires_grad_(False)
        resume = None
        if partial is not None and partial["phase"] == phase:  # the phase in progress: its last checkpoint
            nets = [build_model(c, in_channels, h) for c, h in zip(configs, partial["head"])]
            for net, sd in zip(nets, partial["model"]):
                net.load_state_dict(sd)
            model = on_device(nets)
            gen.set_state(partial["gen"])
            resume = learner.TrainState(partial["epoch"], partial["optimizer"], partial["scheduler"])
        elif phase > 0:
            rows = [None] * n
            if cfg.method.imprint:
                f, _, y = learner.extract(model, source, "train", new_idx, cfg, device)
                rows = [imprint_rows([fi[y == c] for c in new_classes], net.head.weight()) for fi, net in zip(f, nets)]
            g0 = gen.get_state()
            for net, r in zip(nets, rows):  # every member the same draws (rows not imprinted)
                gen.set_state(g0)
                net.head.expand(len(new_classes), r, gen)
            model.to(device)

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.schedule.epochs, desc=f"phase {phase}/{p.phases}", unit="ep", leave=False,
                       initial=resume.epoch if resume else 0)

        def _on_epoch(ep, losses, _phase=phase):
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[0]:.3f}")
            if on_epoch is not None:
                on_epoch(_phase, ep, losses)

        before_s = partial["train_seconds"] if resume is not None else 0.0
        checkpoint = None
        if on_checkpoint is not None:
            def checkpoint(ts: learner.TrainState, _phase=phase, _t0=time.perf_counter(), _before=before_s):
                on_checkpoint({
                    "phase": _phase, "config_ids": ids, "epoch": ts.epoch,
                    "head": [_head_spec(net) for net in model.nets],
                    "model": [_cpu_state(net) for net in model.nets],
                    "optimizer": ts.optimizer, "scheduler": ts.scheduler, "gen": gen.get_state(),
                    "train_seconds": _before + time.perf_counter() - _t0}, last)

        train_s = before_s + learner.train_phase(model, ref_model, source, idx, configs, ctxs, gen, device,
                                                 _on_epoch, resume=resume, on_checkpoint=checkpoint)
        partial = None
        if bar is not None:
            bar.close()

        # herding: one batched feature pass over the new classes' training images
        quota = cfg.quota(phase)
        f, _, y = learner.extract(model, source, "train", new_idx, cfg, device)
        y = y.cpu()
        for fi, memory in zip(f, memories):
            fi = torch.nn.functional.normalize(fi, dim=1).cpu()
            for c in new_classes:
                pos = torch.nonzero(y == c).flatten()
                memory.add(c, new_idx[pos[herding(fi[pos], quota)]])

        if phase > 0 and any(c.method.cbf for c in configs):
            ex = _rows([mem.indices(quota) for mem in memories])
            train_s += learner.class_balanced_finetune(model, source, ex, configs, ctxs, gen, device)
        del ref_model

        # evaluation: NME means from the exemplars (and their flipped copies), CNN and NME on the test set
        ex = _rows([mem.indices(quota) for mem in memories])
        fe, _, ye = learner.extract(model, source, "train", ex, cfg, device)
        fe_flip = [None] * n
        if cfg.method.class_mean_flip != "none":
            fe_flip = learner.extract(model, source, "train", ex, cfg, device, flip=cfg.method.class_mean_flip)[0]
        ft, zt, yt = learner.extract(model, source, "test", torch.nonzero(test_y < n_seen).flatten(), cfg, device)
        val = None
        if len(val_pool):
            val = learner.extract(model, source, "train", val_pool[train_y[val_pool] < n_seen], cfg, device)
        out = []
        for i, (c, net) in enumerate(zip(configs, nets)):
            means = class_means(fe[i], ye, n_seen, fe_flip[i])
            res = score_phase(c, phase, groups, test_group_sizes, results[i], acc_cnn[i], acc_nme[i],
                              (ft[i], zt[i], yt), None if val is None else (val[0][i], val[1][i], val[2]), means,
                              train_seconds=train_s / n, lambda_t=ctxs[i].lambda_t if (phase and c.method.less_forget)
                              else 0.0, eta=float(net.head.eta.detach()) if isinstance(net.head, CosineHead)
                              else math.nan, exemplars=len(memories[i].indices(quota)), head_weight=_head_rows(net))
            out.append(res)
        for i, (c, res) in enumerate(zip(configs, out)):
            res.phase_seconds = (time.perf_counter() - t_phase) / n
            results[i].append(res.metrics())
            last[i] = phase_state(c, phase, nets[i], memories[i], acc_cnn[i], acc_nme[i], results[i])
        yield [(res, st) for res, st in zip(out, last)]


def score_phase(cfg: Config, phase: int, groups: list[list[int]], test_group_sizes: list[int],
                results: list[dict], acc_cnn: list[list[float]], acc_nme: list[list[float]], test, val, means,
                *, train_seconds: float, lambda_t: float, eta: float, exemplars: int,
                head_weight: torch.Tensor | None = None) -> PhaseResult:
    """CNN and NME accuracy of one phase (DESIGN §4) and the imbalance diagnostics (``lucir.metrics``):
    ``test``/``val`` are ``learner.extract`` outputs (features, logits, labels) of the seen classes' images
    (``val`` None: no validation split), ``means`` the NME class means, ``head_weight`` the classifier's raw
    weight rows (seen classes x feature dim; None: no weight norms).  Appends this phase's rows to
    ``acc_cnn``/``acc_nme`` (accuracy per class group) and returns the phase's metrics; ``phase_seconds`` is
    left for the caller."""
    n_seen = cfg.protocol.seen_classes(phase)
    n_old = cfg.protocol.seen_classes(phase - 1) if phase else 0
    ft, zt, yt = test
    masks = [torch.isin(yt, torch.tensor(groups[g], device=yt.device)) for g in range(phase + 1)]
    m: dict[str, float] = {}
    for k, scores, matrix in (("cnn", zt[:, :n_seen], acc_cnn), ("nme", nme_scores(ft, means), acc_nme)):
        pred = scores.argmax(1)
        matrix.append([pct(pred[mask] == yt[mask]) for mask in masks])
        m[f"acc_{k}"] = pct(pred == yt)
        m[f"acc_old_{k}"], m[f"acc_new_{k}"] = weighted_old_new(matrix[-1], test_group_sizes)
        m[f"avg_inc_acc_{k}"] = average_incremental_accuracy([r[f"acc_{k}"] for r in results] + [m[f"acc_{k}"]])
        m[f"top5_{k}"] = topk_accuracy(scores, yt, 5)
        m[f"old_as_new_{k}"], m[f"new_as_old_{k}"] = cross_group_shares(pred, yt, n_old, n_seen)
        m[f"forgetting_{k}"], m[f"bwt_{k}"] = forgetting(matrix, phase), backward_transfer(matrix, phase)
    if val is not None:
        fv, zv, yv = val
        for k, scores in (("cnn", zv[:, :n_seen]), ("nme", nme_scores(fv, means))):
            m[f"val_acc_{k}"] = pct(scores.argmax(1) == yv)
            m[f"val_avg_inc_acc_{k}"] = average_incremental_accuracy([r[f"val_acc_{k}"] for r in results]
                                                                     + [m[f"val_acc_{k}"]])
    f_old, f_new = old_new_norms(ft, yt, n_old)
    w_old = w_new = math.nan
    if head_weight is not None:
        w = head_weight.detach()
        w_old, w_new = mean_norm(w[:n_old]), mean_norm(w[n_old:n_seen])
    return PhaseResult(phase=phase, classes_seen=n_seen, train_seconds=train_seconds, phase_seconds=0.0, eta=eta,
                       lambda_t=lambda_t, exemplars=exemplars, weight_norm_old=w_old, weight_norm_new=w_new,
                       feature_norm_old=f_old, feature_norm_new=f_new, acc_matrix_cnn=[list(r) for r in acc_cnn],
                       acc_matrix_nme=[list(r) for r in acc_nme], **m)


def _head_rows(model: IncrementalNet) -> torch.Tensor:
    """The classifier's raw weight rows (cosine: old then new rows; FC: its weight), for the weight norms."""
    h = model.head
    return h.weight().detach() if isinstance(h, CosineHead) else h.weight.detach()


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights as contiguous CPU copies (training goes on changing the model in place)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def phase_state(cfg: Config, phase: int, model: IncrementalNet, memory: Memory, acc_cnn, acc_nme,
                results: list[dict]) -> dict:
    """The run state after ``phase`` (module docstring: its keys), with CPU copies of the weights."""
    return {
        "phase": phase, "config": cfg.identity(), "base_key": cfg.base_key(),
        "model": _cpu_state(model),
        "head": _head_spec(model), "memory": memory.to_dict(),
        "acc_cnn": [list(r) for r in acc_cnn], "acc_nme": [list(r) for r in acc_nme],
        "results": [dict(r) for r in results], "rng": torch.get_rng_state(), "format": 1,
    }
