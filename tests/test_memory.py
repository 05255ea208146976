"""lucir.memory: herding (iCaRL rule as the reference code runs it, LUCIR_REFERENCE §5), budgets, NME means."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.memory import Memory, class_means, herding, nme_predict

# Five unit vectors in 2-D (Pythagorean triples, exact in binary to ~1e-8):
#   0: a=(1, 0)   1: b=(.6, .8)   2: c=(0, 1)   3: d=(.8, -.6)   4: e=(-.6, .8)
# mu = (1.8/5, 2.0/5) = (.36, .40)
POINTS = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, -0.6], [-0.6, 0.8]])
# The rule of memory.herding's docstring by hand: w <- mu; pick argmax <w, phi>; w <- w + mu - phi.
#   it 0: w=(.36, .40)   dots a .36  b .536  c .40  d .048  e .104     -> b (rank 1)
#   it 1: w=(.12, 0)     dots a .12  b .072  c 0    d .096  e -.072    -> a (rank 2)
#   it 2: w=(-.52, .40)  dots a -.52 b .008  c .40  d -.656 e .632     -> e (rank 3)
#   it 3: w=(.44, 0)     dots a .44  b .264  c 0    d .352  e -.264    -> a again (no new rank)
#   it 4: w=(-.20, .40)  dots a -.20 b .20   c .40  d -.40  e .44      -> e again
#   it 5: w=(.76, 0)     dots a .76  b .456  c 0    d .608  e -.456    -> a again
#   it 6: w=(.12, .40)   dots a .12  b .392  c .40  d -.144 e .248     -> c (rank 4)
#   it 7: w=(.48, -.20)  dots a .48  b .128  c -.20 d .504  e -.448    -> d (rank 5)
HAND_ORDER = [1, 0, 4, 2, 3]


def test_herding_picks_the_hand_computed_greedy_order():
    assert herding(POINTS, 3).tolist() == HAND_ORDER[:3]
    assert herding(POINTS, 5).tolist() == HAND_ORDER


def test_herding_repeated_picks_use_up_iterations():
    # after 4 iterations only b, a, e are ranked (iteration 3 picked a again)
    assert herding(POINTS, 5, max_iter=4).tolist() == [1, 0, 4]
    assert herding(POINTS, 5, max_iter=7).tolist() == [1, 0, 4, 2]


def test_herding_result_does_not_depend_on_the_input_order():
    perm = torch.tensor([3, 0, 4, 1, 2])
    got = herding(POINTS[perm], 5)
    assert perm[got].tolist() == HAND_ORDER


def test_herding_returns_distinct_indices_and_prefixes_agree():
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(60, 16, generator=g), dim=1)
    long = herding(f, 20)
    assert len(long) == 20 and len(set(long.tolist())) == 20
    assert herding(f, 7).tolist() == long[:7].tolist()  # a smaller budget keeps the herding prefix
    assert herding(f[:5], 20).tolist() and sorted(herding(f[:5], 20).tolist()) == list(range(5))


def test_herding_first_pick_is_closest_to_the_class_mean():
    g = torch.Generator().manual_seed(1)
    f = F.normalize(torch.randn(40, 8, generator=g) + 0.5, dim=1)
    mu = f.mean(0)
    assert int(herding(f, 1)[0]) == int(torch.argmin((f - mu).norm(dim=1)))
    # and the first two: the pair whose running mean is closest to mu given the first pick
    first = int(herding(f, 2)[0])
    second = int(herding(f, 2)[1])
    cand = [(float(((f[first] + f[i]) / 2 - mu).norm()), i) for i in range(40) if i != first]
    assert second == min(cand)[1]


def test_memory_keeps_ranks_and_quota_takes_prefixes():
    mem = Memory()
    mem.add(0, torch.tensor([10, 11, 12, 13]))
    mem.add(2, torch.tensor([30, 31, 32]))
    mem.add(1, torch.tensor([20, 21, 22, 23]))
    assert mem.indices(2).tolist() == [10, 11, 20, 21, 30, 31]
    assert mem.indices(10).tolist() == [10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32]
    assert mem.indices(1, classes=[2, 0]).tolist() == [30, 10]
    assert {c: t.tolist() for c, t in mem.per_class(3).items()} == {0: [10, 11, 12], 1: [20, 21, 22], 2: [30, 31, 32]}
    again = Memory(mem.to_dict())
    assert again.indices(3).tolist() == mem.indices(3).tolist()


def test_class_means_are_normalised_means_of_normalised_features():
    feats = torch.tensor([[100.0, 0.0], [0.0, 1.0], [0.0, -3.0], [4.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    means = class_means(feats, labels, 2)
    s = 1 / 2 ** 0.5
    assert torch.allclose(means, torch.tensor([[s, s], [s, -s]]), atol=1e-6)


def test_class_means_with_flipped_features_average_both_means():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    flipped = torch.tensor([[0.0, 2.0], [0.0, 5.0]])
    means = class_means(feats, torch.tensor([0, 0]), 1, flipped)
    s = 1 / 2 ** 0.5
    assert torch.allclose(means, torch.tensor([[s, s]]), atol=1e-6)


def test_class_means_with_flip_follow_the_reference_formula():
    # reference (iCaRL/OFF): mean = normalise((D . alph + D2 . alph) / 2), D/D2 = normalised (flipped) features
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])    # mean of normalised features (.5, .5), norm .71
    flipped = torch.tensor([[3.0, 0.0], [1.0, 0.0]])  # mean (1, 0), norm 1
    means = class_means(feats, torch.tensor([0, 0]), 1, flipped)
    expect = F.normalize(torch.tensor([[1.5, 0.5]]) / 2, dim=1)  # (0.949, 0.316)
    assert torch.allclose(means, expect, atol=1e-6)


def test_nme_assigns_each_point_to_the_nearest_normalised_mean():
    g = torch.Generator().manual_seed(2)
    means = F.normalize(torch.randn(5, 6, generator=g), dim=1)
    x = torch.randn(200, 6, generator=g)
    pred = nme_predict(x, means)
    dist = torch.cdist(F.normalize(x, dim=1), means)  # Euclidean distance of the normalised point
    assert torch.equal(pred, dist.argmin(1))
    # scaling the features (per sample, by any positive factor) changes nothing
    scale = torch.rand(200, 1, generator=g) * 100 + 0.01
    assert torch.equal(nme_predict(x * scale, means), pred)


def test_nme_by_hand():
    means = class_means(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), 2)
    # cosines to (1, 0) / (0, 1): (2, 1) .89/.45 -> 0; (.1, .3) .32/.95 -> 1;
    # (-1, -.5) -.89/-.45 -> 1 (the less negative); (5, 5.1) just above the diagonal -> 1
    pts = torch.tensor([[2.0, 1.0], [0.1, 0.3], [-1.0, -0.5], [5.0, 5.1]])
    assert nme_predict(pts, means).tolist() == [0, 1, 1, 1]


def test_nme_differs_from_nearest_unnormalised_mean():
    # class 0 exemplars far out, class 1 near the origin: the unnormalised nearest mean would say 1
    feats = torch.tensor([[10.0, 1.0], [10.0, -1.0], [0.1, 0.2], [0.2, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    means = class_means(feats, labels, 2)
    p = torch.tensor([[0.5, 0.05]])
    raw = torch.stack([feats[:2].mean(0), feats[2:].mean(0)])
    assert int(torch.cdist(p, raw).argmin()) == 1
    assert nme_predict(p, means).tolist() == [0]


@pytest.mark.parametrize("n", [1, 3])
def test_class_means_of_absent_classes_are_zero_not_nan(n):
    means = class_means(torch.randn(n, 4), torch.zeros(n, dtype=torch.int64), 3)
    assert torch.isfinite(means).all() and torch.all(means[1:] == 0)


# ---------------------------------------------------------------------------- class_mean_flip
class _Flatten(torch.nn.Module):
    """A 'model' whose feature is the normalised image itself, so class means can be done by hand."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Flatten()
        self.backbone.feature_dim = 12

    def forward(self, x):
        f = x.flatten(1)
        return f, f[:, :2], f[:, :2]


def _hand_means(imgs: dict[int, list], mean, std, flip: str):
    """The reference's class-mean block by hand, in numpy: per class, the mean of the normalised
    features of the exemplars, averaged with that of their flipped copies, then normalised."""
    import numpy as np

    m = np.array(mean).reshape(-1, 1, 1) * 255
    s = np.array(std).reshape(-1, 1, 1) * 255

    def feat(a):
        v = ((a.astype(np.float64) - m) / s).ravel()
        return v / np.linalg.norm(v)

    out = []
    for c in sorted(imgs):
        mu = np.mean([feat(a) for a in imgs[c]], axis=0)
        if flip != "none":
            f = [a[::-1] if flip == "channels" else a[:, :, ::-1] for a in imgs[c]]
            mu = (mu + np.mean([feat(a) for a in f], axis=0)) / 2
        out.append(mu / np.linalg.norm(mu))
    return np.stack(out)


@pytest.mark.parametrize("flip", ["channels", "mirror", "none"])
def test_class_mean_flip_settings_give_the_hand_computed_means(flip):
    """Two classes of 2x2 RGB images (channels reversed != mirrored != unchanged); the means that
    lucir.run computes (Source.eval_batches + learner.extract + class_means) equal the hand formula."""
    import numpy as np

    from lucir import learner
    from lucir.config import Config
    from lucir.data import Source, TensorDataset

    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(6, 3, 2, 2)).astype(np.uint8)
    y = np.array([0, 0, 0, 1, 1, 1])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    data = TensorDataset("hand", torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x),
                         torch.from_numpy(y), ["a", "b"], mean, std, pad=1, flip=False)
    source = Source(data, np.array([0, 1]), torch.device("cpu"))
    cfg = Config.from_flat(dataset="cifar100", device="cpu", class_mean_flip=flip)  # 3 channels
    idx = torch.arange(6)
    fe, _, ye = learner.extract(_Flatten(), source, "train", idx, cfg, torch.device("cpu"))
    fl = None if flip == "none" else learner.extract(_Flatten(), source, "train", idx, cfg,
                                                     torch.device("cpu"), flip=flip)[0]
    got = class_means(fe, ye, 2, fl)
    want = _hand_means({0: list(x[:3]), 1: list(x[3:])}, mean, std, flip)
    assert torch.allclose(got.double(), torch.from_numpy(want), atol=1e-6)
    if flip != "none":  # the flip changes the means (the test would not tell the settings apart otherwise)
        assert not np.allclose(want, _hand_means({0: list(x[:3]), 1: list(x[3:])}, mean, std, "none"), atol=1e-3)


def test_class_mean_flip_defaults_follow_the_reference_drivers():
    from lucir.config import Config, ConfigError

    assert Config.from_flat(dataset="digits").method.class_mean_flip == "none"
    with pytest.raises(ConfigError, match="class_mean_flip='bgr'.*channels"):
        Config.from_flat(dataset="digits", class_mean_flip="bgr")
