"""torch's CPU thread count is process-global: library code that wants its own borrows it here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with `threads` torch CPU threads (0: leave them), then restore the caller's setting."""
    import torch

    before = torch.get_num_threads()
    if threads and threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads and threads > 0:
            torch.set_num_threads(before)
