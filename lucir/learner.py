"""One phase of training, class-balanced finetuning, feature passes and evaluation.

Training follows DESIGN §3: SGD with momentum and weight decay, MultiStepLR stepped after each
epoch (the reference's 80/40/40 epochs at 0.1/0.01/0.001), batches of new-class data and all
exemplars mixed by plain shuffling.  In phase t >= 1 the loss is
``CE(eta*s) [+ lambda_t*L_lf] [+ mr_weight*L_mr] [+ KD] [+ mimic scores]`` according to the
switches; with ``less_forget`` on the old-class rows (fc1) are frozen (not in the optimiser,
equivalent to the reference's lr 0 / weight decay 0 group).  The frozen model runs under
``torch.inference_mode`` on the same augmented batch.  Every function takes one ``IncrementalNet``
with its config or a ``lucir.models.Members`` array with one config per member (N = 1 is the run).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lucir import losses
from lucir.config import Config
from lucir.data import Source
from lucir.heads import CosineHead
from lucir.models import Members


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the phase and the epoch."""


@dataclass
class PhaseContext:
    phase: int
    n_old: int  # classes of earlier phases
    n_seen: int  # classes seen after this phase
    lambda_t: float  # less-forget weight of this phase (Config.lambda_at)


def autocast(cfg: Config, device: torch.device):
    if cfg.runtime.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sgd(groups: list[dict], momentum: float, device: torch.device) -> torch.optim.SGD:
    """torch's SGD with one param group per member (its own lr and weight decay)."""
    return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, foreach=device.type == "cuda")


def _members(model: nn.Module, cfg, ctx):
    """(member nets, configs, contexts, whether one plain model was given) of a ``Members`` array or of one
    ``IncrementalNet`` with its config: the functions below train both the same way."""
    if isinstance(model, Members):
        return list(model.nets), list(cfg), list(ctx), False
    return [model], [cfg], [ctx], True


def _outputs(model: nn.Module, x: torch.Tensor) -> list:
    return model(x) if isinstance(model, Members) or isinstance(getattr(model, "_orig_mod", None), Members) \
        else [model(x)]


def phase_loss(cfg: Config, ctx: PhaseContext, out, ref_out, y: torch.Tensor) -> torch.Tensor:
    """The objective of one batch (DESIGN §3 'Losses in phase t >= 1', 'Losses of the lower rungs')."""
    f, scores, logits = out
    loss = nn.functional.cross_entropy(logits.float(), y)
    if ctx.phase == 0 or cfg.method.joint:
        return loss
    m = cfg.method
    if ref_out is not None:
        f_ref, s_ref, z_ref = ref_out
        if m.less_forget:
            loss = loss + ctx.lambda_t * losses.less_forget(f.float(), f_ref.float())
        if m.kd:
            loss = loss + losses.knowledge_distillation(logits, z_ref, ctx.n_old, m.kd_T, m.kd_beta)
        if m.mimic_scores:
            loss = loss + m.ms_weight * losses.mimic_scores(scores, s_ref, ctx.n_old)
    if m.margin_ranking:
        loss = loss + m.mr_weight * losses.margin_ranking(scores.float(), y, ctx.n_old, m.margin, m.K)
    return loss


def needs_reference(cfg: Config, phase: int) -> bool:
    m = cfg.method
    return phase > 0 and not m.joint and (m.less_forget or m.kd or m.mimic_scores)


@dataclass
class TrainState:
    """Where training stands inside a phase: epochs done, optimiser and scheduler state (``run``
    saves it with the model and the phase's generator state in a mid-phase checkpoint)."""

    epoch: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None


def train_phase(model: nn.Module, ref_model: nn.Module | None, source: Source, indices: torch.Tensor,
                cfg, ctx, gen: torch.Generator, device: torch.device,
                on_epoch: Callable | None = None, resume: TrainState | None = None,
                on_checkpoint: Callable[[TrainState], None] | None = None) -> float:
    """Train ``model`` for one phase on ``indices`` (train positions; an N x L matrix: a batch per member);
    returns wall seconds.  ``model`` is one ``IncrementalNet`` (``cfg``, ``ctx`` its config and phase
    context) or a ``Members`` array (``cfg``, ``ctx`` one per member): one batch stream from ``gen`` for every
    member, each member's own loss (``phase_loss``; their sum is minimised, the members' parameters being
    disjoint) and its own param group of torch's SGD (lr, weight decay; frozen old rows left out).
    ``ref_model`` is the frozen model: one output per member, or one shared by all (every member starts the
    phase from it on the same batch).  ``on_epoch(epoch, mean loss)`` gets a float for one model, a list for
    an array.

    ``resume`` continues after its epoch with its optimiser (momentum buffers) and scheduler state;
    with the model weights and ``gen`` restored too, the rest of the phase is bit-identical to an
    uninterrupted one on the CPU.  ``on_checkpoint`` gets a ``TrainState`` (copies, on the CPU) every
    ``checkpoint_every`` epochs and after the last epoch."""
    nets, configs, ctxs, single = _members(model, cfg, ctx)
    n, s = len(nets), configs[0].schedule
    groups, frozen = [], []
    for net, c, x in zip(nets, configs, ctxs):
        freeze_old = (x.phase > 0 and isinstance(net.head, CosineHead) and c.method.less_forget
                      and not c.method.joint)
        if freeze_old:  # the reference's lr 0 / weight decay 0 group for fc1: left out of the optimiser
            net.head.old.requires_grad_(False)
            frozen.append(net.head.old)
        groups.append({"params": [p for k, p in net.named_parameters() if not (freeze_old and k == "head.old")],
                       "lr": c.schedule.lr, "weight_decay": c.schedule.weight_decay})
    opt = _sgd(groups, s.momentum, device)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(s.milestones), s.gamma)
    start = 0
    if resume is not None:
        opt.load_state_dict(resume.optimizer)
        sched.load_state_dict({**resume.scheduler, "milestones": sched.milestones})
        start = resume.epoch
    fwd = torch.compile(model) if configs[0].runtime.compile else model
    every = configs[0].runtime.checkpoint_every
    t0 = time.perf_counter()
    for epoch in range(start, s.epochs):
        model.train()
        total = torch.zeros(n, device=device)
        steps = 0
        for x, y in source.train_batches(indices, s.batch_size, gen):
            ref_outs = [None] * n
            with autocast(configs[0], device):
                if ref_model is not None:
                    with torch.inference_mode():
                        ref_outs = _outputs(ref_model, x)
                    ref_outs = [tuple(t.clone() for t in o) for o in ref_outs] * (n // len(ref_outs))
                outs = _outputs(fwd, x)
            member_losses = [phase_loss(c, cx, o, r, y) for c, cx, o, r in zip(configs, ctxs, outs, ref_outs)]
            opt.zero_grad(set_to_none=True)
            sum(member_losses[1:], member_losses[0]).backward()
            opt.step()
            total += torch.stack(member_losses).detach()
            steps += 1
        sched.step()
        mean = [v / max(steps, 1) for v in total.tolist()]
        for i, (v, c) in enumerate(zip(mean, configs)):
            if not math.isfinite(v):
                who = f"array member {i}, " if n > 1 else ""
                raise TrainingDivergedError(f"loss is {v} in phase {ctxs[i].phase}, epoch {epoch + 1} ({who}"
                                            f"lr={c.schedule.lr}, preset={c.method.preset}); lower lr or check the data")
        if on_epoch:
            on_epoch(epoch, mean[0] if single else mean)
        if on_checkpoint is not None and every and ((epoch + 1) % every == 0 or epoch + 1 == s.epochs):
            on_checkpoint(TrainState(epoch + 1, _cpu_copy(opt.state_dict()),
                                     {k: v for k, v in sched.state_dict().items() if k != "milestones"}))
    for p in frozen:
        p.requires_grad_(True)
    return time.perf_counter() - t0


def _cpu_copy(obj):
    """A deep copy with every tensor cloned to the CPU (optimiser state keeps changing in place)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def class_balanced_finetune(model: nn.Module, source: Source, exemplars: torch.Tensor, cfg, ctx,
                            gen: torch.Generator, device: torch.device) -> float:
    """CBF (LUCIR_REFERENCE §4, ``--ft_flag 2``): exemplars only, backbone and BN frozen (eval mode),
    fc1 and fc2 trainable at ``cbf_lr`` (x gamma at the CBF milestones), eta frozen, same loss.  For a
    ``Members`` array (``cfg``, ``ctx`` per member, ``exemplars`` 1-D or N x L) the members with ``cbf`` are
    finetuned, each in its own param group, on one batch stream.

    The less-forget term is constant here (features do not change), so neither it nor the frozen
    model's forward pass is computed.
    """
    nets, configs, ctxs, single = _members(model, cfg, ctx)
    on = [i for i, c in enumerate(configs) if single or c.method.cbf]
    s = configs[0].schedule
    heads = [nets[i].head for i in on]
    opt = _sgd([{"params": [h.old, h.new], "lr": configs[i].schedule.cbf_lr,
                 "weight_decay": configs[i].schedule.cbf_weight_decay} for i, h in zip(on, heads)], s.momentum, device)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(s.cbf_milestones), s.gamma)
    t0 = time.perf_counter()
    model.eval()
    for h in heads:
        h.eta.requires_grad_(False)
    for epoch in range(s.cbf_epochs):
        for x, y in source.train_batches(exemplars, s.batch_size, gen):
            with torch.no_grad(), autocast(configs[0], device):
                fs = model.features(x) if isinstance(model, Members) else [model.backbone(x)]
            member_losses = []
            for i, h in zip(on, heads):
                m = configs[i].method
                scores, logits = h(fs[i].float())
                loss = nn.functional.cross_entropy(logits, y)
                if m.margin_ranking:
                    loss = loss + m.mr_weight * losses.margin_ranking(scores, y, ctxs[i].n_old, m.margin, m.K)
                member_losses.append(loss)
            opt.zero_grad(set_to_none=True)
            sum(member_losses[1:], member_losses[0]).backward()
            opt.step()
        sched.step()
        for loss in member_losses:
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"loss is {float(loss)} in phase {ctxs[0].phase}, CBF epoch {epoch + 1}")
    for h in heads:
        h.eta.requires_grad_(True)
    return time.perf_counter() - t0


@torch.inference_mode()
def extract(model: nn.Module, source: Source, split: str, indices: torch.Tensor | None, cfg: Config,
            device: torch.device, flip: str = "none"):
    """One batched pass (eval transform): returns (features, logits, labels) on ``device``; for a
    ``Members`` array (``indices`` 1-D or N x L) features and logits are lists, one per member.
    ``flip`` ("channels", "mirror", "none") is applied to the images first (``Source.eval_batches``)."""
    model.eval()
    n = len(model.nets) if isinstance(model, Members) else 1
    feats, logits, labels = [[] for _ in range(n)], [[] for _ in range(n)], []
    for x, y in source.eval_batches(split, indices, cfg.runtime.eval_batch_size, flip=flip):
        with autocast(cfg, device):
            outs = _outputs(model, x)
        for i, (f, _, z) in enumerate(outs):
            feats[i].append(f.float())
            logits[i].append(z.float())
        labels.append(y)
    if not labels:
        dim = model.feature_dim if isinstance(model, Members) else model.backbone.feature_dim
        feats = [[torch.empty(0, dim, device=device)]] * n
        logits = [[torch.empty(0, device=device)]] * n
        labels = [torch.empty(0, dtype=torch.int64, device=device)]
    f, z = [torch.cat(v) for v in feats], [torch.cat(v) for v in logits]
    return (f, z, torch.cat(labels)) if isinstance(model, Members) else (f[0], z[0], torch.cat(labels))
