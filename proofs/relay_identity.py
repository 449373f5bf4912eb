r"""The relay identity: attention over a concatenation is the merge of the parts' states.

## Statement

Let a query see keys $S = S_1 \sqcup \dots \sqcup S_k$ (disjoint, any of them
possibly empty), with scores $s_j$ and values $v_j$. Write $(o_i, \ell_i)$ for the attention
state over $S_i$ (the state of an empty part is $(0, -\infty)$). Then, unless every part is
empty (the state over $S$ is then $(0, -\infty)$ too), the state over $S$ is

$$
\ell = \log \sum_{i=1}^{k} e^{\ell_i}, \qquad
o = \sum_{i=1}^{k} e^{\ell_i - \ell}\, o_i ,
$$

and for two parts this is the merge relaycore computes, in either of its two forms

$$
o = \sigma(\ell_1 - \ell_2)\, o_1 + \sigma(\ell_2 - \ell_1)\, o_2 ,\qquad
\ell = \operatorname{logaddexp}(\ell_1, \ell_2) = \log\bigl(e^{\ell_1} + e^{\ell_2}\bigr),
$$

with $\sigma(x) = 1/(1 + e^{-x})$, $e^{-\infty} = 0$, $\log 0 = -\infty$, and, where one part is
empty, $\sigma(+\infty) = 1$, $\sigma(-\infty) = 0$ (when both are, the state is $(0, -\infty)$).
Where $\ell_1 > -\infty$, $\operatorname{logaddexp}(\ell_1, \ell_2) = \ell_1 + \log\bigl(1 +
e^{\ell_2 - \ell_1}\bigr)$; that shifted form is undefined at $\ell_1 = -\infty$, an empty first
part. For $k$ parts, merging them two at a time in any order gives the state over $S$.

## Proof

Put $W_i = \sum_{j \in S_i} e^{s_j} = e^{\ell_i}$ (zero for an empty part) and
$W = \sum_{j\in S} e^{s_j} = \sum_i W_i$, because the parts are disjoint and cover $S$. Then
$\ell = \log W = \log \sum_i e^{\ell_i}$. For the output,

$$
o = \frac{1}{W}\sum_{j \in S} e^{s_j} v_j
  = \frac{1}{W}\sum_{i=1}^{k} \sum_{j \in S_i} e^{s_j} v_j
  = \frac{1}{W}\sum_{i=1}^{k} W_i\, o_i
  = \sum_{i=1}^{k} e^{\ell_i - \ell}\, o_i ,
$$

since $\sum_{j \in S_i} e^{s_j} v_j = W_i o_i$ by the definition of $o_i$ (both sides are 0
for an empty part). For two parts, $e^{\ell_1 - \ell} = W_1/(W_1 + W_2) =
1/(1 + e^{\ell_2 - \ell_1}) = \sigma(\ell_1 - \ell_2)$, which is the sigmoid form, and
$\log(W_1 + W_2) = \operatorname{logaddexp}(\ell_1, \ell_2)$; where $W_1 > 0$, dividing by
$W_1$ gives the shifted form. An empty part has $W_i = 0$: it contributes nothing, which is
$\sigma(-\infty) = 0$ and $\log(0 + W_2) = \ell_2$.

For $k$ parts, induct on $k$: merging two parts $S_a$, $S_b$ gives, by the case $k = 2$, the
state over $S_a \sqcup S_b$; the partition now has $k - 1$ parts, and the induction hypothesis
finishes. Every order of pairwise merges is such a sequence of steps, so all orders agree. $\blacksquare$

## What it buys

Split a request's context into the shared prefix $P$ and its own tokens
$R$: the state over $P$ is the same computation for every request that shares $P$, so it can
run as *one* matrix product over all their queries, reading the prefix's keys and values once.

## Machine check

Symbolically (sympy, weights $w_j = e^{s_j}$ as positive symbols) the merge
of two parts of every size up to 3 + 3 keys equals the state over their union, in both forms;
numerically (60 digits) over Hypothesis-drawn scores up to $\pm 50$, values, and partitions
into up to five parts, some empty, merging left to right, right to left, and as a balanced
tree.
"""

from __future__ import annotations

import itertools

import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from relaycore.proofs import exact
from relaycore.proofs.draws import checked, keys, labels
from relaycore.proofs.merge_monoid import vanishes


def _symbolic_state(weights, values):
    total = sum(weights)
    return sum(w * v for w, v in zip(weights, values)) / total, sp.log(total)


def _sigmoid(x):
    return 1 / (1 + sp.exp(-x))


def check_two_parts_symbolic():
    """Both forms of the merge of parts of sizes (a, b), 1 <= a, b <= 3, equal the union's state."""
    for a, b in itertools.product(range(1, 4), repeat=2):
        w = sp.symbols(f"w1:{a + b + 1}", positive=True)
        v = sp.symbols(f"v1:{a + b + 1}", real=True)
        o1, l1 = _symbolic_state(w[:a], v[:a])
        o2, l2 = _symbolic_state(w[a:], v[a:])
        o, l = _symbolic_state(w, v)
        sigmoid_out = _sigmoid(l1 - l2) * o1 + _sigmoid(l2 - l1) * o2
        lse = sp.log(sp.exp(l1) + sp.exp(l2))
        logaddexp_out = (sp.exp(l1) * o1 + sp.exp(l2) * o2) / sp.exp(lse)
        assert vanishes(sigmoid_out - o), (a, b, "sigmoid form")
        assert vanishes(logaddexp_out - o), (a, b, "logaddexp form")
        assert vanishes(sp.exp(lse) - sp.exp(l)), (a, b, "lse")
        assert vanishes(l1 + sp.log(1 + sp.exp(l2 - l1)) - lse), (a, b, "lse shifted")  # l1 finite here


def check_any_number_of_parts():
    """60 digits: any partition, merged in three orders and both forms, gives the union's state."""

    @checked(200)
    @given(keys(min_keys=1, max_keys=9), st.data())
    def run(problem, data):
        scores, values, dim = problem
        k, part = data.draw(labels(len(scores), max_parts=5))
        whole = exact.attention(scores, values)
        states = []
        for i in range(k):
            idx = [j for j in range(len(scores)) if part[j] == i]
            states.append(exact.state([scores[j] for j in idx], [values[j] for j in idx], dim))
        for merge in (exact.merge_sigmoid, exact.merge_logaddexp):
            for order in (states, states[::-1]):
                assert exact.distance(exact.fold(order, merge), whole) < exact.AGREE
            assert exact.distance(_tree(states, merge), whole) < exact.AGREE

    run()


def _tree(states, merge):
    if len(states) == 1:
        return states[0]
    half = len(states) // 2
    return merge(_tree(states[:half], merge), _tree(states[half:], merge))
