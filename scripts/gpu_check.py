#!/usr/bin/env python3
"""The GPU check of issue 20: every GPU figure of lucir from one command that stops by itself in 9 minutes.

    scripts/gpu_check.sh [OUT] [--dry-run] [--timeout SECTION=SECONDS] [--sections A,B] [--data-root DIR] [--budget S]

Sections, in this order, each a subprocess with its own timeout (a failed or timed-out section is recorded
and the rest still runs; everything stops by the budget, 540 s by default):

  machine   GPU name and memory, driver, torch / CUDA / cuDNN versions, CPU count     -> machine.json
  bench     lucir bench --device cuda: data, base and incremental steps at batch 128, fp32 / tf32 / bf16 x
            NCHW / channels_last, evaluation and herding; images/s, share of the peak  -> bench.json
  fused     lucir bench --sections fused: images/s per trial of arrays of N = 1, 2, 4, 8, 16 trials
                                                                                        -> fused.json
  packed    N concurrent `lucir bench --sections train_inc` processes on the one GPU (what
            --gpus-per-trial 1/N does), images/s summed; fused / packed per N          -> packed.json
  accuracy  lucir train: CIFAR-100 B50 x 5 LUCIR, seed 0, deterministic where the trainer has it, at 160
            epochs a phase if the bench's images/s say it fits the time left, else the most epochs that
            fit; CNN / NME and wall time per phase                                     -> accuracy.json
  compile   lucir bench --compile: the incremental step, fp32 / bf16 channels_last, eager and compiled,
            compile time apart (last: the least needed)                                -> compile.json

then summary.md (every figure with the command that produced it) and summary.json (each section's status).
These 8 files are all that OUT holds (the device tool brings back 8); logs and scratch go to --work.
--dry-run runs every section on the CPU in tiny sizes (digits; 1 epoch): what CI tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("machine", "bench", "fused", "packed", "accuracy", "compile")
CAPS = {"machine": 40, "bench": 100, "fused": 80, "packed": 150, "compile": 150}  # seconds; accuracy: the rest
DRY_CAPS = {"machine": 30, "bench": 40, "fused": 40, "packed": 60, "accuracy": 60, "compile": 40}
RESERVE = {"compile": 90, "summary": 10}  # seconds kept for what comes after the accuracy run
SIZES = (1, 2, 4, 8, 16)
PUBLISHED = {"avg_inc_acc_cnn": 63.42, "avg_inc_acc_nme": 63.12, "epochs": 160}  # Hou et al. 2019, Fig. 5
VARIANT = "fp32 cl"  # the trainer's Runtime default (channels_last, no bf16): fused, packed and accuracy use it


def lucir(*args: str) -> list[str]:
    return [sys.executable, "-m", "lucir.cli", *args]


def shown(argv: list[str]) -> str:
    """The command as a reader would type it (``lucir ...`` for the trainer's CLI)."""
    if argv[1:3] == ["-m", "lucir.cli"]:
        argv = ["lucir", *argv[3:]]
    elif argv[1:2] == [str(Path(__file__).resolve())]:
        argv = ["python", "scripts/gpu_check.py", *argv[2:]]
    return " ".join(shlex.quote(a) for a in argv)


def env() -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return e


def run(argv, log: Path, timeout: float, cwd=REPO) -> str:
    """Run ``argv`` in its own process group; kill the group at ``timeout``.  Returns ok / failed (rc N) /
    timed out."""
    with open(log, "a") as f:
        f.write(f"$ {shown(argv)}\n")
        f.flush()
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env(), start_new_session=True)
        try:
            rc = p.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return "timed out"
    return "ok" if rc == 0 else f"failed (rc {rc})"


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- the sections' commands
def bench_args(a, *extra: str, threads: int = 0) -> list[str]:
    threads = str(threads or (2 if a.dry_run else 4))
    if a.dry_run:
        return ["bench", "--device", "cpu", "--dataset", "digits", "--quick", "--threads", threads, *extra]
    return ["bench", "--device", "cuda", "--dataset", "cifar100", "--batch-size", "128", "--threads", threads, *extra]


def commands(a) -> dict[str, list[str]]:
    out, sizes = Path(a.out), ",".join(map(str, SIZES[:2] if a.dry_run else SIZES))
    me = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--work", str(a.work)] + (
        ["--dry-run"] if a.dry_run else []) + (["--data-root", a.data_root] if a.data_root else [])
    full = [] if a.dry_run else ["--steps", "20", "--rounds", "5"]
    return {
        "machine": me + ["--section", "machine"],
        "bench": lucir(*bench_args(a, "--sections", "data,train_base,train_inc,herding,eval", *full,
                                   *([] if a.dry_run else ["--eval-images", "0", "--herd-classes", "0"]),
                                   "--json", str(out / "bench.json"))),
        "fused": lucir(*bench_args(a, "--sections", "fused", "--fuse-sizes", sizes, "--fuse-variant", VARIANT,
                                   *([] if a.dry_run else ["--steps", "10", "--rounds", "3"]),
                                   "--json", str(out / "fused.json"))),
        "packed": me + ["--section", "packed"],
        "accuracy": me + ["--section", "accuracy"],
        "compile": lucir(*bench_args(a, "--sections", "train_inc", *([] if a.dry_run else ["--compile"]),
                                     "--only", "fp32 cl,bf16 cl",
                                     *([] if a.dry_run else ["--steps", "20", "--rounds", "3"]),
                                     "--json", str(out / "compile.json"))),
    }


def section_machine(a, deadline: float) -> dict:
    import platform

    import torch

    info = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None, "gpus": []}
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                             "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}"})
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
        info["driver"] = r.stdout.strip().split(",")[-1].strip() if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"], info["driver"] = f"not available: {e}", None
    try:  # the device machine's copy of the tree may have no .git (or no git)
        git = ["git", "-C", str(REPO)]
        info["git_sha"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                                                capture_output=True, text=True).stdout.strip())
    except OSError:
        info["git_sha"] = info["git_dirty"] = None
    return info


def section_packed(a, deadline: float) -> dict:
    """N concurrent train_inc benches per N, started together (--barrier), images/s summed."""
    sizes = SIZES[:2] if a.dry_run else SIZES
    fused = read_json(Path(a.out) / "fused.json") or {}
    fused_rows = {r["N"]: r for r in fused.get("sections", {}).get("fused", {}).get("fused", [])}
    rows, cmds = [], []
    for n in sizes:
        folder = Path(a.work) / "packed" / str(n)
        shutil.rmtree(folder, ignore_errors=True)  # a reused --work: old *.ready files would open the barrier
        folder.mkdir(parents=True)
        argvs = [lucir(*bench_args(a, "--sections", "train_inc", "--only", VARIANT,
                                   *([] if a.dry_run else ["--steps", "10", "--rounds", "5"]),
                                   "--barrier", f"{folder}:{n}", "--json", str(folder / f"{i}.json"), threads=1))
                 for i in range(n)]
        cmds.append(f"{n} x concurrently: {shown(argvs[0])}")
        logs = [open(folder / f"{i}.log", "w") for i in range(n)]
        procs = [subprocess.Popen(v, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env(), start_new_session=True)
                 for v, f in zip(argvs, logs)]
        status = "ok"
        for p in procs:
            try:
                if p.wait(timeout=max(deadline - time.time() - 2, 0.1)) != 0:
                    status = f"failed (rc {p.returncode})"
            except subprocess.TimeoutExpired:
                status = "timed out"
                for q in procs:
                    if q.poll() is None:
                        os.killpg(q.pid, signal.SIGKILL)
                break
        for f in logs:
            f.close()
        rates = [r["sections"]["train_inc"]["variants"][VARIANT]["images_per_s"]
                 for r in (read_json(folder / f"{i}.json") for i in range(n)) if r]
        row = {"N": n, "status": status, "processes": len(rates), "log": str(folder / "0.log")}
        if status == "ok" and len(rates) == n:
            row.update(total_images_per_s=sum(rates), per_trial=sum(rates) / n, per_process=rates)
            if n in fused_rows:
                f = fused_rows[n]["fused"]
                row.update(fused_per_trial=f, fused_vs_packed=f / (sum(rates) / n))
        rows.append(row)
        write_json(Path(a.out) / "packed.json", {"status": "running", "variant": VARIANT, "rows": rows,
                                                 "commands": cmds})  # what a killed section leaves
        if status != "ok":
            break
    bad = [r for r in rows if r["status"] != "ok"]
    return {"status": f"{bad[0]['status']} at N={bad[0]['N']}" if bad else "ok", "variant": VARIANT, "rows": rows,
            "commands": cmds}


def find_cifar(a) -> Path | None:
    from lucir.data import cifar100_paths

    for root in [a.data_root, os.environ.get("LUCIR_DATA"), REPO.parent / "shared" / "data", REPO / "shared" / "data",
                 REPO / "data"]:
        if root and cifar100_paths(root) is not None:
            return Path(root).resolve()
    return None


def plan_epochs(bench: dict | None, seconds: float, dry: bool) -> dict:
    """Epochs a phase that fit ``seconds``: per epoch, the base phase's 25,000 images at the bench's base-step
    images/s and the 5 incremental phases' 5,000 new images + 20 exemplars per old class at its incremental
    images/s (variant fp32 cl, what lucir train runs), with 60 s of fixed cost and a 0.7 margin."""
    if dry:
        return {"epochs": 1, "why": "dry run: 1 epoch a phase"}
    ips = {}
    for sec in ("train_base", "train_inc"):
        with_default = ((bench or {}).get("sections", {}).get(sec, {}).get("variants", {}).get(VARIANT) or {})
        ips[sec] = with_default.get("images_per_s")
    guessed = not all(ips.values())
    if guessed:
        ips = {"train_base": 2000.0, "train_inc": 1500.0}
    base, inc = 50 * 500, sum(10 * 500 + 20 * (50 + 10 * (t - 1)) for t in range(1, 6))
    per_epoch = base / ips["train_base"] + inc / ips["train_inc"]
    fit = math.floor(max(seconds - 60, 0) * 0.7 / per_epoch)
    epochs = min(PUBLISHED["epochs"], fit)
    why = (f"{'guessed (no bench figures)' if guessed else 'bench'} images/s {ips['train_base']:.0f} base / "
           f"{ips['train_inc']:.0f} incremental ({VARIANT}): one epoch of all 6 phases ({base} + {inc} images) "
           f"takes {per_epoch:.1f} s; {seconds:.0f} s left, minus 60 s fixed, x 0.7 margin: {fit} epochs fit; "
           + ("the published 160 fit" if fit >= PUBLISHED["epochs"] else f"running {epochs}, not the published 160"))
    return {"epochs": epochs, "why": why, "images_per_s": ips, "seconds_per_epoch": per_epoch, "seconds": seconds}


def section_accuracy(a, deadline: float) -> dict:
    plan = plan_epochs(read_json(Path(a.out) / "bench.json"), deadline - time.time(), a.dry_run)
    res = {"plan": plan, "published": PUBLISHED}
    if plan["epochs"] < 1:
        return {**res, "status": "skipped: not even 1 epoch a phase fits the time left"}
    root = None if a.dry_run else find_cifar(a)
    if not a.dry_run and root is None:
        return {**res, "status": "skipped: CIFAR-100 not found (--data-root, $LUCIR_DATA, ../shared/data, "
                                 "shared/data, data); see docs/gpu/README.md"}
    det = True
    out, log = Path(a.work) / "accuracy", Path(a.work) / "accuracy-train.log"
    t0 = time.time()
    for attempt in (1, 2):
        argv = lucir("train", "--dataset", "digits" if a.dry_run else "cifar100", "--seed", "0",
                     "--epochs", str(plan["epochs"]), "--device", "cpu" if a.dry_run else "cuda",
                     *([] if a.dry_run else ["--data-root", str(root), "--set", "download=false"]),
                     *(["--set", "deterministic=true"] if det else []), "--set", "checkpoint_every=0",
                     "--out", str(out / str(attempt)), "--quiet")
        status = run(argv, log, deadline - time.time())
        # an op without a deterministic CUDA kernel fails at once: run again without, and say so
        if not (det and status.startswith("failed")
                and "use_deterministic_algorithms" in log.read_text(errors="replace")):
            break
        det = False
        res["deterministic_failed"] = "the deterministic run failed (accuracy-train.log); ran again without"
    out = out / str(attempt)
    results = read_json(out / "results.json") or {}
    phases = [{k: p.get(k) for k in ("phase", "classes_seen", "acc_cnn", "acc_nme", "avg_inc_acc_cnn",
                                     "avg_inc_acc_nme", "train_seconds", "phase_seconds")}
              for p in results.get("phases", [])]
    if status != "ok":
        status += f" after {len(phases)} of {(results.get('config') or {}).get('phases', 5) + 1} phases"
    return {**res, "status": status, "command": shown(argv), "deterministic": det,
            "phases": phases, "complete": status == "ok", "wall_seconds": time.time() - t0,
            "config": results.get("config")}


# ----------------------------------------------------------------------------- summary
def _num(x, fmt=".1f") -> str:
    return "" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def bench_tables(doc: dict | None) -> list[str]:
    lines = []
    for name, sec in (doc or {}).get("sections", {}).items():
        lines += [f"**{name}**: {sec['title']}" + (f" ({sec['gflop_per_image']:.4f} GFLOP/image)"
                                                   if sec.get("gflop_per_image") else ""), "",
                  "| variant | images/s | of peak | peak MB | first call s | compile s |", "|---|---|---|---|---|---|"]
        for v, r in sec["variants"].items():
            lines.append(f"| {v} | {r['images_per_s']:.0f} | {_pct(r.get('share_of_peak'))} | {r['peak_mem_mb']:.0f} | "
                         f"{r['first_call_s']:.2f} | {_num(r.get('compile_s'))} |")
        lines.append("")
    if doc:
        m = doc["meta"]
        lines.append(f"({m['device']} {m.get('device_name') or m.get('cpu')}, torch {m['torch']}, batch "
                     f"{m['batch_size']}, {m['steps']} steps x {m['rounds']} rounds, peak: {m['peak_source']})")
    return lines


def summary(a, status: dict, started: float) -> str:
    out = Path(a.out)
    m = read_json(out / "machine.json") or {}
    gpus = "; ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in m.get("gpus", [])) or "no GPU"
    lines = [f"# GPU check{' (dry run, CPU)' if a.dry_run else ''}: {dt.date.today().isoformat()}", "",
             f"`{' '.join(shlex.quote(x) for x in sys.argv)}`, {time.time() - started:.0f} s in all.", "",
             f"Machine: {gpus}; driver {m.get('driver')}; torch {m.get('torch')} (CUDA {m.get('cuda_runtime')}, "
             f"cuDNN {m.get('cudnn')}); {m.get('cpu_count')} CPUs ({m.get('cpu')}); git {m.get('git_sha')}"
             f"{' (dirty)' if m.get('git_dirty') else ''}.", "",
             "| section | status | seconds | timeout | command |", "|---|---|---|---|---|"]
    for s in SECTIONS:
        st = status.get(s, {"status": "not run"})
        lines.append(f"| {s} | {st['status']} | {st.get('seconds', 0):.0f} | {st.get('timeout', 0):.0f} | "
                     f"`{st.get('command', '')}` |")
    lines += ["", "## bench", "", f"`{status.get('bench', {}).get('command', '')}`", ""]
    lines += bench_tables(read_json(out / "bench.json"))
    lines += ["", "## fused and packed", "", f"`{status.get('fused', {}).get('command', '')}`", ""]
    fused = read_json(out / "fused.json")
    packed = read_json(out / "packed.json") or {}
    lines += ["| N | fused, per trial | N in one process one after another, per trial | fused / sequential | "
              "N processes side by side, per trial | fused / N processes |", "|---|---|---|---|---|---|"]
    prow = {r["N"]: r for r in packed.get("rows", [])}
    frow = {r["N"]: r for r in (fused or {}).get("sections", {}).get("fused", {}).get("fused", [])}
    for n in sorted(set(prow) | set(frow)):
        f, p = frow.get(n, {}), prow.get(n, {})
        lines.append(f"| {n} | {_num(f.get('fused'), '.0f')} | {_num(f.get('separate'), '.0f')} | "
                     f"{_num(f.get('ratio'), '.2f')} | {_num(p.get('per_trial'), '.0f') or p.get('status')} | "
                     f"{_num(p.get('fused_vs_packed'), '.2f')} |")
    lines += ["", "images/s per trial; fused / sequential is the paired median over rounds, fused / N processes "
              "the ratio of medians. Packed commands:", ""] + [f"- `{c}`" for c in packed.get("commands", [])]
    acc = read_json(out / "accuracy.json") or {}
    lines += ["", "## accuracy", "", f"`{acc.get('command', '')}`", "", f"Status: {acc.get('status')}. Epochs a "
              f"phase: {acc.get('plan', {}).get('epochs')} ({acc.get('plan', {}).get('why')}). Deterministic: "
              f"{acc.get('deterministic')}.", "", "| phase | classes | CNN | NME | train s | phase s |",
              "|---|---|---|---|---|---|"]
    for p in acc.get("phases", []):
        lines.append(f"| {p['phase']} | {p['classes_seen']} | {p['acc_cnn']:.2f} | {p['acc_nme']:.2f} | "
                     f"{p['train_seconds']:.0f} | {p['phase_seconds']:.0f} |")
    if acc.get("phases"):
        last = acc["phases"][-1]
        lines += ["", f"Average incremental accuracy after phase {last['phase']}: CNN {last['avg_inc_acc_cnn']:.2f}, "
                      f"NME {last['avg_inc_acc_nme']:.2f} (published, 160 epochs: {PUBLISHED['avg_inc_acc_cnn']} / "
                      f"{PUBLISHED['avg_inc_acc_nme']}); wall {acc.get('wall_seconds', 0):.0f} s."]
    lines += ["", "## compile", "", f"`{status.get('compile', {}).get('command', '')}`", ""]
    lines += bench_tables(read_json(out / "compile.json"))
    bad = [s for s in SECTIONS if status.get(s, {}).get("status") != "ok"]
    extra = {"accuracy": Path(a.work) / "accuracy-train.log",
             "packed": Path(next((r["log"] for r in packed.get("rows", []) if r["status"] != "ok"), "-"))}
    for s in bad:
        for log in (Path(a.work) / f"{s}.log", extra.get(s)):
            if log is not None and log.is_file():
                lines += ["", f"## {s}: {status.get(s, {}).get('status', 'not run')} (last lines of {log})", "",
                          "```", *log.read_text(errors="replace").splitlines()[-25:], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "runs" / "gpu-check"))
    p.add_argument("--work", default="", help="logs and scratch (default: a new temporary folder)")
    p.add_argument("--dry-run", action="store_true", help="every section on the CPU in tiny sizes (CI)")
    p.add_argument("--budget", type=float, default=0.0, help="seconds in all (default 540; dry run 170)")
    p.add_argument("--timeout", action="append", default=[], metavar="SECTION=SECONDS",
                   help="another timeout for one section (repeatable)")
    p.add_argument("--data-root", default="", help="folder holding cifar-100-binary/ (default: the usual places)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated subset to run, e.g. accuracy alone for more epochs (default: all)")
    p.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # run one section (the driver's child)
    p.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    a.out = str(out)
    if a.section:  # a child: one section, its JSON into OUT
        sys.path.insert(0, str(REPO))
        fn = {"machine": section_machine, "packed": section_packed, "accuracy": section_accuracy}[a.section]
        write_json(out / f"{a.section}.json", fn(a, a.deadline or time.time() + 600))
        return 0
    a.work = a.work or tempfile.mkdtemp(prefix="gpu-check-")
    Path(a.work).mkdir(parents=True, exist_ok=True)
    caps = dict(DRY_CAPS if a.dry_run else CAPS)
    for item in a.timeout:
        name, _, secs = item.partition("=")
        if name not in SECTIONS:
            p.error(f"--timeout {item!r}: SECTION must be one of {','.join(SECTIONS)}")
        caps[name] = float(secs)
    chosen = [x for x in a.sections.split(",") if x]
    if not chosen or set(chosen) - set(SECTIONS):
        p.error(f"--sections {a.sections!r}: allowed a comma-separated subset of {','.join(SECTIONS)}")
    started = time.time()
    deadline = started + (a.budget or (170 if a.dry_run else 540))
    for f in [f"{s}.json" for s in chosen] + ["summary.json", "summary.md"]:  # others may be kept on purpose
        (out / f).unlink(missing_ok=True)
    cmds, status = commands(a), {}
    for s in (x for x in SECTIONS if x in chosen):
        left = deadline - time.time() - RESERVE["summary"]
        if s == "accuracy" and "compile" in chosen and not a.dry_run:
            left -= RESERVE["compile"]
        timeout = min(caps.get(s, left), left)
        argv = cmds[s] + (["--deadline", str(time.time() + timeout - 5)] if "--section" in cmds[s] else [])
        st = {"command": shown(cmds[s]), "timeout": timeout}
        print(f"gpu-check: {s} (timeout {max(timeout, 0):.0f} s)", flush=True)
        if timeout < 1:
            st.update(status="skipped: no time left", seconds=0.0)
        else:
            t0 = time.time()
            st["status"] = run(argv, Path(a.work) / f"{s}.log", timeout)
            st["seconds"] = time.time() - t0
        doc = read_json(out / f"{s}.json")
        if st["status"] == "ok" and doc is None:
            st["status"] = f"failed: {s}.json not written"
        inner = (doc or {}).get("status")
        if st["status"] == "ok" and inner and inner != "ok":  # the accuracy run's own outcome
            st["status"] = inner
        status[s] = st
        print(f"gpu-check: {s}: {st['status']} ({st['seconds']:.0f} s)", flush=True)
    write_json(out / "summary.json", {"sections": status, "work": a.work, "dry_run": a.dry_run,
                                      "wall_seconds": time.time() - started})
    text = summary(a, status, started)
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
