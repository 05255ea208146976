"""The Ray Tune function trainable: run one slot (or one fused array of slots) of a sweep (DESIGN §2, §6).

Ray Tune only executes: the trainable's config is ``{"slots": [ids], "array": id or None}`` and everything
else comes from the experiment folder, the one truth:

* ``<exp>/lucir_experiment.json`` gives each slot's config (a search slot's searched params come from its
  Optuna trial, ``tune/study.py``).  A worker that cannot see that file refuses to start, naming its host
  and the path: it never creates a folder of its own.
* ``trials/<slot>.state.pt`` (a fused array: ``trials/<array>.state.pt``; every member's state after
  their last phase, in one file) is the resumable state, written atomically at every phase end, and
  ``trials/<slot or array>.partial.pt`` the phase in progress, every ``checkpoint_every`` epochs.  A restarted worker (Tune's ``FailureConfig`` retry, the next driver) goes on
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
        self.prune = doc["kind"] == "search" and bool(doc["search"].get("prune"))
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
        self.rec.starts.append({"phase": phase, "epoch": epoch, "time": time.time(), "host": socket.gethostname(),
                                "pid": os.getpid(), "node": _ray_node()})
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
        """Report the recorded phases to the study; whether successive halving stops the slot at its last."""
        from tune import study

        if self.st is None or not self.st.running:
            return False
        study.report(self.st, self.rec.phases, self.metric)
        last = record.last_value(self.rec.to_json(), self.metric)
        return (self.prune and last is not None and len(self.rec.phases) < self.P + 1
                and study.halving(self.st.study, len(self.rec.phases) - 1, last))

    def end(self, status: str) -> None:
        from tune import study

        self.rec.status = status
        self.write()
        if self.st is not None and self.st.running:
            study.tell(self.st.study, self.st.number, status, record.last_value(self.rec.to_json(), self.metric))


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
    members = [Member(exp, doc, s, token, cpus, gpus, fused=None if array is None else
                      {"array": array, "index": i, "size": len(slots)}) for i, s in enumerate(slots)]
    torch.set_num_threads(members[0].cfg.runtime.threads)
    try:
        _run(exp, array or slots[0], [m for m in members if not m.final],
             BaseCache(exp / record.BASE_CACHE_DIR) if base_cache else None)
    except Superseded:
        log.warning("slot(s) %s: the driver that started this worker is gone; it writes nothing more", slots)


def _ray_node() -> str | None:
    """The Ray node this worker runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _run(exp: Path, name: str, active: list[Member], cache: BaseCache | None) -> None:
    """One slot, or a fused array of slots (``lucir.run.run_members`` over the members that are not final):
    one state file for all members (so they are always at one phase), one record, Optuna trial and prune
    decision per member; a pruned member's slice stops and the others go on.  ``name``: the slot's id, or
    the array's."""
    import lucir
    from lucir.fused import member_keys
    from lucir.run import run_members
    from ray import tune

    if not active:
        return
    P, guard = active[0].P, active[0].guard
    state_path, partial_path = (exp / record.TRIALS_DIR / f"{name}{x}" for x in (".state.pt", ".partial.pt"))
    states = lucir.load_state(state_path)["members"] if state_path.exists() else None
    if states is None and cache is not None:  # the shared base phase, pre-trained by the driver
        found = {m.slot: cache.get(m.cfg.base_key(), who=m.slot) for m in active}
        for m in active:
            m.rec.base_cache = "miss" if found[m.slot] is None else "hit"
        if all(st is not None for st in found.values()):
            states = {m.slot: {**found[m.slot], "config": m.cfg.identity()} for m in active}

    def goes_on(m: Member) -> bool:
        """Record phases a kill left unrecorded, apply the pruner; False when the slot ended."""
        st = None if states is None else states[m.slot]
        if st is not None and (m.phase_done(st) if len(m.rec.phases) < st["phase"] + 1 else m.judge()):
            m.end("PRUNED")
        elif st is not None and st["phase"] >= P:
            m.end("TERMINATED")
        return not m.final

    def save_partial(part: dict, last: list[dict]) -> None:
        guard()
        lucir.save_state(part, partial_path)  # with the members' config_ids (lucir.fused.member_keys)

    active = [m for m in active if goes_on(m)]
    while active:
        done = -1 if states is None else states[active[0].slot]["phase"]
        part = lucir.load_state(partial_path) if partial_path.exists() else None
        if part is not None and not (part.get("phase") == done + 1 and
                                     part.get("config_ids") == member_keys([m.cfg for m in active])):
            part = None
        for m in active:
            m.started(done + 1, 0 if part is None else int(part["epoch"]) + 1)
        run = run_members([m.cfg for m in active], None if states is None else [states[m.slot] for m in active],
                          partial=part, on_checkpoint=save_partial,
                          on_epoch=lambda ph, ep, losses: _progress(exp, name, phase=ph, epoch=ep, loss=losses))
        for out in run:
            phase = out[0][0].phase
            states = {m.slot: st for m, (_, st) in zip(active, out)}
            guard()
            lucir.save_state({"phase": phase, "members": states}, state_path)
            pruned = {m.slot for m in active if m.phase_done(states[m.slot])}
            if phase == 0 and cache is not None:  # a key no other slot shares: published for a resumed sweep
                for m in active:
                    if m.rec.base_cache == "miss":
                        cache.put(m.cfg.base_key(), states[m.slot], {"trial_id": m.slot, "config": m.cfg.identity()})
            for m in active:
                if phase >= P or m.slot in pruned:
                    m.end("TERMINATED" if phase >= P else "PRUNED")
            metrics = [r.metrics() for r, _ in out]
            best = max(metrics, key=lambda r: record.number(r.get(active[0].metric)) or -1)
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
