"""moto's server with SQS queue operations made atomic.

moto 5.2.5 serves requests on threads but its SQS model takes no locks:
a receive checks a message's visibility and marks it received in two
steps, so two concurrent receives can return the same message (both with
ApproximateReceiveCount 1) and a FIFO group can go to two receives at once;
a delete rebuilds the message list, so a message sent meanwhile can vanish.
Real SQS does none of this. This launcher runs each operation on a queue
under that queue's lock (never across queues), keeps long-poll waits
outside the lock.

It also makes moto as strict as SQS where the adapter depends on it
(docs/headers.md, "AWS SQS", says which rules are documented and which
assumed): a message's size counts its attributes, a batch's total size is
capped, attribute values obey the body's character rules, at most 10
attributes, and a delete with a receipt handle that is no longer the latest
succeeds without deleting. Tests can make chosen batch entries fail once
(`FAIL_ONCE_TAG`), as SQS fails single entries of a batch.
"""
import functools
import threading
import time

import re

from moto.core.responses import ActionResult
from moto.server import main
from moto.sqs.exceptions import EmptyBatchRequest, SQSException
from moto.sqs.models import Queue, SQSBackend
from moto.sqs.responses import SQSResponse
from moto.sqs.utils import validate_message_attributes

_locks = {}
_guard = threading.Lock()


def _lock(backend, queue_name):
    with _guard:
        # Re-entrant: batch operations call the single ones.
        return _locks.setdefault((id(backend), queue_name), threading.RLock())


def _serialize(name):
    original = getattr(SQSBackend, name)

    @functools.wraps(original)
    def locked(self, *args, **kwargs):
        queue_name = kwargs.get("queue_name", args[0] if args else None)
        with _lock(self, queue_name):
            return original(self, *args, **kwargs)

    setattr(SQSBackend, name, locked)


for _name in ("send_message", "send_message_batch", "delete_message",
              "delete_message_batch", "change_message_visibility",
              "change_message_visibility_batch", "purge_queue"):
    _serialize(_name)

_receive = SQSBackend.receive_message


def receive_message(self, queue_name, count, wait_seconds_timeout, visibility_timeout,
                    message_attribute_names=None):
    deadline = time.monotonic() + (wait_seconds_timeout or 0)
    while True:
        with _lock(self, queue_name):
            result = _receive(self, queue_name, count, 0, visibility_timeout,
                              message_attribute_names)
        left = deadline - time.monotonic()
        if result or left <= 0:
            return result
        # Wakes when a message arrives; the sleep keeps a queue whose
        # messages are all in flight from spinning.
        self.get_queue(queue_name).wait_for_messages(min(1.0, left))
        time.sleep(0.01)


SQSBackend.receive_message = receive_message


# --- Strictness: what SQS refuses and moto accepts -------------------------

MAX_ATTRIBUTES = 10
# Characters SQS allows in a body and in String/Number attribute values.
_INVALID_TEXT = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A queue tag naming MessageDeduplicationIds (comma-separated) whose batch
# entries fail once with InternalError, as SQS can fail single entries.
FAIL_ONCE_TAG = "causeway-emulator:fail-once"


def _attribute_size(name, value):
    data = value.get("StringValue") or value.get("BinaryValue") or ""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return len(name.encode("utf-8")) + len(value.get("DataType", "").encode("utf-8")) + len(data)


def _message_size(body, attributes):
    return len(body.encode("utf-8")) + sum(
        _attribute_size(n, v) for n, v in (attributes or {}).items())


def _check_message(queue, body, attributes):
    """What SendMessage refuses: the same checks decide a whole batch."""
    if _INVALID_TEXT.search(body):
        raise SQSException("InvalidMessageContents",
                           "Invalid binary character in the message body")
    attributes = attributes or {}
    if len(attributes) > MAX_ATTRIBUTES:
        raise SQSException(
            "InvalidParameterValue",
            f"Number of message attributes [{len(attributes)}] exceeds the allowed maximum [{MAX_ATTRIBUTES}].")
    for name, value in attributes.items():
        text = value.get("StringValue")
        if text is not None and _INVALID_TEXT.search(text):
            raise SQSException(
                "InvalidParameterValue",
                f"Message (user) attribute '{name}' value contains invalid characters.")
    size = _message_size(body, attributes)
    if size > queue.maximum_message_size:
        raise SQSException(
            "InvalidParameterValue",
            "One or more parameters are invalid. Reason: Message must be shorter than "
            f"{queue.maximum_message_size} bytes.")


_send = SQSBackend.send_message


def send_message(self, queue_name, message_body, message_attributes=None, *args, **kwargs):
    _check_message(self.get_queue(queue_name), message_body, message_attributes)
    return _send(self, queue_name, message_body, message_attributes, *args, **kwargs)


SQSBackend.send_message = send_message
_send_batch = SQSBackend.send_message_batch


def send_message_batch(self, queue_name, entries):
    """Checks every entry before storing any (a refused request stores
    nothing) and caps the batch's total size, attributes included, at the
    queue's MaximumMessageSize. Returns entries failed by FAIL_ONCE_TAG
    beside moto's own failures."""
    queue = self.get_queue(queue_name)
    total = 0
    for entry in entries.values():
        _check_message(queue, entry["MessageBody"], entry.get("MessageAttributes"))
        total += _message_size(entry["MessageBody"], entry.get("MessageAttributes"))
    if total > queue.maximum_message_size:
        raise SQSException(
            "BatchRequestTooLong",
            f"Batch requests cannot be longer than {queue.maximum_message_size} bytes. "
            f"You have sent {total} bytes.")
    fail = {t for t in queue.tags.get(FAIL_ONCE_TAG, "").split(",") if t}
    injected = [e for e in entries.values() if e.get("MessageDeduplicationId") in fail]
    for entry in injected:
        fail.discard(entry["MessageDeduplicationId"])
    queue.tags[FAIL_ONCE_TAG] = ",".join(sorted(fail))
    kept = {k: e for k, e in entries.items() if e not in injected}
    messages, failed = _send_batch(self, queue_name, kept) if kept else ([], [])
    for entry in injected:
        failed.append(dict(entry, _Code="InternalError", _SenderFault=False,
                           _Message="injected by the test (causeway-emulator:fail-once)"))
    return messages, failed


SQSBackend.send_message_batch = send_message_batch


def _response_send_message_batch(self):
    """moto's handler, reporting each failed entry with its own code."""
    queue_name = self._get_queue_name()
    queue = self.sqs_backend.get_queue(queue_name)
    entries = self._get_param("Entries", [])
    if not entries:
        raise EmptyBatchRequest()
    entries = {str(i): e for i, e in enumerate(entries)}
    for entry in entries.values():
        entry.setdefault("MessageAttributes", {})
        validate_message_attributes(entry["MessageAttributes"])
        entry.setdefault("DelaySeconds", None)
    messages, failed = self.sqs_backend.send_message_batch(queue_name, entries)
    errors = [{
        "Id": e["Id"],
        "SenderFault": e.get("_SenderFault", True),
        "Code": e.get("_Code", "InvalidParameterValue"),
        "Message": e.get("_Message", "Value for parameter DelaySeconds is invalid."),
    } for e in failed]
    successful = []
    for m in messages:
        entry = {"Id": m.user_id, "MessageId": m.id, "MD5OfMessageBody": m.body_md5}
        if m.message_attributes:
            entry["MD5OfMessageAttributes"] = m.attribute_md5
        if queue.fifo_queue:
            entry["SequenceNumber"] = m.sequence_number
        successful.append(entry)
    return ActionResult({"Successful": successful, "Failed": errors})


SQSResponse.send_message_batch = _response_send_message_batch
_queue_delete = Queue.delete_message


def _strict_delete(queue, receipt_handle):
    """SQS: a delete must carry the latest receipt handle; an older one
    "succeeds, but the message might not be deleted". Here it never is."""
    for message in queue._messages:
        if message.had_receipt_handle(receipt_handle) and message.receipt_handle != receipt_handle:
            return
    _queue_delete(queue, receipt_handle)


Queue.delete_message = _strict_delete

if __name__ == "__main__":
    main()
