"""Losses of phase t >= 1, as the reference code computes them (DESIGN §3; LUCIR_REFERENCE §3).

Notation: ``f`` feature of the current model, ``f_ref`` of the frozen previous model fed the same
augmented batch, ``scores`` the cosines before eta, ``n_old`` the number of old classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def less_forget(f: torch.Tensor, f_ref: torch.Tensor) -> torch.Tensor:
    """L_lf = mean_i (1 - cos(f_i, f_ref_i)) over every sample (``CosineEmbeddingLoss``, target +1).

    The caller weights it by lambda = lambda_base * sqrt(N_old / N_new) (the code's ratio).
    """
    return (1.0 - F.cosine_similarity(f, f_ref.detach(), dim=1)).mean()


def margin_ranking(scores: torch.Tensor, y: torch.Tensor, n_old: int, margin: float, K: int) -> torch.Tensor:
    """L_mr: for each old-class sample, the top-K new-class cosines must stay ``margin`` below the
    ground-truth cosine; mean over (old samples x K) of max(0, m - s_y + s_k).  Zero (with a graph)
    when the batch holds no old-class sample (``MarginRankingLoss(margin)``, target +1).
    """
    old = y < n_old
    if not bool(old.any()):
        return scores.sum() * 0.0
    s = scores[old]
    gt = s.gather(1, y[old][:, None])  # (n_hard, 1)
    hard = s[:, n_old:].topk(K, dim=1).values  # (n_hard, K)
    return F.relu(margin - gt + hard).mean()


def knowledge_distillation(logits: torch.Tensor, ref_logits: torch.Tensor, n_old: int, T: float = 2.0,
                           beta: float = 0.25) -> torch.Tensor:
    """Baseline rung: beta * T^2 * KL(softmax(z*/T) || softmax(z/T)) over the old classes, summed
    over classes and averaged over the batch (the code's ``KLDivLoss`` mean x N_old)."""
    log_p = F.log_softmax(logits[:, :n_old].float() / T, dim=1)
    q = F.softmax(ref_logits[:, :n_old].float() / T, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * (T * T) * beta


def mimic_scores(scores: torch.Tensor, ref_scores: torch.Tensor, n_old: int) -> torch.Tensor:
    """CN rung ("mimic scores"): N_old * MSE between the current and frozen old-class cosines."""
    return F.mse_loss(scores[:, :n_old].float(), ref_scores[:, :n_old].float()) * n_old
