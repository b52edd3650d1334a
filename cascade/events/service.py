"""Events in, signals out: the one import for callers that handle events of every kind.

Each job has its own module: storing an event (store.py), a message's delivery timeline
(engagement.py), unsubscribes (unsubscribe.py), application events (ingest.py) and
signalling journeys through the outbox (outbox.py). Finding a journey is a database
look-up (the delivery log for a message, the journey runs for a customer), never a scan
of Temporal, and no transaction is held while Temporal is called.
"""

from cascade.events.engagement import DeliveryEventResult, apply_delivery_event, delivery_by_message_id
from cascade.events.ingest import RecordedEvent, mark_routed, pending_starts, record_app_event
from cascade.events.outbox import EngineUnavailable, SignalResult, mark_run_finished, signal_run
from cascade.events.store import DEFAULT_LEASE, insert_event
from cascade.events.unsubscribe import UnsubscribeResult, unsubscribe_contact
from cascade.journeys.triggers import running_journeys

__all__ = [
    "DEFAULT_LEASE",
    "DeliveryEventResult",
    "EngineUnavailable",
    "RecordedEvent",
    "SignalResult",
    "UnsubscribeResult",
    "apply_delivery_event",
    "delivery_by_message_id",
    "insert_event",
    "mark_routed",
    "mark_run_finished",
    "pending_starts",
    "record_app_event",
    "running_journeys",
    "signal_run",
    "unsubscribe_contact",
]
