"""The boto3 contender: what most teams hand-write. CONCURRENCY threads, each receiving 10
messages, POSTing them to the handler and deleting them with one DeleteMessageBatch.

Usage: python boto3_loop.py QUEUE_URL HANDLER_URL CONCURRENCY
"""

import json
import sys
import threading
import urllib.request

import boto3


def worker(queue_url, handler_url):
    sqs = boto3.client("sqs")
    while True:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=20
        ).get("Messages", [])
        if not messages:
            continue
        event = {"Records": [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]}
        request = urllib.request.Request(
            handler_url,
            data=json.dumps(event).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            response.read()
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )


def main():
    queue_url, handler_url, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threads = [threading.Thread(target=worker, args=(queue_url, handler_url), daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
