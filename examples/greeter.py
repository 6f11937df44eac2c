"""A tiny handler for sluice's command target (examples/local.yaml): the event on stdin, the
response on stdout. {"name": "Ada"} answers {"greeting": "Hello, Ada!"}; a missing name is a
function error. With GREETED_LOG set, each name is appended to that file; GREETER_DELAY (seconds)
makes it slow.
"""

import json
import os
import sys
import time

event = json.load(sys.stdin)
name = event.get("name")
if not name:
    json.dump({"errorType": "MissingName", "errorMessage": "the event has no name"}, sys.stdout)
    sys.exit(1)
time.sleep(float(os.environ.get("GREETER_DELAY", "0")))
log_path = os.environ.get("GREETED_LOG")
if log_path:
    with open(log_path, "a") as log:
        log.write(name + "\n")
json.dump({"greeting": f"Hello, {name}!"}, sys.stdout)
