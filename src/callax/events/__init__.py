"""JAX-native event recording (Maze-style event interfaces) and ``SACEvents``.

See ``docs/events.md``.
"""

from ._recorder import (
    REDUCERS,
    EventInterface,
    EventRecord,
    EventSpec,
    discover,
    elapsed,
    event,
    record,
    recording,
    sequenced,
    timestamp,
)
from ._sac import SACEvents

__all__ = [
    "REDUCERS",
    "EventInterface",
    "EventRecord",
    "EventSpec",
    "SACEvents",
    "discover",
    "elapsed",
    "event",
    "record",
    "recording",
    "sequenced",
    "timestamp",
]
