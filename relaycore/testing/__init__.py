"""``relaycore.testing``: what another project's CI needs to use relaycore as its oracle.

* ``Batch`` — a problem whose values are exact in the dtype under test; ``make_batch`` builds one
  from explicit lengths, ``random_batch`` draws one from a seeded generator, ``batch_from``
  takes a call's own arguments (your engine's tensors), and
  ``relaycore.testing.strategies.batches`` is the Hypothesis strategy (the only part that needs
  Hypothesis).
* ``check`` / ``assert_close`` / ``compare`` — compare any implementation's ``(out, lse)`` with
  the float64 oracle under the error bounds of ``relaycore.bounds``; a failure names the
  request, token, head and dimension, the error and the bound. ``compare`` runs the
  implementation on copies of the batch's arrays and fails it if it writes into them. Rows
  where the analysis gives no bound are held to none and named (``Report.unchecked``).
* ``fewest_requests`` — a failing batch cut down to the requests its failure needs
  (``Batch.requests``), for the examples Hypothesis shrinks.
* ``blocked_steps`` — the steps per key of a kernel whose blocking you know, for a tighter bound
  than the default's (which assumes any blocking); ``groups=`` for parts walked by groups of
  threads whose states are folded before the part's division (FlashInfer's decode).
* ``stored_merges`` — for a cascade that stores each level's output in the input dtype before
  merging (FlashInfer's cascade wrapper): the merges of stored outputs per row (``stored=``);
  with ``merge="running"``, the running folds of stored outputs a key passes (FlashInfer's
  ``merge_states`` on fp16/bf16 outputs, its two-level merge kernels), with
  ``stored_merge="running"``.

Needs NumPy alone (torch only for ``Batch.to_torch`` and for checking torch results).

Example:
    >>> import numpy as np, relaycore
    >>> from relaycore.testing import assert_close, random_batch
    >>> batch = random_batch(np.random.default_rng(0))
    >>> args, kwargs = batch.arguments()
    >>> report = assert_close(relaycore.relay_attention(*args, **kwargs), batch)
"""

from relaycore.testing.batch import CARRIERS, Batch, Oracle, batch_from, make_batch
from relaycore.testing.check import Location, Report, Tolerance, assert_close, bounds_for, check, compare
from relaycore.testing.rounding import DTYPES, round_to, round_to_bfloat16
from relaycore.testing.shrink import fewest_requests
from relaycore.testing.space import BLOCK_SIZES, BatchSpace, random_batch
from relaycore.testing.steps import CHUNK_FROM, MERGES, blocked_steps, stored_merges

__all__ = [
    "BLOCK_SIZES",
    "Batch",
    "BatchSpace",
    "CARRIERS",
    "CHUNK_FROM",
    "DTYPES",
    "Location",
    "MERGES",
    "Oracle",
    "Report",
    "Tolerance",
    "assert_close",
    "batch_from",
    "blocked_steps",
    "bounds_for",
    "check",
    "compare",
    "fewest_requests",
    "make_batch",
    "random_batch",
    "round_to",
    "round_to_bfloat16",
    "stored_merges",
]
