"""NME accuracy per phase under each ``class_mean_flip`` setting, from one training run.

The flip only changes how the NME class means are computed (``lucir.memory.class_means``), not
training, herding or the CNN head, so one run gives every setting: after each phase the model and
exemplars of the yielded state are evaluated with "channels" (the reference's RGB -> BGR reversal,
``class_incremental_cosine_cifar100.py``), "mirror" and "none".  The run itself uses the config's
own setting; its NME equals that column (checked).

    python scripts/nme_flip.py --dataset cifar100 --data-root ../shared/data --epochs 3 \
        --threads 1 --channels-last --out runs/nme_flip_e3.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv=None) -> int:
    import lucir
    from lucir import learner
    from lucir.checkpoint import atomic_write_json
    from lucir.cli import add_config_args, config_overrides
    from lucir.config import CLASS_MEAN_FLIPS, Config
    from lucir.data import Source, class_order, load_dataset_for
    from lucir.memory import Memory, class_means, nme_predict
    from lucir.metrics import average_incremental_accuracy
    from lucir.run import build_model, resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(ap)
    ap.add_argument("--out", required=True, help="JSON file for the per-phase table")
    args = ap.parse_args(argv)
    cfg = Config.from_flat(config_overrides(args))
    device = resolve_device(cfg.runtime.device)
    data = load_dataset_for(cfg)
    source = Source(data, class_order(cfg.protocol.num_classes, cfg.protocol.class_order_seed), device,
                    cfg.runtime.channels_last)
    rows = []
    for res, st in lucir.run(cfg, data=data, progress=True):
        model = build_model(cfg, data.image_shape()[0], st["head"])
        model.load_state_dict(st["model"])
        model.to(device)
        if cfg.runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        n_seen = res.classes_seen
        ex = Memory(st["memory"]).indices(cfg.quota(res.phase))
        fe, _, ye = learner.extract(model, source, "train", ex, cfg, device)
        test_idx = torch.nonzero(source.test_y < n_seen).flatten()
        ft, zt, yt = learner.extract(model, source, "test", test_idx, cfg, device)
        row = {"phase": res.phase, "classes_seen": n_seen, "acc_cnn": res.acc_cnn}
        for flip in CLASS_MEAN_FLIPS:
            ff = None if flip == "none" else learner.extract(model, source, "train", ex, cfg, device, flip=flip)[0]
            pred = nme_predict(ft, class_means(fe, ye, n_seen, ff))
            row[f"acc_nme_{flip}"] = 100.0 * float((pred == yt).float().mean())
        own = row[f"acc_nme_{cfg.method.class_mean_flip}"]
        if abs(own - res.acc_nme) > 1e-9:
            raise AssertionError(f"phase {res.phase}: recomputed NME {own} != the run's {res.acc_nme}")
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {f"avg_inc_acc_nme_{f}": average_incremental_accuracy([r[f"acc_nme_{f}"] for r in rows])
               for f in CLASS_MEAN_FLIPS}
    summary["avg_inc_acc_cnn"] = average_incremental_accuracy([r["acc_cnn"] for r in rows])
    atomic_write_json(args.out, {"config": cfg.to_flat(), "phases": rows, "summary": summary})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
