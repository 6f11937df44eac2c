"""DynamoDB Streams throughput by parallelization_factor (run by `scripts/bench --streams`).

A table with a NEW_AND_OLD_IMAGES stream in moto (started through the project's launcher) holds
N changes over K keys; sluice reads it from the trim horizon into an HTTP handler that takes
50 ms per invocation, once per parallelization factor, each with fresh checkpoints. Reported: wall
time from exec to the last record handled, records per second, invocations, and whether per-key
order held. moto has one shard per table, so this measures lanes within one shard.

`--raw` instead sets sluice (parallelization_factor 1) beside a raw GetRecords loop
(bench/src/bin/dynamodb-raw-loop.rs) over the same stream, with a handler that answers at once,
in R interleaved rounds (`--rounds`, default 3): records per second from the first record handled
to the last, each round's ratio, and the medians.

Appends its table to bench/results.md and prints it.
Usage: python bench/stream_bench.py [--changes N] [--keys K] [--batch-size B] [--raw [--rounds R]]
"""

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANDLER_DELAY = [0.050]


class Seen:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with getattr(self, "lock", threading.Lock()):
            self.sequences = set()
            self.last_by_key = {}
            self.out_of_order = 0
            self.invocations = 0
            self.first = None
            self.last = None

    def add(self, records):
        with self.lock:
            self.invocations += 1
            now = time.monotonic()
            self.first = self.first or now
            self.last = now
            for record in records:
                key = record["dynamodb"]["Keys"]["id"]["S"]
                sequence = int(record["dynamodb"]["SequenceNumber"])
                if self.last_by_key.get(key, -1) >= sequence:
                    self.out_of_order += 1
                self.last_by_key[key] = sequence
                self.sequences.add(sequence)


SEEN = Seen()


class SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm holds the body
        # until the client's delayed ACK (~40 ms), which would be measured as sluice's overhead.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if HANDLER_DELAY[0]:
            time.sleep(HANDLER_DELAY[0])
        SEEN.add(json.loads(body).get("Records", []))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def run(endpoint, handler_url, factor, batch_size, changes, raw=False):
    SEEN.reset()
    with tempfile.TemporaryDirectory() as state:
        config = os.path.join(state, "sluice.yaml")
        with open(config, "w") as f:
            f.write(
                f"""
version: 1
state_dir: "{state}/state"
admin: {{ listen: "127.0.0.1:0" }}
targets:
  handler:
    http: {{ url: "{handler_url}" }}
mappings:
  - name: bench
    target: handler
    source:
      dynamodb_stream:
        table: bench
        starting_position: trim_horizon
        batch_size: {batch_size}
        parallelization_factor: {factor}
"""
            )
        env = dict(
            os.environ,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
            RUST_LOG="warn",
        )
        started = time.monotonic()
        command = [os.path.join(ROOT, "target/release/sluice"), "run", "-c", config]
        if raw:
            command = [os.path.join(ROOT, "target/release/dynamodb-raw-loop"), "bench", str(batch_size), handler_url, state]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        try:
            while len(SEEN.sequences) < changes:
                if time.monotonic() - started > 600:
                    raise SystemExit(f"pf {factor}: only {len(SEEN.sequences)} of {changes} handled")
                time.sleep(0.01)
            wall = time.monotonic() - started
        finally:
            process.terminate()
            process.wait()
    return {
        "factor": factor,
        "wall": wall,
        "rate": changes / wall,
        "invocations": SEEN.invocations,
        "out_of_order": SEEN.out_of_order,
        "span_rate": changes / max(SEEN.last - SEEN.first, 1e-6),
    }


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def raw_table(endpoint, handler_url, args):
    """Interleaved rounds of sluice (pf 1) and the raw GetRecords loop; paired ratios."""
    ours, theirs = [], []
    for round_index in range(args.rounds):
        for raw in ([False, True] if round_index % 2 == 0 else [True, False]):
            row = run(endpoint, handler_url, 1, args.batch_size, args.changes, raw=raw)
            print(f"  {'raw loop' if raw else 'sluice'}: {row['span_rate']:.0f} records/s, order violations {row['out_of_order']}", flush=True)
            (theirs if raw else ours).append(row["span_rate"])
    ratios = [a / b for a, b in zip(ours, theirs)]
    joined = lambda values, fmt: ", ".join(format(v, fmt) for v in values)
    return [
        "",
        f"## DynamoDB Streams: sluice beside a raw GetRecords loop ({datetime.date.today().isoformat()}, `scripts/bench --streams --raw`)",
        "",
        f"{args.changes:,} changes over {args.keys} keys in one shard (moto), batch_size {args.batch_size}, "
        f"parallelization_factor 1, an HTTP handler that answers at once; {args.rounds} interleaved rounds. "
        "Records per second from the first record handled to the last. The raw loop reads pages of up "
        "to 1,000 records, POSTs Lambda's event per batch and fsyncs a checkpoint file after each "
        "(bench/src/bin/dynamodb-raw-loop.rs).",
        "",
        "| contender | records/s, each round | median |",
        "|---|---|---:|",
        f"| sluice | {joined(ours, '.0f')} | {median(ours):.0f} |",
        f"| raw GetRecords loop | {joined(theirs, '.0f')} | {median(theirs):.0f} |",
        f"| sluice / raw, paired | {joined(ratios, '.2f')} | {median(ratios):.2f}x |",
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.raw:
        HANDLER_DELAY[0] = 0.0
    handler = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=handler.serve_forever, daemon=True).start()
    handler_url = f"http://127.0.0.1:{handler.server_address[1]}/"
    moto = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests/support/moto_launcher.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = int(moto.stdout.readline().strip().rsplit(":", 1)[1])
        endpoint = f"http://127.0.0.1:{port}"
        dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        dynamodb.create_table(
            TableName="bench",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )

        def write_key(key):
            for version in range(key, args.changes, args.keys):
                dynamodb.put_item(
                    TableName="bench",
                    Item={"id": {"S": f"k{key}"}, "v": {"N": str(version)}},
                )

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write_key, range(args.keys)))
        if args.raw:
            lines = raw_table(endpoint, handler_url, args)
        else:
            rows = [run(endpoint, handler_url, factor, args.batch_size, args.changes) for factor in (1, 4)]
    finally:
        moto.kill()
    if args.raw:
        text = "\n".join(lines) + "\n"
        print(text)
        with open(os.path.join(ROOT, "bench/results.md"), "a") as f:
            f.write(text)
        return
    lines = [
        "",
        f"## DynamoDB Streams: parallelization_factor ({datetime.date.today().isoformat()}, `scripts/bench --streams`)",
        "",
        f"{args.changes:,} changes over {args.keys} keys in one shard, batch_size {args.batch_size}, "
        f"an HTTP handler taking {HANDLER_DELAY[0] * 1000:.0f} ms per invocation.",
        "",
        "| parallelization_factor | wall s | records / s | invocations | per-key order violations |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['factor']} | {row['wall']:.1f} | {row['rate']:.0f} | {row['invocations']} | {row['out_of_order']} |"
        )
    lines.append(f"\nSpeed-up of 4 over 1: {rows[1]['rate'] / rows[0]['rate']:.2f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "bench/results.md"), "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
