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
Only the Python standard library. Reading the results is
`capacity_measured.py`; this module plans (`plan_ingest`, `plan_query`) and
writes the tables (`markdown`).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from capacity_measured import (  # noqa: F401 (re-exported: the tests use them through this module)
    JIT_THREADS,
    CapacityError,
    Measured,
    apply_peers,
    load_summary,
    measured_from,
    median_of,
)

BEGIN = "<!-- capacity:begin -->"
END = "<!-- capacity:end -->"
MIB = 1024 * 1024
GIB = 1024 * MIB


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
