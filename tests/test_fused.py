"""Fused trial arrays (lucir.fused): each member of an array gets its own unfused result."""

from __future__ import annotations

import copy

import pytest
import torch

import lucir
from lucir import learner
from lucir.config import Config
from lucir.data import load_dataset_for
from lucir.fused import FusionError, check_array, fuse_key
from lucir.run import run_members
from lucir.heads import CosineHead
from lucir.models import IncrementalNet, Members, make_backbone

PRESETS = ["cn", "cn_lf", "lucir", "lucir_cbf"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def _members(backbone: str, configs: list[Config], n_old: int, n_new: int, in_ch: int) -> list[IncrementalNet]:
    nets = []
    for i, c in enumerate(configs):
        torch.manual_seed(100 + i)  # members start from different weights
        g = torch.Generator().manual_seed(200 + i)
        net = IncrementalNet(make_backbone(backbone, in_ch), CosineHead(64, n_old, n_new, c.method.eta_init, g))
        nets.append(net.double())
    return nets


def _unfused_steps(cfg, net, ref, xs, y, phase, n_old, steps):
    """``learner.train_phase``'s inner step, alone: SGD without the frozen old rows, ``phase_loss``."""
    freeze = phase > 0 and cfg.method.less_forget
    params = [p for n, p in net.named_parameters() if not (freeze and n == "head.old")]
    opt = torch.optim.SGD(params, lr=cfg.schedule.lr, momentum=cfg.schedule.momentum,
                          weight_decay=cfg.schedule.weight_decay)
    ctx = learner.PhaseContext(phase, n_old, 0, cfg.lambda_at(phase) if phase else 0.0)
    net.train()
    for x in xs[:steps]:
        ref_out = None
        if ref is not None:
            with torch.no_grad():
                ref_out = tuple(t.clone() for t in ref(x))
        loss = learner.phase_loss(cfg, ctx, net(x), ref_out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("backend", ["grouped", "loop"])
@pytest.mark.parametrize("backbone,size,in_ch", [("convnet", 8, 1), ("resnet32", 16, 3)])
@pytest.mark.parametrize("phase,shared", [(0, True), (1, True), (2, False)])
def test_fused_sgd_steps_equal_each_members_own_steps_in_fp64(backbone, size, in_ch, phase, shared, backend):
    """Property (issue 11, item 4): after 3 SGD steps, every fused member's weights, BN statistics and eta
    equal those of the same member trained alone (fp64, tight tolerance), for members that differ in
    switches (cn / cn_lf / lucir / lucir_cbf), lambda_base, margin, K, eta_init, lr and weight decay, with a
    shared input batch (phases 0-1) or one batch per member (phase 2), and the frozen model shared
    (phase 1: all members start from one base model) or fused (phase 2)."""
    base = dict(dataset="digits", epochs=4)
    configs = [Config.from_flat(base, preset="cn", eta_init=2.0),
               Config.from_flat(base, preset="cn_lf", lambda_base=3.0, lr=0.05),
               Config.from_flat(base, preset="lucir", margin=0.3, K=1, weight_decay=1e-3),
               Config.from_flat(base, preset="lucir_cbf", K=2, mr_weight=0.5)]
    n_old, n_new, b = (0, 4, 12) if phase == 0 else (4, 2, 12)
    nets = _members(backbone, configs, n_old, n_new, in_ch)
    if phase == 1:  # every member is a copy of one base model with fresh new rows
        for net in nets[1:]:
            for (k, v), v0 in zip(net.state_dict().items(), nets[0].state_dict().values()):
                if not k.startswith("head.new"):
                    v.copy_(v0)
    refs = [copy.deepcopy(net).eval() for net in nets] if phase else [None] * len(nets)
    torch.manual_seed(7)
    n_cls = n_old + n_new
    y = torch.cat([torch.arange(n_cls), torch.randint(0, n_cls, (b - n_cls,))])
    xs = [torch.randn(b, in_ch, size, size, dtype=torch.float64) for _ in range(3)]
    per_member = [[torch.randn(b, in_ch, size, size, dtype=torch.float64) for _ in range(3)] for _ in nets]

    copies = [copy.deepcopy(net) for net in nets]  # the members the array trains (``nets`` train alone)
    fused = Members(copies, backend)
    if phase == 0:
        ref = None
    elif phase == 1:
        ref = Members([copy.deepcopy(refs[0])], backend)  # one frozen model read by every member
    else:
        ref = Members([copy.deepcopy(r) for r in refs], backend).eval()
    ctxs = [learner.PhaseContext(phase, n_old, 0, c.lambda_at(phase) if phase else 0.0) for c in configs]
    batches = [(xs[s] if shared else torch.cat([per_member[i][s] for i in range(len(nets))], 1), y) for s in range(3)]

    class Batches:  # ``Source.train_batches``: three fixed batches in the first epoch, none after
        def train_batches(self, *a):
            yield from batches
            batches.clear()

    learner.train_phase(fused, ref, Batches(), None, configs, ctxs, torch.Generator(), torch.device("cpu"))

    for i, (cfg, net) in enumerate(zip(configs, nets)):
        _unfused_steps(cfg, net, refs[i], xs if shared else per_member[i], y, phase, n_old, 3)
        mine = copies[i].state_dict()
        for k, v in net.state_dict().items():
            assert torch.allclose(mine[k].double(), v.double(), rtol=1e-9, atol=1e-11), (i, k)
    # the members really trained apart: the weights differ between members
    assert not torch.equal(copies[0].head.new, copies[1].head.new)


def _digits(**kw):
    return Config.from_flat(dict(dataset="digits", epochs=6, cbf_epochs=3, threads=2, device="cpu", **kw))


def _gap(a, b) -> tuple[float, float, float]:
    """Largest CNN accuracy-matrix cell difference and the CNN / NME average incremental accuracy differences."""
    cells = [abs(x - y) for ra, rb in zip(a.acc_matrix_cnn, b.acc_matrix_cnn) for x, y in zip(ra, rb)]
    return max(cells), abs(a.avg_inc_acc_cnn - b.avg_inc_acc_cnn), abs(a.avg_inc_acc_nme - b.avg_inc_acc_nme)


@pytest.fixture(scope="module")
def digits_rungs():
    """Each cosine rung run alone (2 threads), and again with 1 thread: the second differs from the first only
    in the order its sums are taken, which bounds what a fused run (another order again) may differ by."""
    configs = [_digits(preset=p) for p in PRESETS]
    data = load_dataset_for(configs[0])
    single = [list(lucir.run(c, data=data)) for c in configs]
    reordered = [list(lucir.run(c.replace(threads=1), data=data))[-1][0] for c in configs]
    floor = [_gap(s[-1][0], r) for s, r in zip(single, reordered)]
    # never tighter than a few test images per cell (a digits class group holds ~90: one image is 1.1 points)
    bound = (max(2.5, *(f[0] for f in floor)), max(0.5, *(f[1] for f in floor)), max(0.5, *(f[2] for f in floor)))
    return configs, data, single, bound


@pytest.mark.parametrize("backend", ["grouped", "loop"])
def test_fused_digits_run_gives_every_rung_its_own_run_s_accuracy_matrices(backend, digits_rungs):
    """Property (issue 11, item 4): a fused array of the four cosine rungs over a reduced digits run gives
    each rung the accuracy matrices and average incremental accuracy of its own ``lucir.run`` up to summation
    order: no further from it than the same run with 1 thread instead of 2 is (on an Intel Xeon with AMX
    that reordering alone moves cells by up to 10 points and averages by up to 1.1 over 6 epochs; fused runs
    stayed within 3.9 and 0.28); the exemplar sets (herding) are identical."""
    configs, data, single, bound = digits_rungs
    fused = list(run_members(configs, data=data, backend=backend))
    assert len(fused) == configs[0].protocol.phases + 1
    for i, p in enumerate(PRESETS):
        (r_s, st_s), (r_f, st_f) = single[i][-1], fused[-1][i]
        gap = _gap(r_s, r_f)
        assert all(g <= b for g, b in zip(gap, bound)), (p, gap, bound, r_s.acc_matrix_cnn, r_f.acc_matrix_cnn)
        assert st_f["config"] == configs[i].identity()
        # the same metric keys as the single run (the imbalance diagnostics included), every phase
        for t in range(len(fused)):
            assert fused[t][i][0].metrics().keys() == single[i][t][0].metrics().keys()
        w = st_f["model"]["head.new"]
        assert r_f.weight_norm_new == pytest.approx(float(w.norm(dim=1).mean()), rel=1e-5)
        assert single[i][1][1]["memory"] == fused[1][i][1]["memory"]  # phase 1 herding: the same exemplars
    # the rungs are not one result copied four times
    assert len({round(fused[-1][i][0].avg_inc_acc_cnn, 6) for i in range(len(PRESETS))}) > 1


def test_an_array_of_one_is_the_run_bit_for_bit_with_either_backend():
    """Property (issue 17: one trainer): ``run_members`` of one config is ``lucir.run`` of it, weights and
    accuracy matrices bitwise equal, with the loop backend and with the grouped one (N = 1: plain ops)."""
    cfg = _digits(preset="lucir_cbf")
    data = load_dataset_for(cfg)
    alone = list(lucir.run(cfg, data=data))
    for backend in ("loop", "grouped"):
        array = list(run_members([cfg], data=data, backend=backend))
        assert len(array) == len(alone)
        for (r, st), [(r1, st1)] in zip(alone, array):
            assert (r1.acc_matrix_cnn, r1.acc_matrix_nme) == (r.acc_matrix_cnn, r.acc_matrix_nme), backend
            assert st1["memory"] == st["memory"]
            assert all(torch.equal(st1["model"][k], v) for k, v in st["model"].items()), backend


def test_member_state_of_a_fused_array_resumes_alone_and_fused():
    """A fused member's phase state is an ordinary run state: ``lucir.run`` resumes it alone, and
    ``run_members`` resumes the array from its members' states with the result of the uninterrupted array."""
    configs = [_digits(preset="lucir"), _digits(preset="lucir", lambda_base=2.0, margin=0.2)]
    data = load_dataset_for(configs[0])
    full = list(run_members(configs, data=data))
    # resume the array after phase 1
    rest = list(run_members(configs, [full[1][0][1], full[1][1][1]], data=data))
    assert len(rest) == len(full) - 2
    for i in range(2):
        assert rest[-1][i][0].acc_matrix_cnn == full[-1][i][0].acc_matrix_cnn
    # one member alone from its fused phase-2 state
    alone = list(lucir.run(configs[1], full[2][1][1], data=data))
    assert len(alone) == 1
    assert abs(alone[-1][0].avg_inc_acc_cnn - full[-1][1][0].avg_inc_acc_cnn) <= 1.5


def test_arrays_group_only_compatible_configs_with_a_clear_reason():
    a = _digits(preset="lucir")
    assert fuse_key(a) == fuse_key(_digits(preset="cn_lf", lambda_base=1.0, K=1, margin=0.1))
    assert fuse_key(a) != fuse_key(_digits(preset="lucir", seed=1))
    assert fuse_key(_digits(preset="finetune")) is None
    assert fuse_key(_digits(preset="joint")) is None
    with pytest.raises(FusionError, match="seed"):
        check_array([a, _digits(preset="lucir", seed=1)])
    with pytest.raises(FusionError, match="linear head"):
        check_array([a, _digits(preset="baseline")])
    with pytest.raises(FusionError, match="different phases"):
        st = next(lucir.run(a))[1]
        list(run_members([a, a], [st, None]))


def test_an_array_resumed_inside_a_phase_equals_the_uninterrupted_array_bitwise():
    """Property (issue 11: resume as for single trials): an array's epoch checkpoint inside phase 2, given
    back with the states phase 2 started from, continues to exactly the uninterrupted array's result."""
    configs = [_digits(preset="lucir", checkpoint_every=1), _digits(preset="cn_lf", lambda_base=2.0,
                                                                      checkpoint_every=1)]
    data = load_dataset_for(configs[0])
    partials = []
    full = list(run_members(configs, data=data, on_checkpoint=lambda part, _last: partials.append(part)))
    inside = [p for p in partials if p["phase"] == 2 and p["epoch"] == 3]
    assert len(inside) == 1 and all(0 < p["epoch"] <= 6 for p in partials)
    rest = list(run_members(configs, [full[1][i][1] for i in range(2)], data=data, partial=inside[0]))
    assert [out[0][0].phase for out in rest] == [2, 3]
    for i in range(2):
        assert rest[-1][i][0].acc_matrix_cnn == full[-1][i][0].acc_matrix_cnn
        assert rest[-1][i][0].acc_matrix_nme == full[-1][i][0].acc_matrix_nme
        for k, v in full[-1][i][1]["model"].items():
            assert torch.equal(rest[-1][i][1]["model"][k], v), k
    with pytest.raises(FusionError, match="other members"):
        list(run_members(configs[::-1], [full[1][i][1] for i in (1, 0)], data=data, partial=inside[0]))
