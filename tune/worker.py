"""The Ray Tune function trainable: run one slot (or one fused array of slots) of a sweep (DESIGN §2, §6).

Ray Tune only executes: the trainable's config is ``{"slots": [ids], "array": id or None}`` and everything
else comes from the experiment folder, the one truth:

* ``<exp>/lucir_experiment.json`` gives each slot's config (a search slot's searched params come from its
  Optuna trial, ``tune/study.py``).  A worker that cannot see that file refuses to start, naming its host
  and the path: it never creates a folder of its own.
* ``trials/<slot>.state.pt`` (a fused array: ``trials/<array>.state.pt``, all members in one file) is the
  resumable state, written atomically every ``checkpoint_every`` epochs (``.partial.pt`` for an array)
  and at every phase end.  A restarted worker (Tune's ``FailureConfig`` retry, the next driver) goes on
  from it: a kill loses at most the epochs since the last checkpoint.  No Tune checkpoint is used.
* ``trials/<slot>.json`` (``lucir.record.TrialRecord``) is the slot's record, written only here: after
  every phase (status RUNNING), at every (re)start of training (``starts``), and at the end (TERMINATED or
  PRUNED).  Per phase, in this order: state, record, base-cache publication, Optuna report and prune
  decision, ``tune.report``.
* Every write first checks that the driver that started this worker still holds ``driver.lock`` (its
  token): a worker outliving its driver never writes beside the next driver's workers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from lucir import record
from lucir.checkpoint import atomic_write_json, atomic_write_text
from tune.base_cache import BaseCache

log = logging.getLogger("lucir.tune")

#: share of its GPU fraction a trial caps its allocator to (see runtime_overrides)
GPU_MEMORY_HEADROOM = 0.9
#: the metrics Tune's live table shows first (Ray's table takes the first keys of a trial's last result)
LEADING_METRICS = ("avg_inc_acc_cnn", "val_avg_inc_acc_cnn", "phase", "avg_inc_acc_nme")


class WorkerError(RuntimeError):
    """A worker cannot run its slot (the experiment folder is not visible on its node, say)."""


class Superseded(Exception):
    """The driver that started this worker no longer holds the folder's lock: write nothing more."""


def runtime_overrides(config: dict, cpus: float, gpus: float) -> dict:
    """The runtime fields from the trial's resources unless the user set them: threads = CPUs per trial; a
    fractional GPU share ``g`` caps the trial's GPU memory to ``0.9 g`` (Ray does not cap it; each process's
    CUDA context comes on top); no GPU: the CPU.  ``download`` is always off: trials never download (the
    driver checked the data before the sweep started)."""
    flat = dict(config)
    if not flat.get("threads"):
        flat["threads"] = max(1, int(cpus))
    if gpus and 0 < gpus < 1 and not flat.get("gpu_memory_fraction"):
        flat["gpu_memory_fraction"] = GPU_MEMORY_HEADROOM * float(gpus)
    flat["download"] = False
    if not gpus and flat.get("device", "auto") == "auto":
        flat["device"] = "cpu"
    return flat


def lock_token(exp: Path) -> str | None:
    return (record.read_json_dict(Path(exp) / record.LOCK_FILE) or {}).get("token")


def read_experiment_on_node(exp: Path) -> dict:
    doc = record.read_json_dict(Path(exp) / record.EXPERIMENT_FILE)
    if doc is None:
        raise WorkerError(f"worker on host {socket.gethostname()}: {Path(exp) / record.EXPERIMENT_FILE} is not "
                          "visible on this node; --out must be on storage every node mounts at the same path")
    return doc


class Member:
    """One slot inside a worker: its config, record and (search) Optuna trial."""

    def __init__(self, exp: Path, doc: dict, slot: str, token: str, cpus: float, gpus: float,
                 fused: dict | None = None):
        import lucir
        from tune import study

        self.exp, self.slot, self.token, self.metric = exp, slot, token, doc["metric"]
        entry = {s["id"]: s for s in doc["slots"]}[slot]
        flat = dict(entry["config"])
        self.st = study.trial_for_slot(exp, doc, slot) if doc["kind"] == "search" else None
        if self.st is not None:
            flat.update(self.st.params)
        self.cfg = lucir.Config.from_flat(runtime_overrides(flat, cpus, gpus))
        self.P = entry.get("last_phase") or self.cfg.protocol.phases  # a first-task search slot stops early
        old = record.read_json_dict(record.record_path(exp, slot))
        self.rec = (record.TrialRecord.from_json(old) if old else
                    record.TrialRecord(trial_id=slot, trial_name=slot, sweep=doc["name"]))
        self.rec.config, self.rec.fused = self.cfg.to_flat(), dict(fused or {})
        self.rec.optuna_trial = None if self.st is None else self.st.number
        self.rec.last_phase = entry.get("last_phase")

    @property
    def final(self) -> bool:
        return record.is_final(self.rec.to_json())

    def guard(self) -> None:
        if lock_token(self.exp) != self.token:
            raise Superseded

    def write(self) -> None:
        self.guard()
        atomic_write_json(record.record_path(self.exp, self.slot), self.rec.to_json())

    def started(self, phase: int, epoch: int = 0) -> None:
        self.rec.status = "RUNNING"
        self.rec.error = ""
        self.rec.starts.append({"phase": phase, "epoch": epoch, "time": time.time(),
                                "host": socket.gethostname(), "pid": os.getpid()})
        self.write()

    def phase_done(self, state: dict) -> bool:
        """Record the phases of ``state`` (any not yet in the record); for a search, report each to the
        study and return the pruner's word."""
        rows = [dict(r) for r in state["results"]]
        now = time.time()
        self.rec.ended = (self.rec.ended + [now] * len(rows))[:len(rows)]
        self.rec.phases, self.rec.status = rows, "RUNNING"
        self.rec.acc_matrix_cnn = [list(r) for r in state["acc_cnn"]]
        self.rec.acc_matrix_nme = [list(r) for r in state["acc_nme"]]
        self.write()
        return self.judge()

    def judge(self) -> bool:
        from tune import study

        pruned = False
        if self.st is not None:
            for row in self.rec.phases:
                pruned = study.report(self.st, record.number(row.get(self.metric)), int(row["phase"]))
        return pruned and len(self.rec.phases) < self.P + 1

    def end(self, status: str) -> None:
        from tune import study

        self.rec.status = status
        self.write()
        if self.st is not None:
            last = self.rec.phases[-1] if self.rec.phases else {}
            study.tell(self.st.study, self.st.number, status, record.number(last.get(self.metric)))


def report_metrics(metrics: dict, num_phases: int) -> dict:
    """The metrics of one report, ``LEADING_METRICS`` first (the columns of Tune's live table)."""
    m = {k: metrics[k] for k in LEADING_METRICS if k in metrics}
    m.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    m["num_phases"] = num_phases
    return m


def _progress(exp: Path, name: str, **fields) -> None:
    """``trials/<slot or array>.progress``: where the worker is (pid, host, phase, epoch); readers ignore it."""
    atomic_write_text(Path(exp) / record.TRIALS_DIR / f"{name}.progress",
                      json.dumps({"pid": os.getpid(), "host": socket.gethostname(), **fields, "time": time.time()},
                                 default=str) + "\n")


def lucir_trainable(config: dict, *, exp_dir: str, token: str, cpus: float = 1.0, gpus: float = 0.0,
                    base_cache: bool = True) -> None:
    """Function trainable (see the module docstring)."""
    import torch

    exp = Path(exp_dir)
    doc = read_experiment_on_node(exp)
    (exp / record.TRIALS_DIR).mkdir(exist_ok=True)  # never parents: the folder is the driver's
    unit = config.get("unit", config)  # {"unit": {...}}: the Tuner's grid over units
    slots, array = list(unit["slots"]), unit.get("array")
    cache = BaseCache(exp / record.BASE_CACHE_DIR) if base_cache else None
    try:
        if array is None:
            m = Member(exp, doc, slots[0], token, cpus, gpus)
            torch.set_num_threads(m.cfg.runtime.threads)
            _run_slot(exp, m, cache)
        else:
            members = [Member(exp, doc, s, token, cpus, gpus, fused={"array": array, "index": i, "size": len(slots)})
                       for i, s in enumerate(slots)]
            torch.set_num_threads(members[0].cfg.runtime.threads)
            _run_array(exp, array, [m for m in members if not m.final], cache)
    except Superseded:
        log.warning("slot(s) %s: the driver that started this worker is gone; it writes nothing more", slots)


def _run_slot(exp: Path, m: Member, cache: BaseCache | None) -> None:
    import lucir
    from ray import tune

    if m.final:
        return
    state_path = exp / record.TRIALS_DIR / f"{m.slot}.state.pt"
    state = lucir.load_state(state_path) if state_path.exists() else None
    if state is not None and state["phase"] >= 0 and len(m.rec.phases) < state["phase"] + 1:
        if m.phase_done(state) and state["phase"] < m.P:  # killed between its state and its record
            return m.end("PRUNED")
    elif m.judge():  # killed between its record and the pruner's word
        return m.end("PRUNED")
    if state is not None and state["phase"] >= m.P:
        return m.end("TERMINATED")

    def save(st: dict) -> None:
        m.guard()
        lucir.save_state(st, state_path)

    if state is None and cache is not None:
        hit = cache.get(m.cfg.base_key(), who=m.slot)
        m.rec.base_cache = "miss" if hit is None else "hit"
        if hit is not None:
            state = {**hit, "config": m.cfg.identity()}
            save(state)
            if m.phase_done(state):
                return m.end("PRUNED")
    start = -1 if state is None else state["phase"]
    m.started(start + 1, int(((state or {}).get("partial") or {}).get("epoch", -1)) + 1)
    for result, st in lucir.run(m.cfg, state, on_checkpoint=save,
                                on_epoch=lambda ph, ep, loss: _progress(exp, m.slot, phase=ph, epoch=ep, loss=loss)):
        save(st)
        pruned = m.phase_done(st)
        if result.phase == 0 and cache is not None and m.rec.base_cache == "miss":
            cache.put(m.cfg.base_key(), st, {"trial_id": m.slot, "config": m.cfg.identity()})
        if result.phase >= m.P or pruned:
            m.end("TERMINATED" if result.phase >= m.P else "PRUNED")
        else:
            m.started(result.phase + 1)
        tune.report(report_metrics(result.metrics(), m.P))
        if m.final:
            return


def _run_array(exp: Path, array: str, active: list[Member], cache: BaseCache | None) -> None:
    """A fused array (``lucir.fused.run_fused``) of the slots ``active``: one state file for all members
    (so they are always at one phase), one record, Optuna trial and prune decision per member; a pruned
    member's slice stops and the array goes on with the others."""
    import lucir
    from lucir.fused import member_keys, run_fused
    from ray import tune

    if not active:
        return
    P = active[0].P
    state_path, partial_path = (exp / record.TRIALS_DIR / f"{array}{x}" for x in (".state.pt", ".partial.pt"))
    guard = active[0].guard
    states = None
    if state_path.exists():
        doc = lucir.load_state(state_path)
        states = {m.slot: doc["members"][m.slot] for m in active}
    elif cache is not None:
        found = {m.slot: cache.get(m.cfg.base_key(), who=m.slot) for m in active}
        if all(st is not None for st in found.values()):
            states = {m.slot: {**found[m.slot], "config": m.cfg.identity()} for m in active}
            for m in active:
                m.rec.base_cache = "hit"

    def keep(members: list[Member]) -> list[Member]:
        """Publish phases a kill left unrecorded, apply the pruner; the members that go on."""
        out = []
        for m in members:
            st = None if states is None else states[m.slot]
            if st is not None and (len(m.rec.phases) < st["phase"] + 1 and m.phase_done(st) or m.judge()):
                m.end("PRUNED")
            elif st is not None and st["phase"] >= P:
                m.end("TERMINATED")
            else:
                out.append(m)
        return out

    def save_partial(part: dict) -> None:
        guard()
        lucir.save_state(part, partial_path)

    active = keep(active)
    while active:
        done = -1 if states is None else states[active[0].slot]["phase"]
        part = lucir.load_state(partial_path) if partial_path.exists() else None
        if part is not None and not (part.get("phase") == done + 1 and
                                     part.get("config_ids") == member_keys([m.cfg for m in active])):
            part = None
        for m in active:
            m.started(done + 1, 0 if part is None else int(part["epoch"]) + 1)
        run = run_fused([m.cfg for m in active], None if states is None else [states[m.slot] for m in active],
                        partial=part, on_checkpoint=save_partial,
                        on_epoch=lambda ph, ep, losses: _progress(exp, array, phase=ph, epoch=ep, loss=losses))
        for out in run:
            phase = out[0][0].phase
            states = {m.slot: st for m, (_, st) in zip(active, out)}
            guard()
            lucir.save_state({"phase": phase, "members": states}, state_path)
            pruned = {m.slot for m, (_, st) in zip(active, out) if m.phase_done(st)}
            metrics = {m.slot: r.metrics() for m, (r, _) in zip(active, out)}
            for m in active:
                if phase >= P or m.slot in pruned:
                    m.end("TERMINATED" if phase >= P else "PRUNED")
            best = max(metrics.values(), key=lambda r: record.number(r.get(active[0].metric)) or -1)
            tune.report({**report_metrics(best, P), "members": len(active)})
            if phase >= P:
                return
            if pruned:
                run.close()
                active = [m for m in active if m.slot not in pruned]
                break
            for m in active:
                m.started(phase + 1)
        else:
            return
