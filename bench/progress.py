"""A tqdm bar per row (silent when stderr is not a terminal, e.g. in CI or a GPU job log)."""

from __future__ import annotations

from contextlib import contextmanager

from tqdm.auto import tqdm


@contextmanager
def request_bar(total: int, desc: str):
    bar = tqdm(total=total, desc=desc, unit="req", leave=False, disable=None)
    try:
        yield lambda _record: bar.update(1)
    finally:
        bar.close()
