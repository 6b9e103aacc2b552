"""Scenario (q) of flumen's bench: the pipeline of (c) in Quix Streams.

Readings -> temp >= 0 -> tumbling 10 s windows per message key (count, sum,
min, max, mean) with final emission -> a Kafka topic, as JSON. Reads the
whole input topic once with a new consumer group and prints one JSON line:
records, seconds (first record processed to the end of app.run(), which
flushes the producer and commits), records_per_sec, cpu_seconds.

    python tumbling.py --brokers HOST:PORT --input TOPIC --output TOPIC --events N
"""

import argparse
import json
import resource
import sys
import time
import uuid

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Max, Mean, Min, Sum


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()

    app = Application(
        broker_address=args.brokers,
        consumer_group=f"bench-quix-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        commit_interval=1.0,
    )
    readings = app.topic(
        args.input,
        value_deserializer="json",
        timestamp_extractor=lambda value, headers, ts, ts_type: value["ts"],
    )
    output = app.topic(args.output, value_serializer="json")

    seen = {"records": 0, "first": None}

    def count(value):
        if seen["first"] is None:
            seen["first"] = time.monotonic()
        seen["records"] += 1
        if seen["records"] >= args.events:
            app.stop()
        return value

    sdf = app.dataframe(readings)
    sdf = sdf.update(count)
    sdf = sdf.filter(lambda v: v["temp"] >= 0)
    sdf = sdf.tumbling_window(duration_ms=10_000).agg(
        count=Count(),
        sum=Sum("temp"),
        min=Min("temp"),
        max=Max("temp"),
        mean=Mean("temp"),
    ).final()
    sdf.to_topic(output)

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    app.run()
    ended = time.monotonic()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    first = seen["first"] if seen["first"] is not None else ended
    seconds = ended - first
    print(
        json.dumps(
            {
                "records": seen["records"],
                "seconds": seconds,
                "records_per_sec": seen["records"] / seconds if seconds > 0 else 0.0,
                "cpu_seconds": cpu,
                "peak_rss_bytes": cpu_after.ru_maxrss * 1024,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
