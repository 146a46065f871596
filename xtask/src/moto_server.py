"""moto's server with SQS queue operations made atomic.

moto 5.2.5 serves requests on threads but its SQS model takes no locks:
a receive checks a message's visibility and marks it received in two
steps, so two concurrent receives can return the same message (both with
ApproximateReceiveCount 1) and a FIFO group can go to two receives at once;
a delete rebuilds the message list, so a message sent meanwhile can vanish.
Real SQS does none of this. This launcher runs each operation on a queue
under that queue's lock (never across queues), keeps long-poll waits
outside the lock, then starts moto's own server unchanged.
"""
import functools
import threading
import time

from moto.server import main
from moto.sqs.models import SQSBackend

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

if __name__ == "__main__":
    main()
