r"""Where the context is cut does not matter: prefix levels and the prefix/request boundary.

## Statement

For a request as in the causal split (levels $P_1, \dots, P_L$, own tokens $R$,
$n_q$ queries that are the last $n_q$ own tokens, $\kappa = |R|$):

1. *Splitting a level.* Replacing a level $P_l$ by two consecutive levels $P_l[0{:}c]$ and
   $P_l[c{:}]$, for any cut $0 \le c \le |P_l|$, leaves every query's state unchanged; so does
   the reverse, fusing two consecutive levels into one.
2. *Moving tokens into the prefix.* Moving the first $t$ own tokens to the end of the last
   prefix level (or into a new level) leaves every state unchanged when they are visible to
   every query: under the causal mask when $t \le \kappa - n_q$ (the tokens before the first
   query; the queries' own tokens stay), without it for any $t \le \kappa$ (for
   $t > \kappa - n_q$ the request is left with fewer own tokens than queries: harmless without
   a mask, but outside what `relaycore.relay_attention` accepts, `q_len <= kv_len`).
3. *Moving tokens out of the prefix.* Moving the last $t$ tokens of the last level to the front
   of $R$ (so $\kappa$ grows by $t$, the queries stay the last $n_q$ own tokens) leaves every
   state unchanged.

All three hold exactly in exact arithmetic; in floating point they change only the rounding.

## Proof

In each case the context, read as a sequence of tokens, is the same sequence, and
each query keeps its position $T + \kappa - n_q + j$ in it (in 2 and 3, $T$ and $\kappa$ change
by opposite amounts), so under the causal mask of the concatenation, and trivially without a
mask, each query sees the same set of tokens. Read through the causal split: for 1 the
prefix tokens are all visible before and after; for 2 the moved tokens
$t' < t \le \kappa - n_q$ satisfy $t' \le \kappa - n_q + j$ for every query $j$, so they were
visible to all queries before the move and are visible as prefix tokens after it; for 3 the
moved tokens become own tokens $0 \dots t - 1$ of a request with $\kappa' = \kappa + t$ and
$n_q$ queries, visible to query $j$ because
$t - 1 < t \le \kappa' - n_q + j$. By the causal split each state is the attention over the
query's visible set, which did not change, so neither did the state. (Equivalently: the relay
identity with the partitions before and after the change, both refining the same set.)
$\blacksquare$

This is why a serving engine may pick the levels as it likes: a system prompt shared by all,
few-shot examples shared by a group, or a request's own long history promoted to a prefix once
a sibling request forks from it.

## Machine check

At 60 digits over Hypothesis-drawn requests: every cut of every level, the
largest and a drawn admissible number of own tokens moved into the prefix, and a drawn number
of prefix tokens moved into the request; each compared with the original request's states.
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from relaycore.proofs import exact
from relaycore.proofs.causal_split import relay_attention
from relaycore.proofs.draws import checked, requests


def _same_states(a: list, b: list):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert exact.distance(x, y) < exact.AGREE


def split_level(request: dict, level: int, cut: int) -> dict:
    """``request`` with level ``level`` cut into ``[0:cut]`` and ``[cut:]``."""
    ks, vs = request["levels"][level]
    levels = list(request["levels"])
    levels[level : level + 1] = [(ks[:cut], vs[:cut]), (ks[cut:], vs[cut:])]
    return dict(request, levels=levels)


def own_to_prefix(request: dict, count: int) -> dict:
    """``request`` with its first ``count`` own tokens appended to its last level (a new level if
    it has none)."""
    (ks, vs), levels = request["own"], list(request["levels"]) or [([], [])]
    last_k, last_v = levels[-1]
    levels[-1] = (list(last_k) + list(ks[:count]), list(last_v) + list(vs[:count]))
    return dict(request, levels=levels, own=(ks[count:], vs[count:]))


def prefix_to_own(request: dict, count: int) -> dict:
    """``request`` with the last ``count`` tokens of its last level moved to the front of its own
    tokens."""
    levels = list(request["levels"])
    last_k, last_v = levels[-1]
    cut = len(last_k) - count
    levels[-1] = (last_k[:cut], last_v[:cut])
    ks, vs = request["own"]
    return dict(request, levels=levels, own=(list(last_k[cut:]) + list(ks), list(last_v[cut:]) + list(vs)))


def check_split_any_level_anywhere():
    """Every cut of every level gives the same states (and the fused original is the reference)."""

    @checked(100)
    @given(requests())
    def run(request):
        want = relay_attention(request)
        for level, (ks, _) in enumerate(request["levels"]):
            for cut in range(len(ks) + 1):
                _same_states(relay_attention(split_level(request, level, cut)), want)

    run()


def check_move_own_tokens_into_prefix():
    """Own tokens visible to every query may become prefix tokens: same states."""

    @checked(150)
    @given(requests(), st.data())
    def run(request, data):
        kv_len, q_len = len(request["own"][0]), len(request["queries"])
        movable = kv_len - q_len if request["causal"] else kv_len
        want = relay_attention(request)
        for count in {movable, data.draw(st.integers(0, movable))}:
            _same_states(relay_attention(own_to_prefix(request, count)), want)

    run()


def check_move_prefix_tokens_into_request():
    """The tail of the last level may become the request's first own tokens: same states."""

    @checked(150)
    @given(requests(), st.data())
    def run(request, data):
        assume(request["levels"])
        count = data.draw(st.integers(0, len(request["levels"][-1][0])))
        _same_states(relay_attention(prefix_to_own(request, count)), relay_attention(request))

    run()
