"""Starts moto server for sluice's tests, with these fixes applied before it serves.

1. FIFO ordering (moto bugs): after an in-flight FIFO message's visibility times out, moto still
   counts it as pending during its group check, and can hand out a later message of that group
   first. `Queue.pending_message_groups` here counts only messages that are still invisible, which
   is how SQS locks a message group. Second, a long poll checks each message's visibility as it
   walks the queue, so when an earlier message of a group becomes visible mid-walk (a retry delay
   running out), moto skips it and hands out the group's later messages. Here a FIFO queue's
   receivable messages exclude every message behind an earlier one of its group that is in
   flight or delayed: SQS hands a group's messages out in order.
2. Concurrent receives (moto bug): a receive checks a message's visibility and then marks it
   received without a lock, so two receives running at once can hand out the same message. Here
   each pass of a receive over the queue holds one lock, released while a long poll waits.
3. Speed: stock moto reads a datetime-based clock many times per message; the SQS models here use
   `time.time()` instead.
4. Speed: the retention check recomputed every queue attribute (counting all messages) once per
   returned message; here it reads `MessageRetentionPeriod` directly. Sending recomputed them too,
   only to read `ContentBasedDeduplication`; here a send sees just that attribute. Deletes scan
   for the one message and stop, instead of rebuilding the message list.

5. Stream sequence numbers (moto bug): `StreamShard.add` numbers a record `len(items) + start`,
   builds it, then appends it, without a lock; two writes at once get the same sequence number,
   and since reads index the shard by sequence number, a reader then sees one record twice and
   another never. Here `add` holds a lock, so sequence numbers are unique and contiguous.

6. Conditional writes (moto bug): DynamoDB's PutItem, UpdateItem and DeleteItem check their
   condition and then write, without a lock; two instances taking the same free shard lease at
   once (an UpdateItem conditioned on the lease counter) could both succeed, and both read the
   shard. Here every item write of the backend holds one lock, so a condition and its write are
   atomic, as in DynamoDB.

7. Test control, not a fix: `PUT /_sluice/stream-clock?offset_seconds=-120` shifts the
   `ApproximateCreationDateTime` that moto stamps on DynamoDB stream records written afterwards
   (and the `ApproximateArrivalTimestamp` of Kinesis records), so a test can produce records
   that are already two minutes old (for `max_record_age`) without waiting. `offset_seconds=0`
   restores the real clock.

8. Kinesis sequence numbers (moto bug): `Shard.put_record` numbers a record one past the
   shard's highest, then stores it, without a lock (its own comment says it is not safe for
   concurrency); two PutRecord calls at once get the same number and one record replaces the
   other. Here every Kinesis write holds one lock, as in patch 5.

9. Kinesis resharding (moto bugs): `SplitShard` moves the parent's records into the children
   (re-putting them, with the partition key and data swapped) and `MergeShards` copies both
   parents' records into the child. In Kinesis a closed parent keeps its records until they
   expire and a child starts empty; with moto's behaviour a reader that follows the lineage,
   as Lambda and KCL do, would see records twice and out of order. Here a split or merge only
   closes the parents and creates empty children. moto also routes a write to the first shard
   whose hash range holds the key, closed or open, so after a split every record still went to
   the closed parent; here writes go to the open shard that holds the key (its range inclusive
   at both ends, as Kinesis' is).

10. Kinesis shard end (moto bug): GetRecords always answers a NextShardIterator, so a reader
   never learns that a closed shard is finished and never moves on to its children. Here a read
   of a closed shard that reaches its last record answers none, as Kinesis does.

With --count-requests (used by the benchmarks) it also counts requests per SQS action:
GET /_sluice/requests returns {"counts": {action: n}, "first": {action: unix time}}, and DELETE
resets them. Requests whose User-Agent contains "sluice-bench-harness" (the benchmark's own
bookkeeping) are not counted.

With --record-actions (used by the IAM policy tests) it records the IAM action of every request
made by sluice (a User-Agent with "app/sluice"): GET /_sluice/actions returns {"actions":
["sqs:ReceiveMessage", ...]}, sorted, and DELETE resets them. JSON-protocol calls are named by
their X-Amz-Target (DynamoDB Streams calls are dynamodb: actions, as in IAM); S3 REST calls by
method and path (HeadObject needs s3:GetObject, as in IAM).

Usage: python moto_launcher.py [--port N] [--count-requests] [--record-actions]
Prints "moto listening on 127.0.0.1:<port>" once ready, then serves until stdin closes (so it dies
with the test process that started it) or it is killed.
"""

import argparse
import collections
import json
import sys
import threading
import time

import moto.sqs.models as sqs_models
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

_original_unix_time = sqs_models.unix_time
_original_unix_time_millis = sqs_models.unix_time_millis


def _unix_time(dt=None):
    return time.time() if dt is None else _original_unix_time(dt)


def _unix_time_millis(dt=None):
    return time.time() * 1000.0 if dt is None else _original_unix_time_millis(dt)


def _pending_message_groups(self):
    return {
        message.group_id
        for message in self._pending_messages
        if message.group_id is not None and not message.visible
    }


_original_messages = sqs_models.Queue.messages


def _fifo_ordered_messages(self):
    receivable = _original_messages.fget(self)
    if not self.fifo_queue:
        return receivable
    receivable_ids = {id(message) for message in receivable}
    blocked_groups = set()
    ordered = []
    for message in self._messages:
        if id(message) in receivable_ids:
            if message.group_id not in blocked_groups:
                ordered.append(message)
        elif message.group_id is not None:
            blocked_groups.add(message.group_id)
    return ordered


def _is_message_valid_based_on_retention_period(self, queue_name, message):
    queue = self.get_queue(queue_name)
    retention_period = int(queue.message_retention_period)
    return retention_period + message.sent_timestamp / 1000 > time.time()


def _delete_message(self, receipt_handle):
    if receipt_handle in self.deleted_messages:
        return
    for index, message in enumerate(self._messages):
        if message.had_receipt_handle(receipt_handle):
            self.pending_messages.discard(message)
            self.deleted_messages.update(message.all_receipt_handles)
            del self._messages[index]
            return
    raise sqs_models.ReceiptHandleIsInvalid()


_sending = threading.local()
_original_attributes = sqs_models.Queue.attributes
_original_send_message = sqs_models.SQSBackend.send_message


def _attributes(self):
    if getattr(_sending, "active", False):
        value = getattr(self, "content_based_deduplication", None)
        if isinstance(value, bool):
            value = str(value).lower()
        return {"ContentBasedDeduplication": value}
    return _original_attributes.fget(self)


def _send_message(self, *args, **kwargs):
    _sending.active = True
    try:
        return _original_send_message(self, *args, **kwargs)
    finally:
        _sending.active = False


_receive_lock = threading.Lock()
_original_receive_message = sqs_models.SQSBackend.receive_message
_original_wait_for_messages = sqs_models.Queue.wait_for_messages


def _receive_message(self, *args, **kwargs):
    with _receive_lock:
        return _original_receive_message(self, *args, **kwargs)


def _wait_for_messages(self, timeout):
    _receive_lock.release()
    try:
        _original_wait_for_messages(self, timeout)
    finally:
        _receive_lock.acquire()


sqs_models.SQSBackend.receive_message = _receive_message
sqs_models.Queue.wait_for_messages = _wait_for_messages
sqs_models.Queue.attributes = property(_attributes)
sqs_models.SQSBackend.send_message = _send_message
sqs_models.unix_time = _unix_time
sqs_models.unix_time_millis = _unix_time_millis
sqs_models.Queue.pending_message_groups = property(_pending_message_groups)
sqs_models.Queue.messages = property(_fifo_ordered_messages)
sqs_models.Queue.delete_message = _delete_message
sqs_models.SQSBackend.is_message_valid_based_on_retention_period = (
    _is_message_valid_based_on_retention_period
)


def serialize_stream_writes():
    import moto.dynamodb.models.table as table_models

    lock = threading.Lock()
    add = table_models.StreamShard.add

    def locked_add(self, old, new):
        with lock:
            return add(self, old, new)

    table_models.StreamShard.add = locked_add


def serialize_kinesis_writes():
    import moto.kinesis.models as kinesis_models

    lock = threading.RLock()
    backend = kinesis_models.KinesisBackend
    # Reads too: a read walks the shard's records while a write would add to them.
    for name in ("put_record", "put_records", "get_records", "split_shard", "merge_shards", "update_shard_count"):
        write = getattr(backend, name)

        def locked(self, *args, __write=write, **kwargs):
            with lock:
                return __write(self, *args, **kwargs)

        setattr(backend, name, locked)


def kinesis_resharding_keeps_records():
    import moto.kinesis.models as kinesis_models
    from operator import attrgetter

    Shard = kinesis_models.Shard

    def next_id(stream):
        return max(s._shard_id for s in stream.shards.values()) + 1

    def split_shard(self, shard_to_split, new_starting_hash_key):
        new_start = int(new_starting_hash_key)
        shard = self.shards[shard_to_split]
        if not (shard.starting_hash < new_start < shard.ending_hash):
            raise kinesis_models.InvalidArgumentError(
                message=f"NewStartingHashKey {new_start} is not inside shard {shard_to_split}"
            )
        if not shard.is_open:
            raise kinesis_models.InvalidArgumentError(
                message=f"Shard {shard.shard_id} has already been merged or split"
            )
        first = Shard(next_id(self), shard.starting_hash, new_start - 1, parent=shard.shard_id)
        self.shards[first.shard_id] = first
        second = Shard(next_id(self), new_start, shard.ending_hash, parent=shard.shard_id)
        self.shards[second.shard_id] = second
        shard.is_open = False

    def merge_shards(self, shard_to_merge, adjacent_shard_to_merge):
        first = self.shards[shard_to_merge]
        second = self.shards[adjacent_shard_to_merge]
        if first.ending_hash + 1 != second.starting_hash and second.ending_hash + 1 != first.starting_hash:
            raise kinesis_models.InvalidArgumentError(adjacent_shard_to_merge)
        low, high = sorted((first, second), key=attrgetter("starting_hash"))
        merged = Shard(
            next_id(self),
            low.starting_hash,
            high.ending_hash,
            parent=first.shard_id,
            adjacent_parent=second.shard_id,
        )
        self.shards[merged.shard_id] = merged
        first.is_open = False
        second.is_open = False

    def get_shard_for_key(self, partition_key, explicit_hash_key):
        if explicit_hash_key:
            key = int(explicit_hash_key)
        else:
            key = int(kinesis_models.md5_hash(partition_key.encode("utf-8")).hexdigest(), 16)
        for shard in self.shards.values():
            if shard.is_open and shard.starting_hash <= key <= shard.ending_hash:
                return shard
        return None

    kinesis_models.Stream.split_shard = split_shard
    kinesis_models.Stream.merge_shards = merge_shards
    kinesis_models.Stream.get_shard_for_key = get_shard_for_key

    get_records = kinesis_models.KinesisBackend.get_records

    def ending_get_records(self, stream_arn, shard_iterator, limit):
        next_iterator, records, behind = get_records(self, stream_arn, shard_iterator, limit)
        stream_name, shard_id, last = kinesis_models.decompose_shard_iterator(next_iterator)
        stream = self.describe_stream(stream_arn=stream_arn, stream_name=stream_name)
        shard = stream.get_shard(shard_id)
        if not shard.is_open and int(last) >= shard.get_max_sequence_number():
            next_iterator = None
        return next_iterator, records, behind

    kinesis_models.KinesisBackend.get_records = ending_get_records


def serialize_item_writes():
    import moto.dynamodb.models as dynamodb_models

    lock = threading.RLock()
    backend = dynamodb_models.DynamoDBBackend
    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        write = getattr(backend, name)

        def locked(self, *args, __write=write, **kwargs):
            with lock:
                return __write(self, *args, **kwargs)

        setattr(backend, name, locked)


def stream_clock_control():
    import datetime
    import urllib.parse

    import moto.dynamodb.models.table as table_models
    import moto.kinesis.models as kinesis_models
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    offset = {"seconds": 0.0}
    real_utcnow = table_models.utcnow

    def shifted_utcnow():
        return real_utcnow() + datetime.timedelta(seconds=offset["seconds"])

    table_models.utcnow = shifted_utcnow
    kinesis_models.utcnow = shifted_utcnow
    serve = DomainDispatcherApplication.__call__

    def control_call(self, environ, start_response):
        if environ.get("PATH_INFO") == "/_sluice/stream-clock":
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            offset["seconds"] = float(query.get("offset_seconds", ["0"])[0])
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(offset).encode()]
        return serve(self, environ, start_response)

    DomainDispatcherApplication.__call__ = control_call


def count_requests():
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    counts = collections.Counter()
    first = {}
    lock = threading.Lock()
    serve = DomainDispatcherApplication.__call__

    def counting_call(self, environ, start_response):
        if environ.get("PATH_INFO") == "/_sluice/requests":
            with lock:
                if environ.get("REQUEST_METHOD") == "DELETE":
                    counts.clear()
                    first.clear()
                body = json.dumps({"counts": counts, "first": first}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if "sluice-bench-harness" in environ.get("HTTP_USER_AGENT", ""):
            return serve(self, environ, start_response)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        action = target.rsplit(".", 1)[-1] if target else "other"
        with lock:
            counts[action] += 1
            first.setdefault(action, time.time())
        return serve(self, environ, start_response)

    DomainDispatcherApplication.__call__ = counting_call


JSON_PREFIXES = {
    "AmazonSQS": "sqs",
    "DynamoDB_20120810": "dynamodb",
    "DynamoDBStreams_20120810": "dynamodb",
    "Kinesis_20131202": "kinesis",
}


SQS_BATCH_ACTIONS = {
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "SendMessageBatch": "SendMessage",
}


def iam_action(environ):
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        prefix, _, operation = target.partition(".")
        # IAM authorizes SQS batch calls with the single-message action.
        operation = SQS_BATCH_ACTIONS.get(operation, operation) if prefix == "AmazonSQS" else operation
        return f"{JSON_PREFIXES.get(prefix, prefix)}:{operation}"
    method = environ.get("REQUEST_METHOD", "GET")
    segments = [s for s in environ.get("PATH_INFO", "/").split("/") if s]
    if len(segments) >= 2:
        operation = {"GET": "GetObject", "HEAD": "GetObject", "PUT": "PutObject",
                     "DELETE": "DeleteObject", "POST": "PutObject"}.get(method, method)
    elif method in ("GET", "HEAD"):
        operation = "ListBucket"
    else:
        operation = f"{method}Bucket"
    return f"s3:{operation}"


def record_actions():
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    actions = set()
    lock = threading.Lock()
    serve = DomainDispatcherApplication.__call__

    def recording_call(self, environ, start_response):
        if environ.get("PATH_INFO") == "/_sluice/actions":
            with lock:
                if environ.get("REQUEST_METHOD") == "DELETE":
                    actions.clear()
                body = json.dumps({"actions": sorted(actions)}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        agent = environ.get("HTTP_USER_AGENT", "") + " " + environ.get("HTTP_X_AMZ_USER_AGENT", "")
        if "app/sluice" in agent:
            with lock:
                actions.add(iam_action(environ))
        return serve(self, environ, start_response)

    DomainDispatcherApplication.__call__ = recording_call


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count-requests", action="store_true")
    parser.add_argument("--record-actions", action="store_true")
    args = parser.parse_args()
    serialize_stream_writes()
    serialize_item_writes()
    serialize_kinesis_writes()
    kinesis_resharding_keeps_records()
    stream_clock_control()
    if args.count_requests:
        count_requests()
    if args.record_actions:
        record_actions()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(f"moto listening on {host}:{port}", flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    server.stop()


if __name__ == "__main__":
    main()
