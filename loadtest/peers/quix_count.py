"""The quixstreams peer of loadtest/scripts/peers.sh: counts the records of
Tally's views topic per record key (the video id, or `video_id~salt` for a hot
video) in tumbling one-minute event-time windows (event time read from the
payload, one minute of grace; RocksDB state, no changelog topics,
at-least-once) and produces every updated count (`.current()`: quixstreams
has no cache that would merge updates) to OUTPUT, key
`recordKey@windowStartMs`, value the count as text. It reads the topic from
offset 0 with a fresh consumer group, stops after EXPECT records (a graceful
stop flushes the producer and commits) and prints one JSON line.

Usage: quix_count.py BROKER TOPIC OUTPUT EXPECT STATE_DIR TIMEOUT_S
"""

import json
import struct
import sys
import threading
import time
from datetime import timedelta

import quixstreams
from quixstreams import Application
from quixstreams.models.serializers import Serializer

broker, topic, output, expect, state_dir, timeout = sys.argv[1:7]
expect, timeout = int(expect), float(timeout)


def event_time(value, _headers, _timestamp, _kind):
    """`ts_ms` of Tally's wire format version 1 (bytes 3..10, big-endian)."""
    if len(value) < 11 or value[0] != 1:
        raise ValueError("not a version 1 views record")
    return struct.unpack_from(">q", value, 3)[0]


class CountText(Serializer):
    """Writes a window's count as decimal text, like the other peers."""

    def __call__(self, value, ctx):
        return str(value["n"]).encode()


app = Application(
    broker_address=broker,
    consumer_group=f"quix-peer-{time.time_ns()}",
    auto_offset_reset="earliest",
    state_dir=state_dir,
    processing_guarantee="at-least-once",
    # No changelog topics: state lives in local RocksDB only (the lighter setup
    # for the peer; Kafka Streams and Flink keep theirs recoverable).
    use_changelog_topics=False,
)
views = app.topic(topic, key_deserializer="str", value_deserializer="bytes", timestamp_extractor=event_time)
counts = app.topic(output, key_serializer="str", value_serializer=CountText())
sdf = app.dataframe(views)

seen = 0
windows_out = 0
first = None
cpu_at_first = None
started = time.monotonic()


def tick(_value):
    global seen, first, cpu_at_first
    if first is None:
        first = time.monotonic()
        cpu_at_first = time.process_time()  # this process's CPU (every thread) so far
    seen += 1
    if seen >= expect:
        app.stop()


def named(window, key, _timestamp, _headers):
    global windows_out
    windows_out += 1
    return {"k": f"{key}@{window['start']}", "n": window["value"]}


sdf = sdf.update(tick)
sdf = sdf.apply(lambda _value: 1).tumbling_window(timedelta(minutes=1), grace_ms=timedelta(minutes=1)).count().current()
sdf = sdf.apply(named, metadata=True)
sdf.to_topic(counts, key=lambda w: w["k"])

# Bounded in time: a stuck run stops like a finished one (and reports done: false).
timer = threading.Timer(timeout, app.stop)
timer.daemon = True
timer.start()
app.run()
timer.cancel()
end = time.monotonic()
seconds = end - (first or started)
print(
    json.dumps(
        {
            "counter": "quixstreams %s: tumbling 1-minute event-time count per key (RocksDB state, no changelog, "
            "at-least-once, every update produced)" % quixstreams.__version__,
            "done": seen >= expect,
            "records": seen,
            "windows_out": windows_out,
            "seconds_from_first_record": seconds,
            "seconds_with_start": end - started,
            "events_per_s": seen / seconds if seconds > 0 else None,
            "cpu_s_at_first_record": cpu_at_first,
        }
    )
)
