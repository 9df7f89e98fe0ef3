"""moto_server, with SQS deletes made safe against a concurrent send.

moto's `Queue.delete_message` rebuilds the queue's message list from a copy without the
queue's lock, while `Queue.add_message` appends under it: a message sent while another is
being deleted can vanish from the queue after SendMessage(Batch) accepted it. SQS never loses
an accepted message. Seen in the day-backlog dispatch test: two messages accepted by
SendMessageBatch (the worker marked them on the queue), never received, and the queue empty.
This runs moto's own server with that delete taking the lock `add_message` takes.
"""

import sys

import moto.sqs.models as sqs
from moto.server import main

_delete = getattr(sqs.Queue, "delete_message", None)

if _delete is not None:

    def delete_message(self, receipt_handle):
        lock = getattr(self, "_messages_lock", None)
        if lock is None:
            return _delete(self, receipt_handle)
        with lock:
            return _delete(self, receipt_handle)

    sqs.Queue.delete_message = delete_message
else:
    print("moto_server.py: moto has no Queue.delete_message; running it unpatched", file=sys.stderr)

if __name__ == "__main__":
    sys.exit(main())
