"""``lucir prepare-subset``: ImageNet-Subset as the reference builds it (``gen_imagenet_subset.py``).

The reference lists ILSVRC's training class folders (wnids) in sorted order (ImageFolder's order),
calls ``np.random.seed(1993)`` and keeps ``np.random.choice(wnids, 100, replace=False)``, which draws
the same classes as the first 100 entries of the seed-1993 permutation of ``arange(1000)``, i.e.
``lucir.data.class_order(1000, 1993)[:100]`` (sorted indices 7 11 14 44 54 ... 999).  It copies them
to ``seed_1993_subset_100_imagenet/{train,val}``; ImageFolder sorts them again, and training uses the
seed-1993 shuffle of ``arange(100)`` as the class order, as ``--dataset imagefolder`` does.

Here the files are hard links (no extra disk space), or copies where the output lies on another
file system.  Each class folder is filled under a temporary name and renamed when complete, and
``<out>/subset.json`` records the choice, so an interrupted run is simply run again: finished classes
are kept, half-done ones are redone, and an ``--out`` that holds another subset is refused.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from pathlib import Path

from lucir.data import DatasetError, DatasetMissingError, class_order

MANIFEST = "subset.json"
SPLITS = ("train", "val")
#: errors of os.link that mean "no hard links here" (another file system, or one without them)
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def subset_classes(wnids: list[str], classes: int = 100, seed: int = 1993) -> list[str]:
    """The reference's choice: ``np.random.seed(seed); np.random.choice(sorted(wnids), classes,
    replace=False)`` (= the first ``classes`` of ``class_order(len(wnids), seed)``), sorted."""
    from lucir.config import ConfigError, check_field

    wnids = sorted(wnids)
    if not isinstance(classes, int) or isinstance(classes, bool) or not 2 <= classes <= len(wnids):
        raise ConfigError(f"classes={classes!r} is invalid: allowed an integer in 2..{len(wnids)} "
                          f"(the class folders found)")
    check_field("seed", seed)
    return sorted(wnids[i] for i in class_order(len(wnids), seed)[:classes])


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (ImageFolder also walks sub-folders), relative to it."""
    out = []
    for dirpath, _, names in os.walk(folder, followlinks=True):
        for n in names:
            out.append((Path(dirpath) / n).relative_to(folder))
    return sorted(out)


def prepare_subset(imagenet: str | os.PathLike, out: str | os.PathLike, classes: int = 100, seed: int = 1993,
                   progress: bool = True, log=None) -> dict:
    """Write ``<out>/{train,val}/<wnid>/...`` for the chosen classes of ``<imagenet>/{train,val}``.

    Returns ``{"classes": [...], "files": n, "linked": n, "copied": n, "kept_classes": n}``
    (``kept_classes``: class folders a previous run had completed)."""
    from tqdm.auto import tqdm

    from lucir.checkpoint import atomic_write_json

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    src, out = Path(imagenet).absolute(), Path(out).absolute()
    if not all((src / s).is_dir() for s in SPLITS):
        raise DatasetMissingError(f"ImageNet not found: expected {src}/train/<wnid>/<images> and "
                                  f"{src}/val/<wnid>/<images> (val sorted into class folders); pass --imagenet")
    wnids = _class_folders(src / "train")
    chosen = subset_classes(wnids, classes, seed)
    missing = [w for w in chosen if not (src / "val" / w).is_dir()]
    if missing:
        raise DatasetError(f"{src}/val lacks the class folders {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                           "(sort the validation images into one folder per wnid first)")
    manifest = {"source": str(src), "classes": chosen, "seed": seed, "num_source_classes": len(wnids),
                "complete": False}
    mpath = out / MANIFEST
    if mpath.is_file():
        import json

        try:
            old = json.loads(mpath.read_text())
        except ValueError:
            old = {}
        if old.get("classes") != chosen:
            raise DatasetError(f"{out} holds another subset (its {MANIFEST}: seed {old.get('seed')}, "
                               f"{len(old.get('classes') or [])} classes): choose another --out or delete it")
    for s in SPLITS:
        if (out / s).is_dir():
            extra = sorted(set(_class_folders(out / s)) - set(chosen))
            if extra:
                raise DatasetError(f"{out}/{s} holds class folders outside this subset ({extra[:5]}): "
                                   "choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(mpath, manifest)

    todo, kept = [], 0
    for s in SPLITS:
        (out / s).mkdir(exist_ok=True)
        for w in chosen:
            if (out / s / w).is_dir():
                kept += 1
            else:
                todo.append((s, w, _files(src / s / w)))
    stats = {"classes": chosen, "files": 0, "linked": 0, "copied": 0, "kept_classes": kept}
    copying = False
    with tqdm(total=sum(len(f) for _, _, f in todo), desc=f"ImageNet-Subset -> {out}", unit="file",
              disable=not progress) as bar:
        for s, w, files in todo:
            tmp = out / s / f".{w}.partial"
            if tmp.exists():
                shutil.rmtree(tmp)  # left by an interrupted run
            tmp.mkdir()
            for rel in files:
                a, b = src / s / w / rel, tmp / rel
                b.parent.mkdir(parents=True, exist_ok=True)
                if not copying:
                    try:
                        os.link(a, b)
                        stats["linked"] += 1
                        bar.update(1)
                        continue
                    except OSError as exc:
                        if exc.errno not in _NO_LINK:
                            raise
                        copying = True
                        log(f"lucir prepare-subset: cannot hard-link {src} into {out} ({exc.strerror}; another "
                            "file system?): copying the files instead")
                shutil.copy2(a, b)
                stats["copied"] += 1
                bar.update(1)
            os.replace(tmp, out / s / w)  # the class folder appears complete or not at all
            stats["files"] += len(files)
    manifest["complete"] = True
    atomic_write_json(mpath, manifest)
    return stats


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--imagenet", required=True, help="ImageNet root holding train/<wnid>/ and val/<wnid>/")
    p.add_argument("--out", required=True, help="output folder (train/ and val/ of the subset, subset.json)")
    p.add_argument("--classes", type=int, default=100, help="classes to keep (default 100, the reference's)")
    p.add_argument("--seed", type=int, default=1993, help="NumPy seed of the choice (default 1993)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_prepare_subset(args: argparse.Namespace) -> int:
    st = prepare_subset(args.imagenet, args.out, args.classes, args.seed, progress=not args.quiet)
    out = Path(args.out).absolute()
    how = f"{st['linked']} hard-linked, {st['copied']} copied"
    if st["kept_classes"]:
        how += f"; {st['kept_classes']} class folders kept from an earlier run"
    print(f"ImageNet-Subset: {len(st['classes'])} classes (seed {args.seed}) in {out}: {how}; the chosen wnids "
          f"are in {out / MANIFEST}")
    print(f"train on it with: lucir train --dataset imagefolder --data-root {out}")
    return 0
