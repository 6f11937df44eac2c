"""A Lambda worker for the Runtime API fuzz test (tests/fuzz_http.rs).

Run by sluice's lambda_runtime target, so it is inside the worker's process group and may reach
its Runtime API. Before taking any invocation it replays the damaged requests in FUZZ_REQUESTS
(each a 4-byte big-endian length and the raw bytes) on fresh connections and writes the status
line of each answer (or how the connection ended) to FUZZ_RESULTS as JSON; then it serves
invocations normally, echoing each event, so the test can check the API still works.
"""
import json
import os
import socket
import urllib.request

api = os.environ["AWS_LAMBDA_RUNTIME_API"]
host, port = api.rsplit(":", 1)


def exchange(request):
    """Sends one request; returns the answer's status line, 'closed' or 'no answer'."""
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.settimeout(0.5)
        s.sendall(request)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value.strip() or 0)
                    if len(body) >= length:
                        break
        except socket.timeout:
            pass
    if not data:
        return "no answer"
    return data.split(b"\r\n", 1)[0].decode("latin-1")


results = []
with open(os.environ["FUZZ_REQUESTS"], "rb") as f:
    data = f.read()
i = 0
while i < len(data):
    n = int.from_bytes(data[i : i + 4], "big")
    request = data[i + 4 : i + 4 + n]
    i += 4 + n
    first = request.split(b"\r\n", 1)[0]
    if (b"GET" in first and b"next" in first) or b"init/error" in first:
        # A `next` waits for an invocation (the loop below takes them); an init error would
        # rightly have the worker replaced, and this replay start over.
        continue
    try:
        results.append(exchange(request))
    except OSError as error:
        results.append("error: %s" % error)
with open(os.environ["FUZZ_RESULTS"], "w") as f:
    json.dump(results, f)

while True:
    with urllib.request.urlopen("http://%s/2018-06-01/runtime/invocation/next" % api) as r:
        request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = r.read()
    urllib.request.urlopen(
        urllib.request.Request(
            "http://%s/2018-06-01/runtime/invocation/%s/response" % (api, request_id),
            data=event,
            method="POST",
        )
    ).read()
