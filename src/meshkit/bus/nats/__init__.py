"""The bus on NATS JetStream: for services spread over more than one machine.

Layout on the server, for a bus with ``prefix="meshkit"``:

- stream ``MESHKIT``, subjects ``meshkit.msg.>``: every message; topic
  ``order.created`` is subject ``meshkit.msg.order.created``. Its duplicate
  window is the embedded broker's (120 s, JetStream's default), or the
  stream's ``max_age`` if that is shorter (JetStream's window may not outlast
  it); a given message id is sent as ``Nats-Msg-Id: {topic}/{id}``, because
  JetStream remembers ids per stream and the bus promises them per topic.
- one durable pull consumer per (topic, group), named ``{group}_{hash}``
  (durable names cannot hold the topic's dots; the hash of the topic has a
  fixed length, so the name cannot be read two ways). It starts at the
  earliest retained message, acks explicitly, and has the group's
  ``ack_wait`` and ``max_deliveries``; joining again with another
  ``Redelivery`` updates it (the last member to join sets the policy; the
  waits between deliveries are each member's own, so members of a group
  should share one). A group holds at most 1,000 deliveries unanswered at
  once, those waiting out a backoff included (JetStream's MaxAckPending).
  A consumer deleted on the server makes fetches raise ``GroupLostError``,
  on which a subscription joins again, creating it anew.
- stream ``MESHKIT_DLQ``, subjects ``meshkit.dlq.{group}.{topic}``: dead
  letters, one message each; a letter's id is its sequence there.

Headers: ``meshkit-id``, ``meshkit-key`` and the publisher's own. A value
NATS would alter (nats-py strips surrounding spaces and turns line breaks
into spaces), an empty one, or one that starts with ``"`` travels as a JSON
string, so every value arrives exactly as it was published. A message must
leave 1 KiB of the server's ``max_payload`` (1 MiB by default) free, so that
it fits as a dead letter with the bus's own headers; the error it is buried
with is cut to what is left.

Redelivery: see ``JetStreamConsumer.fail``. Publishes, acks and NAKs are all
confirmed by the server, and sent in batches over one connection, each batch
then awaited together (``Inbox``). Needs the ``nats`` extra (``pip install
'meshkit[nats]'``, which brings nats-py); its errors are translated here:
an unreachable or failing server is ``EnvironmentFaultError`` naming the URL
(its password hidden).

Modules: ``_wire`` (headers, subjects, sizes, the server's answers: no I/O),
``_connection`` (connecting, the streams, requests in flight, errors),
``_consumer`` (a member of a group), ``_letters`` (dead letters) and
``_bus`` (``JetStreamBus``).
"""

from meshkit.bus.nats._bus import JetStreamBus

__all__ = ["JetStreamBus"]
