"""``fewest_requests``: a failing batch cut down to the requests its failure needs.

Hypothesis shrinks a drawn batch draw by draw and can remove requests from the end only
(``relaycore.testing.strategies.batches``), so a shrunk example may keep requests that the
failure does not need before the one it does. This removes them, keeping every value of the
requests left (``Batch.requests``).
"""

from __future__ import annotations

from typing import Callable

from relaycore.testing.batch import Batch


def fewest_requests(batch: Batch, fails: Callable[[Batch], bool]) -> Batch:
    """The batch of the requests of ``batch`` that its failure needs: requests are removed one
    at a time, first to last, each for good where ``fails`` still holds without it, so no
    single request of the result can be removed (``B`` calls of ``fails`` at most, each on a
    batch of fewer requests).

    Args:
        batch: a batch on which ``fails`` holds.
        fails: whether an implementation fails a batch, e.g.
            ``lambda b: not compare(my_kernel, b).passed``.

    Returns:
        ``batch.requests(kept)``, which prints as the call that rebuilds it where ``batch``
        does (``make_batch(...).requests([...])``).

    Raises:
        ValueError: ``fails(batch)`` is false: there is no failure to keep.

    Example:
        >>> from relaycore.testing import fewest_requests, make_batch
        >>> batch = make_batch([0, 0, 2, 1], [3, 1, 4, 2])
        >>> fewest_requests(batch, lambda b: 2 in b.q_lens).q_lens.tolist()
        [2]
    """
    if not fails(batch):
        raise ValueError("fails: expected True for the batch given (the failure to keep), got False")
    kept = list(range(batch.batch_size))
    at = 0
    while at < len(kept):
        fewer = kept[:at] + kept[at + 1:]
        if fails(batch.requests(fewer)):
            kept = fewer
        else:
            at += 1
    return batch.requests(kept)
