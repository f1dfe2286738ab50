"""Tests of the capacity model (loadtest/capacity.py): python3 -m unittest discover -s loadtest"""

import json
import math
import tempfile
import unittest
from pathlib import Path

import capacity
from capacity import CapacityError, Rules, markdown, measured_from, plan_ingest, plan_query, replace_between_markers


def process(cpu_s, rss_kib, threads=None):
    return {"cpu_s": cpu_s, "peak_rss_kib": rss_kib, "threads": threads or {}}


PROCESSES = ("ingest", "broker", "counter", "writer", "query", "redis")


def summary(cassandra=False):
    """A capacity.sh summary with round numbers: 1,000,000 events in the window."""
    runs = [
        {
            "configuration": "sqlite",
            "processes": {
                "ingest": process(10.0, 50_000),  # 100,000 events per CPU-s
                # 30 CPU-s of which 10 in the JIT compiler: 50,000 events per steady CPU-s
                "broker": process(30.0, 400_000, {"C2 CompilerThre": 8.0, "C1 CompilerThre": 2.0, "data-plane-kafk": 15.0}),
                # 200,000 per CPU-s; its RSS grew by 60,000 KiB while its dedup
                # window grew by 600,000 entries: 102.4 bytes each.
                "counter": {**process(5.0, 200_000), "rss_kib_before": 140_000, "rss_kib_after": 200_000},
                "writer": process(2.0, 40_000),  # 100,000 rows -> 50,000 rows per CPU-s
                "query": process(4.0, 30_000),  # 100,000 queries -> 25,000 per CPU-s
                "redis": process(1.0, 10_000),  # 200,000 operations per CPU-s
                "loadgen": {"cpu_s": 3.0, "peak_rss_kib": 20_000},
            },
            "work": {
                "events_produced": 1_000_000,
                "events_accepted": 900_000,
                "events_counted": 1_000_000,
                "deltas_written": 100_000,
                "queries_answered": 100_000,
                "counter_dedup_entries_before": 400_000,
                "counter_dedup_entries_at_end": 1_000_000,
            },
            "topics": {"views": {"bytes_per_record": 100.0}, "counts": {"bytes_per_record": 40.0}},
            "window_s": 100.0,
            # No process burns CPU when idle, but the tests that say otherwise.
            "idle": {"window_s": 10.0, "processes": {name: process(0.0, 0) for name in PROCESSES}},
        }
    ]
    if cassandra:
        runs.append(
            {
                "configuration": "cassandra",
                "processes": {
                    "writer": process(1.0, 40_000),
                    "cassandra": process(12.0, 2_000_000, {"C2 CompilerThre": 2.0}),
                },
                "work": {"deltas_written": 50_000},
            }
        )
    return {
        "command": "RATE=20 loadtest/scripts/capacity.sh",
        "machine": {"date": "2026-12-01", "commit": "abc1234", "nproc": 2},
        "configurations": runs,
    }


class MeasuredCosts(unittest.TestCase):
    def test_per_core_figures_are_work_over_cpu_seconds(self):
        m = measured_from(summary())
        self.assertEqual(m.events_per_cpu_s["gateway"], 100_000)
        self.assertEqual(m.events_per_cpu_s["counter"], 200_000)
        self.assertEqual(m.writer_rows_per_cpu_s, 50_000)
        self.assertEqual(m.queries_per_cpu_s, 25_000)
        self.assertEqual(m.redis_ops_per_cpu_s, 200_000)
        self.assertAlmostEqual(m.rows_per_event, 0.1)

    def test_the_jvm_jit_compiler_threads_are_left_out_of_the_broker_cost(self):
        self.assertEqual(measured_from(summary()).events_per_cpu_s["broker"], 50_000)

    def test_the_idle_cost_is_fixed_and_left_out_of_the_cost_per_unit(self):
        s = summary()
        # 0.5 CPU-s in 10 idle seconds: 0.05 cores, so 5 of the gateway's
        # 10 CPU-s in the 100 s window were fixed and 5 did the 1,000,000 events.
        s["configurations"][0]["idle"]["processes"]["ingest"] = process(0.5, 0)
        m = measured_from(s)
        self.assertAlmostEqual(m.fixed_cores["ingest"], 0.05)
        self.assertAlmostEqual(m.events_per_cpu_s["gateway"], 200_000)

    def test_an_idle_cost_above_the_loaded_one_charges_everything_to_the_work(self):
        s = summary()
        s["configurations"][0]["idle"]["processes"]["ingest"] = process(2.0, 0)
        m = measured_from(s)
        self.assertEqual(m.events_per_cpu_s["gateway"], 100_000)
        self.assertIn("no CPU above its idle rate", m.notes[0])

    def test_fixed_cores_are_added_per_instance(self):
        s = summary()
        s["configurations"][0]["idle"]["processes"]["ingest"] = process(0.5, 0)
        plan = plan_ingest(measured_from(s), 1_000_000)
        # 1M / (200k x 0.5) = 10 cores for the events: 5 instances, whose fixed
        # 5 x 0.05 / 0.5 make 10.5 cores, so 6 instances: 10.6 cores.
        self.assertAlmostEqual(plan.cores["gateway"], 10.6)
        self.assertEqual(plan.instances["gateway"], 6)

    def test_a_fixed_cost_that_fills_the_instance_is_refused(self):
        s = summary()
        # 1 core per instance when idle, planned at 50%: a 2-core instance has no room left.
        s["configurations"][0]["idle"]["processes"]["ingest"] = process(10.0, 0)
        s["configurations"][0]["processes"]["ingest"]["cpu_s"] = 200.0
        with self.assertRaisesRegex(CapacityError, "no room"):
            plan_ingest(measured_from(s), 1_000_000)

    def test_the_counter_memory_per_dedup_entry_is_its_rss_growth_over_the_window_growth(self):
        self.assertAlmostEqual(measured_from(summary()).counter_bytes_per_dedup_entry, 102.4)

    def test_without_rss_growth_the_whole_peak_rss_is_charged_to_the_entries(self):
        s = summary()
        del s["configurations"][0]["processes"]["counter"]["rss_kib_before"]
        m = measured_from(s)
        self.assertAlmostEqual(m.counter_bytes_per_dedup_entry, 200_000 * 1024 / 1_000_000)
        self.assertIn("upper bound", m.notes[0])

    def test_peer_figures_replace_the_counter_cost_and_say_so(self):
        peers = {
            "command": "RUNS=3 loadtest/scripts/peers.sh",
            "machine": {"date": "2026-12-01"},
            "medians": {"tally": {"events_per_cpu_s": 1_250_000}},
        }
        m = measured_from(summary(), peers)
        self.assertEqual(m.events_per_cpu_s["counter"], 1_250_000)
        self.assertIn("peers.sh", m.notes[0])

    def test_a_run_with_refused_requests_is_flagged_as_overloaded(self):
        s = summary()
        self.assertEqual(measured_from(s).notes, [])
        s["configurations"][0]["loadgen"] = {"answers": {"202": 90, "503": 10}}
        self.assertIn("overloaded", measured_from(s).notes[0])

    def test_cassandra_rows_per_cpu_second_without_its_jit(self):
        m = measured_from(summary(cassandra=True))
        self.assertEqual(m.cassandra_rows_per_cpu_s, 5_000)
        self.assertEqual(m.cassandra_writer_rows_per_cpu_s, 50_000)

    def test_results_without_work_are_refused(self):
        s = summary()
        s["configurations"][0]["work"]["queries_answered"] = 0
        with self.assertRaises(CapacityError):
            measured_from(s)

    def test_a_missing_process_is_refused(self):
        s = summary()
        del s["configurations"][0]["processes"]["writer"]
        with self.assertRaisesRegex(CapacityError, "writer"):
            measured_from(s)


class Medians(unittest.TestCase):
    def test_each_figure_is_the_median_over_the_runs_that_measured_it(self):
        slow, fast, faster = summary(), summary(cassandra=True), summary()
        slow["configurations"][0]["processes"]["ingest"]["cpu_s"] = 20.0  # 50,000 events per CPU-s
        faster["configurations"][0]["processes"]["ingest"]["cpu_s"] = 5.0  # 200,000
        m = capacity.median_of([measured_from(s) for s in (slow, fast, faster)])
        self.assertEqual(m.events_per_cpu_s["gateway"], 100_000)
        # Only one run measured Cassandra: its figure stands.
        self.assertEqual(m.cassandra_rows_per_cpu_s, 5_000)
        self.assertIn("run 3:", m.source)

    def test_cache_lookups_are_summed_and_notes_say_their_run(self):
        a, b = summary(), summary()
        a["configurations"][0]["work"]["query_cache_lookups"] = {"hit": 3, "miss": 1}
        b["configurations"][0]["work"]["query_cache_lookups"] = {"hit": 5}
        b["configurations"][0]["loadgen"] = {"answers": {"202": 1, "503": 1}}
        m = capacity.median_of([measured_from(a), measured_from(b)])
        self.assertEqual(m.query_lookups, {"hit": 8, "miss": 1})
        self.assertTrue(m.notes[0].startswith("run 2: **the sqlite run was overloaded**"))


class Plans(unittest.TestCase):
    def setUp(self):
        self.m = measured_from(summary(cassandra=True))

    def test_cores_are_planned_at_half_of_the_measured_capacity(self):
        plan = plan_ingest(self.m, 100_000)
        self.assertAlmostEqual(plan.cores["gateway"], 2.0)  # 100k / (100k x 0.5)
        self.assertAlmostEqual(plan.cores["counter"], 1.0)
        self.assertAlmostEqual(plan.cores["writer"], 0.4)  # 10k rows / (50k x 0.5)
        loose = plan_ingest(self.m, 100_000, Rules(utilisation=1.0))
        self.assertAlmostEqual(loose.cores["gateway"], 1.0)

    def test_every_service_has_at_least_two_instances(self):
        plan = plan_ingest(self.m, 1_000)
        self.assertEqual(set(plan.instances.values()), {2})

    def test_instances_grow_with_the_rate(self):
        plan = plan_ingest(self.m, 1_000_000)
        self.assertEqual(plan.instances["gateway"], 10)  # 20 cores / 2 per instance
        # 600M dedup entries x 102.4 bytes / 0.5 = 123 GB: 8 x 16 GiB, plus one to fail.
        self.assertEqual(plan.instances["counter"], 9)
        self.assertEqual(plan.counter_bound, "memory")
        self.assertEqual(plan_ingest(self.m, 100_000).counter_bound, "CPU")

    def test_partitions_follow_the_dedup_window_at_high_rates(self):
        plan = plan_ingest(self.m, 1_000_000)
        # 1M/s x 600 s / 2M entries = 300 partitions, rounded up to a multiple of 12.
        self.assertEqual(plan.partitions, 300)
        self.assertEqual(plan.partitions_why, "dedup window")

    def test_partitions_are_twice_the_counter_or_writer_instances_at_low_rates(self):
        rules = Rules(dedup_max_entries=10**12, partition_multiple=1)
        plan = plan_ingest(self.m, 1_000_000, rules)
        self.assertEqual(plan.partitions, 2 * max(plan.instances["counter"], plan.instances["writer"]))
        self.assertEqual(plan_ingest(self.m, 10_000).partitions, 12)

    def test_broker_disk_is_bytes_times_retention_times_replication(self):
        plan = plan_ingest(self.m, 10_000)
        expected = (10_000 * 100 + 1_000 * 40) * 7 * 24 * 3600 * 3
        self.assertAlmostEqual(plan.broker_disk_bytes, expected)

    def test_brokers_are_at_least_the_replication_factor(self):
        plan = plan_ingest(self.m, 1_000)
        self.assertEqual(plan.brokers, 3)
        self.assertEqual(plan.brokers_why, "replication")

    def test_a_large_rate_is_bound_by_disk_or_cpu_not_replication(self):
        plan = plan_ingest(self.m, 1_000_000)
        self.assertGreater(plan.brokers, 3)
        self.assertIn(plan.brokers_why, {"CPU", "disk", "network"})

    def test_cassandra_nodes_cover_replication(self):
        plan = plan_ingest(self.m, 1_000_000)
        # 100k rows/s / (5k x 0.5) x RF 3 = 120 cores over 8-core nodes.
        self.assertAlmostEqual(plan.cassandra_cores, 120.0)
        self.assertEqual(plan.cassandra_nodes, 15)

    def test_query_instances_and_redis_shards(self):
        plan = plan_query(self.m, 100_000)
        self.assertAlmostEqual(plan.query_cores, 8.0)
        self.assertEqual(plan.query_instances, 4)
        self.assertEqual(plan.redis_shards, math.ceil(100_000 / (200_000 * 0.5)))


class Output(unittest.TestCase):
    def test_the_table_has_a_column_per_rate(self):
        text = markdown(measured_from(summary()), [10_000, 1_000_000], [10_000])
        self.assertIn("| | 10k events/s | 1M events/s |", text)
        self.assertIn("| | 10k queries/s |", text)
        self.assertIn("Cassandra nodes | not measured", text)

    def test_the_query_cost_names_its_cache_hit_ratio(self):
        s = summary()
        s["configurations"][0]["work"]["query_cache_lookups"] = {"hit": 75, "miss": 25}
        self.assertIn("75% of its cache lookups hits: hit 75, miss 25", markdown(measured_from(s), [10_000], [10_000]))

    def test_only_the_marked_section_is_replaced(self):
        text = f"intro\n{capacity.BEGIN}\nold\n{capacity.END}\noutro\n"
        out = replace_between_markers(text, "new\n")
        self.assertEqual(out, f"intro\n{capacity.BEGIN}\nnew\n{capacity.END}\noutro\n")
        with self.assertRaises(CapacityError):
            replace_between_markers("no markers", "new\n")

    def test_main_reads_a_results_folder_and_writes_the_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "capacity-1"
            results.mkdir()
            (results / "summary.json").write_text(json.dumps(summary(cassandra=True)))
            doc = Path(tmp) / "CAPACITY.md"
            doc.write_text(f"# Capacity\n{capacity.BEGIN}\n{capacity.END}\n")
            self.assertEqual(capacity.main([str(results), "--write", str(doc)]), 0)
            written = doc.read_text()
            self.assertIn("RATE=20 loadtest/scripts/capacity.sh", written)
            self.assertIn("Cassandra nodes | 3 x 8 cores", written)

    def test_main_takes_the_medians_of_several_folders(self):
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i, cpu_s in enumerate((20.0, 10.0, 5.0)):
                s = summary()
                s["configurations"][0]["processes"]["ingest"]["cpu_s"] = cpu_s
                path = Path(tmp) / f"summary-{i}.json"
                path.write_text(json.dumps(s))
                paths.append(str(path))
            doc = Path(tmp) / "CAPACITY.md"
            doc.write_text(f"{capacity.BEGIN}\n{capacity.END}\n")
            self.assertEqual(capacity.main(paths + ["--write", str(doc)]), 0)
            self.assertIn("the medians of 3 runs", doc.read_text())
            self.assertIn("gateway: 100,000 events per CPU-second", doc.read_text())

    def test_a_missing_results_folder_is_an_error_not_a_traceback(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assertEqual(capacity.main([str(Path(tmp) / "missing")]), 1)


if __name__ == "__main__":
    unittest.main()
