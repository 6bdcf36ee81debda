"""Which replica this process is: the id Serve gives it, or a stand-in outside Serve (unit tests, in-process bench)."""

from __future__ import annotations

import os

from ray import serve


def replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica
        return f"local-{os.getpid()}"
