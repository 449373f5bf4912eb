"""Hypothesis strategies for relay-attention batches (the one module of the kit that needs
Hypothesis)."""

from __future__ import annotations

from typing import Any, Sequence

try:
    from hypothesis import strategies as st
except ImportError as exc:
    raise ImportError(
        'relaycore.testing.strategies needs Hypothesis, which relaycore installs only with its testing extra: '
        'pip install "/path/to/relaycore[testing]" (a clone) or "relaycore[testing] @ git+URL" (relaycore is not '
        'on PyPI), or pip install "hypothesis>=6.100"', name="hypothesis") from exc

from relaycore.testing.batch import Batch, make_batch
from relaycore.testing.space import BatchSpace, _batch_space


class _DrawPick:
    def __init__(self, draw) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(list(options)))


@st.composite
def _batches(draw, space: BatchSpace) -> Batch:
    return make_batch(**space.recipe(_DrawPick(draw)))


def batches(**space: Any) -> st.SearchStrategy[Batch]:
    """A strategy of valid batches: ragged or paged KV (block sizes 1 and around powers of two),
    MHA/GQA/MQA, zero to three prefix levels with several prefixes each and ids -1, lengths 0
    and 1 often, causal or not, values offset by 8 in one case in three.

    Hypothesis shrinks a failing batch draw by draw, each towards its simplest value (lengths
    0, fewer levels, the first of each field's choices), but it cannot remove a request that
    comes before the one a failure needs: the number of requests is drawn first and each request's
    lengths and ids are drawn field by field after it (all ``q_len``, then all ``kv_len``, then
    each level's ids), the order ``random_batch``'s seeds are bound to, so a request can only be
    removed from the end. A shrunk example may thus keep requests with ``q_len`` 0 before the
    one that fails (``q_lens=[0, 0, 0, 1]``). ``relaycore.testing.fewest_requests`` removes
    them afterwards, keeping the values of the requests left.

    Args:
        **space: ``relaycore.testing.BatchSpace`` fields: ``max_batch``, ``max_q_len``,
            ``max_kv_len``, ``max_levels``, ``max_prefixes``, ``max_prefix_len``, ``head_dims``,
            ``dtypes`` (float32 alone unless given: name every format the kernel takes),
            ``layouts``, ``block_sizes``, ``score_magnitudes``, ``value_offsets``,
            ``value_scales``, ... (small
            shapes for the CPU, large ones on a GPU); ``min_q_len``, ``min_prefix_len`` and
            ``unread_levels=False`` leave out edge cases a kernel refuses by design.

    Returns:
        The strategy, its ``BatchSpace`` checked at once.

    Raises:
        TypeError: a name in ``space`` that is no ``BatchSpace`` field (the valid ones listed),
            or a field of the wrong type.
        ValueError: a field out of its domain.

    Example:
        >>> from hypothesis import given
        >>> from relaycore.testing import compare
        >>> from relaycore.testing.strategies import batches
        >>> @given(batches(dtypes=("float16", "bfloat16"), max_kv_len=64))
        ... def test_my_kernel(batch):
        ...     report = compare(my_kernel, batch, device="cuda")  # its result and its inputs
        ...     assert report.passed, str(report)  # the readable report, not pytest's cut repr
    """
    return _batches(_batch_space(space))
