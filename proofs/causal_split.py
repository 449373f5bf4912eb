r"""Causal masking splits cleanly across prefixes and the request's own tokens.

## Setting

A request's context is its prefixes level by level, $P_1, \dots, P_L$ (lengths
$n_1, \dots, n_L$, any of them 0), then its own $\kappa$ tokens (`kv_len`); its $n_q \le \kappa$
queries (`q_len`) are the last $n_q$ own tokens. Number the context $0, 1, \dots$: the prefixes
fill positions $0 \dots T - 1$ with $T = \sum_l n_l$, own token $t$ sits at $T + t$, and query
$j \in \{0, \dots, n_q - 1\}$ sits at $T + \kappa - n_q + j$. Causal attention over the whole
context lets a query see the positions up to its own.

## Statement

(i) Query $j$ sees *every* prefix token, and own token $t$ exactly when
$t \le \kappa - n_q + j$: the mask of the request part is the causal mask offset by
$\kappa - n_q$ (`kv_len - q_len`), and the prefix parts need no mask at all. (ii) Hence, by the
relay identity, causal attention over the concatenation equals
$\bigoplus_{l=1}^{L} \mathrm{att}(P_l) \oplus \mathrm{att}_{\text{offset causal}}(R)$, and
non-causal attention equals the same with no mask on $R$. (iii) The levels may be merged in
any order: the order is irrelevant mathematically (it fixes only the rounding).

## Proof

(i) A prefix position $p \le T - 1 < T \le T + \kappa - n_q + j$ because
$\kappa \ge n_q$ and $j \ge 0$, so every prefix token is visible. Own token $t$ is visible iff
$T + t \le T + \kappa - n_q + j$, i.e. $t \le \kappa - n_q + j$. (ii) The visible set of query
$j$ is therefore the disjoint union $P_1 \sqcup \dots \sqcup P_L \sqcup R_j$ with
$R_j = \{t : t \le \kappa - n_q + j\}$ (all of $R$ when non-causal); the relay identity turns
attention over a disjoint union into the merge of the parts' states. (iii) The merge is
commutative and associative (the merge monoid), so any order and bracketing of the $L + 1$
states gives the same state. $\blacksquare$

Two consequences the kernels rely on: a query never sees an empty context when $n_q \ge 1$
(own token $0$ satisfies $0 \le \kappa - n_q + j$), so $(0, -\infty)$ arises only from an empty
prefix part or a request with no query; and a prefix part is the same for every query of
every request that shares the prefix, so it is one unmasked matrix product.

## Machine check

(i) exhaustively over all $T \le 7$, $\kappa \le 7$, $n_q \le \kappa$; (ii)
and (iii) at 60 digits over Hypothesis-drawn requests (0 to 3 levels of 0 to 4 tokens, 0 to 5
own tokens, causal or not, several scales), merging the levels in a drawn order.
"""

from __future__ import annotations

import mpmath
from hypothesis import given
from hypothesis import strategies as st

from relaycore.proofs import exact
from relaycore.proofs.draws import checked, requests


def visible_in_concatenation(prefix_len: int, kv_len: int, q_len: int, j: int, causal: bool = True):
    """Context positions query ``j`` sees under the plain causal mask of the concatenation."""
    position = prefix_len + kv_len - q_len + j
    return {p for p in range(prefix_len + kv_len) if not causal or p <= position}


def visible_split(prefix_len: int, kv_len: int, q_len: int, j: int, causal: bool = True):
    """The same set built from the split: all prefix positions, own tokens with the offset mask."""
    own = [t for t in range(kv_len) if not causal or t <= kv_len - q_len + j]
    return set(range(prefix_len)) | {prefix_len + t for t in own}


def full_attention(request: dict) -> list:
    """Per query, the state over the concatenated context with the explicit mask (no split)."""
    keys = [k for ks, _ in request["levels"] for k in ks] + list(request["own"][0])
    values = [v for _, vs in request["levels"] for v in vs] + list(request["own"][1])
    prefix_len = sum(len(ks) for ks, _ in request["levels"])
    kv_len, q_len = len(request["own"][0]), len(request["queries"])
    states = []
    for j, q in enumerate(request["queries"]):
        seen = sorted(visible_in_concatenation(prefix_len, kv_len, q_len, j, request["causal"]))
        scores = [request["scale"] * _dot(q, keys[p]) for p in seen]
        states.append(exact.state(scores, [values[p] for p in seen], request["dim"]))
    return states


def relay_attention(request: dict, level_order=None) -> list:
    """Per query, the merge of each prefix level's unmasked state and the own part's offset-masked
    state, levels taken in ``level_order`` (default: as given), the own part last."""
    order = range(len(request["levels"])) if level_order is None else level_order
    (own_k, own_v), dim = request["own"], request["dim"]
    kv_len, q_len = len(own_k), len(request["queries"])
    states = []
    for j, q in enumerate(request["queries"]):
        parts = []
        for level in order:
            ks, vs = request["levels"][level]
            parts.append(exact.state([request["scale"] * _dot(q, k) for k in ks], vs, dim))
        seen = [t for t in range(kv_len) if not request["causal"] or t <= kv_len - q_len + j]
        parts.append(exact.state([request["scale"] * _dot(q, own_k[t]) for t in seen], [own_v[t] for t in seen], dim))
        states.append(exact.fold([exact.empty(dim)] + parts))
    return states


def _dot(x, y):
    return mpmath.fsum(mpmath.mpf(a) * b for a, b in zip(x, y))


def check_mask_splits():
    """Exhaustive: the concatenation's causal mask is 'all prefix' + own mask offset kv_len - q_len."""
    for prefix_len in range(8):
        for kv_len in range(8):
            for q_len in range(kv_len + 1):
                for j in range(q_len):
                    for causal in (True, False):
                        whole = visible_in_concatenation(prefix_len, kv_len, q_len, j, causal)
                        assert whole == visible_split(prefix_len, kv_len, q_len, j, causal)
                        assert set(range(prefix_len)) <= whole
                        assert prefix_len in whole or kv_len == 0  # own token 0: never an empty context


def check_relay_equals_masked_concatenation():
    """60 digits: relay form (any level order) == attention over the concatenation with its mask."""

    @checked(200)
    @given(requests(), st.randoms(use_true_random=False))
    def run(request, rnd):
        order = list(range(len(request["levels"])))
        rnd.shuffle(order)
        for got, want in zip(relay_attention(request, order), full_attention(request)):
            assert exact.distance(got, want) < exact.AGREE

    run()
