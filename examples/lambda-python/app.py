"""An ordinary Python Lambda function, run unchanged by sluice's `lambda_runtime` target through
AWS's runtime interface client (`python3 -m awslambdaric app.handler`).

For SQS events it reports orders whose body contains "poison" in `batchItemFailures`. Bodies
ending in "-sleep" sleep past the timeout and bodies ending in "-crash" exit the process, each only
the first time they are seen when ONCE_DIR names a directory (a marker file per body).
"""

import os
import time

_started = time.time()  # module import is the cold start


def _first_time(body):
    directory = os.environ.get("ONCE_DIR")
    if not directory:
        return True
    try:
        fd = os.open(os.path.join(directory, body), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        return True
    except FileExistsError:
        return False


def handler(event, context):
    failures = []
    for record in event.get("Records", []):
        body = record.get("body", "")
        if body.endswith("-sleep") and _first_time(body):
            time.sleep(600)
        if body.endswith("-crash") and _first_time(body):
            os._exit(17)
        if "poison" in body:
            failures.append(
                {
                    "itemIdentifier": record["messageId"],
                    "errorType": "OrderRejected",
                    "errorMessage": f"cannot process {body}",
                }
            )
    return {"batchItemFailures": failures}
