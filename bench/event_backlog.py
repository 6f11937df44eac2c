"""Memory and idle CPU of the Invoke API's Event queue with a large backlog.

Starts the sluice binary given as argv[1] with one function whose handler never answers in
time (a TCP listener that accepts and stays silent), queues N events of SIZE bytes, and reads
sluice's RSS (VmRSS) and CPU time (utime + stime from /proc/<pid>/stat): idle before, right after
queueing, idle for 10 s with the backlog, and after a restart on the same state file.
Prints a Markdown table with the machine and date. Usage:
    event_backlog.py SLUICE [EVENTS] [EVENT_BYTES]
"""

import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def silent_server():
    """Accepts connections and never answers: every invocation times out, events stay queued."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []

    def accept():
        while True:
            connection, _ = listener.accept()
            held.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def start(binary, config_path, log):
    process = subprocess.Popen(
        [binary, "run", "-c", config_path], stdout=log, stderr=subprocess.STDOUT
    )
    return process


def wait_up(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the invoke API did not come up")


def main():
    binary = sys.argv[1]
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    work = tempfile.mkdtemp(prefix="sluice-backlog-")
    invoke_port, admin_port = free_port(), free_port()
    handler_port = silent_server()
    config_path = os.path.join(work, "sluice.yaml")
    with open(config_path, "w") as config:
        config.write(
            f"""
version: 1
state_dir: "{work}/state"
admin: {{ listen: "127.0.0.1:{admin_port}" }}
shutdown_timeout: 2s
targets:
  slow:
    http: {{ url: "http://127.0.0.1:{handler_port}/", timeout: 15m, max_concurrency: 1 }}
invoke_api:
  listen: "127.0.0.1:{invoke_port}"
  max_queued_events: {events + 10}
  max_queued_bytes: {max(events * (size + 64), 1 << 20)}
  functions:
    fn: {{ target: slow }}
"""
        )
    log = open(os.path.join(work, "sluice.log"), "w")
    process = start(binary, config_path, log)
    wait_up(invoke_port)
    time.sleep(1)
    rows = [("started, queue empty", rss_kb(process.pid), None)]
    body = json.dumps({"pad": "x" * max(size - 12, 0)})
    connection = http.client.HTTPConnection("127.0.0.1", invoke_port)
    started = time.time()
    for _ in range(events):
        connection.request(
            "POST",
            "/2015-03-31/functions/fn/invocations",
            body=body,
            headers={"X-Amz-Invocation-Type": "Event"},
        )
        response = connection.getresponse()
        response.read()
        if response.status != 202:
            raise SystemExit(f"event refused: {response.status}")
    queued_in = time.time() - started
    rows.append((f"{events} events of {size} bytes queued ({queued_in:.1f} s)", rss_kb(process.pid), None))
    before = cpu_seconds(process.pid)
    time.sleep(10)
    rows.append(("after 10 s idle with the backlog", rss_kb(process.pid), cpu_seconds(process.pid) - before))
    process.terminate()
    process.wait(timeout=30)
    process = start(binary, config_path, log)
    wait_up(invoke_port)
    time.sleep(2)
    before = cpu_seconds(process.pid)
    time.sleep(10)
    rows.append(("restarted on that state, 10 s idle", rss_kb(process.pid), cpu_seconds(process.pid) - before))
    process.terminate()
    process.wait(timeout=30)
    state_mb = os.path.getsize(os.path.join(work, "state", "checkpoints.redb")) / 1e6
    print()
    print(
        f"## Invoke API Event backlog ({time.strftime('%Y-%m-%d')}, `scripts/bench --event-backlog`, "
        f"{platform.machine()}, {os.cpu_count()} cores, {'release' if '/release/' in binary else 'debug'} build)"
    )
    print()
    print(f"{events} events of {size} bytes to a function whose handler never answers; state file {state_mb:.0f} MB.")
    print()
    print("| moment | RSS | CPU over the 10 s |")
    print("|---|---|---|")
    for moment, rss, cpu in rows:
        cpu_text = "" if cpu is None else f"{cpu:.2f} s"
        print(f"| {moment} | {rss / 1024:.1f} MB | {cpu_text} |")


if __name__ == "__main__":
    main()
