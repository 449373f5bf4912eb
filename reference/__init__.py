"""``relaycore.reference``: the NumPy float64 oracle, in two independent forms.

* ``full_attention`` — each query over its request's concatenated context
  ``[prefix level 0 ; prefix level 1 ; ... ; own tokens]`` with an explicit mask; no split.
* ``relay_attention`` — the relay split: every prefix part as one matrix product over all the
  queries that share it, the own part, merged by ``relaycore.state.merge``
  (``relay_parts`` gives the parts before the merge).
* ``context_statistics`` — per query row, the numbers ``relaycore.bounds`` needs.

All accept anything ``np.asarray`` takes (torch tensors included), validate with
``relaycore.validation.validate``, compute in float64, and never produce NaN: a row that sees no
key is ``(0, -inf)``. Unlike the fast paths they read the values: a non-finite value that a
query attends is refused with a ``ValueError`` naming the argument and the index (``q: expected
finite values, got inf at index (3, 0, 5)``), and so is a score ``softmax_scale * q . k`` that
overflows float64. Needs NumPy alone. Beyond float64 copies of its inputs and outputs, its
memory does not grow with the batch: scores are taken in chunks of query rows of at most
``softmax.SCORE_BYTES`` (64 MiB), so 8 requests of 128 tokens, 32 query heads, over a shared
2048-token prefix take about 1 s and 0.3 GB on two CPU cores.
"""

from relaycore.reference.full import full_attention
from relaycore.reference.relay import relay_attention, relay_parts
from relaycore.reference.statistics import ContextStatistics, context_statistics

__all__ = ["ContextStatistics", "context_statistics", "full_attention", "relay_attention", "relay_parts"]
