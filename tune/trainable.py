"""The Ray Tune function trainable: ``lucir.run`` with one ``tune.report`` per phase (DESIGN §2, §6).

A trial's ``config`` is a dict of flat lucir config keys (``Config.from_flat``); runner options
(experiment folder, base cache, resources) come through ``tune.with_parameters`` so that the trial
config (logged to MLflow, shown by Tune) holds only lucir fields.

Per phase, in this order (a scheduler may stop the trial *at* the report, DESIGN §6):
1. ``<exp>/trials/<trial_id>.json`` is rewritten atomically (status RUNNING, every completed phase);
2. phase 0 only: the state is published to the shared base-phase cache when this trial trained it;
3. ``tune.report(metrics, checkpoint=Checkpoint.from_directory(d))`` with ``d/state.pt``.

Inside a phase the worker saves its state to ``trials/<trial_id>.state.pt`` every ``checkpoint_every``
epochs (``lucir.run``'s ``on_checkpoint``), not to Tune: a report is one phase.  A restarted trial
(``FailureConfig.max_failures``, ``lucir resume``) continues from the further of ``tune.get_checkpoint()``
and that file: from the last epoch checkpoint of the phase in progress when it died.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from lucir.checkpoint import atomic_write_json, atomic_write_text
from lucir import record
from lucir.run import progress_of

log = logging.getLogger("lucir.tune")

STATE_FILE = "state.pt"
#: share of its GPU fraction a trial caps its allocator to (see runtime_overrides)
GPU_MEMORY_HEADROOM = 0.9
#: the metrics Tune's live table shows first (Ray 2.60's table takes the first 4 keys of a trial's last
#: result, in the order reported; RunConfig(progress_reporter=...) is ignored by its default output engine)
LEADING_METRICS = ("avg_inc_acc_cnn", "val_avg_inc_acc_cnn", "phase", "avg_inc_acc_nme")


class _Stopped(Exception):
    """The driver already gave this trial a final status."""


def runtime_overrides(config: dict, cpus: float, gpus: float) -> dict:
    """Fill the runtime fields from the trial's resources unless the user set them explicitly.

    threads = CPUs per trial (at least 1); with a fractional GPU share ``g`` the trial caps its GPU memory
    (Ray does not, DESIGN §6) to ``0.9 * g``: the cap covers only the caching allocator's blocks, while each
    process's CUDA context (some hundreds of MiB) and the allocator's fragmentation come on top of it, so
    four trials capped at exactly 0.25 would together ask for more than the whole GPU; with no GPU the
    trial runs on the CPU.  ``download`` is always off: a trial never downloads a dataset (concurrent
    trials would race to write the same folder, and a node without internet would hang); the driver
    checked the data before the sweep started, and a trial that cannot see it fails naming the path.
    """
    flat = dict(config)
    if not flat.get("threads"):
        flat["threads"] = max(1, int(cpus))
    if gpus and 0 < gpus < 1 and not flat.get("gpu_memory_fraction"):
        flat["gpu_memory_fraction"] = GPU_MEMORY_HEADROOM * float(gpus)
    flat["download"] = False
    if not gpus and flat.get("device", "auto") == "auto":
        flat["device"] = "cpu"
    return flat


def trial_doc(trial_id: str, trial_name: str, sweep: str, cfg, state: dict, status: str,
              base_cache: str, error: str | None = None, fused: dict | None = None) -> dict:
    """The trial's record (``lucir.record.TrialRecord``) as JSON, from its latest run state."""
    return record.TrialRecord(fused=fused or {},
        trial_id=trial_id, trial_name=trial_name, sweep=sweep, config=cfg.to_flat(),
        phases=[dict(r) for r in state["results"]] if state else [],
        acc_matrix_cnn=[list(r) for r in state["acc_cnn"]] if state else [],
        acc_matrix_nme=[list(r) for r in state["acc_nme"]] if state else [],
        status=status, base_cache=base_cache, error=error or "").to_json()


def report_metrics(result_metrics: dict, num_phases: int) -> dict:
    """The metrics of one report, ``LEADING_METRICS`` first (the columns of Tune's live table)."""
    m = {k: result_metrics[k] for k in LEADING_METRICS if k in result_metrics}
    m.update(result_metrics)
    m["num_phases"] = num_phases
    return m


def _report(metrics: dict, states: dict[str, dict]) -> None:
    """``tune.report`` with a checkpoint folder holding each state under its file name."""
    from lucir.checkpoint import save_state
    from ray import tune

    d = tempfile.mkdtemp(prefix="lucir-ckpt-")
    try:
        for name, st in states.items():
            save_state(st, Path(d) / name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _write_progress(path: Path, **fields) -> None:
    """``trials/<id>.progress``: where the worker is (pid, host, phase, epoch, ...); readers ignore it."""
    atomic_write_text(path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), **fields,
                                        "time": time.time()}) + "\n")


def lucir_trainable(config: dict, *, exp_dir: str, base_cache: bool = True, cpus: float = 1.0,
                    gpus: float = 0.0, cache_options: dict | None = None) -> None:
    """Function trainable: resume, run the remaining phases, report each (see the module docstring)."""
    import torch
    from ray import tune

    import lucir
    from tune.base_cache import BaseCache

    exp = Path(exp_dir)
    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    members = config.get(record.ARRAY_KEY)
    if members is not None and len(members) > 1:
        return _array_trainable(list(members), exp, trial_id, trial_name, cpus, gpus, base_cache, cache_options or {})
    if members is not None:  # an array of one is an ordinary trial
        config = dict(members[0])
    sweep = exp.name
    cfg = lucir.Config.from_flat(runtime_overrides(config, cpus, gpus))
    torch.set_num_threads(cfg.runtime.threads)
    trials = exp / "trials"
    trials.mkdir(parents=True, exist_ok=True)
    doc_path = trials / f"{trial_id}.json"
    progress_path = trials / f"{trial_id}.progress"
    P = cfg.protocol.phases

    def progress(phase: int, epoch: int = -1, loss: float | None = None) -> None:
        _write_progress(progress_path, phase=phase, epoch=epoch, loss=loss)

    def check_not_stopped() -> None:
        # A trial stopped by the scheduler (PRUNED) or finished (TERMINATED) has a final status set by the
        # driver; a training thread that outlived its stop (a reused actor) must not write on.
        if (record.read_status(exp, trial_id) or {}).get("status") in ("PRUNED", "TERMINATED"):
            raise _Stopped

    def save_epoch_checkpoint(st: dict) -> None:
        check_not_stopped()
        lucir.save_state(st, state_path)

    def publish_phase(st: dict, metrics: dict) -> None:
        check_not_stopped()
        lucir.save_state(st, state_path)
        atomic_write_json(doc_path, trial_doc(trial_id, trial_name, sweep, cfg, st, "RUNNING", cache_status))

    state_path = trials / f"{trial_id}.state.pt"
    state = None
    cache_status = "off"
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = lucir.load_state(Path(d) / STATE_FILE)
    # The trial's own copy of its latest state (written before each report) wins when it is newer:
    # a driver killed between a report and its next experiment snapshot restores the trial with an
    # older Tune checkpoint (or none); completed phases are still never trained twice (DESIGN §7).
    if state_path.exists():
        own = lucir.load_state(state_path)
        if progress_of(own) > progress_of(state):
            state = own
    if state is not None:
        try:
            cache_status = json.loads(doc_path.read_text()).get("base_cache", "off")
        except (OSError, ValueError):
            pass
        log.info("trial %s resumes after phase %d (epoch %d of the next)", trial_id, *progress_of(state))
        if state["phase"] >= P:  # finished, but the driver did not record it: report the last phase again
            atomic_write_json(doc_path, trial_doc(trial_id, trial_name, sweep, cfg, state, "RUNNING", cache_status))
            _report(report_metrics(state["results"][-1], P), {STATE_FILE: state})
            return

    claim = None
    try:
        if (state is None or state["phase"] < 0) and base_cache:  # no base phase yet (maybe one in progress)
            cache = BaseCache(exp / "base_cache", **(cache_options or {}))
            progress(0)
            look = cache.lookup(cfg.base_key(), who=trial_id)
            cache_status = look.status
            if look.status == "hit":  # a finished base phase beats this trial's own one in progress
                state = dict(look.state)
                state["config"] = cfg.identity()
                metrics = report_metrics(state["results"][0], P)
                publish_phase(state, metrics)
                _report(metrics, {STATE_FILE: state})
            else:
                claim = look.claim
        start = state["phase"] + 1 if state is not None else 0
        progress(start)
        for result, st in lucir.run(cfg, state, on_epoch=lambda ph, ep, loss: progress(ph, ep, loss),
                                    on_checkpoint=save_epoch_checkpoint):
            metrics = report_metrics(result.metrics(), P)
            publish_phase(st, metrics)
            if result.phase == 0 and claim is not None:
                claim.publish(st, {"trial_id": trial_id, "config": cfg.identity()})
                claim = None
            if result.phase < P:
                progress(result.phase + 1)
            _report(metrics, {STATE_FILE: st})
    except _Stopped:
        log.info("trial %s already has a final status (stopped by the driver); it writes nothing more", trial_id)
    finally:
        if claim is not None:
            claim.release()


def array_metrics(rows: dict[int, dict], num_phases: int) -> dict:
    """The report of a fused array's phase from its active members' metrics rows (member index -> row):
    ``phase``, ``num_phases``, member i's metrics under ``members/<i>`` (the driver's callbacks log member
    i as trial ``record.member_ids(...)[i]``), and the best member's ``LEADING_METRICS``."""
    vals = list(rows.values())
    out = {k: max(r[k] for r in vals) for k in LEADING_METRICS
           if k != "phase" and all(record.number(r.get(k)) is not None for r in vals)}
    # ^ the best member's value of the leading metrics: Tune's live table, and its check that a search's
    #   metric is in every result; the searcher (tune/arrays.py), ASHA and the callbacks read each member's
    out.update({"phase": vals[0]["phase"], "num_phases": num_phases, "array_size": len(rows),
                record.ARRAY_KEY: {str(i): dict(r) for i, r in rows.items()}})
    return out


def _array_trainable(members: list[dict], exp: Path, trial_id: str, trial_name: str, cpus: float, gpus: float,
                     base_cache: bool, cache_options: dict) -> None:
    """A fused array (``lucir.fused.run_fused``) as one Tune trial: each member keeps its own record
    ``trials/<member id>.json`` and state ``trials/<member id>.state.pt``; every phase is one report with
    the active members' metrics and states.  Members that ASHA stopped (``lucir.record.read_pruned``, read
    at every phase end) are neither published nor trained further: the array goes on with the others
    (``run_fused`` restarted from their states).  It resumes from the further along of Tune's checkpoint
    and the active members' own state files (all at one phase), takes its base phase from the shared cache
    when every member's base key is there (the sweep pre-trains them, tune/pretrain.py), and otherwise
    trains it itself (``run_fused`` trains a base phase the members share once)."""
    import torch
    from ray import tune

    import lucir
    from lucir.fused import member_keys, run_fused
    from tune.base_cache import BaseCache

    cfgs = [lucir.Config.from_flat(runtime_overrides(m, cpus, gpus)) for m in members]
    torch.set_num_threads(cfgs[0].runtime.threads)
    n, P = len(cfgs), cfgs[0].protocol.phases
    ids = record.member_ids(trial_id, n)
    trials = exp / "trials"
    trials.mkdir(parents=True, exist_ok=True)
    state_paths = [trials / f"{i}.state.pt" for i in ids]
    progress_path = trials / f"{trial_id}.progress"
    partial_path = trials / f"{trial_id}.partial.pt"  # the array's last epoch checkpoint inside a phase

    def live() -> list[int]:
        gone = record.read_pruned(exp, trial_id)
        return [i for i in range(n) if ids[i] not in gone]

    def progress(phase: int, epoch: int = -1, losses=None) -> None:
        _write_progress(progress_path, phase=phase, epoch=epoch, loss=losses, members=ids)

    active = live()
    if not active:
        return
    states = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if all((Path(d) / f"{i}.{STATE_FILE}").exists() for i in active):
                states = {i: lucir.load_state(Path(d) / f"{i}.{STATE_FILE}") for i in active}
    if all(state_paths[i].exists() for i in active):
        own = {i: lucir.load_state(state_paths[i]) for i in active}
        own = {i: {k: v for k, v in st.items() if k != "partial"} for i, st in own.items() if st["phase"] >= 0}
        if len(own) == len(active) and len({st["phase"] for st in own.values()}) == 1 and \
                progress_of(own[active[0]]) > progress_of(states[active[0]] if states else None):
            states = own
    cache_status = "off"
    if states is None and base_cache:
        cache = BaseCache(exp / "base_cache", **(cache_options or {}))
        found = {i: cache.peek(cfgs[i].base_key(), who=trial_id) for i in active}
        if all(st is not None for st in found.values()):
            states = {i: {**st, "config": cfgs[i].identity()} for i, st in found.items()}
            cache_status = "hit"

    def check_not_stopped() -> None:
        if (record.read_status(exp, ids[0]) or {}).get("status") in ("PRUNED", "TERMINATED"):
            raise _Stopped

    def save_epoch_checkpoint(partial: dict) -> None:
        check_not_stopped()
        lucir.save_state(partial, partial_path)

    def own_partial() -> dict | None:
        """The array's epoch checkpoint of the phase after ``states`` for exactly the active members."""
        if not partial_path.exists():
            return None
        p = lucir.load_state(partial_path)
        done = -1 if states is None else states[active[0]]["phase"]
        ok = p.get("phase") == done + 1 and p.get("config_ids") == member_keys([cfgs[i] for i in active])
        return p if ok else None

    def publish(rows: dict[int, dict], sts: dict[int, dict]) -> None:
        check_not_stopped()
        for i, st in sts.items():
            lucir.save_state(st, state_paths[i])
            atomic_write_json(trials / f"{ids[i]}.json",
                              trial_doc(ids[i], f"{trial_name}_m{i}" if n > 1 else trial_name, exp.name, cfgs[i],
                                        st, "RUNNING", cache_status, fused={"array": trial_id, "index": i, "size": n}))
        _report(array_metrics(rows, P), {f"{i}.{STATE_FILE}": st for i, st in sts.items()})

    try:
        if states is not None:
            first = states[active[0]]
            log.info("array %s (%d of %d members) resumes after phase %d", trial_id, len(active), n, first["phase"])
            if cache_status == "hit":
                publish({i: st["results"][0] for i, st in states.items()}, states)
            if first["phase"] >= P:
                publish({i: st["results"][-1] for i, st in states.items()}, states)
                return
        while active:
            progress(0 if states is None else states[active[0]]["phase"] + 1)
            part = own_partial()
            if part is not None:
                log.info("array %s goes on inside phase %d after epoch %d", trial_id, part["phase"], part["epoch"])
            run = run_fused([cfgs[i] for i in active], None if states is None else [states[i] for i in active],
                            on_epoch=lambda ph, ep, losses: progress(ph, ep, losses), partial=part,
                            on_checkpoint=save_epoch_checkpoint)
            for out in run:
                phase = out[0][0].phase
                keep = set(live())  # ASHA's word on the last report: stop those members' slices now
                done = {i: o for i, o in zip(active, out) if i in keep}
                if done:
                    publish({i: r.metrics() for i, (r, _) in done.items()}, {i: st for i, (_, st) in done.items()})
                if len(done) < len(active):
                    run.close()
                    active, states = list(done), {i: st for i, (_, st) in done.items()}
                    if active and phase < P:
                        log.info("array %s goes on with members %s", trial_id, [ids[i] for i in active])
                    break
                if phase < P:
                    progress(phase + 1)
            else:
                break
            if phase >= P:
                break
    except _Stopped:
        log.info("array %s already has a final status; it writes nothing more", trial_id)


def make_trainable(exp_dir: str, *, cpus: float = 1.0, gpus: float = 0.0, base_cache: bool = True,
                   cache_options: dict | None = None):
    """The trainable as given to ``Tuner`` / ``Tuner.restore``: parameters bound, resources attached."""
    from ray import tune

    fn = tune.with_parameters(lucir_trainable, exp_dir=str(Path(exp_dir).absolute()), base_cache=base_cache,
                              cpus=cpus, gpus=gpus, cache_options=cache_options or {})
    resources: dict[str, Any] = {"cpu": cpus}
    if gpus:
        resources["gpu"] = gpus
    return tune.with_resources(fn, resources)
