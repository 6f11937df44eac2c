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
from shutil import which as shutil_which
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
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

        def send(start):
            self.sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "MessageBody": json.dumps({"n": start + i})} for i in range(min(10, count - start))],
            )

        # boto3 clients may be shared between threads; moto answers a few requests at once.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, range(0, count, 10)))
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


def drain(handler_url, messages, names=None, sluice_binary=None, tag=""):
    """Each contender drains its own fresh moto (started anew for every run): moto slows down as
    its queues pile up, and the consumers' CPU follows its pace, so a shared moto would favour
    whoever ran first."""
    rows = []
    names = names or ["sluice", "sqs-consumer (Node 22)", "boto3 loop", "raw aws-sdk-rust loop"]
    for index, name in enumerate(names):
        moto = Moto()
        try:
            rows.append(drain_one(moto, handler_url, messages, name, sluice_binary, f"{tag}{index}"))
        finally:
            moto.stop()
    return rows


def drain_one(moto, handler_url, messages, name, sluice_binary, tag):
    """One contender's drain of `messages` from a new queue of `moto`."""
    queue_url = moto.fill(f"drain-{tag}", messages)
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
        peak_anon = [0.0]

        def drained():
            # The kernel keeps the peak of all RSS (VmHWM) but not of its anonymous part.
            peak_anon[0] = max(peak_anon[0], anon_mb(process.pid))
            return HANDLED.records >= messages and moto.depth(queue_url) == 0

        wait_until(drained, 900, f"{name} to drain")
        wall = time.time() - started
        cpu, peak_mb, _ = proc_usage(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    counts = moto.requests()["counts"]
    requests = sum(counts.values())
    row = {
            "name": name,
            "wall": wall,
            "cpu": cpu,
            "cpu_per_1k_ms": cpu * 1000 / (messages / 1000),
            "peak_mb": peak_mb,
            "peak_anon_mb": peak_anon[0],
            "requests_per_message": requests / messages,
            "requests": counts,
            "duplicates": HANDLED.records - messages,
    }
    print(f"  {name}: {wall:.1f} s wall, {cpu:.2f} s CPU, {peak_mb:.1f} MB peak ({peak_anon[0]:.1f} anonymous), {requests / messages:.3f} requests/message", flush=True)
    return row


class SlowHandler(NoopHandler):
    """NoopHandler that takes BACKLOG_DELAY seconds per invocation."""

    def do_POST(self):
        time.sleep(BACKLOG_DELAY)
        super().do_POST()


BACKLOG_DELAY = 0.05


def backlog_curve(messages):
    """RSS of sluice while a backlog of `messages` drains into a handler taking 50 ms per batch
    (batch size 10, concurrency 4): samples every 0.5 s; start (first record handled), peak and
    end (drained), and the RSS at each tenth of the drain."""
    handler = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=handler.serve_forever, daemon=True).start()
    handler_url = f"http://127.0.0.1:{handler.server_address[1]}/"
    moto = Moto()
    try:
        print(f"filling a queue with {messages} messages:", flush=True)
        queue_url = moto.fill("backlog", messages)
        HANDLED.reset()
        with tempfile.TemporaryDirectory() as config_dir:
            command = contender_commands(queue_url, handler_url, config_dir)["sluice"]
            env = dict(os.environ, AWS_ENDPOINT_URL=moto.endpoint, AWS_REGION="us-east-1",
                       AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", RUST_LOG="warn")
            started = time.time()
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples = []  # (seconds, handled, rss MB, anonymous MB)
            while HANDLED.records < messages:
                if time.time() - started > 1800:
                    raise SystemExit("bench: the backlog did not drain in 30 minutes")
                samples.append((time.time() - started, HANDLED.records, proc_usage(process.pid)[2], anon_mb(process.pid)))
                time.sleep(0.5)
            samples.append((time.time() - started, HANDLED.records, proc_usage(process.pid)[2], anon_mb(process.pid)))
            _, peak, _ = proc_usage(process.pid)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    finally:
        moto.stop()
    first = next(sample for sample in samples if sample[1] > 0)
    top = max(samples, key=lambda sample: sample[2])
    lines = [
        "",
        f"## Memory under a backlog ({datetime.date.today().isoformat()}, `scripts/bench --backlog {messages}`, {machine()})",
        "",
        f"{messages:,} messages queued in moto before sluice starts; batch size 10, concurrency 4, "
        f"an HTTP handler taking {BACKLOG_DELAY * 1000:.0f} ms per invocation. In flight at most: 4 "
        "batches of 10 messages, plus one batch per poller being filled (each message here is "
        "about 10 bytes; at SQS's 1 MiB limit that bound would be 80 MiB of bodies). RSS sampled "
        "every 0.5 s; VmHWM is the kernel's peak.",
        "",
        "| moment | seconds | handled | RSS MB | anonymous MB |",
        "|---|---:|---:|---:|---:|",
        f"| first record handled | {first[0]:.1f} | {first[1]:,} | {first[2]:.1f} | {first[3]:.1f} |",
    ]
    for tenth in range(1, 10):
        sample = next((s for s in samples if s[1] >= messages * tenth / 10), samples[-1])
        lines.append(f"| {tenth * 10} % handled | {sample[0]:.1f} | {sample[1]:,} | {sample[2]:.1f} | {sample[3]:.1f} |")
    lines += [
        f"| highest sample | {top[0]:.1f} | {top[1]:,} | {top[2]:.1f} | {top[3]:.1f} |",
        f"| drained (end) | {samples[-1][0]:.1f} | {samples[-1][1]:,} | {samples[-1][2]:.1f} | {samples[-1][3]:.1f} |",
        f"| VmHWM (peak RSS) | | | {peak:.1f} | |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(ROOT, "bench/results.md"), "a") as f:
        f.write(text)


def allocation_counts(moto, handler_url, messages):
    """Heap allocation calls and peak heap of one drain by sluice and by the raw loop, under
    heaptrack (start-up included). Without heaptrack on PATH the table says so."""
    counts = {}
    for name in ["sluice", "raw aws-sdk-rust loop"]:
        if not shutil_which("heaptrack"):
            break
        queue_url = moto.fill(f"alloc-{name[:3]}", messages)
        HANDLED.reset()
        with tempfile.TemporaryDirectory() as work:
            command = contender_commands(queue_url, handler_url, work)[name]
            output = os.path.join(work, "heaptrack")
            env = dict(os.environ, AWS_ENDPOINT_URL=moto.endpoint, AWS_REGION="us-east-1",
                       AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", RUST_LOG="warn")
            tracker = subprocess.Popen(["heaptrack", "-o", output] + command, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: HANDLED.records >= messages and moto.depth(queue_url) == 0, 900, f"{name} to drain under heaptrack")
            # heaptrack runs the consumer as its child; stopping the child ends the recording.
            children = subprocess.run(["pgrep", "-P", str(tracker.pid)], capture_output=True, text=True).stdout.split()
            for child in children:
                os.kill(int(child), signal.SIGTERM)
            tracker.wait(timeout=60)
            recorded = [f for f in os.listdir(work) if f.startswith("heaptrack")]
            report = subprocess.run(["heaptrack_print", "-f", os.path.join(work, recorded[0]), "-s", "0", "-a", "0", "-T", "0", "-l", "0", "-p", "0", "-n", "0"],
                                    capture_output=True, text=True).stdout
            calls = int(re.search(r"calls to allocation functions: (\d+)", report).group(1))
            peak = re.search(r"peak heap memory consumption: ([0-9.]+)([KMG]?)B?", report)
            scale = {"": 1 / 1e6, "K": 1e-3, "M": 1, "G": 1e3}[peak.group(2)]
            counts[name] = (calls, float(peak.group(1)) * scale)
            print(f"  {name}: {calls} allocations, {calls / messages:.1f} per message", flush=True)
    return {"messages": messages, "counts": counts}


def log_time(lines, message):
    """The wall-clock time of the first JSON log line with this message, or None."""
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == message:
            stamp = datetime.datetime.strptime(entry["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
            return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
    return None


def first_poll_and_rss(moto, handler_url, mapping_count):
    """Medians over 5 starts of exec to each start-up step (ms): the "sluice starting" log
    (process, config, logging, runtime), "sluice running" (AWS config, clients, targets, servers
    built, mappings spawned), moto's first GetQueueAttributes and first ReceiveMessage; and RSS
    (total, anonymous) after 3 s idle."""
    queues = [moto.sqs.create_queue(QueueName=f"idle-{mapping_count}-{i}")["QueueUrl"] for i in range(mapping_count)]
    with tempfile.TemporaryDirectory() as config_dir:
        config = os.path.join(config_dir, "sluice.yaml")
        mappings = "".join(
            f"  - name: idle-{i}\n    target: noop\n    source:\n      sqs: {{ queue_url: \"{url}\" }}\n"
            for i, url in enumerate(queues)
        )
        with open(config, "w") as f:
            f.write(f"version: 1\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntargets:\n  noop:\n    http: {{ url: \"{handler_url}\" }}\nmappings:\n{mappings}")
        env = dict(os.environ, AWS_ENDPOINT_URL=moto.endpoint, AWS_REGION="us-east-1",
                   AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", RUST_LOG="info")
        steps = {"starting": [], "running": [], "GetQueueAttributes": [], "ReceiveMessage": []}
        for _ in range(5):
            moto.requests(reset=True)
            log_path = os.path.join(config_dir, "sluice.log")
            with open(log_path, "w") as log:
                started = time.time()
                process = subprocess.Popen([os.path.join(ROOT, "target/release/sluice"), "run", "-c", config],
                                           env=env, stdout=log, stderr=subprocess.STDOUT)
            wait_until(lambda: "ReceiveMessage" in moto.requests()["first"], 30, "the first poll")
            first = moto.requests()["first"]
            time.sleep(3)
            rss = proc_usage(process.pid)[2], anon_mb(process.pid)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
            lines = open(log_path).read().splitlines()
            for step, at in (("starting", log_time(lines, "sluice starting")),
                             ("running", log_time(lines, "sluice running")),
                             ("GetQueueAttributes", first.get("GetQueueAttributes")),
                             ("ReceiveMessage", first.get("ReceiveMessage"))):
                if at is not None:
                    steps[step].append((at - started) * 1000)
    return {step: median(values) for step, values in steps.items() if values}, rss


def anon_mb(pid):
    status = open(f"/proc/{pid}/status").read()
    return int(re.search(r"RssAnon:\s+(\d+)", status).group(1)) / 1024


def startup_and_footprint(moto, handler_url):
    one_steps, one_rss = first_poll_and_rss(moto, handler_url, 1)
    ten_steps, ten_rss = first_poll_and_rss(moto, handler_url, 10)
    return {
        "steps_1": one_steps,
        "steps_10": ten_steps,
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
    for round_index in range(rounds):
        # Alternate which binary goes first, so drift favours neither.
        order = list(binaries) if round_index % 2 == 0 else list(reversed(binaries))
        for label in order:
            print(f"round {round_index + 1}/{rounds}, {label}:", flush=True)
            row = drain(handler_url, messages, ["sluice"], binaries[label], f"{label}-{round_index}-")[0]
            cpu[label].append(row["cpu_per_1k_ms"])
            kafka[label].append(kafka_records_per_second(binaries[label], 100_000))
            print(f"  kafka: {kafka[label][-1]:.0f} records/s", flush=True)
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
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--backlog", type=int, metavar="MESSAGES")
    args = parser.parse_args()
    if args.backlog:
        backlog_curve(args.backlog)
        return
    if args.compare:
        compare(os.path.abspath(args.compare[0]), os.path.abspath(args.compare[1]), args.rounds or 5, args.messages)
        return
    args.rounds = args.rounds or 3
    handler = ThreadingHTTPServer(("127.0.0.1", 0), NoopHandler)
    threading.Thread(target=handler.serve_forever, daemon=True).start()
    handler_url = f"http://127.0.0.1:{handler.server_address[1]}/"
    moto = Moto()
    names = ["sluice", "raw aws-sdk-rust loop", "sqs-consumer (Node 22)", "boto3 loop"]
    rounds = {name: [] for name in names}
    try:
        print(f"SQS drain of {args.messages} messages at concurrency {CONCURRENCY}, {args.rounds} rounds:", flush=True)
        for round_index in range(args.rounds):
            # Each round starts with another contender, so that drift favours none.
            shift = round_index % len(names)
            order = names[shift:] + names[:shift]
            print(f"round {round_index + 1}/{args.rounds}:", flush=True)
            for row in drain(handler_url, args.messages, order, tag=f"r{round_index}-"):
                rounds[row["name"]].append(row)
        print("allocations (heaptrack):", flush=True)
        allocations = allocation_counts(moto, handler_url, min(args.messages, 5_000))
        print("start-up and footprint:", flush=True)
        footprint = startup_and_footprint(moto, handler_url)
    finally:
        moto.stop()
    print("dispatcher core (criterion):", flush=True)
    core = criterion()

    raw = rounds["raw aws-sdk-rust loop"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} by `scripts/bench` on {machine()}.",
        "",
        f"## SQS drain: {args.messages:,} messages, no-op HTTP handler, concurrency {CONCURRENCY}, {args.rounds} interleaved rounds",
        "",
        "moto (through the project's fast launcher) bounds wall time; CPU seconds of the consumer "
        "process are the primary figure. Every contender asks for every system and message "
        "attribute and POSTs Lambda's SQS event (`{\"Records\":[…]}`) in one request per receive, "
        "then deletes with one DeleteMessageBatch. Requests are every SQS call the consumer made, "
        "per message. Duplicates are deliveries beyond one per message (a message whose visibility "
        "ran out while its consumer still held it). The ratio is each round's CPU over the raw "
        "loop's in the same round (paired), then the median of those.",
        "",
        "| consumer | CPU ms / 1k msgs, each round | median | vs raw loop, each round | median | peak RSS MB (anonymous), each round | wall s (median) | SQS requests / msg | duplicates |",
        "|---|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for name in names:
        rows = rounds[name]
        ratios = [row["cpu"] / raw_row["cpu"] for row, raw_row in zip(rows, raw)]
        cpu_rounds = ", ".join(f"{r['cpu_per_1k_ms']:.0f}" for r in rows)
        ratio_rounds = ", ".join(f"{x:.2f}" for x in ratios)
        rss_rounds = ", ".join(f"{r['peak_mb']:.1f} ({r['peak_anon_mb']:.1f})" for r in rows)
        lines.append(
            f"| {name} | {cpu_rounds} | {median([r['cpu_per_1k_ms'] for r in rows]):.0f} | "
            f"{ratio_rounds} | {median(ratios):.2f}x | {rss_rounds} | "
            f"{median([r['wall'] for r in rows]):.1f} | "
            f"{median([r['requests_per_message'] for r in rows]):.3f} | {sum(r['duplicates'] for r in rows)} |"
        )
    lines += ["", "Requests by action (first round):", ""]
    for name in names:
        lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(rounds[name][0]["requests"].items())))
    lines += [
        "",
        f"Heap allocations (heaptrack, one drain of {allocations['messages']:,} messages, start to "
        "drained, including start-up):",
        "",
        "| consumer | allocations | per message | peak heap MB |",
        "|---|---:|---:|---:|",
    ]
    for name, (calls, peak) in allocations["counts"].items():
        lines.append(f"| {name} | {calls:,} | {calls / allocations['messages']:.1f} | {peak:.1f} |")
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
        "| exec to (median of 5 starts) | 1 mapping | 10 mappings |",
        "|---|---:|---:|",
    ]
    for step, label in (("starting", "log \"sluice starting\" (process, config, logging, runtime)"),
                        ("running", "log \"sluice running\" (AWS config, clients, targets, servers, mappings spawned)"),
                        ("GetQueueAttributes", "first GetQueueAttributes at moto"),
                        ("ReceiveMessage", "**first ReceiveMessage at moto**")):
        one = footprint["steps_1"].get(step)
        ten = footprint["steps_10"].get(step)
        lines.append(f"| {label} | {one:.1f} ms | {ten:.1f} ms |" if one is not None and ten is not None else f"| {label} | – | – |")
    lines += [
        "",
        "| footprint | value |",
        "|---|---:|",
        f"| idle RSS, 1 mapping (anonymous) | {footprint['idle_rss_mb_1'][0]:.1f} MB ({footprint['idle_rss_mb_1'][1]:.1f} MB) |",
        f"| idle RSS, 10 mappings (anonymous) | {footprint['idle_rss_mb_10'][0]:.1f} MB ({footprint['idle_rss_mb_10'][1]:.1f} MB) |",
        f"| release binary | {footprint['binary_mb']:.1f} MB |",
        "",
    ]
    text = "\n".join(lines)
    with open(os.path.join(ROOT, "bench/results.md"), "w") as f:
        f.write(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
