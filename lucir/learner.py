"""One phase of training, class-balanced finetuning, feature passes and evaluation.

Training follows DESIGN §3: SGD with momentum and weight decay, MultiStepLR stepped after each
epoch (the reference's 80/40/40 epochs at 0.1/0.01/0.001), batches of new-class data and all
exemplars mixed by plain shuffling.  In phase t >= 1 the loss is
``CE(eta*s) [+ lambda_t*L_lf] [+ mr_weight*L_mr] [+ KD] [+ mimic scores]`` according to the
switches; with ``less_forget`` on the old-class rows (fc1) are frozen (not in the optimiser,
equivalent to the reference's lr 0 / weight decay 0 group).  The frozen model runs under
``torch.inference_mode`` on the same augmented batch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lucir import losses
from lucir.config import Config
from lucir.data import Source
from lucir.heads import CosineHead


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


def _sgd(params, lr, momentum, wd, device):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd,
                           foreach=device.type == "cuda")


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
                cfg: Config, ctx: PhaseContext, gen: torch.Generator, device: torch.device,
                on_epoch: Callable[[int, float], None] | None = None, resume: TrainState | None = None,
                on_checkpoint: Callable[[TrainState], None] | None = None) -> float:
    """Train ``model`` for one phase on ``indices`` (train positions); returns wall seconds.

    ``resume`` continues after its epoch with its optimiser (momentum buffers) and scheduler state;
    with the model weights and ``gen`` restored too, the rest of the phase is bit-identical to an
    uninterrupted one on the CPU.  ``on_checkpoint`` gets a ``TrainState`` (copies, on the CPU) every
    ``checkpoint_every`` epochs and after the last epoch."""
    s = cfg.schedule
    head = model.head
    freeze_old = (ctx.phase > 0 and isinstance(head, CosineHead) and cfg.method.less_forget
                  and not cfg.method.joint)
    params = [p for n, p in model.named_parameters() if not (freeze_old and n == "head.old")]
    if freeze_old:
        head.old.requires_grad_(False)
    opt = _sgd(params, s.lr, s.momentum, s.weight_decay, device)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(s.milestones), s.gamma)
    start = 0
    if resume is not None:
        opt.load_state_dict(resume.optimizer)
        sched.load_state_dict({**resume.scheduler, "milestones": sched.milestones})
        start = resume.epoch
    fwd = torch.compile(model) if cfg.runtime.compile else model
    every = cfg.runtime.checkpoint_every
    t0 = time.perf_counter()
    for epoch in range(start, s.epochs):
        model.train()
        total = torch.zeros((), device=device)
        steps = 0
        for x, y in source.train_batches(indices, s.batch_size, gen):
            ref_out = None
            with autocast(cfg, device):
                if ref_model is not None:
                    with torch.inference_mode():
                        ref_out = ref_model(x)
                    ref_out = tuple(t.clone() for t in ref_out)  # usable in autograd
                out = fwd(x)
            loss = phase_loss(cfg, ctx, out, ref_out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps += 1
        sched.step()
        mean_loss = float(total) / max(steps, 1)
        if not torch.isfinite(torch.tensor(mean_loss)):
            raise TrainingDivergedError(f"loss is {mean_loss} in phase {ctx.phase}, epoch {epoch + 1} "
                                        f"(lr={s.lr}, preset={cfg.method.preset}); lower lr or check the data")
        if on_epoch:
            on_epoch(epoch, mean_loss)
        if on_checkpoint is not None and every and ((epoch + 1) % every == 0 or epoch + 1 == s.epochs):
            on_checkpoint(TrainState(epoch + 1, _cpu_copy(opt.state_dict()),
                                     {k: v for k, v in sched.state_dict().items() if k != "milestones"}))
    if freeze_old:
        head.old.requires_grad_(True)
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


def class_balanced_finetune(model: nn.Module, source: Source, exemplars: torch.Tensor, cfg: Config,
                            ctx: PhaseContext, gen: torch.Generator, device: torch.device) -> float:
    """CBF (LUCIR_REFERENCE §4, ``--ft_flag 2``): exemplars only, backbone and BN frozen (eval mode),
    fc1 and fc2 trainable at ``cbf_lr`` (x gamma at the CBF milestones), eta frozen, same loss.

    The less-forget term is constant here (features do not change), so neither it nor the frozen
    model's forward pass is computed.
    """
    s = cfg.schedule
    head = model.head
    params = [head.old, head.new]
    opt = _sgd(params, s.cbf_lr, s.momentum, s.cbf_weight_decay, device)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(s.cbf_milestones), s.gamma)
    t0 = time.perf_counter()
    model.eval()
    head.eta.requires_grad_(False)
    for epoch in range(s.cbf_epochs):
        for x, y in source.train_batches(exemplars, s.batch_size, gen):
            with torch.no_grad(), autocast(cfg, device):
                f = model.backbone(x)
            scores, logits = head(f.float())
            loss = nn.functional.cross_entropy(logits, y)
            if cfg.method.margin_ranking:
                loss = loss + cfg.method.mr_weight * losses.margin_ranking(scores, y, ctx.n_old,
                                                                           cfg.method.margin, cfg.method.K)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"loss is {float(loss)} in phase {ctx.phase}, CBF epoch {epoch + 1}")
    head.eta.requires_grad_(True)
    return time.perf_counter() - t0


@torch.inference_mode()
def extract(model: nn.Module, source: Source, split: str, indices: torch.Tensor | None, cfg: Config,
            device: torch.device, flip: str = "none"):
    """One batched pass (eval transform): returns (features, logits, labels) on ``device``.
    ``flip`` ("channels", "mirror", "none") is applied to the images first (``Source.eval_batches``)."""
    model.eval()
    feats, logits, labels = [], [], []
    for x, y in source.eval_batches(split, indices, cfg.runtime.eval_batch_size, flip=flip):
        with autocast(cfg, device):
            f, _, z = model(x)
        feats.append(f.float())
        logits.append(z.float())
        labels.append(y)
    if not feats:
        return torch.empty(0, model.backbone.feature_dim, device=device), torch.empty(0, device=device), \
            torch.empty(0, dtype=torch.int64, device=device)
    return torch.cat(feats), torch.cat(logits), torch.cat(labels)
