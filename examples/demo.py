"""Runs sluice's main job end to end on this machine (called by scripts/demo).

Starts moto (through the test launcher), creates an orders queue and its dead-letter queue, starts
examples/handler.py, runs `sluice run -c examples/sqs-http.yaml`, sends 20 orders (one of them
poisoned), waits until every order is handled and the poisoned one is dead-lettered, prints what
happened, then stops sluice with SIGTERM.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    sys.exit(f"demo: timed out waiting for {what}")


def main():
    sluice_bin = sys.argv[1]
    moto = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests/support/moto_launcher.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    port = int(moto.stdout.readline().strip().rsplit(":", 1)[1])
    endpoint = f"http://127.0.0.1:{port}"
    print(f"moto (SQS) on {endpoint}")
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    queue = sqs.create_queue(QueueName="orders")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="orders-dlq")["QueueUrl"]

    handler_port = free_port()
    handler = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "examples/handler.py"), str(handler_port)],
        stdout=subprocess.PIPE,
        text=True,
    )

    def handler_listening():
        try:
            socket.create_connection(("127.0.0.1", handler_port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for("the handler to listen", handler_listening, timeout=20)
    admin = f"127.0.0.1:{free_port()}"
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
        ORDERS_QUEUE_URL=queue,
        ORDERS_DLQ_URL=dlq,
        HANDLER_URL=f"http://127.0.0.1:{handler_port}/events",
        SLUICE_ADMIN=admin,
    )
    log_path = os.path.join(ROOT, "target", "demo-sluice.log")
    with open(log_path, "w") as log:
        sluice = subprocess.Popen(
            [sluice_bin, "run", "-c", os.path.join(ROOT, "examples/sqs-http.yaml")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    print(f"sluice running (admin on http://{admin}, log in {os.path.relpath(log_path, ROOT)})")

    orders = [f"order-{n:02d}" for n in range(19)] + ["order-99-poison"]
    for start in range(0, len(orders), 10):
        sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(orders[start : start + 10])],
        )
    print(f"sent {len(orders)} orders, one of them poisoned")

    def depth(url):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return sum(int(attributes[k]) for k in ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"))

    wait_for("the orders queue to empty and the poisoned order to be dead-lettered",
             lambda: depth(queue) == 0 and depth(dlq) == 1)

    dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=1)["Messages"][0]
    envelope = json.loads(dead["Body"])
    with urllib.request.urlopen(f"http://{admin}/metrics") as response:
        metrics = [line for line in response.read().decode().splitlines()
                   if line.startswith(("sluice_records_received_total", "sluice_records_acknowledged_total",
                                       "sluice_records_dead_lettered_total"))]

    sluice.send_signal(signal.SIGTERM)
    code = sluice.wait(timeout=40)
    handler.terminate()
    handled = [line for line in handler.stdout.read().splitlines()]
    moto.kill()

    print()
    print("handler output:")
    for line in handled:
        print(f"  {line}")
    print()
    print("dead letter (sluice envelope):")
    print(f"  condition: {envelope['requestContext']['condition']}, "
          f"attempts: {envelope['requestContext']['approximateInvokeCount']}")
    print(f"  error: {envelope['sluice']['error']['type']}: {envelope['sluice']['error']['message']}")
    print(f"  record body: {envelope['sluice']['records'][0]['body']}")
    print()
    print("metrics:")
    for line in metrics:
        print(f"  {line}")
    print()
    handled_count = sum(1 for line in handled if line.startswith("handled "))
    print(f"summary: {handled_count} orders handled, 1 dead-lettered, orders queue empty, sluice exited {code}")
    sys.exit(0 if code == 0 and handled_count == 19 else 1)


if __name__ == "__main__":
    main()
