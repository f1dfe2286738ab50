"""Reading capacity.sh results: the measured costs per unit of each process.

Part of the capacity model (loadtest/capacity.py plans from what this
reads). A results folder's summary.json holds, per configuration (sqlite,
cassandra), each process's CPU seconds over the loaded window and over an
idle window, its peak and resident memory and the work it did; from those
come the costs per unit of work beyond each process's idle cost
(`Measured`), one run at a time (`measured_from`) or as medians over several
(`median_of`). Only the Python standard library.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

# The JVM's JIT compiler threads: start-up cost, not a cost per event of a
# broker or Cassandra node that has run for a while.
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")


class CapacityError(Exception):
    """Results that cannot support a plan (a missing process, no work done)."""


@dataclass
class Measured:
    """Per-unit costs read from one capacity.sh run (and the peer figures)."""

    source: str
    events_per_cpu_s: dict[str, float] = field(default_factory=dict)  # gateway, broker, counter
    rows_per_event: float = 0.0
    writer_rows_per_cpu_s: float = 0.0
    queries_per_cpu_s: float = 0.0
    # The query service's cache lookups by outcome in the window (hit, miss, ...).
    query_lookups: dict[str, int] = field(default_factory=dict)
    redis_ops_per_cpu_s: float = 0.0
    views_bytes_per_event: float = 0.0
    counts_bytes_per_row: float = 0.0
    rss_bytes: dict[str, float] = field(default_factory=dict)
    counter_bytes_per_dedup_entry: float = 0.0
    cassandra_rows_per_cpu_s: float | None = None
    cassandra_writer_rows_per_cpu_s: float | None = None
    # Cores each process used with no load (by process name), already left
    # out of the costs per unit above.
    fixed_cores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _process(run: dict, name: str) -> dict:
    try:
        return run["processes"][name]
    except KeyError:
        raise CapacityError(f"configuration {run.get('configuration')}: no process {name!r} in the results") from None


def _steady_cpu_s(process: dict) -> float:
    """CPU seconds without the JIT compiler threads."""
    jit = sum(process.get("threads", {}).get(t, 0.0) for t in JIT_THREADS)
    return process["cpu_s"] - jit


def _ratio(work: float, cpu_s: float, what: str) -> float:
    if work <= 0 or cpu_s <= 0:
        raise CapacityError(f"{what}: work {work} over {cpu_s} CPU-s cannot give a cost per unit")
    return work / cpu_s


def _per_cpu_s(run: dict, name: str, work: float, m: Measured) -> float:
    """Units of `work` per CPU-second of process `name` beyond its idle cost.

    The run's idle window (no load, same processes, just before the load)
    gives the cores the process burns regardless of load (polls, heartbeats,
    timers): recorded in `m.fixed_cores` and left out of the cost per unit,
    which would otherwise charge them to the work and grow them with the rate.
    """
    what = f"{name} ({run['configuration']})"
    cpu_s = _steady_cpu_s(_process(run, name))
    idle = run.get("idle", {})
    idle_process = idle.get("processes", {}).get(name)
    if idle_process is None or not idle.get("window_s"):
        m.fixed_cores.setdefault(name, 0.0)
        return _ratio(work, cpu_s, what)
    fixed = max(0.0, _steady_cpu_s(idle_process)) / idle["window_s"]
    marginal = cpu_s - fixed * run["window_s"]
    if marginal <= 0:
        m.notes.append(f"{what}: no CPU above its idle rate; its whole CPU is charged to the work")
        m.fixed_cores.setdefault(name, 0.0)
        return _ratio(work, cpu_s, what)
    m.fixed_cores.setdefault(name, fixed)
    return _ratio(work, marginal, what)


def _bytes_per_dedup_entry(run: dict, m: Measured) -> float:
    """The counter's memory per dedup entry: the growth of its RSS over the
    growth of its dedup window in the measured window; without those, its
    whole peak RSS over the entries at the end (an upper bound: the base
    memory is charged to the entries)."""
    work, counter = run["work"], _process(run, "counter")
    entries = work.get("counter_dedup_entries_at_end") or 0
    if entries <= 0:
        raise CapacityError("the counter reported no dedup entries: its memory per entry is unknown")
    grown = entries - (work.get("counter_dedup_entries_before") or 0)
    before, after = counter.get("rss_kib_before"), counter.get("rss_kib_after")
    if before and after and after > before and grown > 0:
        return (after - before) * 1024 / grown
    m.notes.append("counter memory per dedup entry: its whole peak RSS over the entries (an upper bound)")
    return counter["peak_rss_kib"] * 1024 / entries


def measured_from(summary: dict, peers: dict | None = None) -> Measured:
    """The per-unit costs of a capacity.sh summary (and a peers.sh summary)."""
    runs = {run["configuration"]: run for run in summary["configurations"]}
    if "sqlite" not in runs:
        raise CapacityError("the results have no sqlite configuration")
    run = runs["sqlite"]
    work = run["work"]
    # Records written to the views topic in the window: what the gateway and
    # the broker handled (a 503 after the ack timeout may have been written).
    events = work["events_produced"]
    m = Measured(source=f"{summary['command']} ({summary['machine']['date']}, commit {summary['machine']['commit']})")
    m.events_per_cpu_s["gateway"] = _per_cpu_s(run, "ingest", events, m)
    m.events_per_cpu_s["broker"] = _per_cpu_s(run, "broker", events, m)
    m.events_per_cpu_s["counter"] = _per_cpu_s(run, "counter", work["events_counted"], m)
    m.rows_per_event = work["deltas_written"] / work["events_counted"]
    m.writer_rows_per_cpu_s = _per_cpu_s(run, "writer", work["deltas_written"], m)
    m.queries_per_cpu_s = _per_cpu_s(run, "query", work["queries_answered"], m)
    m.query_lookups = work.get("query_cache_lookups") or {}
    # Redis serves the queries' cache reads and the writer's write-through.
    m.redis_ops_per_cpu_s = _per_cpu_s(run, "redis", work["queries_answered"] + work["deltas_written"], m)
    if "idle" not in run:
        m.notes.append("the run has no idle window: every cost per unit includes the process's fixed costs")
    m.views_bytes_per_event = run["topics"]["views"]["bytes_per_record"]
    m.counts_bytes_per_row = run["topics"]["counts"]["bytes_per_record"]
    m.rss_bytes = {name: p["peak_rss_kib"] * 1024 for name, p in run["processes"].items() if p.get("peak_rss_kib")}
    for name, each in runs.items():
        answers = each.get("loadgen", {}).get("answers") or {}
        refused = sum(n for status, n in answers.items() if status != "202")
        if refused:
            m.notes.append(
                f"**the {name} run was overloaded**: {refused} of {sum(answers.values())} ingest requests were "
                f"refused ({answers}); its costs per unit include the contention"
            )
    m.counter_bytes_per_dedup_entry = _bytes_per_dedup_entry(run, m)
    if peers is not None:
        apply_peers(m, peers)
    if "cassandra" in runs:
        c = runs["cassandra"]
        rows = c["work"]["deltas_written"]
        cassandra = Measured(source="")
        m.cassandra_writer_rows_per_cpu_s = _per_cpu_s(c, "writer", rows, cassandra)
        if "cassandra" in c["processes"]:
            m.cassandra_rows_per_cpu_s = _per_cpu_s(c, "cassandra", rows, cassandra)
            m.fixed_cores["cassandra"] = cassandra.fixed_cores["cassandra"]
        m.notes += cassandra.notes
    return m


def apply_peers(m: Measured, peers: dict) -> None:
    """The counter's cost from a peers.sh summary (CPU-bound on a pre-filled topic)."""
    tally = peers["medians"]["tally"]
    measured = m.events_per_cpu_s["counter"]
    m.events_per_cpu_s["counter"] = tally["events_per_cpu_s"]
    m.notes.append(
        f"counter: {tally['events_per_cpu_s']:,.0f} events per CPU-second from `{peers['command']}` "
        f"({peers['machine']['date']}): CPU-bound on a pre-filled topic, instead of the capacity runs' "
        f"{measured:,.0f}"
    )


def median_of(runs: list[Measured]) -> Measured:
    """Each figure's median over several runs (those that measured it); the
    cache lookups summed; every run's notes, numbered."""
    if len(runs) == 1:
        return runs[0]

    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    def med_dict(dicts: list[dict[str, float]]) -> dict[str, float]:
        return {k: med([d.get(k) for d in dicts]) for k in sorted(set().union(*dicts))}

    m = Measured(source="; ".join(f"run {i + 1}: {r.source}" for i, r in enumerate(runs)))
    for name in ("events_per_cpu_s", "rss_bytes", "fixed_cores"):
        setattr(m, name, med_dict([getattr(r, name) for r in runs]))
    for name in (
        "rows_per_event",
        "writer_rows_per_cpu_s",
        "queries_per_cpu_s",
        "redis_ops_per_cpu_s",
        "views_bytes_per_event",
        "counts_bytes_per_row",
        "counter_bytes_per_dedup_entry",
        "cassandra_rows_per_cpu_s",
        "cassandra_writer_rows_per_cpu_s",
    ):
        setattr(m, name, med([getattr(r, name) for r in runs]))
    m.query_lookups = {k: sum(r.query_lookups.get(k, 0) for r in runs) for k in set().union(*(r.query_lookups for r in runs))}
    m.notes = [f"run {i + 1}: {note}" for i, r in enumerate(runs) for note in r.notes]
    return m


def load_summary(results: Path) -> dict:
    path = results / "summary.json" if results.is_dir() else results
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CapacityError(f"cannot read {path}: {e}") from e
