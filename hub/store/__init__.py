"""The run store: runs, their events, sessions and the reply outbox, in SQLite.

The rooms, each on the ones before it (no module imports a later one):

- :mod:`~hub.store.records`: what is kept (:class:`Run`, :class:`Delivery`, the
  :data:`EventRow` every event is passed as);
- :mod:`~hub.store.sql`: the schema, its migrations and every statement, as
  ``fn(conn, *args)`` operations (the ``op_*`` ones are what the hub posts);
- :mod:`~hub.store.folding`: one transaction of the writer, the hot path's writes
  folded into few statements; beside it :mod:`~hub.store.readers`: lists and searches
  in reader processes of their own;
- :mod:`~hub.store.engine`: the writer thread and group commit, checkpoints, the
  readers, and writes held while the disk refuses them (:class:`StoreUnavailable`);
- :mod:`~hub.store.store`: :class:`Store`, the engine with the hub's reads and writes.
"""

from hub.store.engine import StoreClosed, StoreUnavailable
from hub.store.readers import ReadFailed
from hub.store.records import (
    Delivery,
    EventRow,
    Run,
    RunPage,
    SessionRow,
    StoreActivity,
    new_run_id,
)
from hub.store.sql import (
    MIGRATIONS,
    SCHEMA,
    op_insert_run,
    op_learn_targets,
    op_record,
    op_set_delivery_payload,
    op_set_executor,
    op_set_origin,
)
from hub.store.store import Store

__all__ = [
    "MIGRATIONS",
    "SCHEMA",
    "Delivery",
    "EventRow",
    "ReadFailed",
    "Run",
    "RunPage",
    "SessionRow",
    "Store",
    "StoreActivity",
    "StoreClosed",
    "StoreUnavailable",
    "new_run_id",
    "op_insert_run",
    "op_learn_targets",
    "op_record",
    "op_set_delivery_payload",
    "op_set_executor",
    "op_set_origin",
]
