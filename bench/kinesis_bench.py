"""Kinesis throughput: sluice beside a raw GetRecords loop (run by `scripts/bench --kinesis`).

A stream of 4 shards in moto (started through the project's launcher) holds N records over K
partition keys; sluice (a `kinesis` mapping, parallelization_factor 1) and the raw loop
(bench/src/bin/kinesis-raw-loop.rs) each read it from the trim horizon into an HTTP handler that
answers at once, with fresh checkpoints, in R interleaved rounds (`--rounds`, default 3).
Reported: records per second from the first record handled to the last, each round's paired
ratio, the medians, and per-key order violations (which must be 0).

Appends its table to bench/results.md and prints it.
Usage: python bench/kinesis_bench.py [--records N] [--keys K] [--batch-size B] [--rounds R]
"""

import argparse
import base64
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Seen:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.records = set()
            self.last_by_key = {}
            self.out_of_order = 0
            self.first = None
            self.last = None

    def add(self, records):
        with self.lock:
            now = time.monotonic()
            self.first = self.first or now
            self.last = now
            for record in records:
                data = json.loads(base64.b64decode(record["kinesis"]["data"]))
                key, n = data["key"], data["n"]
                if self.last_by_key.get(key, -1) >= n:
                    self.out_of_order += 1
                self.last_by_key[key] = n
                self.records.add(n)


SEEN = Seen()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Without this, Nagle's algorithm holds the body until the client's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        SEEN.add(json.loads(body).get("Records", []))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def run(endpoint, handler_url, args, raw):
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
      kinesis: {{ stream_name: bench, starting_position: trim_horizon, batch_size: {args.batch_size} }}
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
        command = [os.path.join(ROOT, "target/release/sluice"), "run", "-c", config]
        if raw:
            command = [
                os.path.join(ROOT, "target/release/kinesis-raw-loop"),
                "bench",
                str(args.batch_size),
                handler_url,
                state,
            ]
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        try:
            while len(SEEN.records) < args.records:
                if time.monotonic() - started > 600:
                    raise SystemExit(f"only {len(SEEN.records)} of {args.records} handled")
                time.sleep(0.01)
        finally:
            process.terminate()
            process.wait()
    return args.records / max(SEEN.last - SEEN.first, 1e-6), SEEN.out_of_order


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    handler = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
        kinesis = boto3.client(
            "kinesis",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        kinesis.create_stream(StreamName="bench", ShardCount=4)
        for start in range(0, args.records, 500):
            entries = [
                {
                    "Data": json.dumps({"key": f"k{n % args.keys}", "n": n}).encode(),
                    "PartitionKey": f"k{n % args.keys}",
                }
                for n in range(start, min(start + 500, args.records))
            ]
            kinesis.put_records(StreamName="bench", Records=entries)
        ours, theirs, violations = [], [], 0
        for round_index in range(args.rounds):
            for raw in [False, True] if round_index % 2 == 0 else [True, False]:
                rate, out_of_order = run(endpoint, handler_url, args, raw)
                violations += out_of_order
                print(f"  {'raw loop' if raw else 'sluice'}: {rate:.0f} records/s", flush=True)
                (theirs if raw else ours).append(rate)
    finally:
        moto.kill()
    ratios = [a / b for a, b in zip(ours, theirs)]
    joined = lambda values, fmt: ", ".join(format(v, fmt) for v in values)
    lines = [
        "",
        f"## Kinesis: sluice beside a raw GetRecords loop ({datetime.date.today().isoformat()}, `scripts/bench --kinesis`)",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores. {args.records:,} records over {args.keys} partition keys "
        f"in 4 shards (moto), batch_size {args.batch_size}, parallelization_factor 1, an HTTP handler that "
        f"answers at once; {args.rounds} interleaved rounds. Records per second from the first record handled "
        "to the last. The raw loop reads pages of up to 10,000 records at most 5 times a second per shard, "
        "POSTs Lambda's event per batch and fsyncs a checkpoint file after each "
        f"(bench/src/bin/kinesis-raw-loop.rs). Per-key order violations across all runs: {violations}.",
        "",
        "| contender | records/s, each round | median |",
        "|---|---|---:|",
        f"| sluice | {joined(ours, '.0f')} | {median(ours):.0f} |",
        f"| raw GetRecords loop | {joined(theirs, '.0f')} | {median(theirs):.0f} |",
        f"| sluice / raw, paired | {joined(ratios, '.2f')} | {median(ratios):.2f}x |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "bench/results.md"), "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
