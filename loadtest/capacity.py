#!/usr/bin/env python3
"""Capacity plan from measured costs: what Tally needs for a target load.

    loadtest/capacity.py RESULTS_DIR... [--peers PEERS_SUMMARY] [--write CAPACITY.md]

Each RESULTS_DIR is a folder written by loadtest/scripts/capacity.sh (or its
summary.json): each service's CPU seconds, peak RSS and work done under one
open-loop load, as separate processes on one broker; with several, each
figure is the median over the runs that measured it. From those it derives
per-core capacities (events per CPU-second of the gateway, the broker, the
counter; rows per CPU-second of the writer and of Cassandra; queries per
CPU-second of the query service and Redis), then sizes every component for
10k / 100k / 1M events/s and 10k / 100k queries/s under the planning rules
below (`Rules`). With --peers (a summary.json of loadtest/scripts/peers.sh)
the counter's cost is its CPU-bound figure from the peer comparison instead.

Prints the Markdown tables; with --write it replaces the text between the
`<!-- capacity:begin -->` and `<!-- capacity:end -->` markers of that file.
Only the Python standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

BEGIN = "<!-- capacity:begin -->"
END = "<!-- capacity:end -->"
# The JVM's JIT compiler threads: start-up cost, not a cost per event of a
# broker or Cassandra node that has run for a while.
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")
MIB = 1024 * 1024
GIB = 1024 * MIB


class CapacityError(Exception):
    """Results that cannot support a plan (a missing process, no work done)."""


@dataclass(frozen=True)
class Rules:
    """The planning rules; every figure not measured is one of these."""

    # Plan each process at this share of what a core was measured to do:
    # room for bursts, for catching up after an outage at the same pace as
    # the outage lasted, and for one of N >= 2 instances failing.
    utilisation: float = 0.5
    # Cores per instance of a Tally service (assumption: 2-vCPU containers).
    cores_per_instance: int = 2
    # At least this many instances of every service (one can fail or roll).
    min_instances: int = 2
    # Most memory planned for one counter instance (assumption: 16 GiB
    # containers); more instances when the dedup windows need it.
    counter_max_memory_bytes: float = 16 * GIB
    # Views partitions >= this x the most counter or writer instances, so
    # either can double without adding partitions (a topic's partition
    # count is fixed once data is in it: keys would move and each
    # partition's dedup window with them).
    partitions_per_instance: int = 2
    # Partitions are rounded up to a multiple of this (the default topic has 12).
    partition_multiple: int = 12
    # The counter's dedup: `counter.dedup-window` and `counter.dedup-max-entries`
    # (per partition); partitions >= events/s x window / max entries keep
    # the whole window.
    dedup_window_s: float = 600.0
    dedup_max_entries: int = 2_000_000
    # Kafka: replication factor, retention (`kafka.topics.retention`),
    # broker size (assumptions: 8 cores, 4 TiB of usable disk, a 10 Gbit/s
    # NIC of which `utilisation` is planned).
    replication: int = 3
    retention_s: float = 7 * 24 * 3600
    broker_cores: int = 8
    broker_disk_bytes: float = 4 * 1024 * GIB
    broker_nic_bytes_per_s: float = 10e9 / 8
    # Consumer groups reading the views topic (counter, archiver).
    views_readers: int = 2
    # Cassandra: replication factor and node size (assumption: 8 cores).
    cassandra_replication: int = 3
    cassandra_cores: int = 8
    # Redis: single-threaded, one core per shard; a replica per shard.
    redis_replicas_per_shard: int = 1


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


def round_up(value: float, multiple: int) -> int:
    return max(multiple, multiple * math.ceil(value / multiple))


@dataclass
class IngestPlan:
    events_per_s: float
    partitions: int
    partitions_why: str
    instances: dict[str, int]
    counter_bound: str
    cores: dict[str, float]
    memory_bytes: dict[str, float]
    rows_per_s: float
    brokers: int
    brokers_why: str
    broker_cores: float
    broker_disk_bytes: float
    broker_in_bytes_per_s: float
    broker_out_bytes_per_s: float
    cassandra_nodes: int | None
    cassandra_cores: float | None


@dataclass
class QueryPlan:
    queries_per_s: float
    query_instances: int
    query_cores: float
    query_memory_bytes: float
    redis_shards: int
    redis_cores: float


def cores_for(rate: float, per_cpu_s: float, rules: Rules) -> float:
    """Cores to plan for `rate` units/s of something a core does `per_cpu_s` of."""
    return rate / (per_cpu_s * rules.utilisation)


def sized(rate_cores: float, fixed_cores: float, minimum: int, size: int, rules: Rules) -> tuple[float, int]:
    """(cores, units) for `rate_cores` of work plus `fixed_cores` per unit of
    `size` cores (an instance, a node), at least `minimum` units; the fixed
    cost is planned at the same utilisation as the rest."""
    units = max(minimum, math.ceil(rate_cores / size))
    for _ in range(100):
        cores = rate_cores + units * fixed_cores / rules.utilisation
        needed = max(minimum, math.ceil(cores / size))
        if needed <= units:
            return cores, units
        units = needed
    raise CapacityError(f"a fixed cost of {fixed_cores:.2f} cores per {size}-core unit leaves no room for work")


def plan_ingest(m: Measured, events_per_s: float, rules: Rules = Rules()) -> IngestPlan:
    """Partitions, instances, cores, memory, brokers and store nodes for an event rate."""
    rows_per_s = events_per_s * m.rows_per_event
    work_cores = {
        "gateway": cores_for(events_per_s, m.events_per_cpu_s["gateway"], rules),
        "counter": cores_for(events_per_s, m.events_per_cpu_s["counter"], rules),
        "writer": cores_for(rows_per_s, m.writer_rows_per_cpu_s, rules),
    }
    process = {"gateway": "ingest", "counter": "counter", "writer": "writer"}
    cores, instances = {}, {}
    for name, c in work_cores.items():
        fixed = m.fixed_cores.get(process[name], 0.0)
        cores[name], instances[name] = sized(c, fixed, rules.min_instances, rules.cores_per_instance, rules)
    # The counter holds each owned partition's dedup window (the last
    # `dedup_window_s` of events, at most `dedup_max_entries` a partition);
    # after one instance fails the others hold its partitions too, so the
    # survivors must fit every window in `counter_max_memory_bytes` each.
    window_entries = events_per_s * rules.dedup_window_s
    window_bytes = window_entries * m.counter_bytes_per_dedup_entry / rules.utilisation
    by_memory = 1 + math.ceil(window_bytes / rules.counter_max_memory_bytes)
    counter_bound = "CPU"
    if by_memory > instances["counter"]:
        instances["counter"], counter_bound = by_memory, "memory"
    by_instances = rules.partitions_per_instance * max(instances["counter"], instances["writer"])
    by_dedup = window_entries / rules.dedup_max_entries
    partitions = round_up(max(by_instances, by_dedup), rules.partition_multiple)
    why = "dedup window" if by_dedup > by_instances else f"{rules.partitions_per_instance} x counter/writer instances"
    entries_per_partition = min(rules.dedup_max_entries, events_per_s / partitions * rules.dedup_window_s)
    survivors = max(1, instances["counter"] - 1)
    counter_entries = entries_per_partition * math.ceil(partitions / survivors)
    memory = {
        "gateway": m.rss_bytes["ingest"] / rules.utilisation,
        "counter": counter_entries * m.counter_bytes_per_dedup_entry / rules.utilisation,
        "writer": m.rss_bytes["writer"] / rules.utilisation,
    }
    # Kafka: every event is written RF times and read by every views group;
    # the counts topic carries the rows the same way.
    in_bytes = (events_per_s * m.views_bytes_per_event + rows_per_s * m.counts_bytes_per_row) * rules.replication
    out_bytes = (
        events_per_s * m.views_bytes_per_event * (rules.views_readers + rules.replication - 1)
        + rows_per_s * m.counts_bytes_per_row * rules.replication
    )
    disk = (events_per_s * m.views_bytes_per_event + rows_per_s * m.counts_bytes_per_row) * (
        rules.retention_s * rules.replication
    )
    # The broker's idle cost is what one node spent serving this pipeline's
    # groups with no load; charged once (it grows with partitions and
    # consumers, which was not measured).
    broker_cores = cores_for(events_per_s, m.events_per_cpu_s["broker"], rules) * rules.replication + m.fixed_cores.get(
        "broker", 0.0
    ) / rules.utilisation
    needs = {
        "replication": rules.replication,
        "CPU": math.ceil(broker_cores / rules.broker_cores),
        "disk": math.ceil(disk / rules.broker_disk_bytes),
        "network": math.ceil(max(in_bytes, out_bytes) / (rules.broker_nic_bytes_per_s * rules.utilisation)),
    }
    brokers_why = max(needs, key=lambda k: needs[k])
    cassandra_nodes = cassandra_cores = None
    if m.cassandra_rows_per_cpu_s:
        cassandra_cores, cassandra_nodes = sized(
            cores_for(rows_per_s, m.cassandra_rows_per_cpu_s, rules) * rules.cassandra_replication,
            m.fixed_cores.get("cassandra", 0.0),
            rules.cassandra_replication,
            rules.cassandra_cores,
            rules,
        )
    return IngestPlan(
        events_per_s=events_per_s,
        partitions=partitions,
        partitions_why=why,
        instances=instances,
        counter_bound=counter_bound,
        cores=cores,
        memory_bytes=memory,
        rows_per_s=rows_per_s,
        brokers=needs[brokers_why],
        brokers_why=brokers_why,
        broker_cores=broker_cores,
        broker_disk_bytes=disk,
        broker_in_bytes_per_s=in_bytes,
        broker_out_bytes_per_s=out_bytes,
        cassandra_nodes=cassandra_nodes,
        cassandra_cores=cassandra_cores,
    )


def plan_query(m: Measured, queries_per_s: float, rules: Rules = Rules()) -> QueryPlan:
    """Query instances and Redis shards for a query rate (every query one cache read)."""
    cores, instances = sized(
        cores_for(queries_per_s, m.queries_per_cpu_s, rules),
        m.fixed_cores.get("query", 0.0),
        rules.min_instances,
        rules.cores_per_instance,
        rules,
    )
    # One core per shard: Redis executes commands on one thread.
    redis_cores, redis_shards = sized(
        cores_for(queries_per_s, m.redis_ops_per_cpu_s, rules), m.fixed_cores.get("redis", 0.0), 1, 1, rules
    )
    return QueryPlan(
        queries_per_s=queries_per_s,
        query_instances=instances,
        query_cores=cores,
        query_memory_bytes=m.rss_bytes["query"] / rules.utilisation,
        redis_shards=redis_shards,
        redis_cores=redis_cores,
    )


def _size(n: float) -> str:
    for unit, scale in (("TiB", 1024 * GIB), ("GiB", GIB), ("MiB", MIB)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 1024:,.0f} KiB"


def _rate(n: float) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def markdown(m: Measured, event_rates: list[float], query_rates: list[float], rules: Rules = Rules()) -> str:
    ingest = [plan_ingest(m, e, rules) for e in event_rates]
    query = [plan_query(m, q, rules) for q in query_rates]
    head = "| | " + " | ".join(f"{_rate(p.events_per_s)} events/s" for p in ingest) + " |"
    rule = "|---" * (len(ingest) + 1) + "|"

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(p) for p in ingest) + " |"

    def service(name: str, label: str) -> str:
        return row(
            label,
            lambda p: f"{p.instances[name]} x {rules.cores_per_instance} cores ({p.cores[name]:.2f} needed), "
            f"{_size(p.memory_bytes[name])} each",
        )

    lines = [
        "Measured costs per CPU-second of each process beyond its idle cost (from the runs named above):",
        "",
        f"- gateway: {m.events_per_cpu_s['gateway']:,.0f} events per CPU-second (1,000-event batches)",
        f"- broker (one node, replication 1, JIT threads left out): "
        f"{m.events_per_cpu_s['broker']:,.0f} events per CPU-second",
        f"- counter: {m.events_per_cpu_s['counter']:,.0f} events per CPU-second; "
        f"{m.counter_bytes_per_dedup_entry:,.0f} bytes of peak RSS per dedup entry",
        f"- writer (embedded SQLite): {m.writer_rows_per_cpu_s:,.0f} rows per CPU-second; "
        f"{m.rows_per_event:.3f} rows per event",
    ]
    if m.cassandra_writer_rows_per_cpu_s:
        lines.append(f"- writer on Cassandra: {m.cassandra_writer_rows_per_cpu_s:,.0f} rows per CPU-second")
    if m.cassandra_rows_per_cpu_s:
        lines.append(f"- Cassandra (one node, JIT threads left out): {m.cassandra_rows_per_cpu_s:,.0f} rows per CPU-second")
    lookups = sum(m.query_lookups.values())
    hits = (
        f" ({m.query_lookups.get('hit', 0) / lookups:.0%} of its cache lookups hits: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(m.query_lookups.items()))
        + ")"
        if lookups
        else ""
    )
    lines += [
        f"- query service: {m.queries_per_cpu_s:,.0f} queries per CPU-second{hits}; "
        f"Redis: {m.redis_ops_per_cpu_s:,.0f} operations per CPU-second",
        f"- views topic: {m.views_bytes_per_event:.1f} bytes per event on disk; counts topic: "
        f"{m.counts_bytes_per_row:.1f} bytes per row",
    ]
    fixed = ", ".join(f"{name} {cores:.3f}" for name, cores in sorted(m.fixed_cores.items()) if cores > 0)
    if fixed:
        lines.append(f"- idle (fixed) cores per process, left out of the costs above and added per instance: {fixed}")
    lines += [f"- {note}" for note in m.notes]
    lines += [
        "",
        head,
        rule,
        row("views partitions", lambda p: f"{p.partitions} ({p.partitions_why})"),
        service("gateway", "gateway (`tally ingest`)"),
        row(
            "counter (`tally counter`)",
            lambda p: f"{p.instances['counter']} x {rules.cores_per_instance} cores ({p.cores['counter']:.2f} needed; "
            f"bound: {p.counter_bound}), {_size(p.memory_bytes['counter'])} each",
        ),
        row("rows to the store", lambda p: f"{p.rows_per_s:,.0f}/s"),
        service("writer", "writer (`tally writer`, SQLite cost)"),
        row(
            "Tally's ingest side in all",
            lambda p: f"{sum(p.instances.values())} instances, {sum(p.instances.values()) * rules.cores_per_instance} cores",
        ),
        row(
            "Kafka brokers",
            lambda p: f"{p.brokers} x {rules.broker_cores} cores (bound: {p.brokers_why}; {p.broker_cores:.1f} cores "
            f"needed); {_size(p.broker_disk_bytes)} of log, "
            f"in {_size(p.broker_in_bytes_per_s)}/s, out {_size(p.broker_out_bytes_per_s)}/s",
        ),
    ]
    if m.cassandra_rows_per_cpu_s:
        lines.append(
            row(
                "Cassandra nodes",
                lambda p: f"{p.cassandra_nodes} x {rules.cassandra_cores} cores ({p.cassandra_cores:.1f} cores needed)",
            )
        )
    else:
        lines.append(row("Cassandra nodes", lambda p: "not measured"))
    lines += [
        "",
        "| | " + " | ".join(f"{_rate(q.queries_per_s)} queries/s" for q in query) + " |",
        "|---" * (len(query) + 1) + "|",
        "| query (`tally query`) | "
        + " | ".join(
            f"{q.query_instances} x {rules.cores_per_instance} cores ({q.query_cores:.2f} needed), "
            f"{_size(q.query_memory_bytes)} each"
            for q in query
        )
        + " |",
        "| Redis | "
        + " | ".join(
            f"{q.redis_shards} shard(s), {q.redis_cores:.2f} cores needed, "
            f"+{rules.redis_replicas_per_shard} replica each"
            for q in query
        )
        + " |",
    ]
    return "\n".join(lines) + "\n"


def replace_between_markers(text: str, generated: str) -> str:
    """`text` with the part between BEGIN and END replaced by `generated`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise CapacityError(f"the file has no {BEGIN} ... {END} section")
    return text[: start + len(BEGIN)] + "\n" + generated + text[end:]


def load_summary(results: Path) -> dict:
    path = results / "summary.json" if results.is_dir() else results
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CapacityError(f"cannot read {path}: {e}") from e


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results", type=Path, nargs="+", help="capacity.sh results folders (or their summary.json): medians over them"
    )
    parser.add_argument("--peers", type=Path, help="a peers.sh summary.json: the counter's CPU-bound cost")
    parser.add_argument("--write", type=Path, help="replace the generated section of this Markdown file")
    parser.add_argument("--events", type=float, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=float, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--retention-days", type=float, default=7.0, help="the topics' retention (kafka.topics.retention)")
    args = parser.parse_args(argv)
    rules = Rules(retention_s=args.retention_days * 24 * 3600)
    try:
        peers = load_summary(args.peers) if args.peers else None
        m = median_of([measured_from(load_summary(results)) for results in args.results])
        if peers is not None:
            apply_peers(m, peers)
        runs = f"the medians of {len(args.results)} runs" if len(args.results) > 1 else "one run"
        text = (
            f"Generated by `loadtest/capacity.py` from {runs} ({m.source}), "
            f"with a retention of {args.retention_days:g} days.\n\n"
            + markdown(m, args.events, args.queries, rules)
        )
        if args.write:
            args.write.write_text(replace_between_markers(args.write.read_text(), text))
        else:
            sys.stdout.write(text)
    except CapacityError as e:
        print(f"capacity.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
