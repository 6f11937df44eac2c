"""A tiny order handler that speaks Lambda's SQS contract over HTTP.

It receives the SQS event sluice POSTs (exactly what Lambda would pass to a function), prints one
line per order, and reports orders it cannot process in `batchItemFailures`, so sluice retries
only those. An order whose body contains "poison" always fails.

Usage: python examples/handler.py PORT
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Batches are handled on several threads at once; print writes a line and its newline
# separately, so two threads' lines could run together. One line, one write, one at a time.
_output = threading.Lock()


def say(line):
    with _output:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class OrderHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        event = json.loads(self.rfile.read(length) or b"{}")
        failures = []
        for record in event.get("Records", []):
            body = record["body"]
            attempt = record["attributes"]["ApproximateReceiveCount"]
            if "poison" in body:
                say(f"rejected {body} (attempt {attempt})")
                failures.append(
                    {
                        "itemIdentifier": record["messageId"],
                        "errorType": "OrderRejected",
                        "errorMessage": f"cannot process {body}",
                    }
                )
            else:
                say(f"handled {body}")
        payload = json.dumps({"batchItemFailures": failures}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    ThreadingHTTPServer(("127.0.0.1", port), OrderHandler).serve_forever()
