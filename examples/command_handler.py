"""A handler for sluice's `command` target: one process per invocation, the event on stdin, the
response on stdout, diagnostics on stderr (sluice logs each line with the request id).

Orders whose body contains "poison" are reported in `batchItemFailures` with a reason; the rest
succeed. With DELIVERY_LOG set, each body handled is appended to that file (the tests count
deliveries with it).
"""

import json
import os
import sys

event = json.load(sys.stdin)
failures = []
log_path = os.environ.get("DELIVERY_LOG")
for record in event.get("Records", []):
    body = record.get("body", "")
    if log_path:
        with open(log_path, "a") as log:
            log.write(body + "\n")
    if "poison" in body:
        print(f"rejecting {body}", file=sys.stderr)
        failures.append(
            {
                "itemIdentifier": record["messageId"],
                "errorType": "OrderRejected",
                "errorMessage": f"cannot process {body}",
            }
        )
json.dump({"batchItemFailures": failures}, sys.stdout)
