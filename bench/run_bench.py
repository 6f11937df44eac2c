"""sluice's benchmark harness (run by scripts/bench): everything in one invocation, one table.

1. SQS drain: N messages in a moto queue (started through the project's fast launcher, with
   request counting), drained into a no-op HTTP handler at concurrency 4 by sluice, sqs-consumer
   (Node 22), a boto3 loop and a raw aws-sdk-rust loop. Per contender: wall time, CPU seconds of
   the consumer process, peak RSS, SQS requests per message, and the CPU ratio to sluice.
2. Dispatcher core: criterion's throughput for the in-memory batch → payload → decide path.
3. Start-up and footprint: exec to first ReceiveMessage, idle RSS with 10 mappings, binary size.

Writes bench/results.md and prints the same table.
Usage: python bench/run_bench.py [--messages N]

`--compare BEFORE AFTER [--rounds R]` instead compares two sluice binaries (a change's before and
after): R interleaved rounds of the SQS drain (CPU ms per 1k messages) and of the Kafka
throughput bench (6 partitions, batch size 100, records/s), medians, appended to
bench/results.md.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCURRENCY = 4
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.records = 0

    def add(self, n):
        with self.lock:
            self.records += n

    def reset(self):
        with self.lock:
            self.records = 0


HANDLED = Counter()


class NoopHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        HANDLED.add(len(json.loads(body).get("Records", [])))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_usage(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    status = open(f"/proc/{pid}/status").read()
    peak_kb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    return cpu, peak_kb / 1024, rss_kb / 1024


class Moto:
    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests/support/moto_launcher.py"), "--count-requests"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.port = int(self.process.stdout.readline().strip().rsplit(":", 1)[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # The harness's own calls carry this user agent and are left out of the counts.
        self.sqs = boto3.client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(user_agent_extra="sluice-bench-harness"),
        )

    def requests(self, reset=False):
        request = urllib.request.Request(
            f"{self.endpoint}/_sluice/requests", method="DELETE" if reset else "GET"
        )
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())

    def depth(self, queue_url):
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
        return sum(
            int(attributes[k])
            for k in ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
        )

    def fill(self, name, count):
        queue_url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        for start in range(0, count, 10):
            self.sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "MessageBody": json.dumps({"n": start + i})} for i in range(min(10, count - start))],
            )
        return queue_url

    def stop(self):
        self.process.kill()


def contender_commands(queue_url, handler_url, config_dir, sluice_binary=None):
    sluice_config = os.path.join(config_dir, "sluice.yaml")
    with open(sluice_config, "w") as f:
        f.write(
            f"""version: 1
admin: {{ listen: "127.0.0.1:{free_port()}" }}
targets:
  noop:
    http: {{ url: "{handler_url}" }}
mappings:
  - name: drain
    target: noop
    source:
      sqs: {{ queue_url: "{queue_url}", batch_size: 10, max_concurrency: {CONCURRENCY} }}
"""
        )
    node = os.path.join(ROOT, "bench/contenders/node_modules/.bin/node")
    return {
        "sluice": [sluice_binary or os.path.join(ROOT, "target/release/sluice"), "run", "-c", sluice_config],
        "sqs-consumer (Node 22)": [node, os.path.join(ROOT, "bench/contenders/sqs_consumer.mjs"), queue_url, handler_url, str(CONCURRENCY)],
        "boto3 loop": [sys.executable, os.path.join(ROOT, "bench/contenders/boto3_loop.py"), queue_url, handler_url, str(CONCURRENCY)],
        "raw aws-sdk-rust loop": [os.path.join(ROOT, "target/release/sqs-raw-loop"), queue_url, handler_url, str(CONCURRENCY)],
    }


def wait_until(check, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def drain(moto, handler_url, messages, names=None, sluice_binary=None, tag=""):
    rows = []
    names = names or ["sluice", "sqs-consumer (Node 22)", "boto3 loop", "raw aws-sdk-rust loop"]
    for index, name in enumerate(names):
        queue_url = moto.fill(f"drain-{tag}{index}", messages)
        HANDLED.reset()
        moto.requests(reset=True)
        with tempfile.TemporaryDirectory() as config_dir:
            command = contender_commands(queue_url, handler_url, config_dir, sluice_binary)[name]
            env = dict(
                os.environ,
                AWS_ENDPOINT_URL=moto.endpoint,
                AWS_REGION="us-east-1",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test",
                RUST_LOG="warn",
            )
            started = time.time()
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: HANDLED.records >= messages and moto.depth(queue_url) == 0, 900, f"{name} to drain")
            wall = time.time() - started
            cpu, peak_mb, _ = proc_usage(process.pid)
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        counts = moto.requests()["counts"]
        requests = sum(counts.values())
        rows.append(
            {
                "name": name,
                "wall": wall,
                "cpu": cpu,
                "cpu_per_1k_ms": cpu * 1000 / (messages / 1000),
                "peak_mb": peak_mb,
                "requests_per_message": requests / messages,
                "requests": counts,
                "duplicates": HANDLED.records - messages,
            }
        )
        print(f"  {name}: {wall:.1f} s wall, {cpu:.2f} s CPU, {peak_mb:.0f} MB peak, {requests / messages:.3f} requests/message", flush=True)
    return rows


def first_poll_and_rss(moto, handler_url, mapping_count):
    """Median exec-to-first-ReceiveMessage over 5 starts, and RSS after 3 s idle."""
    queues = [moto.sqs.create_queue(QueueName=f"idle-{mapping_count}-{i}")["QueueUrl"] for i in range(mapping_count)]
    with tempfile.TemporaryDirectory() as config_dir:
        config = os.path.join(config_dir, "sluice.yaml")
        mappings = "".join(
            f"  - name: idle-{i}\n    target: noop\n    source:\n      sqs: {{ queue_url: \"{url}\" }}\n"
            for i, url in enumerate(queues)
        )
        with open(config, "w") as f:
            f.write(f"version: 1\nadmin: {{ listen: \"127.0.0.1:{free_port()}\" }}\ntargets:\n  noop:\n    http: {{ url: \"{handler_url}\" }}\nmappings:\n{mappings}")
        env = dict(os.environ, AWS_ENDPOINT_URL=moto.endpoint, AWS_REGION="us-east-1",
                   AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", RUST_LOG="warn")
        starts = []
        for _ in range(5):
            moto.requests(reset=True)
            started = time.time()
            process = subprocess.Popen([os.path.join(ROOT, "target/release/sluice"), "run", "-c", config],
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: "ReceiveMessage" in moto.requests()["first"], 30, "the first poll")
            starts.append((moto.requests()["first"]["ReceiveMessage"] - started) * 1000)
            time.sleep(3)
            _, _, idle_rss = proc_usage(process.pid)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    starts.sort()
    return starts[len(starts) // 2], idle_rss


def startup_and_footprint(moto, handler_url):
    one_first_poll, one_rss = first_poll_and_rss(moto, handler_url, 1)
    ten_first_poll, ten_rss = first_poll_and_rss(moto, handler_url, 10)
    return {
        "first_poll_ms_1": one_first_poll,
        "first_poll_ms_10": ten_first_poll,
        "idle_rss_mb_1": one_rss,
        "idle_rss_mb_10": ten_rss,
        "binary_mb": os.path.getsize(os.path.join(ROOT, "target/release/sluice")) / 1e6,
    }


def criterion():
    output = subprocess.run(
        ["cargo", "bench", "-q", "-p", "sluice-bench", "--bench", "dispatcher_core"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    results = {}
    current = None
    for line in output.splitlines():
        name = re.match(r"^(dispatcher_core/\S+)", line)
        if name:
            current = name.group(1)
        throughput = re.search(r"thrpt:\s+\[\S+ \S+ ([0-9.]+) ([KMG]?elem/s)", line)
        if throughput and current:
            value, unit = float(throughput.group(1)), throughput.group(2)
            scale = {"elem/s": 1, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}[unit]
            results[current] = value * scale
    return results


def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) / 1024 / 1024
    node = subprocess.run([os.path.join(ROOT, "bench/contenders/node_modules/.bin/node"), "--version"],
                          capture_output=True, text=True).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    import moto as moto_module
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.system()} {platform.release()}; "
            f"{rustc}; Python {platform.python_version()}, moto {moto_module.__version__}; Node {node}")


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def kafka_records_per_second(binary, messages):
    """records/s of the 6-partition, batch-size-100 case of kafka-throughput."""
    output = subprocess.run(
        [os.path.join(ROOT, "target/release/kafka-throughput"), binary, str(messages)],
        env=dict(os.environ, KAFKA_BENCH_CASES="6:100"),
        capture_output=True, text=True, check=True,
    ).stdout
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] == "6":
            return float(cells[5])
    raise SystemExit(f"bench: no Kafka result in:\n{output}")


def compare(before, after, rounds, messages):
    """Interleaved rounds of the SQS drain and the Kafka bench for two binaries; medians."""
    handler = ThreadingHTTPServer(("127.0.0.1", 0), NoopHandler)
    threading.Thread(target=handler.serve_forever, daemon=True).start()
    handler_url = f"http://127.0.0.1:{handler.server_address[1]}/"
    binaries = {"before": before, "after": after}
    cpu = {label: [] for label in binaries}
    kafka = {label: [] for label in binaries}
    moto = Moto()
    try:
        for round_index in range(rounds):
            # Alternate which binary goes first, so drift favours neither.
            order = list(binaries) if round_index % 2 == 0 else list(reversed(binaries))
            for label in order:
                print(f"round {round_index + 1}/{rounds}, {label}:", flush=True)
                row = drain(moto, handler_url, messages, ["sluice"], binaries[label], f"{label}-{round_index}-")[0]
                cpu[label].append(row["cpu_per_1k_ms"])
                kafka[label].append(kafka_records_per_second(binaries[label], 100_000))
                print(f"  kafka: {kafka[label][-1]:.0f} records/s", flush=True)
    finally:
        moto.stop()
    lines = [
        "",
        f"## Before/after ({datetime.date.today().isoformat()}, `scripts/bench --compare`, {machine()})",
        "",
        f"Medians of {rounds} interleaved rounds. SQS: {messages:,} messages drained at concurrency "
        f"{CONCURRENCY} into a no-op HTTP handler (moto). Kafka: 100,000 records on 6 partitions, "
        "batch size 100, librdkafka mock cluster.",
        "",
        "| binary | CPU ms / 1k SQS messages | each round | Kafka records/s | each round |",
        "|---|---:|---|---:|---|",
    ]
    for label, path in binaries.items():
        lines.append(
            f"| {label} (`{os.path.relpath(path, ROOT) if path.startswith(ROOT) else path}`) | "
            f"{median(cpu[label]):.0f} | {', '.join(f'{v:.0f}' for v in cpu[label])} | "
            f"{median(kafka[label]):.0f} | {', '.join(f'{v:.0f}' for v in kafka[label])} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "bench/results.md"), "a") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.compare:
        compare(os.path.abspath(args.compare[0]), os.path.abspath(args.compare[1]), args.rounds, args.messages)
        return
    handler = ThreadingHTTPServer(("127.0.0.1", 0), NoopHandler)
    threading.Thread(target=handler.serve_forever, daemon=True).start()
    handler_url = f"http://127.0.0.1:{handler.server_address[1]}/"
    moto = Moto()
    try:
        print(f"SQS drain of {args.messages} messages at concurrency {CONCURRENCY}:", flush=True)
        rows = drain(moto, handler_url, args.messages)
        print("start-up and footprint:", flush=True)
        footprint = startup_and_footprint(moto, handler_url)
    finally:
        moto.stop()
    print("dispatcher core (criterion):", flush=True)
    core = criterion()

    sluice_cpu = rows[0]["cpu"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} by `scripts/bench` on {machine()}.",
        "",
        f"## SQS drain: {args.messages:,} messages, no-op HTTP handler, concurrency {CONCURRENCY}",
        "",
        "moto (through the project's fast launcher) bounds wall time; CPU seconds of the consumer "
        "process are the primary figure. Requests are every SQS call the consumer made, per message. "
        "Duplicates are deliveries beyond one per message (a message whose visibility ran out while "
        "its consumer still held it).",
        "",
        "| consumer | wall s | CPU s | CPU ms / 1k msgs | peak RSS MB | SQS requests / msg | CPU vs sluice | duplicates |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['wall']:.1f} | {row['cpu']:.2f} | {row['cpu_per_1k_ms']:.0f} | "
            f"{row['peak_mb']:.0f} | {row['requests_per_message']:.3f} | {row['cpu'] / sluice_cpu:.2f}x | {row['duplicates']} |"
        )
    lines += ["", "Requests by action:", ""]
    for row in rows:
        lines.append(f"- {row['name']}: " + ", ".join(f"{k} {v}" for k, v in sorted(row["requests"].items())))
    lines += [
        "",
        "## Dispatcher core (criterion, in memory, no I/O)",
        "",
        "Batching SQS-shaped records, building the invocation payload, parsing a partial-batch "
        "response and deciding with the queue policy.",
        "",
        "| benchmark | records / s |",
        "|---|---:|",
    ]
    for name, value in core.items():
        lines.append(f"| {name} | {value:,.0f} |")
    lines += [
        "",
        "## Start-up and footprint",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| exec to first ReceiveMessage, 1 mapping (median of 5) | {footprint['first_poll_ms_1']:.0f} ms |",
        f"| exec to first ReceiveMessage, 10 mappings (median of 5) | {footprint['first_poll_ms_10']:.0f} ms |",
        f"| idle RSS, 1 mapping | {footprint['idle_rss_mb_1']:.1f} MB |",
        f"| idle RSS, 10 mappings | {footprint['idle_rss_mb_10']:.1f} MB |",
        f"| release binary | {footprint['binary_mb']:.1f} MB |",
        "",
        "Start-up includes one GetQueueAttributes per mapping before its first receive; moto answers "
        "each in several milliseconds of Python, and the ten mappings' lookups queue behind each other.",
        "",
    ]
    text = "\n".join(lines)
    with open(os.path.join(ROOT, "bench/results.md"), "w") as f:
        f.write(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
