"""The peer of the comparison: a quixstreams application counting views per
record key (the video id) in tumbling one-minute windows (RocksDB state),
reading the views topic from the start. Stops after EXPECT records and prints
JSON. Usage: quix_count.py BROKER TOPIC EXPECT STATE_DIR
"""

import json
import sys
import time
from datetime import timedelta

from quixstreams import Application

broker, topic, expect, state_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

app = Application(
    broker_address=broker,
    consumer_group=f"quix-peer-{int(time.time())}",
    auto_offset_reset="earliest",
    state_dir=state_dir,
    processing_guarantee="at-least-once",
    # No changelog topics: state lives in local RocksDB only (Tally's counter
    # writes every delta to tally.counts; this is the lighter setup for the peer).
    use_changelog_topics=False,
)
views = app.topic(topic, key_deserializer="str", value_deserializer="bytes")
sdf = app.dataframe(views)

seen = 0
first = None
started = time.monotonic()


def tick(_value):
    global seen, first
    if first is None:
        first = time.monotonic()
    seen += 1
    if seen >= expect:
        app.stop()


sdf = sdf.update(tick)
sdf = sdf.apply(lambda _value: 1).tumbling_window(timedelta(minutes=1)).count().final()

app.run()
end = time.monotonic()
seconds = end - (first or started)
print(
    json.dumps(
        {
            "counter": "quixstreams %s: tumbling 1-minute count per key (RocksDB state, no changelog)"
            % __import__("quixstreams").__version__,
            "records": seen,
            "seconds_from_first_record": seconds,
            "seconds_with_group_join": end - started,
            "events_per_s": seen / seconds if seconds > 0 else None,
        }
    )
)
