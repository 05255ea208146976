"""Fused trial arrays: N trials of one protocol trained as one model (HFTA: Wang et al., "Horizontally
Fused Training Array", MLSys 2021), so that a sweep's trials that share the data, class order, schedule
and seed cost one pass of the data instead of N.

* **Model** (``FusedNet``): every ``Conv2d`` of the N backbones becomes one grouped convolution over the
  N stacked models (``FusedConv2d``; N x C_out filters, N groups), every ``BatchNorm2d`` one BatchNorm over
  the N x C channels (each trial keeps its own batch and running statistics, which ``torch.func.vmap``
  cannot), and the N cosine heads one batched head with one learnable eta per trial
  (``FusedCosineHead``; old/new rows as ``CosineHead``).  Activations are B x (N C) x H x W; features,
  cosines and logits come out member-major, N x B x D and N x B x classes.  The fused state dict has the
  unfused model's keys with the N members stacked on dim 0, so ``member_state`` gives back each trial's
  own ``IncrementalNet`` state and a fused array's phase states are ordinary ``lucir.run`` states.
* **Per-trial hyperparameters as vectors** (``ArrayParams``) inside the LUCIR loss (``fused_loss``): the
  adaptive lambda, margin m, K (top-K with the largest K and a mask), the margin-ranking and mimic-score
  weights, and switches that differ between trials (less-forget, margin ranking, mimic scores, CBF) as 0/1
  weights where the graph is the same; freezing the old rows (less-forget) and CBF on/off are per-trial
  learning-rate factors of ``FusedSGD`` (SGD with momentum, one lr and weight decay per trial).
* **Shared work once**: one augmented batch for all N (the same generator draws as each unfused run,
  ``Source.train_batches`` with an N x L index matrix stacks the rows' images on the channel axis; when
  every row is the same, one B x C x H x W batch that the first convolution reads N times); a shared base
  phase (equal ``Config.base_key``) is trained once, unfused; in phase 1 the frozen model is that shared
  base model, so its forward runs once for all N; herding features, imprinting and evaluation are fused
  passes over the shared images.

Equivalence: each trial gets the result of its own ``lucir.run`` up to summation order (tests: fp64 weights
after SGD steps with ``torch.allclose``; accuracy matrices of a reduced digits run).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
import torch.nn.functional as F

from lucir import learner
from lucir.config import Config
from lucir.heads import CosineHead, _uniform_rows, imprint_rows
from lucir.memory import Memory, class_means, herding
from lucir.models import IncrementalNet
from lucir.run import (PhaseResult, RunEnv, build_model, check_state, phase_inputs, phase_state, prepare, run,
                       score_phase)

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


# ---------------------------------------------------------------------------------------------- model
class FusedConv2d(nn.Conv2d):
    """N convolutions as one grouped convolution: weight (N C_out, C_in / g, k, k), N g groups.  A B x C_in
    input (the same batch for every member, e.g. the images of the first layer) is read by all N filters
    banks with one ungrouped convolution over the same weight tensor."""

    def __init__(self, conv: nn.Conv2d, n: int):
        super().__init__(n * conv.in_channels, n * conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, n * conv.groups, conv.bias is not None, conv.padding_mode)
        self.members, self.member_in, self.member_groups = n, conv.in_channels, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.members > 1 and x.shape[1] == self.member_in and self.member_groups == 1:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, 1)
        return super().forward(x)


def fuse_backbone(backbones: list[nn.Module]) -> nn.Module:
    """One backbone of N stacked members: ``Conv2d`` -> ``FusedConv2d``, ``BatchNorm2d(C)`` ->
    ``BatchNorm2d(N C)``; ReLU, residual adds and pooling act per channel and are kept as they are."""
    n = len(backbones)
    fused = copy.deepcopy(backbones[0])
    for name, mod in list(fused.named_modules()):
        if isinstance(mod, nn.Conv2d):
            new = FusedConv2d(mod, n)
        elif isinstance(mod, nn.BatchNorm2d):
            new = nn.BatchNorm2d(n * mod.num_features, mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
        elif any(True for _ in mod.parameters(recurse=False)):
            raise FusionError(f"cannot fuse layer {name} ({type(mod).__name__})")
        else:
            continue
        parent = fused.get_submodule(name.rpartition(".")[0]) if "." in name else fused
        setattr(parent, name.rpartition(".")[2], new)
    ref = next(backbones[0].parameters())
    fused.to(ref.device, ref.dtype)
    sds = [b.state_dict() for b in backbones]
    fused.load_state_dict({k: (v if k.endswith("num_batches_tracked") else torch.cat([sd[k] for sd in sds]))
                           for k, v in sds[0].items()})
    return fused


class FusedCosineHead(nn.Module):
    """N cosine heads (``CosineHead``): rows ``old`` (N x n_old x D) and ``new`` (N x n_new x D), eta (N,);
    scores[n] = cos(f[n], w[n]) and logits[n] = eta[n] scores[n] (paper Eq. 4 per trial)."""

    def __init__(self, heads: list[CosineHead]):
        super().__init__()
        self.old = nn.Parameter(torch.stack([h.old.detach() for h in heads]).clone())
        self.new = nn.Parameter(torch.stack([h.new.detach() for h in heads]).clone())
        self.eta = nn.Parameter(torch.stack([h.eta.detach() for h in heads]).clone())

    def weight(self) -> torch.Tensor:
        return torch.cat([self.old, self.new], 1)

    def forward(self, f: torch.Tensor):
        scores = torch.bmm(F.normalize(f, dim=2), F.normalize(self.weight(), dim=2).transpose(1, 2))
        return scores, self.eta[:, None, None] * scores

    @torch.no_grad()
    def expand(self, rows: torch.Tensor) -> None:
        """Start a phase (``CosineHead.expand`` per trial): all rows become old, ``rows`` (N x n_new x D) new."""
        self.old = nn.Parameter(self.weight().detach().clone())
        self.new = nn.Parameter(rows.to(self.old.device, self.old.dtype).clone())


class MemberBackbones(nn.Module):
    """The ``loop`` backend: the N backbones kept apart and run one after another, each on its own slice
    of the B x (N C) batch (or all on the shared B x C batch), features concatenated to B x (N D) as the
    grouped backbone gives them.  Every member computes exactly what it computes alone; the array still
    shares the batch, the frozen model's forward, the head, the loss and the evaluation passes.  On the CPU
    this is faster than grouped convolutions over N-times larger activations (docs/PERFORMANCE.md)."""

    def __init__(self, backbones: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(copy.deepcopy(b) for b in backbones)
        first = next(m for m in backbones[0].modules() if isinstance(m, nn.Conv2d))
        self.member_in = first.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.members)
        if n > 1 and x.shape[1] == n * self.member_in:
            cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            fmt = torch.channels_last if cl else torch.contiguous_format
            xs = [c.contiguous(memory_format=fmt) for c in x.chunk(n, 1)]
        else:
            xs = [x] * n
        return torch.cat([m(xi) for m, xi in zip(self.members, xs)], 1)


#: how a ``FusedNet`` runs its N backbones: one grouped model, or one after another ("auto": loop on the
#: CPU, grouped on CUDA)
BACKENDS = ("auto", "grouped", "loop")


class FusedNet(nn.Module):
    """N ``IncrementalNet``s with cosine heads as one model; ``forward`` returns member-major
    (features N x B x D, cosines N x B x C, logits N x B x C) for a B x C or B x (N C) image batch.
    ``backend`` "grouped": ``fuse_backbone`` (grouped convolutions, one BatchNorm over N C channels);
    "loop": ``MemberBackbones``."""

    def __init__(self, nets: list[IncrementalNet], backend: str = "grouped"):
        super().__init__()
        for net in nets:
            if not isinstance(net.head, CosineHead):
                raise FusionError("fused arrays fuse cosine heads only")
        if backend not in ("grouped", "loop"):
            raise FusionError(f"backend={backend!r} is invalid: allowed 'grouped' or 'loop'")
        self.n, self.backend = len(nets), backend
        self.backbone = (fuse_backbone([net.backbone for net in nets]) if backend == "grouped"
                         else MemberBackbones([net.backbone for net in nets]))
        self.head = FusedCosineHead([net.head for net in nets])
        self.feature_dim = nets[0].backbone.feature_dim

    def member_of(self) -> dict[str, int]:
        """Parameter name -> member, for the parameters that belong to one member (the loop backend's)."""
        if self.backend != "loop":
            return {}
        return {k: int(k.split(".")[2]) for k, _ in self.named_parameters() if k.startswith("backbone.members.")}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return f.view(f.shape[0], self.n, -1).transpose(0, 1)

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        scores, logits = self.head(f)
        return f, scores, logits

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s ``IncrementalNet`` state dict (CPU copies)."""
        out = {}
        if self.backend == "loop":
            for k, v in self.backbone.members[i].state_dict().items():
                out[f"backbone.{k}"] = v.detach().to("cpu", copy=True).contiguous()
        for k, v in self.state_dict().items():
            if k.startswith("backbone.members."):
                continue
            if k.endswith("num_batches_tracked"):
                t = v
            elif k.startswith("head."):
                t = v[i]
            else:
                t = v.unflatten(0, (self.n, -1))[i]
            out[k] = t.detach().to("cpu", copy=True).contiguous()
        return out

    def members_equal(self) -> bool:
        """Whether every member holds the same weights and statistics (e.g. copies of one base model)."""
        first = self.member_state(0)
        for i in range(1, self.n):
            other = self.member_state(i)
            if any(not torch.equal(v, other[k]) for k, v in first.items() if not k.endswith("num_batches_tracked")):
                return False
        return True


# ---------------------------------------------------------------------------------------------- optimiser
class FusedSGD:
    """``torch.optim.SGD`` (momentum, no dampening, no Nesterov) over stacked parameters with one learning
    rate and weight decay per member: d = g + wd_n p; b = d on the first step, else mu b + d; p -= lr_n b.
    ``scale`` multiplies a parameter's learning rate per member (0: frozen, as a parameter left out of the
    optimiser: the reference's lr-0 group for the old rows, LUCIR_REFERENCE §3)."""

    def __init__(self, params: dict[str, nn.Parameter], n: int, lr: torch.Tensor, momentum: float,
                 weight_decay: torch.Tensor, scale: dict[str, torch.Tensor] | None = None,
                 member_of: dict[str, int] | None = None):
        self.params, self.n, self.momentum = params, n, momentum
        self.lr, self.weight_decay = lr.clone(), weight_decay
        self.scale = scale or {}
        self.member_of = member_of or {}  # parameters of one member (loop backend): that member's scalars
        self.buffers: dict[str, torch.Tensor] = {}
        self._factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (lr, wd) on the device

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def _per_member(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.device, like.dtype).view(self.n, *([1] * (like.dim() - 1)))

    def _factors_of(self, name: str, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._factors.get(name)
        if f is None:  # copied to the device once per learning rate, not per step
            lr = self.lr * self.scale[name] if name in self.scale else self.lr
            f = self._factors[name] = (self._per_member(lr, w), self._per_member(self.weight_decay, w))
        return f

    @torch.no_grad()
    def step(self) -> None:
        for name, p in self.params.items():
            if p.grad is None:
                continue
            if name in self.member_of:  # torch.optim.SGD's single-tensor update, operation for operation
                i = self.member_of[name]
                lr = float(self.lr[i] * (self.scale[name][i] if name in self.scale else 1.0))
                d = p.grad.add(p, alpha=float(self.weight_decay[i])) if float(self.weight_decay[i]) else p.grad
                buf = self.buffers.get(name)
                if buf is None:
                    buf = self.buffers[name] = torch.clone(d).detach()
                else:
                    buf.mul_(self.momentum).add_(d)
                p.add_(buf, alpha=-lr)
                continue
            w, g = p.unflatten(0, (self.n, -1)), p.grad.unflatten(0, (self.n, -1))
            lr, wd = self._factors_of(name, w)
            d = g + wd * w
            buf = self.buffers.get(name)
            if buf is None:
                buf = self.buffers[name] = d.clone()
            else:
                buf.mul_(self.momentum).add_(d)
            w.sub_(lr * buf)

    def decay(self, gamma: float) -> None:
        """A ``MultiStepLR`` milestone: every member's learning rate times ``gamma``."""
        self.lr = self.lr * gamma
        self._factors.clear()

    def state_dict(self) -> dict:
        """Learning rates and momentum buffers (CPU copies), for a mid-phase checkpoint."""
        return {"lr": self.lr.clone(), "buffers": {k: v.detach().to("cpu", copy=True) for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.lr = state["lr"].clone()
        self._factors.clear()
        self.buffers = {}
        for k, v in state["buffers"].items():
            like = self.params[k].unflatten(0, (self.n, -1)) if k not in self.member_of else self.params[k]
            self.buffers[k] = v.to(like.device, like.dtype).reshape(like.shape).clone()


# ---------------------------------------------------------------------------------------------- losses
@dataclass
class ArrayParams:
    """Per-member loss weights of one phase (N-vectors): lambda_t (0 without less-forget), mr
    (margin-ranking weight, 0 without it), margin, K, ms (mimic-score weight, 0 without it)."""

    lambda_t: torch.Tensor
    mr: torch.Tensor
    margin: torch.Tensor
    K: torch.Tensor
    ms: torch.Tensor
    # decided on the host once per phase (no device sync per step): which terms any member has, max K
    has_lambda: bool = False
    has_mr: bool = False
    has_ms: bool = False
    kmax: int = 1

    @classmethod
    def of(cls, configs: list[Config], phase: int, device: torch.device) -> "ArrayParams":
        def vals(f):
            return [f(c) for c in configs]

        lambda_t = vals(lambda c: c.lambda_at(phase) if phase and c.method.less_forget else 0.0)
        mr = vals(lambda c: c.method.mr_weight if c.method.margin_ranking else 0.0)
        ms = vals(lambda c: c.method.ms_weight if c.method.mimic_scores else 0.0)
        K = vals(lambda c: c.method.K)

        def vec(v, dtype=torch.float64):
            return torch.tensor(v, dtype=dtype, device=device)

        return cls(lambda_t=vec(lambda_t), mr=vec(mr), margin=vec(vals(lambda c: c.method.margin)),
                   K=vec(K, torch.int64),
                   ms=vec(ms), has_lambda=any(lambda_t), has_mr=any(mr), has_ms=any(ms), kmax=max(K))


def margin_ranking_fused(scores: torch.Tensor, y: torch.Tensor, n_old: int, margin: torch.Tensor,
                         K: torch.Tensor, kmax: int | None = None) -> torch.Tensor:
    """``losses.margin_ranking`` per member (N-vector): top-max(K) new-class cosines, member n masked to
    its own K; mean over (old samples x K_n) of max(0, m_n - s_y + s_k)."""
    n = scores.shape[0]
    old = y < n_old
    if not bool(old.any()):
        return scores.sum((1, 2)) * 0.0
    s = scores[:, old]
    gt = s.gather(2, y[old].view(1, -1, 1).expand(n, -1, 1))
    kmax = int(K.max()) if kmax is None else kmax
    hard = s[:, :, n_old:].topk(kmax, dim=2).values
    mask = (torch.arange(kmax, device=s.device)[None, :] < K[:, None]).to(s.dtype)[:, None, :]
    hinge = F.relu(margin.to(s.dtype)[:, None, None] - gt + hard) * mask
    return hinge.sum((1, 2)) / (s.shape[1] * K.to(s.dtype))


def fused_loss(hp: ArrayParams, phase: int, n_old: int, out, ref_out, y: torch.Tensor) -> torch.Tensor:
    """``learner.phase_loss`` of every member as an N-vector (its sum is what is minimised: the members'
    parameters are disjoint, so each gets its own loss's gradient): CE(eta s) + lambda_t L_lf + ms L_ms + mr L_mr."""
    f, scores, logits = out
    n, b, c = logits.shape
    loss = F.cross_entropy(logits.float().reshape(n * b, c), y.repeat(n), reduction="none").view(n, b).mean(1)
    if phase == 0:
        return loss
    dt = loss.dtype
    if ref_out is not None:
        f_ref, s_ref, _ = ref_out
        if hp.has_lambda:
            cos = F.cosine_similarity(f.float(), f_ref.float().expand(n, -1, -1), dim=2)
            loss = loss + hp.lambda_t.to(dt) * (1.0 - cos).mean(1)
        if hp.has_ms:
            diff = scores[:, :, :n_old].float() - s_ref[..., :n_old].float()
            loss = loss + hp.ms.to(dt) * diff.pow(2).mean((1, 2)) * n_old
    if hp.has_mr:
        loss = loss + hp.mr.to(dt) * margin_ranking_fused(scores.float(), y, n_old, hp.margin, hp.K, hp.kmax)
    return loss


# ---------------------------------------------------------------------------------------------- passes
def _rows(index_rows: list[torch.Tensor]) -> torch.Tensor:
    """The members' index lists as one tensor: 1-D when every row is the same (one shared batch),
    else N x L."""
    if all(torch.equal(index_rows[0], r) for r in index_rows[1:]):
        return index_rows[0]
    return torch.stack(index_rows)


@torch.inference_mode()
def extract_fused(model: FusedNet, source, split: str, indices: torch.Tensor, cfg: Config, device: torch.device,
                  flip: str = "none"):
    """``learner.extract`` for an array: (features N x L x D, logits N x L x C, labels L)."""
    model.eval()
    feats, logits, labels = [], [], []
    for x, y in source.eval_batches(split, indices, cfg.runtime.eval_batch_size, flip=flip):
        with learner.autocast(cfg, device):
            f, _, z = model(x)
        feats.append(f.float())
        logits.append(z.float())
        labels.append(y)
    if not feats:
        return (torch.empty(model.n, 0, model.feature_dim, device=device), torch.empty(model.n, 0, 0, device=device),
                torch.empty(0, dtype=torch.int64, device=device))
    return torch.cat(feats, 1), torch.cat(logits, 1), torch.cat(labels)


def _check_labels(source, idx: torch.Tensor) -> None:
    if idx.dim() == 2 and not bool((source.train_y[idx] == source.train_y[idx[0]]).all()):
        raise FusionError("members' training sets differ in their labels position by position")


def train_fused_phase(model: FusedNet, ref: nn.Module | None, source, idx: torch.Tensor, configs: list[Config],
                      phase: int, n_old: int, gen: torch.Generator, device: torch.device,
                      on_epoch: Callable[[int, list[float]], None] | None = None, resume: dict | None = None,
                      on_checkpoint: Callable[[int, dict], None] | None = None) -> float:
    """``learner.train_phase`` for an array: one batch stream (``gen``) for every member, per-member
    loss weights, learning rates and old-row freezing.  ``ref`` is the frozen model: a ``FusedNet`` or,
    when all members start the phase from the same model and batch, one ``IncrementalNet`` whose outputs
    every member reads.  ``resume`` ({"epoch", "optimizer"}) goes on after that epoch (with the model
    weights and ``gen`` restored by the caller: as an uninterrupted phase); ``on_checkpoint(epoch,
    optimizer state)`` is called every ``checkpoint_every`` epochs and after the last.  Returns wall seconds."""
    cfg, s = configs[0], configs[0].schedule
    _check_labels(source, idx)
    hp = ArrayParams.of(configs, phase, device)
    frozen = torch.tensor([float(phase > 0 and c.method.less_forget) for c in configs], dtype=torch.float64)
    all_frozen = bool(frozen.all())  # every member freezes the old rows: no gradient for them at all
    params = {k: v for k, v in model.named_parameters() if not (all_frozen and k == "head.old")}
    if all_frozen:
        model.head.old.requires_grad_(False)
    opt = FusedSGD(params, model.n,
                   torch.tensor([c.schedule.lr for c in configs], dtype=torch.float64), s.momentum,
                   torch.tensor([c.schedule.weight_decay for c in configs], dtype=torch.float64),
                   scale={"head.old": 1.0 - frozen}, member_of=model.member_of())
    milestones = set(s.milestones)
    start = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        start = int(resume["epoch"])
    every = cfg.runtime.checkpoint_every
    fwd = torch.compile(model) if cfg.runtime.compile else model
    t0 = time.perf_counter()
    for epoch in range(start, s.epochs):
        model.train()
        total = torch.zeros(model.n, dtype=torch.float64, device=device)
        steps = 0
        for x, y in source.train_batches(idx, s.batch_size, gen):
            ref_out = None
            with learner.autocast(cfg, device):
                if ref is not None:
                    with torch.inference_mode():
                        ref_out = ref(x)
                    ref_out = tuple(t.clone() for t in ref_out)
                out = fwd(x)
            loss = fused_loss(hp, phase, n_old, out, ref_out, y)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            total += loss.detach().to(total.dtype)
            steps += 1
        if epoch + 1 in milestones:
            opt.decay(s.gamma)
        mean = (total / max(steps, 1)).tolist()
        bad = [i for i, v in enumerate(mean) if not math.isfinite(v)]
        if bad:
            raise learner.TrainingDivergedError(f"loss is {mean[bad[0]]} for array member {bad[0]} in phase {phase}, "
                                                f"epoch {epoch + 1}; lower lr or check the data")
        if on_epoch is not None:
            on_epoch(epoch, mean)
        if on_checkpoint is not None and every and ((epoch + 1) % every == 0 or epoch + 1 == s.epochs):
            on_checkpoint(epoch + 1, opt.state_dict())
    model.head.old.requires_grad_(True)
    return time.perf_counter() - t0


def fused_class_balanced_finetune(model: FusedNet, source, exemplars: torch.Tensor, configs: list[Config],
                                  phase: int, n_old: int, gen: torch.Generator, device: torch.device) -> float:
    """``learner.class_balanced_finetune`` for the members with ``cbf`` (the others' rows get lr 0)."""
    cfg, s = configs[0], configs[0].schedule
    _check_labels(source, exemplars)
    hp = ArrayParams.of(configs, phase, device)
    on = torch.tensor([float(c.method.cbf) for c in configs], dtype=torch.float64)
    head = model.head
    opt = FusedSGD({"head.old": head.old, "head.new": head.new}, model.n,
                   torch.tensor([c.schedule.cbf_lr for c in configs], dtype=torch.float64) * on, s.momentum,
                   torch.tensor([c.schedule.cbf_weight_decay for c in configs], dtype=torch.float64))
    milestones = set(s.cbf_milestones)
    t0 = time.perf_counter()
    model.eval()
    head.eta.requires_grad_(False)
    for epoch in range(s.cbf_epochs):
        for x, y in source.train_batches(exemplars, s.batch_size, gen):
            with torch.no_grad(), learner.autocast(cfg, device):
                f = model.features(x)
            scores, logits = head(f.float())
            n, b, c = logits.shape
            loss = F.cross_entropy(logits.reshape(n * b, c), y.repeat(n), reduction="none").view(n, b).mean(1)
            if hp.has_mr:
                loss = loss + hp.mr.to(loss.dtype) * margin_ranking_fused(scores, y, n_old, hp.margin, hp.K, hp.kmax)
            loss = loss * on.to(loss.device, loss.dtype)  # members without CBF: no update, no divergence check
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
        if epoch + 1 in milestones:
            opt.decay(s.gamma)
        if not bool(torch.isfinite(loss).all()):
            raise learner.TrainingDivergedError(f"loss is {loss.tolist()} in phase {phase}, CBF epoch {epoch + 1}")
    head.eta.requires_grad_(True)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- the run
def _member_net(cfg: Config, env: RunEnv, state: dict | None) -> IncrementalNet:
    p = cfg.protocol
    spec = state["head"] if state is not None else {"kind": "cosine", "old": 0, "new": p.base_classes}
    net = build_model(cfg, env.in_channels, spec)
    if state is not None:
        net.load_state_dict(state["model"])
    return net


def run_fused(configs: list[Config], states: list[dict | None] | None = None, *, data=None, progress: bool = False,
              on_epoch: Callable[[int, int, list[float]], None] | None = None, backend: str = "auto",
              partial: dict | None = None, on_checkpoint: Callable[[dict], None] | None = None
              ) -> Iterator[list[tuple[PhaseResult, dict]]]:
    """``lucir.run`` for an array of configs (``check_array``): yields, for every phase, the list of the
    members' ``(PhaseResult, state)``; each state is the one ``lucir.run`` would give that member and
    resumes it fused or alone.  ``states`` (one per member, all at the same completed phase, or None)
    continue an array; a member state's training in progress (``partial``) is dropped: the array redoes
    that phase (mid-phase checkpoints are a single-trial feature).  ``backend`` (``BACKENDS``): how the
    backbones run, "auto" = loop on the CPU, grouped on CUDA.

    Mid-phase checkpoints of the array (``Runtime.checkpoint_every``): ``on_checkpoint(partial)`` gets
    {"phase", "epoch", "backend", "model" (the FusedNet state), "optimizer" (``FusedSGD``), "gen",
    "train_seconds", "config_ids" (``member_keys``)} every k epochs of a fused phase and after its last
    (a shared base phase, trained once unfused, has none); ``run_fused(configs,
    states, partial=that)`` with the states the phase started from goes on from that epoch, with the
    result of an uninterrupted array on the CPU."""
    if backend not in BACKENDS:
        raise FusionError(f"backend={backend!r} is invalid: allowed one of {list(BACKENDS)}")
    check_array(configs)
    n = len(configs)
    cfg = configs[0]
    p = cfg.protocol
    states = list(states) if states is not None else [None] * n
    if len(states) != n:
        raise FusionError(f"{len(states)} states for {n} configs")
    for c, st in zip(configs, states):
        if st is not None:
            check_state(c, st)
    done = {(-1 if st is None else st["phase"]) for st in states}
    if len(done) > 1:
        raise FusionError(f"members' states are at different phases {sorted(done)}; an array resumes together")
    start = done.pop() + 1
    states = [None if st is None or st["phase"] < 0 else {k: v for k, v in st.items() if k != "partial"}
              for st in states]
    start = max(start, 0)
    env = prepare(cfg, data, progress)
    device, source = env.device, env.source
    train_y, test_y = source.train_y, source.test_y

    if start == 0 and len({c.base_key() for c in configs}) == 1:
        # one shared base phase: trained once, unfused (lucir.run), and given to every member
        result, base = next(run(cfg, data=env.source.data, progress=progress,
                                on_epoch=(lambda ph, ep, loss: on_epoch(ph, ep, [loss] * n)) if on_epoch else None))
        member_states = [{**base, "config": c.identity()} for c in configs]
        yield [(copy.deepcopy(result), st) for st in member_states]
        states, start = member_states, 1

    nets = [_member_net(c, env, st) for c, st in zip(configs, states)]
    if backend == "auto":
        backend = "loop" if device.type == "cpu" else "grouped"
    model = FusedNet(nets, backend).to(device)
    ids = member_keys(configs)
    del nets
    if cfg.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    memories = [Memory(st["memory"]) if st else Memory() for st in states]
    acc_cnn = [[list(r) for r in st["acc_cnn"]] if st else [] for st in states]
    acc_nme = [[list(r) for r in st["acc_nme"]] if st else [] for st in states]
    results = [[dict(r) for r in st["results"]] if st else [] for st in states]
    pool, val_pool, groups = env.pool, env.val_pool, env.groups

    for phase in range(start, p.phases + 1):
        t_phase = time.perf_counter()
        gen, new_classes, n_old, n_seen, new_idx = phase_inputs(cfg, env, phase)
        ref = None
        idx = _rows([torch.cat([new_idx, mem.indices(cfg.quota(phase - 1))]) if phase else new_idx
                     for mem in memories])
        if phase > 0 and any(learner.needs_reference(c, phase) for c in configs):
            if idx.dim() == 1 and model.members_equal():  # phase 1 after a shared base: one frozen model
                ref = build_model(cfg, env.in_channels, {"kind": "cosine", "old": model.head.old.shape[1],
                                                         "new": model.head.new.shape[1]})
                ref.load_state_dict(model.member_state(0))
                ref.to(device)
                if cfg.runtime.channels_last:
                    ref.to(memory_format=torch.channels_last)
                ref = _Broadcast(ref)
            else:
                ref = copy.deepcopy(model)
            ref.eval()
            for q in ref.parameters():
                q.requires_grad_(False)
        resuming = partial is not None and partial["phase"] == phase
        if phase > 0:
            if resuming:  # rows of the right shape only: the checkpoint's weights and generator replace them
                rows = model.head.new.new_zeros(n, len(new_classes), model.feature_dim)
            elif cfg.method.imprint:
                f, _, y = extract_fused(model, source, "train", new_idx, cfg, device)
                w = model.head.weight().detach()
                rows = torch.stack([imprint_rows([f[i][y == c] for c in new_classes], w[i]) for i in range(n)])
            else:  # the same draws from the phase generator as each member's CosineHead.expand
                rows = _uniform_rows(len(new_classes), model.feature_dim, gen)[None].expand(n, -1, -1)
            model.head.expand(rows)
            model.to(device)

        def _on_epoch(ep, losses, _phase=phase):
            if on_epoch is not None:
                on_epoch(_phase, ep, losses)

        resume, before_s = None, 0.0
        if resuming:  # the phase in progress: its last checkpoint
            if partial.get("config_ids") != ids or partial.get("backend") != backend:
                raise FusionError("the array checkpoint belongs to other members or another backend")
            model.load_state_dict(partial["model"])
            gen.set_state(partial["gen"])
            resume, before_s = {"epoch": partial["epoch"], "optimizer": partial["optimizer"]}, partial["train_seconds"]
        partial = None
        checkpoint = None
        if on_checkpoint is not None:
            def checkpoint(epoch, opt_state, _phase=phase, _t0=time.perf_counter(), _before=before_s):
                on_checkpoint({"phase": _phase, "epoch": epoch, "backend": backend, "config_ids": ids,
                               "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                               "optimizer": opt_state, "gen": gen.get_state(),
                               "train_seconds": _before + time.perf_counter() - _t0})

        train_s = before_s + train_fused_phase(model, ref, source, idx, configs, phase, n_old, gen, device,
                                               _on_epoch, resume=resume, on_checkpoint=checkpoint)
        del ref

        quota = cfg.quota(phase)
        f, _, y = extract_fused(model, source, "train", new_idx, cfg, device)
        f = F.normalize(f, dim=2).cpu()
        y = y.cpu()
        for c in new_classes:
            pos = torch.nonzero(y == c).flatten()
            for i, mem in enumerate(memories):
                mem.add(c, new_idx[pos[herding(f[i][pos], quota)]])

        if phase > 0 and any(c.method.cbf for c in configs):
            ex = _rows([mem.indices(quota) for mem in memories])
            train_s += fused_class_balanced_finetune(model, source, ex, configs, phase, n_old, gen, device)

        ex = _rows([mem.indices(quota) for mem in memories])
        fe, _, ye = extract_fused(model, source, "train", ex, cfg, device)
        fe_flip = None
        if cfg.method.class_mean_flip != "none":
            fe_flip, _, _ = extract_fused(model, source, "train", ex, cfg, device, flip=cfg.method.class_mean_flip)
        ft, zt, yt = extract_fused(model, source, "test", torch.nonzero(test_y < n_seen).flatten(), cfg, device)
        val = None
        if len(val_pool):
            val = extract_fused(model, source, "train", val_pool[train_y[val_pool] < n_seen], cfg, device)
        eta = model.head.eta.detach().cpu().tolist()
        head_w = model.head.weight().detach()  # N x seen x dim: the members' raw rows (weight norms)
        per_phase = time.perf_counter() - t_phase
        out = []
        for i, c in enumerate(configs):
            means = class_means(fe[i], ye, n_seen, None if fe_flip is None else fe_flip[i])
            res = score_phase(c, phase, groups, env.test_group_sizes, results[i], acc_cnn[i], acc_nme[i],
                              (ft[i], zt[i], yt), None if val is None else (val[0][i], val[1][i], val[2]), means,
                              train_seconds=train_s / n, lambda_t=c.lambda_at(phase)
                              if (phase and c.method.less_forget) else 0.0, eta=eta[i],
                              exemplars=len(memories[i].indices(quota)), head_weight=head_w[i])
            res.phase_seconds = per_phase / n
            results[i].append(res.metrics())
            net = build_model(c, env.in_channels, {"kind": "cosine", "old": model.head.old.shape[1],
                                                   "new": model.head.new.shape[1]})
            net.load_state_dict(model.member_state(i))
            out.append((res, phase_state(c, phase, net, memories[i], acc_cnn[i], acc_nme[i], results[i])))
        yield out


class _Broadcast(nn.Module):
    """One frozen ``IncrementalNet`` read by every member: outputs with a leading member axis of 1."""

    def __init__(self, net: IncrementalNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return tuple(t.unsqueeze(0) for t in self.net(x))
