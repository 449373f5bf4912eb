r"""The floating-point error bound of `relaycore/bounds.py`, proved and checked.

## Precision model

Inputs $q, k, v$ are exact in their format (fp16, bf16 or fp32: the
oracle reads the same values). Scores are dot products accumulated in fp32, scaled, and
exponentiated after subtracting a running maximum; the unnormalised weights $p_j$ are rounded
once to the input format before the $P V$ product, whose sums run in fp32, while the
normaliser $\sum_j p_j$ sums the fp32 weights. A row may be processed in blocks (online
softmax: when the running maximum grows, the accumulators are rescaled by
$e^{m_{old} - m_{new}}$), and partial states may be merged (the relay form). The output is
divided by the normaliser in fp32 and rounded once to the input format. $u_{acc}$ is twice
fp32's unit roundoff (so that an accumulator that truncates is covered), $u_{exp}$ bounds the
relative error of the hardware exponential (and the absolute error of its logarithm), $u_p = u_{out}$ is the input format's unit
roundoff, $\tau$ bounds the absolute error of rounding a weight in $[0, 1]$ near underflow, and
$\tau_{acc}$ that of any rounding in the accumulation format below its normal range (Lemma 6).

Every lemma below also rests on these assumptions about the arithmetic:

* *Elementwise operations round to nearest* (relative error at most $u_{acc}/2$): the scale's
  product, the subtractions of maxima, the rescales' products, the merges' weights, quotients
  and products, the lse's additions. Only accumulations (the sums) may truncate. The quotients
  are the exception where a kernel's division is documented within 2 ulp, and its count of steps
  then prices that: the oracle's (NumPy, float64) and the PyTorch backend's (IEEE division, in
  fp32 or float64) round to nearest; the Triton kernels' fp32 `/` (PTX `div.full.f32`) is within
  2 ulp, one step more per token ("Counting the Triton kernels' steps"); FlashInfer's
  (`-use_fast_math`, `__fdividef`, `rcp.approx`) are Lemmas 8, 9 and 13's.
* *The exponential errs relatively by at most $u_{exp}$ at every argument the kernel passes
  it.* The Triton kernels meet it: they fold $\log_2 e$ into the softmax scale once (the
  host's float64 $c \log_2 e$, rounded to fp32: item 1 of Lemma 2 charges it as the scale's
  rounding) and take `exp2` (`ex2.approx.f32`, within 2 ulp of the correctly rounded result at
  every argument) of differences of base-2 numbers, each difference rounded once. A
  difference $x_2 = x / \ln 2$ rounded to nearest errs by at most $\tfrac{u_{acc}}{2}|x_2|$,
  which is $\tfrac{u_{acc}}{2}|x|$ in natural units: exactly the natural-log form's rounding of
  its argument $x$, which item 4 budgets. What the step term does *not* cover is an
  exponential taken from a natural-log argument as $2^{\mathrm{fl}(x\,\mathrm{fl}(\log_2 e))}$
  (Triton's `tl.exp` on fp32, CUDA's `__expf` and `-use_fast_math`): the rounded constant and
  product add a relative error up to about $0.6\,u_{acc}|x|$ on top of its argument's own
  rounding, growing with $|x|$ past any fixed $u_{exp}$
  (`check_exp_from_a_natural_argument_is_not_covered`). A kernel built that way needs its own
  bound. PyTorch's `torch.exp` is an accurate `expf` (SLEEF's on the CPU; on CUDA the math
  library's, documented within 2 ulp), within $u_{exp}$.
* *Merges follow one of three orders of operations*, or are FlashInfer's in-block fold of
  unnormalised states: pairwise as `relaycore.state.merge` (Lemma 3), all at once as the Triton merge kernel (Lemma 4), or a running fold that rescales
  its sums whenever its maximum grows, as FlashInfer's `merge_states` (Lemma 9, which also
  prices divisions within 2 ulp, CUDA's `__fdividef`). FlashInfer's decode folds its groups'
  unnormalised states within a block (`sync_state`) before any division or lse: Lemma 11 shows
  that fold to be a chain of Lemma 2's rescales, so such a chunk is a part with a count of its
  own (Lemma 11's $\nu_{chunk}$: its iterations plus the groups that hold a key, less one;
  `blocked_steps(groups=...)`); its split-KV decode cuts a request's whole KV
  into chunks from its first key, across the prefixes' ends, and Lemma 12 counts those chunks
  (`blocked_steps(chunk_from="request")`). FlashInfer from commit `d7f2c64` on (an IEEE $-\infty$
  start, clamped exponents, `normalize` by `__fdividef(1, d)` and a product) is Lemma 13's, at
  the same counts and with no condition on the scores. Two more pairwise orders are covered at Lemma
  3's count, given an assumption on `sigmoid` and `logaddexp` ("Lemma 3, other pairwise
  orders"): the sigmoid form $\sigma(\ell_a - \ell_b)o_a + \sigma(\ell_b - \ell_a)o_b$ with the
  lse from `logaddexp`, and the logaddexp form $e^{\ell_a - L}o_a + e^{\ell_b - L}o_b$,
  $L = \mathrm{logaddexp}(\ell_a, \ell_b)$, both guarded where both states are empty; Lemma 5's
  no-overflow conditions and Lemma 8's stored reads are not proved for them. Another order is
  not covered, at any count of steps. A pairwise merge may read its incoming outputs
  rounded to the input format, as cascade kernels that store each level's output do: Lemma 8
  prices that (`stored` in `relaycore.bounds`); so may the running folds of Lemma 9, in a tree
  of them (FlashInfer's two-level merge kernels): Lemma 10 (`stored_merge="running"`).
* *Subnormals are kept or flushed to zero*, results and operands alike, from the weights on
  (Lemma 6 bounds what it costs in the $P V$ step and after it). The scores are assumed free of
  them: a subnormal $q_d$, $k_{jd}$ or product $q_d k_{jd}$, flushed or rounded, moves a score
  by an absolute amount that no term of $\rho$ is proportional to. For fp16 inputs this is no
  assumption (Lemma 7: their scores never come near fp32's subnormals); for bf16 and fp32 inputs
  it is one, met unless $|q_d k_{jd}|$ falls below about $2^{-126}$.

And on the sizes: *no computed value overflows.* Lemma 5 gives conditions under which none
does; `out_bound` refuses (`NoBound`) a row that fails them.

## Notation

One query row sees $N \ge 1$ keys with exact scores $s_j = c \sum_d q_d k_{jd}$
($c$ the softmax scale). Put $A = \max_j c \sum_d |q_d k_{jd}|$ (so $|s_j| \le A$),
$V_d = \max_j |v_{jd}|$, $\gamma_n = n u_{acc} / (1 - n u_{acc})$, and let the exact result be
$o_d = \sum_j w_j v_{jd} / \sum_j w_j$, $\ell = \log \sum_j e^{s_j}$, with
$w_j = e^{s_j - m}$ for any shift $m$ (it cancels). $A$ is not $\max_j |s_j|$: the dot
product's rounding scales with the sum of the absolute products, which may be far larger than
$|s_j|$ when they cancel. $Z$ is a normaliser (a sum of weights), $\nu$ the number of steps a
key passes (Lemma 2, item 4; `steps` in `relaycore.bounds`), $K'$ the number of parts or
states that hold a key of the row.

## Lemma 1: perturbed weights

*If the computed output is*

$$
\hat o_d = \frac{\sum_j (a_j + t_j)\, v_{jd}}{\sum_j (b_j + t'_j)},\qquad
a_j = w_j e^{\alpha_j},\; b_j = w_j e^{\beta_j},\; |\alpha_j|, |\beta_j| \le \rho,\;
|t_j|, |t'_j| \le \tau,
$$

*with a shift $m$ for which $Z = \sum_j b_j \ge e^{-\rho}$, and $\varepsilon = N \tau e^{\rho}
< 1$, then*

$$
|\hat o_d - o_d| \le \frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}\, V_d .
$$

*Proof.* Let $W = \sum_j w_j$ and $Z' = Z + \sum_j t'_j$, so $|Z' - Z| \le N\tau \le
\varepsilon Z$. Since $e^{-\rho} W \le Z \le e^{\rho} W$, each $a_j / Z$ lies in
$[e^{-2\rho}, e^{2\rho}]\, w_j / W$, hence $a_j / Z'$ lies within
$\bigl(e^{2\rho}/(1-\varepsilon) - 1\bigr) w_j / W$ of $w_j / W$. Then

$$
|\hat o_d - o_d| \le \sum_j \Bigl|\frac{a_j}{Z'} - \frac{w_j}{W}\Bigr| V_d
+ \frac{\sum_j |t_j|}{Z'} V_d
\le \Bigl(\frac{e^{2\rho}}{1 - \varepsilon} - 1\Bigr) V_d + \frac{N \tau}{(1-\varepsilon) e^{-\rho}} V_d ,
$$

which is the claim, because $\sum_j w_j / W = 1$. $\blacksquare$

The bound is attained: one key with $\alpha = \rho$, $\beta = -\rho$ gives
$\hat o = e^{2\rho} v$. Without the underflow terms it is $(e^{2\rho} - 1) V_d \approx 2\rho V_d$: relative
errors of the *weights* become an absolute error of the output on the scale of the values,
not of the output (which may be near 0 through cancellation).

The proof uses the $t$-terms only through $\sum_j |t_j| \le \varepsilon Z$ and
$\sum_j |t'_j| \le \varepsilon Z$; $|t_j|, |t'_j| \le \tau$ with $Z \ge e^{-\rho}$ is one way to
have them. Lemmas 3 and 4 use the sums: a state's $t$-terms reach a merge's result multiplied by
a factor slightly above 1, and the merged normaliser's margin over $e^{-\rho}$ absorbs it.

## Lemma 2: one part computed in low precision has that form

The weight of key $j$, in the units of the final running maximum, is perturbed by:

1. *the score*: the fp32 dot product errs by at most $\gamma_D \cdot c\sum_d|q_d k_{jd}|$, the
   scale's rounding and the product by $u_{acc} |s_j|$, the subtraction of the running
   maximum by $u_{acc} |\hat s_j - m|/2 \le u_{acc} A$: together at most $\gamma_{D+6} A$ in
   the exponent (which leaves about $4u_{acc}A$ for second-order terms and for the base-2
   form's scale, $c \log_2 e$ computed in float64 and rounded once to fp32: within
   $\tfrac{u_{acc}}{2}(1 + 2^{-27})$ of exact). The maximum itself is a shift common to all keys and cancels. A kernel whose
   head axis is wider than $D$ (the Triton tiles' power of two) sums exact zeros beside the
   $D$ products: a zero addend leaves a rounded addition exact (up to the sign of a zero), and
   a fused one aligns to its largest addend, which a zero is not, so the model drops it
   (`fused_sum`; an assumption about the hardware, as the model is): the bound keeps $D$.
2. *the weight's rounding* to the input format (numerator only): $|\log(\hat p/p)| \le
   \log(1 + u_p) \le u_p$ for a normal result (round to nearest), else an absolute error
   $\le \tau$ (the $t_j$; the normaliser's own fp32 underflow is the $t'_j$).
3. *the sums*: an $N$-term fp32 sum in any order multiplies each term by $\prod (1 +
   \delta)^{\pm 1}$ over at most $N$ roundings, a factor within $e^{\pm \gamma_N}$.
   (fp16 and bf16 products $\hat p_j v_{jd}$ are exact in fp32 unless they underflow; for fp32
   inputs, and where the weights are not rounded at all, as in the PyTorch backend, the
   product's fp32 rounding, $\tfrac{u_{acc}}{2} \le u_p$, takes the slot of item 2. A product
   or any other rounding of the accumulation format that underflows is Lemma 6's.)
4. *steps*: the key's own exponential, every rescale of the accumulators that holds it, and
   every merge (next lemma) it passes. One exponential of an argument $x$ with
   $|x| \le 2(A + \log N + 1)$, the rounding of $x$, and up to three products and sums
   perturb the weight by at most $u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)$.
5. *the output*: $\mathrm{fl}(\mathrm{acc}/l)$ ($l$ the normaliser) then rounding to the input format is a
   relative error at most $u_o = (1 + u_{acc})(1 + u_{out}) - 1$, plus, where the result
   underflows (an fp16 output below $2^{-14}$ is subnormal), an absolute error of at most
   $\tau$ in each of the two roundings.

Items 1-4 perturb numerator and normaliser weights by $e^{\pm\rho}$ with

$$
\rho = \gamma_{D+6}\, A + u_p + \gamma_N + \nu\,\bigl(u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)\bigr),
$$

$\nu$ the number of steps a key passes; the key that attains the final maximum has weight
$e^{0} = 1$ before its perturbation, so $Z \ge e^{-\rho}$. Lemma 1, item 5 and Lemma 6 (the
roundings of the accumulation format that underflow, with
$\varepsilon_{acc} = N\tau_{acc}e^{\rho}$) give `out_bound`:

$$
|\hat o_d - o_d| \le \Bigl(\frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}\, V_d
+ 5\varepsilon_{acc}\Bigr)(1 + u_o) + u_o\, |o_d| + 2\tau .
$$

*Room left in $\rho$.* Two parts of $\rho$ go unused on the normaliser side. $u_p$ is the
numerator's alone (the normaliser sums the fp32 weights). And the key's own exponential is a
step of its own in every count $\nu$, but it uses only the exponential's error, a factor within
$e^{\pm u'_{exp}}$, $u'_{exp} = -\log(1 - u_{exp})$; the rounding of its argument is item 1's and
its products and sums are items 2-3's. So
$\sigma_0 = 3u_{acc} + u_{acc}(A + \log N + 1) - (u'_{exp} - u_{exp}) \ge 4u_{acc} - 2^{-40}$ of
that step is unused on both sides. The lse section and Lemma 4's underflow draw on it.

*Accumulation model.* Items 1 and 3 need only this of an fp32 accumulation: each term of the
computed sum is the exact term times a factor within $e^{\pm\gamma_n}$, $n$ the roundings the
item allows it ($D$ for a dot product, $N$ for a sum over keys). A chain of additions, each
rounded to nearest or truncated ($|\delta| \le u_{acc}$), gives it with $n$ the additions the term
passes, since $-\log(1 - u_{acc}) \le u_{acc}/(1 - n u_{acc})$. NVIDIA's matrix units instead add
$k$ exact products and the accumulator in one operation (fp16/bf16 products, fp32 accumulation):
the addends are aligned to the one of largest exponent $e$ ($2^e \le |x_{max}| < 2^{e+1}$), the
bits of each below a fixed width of $24 + g$ bits at that exponent are dropped ($g \ge 0$), and
the kept sum $\tilde s$ is normalised to 24 bits by truncation. Fasi, Higham, Mikaitis and
Pranesh measured this on V100, T4 and A100 (*Numerical behavior of NVIDIA tensor cores*, PeerJ
Comput. Sci. 7:e330, 2021). Such an addition of $r \ge 2$ non-zero addends errs by less than
$(r - 1)\,u_{acc} \sum_i |x_i|$, the bound of a chain of $r - 1$ truncated additions: each of the
$r - 1$ addends other than the largest loses less than $2^{e - 23 - g}$ and the normalisation
less than $2^{e_s - 23}$ ($2^{e_s} \le |\tilde s| < 2^{e_s + 1}$), while
$\sum_i |x_i| \ge \max(2^{e}, 2^{e_s})$. For $g \ge 1$ and $r \ge 3$ that is below
$\bigl(\tfrac{r-1}{2} + 1\bigr)u_{acc}\sum_i|x_i|$. For $g = 0$ the normalisation loses nothing
unless $e_s > e$, and then the two losses together stay below
$\bigl((r - 2)2^{e - e_s} + 1\bigr)u_{acc}\sum_i|x_i|$. For $r = 2$, either the two truncations act as one
truncation of the exact sum, or they err in opposite directions. In backward form, an addition
whose error is below $c\sum_i|x_i|$ is exact on the addends $x_i(1 + \theta_i)$ with
$\theta_i = \mathrm{sign}(x_i)(\hat s - s)/\sum_i|x_i|$, $|\theta_i| < c$. The accumulator is one
addend, so a term carries one such factor from its own operation and one from each later one.
The $r_b - 1$ of those operations add up to at most the number of terms of the sum: each later
operation's $r_b - 1$ counts its new products. That is within $e^{\pm\gamma_n}$, $n \le D$ or
$n \le N$, as items 1 and 3 take it. This is an assumption about the hardware, resting on those
measurements and not on a specification: NVIDIA does not document how its matrix units add. We
assume every matrix unit relaycore runs on (sm_90's `wgmma` included) aligns, drops bits and
normalises no worse than that. `check_fused_accumulation` checks the inequality for the model
above, not the hardware. The normaliser's sums (`tl.sum`, NumPy, PyTorch) are plain fp32
additions.

## Lemma 3: a merge keeps the form, two steps further

Let two states over disjoint key sets $S_a, S_b$ be of the Lemma-1 form, with shifts $m_a, m_b$,
normalisers $\hat Z_a, \hat Z_b$, perturbations within $\rho'$ and outputs $\hat o_a$:
$\mathrm{fl}(\mathrm{acc}_a / \hat Z_a)$ for a part (Lemma 2), or a merge's result. Their lses
are $\hat\ell_a = \mathrm{fl}(m_a + \mathrm{fl}(\widehat{\log}\,\hat Z_a))$, with
$\widehat{\log}$ the hardware's logarithm. Here $1 \le \hat Z_a$, because the weight at a running
maximum is $e^{0} = 1$ exactly and a sum of non-negative terms, rounded to nearest or truncated,
is not below its largest term. Also $\log \hat Z_a \le \log N + \rho'$, because the computed
weights are exponentials of non-positive numbers, at most $1 + u_{exp}$, and the factors that
rescales and sums put on them lie within $\rho'$. `relaycore.state.merge` computes
$M = \max(\hat\ell_a, \hat\ell_b)$, $w_a = \widehat{\exp}(\mathrm{fl}(\hat\ell_a - M))$,
$\hat T = \mathrm{fl}(w_a + w_b)$, $\hat c_a = \mathrm{fl}(w_a / \hat T)$ (and so for $b$),
$\hat o = \mathrm{fl}(\mathrm{fl}(\hat c_a \hat o_a) + \mathrm{fl}(\hat c_b \hat o_b))$ and
$\hat\ell = \mathrm{fl}(M + \mathrm{fl}(\widehat{\log}\,\hat T))$. To first order:

(a) *The incoming lse.* $e^{\hat\ell_a} = e^{m_a} \hat Z_a e^{\eta_a}$ with
$|\eta_a| \le u_{exp} + \tfrac{u_{acc}}{2}(\log \hat Z_a + |\hat\ell_a|)$. These are the
logarithm's own error, the rounding of its result and the rounding of the addition.

(b) *The weight.* $w_a = e^{\hat\ell_a - M} e^{\theta_a}$ with
$|\theta_a| \le u_{exp} + \tfrac{u_{acc}}{2}|\hat\ell_a - M|$ ($\theta = 0$ on the side at $M$).

(c) *The roundings after the weights.* On the numerator there are four: the part's own
division $\mathrm{fl}(\mathrm{acc}_a / \hat Z_a)$ (none for a merged state), the coefficient's
division, its product ($u_{acc}/2$ each) and the final sum ($u_{acc}$, since it may truncate).
Together they make a factor $1 + \delta_a$, $|\log(1 + \delta_a)| \le \tfrac52 u_{acc}$. On the
normaliser there is one: $\hat T$'s sum, a factor $1 + \delta_T$ within $e^{\pm u_{acc}}$.

Write $\mathrm{acc}_a = \sum_{j \in S_a} (a_j + t_j) v_j$ and
$\hat Z_a = \sum_{j \in S_a} (b_j + t'_j)$. Since $\hat c_x \hat o_x = w_x \hat o_x (1 + \cdot)/\hat T$,
the $\hat Z_x$ cancels:

$$
\hat o = \frac{\sum_{x \in \{a, b\}} e^{m_x - M} e^{\eta_x + \theta_x} (1 + \delta_x)\, \mathrm{acc}_x}{\hat T},
\qquad
\hat T = \sum_{x \in \{a, b\}} e^{m_x - M} e^{\eta_x + \theta_x} (1 + \delta_T)\, \hat Z_x .
$$

This is the Lemma-1 form over $S_a \sqcup S_b$ with shift $M$ and normaliser $\hat T$. The
numerator weights are perturbed by $\eta_x + \theta_x + \log(1 + \delta_x)$ more, and the
normaliser weights by $\eta_x + \theta_x + \log(1 + \delta_T)$. The merged state is again of the
kind this lemma takes, with $\hat Z = \hat T \in [1, 2(1 + u_{exp})(1 + u_{acc})]$ and
$\hat\ell = \mathrm{fl}(M + \mathrm{fl}(\widehat{\log}\,\hat T))$, so a chain of merges repeats
(a)-(c). The $t$-terms come out multiplied by $e^{m_x - M} e^{\eta_x + \theta_x}(1 + \cdot)$.
That factor is at most $e^{|\theta_x|}(1 + \cdot)$, because
$e^{m_x - M} e^{\eta_x} = e^{\hat\ell_x - M} / \hat Z_x \le 1$. Lemma 1 takes them through its
sums. They reach at most $N\tau e^{\chi}$, $\chi$ the sum of the growths (below) of the
merges they passed, so $\chi \le \rho - u_{exp}$. The new normaliser without its $t'$ is at
least $1 - N 2^{-126} e^{\rho}$, since the $t'$ are fp32 underflows. So $\sum_j |t_j| \le
\varepsilon Z$ holds. A weight that underflows is handled as in Lemma 4. The growth is
at most

$$
|\eta_a| + |\theta_a| + \tfrac52 u_{acc} \le 2u_{exp} + \tfrac52 u_{acc}
+ \tfrac{u_{acc}}{2}\bigl(\log \hat Z_a + 2|\hat\ell_a| + |\hat\ell_b|\bigr).
$$

The exact lse of a state lies in $[-A, A + \log N]$, and its computed one lies within $E$ of
it, the lse section's accounting for the state's Lemma-1 form with perturbation $\rho'$
($E \le \rho' + 3u_{acc}(A + \log N + 1)$ for $\rho' \le 2$, a little more beyond; $E$ needs
$N 2^{-125} e^{\rho'} < 1$, which holds below $\rho' = 66.5$). With
$\log \hat Z_a \le \log N + \rho'$ the bracket is at most $3A + 4\log N + 4\rho'$, up to terms
of order $u_{acc}$. The growth is then at most
$2u_{exp} + \tfrac52 u_{acc} + u_{acc}(\tfrac32 A + 2\log N + 2\rho')$, against two steps,
$2u_{exp} + 8u_{acc} + 2u_{acc}(A + \log N)$. The room is
$u_{acc}(\tfrac{11}{2} + \tfrac12 A - 2\rho')$ to first order. With $\rho' \le 2$ it leaves
$\tfrac32 u_{acc} + \tfrac12 u_{acc} A$ for the second-order terms, and at
$\rho' = 2.5 + \min(A, 256)/4$ it still leaves $\tfrac12 u_{acc}$ (about $0.49u_{acc}$ with $E$
in full, `check_merge_growth_needs_bounded_rho`): **two steps**. A merge therefore counts as
two steps, one for the exponential and the coefficient and one for the incoming lse. At
$A = 0$ the argument stops near $\rho' = 2.75$. The states a merge takes have a $\rho'$ at
most the row's $\rho$ (fewer keys and steps, a smaller $A$), and the row's $A$ bounds their
lses, so the out bound is proved for $\rho \le 2.5 + \min(A, 256)/4$
(`relaycore.bounds.out_rho_limit`); `out_bound` refuses (`NoBound`) a row beyond it, and the
lse section needs $\rho \le 2$.

*This lemma and the lse section lean on each other*: the growth above uses the incoming
states' lse error $E$, and the lse section bounds a merged state's lse through the Lemma-1
form this lemma gives it. That is an induction over the merge tree, not a circle. Order the
tree's nodes so that every merge comes after the two states it takes. A leaf is a part: it
has the Lemma-1 form by Lemma 2, and then its lse error $E$ by the lse section, which asks
nothing of a merge there. At a merge, both incoming states have the form and their $E$ (they
come earlier), so (a)-(c) give the merged state the form, with $\rho$ grown as computed here,
and the lse section then gives it its $E$. Each node's claims use only earlier nodes'. Lemma 4
is one node with $K'$ children and fits the same induction.

The merge monoid's $\rho_1$ bounds (b) and
the coefficient's roundings of (c) for one coefficient (`check_merge_coefficients`);
`check_pairwise_merge` checks the growth above in the standard model of rounding.

*A merge with an empty state* $(0, -\infty)$ keeps the other state's output exactly ($w_a = e^{0} = 1$,
$w_b = e^{-\infty} = 0$, $\hat T = 1$, $\hat c_a = 1$), and its lse is $\mathrm{fl}(M + \mathrm{fl}(\widehat{\log}\,1))$.
It is exact where the logarithm returns 0 at 1, as CUDA documents for `logf` and `log2f` (without
`-use_fast_math`, <https://docs.nvidia.com/cuda/libdevice-users-guide/__nv_logf.html>), but the precision
policy's $u_{exp}$ does not give that, and PTX's `lg2.approx` is documented only within $2^{-22}$ there. Kept
in side $a$'s form, the state's lse would carry two logarithms into the next merge's (a), which (a) does not
allow. So take the merged state in this lemma's form with shift $M = \hat\ell_a$ and normaliser $\hat T = 1 =
e^{m_a - M}e^{\eta_a}\hat Z_a$: its weights, numerator and normaliser, move by (a)'s $\eta_a$ alone (the
coefficient, its product and the sum are exact), and its lse is the lse section's first form with $\hat Z = 1$.
One step holds $|\eta_a|$, with at least $1.4u_{acc}$ left up to the out bound's limit on $\rho$
(`check_logarithm_of_one_costs_a_step`): **one step per merge with an empty side**, which
`blocked_steps(merge="pairwise")` counts. It is needed: one fp32 key merged with three empty
states, the logarithm $u_{exp}$ above the exact one at 1, errs in its lse past the bound at the
count without it (`check_pairwise_step_count`). Lemma 8's last part prices such a merge with
divisions within 2 ulp (FlashInfer's), two steps.

*Counting steps.* In a part of $N_i$ keys cut in blocks of at least one key, a key is
rescaled at most $N_i - 1$ times; with $K'$ non-empty parts, $N_i \le N - K' + 1$, so a key
passes at most $1 + (N - K') + 2(K' - 1) \le 2N - 1$ steps, and one more per merge with an empty
state. `default_steps` is $2N$: safe for any blocking and any relay split with no empty part (or
whose logarithm returns 0 at 1) whose merges are this lemma's pairwise ones or the sigmoid and
logaddexp forms of the next section (in any tree), or Lemma 4's all-at-once folds, or one
running fold of Lemma 9 ($N_i + K' + 1 \le N + 2 \le 2N$ with $K' \ge 2$, divisions within 2
ulp included), and for no other merge.

## Lemma 3, other pairwise orders: the sigmoid and logaddexp forms

Two pairwise orders other than `relaycore.state.merge`'s are common (the first is relaycore's
headline formula, the second a naive split kernel's). On two states of Lemma 3's kind, with
lses $\hat\ell_a, \hat\ell_b$:

* (S) *the sigmoid form*: $d = \mathrm{fl}(\hat\ell_a - \hat\ell_b)$,
  $\hat c_a = \hat\sigma(d)$, $\hat c_b = \hat\sigma(\mathrm{fl}(\hat\ell_b - \hat\ell_a)) =
  \hat\sigma(-d)$ (rounding to nearest is symmetric), $\hat o = \mathrm{fl}(\mathrm{fl}(\hat c_a
  \hat o_a) + \mathrm{fl}(\hat c_b \hat o_b))$, and the lse $\hat L = \widehat{\mathrm{lae}}
  (\hat\ell_a, \hat\ell_b)$ computed separately (`torch.sigmoid`, `torch.logaddexp`);
* (L) *the logaddexp form*: $\hat L = \widehat{\mathrm{lae}}(\hat\ell_a, \hat\ell_b)$,
  $\hat c_x = \widehat{\exp}(\mathrm{fl}(\hat\ell_x - \hat L))$, $\hat o$ as in (S), lse $\hat L$.

*Assumption on the library functions* (as the model's on the exponential, not checked against
any implementation): $\hat\sigma$ errs relatively by at most $u_{exp}$, with
$\hat\sigma(-\infty) = 0$, $\hat\sigma(\infty) = 1$; $\widehat{\mathrm{lae}}(a, b) = L +
\eta_L$ with $L = \log(e^a + e^b)$ exactly and $|\eta_L| \le u_{exp} + \tfrac{u_{acc}}{2}|\hat
L|$, returning the other argument exactly where one is $-\infty$; a result below $2^{-126}$
may be flushed or subnormal, within $2^{-126}$ absolutely, as Lemma 3's $w$ and $\hat c$.
For fp32 ($u_{exp} = 4u_{acc}$), PyTorch computes $1/(1 + e^{-x})$ and $\max(a, b) + \mathrm{log1p}(e^{-|a - b|})$ (an exact
branch for equal infinities); to first order these meet it when their `exp` and `log1p` err by
at most 2 ulp ($2u_{acc}$) each, as SLEEF's (CPU, 1 ulp) and CUDA's (`expf` 2 ulp, `log1pf` 1
ulp) are documented to: $\hat\sigma$ then errs by $2u_{acc} + u_{acc} \le u_{exp}$, and
$\widehat{\mathrm{lae}}$ by $u_{acc} + 2u_{acc}\log 2 + 0.28\tfrac{u_{acc}}{2}$ (exp's error
damped by $e^{-y}/(1 + e^{-y}) \le \tfrac12$, log1p's by its result $\le \log 2$, the
difference's rounding by $y\,e^{-y}/(1 + e^{-y}) \le 0.28$) $\le u_{exp}$ before the final
addition's $\tfrac{u_{acc}}{2}|\hat L|$. That is a remark, not part of the proof.

*Claim. Under it, a merge in (S) or (L) of two states of Lemma 3's kind that both hold keys
gives a state of that kind over $S_a \sqcup S_b$ (the Lemma-1 form, (a) for its lse, with
$\hat Z \ge e^{-|\eta_L|}$ in (L) where Lemma 3 has $\hat Z \ge 1$), every numerator and
normaliser weight moved by at most Lemma 3's growth
$2u_{exp} + \tfrac52 u_{acc} + \tfrac{u_{acc}}{2}(\log\hat Z_a + 2|\hat\ell_a| + |\hat\ell_b|)$.
So it costs two steps, as Lemma 3's merge, under the same limit on $\rho$, in any tree whose
merges are Lemma 3's, (S) or (L); `out_bound` and `lse_bound` hold at Lemma 3's count
(`blocked_steps(merge="pairwise")`, `pairwise_steps`). Not covered: Lemma 5's magnitude (below),
and stored reads (Lemma 8 is proved for Lemma 3's order only).*

*Proof.* Let $M = \max(\hat\ell_a, \hat\ell_b)$ and $T = e^{\hat\ell_a - M} + e^{\hat\ell_b - M}
\in [1, 2]$, exact, never computed. The exact coefficients are $e^{\hat\ell_x - M}/T =
\sigma(\pm(\hat\ell_a - \hat\ell_b))$, and $L = M + \log T$. As in Lemma 3,
$e^{\hat\ell_x} = e^{m_x}\hat Z_x e^{\eta_x}$ with (a)'s $\eta_x$. On the numerator a part's
division, the product ($\tfrac{u_{acc}}{2}$ each) and the sum ($u_{acc}$) round: a factor
$1 + \delta_x$, $|\log(1 + \delta_x)| \le 2u_{acc}$, Lemma 3's (c) less the coefficient's
division. The two coefficients are computed separately and need not sum to 1: the form's
normaliser is an exact quantity, not a computed one, and the coefficients' errors all go to the
numerator (Lemma 1 asks only that $\hat o$ be such a quotient).

(S). $d = \Delta(1 + \delta)$, $\Delta = \hat\ell_a - \hat\ell_b$, $|\delta| \le \tfrac{u_{acc}}{2}$. As
$(\log\sigma)'(y) = \sigma(-y) \in (0, 1)$, $|\log\sigma(\pm d) - \log\sigma(\pm \Delta)| \le
\tfrac{u_{acc}}{2}|\Delta|$, so $\hat c_x = \frac{e^{\hat\ell_x - M}}{T} e^{\theta_x}$ with
$|\theta_x| \le u_{exp} + \tfrac{u_{acc}}{2}|\hat\ell_a - \hat\ell_b|$, the bound Lemma 3's
growth takes for its $\theta$ ($\tfrac{u_{acc}}{2}(|\hat\ell_a| + |\hat\ell_b|)$ at most; to
first order, $-\log(1 - u_{exp})$ as there). Then

$$
\hat o = \frac{\sum_x e^{m_x - M} e^{\eta_x + \theta_x}(1 + \delta_x)\,\mathrm{acc}_x}{T},\qquad
T = \sum_x e^{m_x - M} e^{\eta_x}\hat Z_x ,
$$

the Lemma-1 form with shift $M$ and normaliser $\hat Z = T \ge 1$: numerator weights moved by
$\eta_x + \theta_x + \log(1 + \delta_x)$, at most Lemma 3's growth less $\tfrac12 u_{acc}$;
normaliser weights by $\eta_x$ alone. The lse: $e^{\hat L} = e^M T e^{\eta_L}$ with
$|\eta_L| \le u_{exp} + \tfrac{u_{acc}}{2}|\hat L| \le u_{exp} + \tfrac{u_{acc}}{2}(\log T +
|\hat L|)$: (a) for the next merge. It is the lse section's natural form too:
$|\hat L - \ell| \le r + u_{exp} + \tfrac{u_{acc}}{2}|\hat L|$, within its $E$ (whose $X \ge r +
u_{exp}$ and $h(|\ell| + X)$ hold this; the second-order $h^2|\ell|$ lies far inside
$h(\log N + \rho)$, $\rho \ge 7u_{acc}A$).

(L). $\hat L = M + \log T + \eta_L$. Take the normaliser $\hat Z = e^{\hat L - M} = T e^{\eta_L}
= \sum_x e^{m_x - M} e^{\eta_x + \eta_L}\hat Z_x$. Then $\hat c_x = \frac{e^{\hat\ell_x -
M}}{\hat Z} e^{\theta_x}$ with $|\theta_x| \le u_{exp} + \tfrac{u_{acc}}{2}|\hat\ell_x - \hat
L|$, and $|\hat\ell_x - \hat L| \le |\hat\ell_x - M| + \log 2 + |\eta_L|$. Numerator weights move
by $\eta_x + \theta_x + \log(1 + \delta_x)$: at most Lemma 3's growth less
$(\tfrac12 - \tfrac12\log 2)u_{acc} \approx 0.15u_{acc}$ (up to $\tfrac{u_{acc}}{2}|\eta_L|$,
second order). Normaliser weights move by $\eta_x + \eta_L$, with
$|\hat L| \le \max(|\hat\ell_a|, |\hat\ell_b|) + \log 2 + |\eta_L|$: at most Lemma 3's growth
less $(\tfrac52 - \tfrac12\log 2)u_{acc}$. The merged lse is $M + \log\hat Z$ exactly: (a) holds
with $\eta = 0$, and the lse section's $r$ (the normaliser's perturbation, within the steps
counted) bounds $|\hat L - \ell|$ alone. Putting $\eta_L$ on the normaliser is what makes (L)
fit: with the exact $T$ as normaliser, $\eta_L$ lands on the numerator beside $\theta_x$'s own
$u_{exp}$ and the numerator passes Lemma 3's growth (`check_other_pairwise_merges`).

*Where Lemma 3 uses $\hat Z \ge 1$.* In (L) $\hat Z \ge e^{-|\eta_L|}$. Lemma 3 uses it for the
$t$-terms, whose factor at a merge is $e^{\hat\ell_x - M}/\hat Z_x \cdot e^{\theta_x}(1 +
\delta_x)$: for a state made by (L) at most $e^{|\eta_L| + |\theta_x| + 2u_{acc}}$, $\eta_L$
that of the merge that made it (charged there; the last merge's charged to the final $Z \ge
e^{-|\eta_L|}$ that $\sum_j|t_j| \le \varepsilon Z$ needs). Per merge that is at most $2u_{exp} +
2u_{acc} + \tfrac{u_{acc}}{2}(3\max_x|\hat\ell_x| + 2\log 2)$, up to second order, within
Lemma 3's closed form $2u_{exp} + \tfrac52 u_{acc} + u_{acc}(\tfrac32 A + 2\log N + 2\rho')$
(the lses within $A + \log N + E$, $E \le \rho' + O(u_{acc})$, $N \ge 2$), hence within two
steps, and $\chi \le \rho - u_{exp}$ holds as there. Lemmas 5 and 6 use a normaliser at least 1
(their $\hat l \ge 1$) only for parts' divisions; (S) and (L) divide nothing. In the growth of a
later merge $\log\hat Z_a$ may be slightly negative; there $\eta_a = 0$.

*Underflow and Lemma 6.* At most one coefficient of a merge holding keys on both sides is below
$2^{-126}$ (the other is at least $\tfrac12$ up to $u_{exp}$), off by less than $2^{-126}$ from
its form's value: Lemma 3's case, handled as in Lemma 4. Each merge rounds two products and a
sum, Lemma 6's count for Lemma 3. Lemma 6's $\eta$s meet the coefficients themselves, which it
takes at most 1 in Lemma 3: here $\hat c_x \le 1 + u_{exp}$ in (S), and in (L) $\hat c_x =
\frac{e^{\hat\ell_x - M}}{\hat Z}e^{\theta_x} \le e^{|\eta_L| + |\theta_x|}$, $\eta_L$ this
merge's. With the product and the sum that is within the $t$-terms' factor per merge above, so
within the merge's two steps, as Lemma 6 needs.

*Empty states.* With one side of lse $-\infty$ both forms are exact: in (S) $d = -\infty$,
$\hat\sigma(\mp\infty) \in \{0, 1\}$ and $\widehat{\mathrm{lae}}$ returns the other lse; in (L)
$\hat L$ is the other lse, $\widehat{\exp}(-\infty) = 0$, $\widehat{\exp}(0) = 1$. The empty
side's output must be finite ($0 \cdot \mathrm{NaN}$ is NaN), as for `relaycore.state.merge`.
With both sides empty both forms give NaN, not $(0, -\infty)$: (S) computes
$\sigma(-\infty - (-\infty))$, (L) $\exp(-\infty - \widehat{\mathrm{lae}}(-\infty, -\infty)) =
\exp(-\infty + \infty)$. They need the same guard as `relaycore.state.merge` (two empty sides
give $(0, -\infty)$); the claim is for guarded forms.

*Lemma 5 is not covered.* The merged output's magnitude: (S)'s coefficients sum to at most
$1 + u_{exp}$ ($\sigma(d) + \sigma(-d) = 1$ exactly), so $|\hat o| \le e^{u_{exp} +
u_{acc}}\max_x|\hat o_x|$, past the $4u_{acc}$ per merge that $\rho_\Delta$ budgets when
$u_{exp} = 4u_{acc}$ (fp32 accumulation); (L)'s carry $e^{-\eta_L}$ on both, growing with
$|\hat L|$. So (R2)-(R3) are not proved to exclude overflow for (S) and (L) (where values lie
within about $e^{(u_{exp} + u_{acc})S}$, resp. more, of the largest finite value, $S$ the merges).
The error bound assumes, as the model does, that no value overflows; where one does, the
output is infinite and fails it.

`check_other_pairwise_merges` checks the growths and (a) for both forms in the standard model
of rounding; `check_other_pairwise_step_count` runs both forms, and left folds that mix them
with Lemma 3's merge, with every fp32 rounding explicit against `out_bound` and `lse_bound` at
Lemma 3's count (other trees are not simulated).

## Lemma 4: an all-at-once merge of any number of states costs two steps

The Triton merge kernel does not merge pairwise: it folds all $K$ states of a token at once,
in base 2. State $i$ comes from a chunk's running maximum $m_i$ (base 2), normaliser $l_i$
and accumulator $\mathrm{acc}_i$ (fp32) as $\hat o_i = \mathrm{fl}(\mathrm{acc}_i / l_i)$ and
$\hat\lambda_i = \mathrm{fl}(m_i + \mathrm{fl}(\widehat{\log_2} l_i))$, or $(0, -\infty)$ when
its chunk holds no key the token sees; then

$$
M = \max_i \hat\lambda_i,\quad
w_i = \widehat{\exp_2}\bigl(\mathrm{fl}(\hat\lambda_i - M)\bigr),\quad
\hat o_d = \mathrm{fl}\Bigl(\frac{\sum_i \mathrm{fl}(w_i\, \hat o_{id})}{\sum_i w_i}\Bigr),\quad
\hat\ell = \mathrm{fl}\bigl(\mathrm{fl}(M + \widehat{\log_2} \textstyle\sum_i w_i) \cdot \mathrm{fl}(\ln 2)\bigr).
$$

*Claim. With $K' \ge 2$ non-empty states over disjoint key sets, each of the Lemma-1 form of
its chunk, the result is of the Lemma-1 form over all their keys with $\rho$ grown by at most
two steps, whatever $K'$ is. With $K' = 1$ the output is that state's, unchanged: no step.*

*Proof.* The elementwise fp32 operations round to nearest (relative error $u_{acc}/2$, as for
the running maximum in Lemma 2); $\widehat{\exp_2}$ errs relatively by at most $u_{exp}$ and
$\widehat{\log_2}$, times $\ln 2$, absolutely by at most $u_{exp}$. Put
$\hat\ell_i = \hat\lambda_i \ln 2$, the state's lse in natural log.

(a) *The incoming lse.* $2^{\hat\lambda_i} = 2^{m_i}\, l_i\, e^{\eta_i}$ with
$|\eta_i| \le u_{exp} + \tfrac{u_{acc}}{2}(\log l_i + |\hat\ell_i|)$: the logarithm's error,
the rounding of its result $\log_2 l_i$ and of the addition.

(b) *The weight.* $\mathrm{fl}(\hat\lambda_i - M)$ errs by at most
$\tfrac{u_{acc}}{2}|\hat\lambda_i - M|$, so $w_i = 2^{\hat\lambda_i - M} e^{\theta_i}$ with
$|\theta_i| \le u_{exp} + \tfrac{u_{acc}}{2}(|\hat\ell_i| + |\hat\ell_{max}|)$.

(c) *The state's division and the product* $\mathrm{fl}(\mathrm{acc}_{id} / l_i)$ and
$\mathrm{fl}(w_i \hat o_{id})$: a factor within $e^{\pm u_{acc}}$ on the numerator. The final
division $\mathrm{fl}(\cdot / \sum_i w_i)$ is Lemma 2's item 5 (the output's
$\mathrm{fl}(\mathrm{acc}/l)$, a relative error of the output), not a weight's.

(d) *The sums* over the states: a state's term passes at most $K' - 1$ additions (adding an
empty state's weight $2^{-\infty} = 0$ is exact, and so is the first addition to 0). A key of a
chunk holding $n_i$ of the row's keys passed at most $n_i - 1$ additions there (one per key of
its block, one per later step), so at most $n_i - 1 + K' - 1 \le N - 1$ in all: Lemma 2's
$\gamma_N$ holds them.

Now insert Lemma 2's form of chunk $i$ (shift $m_i$): $\mathrm{acc}_{id} = \sum_{j \in S_i}
(a_j + t_j) v_{jd}$ and $l_i = \sum_{j \in S_i} (b_j + t'_j)$. In $w_i \hat o_{id}$ the
$l_i$ cancels:

$$
\mathrm{fl}(w_i \hat o_{id}) = 2^{m_i - M} e^{\eta_i + \theta_i + \delta_{id}} \sum_{j \in S_i} (a_j + t_j)\, v_{jd},
\qquad
w_i = 2^{m_i - M} e^{\eta_i + \theta_i} \sum_{j \in S_i} (b_j + t'_j),
$$

$|\delta_{id}| \le u_{acc}$ (item (c)). That is the Lemma-1 form over all keys with shift
$M \ln 2$: numerator weights perturbed by $\eta_i + \theta_i + \delta_{id}$ more, normaliser
weights by $\eta_i + \theta_i$. The chunk's $t$-terms come out multiplied by
$2^{m_i - M} e^{\eta_i + \theta_i}(1 + \cdot)$. That factor is at most
$e^{|\theta_i| + u_{acc}}$, because $2^{m_i - M} e^{\eta_i} = 2^{\hat\lambda_i - M}/l_i \le 1$ with
$l_i \ge 1$: slightly above 1. Lemma 1 takes them through its sums. They reach at most
$N\tau e^{\chi}$, $\chi$ the growth below, while the merged normaliser without its $t'$ is
at least $1 - N 2^{-126} e^{\rho}$: $\sum_i w_i \ge 1$ (the top state's $w = 2^0 = 1$), and the
$t'$ are fp32 underflows. So $\sum_j |t_j| \le \varepsilon Z$ holds, because
$\rho \ge \chi + u_{exp}$ (the key's own exponential is a step too).

*Underflow.* A weight $w_i$ below fp32's smallest normal number $2^{-126}$ is flushed to 0
(`ex2.approx.ftz`, which `tl.exp2` compiles to) or returned subnormal. Either way it is off by
less than $2^{-126}$ from the value $2^{m_i - M} e^{\eta_i + \theta_i} l_i$ the form gives it,
and the product $\mathrm{fl}(w_i \hat o_{id})$ is off by less than $3 \cdot 2^{-126}|\hat o_{id}|$
from the form's (a rounding to nearest errs by at most the magnitude of what it rounds, below
the normal range too). That error is not of Lemma 1's per-key form and is not charged to
$\varepsilon$: it falls on all of the state's keys at once, a state of one key may already use
its $\tau$, and $2^{-126}$ is not below $\tau$ for fp32 and bf16. At most $K' - 1 < N < 2^{23}$
states underflow (the top one has $w = 1$, and $\gamma_N$ needs $N < 2^{23}$). On the
normaliser, where $\sum_i w_i \ge 1$, they make a relative error below $2^{-102}$. On the
numerator they make an absolute error below $3N 2^{-126}\max_i |\hat o_{id}|$, and Lemma 1 for
chunk $i$ (its $\rho$ and $\varepsilon$ are at most the row's) gives
$|\hat o_{id}| \le V_d + \frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}V_d
= \frac{e^{2\rho} + \varepsilon}{1 - \varepsilon}V_d$. Divided by $\sum_i w_i \ge 1$, it moves the
output by less than $F = 3N 2^{-126}\frac{e^{2\rho} + \varepsilon}{1 - \varepsilon}V_d$ before the
output's own rounding (item 5 multiplies $F$ by $1 + u_o$, as it does the rest). Both are
charged to $\sigma_0$, the part of the key's own exponential step that no weight uses (Lemma 2:
at least $4u_{acc} - 2^{-40}$, on both sides). The weights' perturbations then lie within
$\rho_- = \rho - \sigma_0 + 2^{-102}$, with $\varepsilon_- = N\tau e^{\rho_-} \le \varepsilon$, so
the output's error before item 5 is at most Lemma 1's at $\rho$:

$$
\frac{(e^{2\rho_-} - 1) + 2\varepsilon}{1 - \varepsilon}V_d + F
\le \frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}V_d
\quad\text{since}\quad
3N 2^{-126}\bigl(e^{2\rho} + \varepsilon\bigr) \le e^{2\rho} - e^{2\rho_-} .
$$

The two sides of the last inequality scale alike in $e^{2\rho}$, and the factor
$1/(1 - \varepsilon)$ has cancelled, so it holds for every $\rho$ and every $\varepsilon < 1$:
with $\varepsilon < 1 \le e^{2\rho}$ its left side is below $6 \cdot 2^{-103}e^{2\rho} <
2^{-100}e^{2\rho}$, its right side is $e^{2\rho}(1 - e^{-2(\sigma_0 - 2^{-102})}) >
2^{-20.1}e^{2\rho}$. `check_all_at_once_merge` checks it as the constant inequality it is, from
$\rho = \sigma_0$ to 88 and $\varepsilon$ up to $1 - 2^{-50}$; `check_triton_step_count` runs the
whole kernel, with an `ex2` that flushes to zero or keeps subnormals, on problems whose chunks'
weights fall below $2^{-126}$, against the bound.

The growth is at most

$$
|\eta_i| + |\theta_i| + u_{acc} \le 2u_{exp} + u_{acc}
+ \tfrac{u_{acc}}{2}\bigl(\log l_i + 2|\hat\ell_i| + |\hat\ell_{max}|\bigr).
$$

The exact lse of a chunk lies in $[-A, A + \log N]$, its computed one within $E$ of it (the lse
section, for a part at any $\rho$) and $l_i \le N e^{\rho}$ (up to the $t'$), so the bracket is
at most $3A + 4\log N + 4\rho$ (up to terms of order $u_{acc}$) and the growth at most
$2u_{exp} + u_{acc} + u_{acc}(\tfrac32 A + 2\log N + 2\rho)$, against two steps,
$2u_{exp} + 8u_{acc} + 2u_{acc}(A + \log N)$ (one step is
$u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)$). The room, $u_{acc}(7 + \tfrac12 A - 2\rho)$ to
first order, is at least $2u_{acc}$ wherever the out bound is claimed
($\rho \le 2.5 + \min(A, 256)/4$, Lemma 3), ample for the second-order terms such as
$|\log(1 - u_{exp})| - u_{exp}$: **two steps**. One step is not enough in general:
(a) and (b) hold $\tfrac{u_{acc}}{2}(2|\hat\ell_i| + |\hat\ell_{max}|)$, which reaches
$\tfrac32 u_{acc}(A + \log N)$ for two states of lse near $\pm(A + \log N)$, against one step's
$u_{acc}(A + \log N + 1)$. (Were the elementwise operations truncated, not rounded to nearest,
the bracket would double: three steps.)

With $K' = 1$ the non-empty state has $\hat\lambda_i = M$, so $w_i = 2^0 = 1$ exactly and
every other weight is $2^{-\infty} = 0$: the sums and the division return $\hat o_i$ bit for
bit, and the lse's last roundings (the logarithm of 1, the addition, the product with
$\ln 2$) are those the lse section below covers. $\blacksquare$

A pairwise left-to-right fold of $K'$ states costs the first state's keys $2(K' - 1)$ steps
(Lemma 3); the all-at-once fold costs every key two, however many chunks a context has.
The Triton kernels' divisions, the states' and the fold's, are within 2 ulp, not rounded to
nearest as (c) and the $K' = 1$ case take them: "Counting the Triton kernels' steps" prices them,
one step more for every key (a quotient $\hat o_i / 1$ included).

## Lemma 5: no overflow

Lemmas 1-4 model roundings, not overflow. A value past its format's largest finite number
$\Omega$ rounds to $\pm\infty$, which no perturbation of a weight describes: in fp16, 12 keys of
value 65504 (fp16's $\Omega$), one of score 0 and eleven of score $-0.6724$, the weights rounded
to fp16 come out above the fp32 ones in the normaliser, the fp32 output is 65536, and fp16
makes it $\infty$, while Lemma 1 would allow $65504 \pm 100$ (`check_overflow_is_refused`). So
the bound carries a precondition on the sizes. Put

$$
\rho_\Delta = u_p + 2\gamma_N + 2\nu\, u_{acc}
$$

(`relaycore.bounds.output_growth`), let $\Omega_{in}$ and $\Omega_{acc}$ be the largest finite
values of the input and accumulation formats (`relaycore.bounds.LARGEST_FINITE`), and require,
besides $\varepsilon < 1$,

* (R1) *the scores*: $(1 + \gamma_D)\sum_d |q_d k_{jd}| \le \Omega_{acc}$ for every key, that is
  $(1 + \gamma_D) A \le c\,\Omega_{acc}$;
* (R2) *the accumulators*: $N e^{\rho + \rho_\Delta}(1 + \varepsilon)V_d + 2\varepsilon\rho \le \Omega_{acc}$;
* (R3) *the output*: $e^{\rho_\Delta}(1 + \varepsilon)V_d + 2\varepsilon\rho \le \Omega_{in}$.

*Claim. Then no computed value overflows, and the fp32 output before its rounding to the input
format has $|x_d| \le e^{\rho_\Delta}(1 + \varepsilon)V_d + 2\varepsilon\rho$.*

*Proof.* Bound the magnitudes as if the formats had no largest value; (R1)-(R3) then show that
every one is finite. A rounding to nearest or toward zero has
$|\mathrm{fl}(x)| \le (1 + \tfrac{u_{acc}}{2})|x|$ in the normal range, and exceeds $|x|$ by at
most $2^{-149}$ below it (one quantum, the most a rounding toward zero or to nearest moves a
subnormal; flushing to zero exceeds nothing).

*Scores.* A partial sum of the dot product is $\sum_{d \le e} q_d k_{jd}(1 + \theta_d)$ with
$|\theta_d| \le \gamma_D$ (Lemma 2's accumulation model), so at most
$(1 + \gamma_D)\sum_d |q_d k_{jd}|$: finite by (R1). The scaled scores and their differences
with the maxima are below $4A$, and $A < 2^{27}$ ($2^{59}$ for float64): $\varepsilon < 1$ gives
$\rho < -\log \tau \le 88$ ($709$), while $\rho \ge (\gamma_{D+6} + u_{acc})A \ge 7u_{acc}A$. For fp16
inputs (R1) always holds ($|q_d k_{jd}| < 2^{32}$, $D < 2^{23}$); for the others it holds for any
scale $c \ge 2^{-100}$ ($2^{-964}$ for float64, `relaycore.bounds.MIN_SCALE`), since
$(1 + \gamma_D)A \le A + \rho < 2^{27}$ ($2^{59}$).

*A part.* Its fp32 weights $\hat p_j$ feed both sums: the normaliser adds $\hat p_j$, the
numerator $\tilde p_j v_{jd}$ with $\tilde p_j$ the weight rounded to the input format
($\tilde p_j \le (1 + u_p)\hat p_j$, or $\hat p_j + \tau$ near underflow; where the weights are
not rounded, as in the PyTorch backend or for fp32 inputs, the product's rounding takes that
place). Written backward (Lemma 2, item 3), $\hat l = \sum_j \hat p_j \Psi_j$ and
$\mathrm{acc}_d = \sum_j \tilde p_j v_{jd} \Phi_j$, where $\Phi_j$ and $\Psi_j$ hold the same
rescale factors $\hat\alpha$ (one computed factor multiplies both accumulators) and each side's
own roundings: a product per rescale ($\nu - 1$ at most, $\tfrac{u_{acc}}{2}$ each) and at most
$n - 1$ additions, $n$ the part's keys. So $\Phi_j \le e^{\mu}\Psi_j$ with
$\mu = 2\gamma_{n-1} + (\nu - 1)u_{acc}(1 + u_{acc})$ and $\Phi_j \le e^{\rho}$, hence
$|\mathrm{acc}_d| \le V_d(e^{u_p + \mu}\hat l + n\tau e^{\rho})$.
As $\hat l \ge 1$ (Lemma 3), the part's output $\mathrm{fl}(\mathrm{acc}_d / \hat l)$ is at most
$(1 + \tfrac{u_{acc}}{2})(e^{u_p + \mu} + \varepsilon)V_d \le e^{\rho_\Delta}(1 + \varepsilon)V_d$,
up to the underflows.

*Merges.* In Lemma 3's merge $\hat c_a + \hat c_b \le (1 + \tfrac{u_{acc}}{2})(w_a + w_b)/\hat T$
and $\hat T \ge (1 - u_{acc})(w_a + w_b)$, so $|\hat o| \le e^{5u_{acc}/2}\max(|\hat o_a|, |\hat o_b|)$,
within the $4u_{acc}$ the merge's two steps add to $\rho_\Delta$. In Lemma 4's, the numerator's sum is at most
$e^{\gamma_{K'-1}}(1 + \tfrac{u_{acc}}{2})\sum_i w_i |\hat o_i|$ and the computed
$\sum_i w_i$ at least $e^{-\gamma_{K'-1}}\sum_i w_i$, so
$|\hat o| \le e^{2\gamma_{K'-1} + u_{acc}}\max_i |\hat o_i|$ (the final division included). A key
of a part of $n_i$ keys merged with $K' - 1$ others passes at most $n_i - 1 + K' - 1 \le N - 1$
additions in all (Lemma 4 (d)), so the $\gamma$'s of its part and of the merges add up to at
most $2\gamma_N$, and the rest is within $2u_{acc}$ per step. By induction
over the merge tree, every state's output, and $x$, is at most $e^{\rho_\Delta}(1 + \varepsilon)V_d$
up to the underflows.

*Underflows.* On the way to an output there are at most $2N + 7N\nu$ roundings (products,
additions, rescales, divisions, a merge's four), each exceeding its exact value by at most
$2^{-149}$ ($2^{-1074}$ in float64), which is at most $2^{-23}\tau$ ($2^{-52}\tau$), then
multiplied by factors within $e^{\rho}$ and divided by normalisers of at least 1. In all that is
at most $9N\nu 2^{-23}\tau e^{\rho} = 9\nu 2^{-23}\varepsilon \le 2\varepsilon\rho$, because
$\rho \ge \nu(u_{exp} + 4u_{acc}) \ge 5\nu u_{acc}$. That proves the bound on $|x_d|$.

*Finite.* Every partial sum of an accumulator is bounded as $\mathrm{acc}_d$ is, over fewer keys,
and $\hat l \le N e^{\rho}$ (computed weights and rescale factors are at most $1 + u_{exp}$, and
their factors lie within $\rho$), so all are at most $N e^{\rho + \rho_\Delta}(1 + \varepsilon)V_d
+ 2\varepsilon\rho$: finite in the accumulation format by (R2); so are a merge's products and sums
($\sum_i w_i \le K' e^{\rho}$). The normalisers stay below $N e^{\rho} < 1/\tau < \Omega_{acc}$ and
the lses below $A + \log N + \rho$. And by (R3) $x_d$ rounds to a finite value of the input
format, within $u_{out}$ of $x_d$ as item 5 takes it. $\blacksquare$

`out_bound` refuses (`NoBound`) a row that fails (R2) or (R3), naming `value_abs`, and checks
(R1) where it is given the softmax scale (`scale=`); without it, it assumes
$c \ge$ `MIN_SCALE` for bf16, fp32 and float64 inputs. `check_overflow_is_refused` runs the
counter-example above (the simulated kernel returns $\infty$, and `out_bound` refuses it) and
draws values up to each format's $\Omega$: wherever `out_bound` gives a bound, the simulated
kernel stays finite and within it, and $|x_d|$ within the claim.

## Lemma 6: the accumulator's underflow

Lemmas 2-4 take every rounding of the accumulation format as relative,
$\mathrm{fl}(x) = x(1 + \delta)$. Below the normal range it is not: there a result errs
absolutely, by up to half the smallest subnormal ($2^{-150}$ in fp32, $2^{-1075}$ in float64)
where subnormals are kept, and by less than the smallest normal number ($2^{-126}$, $2^{-1022}$)
where the hardware flushes them to zero
(NVIDIA's `.ftz` instructions, x86's FTZ and DAZ modes). So each rounding is
$\mathrm{fl}(x) = x(1 + \delta) + \eta$ with $|\eta| \le \tau_{acc}$, the accumulation format's
`relaycore.bounds.UNDERFLOW_ABS` ($2^{-126}$ for fp32, $2^{-1022}$ for float64). Lemma 2 puts a
weight's underflow in its $t_j$. A product $\tilde p_j v_{jd}$ that underflows does not fit there:
its $\eta$ is $t_j v_{jd}$ with $|t_j| \le \tau$ only where $|v_{jd}| \ge |\eta| / \tau$, that is
for fp32 values above about $2^{-24}$ with subnormals kept and above 1 with them flushed. Nor do
the sums, rescales and divisions of an accumulator that has become that small. In
`underflow_example`, one key of score 0 and eleven of score $-8$, all of value $2^{-115}$, the
eleven products $e^{-8}2^{-115}$ are flushed to 0: the output errs by about $2^{-123}$, 3.7 times
what the bound allows without this lemma.

*Claim. Before item 5's roundings the output is $x_d = y_d + h_d$, with $y_d$ of the Lemma-1 form
that Lemmas 2-4 give and $|h_d| < 5N\tau_{acc}e^{\rho} = 5\varepsilon_{acc}$. So*

$$
|\hat o_d - o_d| \le \Bigl(\frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}\, V_d
+ 5\varepsilon_{acc}\Bigr)(1 + u_o) + u_o\, |o_d| + 2\tau .
$$

*Proof.* The numerator's roundings feed nothing but the numerator: the weights, the rescale
factors, the normalisers and the merges' coefficients are computed from the scores and the
normaliser's side. So the numerator is linear in its $\eta$'s: it is $y_d$, the value with every
$\eta = 0$, plus each $\eta$ times the factors it meets after its rounding. Those are the
roundings of the later operations, the later rescale factors (exponentials of non-positive
numbers, at most $1 + u_{exp}$), the merges' coefficients ($\hat c_a = \mathrm{fl}(w_a / \hat T)
\le 1$ in Lemma 3, since a sum of non-negative terms, rounded to nearest or truncated, is not
below its largest; in Lemma 4, $w_i \le 1 + u_{exp}$ and the division by $\sum_i w_i \ge 1$), and
the divisions by normalisers $\hat l \ge 1$ (Lemma 3). Their product is within $e^{\rho}$: the
$\eta$ passes at most $N - 1$ additions (Lemma 4 (d)), within $e^{\gamma_N}$; a rescale's factor
and product, $u_{exp} + \tfrac{u_{acc}}{2}$, fit in its step; a merge's $u_{exp}$ and three
roundings in its two; a part's division, $\tfrac{u_{acc}}{2}$, in $\sigma_0$ of the key's own
step (Lemma 2). So each $\eta$ reaches $x_d$ as at most $\tau_{acc}e^{\rho}$.

Now count the roundings that may carry one. A part of $n$ keys walked in $k \le n$ blocks rounds
$n$ products $\tilde p_j v_{jd}$, $n - 1$ additions (the first addition to the empty accumulator
is exact), $k - 1$ rescales and, where it is merged, its division $\mathrm{fl}(\mathrm{acc} /
\hat l)$: at most $3n - 1$, so $3N - K'$ over the $K'$ parts. Each of Lemma 3's $K' - 1$
pairwise merges rounds two products and a sum, which makes at most $3N + 2K' - 3$; Lemma 4's fold
rounds $K'$ products and $K' - 1$ additions (its division is item 5's), which makes at most
$3N + K' - 1$. With $1 \le K' \le N$ both are below $5N$: at most $5N - 3$ and $4N - 1$ (2 and 3
at $N = K' = 1$). A value that the hardware flushes as an
operand ($|v_{jd}| < 2^{-126}$ read as 0) makes its product 0, in error by
$\tilde p_j |v_{jd}| < (1 + u_{exp})(1 + u_p)\tau_{acc}$ in place of the product's rounding: the
same once the key's own $u_{exp}$ and $u_p$, which no factor after its product uses, are spent on
it. Item 5 multiplies $h_d$, as the rest of $x_d - o_d$, by at most
$1 + u_o$. $\blacksquare$

The term is absolute, and beside Lemma 1's first term it is small wherever the values are not:
since $\rho \ge \gamma_N \ge N u_{acc}$ and $e^{\rho} / (e^{2\rho} - 1) \le 1 / (2\rho)$,

$$
\frac{5\varepsilon_{acc}}{(e^{2\rho} - 1)\, V_d} \le \frac{5}{2}\, \frac{\tau_{acc}}{u_{acc} V_d},
$$

that is $2.5 \cdot 2^{-103} / V_d$ in fp32: below $2^{-101}$ at $V_d = 1$, comparable only for
values near $2^{-100}$ and below. `check_accumulator_underflow` checks that inequality over
$N$, $A$ and $\nu$, runs `underflow_example` (beyond the bound without the term, within it with
the term) and draws bf16 and fp32 problems whose values go down to $2^{-149}$, computed with
subnormals flushed or kept (by the exponential too).

## Lemma 7: fp16 scores have no subnormals

*Claim. With fp16 inputs, every value a score's dot product computes in fp32 (each product
$q_d k_{jd}$ and each partial sum, in any order, rounded to nearest or toward zero, or summed by a
matrix unit's fused addition, Lemma 2's accumulation model) is 0 or of magnitude at least
$2^{-48}$; and the scaled score $\mathrm{fl}(\hat c\, s)$ is 0 or at least $2^{-126}$ where the
fp32 constant the kernel multiplies by is $\hat c \ge 2^{-78}$ (the Triton kernels' $\hat c$ is
$c \log_2 e$ rounded, so any softmax scale $c \ge 2^{-78}$). So no subnormal arises in the
scores, and flushing subnormals to zero changes no score: the assumption of the precision model
holds for fp16.*

*Proof.* An fp16 number, subnormals included, is an integer multiple of $2^{-24}$ of at most 11
significant bits and magnitude at most 65504; it is a normal fp32 number or 0, so an operand
flush leaves it as it is. A product of two is a multiple of $2^{-48}$ of at most 22 significant
bits and magnitude below $2^{32}$: exact in fp32. Let $x \ne 0$ be a multiple of $2^{-48}$, so
$|x| \ge 2^{-48}$, and $2^e \le |x| < 2^{e + 1}$ with $e \ge -48$. The fp32 numbers of that
binade are the multiples of $2^{e - 23}$. If $2^{e - 23} \le 2^{-48}$, $x$ is one of them and any
rounding returns $x$; otherwise both fp32 neighbours of $x$ (the upper one possibly $2^{e + 1}$)
are multiples of $2^{e - 23}$, hence of $2^{-48}$, and neither is 0: both lie in
$[2^e, 2^{e + 1}]$ in magnitude. So every rounding to fp32, in either
direction, maps the non-zero multiples of $2^{-48}$ into themselves, and an exact sum of
multiples of $2^{-48}$ is one. By induction over a chain of additions every partial sum is 0 or
a non-zero multiple of $2^{-48}$. A fused addition first truncates each addend to a multiple of
some power of two $2^g$: for $g \le -48$ a multiple of $2^{-48}$ is one of $2^g$ already and stays,
for $g > -48$ the truncated addend is a multiple of $2^g$, hence of $2^{-48}$; their sum is one
too, and its rounding to fp32 stays one. Magnitudes stay below $D \cdot 2^{32}$: no overflow for
$D \le 2^{90}$. Last, $|\hat c\, s| \ge 2^{-78} \cdot 2^{-48} = 2^{-126}$ for $s \ne 0$, and
$2^{-126}$ is an fp32 number, so its rounding is at least $2^{-126}$: normal. $\blacksquare$

bf16 has fp32's exponent range: $q_d = k_{jd} = 2^{-70}$ are normal bf16 numbers whose product
$2^{-140}$ is an fp32 subnormal, which a flush makes 0. For bf16 and fp32 inputs the assumption
stays one. `check_fp16_scores_have_no_subnormals` checks the claim on drawn fp16 vectors and
that example.

## Lemma 8: merges of outputs stored in the input format

A cascade kernel that runs each level into an output tensor of the input dtype and merges those
tensors afterwards rounds a state's output once more before its merge. FlashInfer 0.5.0's
`MultiLevelCascadeAttentionWrapper` does: it runs each level into a tensor of q's dtype and
merges them with `merge_state_in_place`, whose kernel (`MergeStateInPlaceKernel` in
`include/flashinfer/attention/cascade.cuh`) reads and writes the outputs in that dtype and the
lses in fp32. Its order of operations is Lemma 3's in base 2: $M$ the larger lse,
$w = 2^{\mathrm{fl}(\lambda - M)}$, the coefficient $w_a / (w_a + w_b)$, the two products summed,
and the lse $\mathrm{fl}(\widehat{\log_2}(w_a + w_b) + M)$. In natural units base 2 changes none
of Lemma 3's (a)-(c), as in Lemma 4. (Given two states of lse $-\infty$ it takes
$2^{-\infty - (-\infty)}$ and returns NaN, output and lse: `merge_state` and
`merge_state_in_place` did on an H200, FlashInfer 0.5.0, 2026-11-29; relaycore's merge returns
$(0, -\infty)$.) (A fused multiply-add rounds once where the model rounds
twice, which the model covers.)

*Claim. Let a pairwise merge in Lemma 3's order, in natural log or base 2, read its incoming
outputs as $x_a = \mathrm{fl}_{in}(\hat o_a)$, $x_b = \mathrm{fl}_{in}(\hat o_b)$: rounded to
nearest in the input format, the lses in fp32. Write each incoming output as $y + h$, with $y$
of the Lemma-1 form and $h$ an absolute term per element. Then the merged output is $y + h$
with $y$ of Lemma 3's form, every numerator weight perturbed by at most $u_p$ more (normaliser
weights and the lse exactly as in Lemma 3), and*

$$
|h| \le \kappa\bigl((1 + u_p)\max(|h_a|, |h_b|) + \tau\bigr),\qquad
\kappa = \frac{(1 + u_{acc}/2)^2 (1 + u_{acc})}{1 - u_{acc}} \le e^{4u_{acc}} .
$$

*So a state whose keys pass at most $S$ such merges carries
$|h| \le H_S = S\tau e^{S(u_p + 4u_{acc})}$, and the row's output, rounded by item 5, is within*

$$
\Bigl(\frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}\, V_d + 5\varepsilon_{acc} + H_S\Bigr)(1 + u_o)
+ u_o |o_d| + 2\tau
$$

*with $S u_p$ added to $\rho$ and to Lemma 5's $\rho_\Delta$ (`stored = S` in `relaycore.bounds`).*

*Proof.* Rounding to nearest gives $\mathrm{fl}_{in}(z) = z(1 + \delta)$ with
$\mathrm{fl}_{in}(z)/z \in [1/(1 + u_p), 1 + u_p]$ where the result is normal, as item 2 has it
for the weights, and $\mathrm{fl}_{in}(z) = z + \eta$ with $|\eta| \le \tau$ below the normal
range ($\tau$ is half the input format's smallest subnormal, or its smallest normal where the
hardware flushes, `relaycore.bounds.UNDERFLOW_ABS`); one or the other. So
$x_a = (1 + \delta_a)(y_a + h_a) + \eta_a$. The part $(1 + \delta_a) y_a$ enters Lemma 3 where
$\hat o_a$ did, and $\delta_a$ multiplies the numerator weights of $a$'s keys alone, by a
factor within $e^{\pm u_p}$; the normaliser side, $\hat T$ and the lse never read $x_a$. So (a)
and (b), the growth's two steps and the lse section's accounting (which uses the normaliser's
perturbation only) are Lemma 3's, and $\rho$ grows by $u_p$ per stored merge a key passes. In
base 2 the lse leaves in the lse section's second form, with $\hat Z = \hat T$ (FlashInfer
returns it in base 2; the product with $\ln 2$ is then the caller's).
$\rho$ as `relaycore.bounds` computes it then holds both sides, and Lemma 3's limit on $\rho$,
checked on this larger $\rho$, is checked conservatively. The $t$-terms pass the same factors,
within $e^{\rho}$, as Lemma 3 requires. The rest, $(1 + \delta_a)h_a + \eta_a$, is at most
$(1 + u_p)|h_a| + \tau$, and the merge takes it through its coefficient's product
($1 + \tfrac{u_{acc}}{2}$) and its sum (which may truncate: $1 + u_{acc}$). The coefficients
sum to at most $(1 + \tfrac{u_{acc}}{2})(w_a + w_b)/\hat T \le (1 + \tfrac{u_{acc}}{2})/(1 - u_{acc})$,
because $\hat T \ge (1 - u_{acc})(w_a + w_b)$. Together that is the claim for $h$. By induction
over the merge tree, with $1 + u_p \le e^{u_p}$ and $e^{4u_{acc}} \le e^{S(u_p + 4u_{acc})}$,
$H_S = \kappa((1 + u_p)H_{S-1} + \tau) \le S\tau e^{S(u_p + 4u_{acc})}$. Item 5 multiplies the
final $h$, as the rest of the error, by at most $1 + u_o$.

Lemma 5 still holds with $S u_p$ in $\rho_\Delta$ and $H_S$ among the underflows: every stored
output is a state's output, at most the row's $e^{\rho_\Delta}(1 + \varepsilon)V_d + 2\varepsilon\rho
+ H_S$, which (R3) keeps finite in the input format, and a rounding to nearest of a value at
most the largest finite one is finite. Lemma 6's roundings are the accumulation format's; the
factors after them now include the stored roundings', within $e^{S u_p}$ and so within
$e^{\rho}$. $\blacksquare$

*Divisions within 2 ulp.* FlashInfer compiles with `-use_fast_math`, whose `-prec-div=false` makes
the `/` of `MergeStateInPlaceKernel`'s coefficients a division within 2 ulp (CUDA documents 2 ulp for
`x / y` without `-prec-div`, over the full range; `-ftz` flushes a subnormal quotient), in 0.5.0 as
from `d7f2c64`; the levels' own divisions are within 2 ulp too (Lemmas 9 and 13).

*Claim. Let the merges of the claim above compute each coefficient $\hat c_a$ within 2 ulp of
$c_a = w_a / \hat T$, and so $\hat c_b$ (relatively within $2u_{acc}$ where $c_a \ge
2^{-126}$, and $|\hat c_a - c_a| < 2^{-126}$ below, $0 \le \hat c_a \le (1 + 2u_{acc})c_a + 2^{-148}$
throughout), the parts' divisions within 2 ulp or to nearest, and let $S$ count every merge on a key's
way, a merge with an empty side (output 0, lse $-\infty$) included. Then a key passes at most Lemma 3's
count plus one step per merge on its way whose two sides hold keys and two per merge with an empty
side (one in Lemma 3's count), at least one in all (its part's division), its
numerator weights perturbed by $u_p$ more per stored read as above, and the row's output is within
the bound of the claim above with Lemma 10's $H^{run}_S$ in place of $H_S$ (`stored = S`,
`stored_merge="running"`).*

*Proof.* *The form.* A coefficient enters (c) only on the numerator, where Lemma 3 charges its
division $\tfrac{u_{acc}}{2}$; $M$, $w$, $\hat T$ and the lse never read it. The excess, at most
$\tfrac32 u_{acc}$, multiplies the numerator weights of its side's keys; a part's division within 2 ulp
exceeds its charge in (c) by $\tfrac32 u_{acc}$ (item 5's by $u_{acc}$ where the part is the row's
output, Lemma 9). So a key's numerator weights gain at most $\tfrac32 u_{acc}$ per merge on its way
and $\tfrac32 u_{acc}$ once, $3u_{acc}$ at its first merge: within the one step more there (at least
$u_{exp} + 4u_{acc}$), and at the out bound's limit on $\rho$ three steps hold Lemma 3's growth and
$3u_{acc}$ with at least $1.4u_{acc}$ left, where two leave none (`check_stored_merges_fast_division`).
A merge with an empty side is no longer exact: the other side is at $M$, $w = 2^0 = 1$, $\hat T =
\mathrm{fl}(1 + 0) = 1$, $\hat c$ is within $2u_{acc}$ of 1, and its output $\mathrm{fl}(\hat c\, x)$ (plus an
exact 0) carries $(1 + 2u_{acc})(1 + \tfrac{u_{acc}}{2})$, and a stored read if it reads stored
outputs: two steps (one holds it in $\rho$; Lemma 5's $\rho_\Delta$, below, gives a step
$2u_{acc}$). Its lse is $\mathrm{fl}(M + \widehat{\log_2}\hat T)$ with $\hat T = 1$, the logarithm
FlashInfer's `math::ptx_log2`, the instruction `lg2.approx.ftz.f32` (in 0.5.0 as from `d7f2c64`).
NVIDIA's PTX ISA gives `ex2.approx` the special values $2^{\pm 0} = 1$ and $2^{-\infty} = +0$,
which make $w = 1$ exact, and the empty side's weight 0 from `d7f2c64` on (in 0.5.0 its
$-5 \cdot 10^4$ weight flushes to 0 where the lse is above about $-34570$, Lemma 10), but it
gives `lg2.approx` no special value at 1, only an absolute error of at most $2^{-22}$ on $(0.5, 2)$
(<https://docs.nvidia.com/cuda/parallel-thread-execution/#floating-point-instructions-lg2>,
<https://docs.nvidia.com/cuda/parallel-thread-execution/#floating-point-instructions-ex2>): the
claim does not assume $\widehat{\log_2} 1 = 0$. Where it is 0 the merged lse is $M$, the state's
own, and only its output changed. Where it is not, take the merged state in Lemma 3's form with
shift $M$, the side $a$ that holds keys at $M$ ($\theta_a = 0$) and $w_b = 0$: $\hat T = 1 =
e^{m_a - M}e^{\eta_a}\hat Z_a$, so its normaliser weights move by $\eta_a$ of Lemma 3 (a) (the incoming
lse's error, not the stored rounding's $\eta_a$ of the proof above), its
numerator weights by $\eta_a$ and the roundings above, and the lse section bounds its lse at its
$\rho$, $\widehat{\log_2} 1$'s error ($2^{-22}\ln 2 < u_{exp}$ in natural units) being that
section's item 1. The growth, at most $|\eta_a| + \tfrac92 u_{acc}$ (the part's division within 2
ulp where this is the key's first merge, the coefficient's, the product's; the sum adds an exact
0), $|\eta_a| \le u_{exp} + \tfrac{u_{acc}}{2}(\log \hat Z_a + |\hat\ell_a|)$, is within Lemma 3's
bound on a merge's growth, so within the two steps already counted: at the out bound's limit on
$\rho$ they leave at least $5u_{acc}$ (at one key and $A = 0$; $5.7u_{acc}$ from two keys on), where one step is
$3u_{acc}$ short at $A = 0$
(`check_stored_merges_fast_division`). Below the normal range a coefficient errs by less than $2^{-126}$ absolutely, as Lemma
3's coefficient rounded with subnormals flushed does, and is that weight's underflow (Lemmas 3 and 4).
*The rest.* With the rests of the proof above, $r_a = (1 + \delta_a)h_a + \eta_a$ and $r_b$,
$h = \hat c_a r_a + \hat c_b r_b$ times the product's $1 +
\tfrac{u_{acc}}{2}$ and the sum's $1 + u_{acc}$, so $|h| \le \kappa\max(|r_a|, |r_b|)$ with $\kappa = (1 +
\tfrac{u_{acc}}{2})(1 + u_{acc})(\hat c_a + \hat c_b)$. With two sides that hold keys, $\hat c_a +
\hat c_b \le (1 + 2u_{acc})/(1 - u_{acc}) + 2^{-147}$, and $\kappa \le e^{\frac52 u_{acc} + 3u_{acc}}$,
Lemma 10's bound on $\kappa_2$; with one, $\hat c_b x_b = 0$, the sum adds an exact 0 and $\kappa \le (1 +
2u_{acc})(1 + \tfrac{u_{acc}}{2}) \le e^{\frac52 u_{acc}}$, Lemma 10's bound on $\kappa_1$. So every
merge is a node of Lemma 10's tree with $K'_v \le 2$ children that hold keys (its $\tau_{acc}$ per
node unused), and Lemma 10's induction over the tree gives $|h| \le H^{run}_S$. Lemma 8's own
argument does not: its $\kappa \le e^{4u_{acc}}$ fails ($\kappa$ reaches about $e^{\frac92 u_{acc}}$). *Sizes.*
$|\hat o| \le e^{\frac52 u_{acc} + 3u_{acc}}\max(|x_a|, |x_b|)$ up to the underflows, within the
$2u_{acc}$ per step that $\rho_\Delta$ gives the merge's three (with an empty side,
$e^{\frac52 u_{acc}}$ within its two); Lemma 6's roundings are the merge's
products and sum, as above; `out_bound` with `stored_merge="running"` checks Lemma 10's partial sums
besides, conservatively. $\blacksquare$

*FlashInfer's empty levels.* Its `MultiLevelCascadeAttentionWrapper.run` (0.5.0) runs every level on
every row and merges each level's output into every row, so a level the row's request does not read
hands on what its prefill leaves a row with no key: output 0 and base-2 lse
$\lambda_0 = \mathrm{fl}(-5 \cdot 10^4 + \mathrm{fl}(\widehat{\log_2} 1)) = -5 \cdot 10^4$ (its $m$ starts at
$-$`math::inf` and its $d$ at 1; the logarithm's error is below half an ulp there, as in Lemma 10), not
the claim's empty side $(0, -\infty)$. Merged in either order with a state $(x, L)$ where
$\lambda - L \le -25$, a phantom $(0, \lambda)$ gives what the empty side gives, bit for bit, with divisions
within 2 ulp or to nearest: $M = L$, $w_x = 2^0 = 1$, $w_\lambda \le 2^{-25}(1 + u_{exp}) < 2^{-24}$
(or flushed to 0) as $\mathrm{fl}(\lambda - L) \le -25$, so $\hat T = \mathrm{fl}(1 + w_\lambda) = 1$ to nearest
or truncated, as $\mathrm{fl}(1 + 0)$ is; $\hat c_x$ is the same division of 1 by 1, $\hat c_\lambda$ times
the phantom's output $+0$ is $+0$ as $0 \cdot 0$ is, and the lse is the same
$\mathrm{fl}(L + \mathrm{fl}(\widehat{\log_2} 1))$. The levels before the first one the row reads merge
phantoms with each other: output 0, and an lse raised by at most $1 + 2^{-21} + 2^{-9} < 1.01$ per merge
($\hat T \le 2$, the logarithm's error, the rounding near $5 \cdot 10^4$), at most
$-5 \cdot 10^4 + 1.01(P - 2)$ over $P$ levels (the last, the row's own KV, holds keys). A state that
holds keys has an lse at least its largest level's less $2^{-8}$ per merge ($\hat T \ge 1$: the
logarithm's error and a rounding; less than 1 over 100 levels), and meets phantoms of lse
$\lambda_0$ only. A level the row reads but that holds none of its keys (a prefix of no key) hands on the same
phantom and is one of them. So where every level that holds a key of the row has a base-2 lse of at least
$-5 \cdot 10^4 + 26 + 1.01(P - 2)$, which Lemma 9's condition (above $-5 \cdot 10^4 + 126$, in
natural units about $-34570$) gives up to $P = 100$ levels, the wrapper's merges of empty levels are
the claim's merges with an empty side, bit for bit: two steps and a stored merge each under 2-ulp
divisions; with divisions to nearest one each (Lemma 3), the stored output passing unchanged (an $S$
that counts it is conservative). `check_flashinfer_empty_levels` runs
the wrapper's fold with phantoms against the one with $(0, -\infty)$: two empty levels and the row's own
25 above their merge give the same bits, 20 above it not; drawn cascades of 2 to 8 levels at that
floor, near Lemma 9's and ordinary, divisions within 2 ulp or to nearest, the same bits.

`blocked_steps(..., merge="pairwise", fast_division=True)` counts $\max(1, K' - 1 + 2E)$ more, the
merges of the $K'$ parts that hold a key of the row and two for each of the $E$ parts that hold none
(a chunk past a causal row's last key, merged into the row with an empty side), and
`stored_merges(batch)` one merge per prefix level a request reads: a kernel that also merges empty states into a row (a level its request
does not read) passes more merges, each two more steps and one more in $S$, and needs them counted:
FlashInfer's wrapper does, and both count them with `every_level=True` ($E$ then takes in every level
the request does not read; $S$ is the number of prefix levels for every row).
`check_stored_merges_fast_division` checks the claim in the standard model and end to end: drawn rows
folded pairwise from stored outputs, every division within 2 ulp (the parts', and the merges', on
empty sides too), stay within `out_bound` at `pairwise_fast_steps` with `stored_merge="running"`,
which is `blocked_steps`' count for the same parts (`check_pairwise_fast_steps_match_blocked_steps`).

The absolute term is what a test sees. `stored_example` has one fp16 row with all scores 0 and
values that are fp16 subnormals, in parts of 2, 2, 4 and 8 keys, so that every merge weighs its
states by 1/2 exactly. Folded from stored outputs, the roundings of the stored means add up to
an output error of $1.1875 \cdot 2^{-24}$. The bound without `stored` allows $1.04 \cdot 2^{-24}$,
and with `stored = 3` it allows $2.63 \cdot 2^{-24}$. The relative part, $S u_p$, stayed within
the bound's slack on every draw we tried: values near 1 reach 0.42 of the bound without it. It
is charged because the Lemma-1 form needs it, not because a draw has shown it. An all-at-once
merge (Lemma 4) that reads stored outputs is not covered here: its coefficients are summed
over $K'$ states, and its $\kappa$ would grow with $K'$; Lemma 10 prices that growth for Lemma 9's
running folds.

## Lemma 9: a running fold costs a step per growth of its maximum

FlashInfer 0.5.0 merges states with a running fold in base 2 (`state_t::merge` in
`include/flashinfer/attention/state.cuh`). Its kernels use the fold in more than one way; this
lemma is about one fold over states whose outputs are exact fp32 values, as its one-level
`MergeStatesKernel` folds fp32 states (`merge_states` with fp32 outputs and fewer states than
tokens). Its other merges nest folds with outputs stored in the input dtype between them (the
large and variable-length merge kernels fold a thread's share of the states, store the result
in the input dtype, and fold the threads; its split-KV decode stores its partial outputs in the
output dtype) or merge unnormalised $(o, m, d)$ states within a block (decode's `sync_state`):
neither is covered here, and a simulation of the first exceeds the bound at this lemma's count
(below). Lemma 10 covers the first; Lemma 11 shows the second to be a chain of Lemma 2's
rescales. From $M_0 = -\infty$, $\Lambda_0 = 1$,
$O_0 = 0$ (FlashInfer's $M_0$ is $-5 \cdot 10^4$, below) it takes the states
$i = 1, \dots, K$ in turn, each as an output $\hat o_i$ and a base-2 lse $\hat\lambda_i$:

$$
M_i = \max(M_{i-1}, \hat\lambda_i),\quad
g_i = \widehat{\exp_2}\bigl(\mathrm{fl}(M_{i-1} - M_i)\bigr),\quad
f_i = \widehat{\exp_2}\bigl(\mathrm{fl}(\hat\lambda_i - M_i)\bigr),
$$

$$
\Lambda_i = \mathrm{fl}\bigl(\mathrm{fl}(\Lambda_{i-1} g_i) + f_i\bigr),\qquad
O_{id} = \mathrm{fl}\bigl(\mathrm{fl}(O_{i-1,d}\, g_i) + \mathrm{fl}(\hat o_{id} f_i)\bigr),
$$

and returns $\hat o_d = \mathrm{fl}(O_{Kd} / \Lambda_K)$ and
$\hat\lambda = \mathrm{fl}(M_K + \widehat{\log_2} \Lambda_K)$. Its divisions (`state_t::normalize`,
and the chunk's own $\mathrm{acc}_i / l_i$ in its decode kernels) are `__fdividef`, within 2
ulp for divisors in $[2^{-126}, 2^{126}]$, not rounded to nearest (its decode kernels multiply
by `rcp.approx` instead, within 1 ulp, then round: also within $2u_{acc}$ relatively).

*Claim. Let the states hold disjoint key sets, each of the Lemma-1 form of its chunk and
entering as in Lemma 4 ($\hat o_i = \mathrm{fl}(\mathrm{acc}_i / l_i)$,
$\hat\lambda_i = \mathrm{fl}(m_i + \mathrm{fl}(\widehat{\log_2} l_i))$), the first state
non-empty, and $K' \ge 2$ of them non-empty. Then the result is of the Lemma-1 form over all
their keys, and a key of state $i$ passes at most $2 + G_i$ steps in the fold, where $G_i$
counts the later states that raise the running maximum ($\hat\lambda_k > M_{k-1}$, $k > i$);
at most $\max(2, 1 + G_i)$ if state $i$ raised it itself. Whatever the order and the lses, that
is at most $K'$ steps. With $K' = 1$ and divisions rounded to nearest the output is the
state's, bit for bit up to the sign of a zero. Divisions within 2 ulp instead of rounded to
nearest cost one step more.*

*Proof.* *Empty states.* A state with no key the row sees, $(0, -\infty)$, after a non-empty
one leaves everything as it was, bit for bit up to the sign of a zero (a $-0$ sum plus $+0$
is $+0$): $M_i = M_{i-1}$ is finite,
$g_i = \widehat{\exp_2}(0) = 1$ (the hardware returns 1 at 0, as "Counting the Triton kernels'
steps" uses), $f_i = 2^{-\infty} = 0$, the products are exact and the sums add zeros (with
subnormals flushed, $O_{i-1}$ is a result of the fold's arithmetic, so 0 or normal, and
$O_{i-1} \cdot 1$ flushes nothing; a phantom state after a non-empty one is the same, Lemma 10). A first
state with no key would give $M_1 = -\infty$ and the argument
$\mathrm{fl}(-\infty - (-\infty))$, NaN; the claim asks for a non-empty first state. Number
the non-empty states $1, \dots, K'$. The first one finds $M_0 = -\infty$, so
$g_1 = 2^{-\infty} = 0$, $M_1 = \hat\lambda_1$, $f_1 = 2^0 = 1$: $\Lambda_1 = 1$ and $O_1 = \hat o_1$
exactly. So with $K' = 1$, $\hat o = \mathrm{fl}(\hat o_1 / 1) = \hat o_1$.

*FlashInfer's start.* Its `state_t::init` sets $M_0 = -$`math::inf`, which is $-5 \cdot 10^4$,
not $-\infty$: a phantom state of output 0 and base-2 lse $-5 \cdot 10^4$ that the fold takes
first. Its output term is $0$ times its factors, exactly 0. Where the first non-empty state's
lse exceeds $-5 \cdot 10^4 + 126$ (in natural units about $-34570$), the rescale
$g_1 = \widehat{\exp_2}(\mathrm{fl}(-5 \cdot 10^4 - \hat\lambda_1))$ is at most about $2^{-126}$
(the subtraction rounds monotonically and $-126$ is a float), flushed by `ex2.approx.ftz` or
not: $\Lambda_1 = \mathrm{fl}(g_1 + 1) = 1$ and $O_1 = \hat o_1$ exactly, the same fold; and an
empty state before it changes nothing instead of giving NaN. The states come in any order, so
the claim takes the condition for every state that holds keys: rows with such a state's lse at
or below $-5 \cdot 10^4 + 126$ (every score of its keys below about $-34570$) are outside this
lemma. There, were that state first, its keys would pass one step more ($f_1$ a rounded
exponential: $2 + G_1$) and the phantom's weight would count. On an H200 (FlashInfer 0.5.0, 2026-11-29)
`merge_states` returned the other state's output for a first state of lse $-\infty$, and for
two such states an output of 0 with lse $-49996.8$ (the phantoms of the kernel's threads
folded, $-5 \cdot 10^4 + \log_2 9$), not $-\infty$.

Follow the term of state $i$. It enters as $f_i$ on the normaliser and
$\mathrm{fl}(\hat o_{id} f_i)$ on the numerator; each later merge $k$ multiplies it by $g_k$,
rounds the product and adds. Where $M$ does not grow at $k$, $g_k = 2^0 = 1$ exactly and the
product is exact. Let $\Gamma_i$ be the $G_i$ merges after $i$ where it grows.

(a) *The incoming lse*, as Lemma 4 (a): $2^{\hat\lambda_i} = 2^{m_i} l_i e^{\eta_i}$ with
$|\eta_i| \le u_{exp} + \tfrac{u_{acc}}{2}(\log l_i + |\hat\ell_i|)$.

(b) *The exponentials.* If state $i$ did not raise the maximum ($M_i = M_{i-1} \ge
\hat\lambda_i$), $f_i = 2^{\hat\lambda_i - M_i} e^{\theta_i}$ with
$|\theta_i| \le u_{exp} + \tfrac{u_{acc}}{2}(M_i - \hat\lambda_i)\ln 2$; if it did, $f_i = 1 =
2^{\hat\lambda_i - M_i}$ exactly. For $k \in \Gamma_i$, $g_k = 2^{M_{k-1} - M_k}e^{\theta'_k}$
with $|\theta'_k| \le u_{exp} + \tfrac{u_{acc}}{2}(M_k - M_{k-1})\ln 2$. The product
telescopes, $f_i \prod_{k \in \Gamma_i} g_k = 2^{\hat\lambda_i - M_K}
e^{\theta_i + \sum_k \theta'_k}$, and since the differences all have one sign their roundings
add up to at most $\tfrac{u_{acc}}{2}(M_K - \hat\lambda_i)\ln 2 \le
\tfrac{u_{acc}}{2}(|\hat\ell_i| + |\hat\ell_{max}|)$: Lemma 4's (b) with $M = M_K$, the
largest lse, plus one $u_{exp}$ per exponential, $1 + G_i$ of them ($G_i$ if state $i$ raised
the maximum).

(c) *The roundings after the weights.* On the numerator: the state's division, the product
$\hat o_{id} f_i$ and one product per $k \in \Gamma_i$, a factor within
$e^{\pm(1 + G_i/2)u_{acc}}$; on the normaliser, one product per $k \in \Gamma_i$, within
$e^{\pm G_i u_{acc}/2}$. (A fused multiply-add rounds once where the model rounds twice.) The
final division is Lemma 2's item 5.

(d) *The sums.* A state's term passes one addition on entering (none for the first: $0 +
\hat o_1$ is exact) and one per later non-empty state, at most $K' - 1$; with its chunk's
$n_i - 1$, at most $N - 1$, as in Lemma 4 (d): $\gamma_N$ holds them.

The state that last raised the maximum (or the first, if none did) entered with $f = 1$ and
was rescaled by nothing after, so $\Lambda_K \ge 1$, as Lemma 4's $\sum_i w_i$; the lse
$\mathrm{fl}(M_K + \widehat{\log_2} \Lambda_K)$ is the lse section's second form with
$\hat Z = \Lambda_K$ (FlashInfer returns it in base 2; the product with $\ln 2$ is the caller's, as
in Lemma 8). Inserting Lemma 2's form of the chunk as Lemma 4 does, the $l_i$ cancels and the result has the
Lemma-1 form over all keys with shift $M_K \ln 2$; the $t$-terms come out multiplied by a
factor at most $e^{|\theta_i| + \sum_k |\theta'_k| + (1 + G_i/2)u_{acc}}$, within the growth
below, as Lemma 4 requires. The growth is at most

$$
(2 + G_i)\,u_{exp} + \bigl(1 + \tfrac{G_i}{2}\bigr)u_{acc}
+ \tfrac{u_{acc}}{2}\bigl(\log l_i + 2|\hat\ell_i| + |\hat\ell_{max}|\bigr),
$$

one $u_{exp}$ less if state $i$ raised the maximum. With $G_i = 0$ that is Lemma 4's growth:
within two steps. Each merge of $\Gamma_i$ adds $u_{exp} + \tfrac{u_{acc}}{2}$ and nothing to
the bracket (the telescoping sum above), against a step's
$u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)$: $2 + G_i$ steps hold it, with at least Lemma 4's
room. If state $i$ raised the maximum and $G_i \ge 1$, its logarithm, its $G_i$ exponentials and
$(1 + G_i/2)u_{acc}$ against $1 + G_i$ steps leave Lemma 4's room less $\tfrac12 u_{acc}$ at
$G_i = 1$: at least $1.4u_{acc}$ wherever the out bound is claimed, with the states' lse errors
$E$ in full (`check_running_fold_growth`; the least, $1.49u_{acc}$, at $A = 256$), and more at
each further growth. A key of the first state
passes at most $\max(2, 1 + (K' - 1)) = K'$ steps, a key of state $i \ge 2$ at most
$2 + (K' - i) \le K'$.

*Underflow.* A weight $f_i$ below $2^{-126}$, flushed or subnormal, is Lemma 4's. A rescale
$g_k$ below $2^{-126}$ multiplies what the fold holds, $\Lambda_{k-1} < e^5 K'$ (each merge
multiplies it by at most $(1 + u_{exp})(1 + \tfrac{u_{acc}}{2})^2$ and adds at most
$1 + u_{exp}$, and $K' < 2^{23}$) and $|O_{k-1,d}| < e^3 \Lambda_{k-1}\max_i |\hat o_{id}|$ (the
numerator's factors against the normaliser's), and errs from the form's value by less than
$2^{-126}$ times that: relatively below $e^5 K' 2^{-126}$ on the normaliser, where
$\Lambda_K \ge 1$, and absolutely below $e^8 K' 2^{-126}\max_i |\hat o_{id}|$ on the numerator, at
most $K' - 1$ times, each then multiplied by later factors below $e^{\rho}$. Over the rescales
and the weights that is below $(3N + 2^{12}K'^2)2^{-126}\frac{e^{2\rho} + \varepsilon}{1 -
\varepsilon}V_d$ on the output and $2^{-71}$ relatively on the normaliser, and Lemma 4's
inequality holds with $3N + 2^{12}K'^2 < 2^{59}$ in place of $3N$ and $2^{-71}$ in place of
$2^{-102}$: its left side is below $2^{-66}e^{2\rho}$, its right side above
$2^{-20.1}e^{2\rho}$. The lse section's $r$ counts the normaliser's underflows as
$N 2^{-125}e^{\rho}$; the flushed rescales' $2^{-71}$ may exceed that, and the lse
accounting's slack, at least $\tfrac12 u_{acc}$ (the lse section), holds it.

*Divisions within 2 ulp.* A quotient $y$ within 2 ulp of the exact one errs relatively by at
most $2u_{acc}$ in the normal range ($\mathrm{ulp}(y) \le 2^{-23}|y|$), against the
$\tfrac{u_{acc}}{2}$ (c) charges for the state's division and the $u_{acc}$ item 5 charges for
the final one. The excess, $\tfrac32 u_{acc}$ and $u_{acc}$, is relative on a state's output or
on the row's, so it multiplies the numerator weights of the keys under it: $\tfrac52 u_{acc}$ on
$\rho$, less than the $u_{exp} + 4u_{acc}$ of one step. Below the normal range the quotient errs
by at most 2 of fp32's smallest subnormal quanta, less than $\tau_{acc}$: one of Lemma 6's
roundings. The divisors are $l_i \in [1, N e^{\rho}]$ and $\Lambda_K \in [1, e^5 K']$, inside the
range where the 2 ulp hold.

*Lemmas 5 and 6.* The fold's output is at most
$e^{2\gamma_{K'-1}}\max_i e^{(1 + G_i)u_{acc}}|\hat o_i|$ (the numerator's factors against the
normaliser's, the final division included), within the $2u_{acc}$ per step that $\rho_\Delta$
gives a key of state $i$ for its $2 + G_i$ steps; with divisions within 2 ulp, the extra
$3u_{acc}$ is within the slack of those steps and the one more step's. Per element the fold
rounds two products and a sum for each non-empty state after the first, $3(K' - 1)$, so with
the parts' $3N - K'$ at most $3N + 2K' - 3 < 5N$ roundings below the normal range (one more,
$3N + 2K' - 2$, where the final division is within 2 ulp), as Lemma 6 counts for Lemma 3; the
factors after them are within $e^{\rho}$. $\blacksquare$

This lemma claims one fold over states held in fp32 (the parts' states), not a tree of folds,
even one whose intermediate outputs stay fp32. Its form and counts would add up over a tree as
Lemma 3's induction adds them, but Lemma 6's count would not: at this lemma's three roundings
per state, plus one division per inner fold that Lemma 6 never counts, a tree of $L$ parts
reaches $3N + 3L - 4$ roundings below the normal range ($44 > 5N = 40$ at $N = L = 8$), and
folds with one non-empty state whose divisions are within 2 ulp add roundings without bound.
Trees of folds, fp32 reads included, are priced through Lemma 10 (an fp32 read is its case
$x_i = \hat o_i$; the $\tau$ per fold that `relaycore.bounds` then charges is conservative, the
$\tau_{acc}$ per fold is what pays for the inner divisions). Intermediate outputs stored in
the input dtype, as in FlashInfer's two-level merge kernels, are another rounding per node,
Lemma 8's kind, which that lemma prices for pairwise merges only: a simulation of such a
kernel (fp16, states of 8 keys and of 1 key folded by 8 threads, then the threads folded, the
values multiples of $2^{-24}$) errs by $1.087 \cdot 2^{-24}$ against the bound's
$1.008 \cdot 2^{-24}$ at this lemma's count of 10 steps (or the tree's 11). Lemma 10 prices
those reads (`check_two_level_stored_folds`). The same steps in natural log ($e^x$ and
$\log$) are covered too, as for Lemma 4.

A left-to-right pairwise fold (Lemma 3) costs the first state's keys $2(K' - 1)$ steps, the
all-at-once fold (Lemma 4) two, the running fold at most $K'$ and two where the maximum never
grows after a key's state. `check_running_fold` runs the fold in the standard model of
rounding and checks every key's growth against its count and against the proof's sharper sum
(which it meets closely: a rescale's rounding counted twice, or its subtraction at $u_{acc}$,
fails it); `check_running_fold_growth` checks the room to first order up to the out bound's
limit on $\rho$, with divisions rounded to nearest or within 2 ulp. `check_running_fold_step_count`
runs whole kernels of up to 8 chunks merged this way, flushed rescales among them, against the
bound at the counted steps: an end-to-end run of the fold through the bound, not a test of
the count, which the bound's slack would hide.

## Lemma 10: running folds of outputs stored in the input format

FlashInfer's `merge_states` on outputs in the input dtype folds stored outputs once; its large
and variable-length merge kernels fold a thread's share of the states, store the result in the
input dtype, and fold the threads' results: a tree of Lemma 9's folds whose incoming outputs are
read from storage. Lemma 8 prices stored reads for pairwise merges, whose coefficients sum to at
most $(1 + \tfrac{u_{acc}}{2})/(1 - u_{acc})$; a fold sums its numerator and its normaliser over
$K'$ states with roundings of their own, and what it does to an absolute term grows with $K'$.

*Claim. Let a tree of running folds in Lemma 9's order (base 2, divisions rounded to nearest or
within 2 ulp) take parts as leaves, each fold's non-empty first state as Lemma 9 asks, and let
a fold read some or all of its incoming outputs as $x_i = \mathrm{fl}_{in}(\hat o_i)$, rounded
to nearest in the input format, the lses in fp32 (an fp32 read is the case
$x_i = \hat o_i$). Let $S$ be the most folds a key passes, each counted whether it reads stored
outputs or fp32 ones (two for FlashInfer's two-level kernels, one for `merge_states`). Then each fold's
output, and the row's before item 5, is $y + h$ with $y$ of the Lemma-1 form that Lemmas 2 and 9
give (Lemma 3's induction over the tree), every numerator weight perturbed by at most $u_p$ more
per stored read its key passes (normaliser weights and the lse exactly as there), within $S u_p$
added to $\rho$ and to $\rho_\Delta$ (`stored = S` in `relaycore.bounds`), and*

$$
|h| \le H^{run}_S = S\,(\tau + \tau_{acc})\, e^{S(u_p + \frac52 u_{acc}) + 3u_{acc}(N - 1)}
$$

*(`stored_merge="running"`); the error bound of Lemma 8 then holds with $H^{run}_S$ in place of
$H_S$. A key passes, for the $\rho$ part, its part's steps and at each fold on its way Lemma 9's
count ($2 + G_i$, at most $K'_v$ for the fold's $K'_v$ non-empty states, none where
$K'_v = 1$ at the root, one where $K'_v = 1$ and a fold above reads the result), one more per fold
with divisions within 2 ulp: at most
$\lceil n_i / b\rceil + (K' - 1) + F$ steps for a key of a part of $n_i$ keys walked in blocks of
$b$, with $K' \ge 2$ non-empty parts and $F$ folds on its way, $F$ more with divisions within 2
ulp; with $K' = 1$, $F - 1$ without them and $F$ with them.*

*Proof.* *The part that keeps the form.* As in Lemma 8, $x_i = (1 + \delta_i)(y_i + h_i) +
\eta_i$, one of $|\log(1 + \delta_i)| \le u_p$ and $|\eta_i| \le \tau$ non-zero, or both zero for
an fp32 read. The fold reads $x_i$ only where Lemma 9 reads $\hat o_{id}$: on the numerator, in
$\mathrm{fl}(x_i f_i)$. Its $M$, $g$, $f$, $\Lambda$ and lse never read it. So Lemma 9's (a)-(d),
its count and its growth hold for the part $(1 + \delta_i) y_i$, whose factor multiplies the
numerator weights of the keys of state $i$ alone, within $e^{\pm u_p}$: $\rho$ grows by $u_p$ per
stored read a key passes, at most $S u_p$, and the normaliser side and the lse section's
accounting are Lemma 9's. An inner fold's result enters the fold above as Lemma 9's states do,
$\hat o = \mathrm{fl}(O / \Lambda)$ and $\hat\lambda = \mathrm{fl}(M + \widehat{\log_2}\Lambda)$
with $\Lambda \ge 1$ in place of $\mathrm{acc}_i / l_i$ (its division is that state's and, as in
Lemma 9 (c), charged to the form at the fold that reads it; the root's is item 5); so the tree
is Lemma 3's induction, each fold a node with $K'_v$
children, and a key's count is the sum of its nodes' counts. On a key's way each fold with
$K'_v \ge 2$ joins its subtree to $K'_v - 1$ others that hold at least one non-empty part each,
disjoint from it and from each other, so $\sum_v (K'_v - 1) \le K' - 1$ over its folds, and
$\sum_v K'_v \le K' - 1 + F$. A fold with $K'_v = 1$ hands on its state's output, but its lse
$\mathrm{fl}(M + \widehat{\log_2} 1)$ has taken a second logarithm, which the fold above may not read as
Lemma 9 (a) does: re-formed with shift $M$ and $\Lambda = 1$, as Lemma 3's merge with an empty side is,
its weights move by its state's $\eta_i$, within the one step its $K'_v = 1$ counts in that sum. At the
root no fold reads it: the lse section's fold with $K' = 1$ takes its two logarithms. So with $K' = 1$
the $F - 1$ folds below the root cost one step each; with divisions within 2 ulp their $F$ steps, each
a division's $\tfrac32 u_{acc}$ on the numerator and nothing on the normaliser, hold those re-forms too
(`check_logarithm_of_one_costs_a_step`). Lemma 3's limit on $\rho$ is checked on the larger $\rho$,
conservatively, as in Lemma 8.

*The absolute rest through one fold.* The numerator is linear in what it reads. Write each
rounding of the fold in the accumulation format as $z(1 + \delta)$, $|\delta| \le
\tfrac{u_{acc}}{2}$ for products and $u_{acc}$ for sums, or $z + \eta$ below the normal range
(Lemma 6's $\eta$, not charged here). Then $O_K = \sum_i c_i x_i + {}$(Lemma 6's terms), with

$$
c_i = f_i (1 + \pi_i) \prod_{k \in \Gamma_i} g_k (1 + \pi'_k) \prod_{k \in \Sigma_i} (1 + \sigma_k),\qquad
\Lambda_K = \sum_i f_i \prod_{k \in \Gamma_i} g_k (1 + \pi''_k) \prod_{k \in \Sigma_i} (1 + \sigma'_k) + \xi,
$$

$\Gamma_i$ the $G_i \le K' - 1$ later growths (elsewhere $g_k = 1$ and the product is exact),
$\Sigma_i$ the $|\Sigma_i| \le K' - 1$ additions the term passes (none for the first state, $0 + x_1 f_1$
with $f_1 = 1$; one on entering and one per later non-empty state for the others; an empty
state's are exact), and $f_i$, $g_k$ the *computed* factors, the same on both sides. Every
$\Lambda_k$ is at least 1 (Lemma 9, and rounding is monotone), so the normaliser's sums are in
the normal range. Its products $\mathrm{fl}(\Lambda_{k-1} g_k)$ may fall below it: $\xi$ collects
their errors, fewer than $K'$ of less than $\tau_{acc}$ each (a flush), each then multiplied by
at most $((1 + u_{exp})(1 + \tfrac{u_{acc}}{2})(1 + u_{acc}))^{K'} \le e^{(u_{exp} + \frac32 u_{acc})K'}$,
so $|\xi| \le \Xi = K'\tau_{acc} e^{(u_{exp} + \frac32 u_{acc})K'}$ ($< 2^{-95}$ in fp32, since
$K' \le N < 1/u_{acc}$ where $\gamma_N$ exists). All factors are non-negative, so with
$W_i = f_i \prod_{k \in \Gamma_i} g_k$

$$
|c_i| \le W_i (1 + \tfrac{u_{acc}}{2})^{1 + G_i}(1 + u_{acc})^{|\Sigma_i|},\qquad
\Lambda_K + \Xi \ge \sum_i W_i (1 - \tfrac{u_{acc}}{2})^{G_i}(1 - u_{acc})^{|\Sigma_i|},
$$

and, as $\Lambda_K \ge 1$, $\Lambda_K + \Xi \le (1 + \Xi)\Lambda_K$. Dividing term by term, the
ratios are at most $(1 + \tfrac{u_{acc}}{2})\,\bigl(\tfrac{1 + u_{acc}/2}{1 - u_{acc}/2}\bigr)^{K' - 1}
\bigl(\tfrac{1 + u_{acc}}{1 - u_{acc}}\bigr)^{K' - 1}$, so

$$
\frac{\sum_i |c_i|}{\Lambda_K} \le (1 + \Xi)(1 + \tfrac{u_{acc}}{2})
\Bigl(\frac{1 + u_{acc}/2}{1 - u_{acc}/2}\Bigr)^{K' - 1}\Bigl(\frac{1 + u_{acc}}{1 - u_{acc}}\Bigr)^{K' - 1} .
$$

The division $\mathrm{fl}(O_K / \Lambda_K)$ multiplies by at most $1 + 2u_{acc}$ (within 2 ulp;
$1 + \tfrac{u_{acc}}{2}$ to nearest), or errs by less than $\tau_{acc}$ below the normal range
(two subnormal quanta, or a flush). The rest $r_i = (1 + \delta_i) h_i + \eta_i$,
$|r_i| \le (1 + u_p)|h_i| + \tau$, reaches the fold's output as $\mathrm{fl}$'s factor times
$\sum_i c_i r_i / \Lambda_K$, so

$$
|h| \le \kappa_{K'}\,\max_i |r_i| + \tau_{acc},\qquad
\kappa_{K'} = (1 + 2u_{acc}) \cdot \bigl(\text{the right side above}\bigr) \le e^{\frac52 u_{acc} + 3u_{acc}(K' - 1)} :
$$

$\log(1 + 2u) + \log(1 + \tfrac{u}{2}) \le \tfrac52 u - 2u^2$, $\log\frac{1 + u}{1 - u} +
\log\frac{1 + u/2}{1 - u/2} \le 3u + u^3$ for $u = u_{acc} \le 2^{-23}$, and
$(K' - 1)u^3 + \Xi < 2u^2$ (`check_stored_fold_factor`, at 60 digits, $K'$ up to $2^{23} - 1$, and
$2^{52} - 1$ with float64 sums). With $K' = 1$ and a division to nearest the fold passes its state on unchanged (a factor of 1, within $\kappa_1$), bit for bit where
nothing is flushed; flushing, its product by $f_1 = 1$ and its division by $\Lambda = 1$ send a
subnormal $x_1$ to 0, an error below $\tau_{acc}$ that the fold's $\tau_{acc}$ below covers. The factor does grow with $K'$: in the standard model a fold of
$K'$ states of equal lse whose numerator sums round up and normaliser sums down reaches
$e^{0.9 u_{acc}(K' - 1)}$ and more, past Lemma 8's $e^{4u_{acc}}$ from $K' = 6$ on
(`check_stored_fold_factor`).

*Over the tree*, by induction: a fold $v$ whose subtree holds $L_v$ non-empty parts and whose
keys pass at most $s_v$ folds up to $v$, $v$ included, has
$|h_v| \le s_v(\tau + \tau_{acc})e^{s_v(u_p + \frac52 u_{acc}) + 3u_{acc}(L_v - 1)}$; a part
has $h = 0$ and $s = 0$ (its division is Lemma 6's). A child $i$ holding keys has $s_i \le s_v - 1$ and
$L_i \le L_v - (K'_v - 1)$; with $1 + u_p \le e^{u_p}$,
$\kappa_{K'_v}((1 + u_p)(s_v - 1)(\tau + \tau_{acc})e^{(s_v - 1)(u_p + \frac52 u_{acc}) + 3u_{acc}(L_v - K'_v)} + \tau)
+ \tau_{acc}$ is at most the claim at $v$. At the root $L \le N$, $s \le S$: $H^{run}_S$. Item 5
multiplies it, as the rest of the error, by at most $1 + u_o$. (The root's division is counted
twice, here and in item 5: conservatively.) $\blacksquare$

*Lemmas 5 and 6.* A stored output is a fold's or a part's output: its $y$ within Lemma 5's
$e^{\rho_\Delta}(1 + \varepsilon)V_d + 2\varepsilon\rho$ (the stored factors within
$e^{S u_p}$, in $\rho_\Delta$), its $h$ within $H^{run}_S$, so (R3) with $H^{run}_S$ among the
underflows keeps it finite, as in Lemma 8. A fold's partial sums $O_k = \sum_i c_i x_i$ have
$|c_i| \le e^{\rho}$ ($f_i, g_k \le 1 + u_{exp}$ and their roundings lie within the key's
$\rho$) over at most $N$ states: `out_bound` checks $N e^{\rho}$ times the output's size against
$\Omega_{acc}$ for these folds, besides (R2). The normaliser and lses are Lemma 9's. For Lemma 6,
each non-empty state after a fold's first rounds, as in Lemma 9, two products and a sum (a
product by a factor of exactly 1 is not exact in this model, which flushes subnormal operands:
a subnormal $o$ times 1 flushes to 0). The first state's product by $f_1 = 1$ may flush a
subnormal $x_1$ too: that is the read's $\eta$, $|\eta| \le \tau$ (for an fp32 read as well:
$\tau$ is then fp32's smallest normal, `relaycore.bounds.UNDERFLOW_ABS`). Over the tree those states number $L - 1$ for $L$
non-empty parts ($\sum_v (K'_v - 1)$, each fold joining $K'_v - 1$ subtrees to its first), so
with the parts' $3N - L$ the count is at most $3N - L + 3(L - 1) = 3N + 2L - 3 \le 5N - 3 < 5N$.
The folds' divisions are not among them: each fold's $\tau_{acc}$ is in $H^{run}_S$. A fold with
one non-empty state passes it on bit for bit only without flushing; its flush error (below
$\tau_{acc}$, the product and division by 1 sending a subnormal to 0) is that fold's $\tau_{acc}$
in $H^{run}_S$. The factors after
Lemma 6's roundings now include the stored roundings', within $e^{S u_p}$ and so within
$e^{\rho}$. $\blacksquare$

*FlashInfer's start, in a tree.* Each thread's own fold starts from Lemma 9's phantom and is
covered by Lemma 9's paragraph on it, under its condition (every state that holds keys of lse
above $-5 \cdot 10^4 + 126$). `threadblock_sync_state` folds all `bdy` threads' results, those
of threads with no index set, or only empty ones, included. Such a thread folds nothing or only
states $(0, -\infty)$, which leave its phantom as it was ($g = \widehat{\exp_2}(0) = 1$, $f = 0$),
and it hands on $(0, \lambda_0)$ with $\lambda_0 = \mathrm{fl}(-5 \cdot 10^4 + \mathrm{fl}(\widehat{\log_2} 1))
= -5 \cdot 10^4$ (the logarithm errs by at most $2^{-21}$, below half an ulp of $5 \cdot 10^4$,
$2^{-9}$). A non-empty thread's lse, $\mathrm{fl}(M_t + \mathrm{fl}(\widehat{\log_2}\Lambda_t))$
with $\Lambda_t \ge 1$, is at least its largest state's lse up to a rounding that is none near
$-5 \cdot 10^4 + 126$ (an ulp there is $2^{-8}$), so the threads' results meet the condition too.
Now the outer fold. A phantom *before* its first non-empty state leaves $O = 0$ and
$\Lambda = 1 + p$ for $p \le$ `bdy` of them ($f = g = 2^0 = 1$ each); that state's rescale
$g \le 2^{-126 - 2^{-8}}(1 + u_{exp}) < 2^{-126}$ gives $\mathrm{fl}(\mathrm{fl}((1 + p)g) + \mathrm{fl}(1 \cdot 1)) = 1$
(`ex2.approx.ftz` makes $g = 0$; kept, $(1 + p)g < 2^{-25}$ is below half an ulp of 1, and a
truncating sum drops it too) and $O = \mathrm{fl}(\mathrm{fl}(0 \cdot g) + \mathrm{fl}(x_1 \cdot 1))$:
the fold from a non-empty first state that this lemma takes, bit for bit. A phantom *after* a
non-empty state finds $M_i = M_{i-1}$, so $g = 2^0 = 1$ and
$f = \widehat{\exp_2}(\mathrm{fl}(\lambda_0 - M_i)) < 2^{-126}$; then
$\Lambda = \mathrm{fl}(\mathrm{fl}(\Lambda \cdot 1) + \mathrm{fl}(1 \cdot f)) = \Lambda$ ($\Lambda \ge 1$
and $f$ below half its ulp, or 0 where flushed) and
$O = \mathrm{fl}(\mathrm{fl}(O \cdot 1) + \mathrm{fl}(0 \cdot f)) = O$. The product by 1 is exact:
where the hardware keeps subnormals, $O \cdot 1 = O$ whatever $O$ is; where it flushes, it
flushes results and operands alike (the precision model), and $O$ is the result of a rounding in
the accumulation format (or the 0 it starts from), so it is 0 or normal and nothing is flushed.
(The stored reads $x_i$ are operands that may be subnormal; their flush is the read's $\eta$,
counted above, and a phantom's output is 0.) So empty parts and empty threads, before or after
non-empty ones, change nothing, bit for bit up to the sign of a zero: $O = -0$, from a stored
$-0$ or a flushed negative product, becomes $\mathrm{fl}(-0 + 0 \cdot f) = +0$ after a phantom.
FlashInfer's tree computes what the folds from $-\infty$ that leave them out compute. So this
lemma covers its two-level kernels with them, under Lemma 9's condition, at the counts above and
with no term for them: they add no rounding below the normal range. Even hardware that flushes
operands but keeps results
(x86's DAZ without FTZ), which the precision model leaves out, would flush a subnormal $O$ at
the phantom's product only where the next use of $O$ (the next state's product $O g$, or the
division) reads it as 0 anyway: the phantom moves that flush earlier and changes no result.
`check_flashinfer_start_in_trees` runs the trees from $-5 \cdot 10^4$, every part and every
thread's result folded, against the folds from $-\infty$ that leave the empty ones out: the same
outputs, lses and counts, bit for bit, subnormals flushed or kept by the arithmetic and by
`exp2`, bf16 outputs below fp32's normal range among them.

With $N$ at most $2^{23}$ keys the factor $e^{3u_{acc}(N - 1)}$ is below $e^3$; it is 1 to
within $10^{-3}$ up to $N = 2^{11}$. `two_level_example` (fp16, all scores
0, values multiples of $2^{-24}$, nine parts of 8, 1, ..., 1, 8 keys folded by 8 threads, thread 0
folding the first and the last) errs by $1.087 \cdot 2^{-24}$; without the stored term the
bound is $1.008 \cdot 2^{-24}$ at 10 or 11 steps, and with $S = 2$, `stored_merge="running"`, it
is $2.02 \cdot 2^{-24}$ (`check_two_level_stored_folds`). Not covered: an all-at-once fold
(Lemma 4) of stored outputs, not proved here though its factor would be the same kind.
FlashInfer's split-KV decode, which merges unnormalised $(o, m, d)$ states within a block
(`sync_state`) before it normalises and stores its chunks, is this lemma's tree over the parts
Lemma 11 describes.

## Lemma 11: a split-KV decode chunk is a part walked in groups

FlashInfer 0.5.0's decode kernels (`SingleDecodeWithKVCacheKernel` and
`BatchDecodeWithPagedKVCacheDevice` in `include/flashinfer/attention/decode.cuh`, the default
variant: no RoPE in the kernel, no logits soft-cap, ALiBi, custom mask or sliding window, q, k
and v in one dtype) walk a query row's chunk of $n \ge 1$ keys with $Z$ = `bdz` groups of
threads (`threadIdx.z`) in iterations of $TZ$ slots, $T$ = `bdy * tile_size_per_bdx` ($Z$, $Z'$
and $T$ count groups and slots here and in Lemmas 12 and 13, not the normalisers of Lemmas 1 and
3). `partition_kv` cuts the row's $N$ keys into chunks of $C$: chunk $i$ holds its keys $iC$ to
$\min((i + 1)C, N) - 1$. In iteration $t$ group $z$ takes the
slots $tTZ + zT, \dots, tTZ + (z + 1)T - 1$, a block of its own running state. A slot at or past
the chunk's end is masked: score $-5 \cdot 10^4$ (`math::inf`), value 0 (`kFillZero`). Each
group starts from `state_t::init`, $(o, m, d) = (0, -5 \cdot 10^4, 1)$, and at each block
(`compute_qk`, `update_local_state`) computes

$$
\hat s_j = \mathrm{fl}(\mathrm{fl}(q \cdot k_j)\, c_2),\quad
m' = \max(m, \max_j \hat s_j),\quad a = \widehat{\exp_2}(\mathrm{fl}(m - m')),\quad
p_j = \widehat{\exp_2}(\mathrm{fl}(\hat s_j - m')),
$$

$d \leftarrow \mathrm{fl}(d a)$, then $d \leftarrow \mathrm{fl}(d + p_j)$ slot by slot;
$o \leftarrow \mathrm{fl}(o a)$, then $o \leftarrow \mathrm{fl}(o + \mathrm{fl}(p_j v_j))$ slot by
slot, with $c_2 = \mathrm{fl}(\mathrm{fl}(c)\,\mathrm{fl}(\log_2 e))$ (`sm_scale_log2`) and the
weights $p_j$ in fp32, not rounded to the input format. With $Z > 1$, `sync_state` stores every
group's $(o, m, d)$ in fp32 and folds them, unnormalised, in group order from
$(O, M, \Lambda) = (0, -5 \cdot 10^4, 1)$ by `state_t::merge`$(o_z, m_z, d_z)$:

$$
M' = \max(M, m_z),\quad f_1 = \widehat{\exp_2}(\mathrm{fl}(M - M')),\quad
f_2 = \widehat{\exp_2}(\mathrm{fl}(m_z - M')),\quad
\Lambda \leftarrow \mathrm{fl}(\mathrm{fl}(\Lambda f_1) + \mathrm{fl}(d_z f_2)),\quad
O \leftarrow \mathrm{fl}(\mathrm{fl}(O f_1) + \mathrm{fl}(o_z f_2)).
$$

The chunk's output is $\hat o = \mathrm{fl}(O \cdot \widehat{\mathrm{rcp}}(\Lambda))$
(`OutputTransform`, `rcp.approx`), stored in the output dtype (`tmp_v`), its lse
$\hat\lambda = \mathrm{fl}(M + \widehat{\log_2}\Lambda)$ in fp32 (`tmp_s`); `VariableLengthMergeStates`
then folds a row's chunks (`PersistentVariableLengthMergeStatesKernel`, Lemma 10's two-level
kernel; a row of one chunk is copied). The weights' exponential is `ex2.approx.ftz`, which flushes
a result below $2^{-126}$ to 0. FlashInfer compiles with `-use_fast_math`: its fp32 arithmetic
flushes subnormal results and operands (the precision model's flushing arithmetic), and the
compiler may contract a product and the sum it feeds ($o a + p_j v_j$, $d a + p_j$, `merge`'s
sums) into one fused multiply-add, which rounds once where the display rounds twice: a subset of
the roundings below, which every bound here holds with (Lemma 9 (c)), and which changes none of
the exact steps the proof uses (a product by 0 or 1, a sum with 0).

*Claim. Let every score $\hat s_j$ the kernel computes for a key of the chunk exceed
$-5 \cdot 10^4 + 126$ (in natural units every score above about $-34570$: $A < 34500$ suffices),
and let the exponential flush results below $2^{-126}$ to 0, as `ex2.approx.ftz` does.
Then the chunk's $M$, $\Lambda$ and $O$ are, bit for bit up to the sign of a zero in $O$, those
of the same walk from $m = -\infty$ that leaves out the masked slots and the groups that hold no
key. They have Lemma
2's form over the chunk's $n$ keys with shift $M \ln 2$ and normaliser $\Lambda \ge 1$, and a key
passes at most*

$$
\nu_{chunk} = I + Z' - 1,\qquad I = \lceil n / (TZ) \rceil,\quad Z' = \min(Z, \lceil n / T \rceil)
$$

*steps: its own exponential, at most $I - 1$ rescales in its group and at most $Z' - 1$ factors
of `sync_state`. $\nu_{chunk} \le \lceil n / T \rceil$, the count of one running state walking
the chunk $T$ keys a block. The walk from $-\infty$ has that form and count with no condition on
the scores and with an exponential that flushes or keeps subnormals.*

*Proof.* *The phantoms.* A running maximum that has met a key is at least that key's score, so
above $-5 \cdot 10^4 + 126$; near that value an fp32 number is a multiple of $2^{-8}$, so
$\mathrm{fl}(-5 \cdot 10^4 - m) \le -126 - 2^{-8}$ (the subtraction rounds monotonically and
$-126 - 2^{-8}$ is a float) and the exponential, within $1 + u_{exp}$ of
$2^{-126 - 2^{-8}}$, is below $2^{-126}$ and flushed: 0. So (i) a group's first block that holds
a key has $a = 0$, and $d = \mathrm{fl}(1 \cdot 0) = 0$, $o = \mathrm{fl}(0 \cdot 0) = 0$, as from
$-\infty$ ($a = 2^{-\infty} = 0$). (ii) In a group that has met a key a masked slot has $p = 0$,
leaves $m$, and its $\mathrm{fl}(d + 0) = d$, $\mathrm{fl}(o + \mathrm{fl}(0 \cdot 0)) = o$; a block
of masked slots only has $a = 2^0 = 1$, and $d \cdot 1$, $o \cdot 1$ are exact, $d$ and $o$ being
results of the arithmetic (0 or normal where subnormals are flushed, Lemma 10). (iii) A group
with no key (only where $I = 1$) ends as $(o, m, d) = (0, -5 \cdot 10^4, 1 + T)$ ($a = p = 2^0 = 1$). In
`sync_state` such groups before the first group with a key leave $O = 0$ and
$M = -5 \cdot 10^4$; that group, $z$, has $f_1 = 0$ and $f_2 = 2^0 = 1$, so
$\Lambda = \mathrm{fl}(\mathrm{fl}(\Lambda \cdot 0) + \mathrm{fl}(d_z \cdot 1)) = d_z$ and $O = o_z$; after
it they have $f_1 = 2^0 = 1$, $f_2 = 0$ and change nothing. That is the fold from $M = -\infty$
over the groups that hold keys, the first entering with $f_1 = 2^{-\infty} = 0$, $f_2 = 1$. With
$Z = 1$ there is no `sync_state`. (The sign of a zero: a group's $o$ may be $-0$, a negative
product flushed to zero, and a masked slot's $\mathrm{fl}(-0 + 0 \cdot 0)$ is $+0$: equal values,
different bits, and the same output once divided and stored, up to that sign.)

*The form.* Follow key $j$ of group $z$, in its block $t$. Its numerator term is
$\mathrm{fl}(p_j v_j)$ (fp32 weights: the product's rounding, $\tfrac{u_{acc}}{2} \le u_p$, takes
item 2's slot, as Lemma 2 says of the PyTorch backend), its normaliser term $p_j$. After that,
every operation on a sum that holds it is an addition or a product by a rounded factor
$\widehat{\exp_2}(\mathrm{fl}(x - y))$, $x$ and $y$ computed scores (a running maximum is one of
them). The additions: its own (none for its group's first key, added to 0: exact) and one per
later slot of its group that holds a key, at most $n_z - 1$ for the $n_z$ keys of its group; in
`sync_state` one when its group enters (none for the first group with keys, $0 + o_z$) and one
per later group with keys, at most $Z' - 1$. In all at most $n_z + Z' - 2 \le n - 1$, since the
other $Z' - 1$ groups hold a key each: a chunk's $n_i - 1$ of Lemma 4 (d), which item 3's
$\gamma_N$ holds with the merges' additions. The factors: $a$ of each later block of its group in which the row sees a key (a block
with none has $a = 2^0 = 1$, exact, above), at most $I - 1 - t$; in `sync_state`, $f_2$ of its
group unless $m_z = M'$ ($2^0$, exact), which happens for the first group with keys, and $f_1$ of
each later group with keys that raises $M$ (else $2^0$). A key of the $r$-th group with keys
($r = 0, 1, \dots$) meets $f_2$ at most once, only if $r \ge 1$, and $f_1$ at most $Z' - 1 - r$
times: at most $Z' - 1$ factors of `sync_state` in all. Each factor is item 4's rescale: one
exponential of an argument $x$ with $|x| \le 2A(1 + \gamma_{D+6})$ in natural units, its rounding
$\tfrac{u_{acc}}{2}|x|$, and one product on each side, $\tfrac{u_{acc}}{2}$: within one step
$u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)$, with no telescoping used. The key's own
exponential and items 1-3 are Lemma 2's. So $(O, \Lambda)$ have Lemma 2's form with
$\nu = 1 + (I - 1) + (Z' - 1)$. And $\Lambda \ge 1$: the key that attains $M$ entered with
$p = 2^0 = 1$, every later factor of the sums that hold it is $2^0$ (no later maximum is larger),
and a sum of non-negative terms rounded to nearest or truncated is not below its largest. Last,
$\nu_{chunk} \le \lceil n/T \rceil$: with $I = 1$, $Z' = \lceil n/T \rceil$; with $I \ge 2$,
$Z' = Z$ and $\lceil n/T \rceil - (I + Z - 1) \ge (I - 1)Z + 1 - (I + Z - 1) = (I - 2)(Z - 1) \ge 0$.

*The scale.* $c_2$ takes three roundings ($c$ and $\log_2 e$ to fp32, their product), within
$\tfrac32 u_{acc}$ relatively up to second order, where item 1 counts $\tfrac{u_{acc}}{2}$ for the
base-2 form's constant: the extra $u_{acc} A$ is within the $4u_{acc}A$ item 1 leaves. The dot
product (each thread's sum of `vec_size` products, then a butterfly over `bdx` threads) is a sum
in some order: item 1's $\gamma_D$.

*The chunk's output and lse.* `rcp.approx` is within 1 ulp, and the product rounded to nearest:
within $2u_{acc}$ relatively, a division within 2 ulp of Lemma 9. The lse
$\mathrm{fl}(M + \widehat{\log_2}\Lambda)$ is Lemma 4's incoming lse with $m_i = M$,
$l_i = \Lambda \in [1, n e^{\rho}]$. So the chunk enters `VariableLengthMergeStates` as one of
Lemma 10's parts, its output stored in the output dtype: the whole split-KV decode is Lemma 10's
tree over these parts, a key passing at most $\nu_{chunk} + (K' - 1) + F$ steps, $F$ more for the
divisions within 2 ulp ($F = 2$ folds), with $S = 2$ and `stored_merge="running"`; the merge
kernel's threads with no chunk hand on phantoms, which change nothing (Lemma 10). A row of one
chunk is written by the decode kernel or copied by the merge kernel: one part,
$\nu_{chunk} + 1$ steps (its division within 2 ulp is item 5's, Lemma 9), no stored term.
$\blacksquare$

*Lemmas 5 and 6.* A sum that holds keys is bounded as Lemma 5's accumulators: factors within
$e^{\rho}$ over at most $n$ keys. Every factor multiplies the numerator and the normaliser by the
same computed value, with one rounding on each side, $2u_{acc}$ per step, as $\rho_\Delta$ takes
it. For Lemma 6 the chunk rounds $n$ products $\mathrm{fl}(p_j v_j)$, at most $n - Z'$ additions in
its groups (the first to a group's empty sum is exact), at most $n - Z'$ rescales of $o$ (a group
whose keys fill $B_z$ blocks rescales $B_z - 1$ times, and $\sum_z B_z \le n$), $3(Z' - 1)$ in
`sync_state` (two products and a sum per group with keys after the first) and its division: at
most $3n + Z' - 2$, where Lemma 6 counts $3n - 1$ for a part. Masked slots and phantoms round
nothing (above). Over Lemma 10's tree of $L$ chunks that is
$3N + \sum_i Z'_i - 2L + 3(L - 1) \le 4N + L - 3 \le 5N - 3 < 5N$ ($\sum_i Z'_i \le N$), and
$3n + Z' - 2 < 5n$ for one chunk alone: Lemma 6's $5\varepsilon_{acc}$ holds.

*What is not covered.* The tensor-core decode (FlashInfer runs it through its prefill kernels),
the MLA decode kernel (`BatchDecodeWithPagedKVCacheKernelMLA`), RoPE applied in the kernel,
logits soft-cap, ALiBi, a custom or sliding-window mask (masked keys inside the chunk, whose
values are not 0), KV in another dtype than q (fp8), and, from FlashInfer's start, an exponential
that keeps subnormals (then $a$ and the masked slots' weights are not 0, and the phantom's $d = 1$
leaves a trace of up to $2^{-126}$ in $d$ that this proof does not price; from $-\infty$ any
exponential of the precision model is covered).

*Later FlashInfer.* Lemmas 8-11 quote FlashInfer 0.5.0 (tag `v0.5.0`, commit `5854494`); every
release tag to `v0.6.18rc7` and every nightly tag to `nightly-v0.6.18-20260819` has the same
`state.cuh`, `math.cuh`, `cascade.cuh` and decode arithmetic (the decode's `OutputTransform` also
multiplies by a `v_scale`, exact where it is 1, its default). Commit `d7f2c64` changed it: Lemma 13.

`check_decode_chunks` checks it: in the standard model of rounding (`decode_chunk_growth`) every
key moves by at most the proof's sharper sum, within its count, and its count within
$\nu_{chunk}$, which the first group's first key attains when every group raises the maximum;
that key, all roundings up, moves by 3.07 steps in a chunk of 8 groups of one slot and by 5.92
in one of 16, where a count that did not grow with the groups ($I$ plus Lemma 4's 2, here 3)
allows 3. End to end, `decode_example` (fp32, 64 groups of one slot, scores rising by
$2^{-10}$ from group to group, every exponential and logarithm erring by its largest positive
error) errs in its lse by $191.6 \cdot 2^{-24}$, past `lse_bound` at $I = 1$ step
($185.4 \cdot 2^{-24}$) and within it at $\nu_{chunk} = 64$ ($1725.2 \cdot 2^{-24}$). At 2 steps
the bound is already $209.9 \cdot 2^{-24}$ (its $\gamma_N$ and slack hide the rest), so this run
shows that one step is too few, not that 64 are needed: the growth with the groups is what the
standard-model run above shows. (`stored_fold_counts`, the count the drawn decodes below are
priced at, gives it 64.) A key at the condition's edge (natural score $-34570$, base 2
$-49873.97$) with 63 masked slots after it and a second group of 64 masked slots, and
Hypothesis-drawn chunks, from FlashInfer's start with a flushing `exp2`, compute bit for bit what
the walk from $-\infty$ computes (from a phantom at $-49900$ the edge's second group would add
$65 \cdot 2^{-26}$ to $\Lambda$), and whole split-KV decodes (chunks stored in the input dtype,
one fold or a two-level merge from FlashInfer's start) stay within `out_bound` at Lemma 10's
counts with $\nu_{chunk}$ per chunk, and within `lse_bound`.

## Lemma 12: a request's KV chunked across its segments

FlashInfer's paged decode reads a request's KV through its page list; where a relay batch shares its
prefixes through the page table, that list holds the pages of each prefix the request reads, in
level order, then those of its own KV. FlashInfer reads every page of a list but the last as full (a
request's length is $(p - 1)P$ plus its last page's keys, for $p$ pages of $P$ slots), so a prefix
shared through its own pages is a whole number of pages long, or its last keys are held in the
request's own pages (as a cache that shares only whole pages keeps them), read in the same order. A
list whose prefix page has empty slots, which FlashInfer would read as keys, is not a relay layout
and is not modelled. The split-KV decode (`partition_kv`, Lemma 11) cuts the list, read as one
sequence of keys, into chunks of $C$ keys from its first key (its planner takes $C$ as a whole
number of pages, $C/P$ of them, and gives a request $\lceil p / (C/P) \rceil$ chunks, which is $\lceil N / C \rceil$ for its
$N$ keys, since $(p - 1)P < N \le pP$; nothing below uses more). A chunk may then hold a prefix's
last keys and the next segment's first ones, where `blocked_steps(chunk=C)` cuts each segment from
its own first key.

*Claim. Let a query row see, in this order, the $N_1, N_2, \dots$ keys of the prefixes its
request reads, level by level, and then the first keys of its own KV (a decode row: all of them),
$N \ge 1$ keys in all, and let its request's sequence be cut into chunks of $C$ keys from its
first key: $K' = \lceil N / C \rceil$ chunks hold keys the row sees, chunk $i$ the row's keys $iC$
to $\min((i + 1)C, N) - 1$, $n_i$ of them, the first ones of the chunk. Let every chunk be a part
whose keys pass at most $\nu(n_i)$ steps in it, with $\nu(n) = \lceil n / b \rceil$ for Lemma 2's
running state in blocks of $b$ keys, or $\nu(n) = \lceil n / (TZ) \rceil + \min(Z, \lceil n / T
\rceil) - 1$ for Lemma 11's chunk (a decode row, under its condition), and let the chunks' states be
combined as Lemmas 3, 4, 9 or 10 combine parts. Then each of those lemmas holds for the row with
its count over these $K'$ parts; through Lemma 10's tree of running folds, $F$ of them on a key's
way, a key passes at most*

$$
\nu(\min(C, N)) + \begin{cases} K' - 1 + F & K' \ge 2 \\ 0 & K' = 1 \end{cases}
$$

*steps, $\max(F, 1)$ more with divisions within 2 ulp: the count of the row's $N$ keys read as one segment
and cut into chunks of $C$, which `blocked_steps(..., chunk=C, chunk_from="request")` returns.
Where every $N_l$ is a multiple of $C$, these chunks are those of each segment cut from its own
first key and the counts are equal; otherwise either count may be the larger.*

*Proof.* No lemma asks which segment a key comes from. Lemma 1's form and the bounds are sums
over the row's keys, with $N$, $A$ and $V_d$ taken over all of them, and the reference is the
exact attention over the same keys, scores and values (the relay identity). Lemma 2 takes a part
as the keys one running state walks from the part's first key in blocks (the last may be short),
Lemma 11 as a run of slots of the kernel's list, masked past the chunk's end; a chunk that holds a
prefix's tail and the next segment's head is both, its keys in the list's order. So chunk $i$ is a
part of $n_i$ keys that pass at most $\nu(n_i)$ steps in it, and Lemmas 3, 4, 9 and 10 take such
parts whatever keys they hold. $\nu$ does not decrease with $n$ (neither $\lceil n/b \rceil$,
$\lceil n/(TZ) \rceil$ nor $\min(Z, \lceil n/T \rceil)$ does), and $n_i \le n_0 = \min(C, N)$, so no
chunk's count is above the first's. Over Lemma 10's tree of $K' \ge 2$ non-empty parts a key adds
at most $K' - 1 + F$, $F \ge 1$ more with divisions within 2 ulp; with $K' = 1$, nothing but those
divisions (Lemma 11: one chunk, $\nu + 1$ with its division within 2 ulp, though it may pass no fold). The
same keys read as one segment of $N$ keys and cut from its first key give the same chunks, so the
same count. If every $N_l$ is a multiple of $C$, every segment starts at a multiple of $C$, so
every chunk lies in one segment and is a chunk of that segment cut from its own first key: the
same parts. Otherwise a chunk holds keys of two segments: a prefix of 96 keys and 96 own in chunks
of 128 are cut into 128 and 64 keys where cut per segment they give two chunks of 96, and with
$T = Z = 4$, $F = 2$ and divisions within 2 ulp the counts are $11 + 3 + 2 = 16$ against
$9 + 3 + 2 = 14$; a prefix of 10 keys and 10 own give one chunk of 20 against two of 10,
$5 + 0 + 2 = 7$ against $3 + 3 + 2 = 8$. $\blacksquare$

`check_request_chunks` checks it. `request_example` (fp32, the 96 + 96 keys above, scores that make
every block and every group of the first chunk raise the maximum, FlashInfer's start and flushing
`exp2`, its two-level merge over 8 threads): the first key passes 11 exponentials in its chunk as
the walk counts them, where Lemma 11 allows any chunk of 96 keys 9; the tree's count, 16 (a step for
each thread's fold of one chunk that the fold above reads, Lemma 10), is above the count per segment
(14) and the lemma's 16, and the run within `out_bound` and `lse_bound`
at it. Over every row of up to 12 keys in two prefixes and its own, chunks of 1 to 8, blocks of 1 to
4 slots and 1 to 4 groups, the two counts are equal where both prefixes are whole numbers of chunks,
and each is the larger for some rows. FlashInfer's count of a request's chunks in pages,
$\lceil p / (C/P) \rceil$, is $\lceil N / C \rceil$ for pages of 1 to 8 slots, chunks of 1 to 4 pages
and lists of 1 to 12 pages, every last page's length. Hypothesis-drawn rows (fp16, bf16, fp32, one
fold or two-level merges, divisions to nearest or within 2 ulp) cut from their first key stay within
the bounds at the lemma's count, which Lemma 10's count of their tree reaches in some draws and
never passes, every key within its chunk's $\nu$.

## Lemma 13: FlashInfer from its IEEE start

FlashInfer's commit `d7f2c64` ("handle extreme negative logits in masked softmax", #4401,
2026-08-20, on its main branch; in no release or nightly tag as of `fb28d72`, 2026-08-22, and
its `version.txt` reads 0.6.18 on both sides of it, as it does from 2026-08-06) changed the
arithmetic that Lemmas 8-12 read (Lemma 8's pairwise merges in the last item only):

* `math::inf` (`include/flashinfer/math.cuh`) is IEEE's infinity, no longer $5 \cdot 10^4$: every
  `state_t` starts from $(o, m, d) = (0, -\infty, 1)$, a masked decode slot scores $-\infty$;
* `state_t::merge` (`include/flashinfer/attention/state.cuh`) takes
  $f_1 = \widehat{\exp_2}(\max(M - M', -\infty))$ and $f_2 = \widehat{\exp_2}(\max(m_z - M', -\infty))$
  (Lemma 11's names):
  CUDA's `max` (`fmaxf`) returns the operand that is not NaN, so the NaN of $-\infty - (-\infty)$
  becomes $2^{-\infty} = 0$, and a finite difference passes unchanged;
* the decode's `compute_qk` (`include/flashinfer/attention/decode.cuh`) subtracts
  $m_{scaled} = \max(m', -\Omega_{acc})$ in place of Lemma 11's $m'$ ($\Omega_{acc}$ = `FLT_MAX`,
  fp32's largest finite value) in its rescale and weights, which differs from $m'$
  only in a block where $m' = -\infty$ (no key so far);
* `state_t::normalize` computes $d_{rcp}$ = `(d > 0) ? __fdividef(1, d) : 0`, then
  $\mathrm{fl}(o\, d_{rcp})$, where it computed `__fdividef(o, d)`;
* `MergeStateKernel` and `MergeStateInPlaceKernel` (`cascade.cuh`, the pairwise merges of Lemma 8)
  clamp their two exponents alike and weigh by 0 where the weights' sum is 0.

The decode's `OutputTransform` (`rcp.approx`, guarded by $m \ne -\infty$), `sync_state`, the
merge kernels' order and `get_lse` are unchanged. `__fdividef(x, y)` is within 2 ulp for
$2^{-126} \le |y| \le 2^{126}$ and 0 for $2^{126} < |y| < 2^{128}$ (CUDA's documentation).

*Claim. In FlashInfer from `d7f2c64` on, with the default decode variant of Lemma 11: (i) a
split-KV decode chunk computes, bit for bit up to the sign of a zero, the walk from $-\infty$ of
Lemma 11 that leaves out the masked slots and the groups that hold no key, for any scores and any
exponential of the precision model (flushing or keeping subnormals); so Lemma 11's form and count
$\nu_{chunk}$ hold with no condition on the scores. (ii) A running fold of `state_t::merge` over
states of which any, the first included, may be empty computes, bit for bit up to the sign of a
zero, the fold from $-\infty$ over the
non-empty ones (Lemma 9's, no non-empty first state asked), and $(0, -\infty)$ where none holds a
key; a thread of the two-level kernels with no index set, or only empty ones, hands on
$(0, -\infty)$. (iii) Its `normalize`, a reciprocal within 2 ulp and a product rounded to nearest,
costs what Lemmas 9 and 10 charge a division within 2 ulp: one step more per fold a key passes,
and Lemma 10's $H^{run}_S$ unchanged. So Lemmas 9, 10 and 12 hold for these kernels, with no
condition on the scores, at the counts of `blocked_steps(..., chunk=C, chunk_from="request",
merge="running", levels=2, fast_division=True, groups=Z)` and the term of
`stored_merges(batch, merge="running", levels=2)`, `stored_merge="running"`, as for 0.5.0.*

*Proof.* (i) In a group's block with no key so far, $m' = -\infty$, $m_{scaled} = -\Omega_{acc}$, and
every argument is $-\infty - m_{scaled} = -\infty$ (the rescale, $m = -\infty$,
and the masked slots): $2^{-\infty} = 0$ exactly, since an exponential within $u_{exp}$
relatively is 0 at $-\infty$ (`ex2.approx` returns $+0$ there, flushing or not). So $d =
\mathrm{fl}(1 \cdot 0) = 0$, $o = \mathrm{fl}(0 \cdot 0) + \mathrm{fl}(0 \cdot 0) = 0$ (the
masked values are 0, `kFillZero`). In its first block with a key $m_{scaled} = m'$ is finite, the
rescale is $2^{-\infty} = 0$ again, and a masked slot's weight is $2^{-\infty} = 0$; in later
blocks a masked slot's weight is $2^{-\infty}$ and a block of masked slots only has $a = 2^0 =
1$: Lemma 11's (i) and (ii) with $-\infty$ in place of $-5 \cdot 10^4$, with no flush needed and
so no condition. A group with no key ends as $(0, -\infty, 0)$ ($d = 1 \cdot 0$). In
`sync_state`, from $(0, -\infty, 1)$: such groups before the first group with keys give $f_1 =
f_2 = 2^{-\infty} = 0$ (the clamp), $\Lambda = 0$, $O = 0$; that group gets $f_1 = 0$, $f_2 = 2^0
= 1$, so $\Lambda = d_z$, $O = o_z$ (up to the sign of a zero); after it, $f_1 = 1$, $f_2 = 0$,
and the products by 1 are exact (Lemma 10: $O$ and $\Lambda$ are results, 0 or normal where the
arithmetic flushes). That is the fold from $-\infty$ over the groups with keys. The chunk's output
and lse are Lemma 11's.

(ii) Where both $M$ and $m_z$ are finite the clamp changes nothing: Lemma 9's fold. A fold
that has met no key has $M = -\infty$; an empty state $(0, -\infty)$, merged as $(0, -\infty, 1)$,
then gives $f_1 = f_2 = 0$: $\Lambda = 0$, $O = 0$. The first non-empty state finds $f_1 =
2^{-\infty} = 0$ and $f_2 = 2^0 = 1$: $\Lambda = \mathrm{fl}(\mathrm{fl}(\Lambda \cdot 0) + 1) = 1$
and $O = \hat o_1$, what Lemma 9's fold from $\Lambda_0 = 1$ gives ($\mathrm{fl}(1 \cdot 0) + 1$).
An empty state after a non-empty one is Lemma 9's: it changes nothing. With no non-empty state,
`normalize` gives $d_{rcp} = 0$ where $\Lambda = 0$ and $0 \cdot d_{rcp} = 0$ where no state came
($\Lambda = 1$); `get_lse` gives $-\infty + \widehat{\log_2}\Lambda = -\infty$ either way
(`lg2.approx` of 0 is $-\infty$). So the two-level kernels' threads without keys hand on
$(0, -\infty)$, the empty state, which the fold above leaves out as above: Lemma 10's tree over
the non-empty parts, with no phantom and no condition. Lemma 12 takes its chunks as parts of
these folds and is unchanged.

(iii) $\Lambda \in [1, e^5 K']$ wherever the fold holds a key (Lemma 9), so the reciprocal is
within 2 ulp: $d_{rcp} = \Lambda^{-1}(1 + \delta_r)$, $|\delta_r| \le 2u_{acc}$, a normal number.
Then $\mathrm{fl}(O\, d_{rcp}) = (O/\Lambda)(1 + \delta_r)(1 + \delta_m)$, $|\delta_m| \le
\tfrac{u_{acc}}{2}$, where the product is normal, or $(O/\Lambda)(1 + \delta_r) + \eta$,
$|\eta| < \tau_{acc}$, below the normal range: within $\tfrac52 u_{acc} + u_{acc}^2$ relatively,
against the $2u_{acc}$ of a division within 2 ulp, and below the normal range one rounding of
Lemma 6, as the division's. *The form.* Against the $\tfrac{u_{acc}}{2}$ that Lemma 9 (c) charges
a state's division and the $u_{acc}$ item 5 charges the root's, the excess is $2u_{acc} +
u_{acc}^2$ for an inner fold's normalise read by the fold above and $\tfrac32 u_{acc} + u_{acc}^2$
for the root's; a part's own division (the decode's `rcp.approx` and product, within 2 ulp)
exceeds its charge by $\tfrac32 u_{acc}$. A key passing $F \ge 1$ folds meets at most one part
division, $F - 1$ inner normalises and the root's: at most $(2F + 1)u_{acc} + F u_{acc}^2 \le
4F u_{acc}$, relative on the numerator weights of its keys, within the $F$ steps more, each at
least $u_{exp} + 4u_{acc}$; per fold, the growth Lemma 9 counts plus a state's and the root's
excess, $\tfrac72 u_{acc} + 2u_{acc}^2$, leaves at least $1.4u_{acc}$ of room with that step and
none without it at the out bound's limit (`check_running_fold_growth`). Lemma 9's sizes (its
"Lemmas 5 and 6") take $\tfrac72 u_{acc}$ in place of $3u_{acc}$ within the same slack ($2u_{acc}$
per step of $\rho_\Delta$ over the one more step and Lemma 9's $2 + G_i$, which hold $(1 +
G_i)u_{acc}$). *Lemma 10's rest.* Its $\kappa_{K'}$ bounds $\sum_i |c_i| / \Lambda_K$ by the mediant of
the per-state ratios: the first non-empty state enters exactly ($0 + \hat o_1 \cdot 1$, its weight
$2^0 = 1$) and passes at most $K' - 1$ growths and $K' - 1$ sums, ratio at most
$R_1 = (\frac{1 + u/2}{1 - u/2})^{K'-1}(\frac{1 + u}{1 - u})^{K'-1}$ ($u = u_{acc}$); state
$i \ge 2$ has its product, at most $K' - i$ growths and $K' - i + 1$ sums,
$(1 + \tfrac{u}{2})(\frac{1 + u/2}{1 - u/2})^{K'-i}(\frac{1 + u}{1 - u})^{K'-i+1} \le R_1$. So
Lemma 10's factor $(1 + \tfrac{u}{2})$ before $R_1$ is not needed for the sums, and the
reciprocal and its product, $(1 + 2u)(1 + \tfrac{u}{2})$, take the place of the division's
$(1 + 2u)$ and that factor: $\kappa_{K'}$ is the same expression, $\le e^{\frac52 u + 3u(K' - 1)}$, and
$H^{run}_S$ holds unchanged. $\blacksquare$

What is not covered: the tensor-core (prefill), MLA and Hopper (FA3) paths, which the commit
also changed and which no lemma here reads as changed (Lemma 14 reads 0.5.0's FA2 prefill), the
rest of Lemma 11's list, and FlashInfer after
`fb28d72`, not read. The pairwise `MergeStateInPlaceKernel` divides its
two weights by their sum with `/`, which FlashInfer's `-use_fast_math` (`-prec-div=false`) makes
a division within 2 ulp in 0.5.0 as from `d7f2c64`: Lemma 8's last part prices it (Lemma 10's term,
one step more per merge).

`check_flashinfer_ieee_start` checks it: a key of natural score $-40960$ (base 2 $-59093$, far
below 0.5.0's condition) with 63 masked slots and a keyless group is, bit for bit, the walk from
$-\infty$ (output 1), with an `exp2` that flushes and one that keeps subnormals, where 0.5.0's
start returns 0; folds with an empty first state, only empty states or none give the fold over
the non-empty ones and $(0, -\infty)$, where the unclamped fold gives NaN; the reciprocal's
$\kappa_{K'}$ equals Lemma 10's expression for $K'$ to $2^{23} - 1$ (and exceeds it if the first
state's product were rounded); `decode_example` from $-\infty$ errs in its lse past `lse_bound` at
one step and within it at 64; Hypothesis-drawn split-KV decodes of a request's KV (chunks from its
first key, one fold or FlashInfer's two-level merge with more threads than chunks too, scores
shifted by 0 or $-40960$) compute bit for bit the walks and folds from $-\infty$ that leave out
what holds no key, and stay within `out_bound` and `lse_bound` at Lemma 10's count, which
`request_chunk_steps` with divisions within 2 ulp bounds and reaches. `check_running_fold` runs
the reciprocal's fold in the standard model within its count and the proof's sharper sum
($\tfrac72 u_{acc}$ more). No end-to-end run shows the step for the divisions needed: the
bound's slack is larger than $\tfrac72 u_{acc}$.

## Lemma 14: FlashInfer's FA2 prefill kernel, which computes the cascade's levels

FlashInfer 0.5.0's `MultiLevelCascadeAttentionWrapper` (`flashinfer/cascade.py`) computes each level with a
`BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)` (line 356), causal only at the last
level (line 493), and merges the levels with `merge_state_in_place` (line 539, Lemma 8). Its backend is
`"auto"`: FA3 (`include/flashinfer/attention/hopper/`) where `is_sm90a_supported` (compute capability 9, CUDA
12.3 or later) and the variant is one FA3 runs (no RoPE in the kernel, fp16 score reduction or custom mask: the
default is), FA2 elsewhere, sm_80 included (`flashinfer/utils.py:441-450`, `determine_attention_backend`).
This lemma reads FA2, `include/flashinfer/attention/prefill.cuh` at `v0.5.0` (`BatchPrefillWithPagedKVCacheDevice`,
lines 2025-2413; the ragged kernel, 1718-2022, has the same arithmetic), with the default variant (no RoPE in the
kernel, soft-cap, ALiBi, custom mask or window), q, k and v in one 16-bit dtype (FA2 asserts `sizeof(DTypeQ) ==
2`, line 2090) and `use_fp16_qk_reduction=False` (the wrapper's default: fp32 scores). Line numbers below are
of `prefill.cuh` unless named.

*The kernel.* A CTA takes a tile of `CTA_TILE_Q` packed query rows (16, 64 or 128) and a chunk of the level's
KV, `[chunk_start, chunk_end)` (2113-2118: with split-KV, chunks of `kv_chunk_size` keys from the level's first
key; `PrefillSplitQOKVIndptr` chooses the size, `scheduler.cuh:566-610`). $Z$ = `NUM_WARPS_KV` warps, 4 for
tiles of 16 rows and 1 otherwise (55-65), walk it in $J$ = `num_iterations` iterations of `CTA_TILE_KV` $= TZ$
slots, $T$ = `NUM_MMA_KV * 16` $\in \{16, 32, 64, 128\}$ (118; `utils.cuh:80-97`): warp $z$ takes the slots
$tTZ + zT, \dots, tTZ + (z + 1)T - 1$ of iteration $t$ (2302), Lemma 11's groups. For a causal level $J$ runs
to the tile's last row's limit (2216-2223), so a row of the tile may pass iterations that hold none of its
keys. A slot past the chunk, or past the row's causal limit, scores `MaskFillValue` $= -5 \cdot 10^4$ (161,
751-792); its value is 0 past the chunk and the key's real value past the causal limit. Each warp keeps, per
row, $m$ the running maximum of the **raw** scores $\hat s_j = \mathrm{fl}(q \cdot k_j)$ (an mma, fp32
accumulation; no scale), from $m = -5 \cdot 10^4$, $d = 1$, $o = 0$ (`init_states`, 401-425), and per block
(`update_mdo_states`, 862-953)

$$
m' = \max(m, \max_j \hat s_j),\quad a = \widehat{\exp_2}(e(m, m')),\quad p_j = \widehat{\exp_2}(e(\hat s_j, m')),
\quad e(x, y) = x c_2 - y c_2
$$

(889, 900-907), $c_2 = \mathrm{fl}(\mathrm{fl}(c)\,\mathrm{fl}(\log_2 e))$ (`sm_scale_log2`, `variants.cuh:54`),
$d \leftarrow \mathrm{fl}(d a)$, $o \leftarrow \mathrm{fl}(o a)$; then (`compute_sfm_v`, 955-1032) the weights
are rounded to the input dtype, $\hat p_j = \mathrm{fl}_{16}(p_j)$ (`vec_cast`, 968), $d$ adds their sum through
an mma of $\hat p$ with a vector of ones (`m16k16_rowsum_f16f16f32`, 980; `mma.cuh:522-550`) and $o$ adds $\hat
P V$ (an fp16/bf16 mma with fp32 accumulation, 1006-1016). `ex2.approx.ftz` flushes below $2^{-126}$
(`math.cuh:44`). After the loop `finalize_m` sets $M = \mathrm{fl}(m c_2)$ unless $m = -5 \cdot 10^4$ (1043),
and `threadblock_sync_mdo_states` (1092-1217) folds the warps: $(M, \Lambda)$ from $(-5 \cdot 10^4, 1)$ in warp
order, $M' = \max(M, M_z)$, $\Lambda \leftarrow \Lambda\,\widehat{\exp_2}(\mathrm{fl}(M - M')) + d_z\,
\widehat{\exp_2}(\mathrm{fl}(M_z - M'))$ (1144, `state_t::merge`'s normaliser), but $O = \sum_z o_z\,
\widehat{\exp_2}(\mathrm{fl}(M_z - M))$ with the **final** $M$ (1157, 1181): one factor per warp on the
numerator. The output is $O$ times `rcp.approx`$(\Lambda)$, 0 where $M = -5 \cdot 10^4$
(`variant_helper.cuh:82`), stored in the output dtype, the lse $\mathrm{fl}(\widehat{\log_2}\Lambda + M)$, base
2 (2392-2397). With split-KV the chunks go to `tmp_v` (output dtype) and `tmp_s` and `VariableLengthMergeStates`
folds them (2659; 2534 in the ragged dispatch; Lemma 10's two-level kernel).

Two things here are not in Lemma 2's model. (i) *The normaliser sums the rounded weights* $\hat p_j$, where the
precision policy sums the fp32 $p_j$: $u_p$ (and, below the input format's normal range, $\tau$) now perturbs
the normaliser too. (ii) *The exponent* $x c_2 - y c_2$ is two products and a difference: rounded as written,
$\mathrm{fl}(\mathrm{fl}(x c_2) - \mathrm{fl}(y c_2))$, it is Lemma 11's $\mathrm{fl}(\hat s - m')$ on the
scaled scores ($\mathrm{fl}(\cdot\, c_2)$ is monotone, so $\mathrm{fl}(m' c_2)$ is the largest scaled score),
and a block whose maximum does not grow has $a = 2^0 = 1$. But nvcc contracts a product and the sum it feeds
into a fused multiply-add by default (`--fmad=true`), as it does FlashAttention-2's identical `x * scale -
max_scaled` (PyTorch issue #121558, FlashAttention PR #893): then $e(x, y) = \mathrm{fl}(x c_2 - \mathrm{fl}(y
c_2))$ or $\mathrm{fl}(\mathrm{fl}(x c_2) - y c_2)$, and every later iteration of a warp, keys or not,
multiplies its sums by $2^{\pm\epsilon}$, $\epsilon = m c_2 - \mathrm{fl}(m c_2)$, not 1. Whether FlashInfer's
binary contracts it was not read (no SASS); the claim covers the three.

*Claim. Let a row see the first $n \ge 1$ keys of a chunk of FA2's prefill as above, let every raw score of a
key it sees satisfy $\hat s_j c_2 > -5 \cdot 10^4 c_2 + 127$ and $\mathrm{fl}(\hat s_j c_2) > -5 \cdot 10^4 +
127$ (in natural units, every score above about $-5 \cdot 10^4 c + 88$ and above $-34570$; at $c = 1/\sqrt{128}$
above $-4331$), let $c_2 < 300$, and let the exponential flush below $2^{-126}$ as `ex2.approx.ftz` does. Then
the chunk's $(O, \Lambda, M)$ are, bit for bit up to the sign of a zero, those of the walk from $m = -\infty$
that leaves out the masked slots, the blocks of a warp before its first key and the warps that hold none. They
have Lemma 1's form over the $n$ keys with shift $M \ln 2$, the same $|t_j|, |t'_j| \le \tau$, and $|\alpha_j|,
|\beta_j| \le \rho$ with $\nu$ steps per key:*

$$
\nu = I + Z' - 1 \text{ (each product of the exponent rounded)},\qquad
\nu = J + Z' \text{ (one fused)},\qquad I = \lceil n / (TZ) \rceil,\; Z' = \min(Z, \lceil n / T \rceil).
$$

*So `out_bound` holds for the chunk's output stored in the output dtype at $\nu + 1$ steps (its division within
2 ulp, Lemma 9), and for a level computed in one chunk. The lse bound is not claimed, nor any merge of such
chunks or levels (Lemmas 3, 4, 8-10).*

*Proof.* *The start.* A running maximum that has met a key is at least its raw score. An exponent against it of
a masked slot or of the start, $x = -5 \cdot 10^4$, is then $x c_2 - m' c_2 < -127$ before its roundings, and
these stay within the margin of 1. Not by the relative bound, $\tfrac{u_{acc}}{2}$ of each product (up to $0.9$
each as $c_2$ nears 300), but by half an ulp: $5 \cdot 10^4 c_2 < 2^{24}$ for $c_2 < 300$, and so is $|m' c_2|$
where the exponent is near $-127$ (a larger $m' c_2$ leaves it far below), so each product rounds by at most
$\tfrac12$, and by at most $\tfrac14$ below $2^{23}$. The rounded products then differ by an integer below
$-126$, so at most $-127$, where both lie in $[2^{23}, 2^{24})$ (ulp 1), and by less than $-126.25$ otherwise
(one product fused: one such error); the difference's own rounding and `ex2.approx`'s error keep its
exponential below $2^{-126}$, flushed: 0. So, as in Lemma 11 (i)-(iii): a warp's first block with a key
has $a = 0$, $d = \mathrm{fl}(1 \cdot 0) = 0$, $o = 0$, whatever its earlier keyless blocks summed (their $o$,
of masked values times weights near 1, is finite and multiplied by 0); a masked slot after that adds $\hat p =
0$, and $0 \cdot v$ is 0 whatever its value, so masked keys with real values change nothing; a warp with no key
keeps $M = -5 \cdot 10^4$ unscaled, and the warps' fold, from $-5 \cdot 10^4$ in base 2, meets it with $M_z - M'
\le -127$ where a warp with a key comes before it and with $2^0 = 1$, then multiplied by a flushed factor, where
none does: the fold from $-\infty$ over the warps with keys, on both the normaliser and the numerator (a keyless
warp's $o_z$ is multiplied by 0). The row's $M$ is then a scaled maximum, so `OutputTransform` divides. Without
contraction a later block with no key of the row has $e(m, m) = 0$, $a = 1$: exact, as in Lemma 11; with it,
that block is run in both computations alike.

*The form, rounded products.* With $\hat x = \mathrm{fl}(x c_2)$ the exponents are Lemma 11's on the scaled
scores $\hat x_j$ and their running maximum, $\mathrm{fl}(m' c_2) = \max_j \mathrm{fl}(\hat s_j c_2)$: the same
rescales, weights and counts, $I - 1$ rescales in a warp and item 1's score. Two changes. The warps' fold gives
the numerator one factor $\widehat{\exp_2}(\mathrm{fl}(M_z - M))$ per warp, where `sync_state` gives it Lemma
11's factors $f_1, f_2$: one exponential of a difference of two computed maxima and one product, a rescale of
item 4, $0$ factors for a warp at $M$ and 1 otherwise, at most the $Z' - 1$ the normaliser's running fold (Lemma
11's, on $\Lambda$) gives the same key. And both sums now hold $\hat p_j = p_j(1 + \delta_j)$, $|\log(1 +
\delta_j)| \le u_p$ (or $p_j + t_j$, $|t_j| \le \tau$, below the normal range): item 2 on the normaliser as on
the numerator. $\rho$ charges $u_p$ to every weight, and Lemma 1 allows $|t'_j| \le \tau$, so $|\beta_j| \le
\rho$ with the same $\rho$, and the $t'$ sum with the $t$ in $\varepsilon$. The products $\hat p_j v_j$ of two
16-bit numbers are exact in fp32 unless they underflow (Lemma 6), and the mmas' sums are item 3's (the
accumulation model). $\Lambda \ge 1$: the key at the final maximum has $p = 2^0 = 1$, $\hat p = 1$, and every
later factor on it is $2^0$.

*The form, one product fused.* Put $\mu_t = m_t c_2$ (exact) and $\hat\mu_t = \mathrm{fl}(m_t c_2)$ for
the maximum $m_t$ after iteration $t$, $\epsilon_t = \mu_t - \hat\mu_t$, $|\epsilon_t| \le
\tfrac{u_{acc}}{2}|\mu_t|$. With the score's product fused, a key of iteration $t_0$ enters with
$\mathrm{fl}(\hat s_j c_2 - \hat\mu_{t_0})$ and each later iteration $t$ of its warp multiplies by
$\widehat{\exp_2}(\mathrm{fl}(\mu_{t-1} - \hat\mu_t))$; the exponents add up to $\hat s_j c_2 -
\hat\mu_{J-1} + \sum_{t = t_0}^{J - 2}\epsilon_t$ plus their roundings. With the maximum's product fused
they add up to $\mathrm{fl}(\hat s_j c_2) - \mu_{J-1} - \sum_{t=t_0}^{J-2} \epsilon_t$. Against the shift
$\mu_{J-1}$ (where the key at the maximum has weight $2^0$, so that $Z \ge e^{-\rho}$) or $\hat\mu_{J-1}$
(the lse's), a key of iteration $t_0$ with $k = J - 1 - t_0$ later iterations carries, beyond item 1 and
Lemma 11's terms, at most $k + 1$ of the $\epsilon_t$: $(k + 1)\tfrac{u_{acc}}{2}A'$ in natural units, $A'
= A(1 + \gamma_{D+6})$. Each of its $k$ rescales is an exponential, one product on each side and the
rounding of its argument, $\tfrac{u_{acc}}{2}|\mu_{t-1} - \hat\mu_t|$; the maxima grow, so $\sum_t
|\mu_{t-1} - \hat\mu_t| \le \mu_{J-1} - \mu_{t_0} + \sum_t |\epsilon_t|$: at most $u_{acc}A'$ over all of
them (plus a share of the $\epsilon$'s of second order). To first order the key's own exponential and
these $k$ rescales use $(k + 1)u_{exp} + k\tfrac{u_{acc}}{2} + u_{acc}A' + (k + 1)\tfrac{u_{acc}}{2}A'$
past item 1, within $k + 1$ steps of $u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)$ beside the own step,
whose $\sigma_0$ the lse section keeps ($\tfrac{k+1}{2} + 1 \le k + 1$ for $k \ge 1$; for $k = 0$, with no
rescale, $\tfrac12 \le 1$); the second-order terms ($\gamma_{D+6}A$ in $A'$) are within the $3u_{acc}$ of each
step, as in Lemma 11. The warps' fold is as above on the $M_z = \hat\mu$ of each warp (one more $\epsilon$
for the maximum's fusion, among the $k + 1$). The count holds too where the compiler fuses differently in
different expressions (the rescale's exponent and the weights', or one weight's and another's): each iteration
$t \ge t_0$ still leaves at most one mismatch $\pm\epsilon_t$ between the maximum one exponent subtracts and
the one the next adds, $k + 1$ in all (the check draws only the three uniform ways). So $\nu = 1 + (J - 1) + 1 +
(Z' - 1) = J + Z'$ for the first iteration's keys, the most.

*Why the last step is kept.* It is the room the $\epsilon_t$ take because $\sigma_0$ of the key's own step is
left unspent, as Lemma 2 leaves it for the lse section (and Lemma 6 for a merged part's division). This lemma
claims neither, so for the out bound alone $\sigma_0$ could pay for them, with item 1 paying the own
argument's rounding ($\tfrac{k+1}{2} + 1 \le k + 1$ for $k \ge 1$, $\tfrac12 \le 1$ for $k = 0$), and $J +
Z' - 1$ would follow; that count is not claimed here: $J + Z'$ is the one an lse proof for these chunks would
start from. Priced as `check_prefill_chunks` prices (item 1 the score's product alone, the argument's rounding
charged to the steps, which spends $\sigma_0$ there), the last step is needed: in one block ($J = Z' = 1$) with
the maximum's product fused, keys at natural scores $\pm 1000$, the far key's product, argument and the
maximum's $\epsilon$, rounded one way, move it by about $2 u_{acc} A$, past $J + Z' - 1 = 1$ step and item 1
($1.5 u_{acc} A$) and within 2. *The output.* `rcp.approx` and the product are a division within 2 ulp (Lemma
11): one step more (Lemma 9), and the stored output's rounding is item 5's. $\blacksquare$

*What it does not give.* **The lse.** The lse section bounds $\log \hat Z$ through room on the normaliser side:
$u_p$, which the normaliser no longer leaves unused, and an underflow term for fp32's $2^{-126}$, where an fp16
normaliser's $t'_j$ reach $2^{-25}$ each ($N 2^{-25}$ in all). So `lse_bound` is not proved for these chunks; no
counterexample was found or sought (the missing terms, $u_p$ and $N 2^{-25}$, are below the $\rho$ the bound
charges, but the proof spends that $\rho$ elsewhere). **Merges of such states.** Lemmas 3, 4 and 8-10 take the
incoming states' lse error from the lse section and their $t'$ as fp32 underflows (Lemma 3: "the new normaliser
without its $t'$ is at least $1 - N 2^{-126} e^{\rho}$"), so neither FA2's own split-KV merge
(`VariableLengthMergeStates` over its chunks) nor the cascade's `merge_state_in_place` over its levels is proved
over these parts: the cascade recipe of the testing guide (`blocked_steps(..., merge="pairwise",
fast_division=True, every_level=True)`, each level one part) rests on them, and on a level being one chunk,
which FA2's planner does not promise (a long shared prefix with few query rows is split). **The count in
`relaycore.testing`.** $I + Z' - 1$ is `blocked_steps(groups=Z)`'s per part (with `block_n` $= T$; $T = 16$, the
smallest, bounds any `NUM_MMA_KV`); $J + Z'$ is not expressible there ($J$ depends on the tile's rows). **Not
read.** FA3 (sm_90, the default there), the fp16 score reduction, RoPE, soft-cap, ALiBi, custom masks, sliding
windows, fp8 KV, multi-item scoring, and FlashInfer after `v0.5.0`'s prefill (commit `d7f2c64` changed its
masking, Lemma 13).

`check_prefill_chunks` checks it: in the standard model with a product $\mathrm{fl}(x c_2)$ rounded alike
wherever it is formed (`prefill_chunk_growth`), drawn rows (blocks of 1 to 4 slots, 1 to 4 warps, up to 2
iterations past the row's last key, each of `PREFILL_FMA`) move by at most $\nu$ steps plus item 1's rounding of
the score's product; one key of a causal tile walked 7 iterations past it at natural score 1000, with a fused
product, moves by more than 3 steps where Lemma 11's count gives 1; the block of keys at $\pm 1000$ above needs
$J + Z'$ (a count of $J + Z' - 1$ fails there; the drawn rows stay far from it). A key at raw score $-56576$ ($c
= 1/\sqrt{128}$, natural $-5000$: Lemma 11's condition holds, this one does not) makes the kernel return 0 where
the walk returns 1. At the condition's edges, raw scores $-49004$ ($c = 1/\sqrt{128}$) and $-34569$ ($c = 1$, a
keyless warp beside it), 0.007 and 0.48 inside its raw and its scaled clause, compute the walk's bits; $-49920$
and $-34656$, 10 and 2 above $-5 \cdot 10^4$ scaled, fail it, and the kernel's output differs (the draws below
come nowhere near the edges; a margin of 24 in place of 127 would pass them too). Hypothesis-drawn rows (fp16,
bf16, every fusion) from FlashInfer's start compute bit for bit the walk from $-\infty$ under the condition, and
stay within `out_bound` at $\nu + 1$.

## Counting the Triton kernels' steps

`relaycore.fast.triton` cuts every KV segment a token reads (the prefix of each level, its own
KV) into chunks of `chunk_size(L, rows, config)` keys from the segment's first key, walks each
chunk $b_i$ keys per step from the chunk's first key (`config.block_n_for`: `block_n` for the
prefix tiles, `short_block_n` for the own tiles of `min_block_m` rows), and merges all of a
token's chunk states at once (Lemma 4). A token sees every key of a prefix chunk and the keys
of an own chunk up to its causal limit: the keys it sees in a chunk are the chunk's first
$n_i$, which fill $\lceil n_i / b_i \rceil$ steps. A key of that chunk passes its
exponential, at most one rescale per later step of the chunk in which the token sees a key
($\lceil n_i / b_i \rceil - 1$ at most), and the merge. A step in which the token sees no key
changes nothing, bit for bit: the maximum stays, the rescale is by $2^{0} = 1$ exactly (the
hardware `ex2.approx` returns 1 at 0), every weight is $2^{-\infty} = 0$, and the sums add
exact zeros. So, with divisions rounded to nearest, the token's keys would pass at most
$\max_i \lceil n_i / b_i \rceil$ steps, plus 2 where $K' \ge 2$ ($K'$ the chunks holding a key
it sees), and its count is

$$
\nu = \max_i \lceil n_i / b_i \rceil + \begin{cases} 2 & K' \ge 2 \\ 0 & K' = 1 \end{cases} + 1 ,
$$

the last step for the divisions, which are within 2 ulp (below). A single-pass request's token (its own tiles
walk its prefix of $n_{pre}$ keys, none for a request that sees no prefix, and then its own KV in one
running state, and write its result: `single_pass_requests` in `fast/triton/plan.py`) is one part whose blocks ($b$ keys, its
tile's step) are the prefix's $\lceil n_{pre} / b \rceil$ and its own $\lceil n / b \rceil$ (the last block of each segment may be
short; Lemma 2 takes blocks of any size), with no merge:
$\nu = \lceil n_{pre} / b \rceil + \lceil n / b \rceil + 1 \le n_{pre} + n + 1 \le 2N$.

*The divisions.* Triton lowers an fp32 `/` to PTX `div.full.f32` (`FDivOpConversion` in its
NVIDIA backend, in Triton 3.6.0 and 3.7.1 alike: the partial kernel's tiles, the merge kernel and
`hopper.single_pass_tile`, compiled for sm_90, hold no other division). The PTX ISA documents it
as within 2 ulp over the full range, not correctly rounded, and promises no exact quotient at a
divisor of 1 (<https://docs.nvidia.com/cuda/parallel-thread-execution/#floating-point-instructions-div>); only
`tl.math.div_rn` gives `div.rn.f32`. The kernels divide in `finish_state` ($\hat o =
\mathrm{acc} / l$: a chunk's state, or a single-pass row's result, the Gluon tile's too) and in the
fold (`fold_slots`, `fold_row`: $\sum_i w_i \hat o_i / \sum_i w_i$, the merge kernel's and the
fused merge's, the same operations). So every quotient errs relatively by up to $2u_{acc}$ in the
normal range (Lemma 9's "Divisions within 2 ulp"), where Lemma 4 (c) charges a state's division
$\tfrac{u_{acc}}{2}$ and Lemma 2's item 5 the row's output's $u_{acc}$. The excess is relative
on a state's output or on the row's, so it multiplies the numerator weights of the keys under it
(the normalisers and the lses never read a quotient), and a token's keys gain:

* *a single-pass token*: one division, the output's: $u_{acc}$;
* *one chunk holding its keys* ($K' = 1$): the chunk's division, the output's in Lemma 4's
  claim, then the fold's, whose weight is $2^0 = 1$ and the others' $2^{-\infty} = 0$, so that its
  products $1 \cdot \hat o$ and sums with exact zeros are exact and its sum of weights is 1, but
  whose quotient $\hat o / 1$ `div.full.f32` is not documented to return unchanged: two
  quotients within 2 ulp against item 5's one charge, $\log\frac{1 - u_{acc}}{(1 - 2u_{acc})^2} \le
  3u_{acc} + 4u_{acc}^2$;
* *$K' \ge 2$ chunks*: its chunk's division, $\tfrac32 u_{acc}$ over Lemma 4 (c)'s charge, and the
  fold's, $u_{acc}$ over item 5's: $\tfrac52 u_{acc}$, Lemma 9's sum. Lemma 4's two steps do not
  hold it: their room is $u_{acc}(7 + \tfrac12 A - 2\rho)$ to first order, about $2u_{acc}$ at the
  out bound's limit on $\rho$ ($1.98u_{acc}$ at least, with the states' lse errors $E$ in full), so
  $\tfrac52 u_{acc}$ more leaves $-0.51u_{acc}$ there ($A = 256$, $N = 2^{22}$);
* *the fused merge* folds the same states with the same operations (`fold_slots` is
  `fold_row`'s arithmetic per row): the case above.

One step, at least $u_{exp} + 4u_{acc} = 8u_{acc}$ in fp32, holds each: with it the merge's three
steps leave at least $8.1u_{acc}$ at the limit, a token of one chunk at least $4.9u_{acc}$ and of a single
pass $6.99u_{acc}$ (`check_triton_divisions_cost_a_step`). Below the normal range a quotient errs by
at most 2 of fp32's smallest subnormal quanta, $2^{-148}$, or, where the instruction flushes a
subnormal result to zero (the PTX ISA's fast divisions may), by less than $2^{-126}$: either way
at most $\tau_{acc} = 2^{-126}$ (a quotient within 2 ulp of a normal one that the flush then
sends to 0 would err by up to $2^{-126}(1 + 2^{-22})$, not documented either way and not
priced here): a chunk's is the
Lemma-6 rounding of its division (counted there where the chunk is merged, as every chunk is), and
the output's, less than $\tau$, is item 5's. Lemma 5's $\rho_\Delta$ ($2u_{acc}$ a step) holds
the quotients' larger magnitudes, a factor up to $1 + 2u_{acc}$ each: a part's in the $2u_{acc}$ of
its first step, which only its division uses (its rescales take the later steps'), the fold's beside
its product in the $4u_{acc}$ of the merge's two steps, or, with $K' = 1$, where Lemma 5 took the
fold as exact, in the division's step. Its count of roundings below the normal range grows by $7N$
with that step, more than the divisions' second quanta (at most $K' + 1 \le N + 1$ divisions on
the way to an output). The lse never reads a quotient. Hence the `+ 1` for every token
(`relaycore.fast.triton.rounding.DIVISION_STEPS`, `TRITON_DIVISION_STEPS` here), as
`relaycore.testing.blocked_steps(merge="fold", fast_division=True)` counts it;
`tl.math.div_rn` in the kernels would make it 0 (not done: it needs a GPU to check the kernels'
speed and bits).
On an sm_90 GPU the single-pass tiles run `relaycore.fast.triton.hopper.single_pass_tile`,
which walks $b = 128$ keys a step and adds a block's products $P_j V_j$ to the accumulator
before the next block's rescale instead of after its own,
$\mathrm{acc} \leftarrow \mathrm{fl}(\alpha_{j+1} \cdot \mathrm{fl}(\mathrm{acc} + P_j V_j))$:
a key's product still enters the accumulator once and is rescaled once per later step, so its
count is the formula's at $b = 128$, at most the count at the Triton tile's $b = 64$.
`relaycore.fast.triton.rounding.steps_per_token`
computes $\nu$ per token from the batch's lengths and the configuration (the Triton tiles' $b$). It is never above
`default_steps`: with $K' \ge 2$ a chunk holds at most $N - 1$ keys, so
$\nu \le N + 2 \le 2N$ ($N \ge 2$), and with $K' = 1$, $\nu \le N + 1 \le 2N$. For a decode token over a prefix of 16384 keys and 128 own keys in fp16
with head dimension 128 and one KV head (prefix chunks of 1024 keys in steps of 64, own keys
in one step of 128) $\nu = 16 + 2 + 1 = 19$ where `default_steps` is 33024.

## The lse

`lse_bound` is $\rho + 3u_{acc}(|\ell| + 1)$. The lse leaves a kernel in one of three ways:

* $\hat\ell = \mathrm{fl}(\mu + \mathrm{fl}(\widehat{\log}\,\hat Z))$ in natural log: one part
  ($\mu = m$, its running maximum; $\hat Z$ its normaliser), or a pairwise merge ($\mu = M$,
  $\hat Z = \hat T$, Lemma 3);
* $\hat\ell = \mathrm{fl}\bigl(\mathrm{fl}(M + \mathrm{fl}(\widehat{\log_2}\hat Z)) \cdot
  \mathrm{fl}(\ln 2)\bigr)$ in the base-2 form: Lemma 4's fold with $K' \ge 2$
  ($\hat Z = \sum_i w_i$), Lemma 9's ($\hat Z = \Lambda_K$; the product with $\ln 2$ the caller's,
  which may do it in float64, with less error), or a single-pass tile ($M = m$);
* Lemma 4's or Lemma 9's fold with $K' = 1$: the same, with $M = \hat\lambda_i$, which went
  through the chunk's own logarithm and addition (Lemma 4 (a)), and $\hat Z = w_i = 1$ (Lemma
  9: $\Lambda_K = 1$). This case takes two logarithms and charges no merge step. A tree of folds
  over one state re-forms each fold below the root at a step (Lemma 10), so that its root is this case;
  pairwise merges with an empty state are re-formed at a step each (Lemma 3) and are the first case.

In each, $\hat Z$ is the normaliser of the final state's Lemma-1 form with shift $\mu$ (natural
units, $\mu = M \ln 2$ in base 2). So $|\log \hat Z - (\ell - \mu)| \le r$, where $r$ is the
normaliser's perturbation plus $-\log(1 - N 2^{-125} e^{\rho})$ for its fp32 underflows (the
$t'_j < 2^{-126}$ and Lemma 4's flushed weights). Also $0 \le \log \hat Z \le \log N + \rho$
(Lemma 3). The normaliser side leaves part of $\rho$ unused: $u_p$ and $\sigma_0$ (Lemma 2),
and $\sigma_1 = \gamma_N - \gamma_{N-1} \ge u_{acc}$, since the normaliser's sums are plain
fp32 additions and a key passes at most $N - 1$ of them (Lemma 4 (d); in Lemma 3 $\hat T$'s sum
is the merge's). So $r \le \rho - u_p - \sigma_0 - \sigma_1 + {}$ the underflow term. The
roundings after the weights, in natural-log units and to first order, are covered as follows:

1. The logarithm's own error is at most $u_{exp}$ (for $\widehat{\log_2}$, after the factor
   $\ln 2$). It is covered by $\sigma_0$: $3u_{acc} + u_{acc}(A + \log N + 1) \ge 4u_{acc} \ge u_{exp}$
   ($u_{exp} = 2^{-21} = 4u_{acc}$ with fp32 accumulation, $2^{-52} = u_{acc}$ for float64).
   The $K' = 1$ fold has a second logarithm, of $w_i = 1$. That one is covered by $\sigma_1$,
   $u_p$ and the rest from the constant $3u_{acc}$. Its first logarithm, with the rounding of
   its result and of the addition, is Lemma 4's $\eta_i$,
   $u_{exp} + \tfrac{u_{acc}}{2}(\log l_i + |\hat\ell_i|)$, and is covered like 1-3 here.
2. The rounding of the logarithm's result is at most
   $\tfrac{u_{acc}}{2}(\log N + \rho + u_{exp})$. Its $\tfrac{u_{acc}}{2}\log N$ comes from
   the $u_{acc}\log N$ of $\sigma_0$.
3. The addition of the shift ($M$ in base 2) rounds a result within $|\ell| + r + u_{exp}$,
   so it costs at most $\tfrac{u_{acc}}{2}(|\ell| + r + u_{exp})$. Its
   $\tfrac{u_{acc}}{2}|\ell|$ comes from $3u_{acc}|\ell|$.
4. In base 2 only, the rounded constant $\mathrm{fl}(\ln 2)$ and the product are two more
   roundings of that result, at most $u_{acc}(|\ell| + r + u_{exp})$. Their $u_{acc}|\ell|$
   comes from $3u_{acc}|\ell|$.

What is left of 2-4, at most $\tfrac{u_{acc}}{2}\rho + \tfrac{u_{acc}}{2}r + u_{acc}r \le 2u_{acc}\rho$
(half of that in natural log), is covered by the constant $3u_{acc}$ and the
$u_{acc}(A + \tfrac12\log N)$ left of $\sigma_0$. $u_p$ and $\sigma_1$ help where the $K' = 1$
fold's second logarithm leaves them. This is where $\rho$ must be bounded: the covering is a
numeric inequality, checked below.

With $A = 0$ and $N = 1$ ($\ell = 0$) there is no spare $\gamma$-term: $\gamma_{D+6}A = 0$ and
$\gamma_1$ is $\sigma_1$. The logarithm's $u_{exp} = 4u_{acc}$ takes all of
$\sigma_0 = 4u_{acc}$ (less $2^{-40}$). The $K' = 1$ fold's second $u_{exp}$ takes $\sigma_1$,
$u_p$ and $3u_{acc}$ of the constant: $u_{acc}(1 + \tfrac12 + 3) = 4.5u_{acc}$ for fp32, leaving
$\tfrac12 u_{acc}$ for the roundings of results within $2u_{exp}$ of 0. The room comes from
the unused part of the step term and of the sums, not from spare $\gamma$-terms.

Exactly, not to first order: put $h = u_{acc}/2$,
$X = r + u_{exp} + h(\log N + \rho + u_{exp})$ and $E = X + h(|\ell| + X)$ (natural log). For the
$K' = 1$ fold, $E$ becomes $E + u_{exp} + hu_{exp}$ and then that value plus $h(|\ell| + \cdot)$
of itself. In base 2, $E$ becomes $E + (2h + h^2)(|\ell| + E)$. Then
$|\hat\ell - \ell| \le E$, and `check_lse_accounting` checks $E \le \rho + 3u_{acc}(|\ell| + 1)$
at 60 digits, with $r$ at its largest. It does so for every policy, $A$ from 0 to $10^6$, $N$
from 1 to $2^{22}$, $D$ up to 256, $\nu$ from 1 to $2N$ and $\rho \le 2$. The slack is least,
$\tfrac12 u_{acc}$, at fp32, $A = 0$, $N = 1$ in the $K' = 1$ fold. The terms in $h\rho$ and $hr$
are where $\rho$ must be bounded. For fp32 the inequality first fails near $\rho = 5.6$
($N = 2^{20}$, $A = 0$, `default_steps`). For fp16 and bf16, $u_p$ leaves room far beyond. So the
lse bound is proved for $\rho \le 2$, evaluated at the steps the kernel really takes. A larger
$\nu$ only raises the bound.
`default_steps` ($\nu = 2N$) reaches $\rho = 2$ near $N = 2 \cdot 10^5$ keys at $A = 20$; the
Triton kernels' counted $\nu$ stays far below it.

Beyond $\rho = 2$ the accounting $E$ still bounds the error wherever the final state has the
Lemma-1 form with perturbation $\rho$ (and $N 2^{-125}e^{\rho} < 1$): for one part at any
$\rho$, for a merged state while $\rho \le 2.5 + \min(A, 256)/4$ (Lemmas 3 and 4). But $E$ is
not checked against the closed form there, and for fp32 it passes it near $\rho = 5.6$.
`lse_bound` cannot tell a merged state from a part, so it raises `NoBound` on a row whose
$\rho$ exceeds 2 (`LSE_RHO_MAX`), naming its $N$, $A$ and $\nu$.
A caller that meets it passes the kernel's counted steps.

## Machine check

`check_perturbed_weights_lemma` draws weights, values and extreme perturbations ($\pm\rho$
exactly, worst signs, underflow terms $\pm\tau$) and checks Lemma 1 at 60 digits.
`check_merge_coefficients` checks the rounding of one merge in fp32 against $\rho_1$, its sums
rounded to nearest or truncated, and on the merge monoid's opposite pair $\mp 32$, where a
truncated subtraction would leave $\rho_1$.
`check_simulated_kernel` runs the whole computation at 60 digits with *every* rounding done
explicitly to fp32, fp16 or bf16 (`relaycore.proofs.rounding`), an adversarial exponential
(an extra relative error up to $2^{-21} - 2^{-23}$ with drawn signs, so that with its fp32
rounding it errs by up to about $u_{exp} - 2^{-24}$, $u_{exp} = 2^{-21}$) and logarithm
(absolute error up to $u_{exp}$ before its rounding), fp32 accumulations (dot products, sums
of weights and of products, the merges' sums) rounded to nearest or truncated and every elementwise operation rounded to nearest, as
Lemmas 2-4 assume, subnormals flushed to zero or kept (Lemma 6), blocks of 1 to 4 keys and 1 to 4
relay parts merged pairwise in natural log (`relaycore.state.merge`, the PyTorch backend),
over Hypothesis-drawn problems including scores up to $10^4$ and weights down to the
underflow of fp16 and fp32, and asserts that the error of every output element and of the
lse is within `relaycore.bounds.out_bound` / `lse_bound` at `default_steps`.
`check_pairwise_step_count` runs the same draws against the bound at the steps a pairwise
fold really takes (a part's blocks and two per merge its keys pass), not `default_steps`. It
confirms the count but has little power to refute a smaller one: on these small problems the
weights' rounding and the sums dominate, so even no step per merge would pass; the merge's
cost is checked where it can be reached, in `check_pairwise_merge`.
`check_triton_step_count` does the same for the form of the Triton kernels (scores scaled by
$\mathrm{fl}(c \log_2 e)$ as the host computes it, `exp2`, `log2`, 1 to 8 parts, i.e. chunks,
merged all at once, the lse times $\ln 2$ at the end, every division within 2 ulp as
`div.full.f32`, $x / 1$ included), with an `exp2` that flushes results
below $2^{-126}$ to zero or keeps them, against the bound at the counted $\nu$ of the previous
section, which is never above `default_steps`; its draws reach merges whose smaller chunk
weights fall below $2^{-126}$. `check_single_pass_step_count` does it for a single-pass walk
(one part whose blocks restart at the own KV's first key, no merge, its one division within 2 ulp) at
$\lceil T / b \rceil + \lceil n / b \rceil + 1$. Both would pass at the count without the divisions'
step too (one fp32 key errs by $2u_{acc}$ where that count's bound allows $30.75u_{acc}$);
`check_triton_divisions_cost_a_step` checks the step where the accounting needs it, at the out bound's
limit on $\rho$, and fails without it. `check_all_at_once_merge` checks Lemma 4's inequality itself at
60 digits in the standard model of rounding ($\mathrm{fl}(x \circ y) = (x \circ y)(1 +
\delta)$, $|\delta| \le u_{acc}/2$; every $\delta$ and every error of the exponential and the
logarithm drawn by the adversary, at its extremes or anywhere between) over 1 to 8 states,
some empty, with scores up to $10^4$: it reaches the sharper sum of the proof (to second
order) and stays within two steps. Its draws reach weights below $2^{-126}$, which the steps
do not pay for; "Underflow"'s inequality, which does, depends on no draw, and the check
evaluates it as the constant inequality it is, over $\rho$, $\varepsilon < 1$ and $N$.
`check_pairwise_merge` does the same for Lemma 3's growth, on two part states with maxima up to
$\pm 10^4$ (opposite ones included), and reaches that growth.
`check_other_pairwise_merges` checks "Lemma 3, other pairwise orders" in the same standard
model: the sigmoid and logaddexp forms on the same drawn states stay within Lemma 3's growth and
leave the merged lse within (a); at lses $\pm 1000$ the worst of 200 extreme adversaries reaches
$0.9997$ of that growth and exceeds by about $3\times$ the growth without the coefficient's
argument rounding, and (L) with the exact $T$ as its normaliser exceeds the growth (by about a
third). `check_other_pairwise_step_count` runs both forms (`simulate_merge_sigmoid`,
`simulate_merge_logaddexp`) with every rounding explicit, as `check_pairwise_step_count`, and
shows that a `sigmoid` or `logaddexp` off by $2^{-12}$ breaks the bound on a two-key problem.
`check_overflow_is_refused` checks Lemma 5: the counter-example overflows in the simulated
kernel and `out_bound` refuses it; on drawn values up to each format's largest finite value
the fp32 output stays within the lemma's magnitude, and every bound `out_bound` gives holds,
finite. `check_accumulator_underflow` checks Lemma 6, as its last paragraph says.
`check_exp_from_a_natural_argument_is_not_covered` shows that
$2^{\mathrm{fl}(x\,\mathrm{fl}(\log_2 e))}$ errs by up to $31u_{acc}$ at the arguments of a
merge of lses near $\pm 40$, where a step leaves the exponential $u_{exp} + 3u_{acc} = 7u_{acc}$,
while `exp2` of a base-2 argument errs only by its own rounding.
`check_fp16_scores_have_no_subnormals` checks Lemma 7 on drawn fp16 vectors of 1 to 16
elements, subnormals and values down to $2^{-24}$ among them, and cancelling sums: every
product and partial sum of a chain in fp32 (rounded to nearest or truncated, subnormals flushed
or kept) and every fused sum (0 to 3 alignment bits) is 0 or at least $2^{-48}$, the chains give
the same score with subnormals flushed as kept, and the scaled score at $\hat c = 2^{-78}$ is 0 or
normal; bf16's $2^{-70} \cdot 2^{-70}$ is flushed where fp16 has no such pair.
`check_stored_state_merges` checks Lemma 8: `stored_example` is beyond the bound without
`stored` and within it with `stored = 3`, and Hypothesis-drawn problems (fp16, bf16 and fp32,
values down to fp16's subnormals, 1 to 4 parts folded pairwise from stored outputs, in natural
log or in FlashInfer's base-2 order) stay within `out_bound` at `stored` = the fold's merges
and within `lse_bound`. `check_stored_rounding_terms` checks the lemma's two facts at 60 digits:
a stored rounding's factor within $e^{\pm u_p}$ (normal results) or its error within $\tau$
(below), on values of every binade of fp16 and bf16; and the recursion for $H_S$ against its
closed form up to $S = 4096$, and against what `out_bound` carries at $S = 1, 8, 64$.
`check_stored_merges_fast_division` checks Lemma 8's last part: a merge's growth in the standard
model with both divisions within 2 ulp, the step per merge at the out bound's limit (three steps
hold it, two do not), a merge with an empty side whose `lg2.approx(1)` is not 0 within its two
steps (one does not hold it), the merge's factor within Lemma 10's, and drawn rows folded from stored
outputs with every division within 2 ulp within the bounds at `pairwise_fast_steps`.
`check_pairwise_fast_steps_match_blocked_steps` checks that this count is the one
`blocked_steps(..., merge="pairwise", fast_division=True)` gives users, row by row of drawn
batches (causal or not, chunked from each segment's or the request's first key or not, levels
read or not, `every_level` or not; each row's parts from the oracle's count of the keys it sees),
and `stored_merges` the simulation's `stored`; without `fast_division` the simulation's per-key
count `pairwise_steps` is at most `blocked_steps`' (which charges every key the whole fold).
`check_flashinfer_empty_levels` checks its paragraph on FlashInfer's empty levels, as that paragraph
says.
`check_two_level_stored_folds` checks Lemma 10: `two_level_example` is beyond the bound without
`stored` and within it with `stored = 2, stored_merge="running"` (in bf16 too, and folded once
at `stored = 1`), and Hypothesis-drawn problems (fp16, bf16 and fp32, values down to fp16's and
bf16's subnormals, 1 to 8 parts in blocks of their own sizes, one running fold or 1 to 4 threads
folded again, each fold reading stored outputs, divisions to nearest or within 2 ulp, an `exp2`
that flushes or keeps subnormals) stay within `out_bound` at the lemma's counts and within
`lse_bound`, the counts within the closed form `blocked_steps(merge="running", levels=...)`
returns ($\max_i \lceil n_i / b\rceil + K' - 1 + F$, $F$ more with divisions within 2 ulp, $b$
the smallest block), recomputed there from the problem's sizes rather than by calling it (the
drawn parts have no `Batch`); and the $S$ each run uses equals the folds the simulation passed
the row's keys through, counted as it runs.
`check_flashinfer_start_in_trees` checks Lemma 10's paragraph on FlashInfer's start: trees of
folds from $-5 \cdot 10^4$ over every part and every thread, empty ones before and after
non-empty ones, compute bit for bit what the folds from $-\infty$ that leave them out compute
(`two_level_example` in bf16 with empty parts and 16 threads, and Hypothesis draws), within the
bound with no term for them.
`check_stored_fold_factor` checks the factor per fold at 60 digits against
$e^{\frac52 u_{acc} + 3u_{acc}(K' - 1)}$ up to $K' = 2^{23} - 1$ ($2^{52} - 1$ for float64 sums),
shows it needs to grow with $K'$ (the standard model's adversarial fold passes $e^{4u_{acc}}$
from $K' = 6$ on), and checks the recursion over chains and two-level trees against
$H^{run}_S$ and against what `out_bound` carries.
`check_decode_chunks` checks Lemma 11, `check_request_chunks` Lemma 12,
`check_flashinfer_ieee_start` Lemma 13 and `check_prefill_chunks` Lemma 14, as their last paragraphs say.
`check_lse_accounting` checks the lse section's inequality over its grid against the float64
value `lse_bound` returns, checks that `lse_bound` refuses every point of the grid beyond
$\rho = 2$, and checks that the inequality fails beyond $\rho = 2$ where the section says so.
`check_merge_growth_needs_bounded_rho` checks Lemma 3's room at $\rho' = 2$, at the out
bound's limit $2.5 + \min(A, 256)/4$ (with the states' lse error $E$ in full) and where it
runs out. `check_fused_accumulation` checks the fused
addition's error bound of Lemma 2's accumulation model on drawn fp32 addends, with the adversarial
one (the largest at a power of two, the others just below its last place) always tried. It
checks the model, not the hardware. `check_one_step_per_merge_is_not_enough` exhibits two
states whose merge moves a weight by about 1.42 steps (between 1.4 and 1.45). `check_not_absurdly_loose` measures
observed error / bound on typical inputs (normal $q, k, v$, $c = 1/\sqrt{D}$, 48 keys in two
relay parts, blocks of 16) and requires the ratio to stay above `LOOSENESS_FLOOR`: within a
factor 100 for fp16 and bf16, where the rounding of the weights dominates; fp32's errors on
random data are far below its worst case. The docs page of this proof shows the measured
table.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

import mpmath
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from relaycore import bounds
from relaycore.constants import LOG2E
from relaycore.proofs import exact
from relaycore.proofs import rounding as fp
from relaycore.proofs.draws import checked
from relaycore.proofs.merge_monoid import merge_rho
from relaycore.testing import CHUNK_FROM, Batch, blocked_steps, make_batch, stored_merges

#: The adversarial exponential's largest extra relative error: with fp32's own rounding
#: (``2^-24``) it errs by up to about ``u_exp - 2^-24`` (``u_exp = bounds.EXP_REL_FP32 = 2^-21``),
#: the assumption's extreme.
EXP_WOBBLE = 2.0**-21 - 2.0**-23
#: The adversarial logarithm's largest absolute error before its rounding: ``u_exp``, as the
#: assumption allows (PTX's ``lg2.approx.f32`` is documented within ``2^-22`` absolute on ``(0.5, 2)``, with no
#: exact value at 1: https://docs.nvidia.com/cuda/parallel-thread-execution/#floating-point-instructions-lg2).
#: ``Elementary.log`` draws it at every argument, 1 included: its runs do not assume ``log(1) = 0``.
LOG_WOBBLE = 2.0**-21
#: The adversarial division's largest extra relative error: at most 1.5 ulp of the quotient
#: (an ulp of ``y`` is at least ``2^-24 |y|``), so that with its rounding to nearest it stays
#: within 2 ulp (``Elementary.divide``, Lemma 9), reaching at most ``5/4 u_acc``; the checks of
#: divisions within 2 ulp draw ``Elementary(division_ulps=2)`` instead, which reaches ``2 u_acc``.
DIVISION_WOBBLE = 1.5 * 2.0**-24
#: Steps per key of the all-at-once merge of two or more non-empty states (Lemma 4); the
#: Triton backend's count, ``relaycore.fast.triton.rounding.MERGE_STEPS``, must equal it.
ALL_AT_ONCE_MERGE_STEPS = 2
#: Steps per key, every token, that the Triton kernels' divisions within 2 ulp (PTX
#: ``div.full.f32``) add to their count ("Counting the Triton kernels' steps");
#: ``relaycore.fast.triton.rounding.DIVISION_STEPS`` must equal it.
TRITON_DIVISION_STEPS = 1
#: FlashInfer 0.5.0's ``math::inf``, the running maximum its ``state_t::init`` starts from (base 2):
#: a fold there starts from the phantom state ``(0, -5e4)`` with ``D = 1`` (Lemmas 9-11).
FLASHINFER_START = -5e4
#: FlashInfer's start from commit ``d7f2c64`` on (#4401, on its main branch after ``nightly-v0.6.18-20260819``, in
#: no release tag of 2026-08-22; Lemma 13): ``math::inf`` is IEEE's infinity, every state starts from
#: ``(0, -inf, 1)``, a masked slot scores ``-inf``, and every exponent difference is clamped at ``-inf`` before
#: ``exp2`` (``exp2_clamped``). A ``start`` of the simulations, beside ``None`` and ``FLASHINFER_START``.
FLASHINFER_IEEE_START = "ieee"


def _fp32_quantum(x):
    """fp32's quantum (an ulp) at ``x``: ``2^(e - 23)`` for ``2^e <= |x| < 2^(e + 1)``, ``2^-149``
    below the normal range."""
    _, e = mpmath.frexp(x)
    return mpmath.ldexp(1, max(int(e) - 1, -126) - 23)


class Elementary:
    """The hardware's fp32 ``exp``/``exp2`` and ``log``/``log2``, as an adversary: each result
    carries an extra error drawn per call from ``rng`` (relative ``EXP_WOBBLE`` for the
    exponential, exact at 0; absolute ``LOG_WOBBLE`` for the logarithm). With ``ftz`` the
    exponential flushes a result below fp32's smallest normal number to 0, as
    ``ex2.approx.ftz.f32`` does; without it, it keeps subnormals."""

    def __init__(self, rng: random.Random, extreme: bool, ftz: bool = False, division_ulps=None):
        self.rng, self.extreme, self.ftz, self.division_ulps = rng, extreme, ftz, division_ulps

    def _draw(self, size: float) -> float:
        return self.rng.choice((-1, 1)) * size if self.extreme else self.rng.uniform(-1, 1) * size

    def __call__(self, x, base=None):
        if x == 0 or x == exact.NEG_INF:
            return mpmath.mpf(1) if x == 0 else mpmath.mpf(0)
        y = fp.exp(x, self._draw(EXP_WOBBLE), base)
        return mpmath.mpf(0) if self.ftz and y < fp.SMALLEST_NORMAL else y

    def log(self, x, base=None):
        """fp32 ``log(x)`` (or ``log2``) with an absolute error up to ``LOG_WOBBLE``, then rounded."""
        return fp.r32((mpmath.log(x) if base is None else mpmath.log(x, base)) + self._draw(LOG_WOBBLE))

    def sigmoid(self, x):
        """fp32 ``sigmoid(x)`` with an extra relative error up to ``EXP_WOBBLE`` (so within
        ``u_exp`` with its rounding, Lemma 3's assumption on the sigmoid form), exact at
        ``+-inf``; flushed below ``2^-126`` with ``ftz``."""
        if mpmath.isinf(x):
            return mpmath.mpf(1) if x > 0 else mpmath.mpf(0)
        y = fp.r32(exact.sigmoid(x) * (1 + self._draw(EXP_WOBBLE)))
        return mpmath.mpf(0) if self.ftz and y < fp.SMALLEST_NORMAL else y

    def logaddexp(self, a, b):
        """fp32 ``logaddexp(a, b)`` with an absolute error up to ``LOG_WOBBLE`` before its
        rounding (within ``u_exp + u_acc/2 |result|``, Lemma 3's assumption), exact where a side
        is ``-inf`` (``-inf`` for two)."""
        if a == exact.NEG_INF or b == exact.NEG_INF:
            return exact.logaddexp(a, b)
        return fp.r32(exact.logaddexp(a, b) + self._draw(LOG_WOBBLE))

    def divide(self, a, b, ar: fp.Arithmetic):
        """fp32 ``a / b`` within 2 ulp, as CUDA's ``__fdividef`` (Lemma 9): the exact quotient
        off by a relative ``DIVISION_WOBBLE`` at most, then rounded as ``ar.div`` rounds (at most
        ``5/4 u_acc`` relatively, reached at a quotient of mantissa near 1). With
        ``division_ulps`` (2: PTX ``div.full.f32``, the Triton kernels'), the fp32 value nearest
        ``q + d ulp(q)`` that lies within ``division_ulps`` ulp of the exact ``q``, ``d`` drawn up to
        ``division_ulps`` (``ulp(q)`` fp32's quantum at ``q``, ``2^-149`` below the normal range):
        at its extreme ``2 u_acc`` relatively at a quotient of mantissa 1, the most 2 ulp allow."""
        if self.division_ulps is None:
            return ar.div(a * (1 + self._draw(DIVISION_WOBBLE)), b)
        q = ar._flushed(a) / ar._flushed(b)
        if q == 0:
            return q
        width = self.division_ulps * _fp32_quantum(q)
        target = q + self._draw(self.division_ulps) * _fp32_quantum(q)
        grid = _fp32_quantum(target)
        near = sorted((mpmath.floor(target / grid) * grid, mpmath.ceil(target / grid) * grid),
                      key=lambda y: abs(y - target))
        return ar._flushed(next(y for y in near if abs(y - q) <= width))


class Repeatable(Elementary):
    """``Elementary`` whose error at an argument is drawn from ``seed`` and that argument alone, the
    same at every call: two computations that call it at different arguments elsewhere (a fold
    from FlashInfer's start and one from ``-inf``) see the same errors where their arguments agree."""

    def __init__(self, seed: float, extreme: bool, ftz: bool = False, division_ulps=None):
        super().__init__(random.Random(seed), extreme, ftz, division_ulps)
        self.seed = seed

    def _at(self, *key):
        self.rng = random.Random(repr((self.seed,) + key))
        return self

    def __call__(self, x, base=None):
        return Elementary.__call__(self._at("exp", x, base), x, base)

    def log(self, x, base=None):
        return Elementary.log(self._at("log", x, base), x, base)

    def divide(self, a, b, ar: fp.Arithmetic):
        return Elementary.divide(self._at("divide", a, b), a, b, ar)


def simulate_part(q, keys, values, scale, dtype: str, block: int, exp, ar: fp.Arithmetic, base=None,
                  restart: int = 0, divide=None) -> tuple:
    """One part (one query row over some keys) as a blocked online-softmax kernel computes it.

    The precision model of Lemma 2: the accumulations (the score's dot product, the sums of the
    weights and of the products ``p v``, added to the rescaled accumulators) round as ``ar``
    does, possibly toward zero; every other operation rounds to nearest: the products (the
    scale's, ``p v``, the rescales) and the division as ``ar`` does, subnormals flushed to zero
    where ``ar.flush`` (Lemma 6), the subtractions of the running maximum and the lse's addition
    with ``fp.r32``.

    Args:
        q: ``[D]`` query, exact in ``dtype``.
        keys, values: ``[n][D]``, exact in ``dtype``.
        scale: the softmax scale; rounded to fp32 as a kernel receives it (for ``base == 2``,
            the host's float64 product ``scale * LOG2E`` rounded to fp32, as
            ``relaycore.fast.triton`` passes ``qk_scale``).
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``.
        block: keys per block.
        exp: the fp32 exponential and logarithm (``Elementary``).
        ar: the fp32 arithmetic: the rounding of the sums, and whether subnormals are flushed.
        base: ``None`` for natural exponentials, ``2`` for the ``exp2``/``log2`` form of the
            Triton kernels (scores and lse in base 2).
        restart: where a second segment starts (``0``: none): blocks are cut from the first key
            and again from ``restart``, as a single-pass tile walks a prefix of ``restart``
            keys and then the own keys.
        divide: the output's division ``divide(a, b)``; ``None``: ``ar.div`` (to nearest).

    Returns:
        ``(out [D] fp32 values, lse fp32)``, lse in ``base``; ``(0, -inf)`` for ``n == 0``.
    """
    dim, n = len(q), len(keys)
    if n == 0:
        return exact.empty(dim)
    scale = fp.r32(scale if base is None else float(scale) * LOG2E)
    m, norm, acc = exact.NEG_INF, mpmath.mpf(0), [mpmath.mpf(0)] * dim
    starts = list(range(0, restart, block)) + list(range(restart, n, block))
    for start, stop in zip(starts, starts[1:] + [n]):
        rows = range(start, stop)
        s = [ar.mul(ar.dot(q, keys[j]), scale) for j in rows]
        m_new = max([m] + s)
        # Lemma 2 items 1 and 4 take these subtractions at u_acc / 2: to nearest, never truncated.
        alpha = exp(fp.r32(m - m_new), base) if m != exact.NEG_INF else mpmath.mpf(0)
        p = [exp(fp.r32(x - m_new), base) for x in s]
        norm = ar.add(ar.mul(norm, alpha), ar.total(p))
        p_low = [fp.round_to(x, dtype) for x in p]
        for d in range(dim):
            products = [ar.mul(p_low[i], values[j][d]) for i, j in enumerate(rows)]
            acc[d] = ar.add(ar.mul(acc[d], alpha), ar.total(products))
        m = m_new
    divide = divide or ar.div
    return [divide(a, norm) for a in acc], fp.r32(m + exp.log(norm, base))


def simulate_merge(a: tuple, b: tuple, exp, ar: fp.Arithmetic) -> tuple:
    """``relaycore.state.merge`` (torch path, fp32) with every operation rounded to fp32: the
    subtractions and the lse's addition to nearest (``fp.r32``), the divisions and the products
    to nearest as ``ar`` does (subnormals flushed where ``ar.flush``), the two sums
    ``w_a + w_b`` and ``c_a o_a + c_b o_b`` as ``ar`` rounds (the merge monoid's rounding leaves
    them room to truncate; torch rounds them to nearest)."""
    (oa, la), (ob, lb) = a, b
    m = max(la, lb)
    m = m if mpmath.isfinite(m) else mpmath.mpf(0)
    wa, wb = exp(fp.r32(la - m)), exp(fp.r32(lb - m))
    total = ar.add(wa, wb)
    if total == 0:
        return [mpmath.mpf(0)] * len(oa), exact.NEG_INF
    ca, cb = ar.div(wa, total), ar.div(wb, total)
    return [ar.add(ar.mul(ca, x), ar.mul(cb, y)) for x, y in zip(oa, ob)], fp.r32(m + exp.log(total))


def simulate_merge_sigmoid(a: tuple, b: tuple, exp, ar: fp.Arithmetic) -> tuple:
    """Order (S) of "Lemma 3, other pairwise orders": ``sigmoid(l_a - l_b) o_a + sigmoid(l_b -
    l_a) o_b`` (as ``torch.sigmoid``), the lse ``logaddexp(l_a, l_b)`` computed separately, every
    operation rounded to fp32 (the differences to nearest, so ``fl(l_b - l_a) = -fl(l_a -
    l_b)``; products as ``ar`` rounds, the sum as ``ar`` does). Two empty sides are guarded
    (``(0, -inf)``): unguarded, ``-inf - (-inf)`` is NaN."""
    (oa, la), (ob, lb) = a, b
    if la == exact.NEG_INF and lb == exact.NEG_INF:
        return [mpmath.mpf(0)] * len(oa), exact.NEG_INF
    d = la - lb if mpmath.isinf(la) or mpmath.isinf(lb) else fp.r32(la - lb)
    ca, cb = exp.sigmoid(d), exp.sigmoid(-d)
    return [ar.add(ar.mul(ca, x), ar.mul(cb, y)) for x, y in zip(oa, ob)], exp.logaddexp(la, lb)


def simulate_merge_logaddexp(a: tuple, b: tuple, exp, ar: fp.Arithmetic) -> tuple:
    """Order (L) of "Lemma 3, other pairwise orders": ``L = logaddexp(l_a, l_b)``, ``exp(l_a - L)
    o_a + exp(l_b - L) o_b``, every operation rounded to fp32 as in ``simulate_merge_sigmoid``.
    Two empty sides are guarded (``(0, -inf)``): unguarded, ``exp(-inf - (-inf))`` is NaN."""
    (oa, la), (ob, lb) = a, b
    total = exp.logaddexp(la, lb)
    if total == exact.NEG_INF:
        return [mpmath.mpf(0)] * len(oa), exact.NEG_INF
    ca = exp(fp.r32(la - total)) if la != exact.NEG_INF else mpmath.mpf(0)
    cb = exp(fp.r32(lb - total)) if lb != exact.NEG_INF else mpmath.mpf(0)
    return [ar.add(ar.mul(ca, x), ar.mul(cb, y)) for x, y in zip(oa, ob)], total


def simulate_merge_stored(a: tuple, b: tuple, exp, ar: fp.Arithmetic, dtype: str, base=None, divide=None) -> tuple:
    """Lemma 8's merge: ``simulate_merge``'s order of operations (in base 2 where ``base == 2``,
    as FlashInfer's ``merge_state_in_place``) on outputs read from storage in ``dtype``: each
    incoming output is rounded to ``dtype`` (to nearest) before the merge, the lses stay fp32.
    ``divide``: the coefficients' division ``(w, T) -> w / T``; ``None``: ``ar.div`` (to nearest); pass
    ``Elementary.divide`` for divisions within 2 ulp (``-use_fast_math``, Lemma 8's last part)."""
    (oa, la), (ob, lb) = a, b
    m = max(la, lb)
    m = m if mpmath.isfinite(m) else mpmath.mpf(0)
    wa, wb = exp(fp.r32(la - m), base), exp(fp.r32(lb - m), base)
    total = ar.add(wa, wb)
    if total == 0:
        return [mpmath.mpf(0)] * len(oa), exact.NEG_INF
    divide = divide or ar.div
    ca, cb = divide(wa, total), divide(wb, total)
    xa, xb = ([fp.round_to(x, dtype) for x in o] for o in (oa, ob))
    return [ar.add(ar.mul(ca, x), ar.mul(cb, y)) for x, y in zip(xa, xb)], fp.r32(m + exp.log(total, base))


def simulate_merge_all_base2(states: list, exp, ar: fp.Arithmetic, divide=None) -> tuple:
    """The Triton merge kernel's form: all parts at once, base-2 lses, one max, one division,
    the lse converted to natural log (times ``ln 2``) at the end. As in Lemma 4, the sums over
    the states round as ``ar`` does (possibly toward zero, item (d)); the subtractions
    ``lse_i - M`` (item (b)), the products, the division (item (c)) and the lse's addition and
    product (item (a)) round to nearest, the products and the division as ``ar`` does
    (subnormals flushed where ``ar.flush``). ``divide``: the final division ``(acc, sum) -> acc /
    sum``; ``None``: ``ar.div`` (to nearest); pass ``Elementary.divide`` for the kernels' PTX
    ``div.full.f32`` (within 2 ulp, with no exact value at a sum of 1: "Counting the Triton
    kernels' steps")."""
    dim = len(states[0][0])
    m = max(lse for _, lse in states)
    m = m if mpmath.isfinite(m) else mpmath.mpf(0)
    total, acc = mpmath.mpf(0), [mpmath.mpf(0)] * dim
    for out, lse in states:
        w = exp(fp.r32(lse - m), 2)
        total = ar.add(total, w)
        acc = [ar.add(x, ar.mul(w, o)) for x, o in zip(acc, out)]
    if total == 0:
        return [mpmath.mpf(0)] * dim, exact.NEG_INF
    divide = divide or ar.div
    return [divide(x, total) for x in acc], fp.r32(fp.r32(m + exp.log(total, 2)) * fp.r32(mpmath.log(2)))


def exp2_clamped(exp, x, y):
    """``exp2(max(fl(x - y), -inf))`` for a base-2 ``x`` and a running maximum ``y >= x``, as FlashInfer computes
    every rescale and weight from commit ``d7f2c64`` on (Lemma 13): CUDA's ``max`` (``fmaxf``) returns the operand
    that is not NaN, so ``x = -inf`` gives ``exp2(-inf) = 0`` whatever ``y`` is, ``-inf - (-inf)`` included, and a
    finite difference is rounded to fp32 and passed on unchanged. The runs from ``-inf`` and from
    ``FLASHINFER_START`` compute the same (they never form ``-inf - (-inf)``)."""
    if x == exact.NEG_INF:
        return mpmath.mpf(0)
    return exp(fp.r32(x - y), 2)


def reciprocal_divide(exp, ar: fp.Arithmetic):
    """FlashInfer's ``state_t::normalize`` from commit ``d7f2c64`` on (Lemma 13) as a division ``(a, d) -> a / d``
    for the folds' ``divide``: ``d_rcp = (d > 0) ? __fdividef(1, d) : 0``, then ``fl(a d_rcp)`` (``ar.mul``).
    ``__fdividef(1, d)`` is ``exp.divide(1, d, ar)``, within 2 ulp, for ``d`` up to ``2^126``, and 0 above, as CUDA
    documents it for ``2^126 < |d| < 2^128`` (a fold's ``d`` is below ``e^5 K'``, Lemma 9, so never there)."""

    def divide(a, d):
        if not d > 0:
            return ar.mul(a, 0)
        return ar.mul(a, exp.divide(1, d, ar) if d <= mpmath.ldexp(1, 126) else mpmath.mpf(0))

    return divide


def simulate_merge_running(states: list, exp, ar: fp.Arithmetic, divide=None) -> tuple:
    """Lemma 9's running fold in base 2 (FlashInfer's ``state_t::merge``, then ``normalize``
    and ``get_lse``): from ``M = -inf, D = 1, O = 0``, each state in turn rescales the sums by
    ``exp2(fl(M_old - M))`` and adds its output times ``exp2(fl(lse_i - M))``; at the end
    ``O / D`` (``divide``, default ``ar.div``) and the lse ``fl(M + log2 D)``, converted to
    natural log as ``fl(lse fl(ln 2))``. Products round to nearest as ``ar`` does, the sums as
    ``ar`` rounds them, the subtractions with ``fp.r32``. A first state with no key gives NaN
    (``-inf - (-inf)``); FlashInfer's fold starts from ``M = -5e4`` instead (Lemma 9)."""
    out, lse = running_fold_base2(states, exp, ar, divide)
    if mpmath.isnan(lse):
        return out, lse
    return out, fp.r32(lse * fp.r32(mpmath.log(2)))


def running_fold_base2(states: list, exp, ar: fp.Arithmetic, divide=None, start=None, dim: int = 0) -> tuple:
    """``simulate_merge_running`` with its lse left in base 2, ``fl(M + log2 D)``, as a fold whose
    result is the state of a fold above it hands it on (Lemma 10): ``(out [D] fp32, base-2 lse)``;
    NaN, output and lse, where the first state holds no key. With ``start`` (``FLASHINFER_START``)
    the fold is FlashInfer 0.5.0's ``state_t``: from ``M = start, D = 1, O = 0`` it takes every
    state, empty ones too, as ``merge(o, lse, 1)``: ``D = fl(fl(D g) + fl(1 f))``; a fold of no
    state hands on ``(0, fl(start + log2 1))`` (``dim`` gives its length: a thread of FlashInfer's
    two-level kernels with no index set). With ``FLASHINFER_IEEE_START`` it is FlashInfer's fold from
    commit ``d7f2c64`` on: from ``M = -inf, D = 1, O = 0``, every state taken, the factors ``exp2_clamped``
    (an empty state before any that holds a key leaves ``D = 0``, not NaN), the division ``divide`` (pass
    ``reciprocal_divide``, its ``normalize``, which also gives 0 where ``D = 0``), the lse ``-inf`` where
    ``M`` is."""
    divide = divide or ar.div
    dim = len(states[0][0]) if states else dim
    ieee = start == FLASHINFER_IEEE_START
    m = exact.NEG_INF if start is None or ieee else mpmath.mpf(start)
    total, acc = mpmath.mpf(1), [mpmath.mpf(0)] * dim
    for out, lse in states:
        m_new = max(m, lse)
        if m_new == exact.NEG_INF and not ieee:
            return [mpmath.nan] * dim, mpmath.nan
        g, f = exp2_clamped(exp, m, m_new), exp2_clamped(exp, lse, m_new)
        total = ar.add(ar.mul(total, g), f if start is None else ar.mul(1, f))
        acc = [ar.add(ar.mul(x, g), ar.mul(o, f)) for x, o in zip(acc, out)]
        m = m_new
    lse = exact.NEG_INF if m == exact.NEG_INF else fp.r32(m + exp.log(total, 2))
    return [divide(x, total) for x in acc], lse


def simulate_decode_chunk(q, keys, values, scale, block: int, groups: int, exp, ar: fp.Arithmetic, divide=None,
                          start=None) -> tuple:
    """FlashInfer 0.5.0's split-KV decode of one query row over one chunk of its KV (Lemma 11):
    ``compute_qk``, ``update_local_state`` and ``sync_state`` of ``include/flashinfer/attention/
    decode.cuh``, every rounding explicit as ``simulate_part``'s.

    The chunk's keys are walked in iterations of ``block * groups`` slots; in iteration ``t``
    group ``z`` (``threadIdx.z``; ``block = bdy * tile_size_per_bdx``) takes the slots
    ``t block groups + z block`` to ``... + block - 1``, a block of its own running state
    ``(m, d, o)``: scores ``fl(fl(q . k) c2)`` with ``c2 = fl(fl(scale) fl(log2 e))``
    (``sm_scale_log2``), ``m`` their running maximum, ``d <- fl(d a)`` and ``o <- fl(o a)`` with
    ``a = exp2(fl(m_old - m))``, then per slot ``d <- fl(d + p_j)`` and ``o <- fl(o + fl(p_j v_j))``
    with ``p_j = exp2(fl(s_j - m))`` in fp32 (not rounded to the input format). With ``groups >
    1``, ``sync_state`` folds the groups' unnormalised states in order, ``state_t::merge(o_z,
    m_z, d_z)``: ``M' = max(M, m_z)``, ``D = fl(fl(D f1) + fl(d_z f2))``, ``O = fl(fl(O f1) +
    fl(o_z f2))``, ``f1 = exp2(fl(M - M'))``, ``f2 = exp2(fl(m_z - M'))``. The output is
    ``divide(O, D)`` (``OutputTransform``: ``O`` times ``rcp.approx(D)``, within 2 ulp: pass
    ``Elementary.divide``), the lse ``fl(M + log2 D)`` in base 2.

    ``start=None``: every running state starts from ``m = -inf`` (its first rescale is 0), slots
    past the chunk's end are left out, and so are groups that hold no key. ``start=
    FLASHINFER_START``: the kernel as it runs, every state from ``(0, -5e4, 1)``, a slot past the
    chunk's end masked to the score ``-5e4`` with the value 0 (``kFillZero``), every group folded.
    ``start=FLASHINFER_IEEE_START``: the kernel from commit ``d7f2c64`` on (Lemma 13), as with
    ``FLASHINFER_START`` but from ``(0, -inf, 1)``, masked slots scoring ``-inf``, the block's factors
    ``exp2(fl(x - m_scaled))`` with the subtrahend ``m_scaled = max(m, -FLT_MAX)`` and no clamp of the exponent
    (``compute_qk``), ``sync_state``'s factors ``exp2_clamped`` (``state_t::merge``); the output ``divide(O, D)``
    where ``M`` is finite (``OutputTransform``, unchanged).

    Args:
        q: ``[D]`` query; keys, values: ``[n][D]``, in the order of the chunk; exact in the input
            format.
        scale: the softmax scale (a float).
        block: slots per block of a group (positive); groups: ``bdz`` (positive).
        exp: the fp32 exponential and logarithm (``Elementary``); ar: the fp32 arithmetic.
        divide: the output's division; ``None``: ``ar.div``.
        start: ``None``, ``FLASHINFER_START`` or ``FLASHINFER_IEEE_START``.

    Returns:
        ``(out [D] fp32, lse base 2 fp32, steps [n])``: ``(0, -inf)`` and no steps for ``n == 0``;
        ``steps[j]`` counts, as the kernel runs, key ``j``'s exponential, each later block of its
        group in which the row sees a key, and each factor of ``sync_state`` not exactly ``2^0``
        that multiplies a sum holding it (Lemma 11's count).
    """
    dim, n = len(q), len(keys)
    if n == 0:
        return exact.empty(dim) + ([],)
    c2 = fp.r32(fp.r32(scale) * fp.r32(LOG2E))
    width = block * groups
    ieee = start == FLASHINFER_IEEE_START
    top = exact.NEG_INF if start is None or ieee else mpmath.mpf(start)
    steps = [0] * n
    states = []  # per group: (m, d, o [D], the keys it holds)
    for z in range(groups):
        m, d, o, held = top, mpmath.mpf(1), [mpmath.mpf(0)] * dim, []
        for t in range(-(-n // width)):
            slots = range(t * width + z * block, t * width + (z + 1) * block)
            seen = [j for j in slots if j < n]
            if start is None and not seen:
                continue
            # a masked slot scores -5e4, as in the kernel; -inf would give the same bits wherever Lemma 11's
            # condition holds and exp2 flushes (its weight is 0 either way, and a keyless group's d, 1 + T
            # here and 1 then, enters sync_state times a flushed 0), so no check can tell the two apart
            s = [ar.mul(ar.dot(q, keys[j]), c2) if j < n else top for j in slots if start is not None or j < n]
            v = [values[j] if j < n else [mpmath.mpf(0)] * dim for j in slots if start is not None or j < n]
            m_new = max([m] + s)
            # the exponent subtrahend: FlashInfer's d7f2c64 clamps a fully masked block's -inf at -FLT_MAX and
            # clamps no exponent here (-inf - m_scaled is -inf; without that clamp, -inf - (-inf) is NaN: an error)
            m_scaled = max(m_new, -fp.largest("float32")) if ieee else m_new
            alpha = exp(fp.r32(m - m_scaled), 2)
            p = [exp(fp.r32(x - m_scaled), 2) for x in s]
            d = ar.mul(d, alpha)
            for x in p:
                d = ar.add(d, x)
            o = [ar.mul(a, alpha) for a in o]
            for x, vj in zip(p, v):
                o = [ar.add(a, ar.mul(x, b)) for a, b in zip(o, vj)]
            if seen:
                for j in held:
                    steps[j] += 1
                for j in seen:
                    steps[j] = 1
            held, m = held + seen, m_new
        if held or start is not None:
            states.append((m, d, o, held))
    if groups == 1:  # sync_state does nothing for bdz == 1
        m_top, total, acc, _ = states[0]
    else:
        m_top, total, acc, inside = top, mpmath.mpf(1), [mpmath.mpf(0)] * dim, []
        for m, d, o, held in states:
            m_new = max(m_top, m)
            f1, f2 = exp2_clamped(exp, m_top, m_new), exp2_clamped(exp, m, m_new)
            total = ar.add(ar.mul(total, f1), ar.mul(d, f2))
            acc = [ar.add(ar.mul(a, f1), ar.mul(b, f2)) for a, b in zip(acc, o)]
            for j in (inside if m_new > m_top else []) + (held if m < m_new else []):
                steps[j] += 1
            inside, m_top = inside + held, m_new
    divide = divide or ar.div
    return [divide(a, total) for a in acc], fp.r32(m_top + exp.log(total, 2)), steps


def decode_chunk_steps(num_keys: int, block: int, groups: int) -> int:
    """Lemma 11's count for a key of a decode chunk of ``num_keys >= 1`` keys walked by ``groups``
    groups in blocks of ``block`` slots: ``I + Z' - 1``, ``I = ceil(n / (block groups))`` the
    iterations and ``Z' = min(groups, ceil(n / block))`` the groups that hold a key.
    ``relaycore.testing.blocked_steps(groups=...)`` counts the same."""
    return -(-num_keys // (block * groups)) + min(groups, -(-num_keys // block)) - 1


def request_chunk_steps(num_keys: int, chunk: int, block: int, groups: int, levels: int, fast: bool) -> int:
    """Lemma 12's count for a key of a row that sees ``num_keys >= 1`` keys of a request whose KV
    (its prefixes, then its own keys) is cut into chunks of ``chunk`` keys from its first key, each
    walked as Lemma 11's chunk, the chunks' states folded by a tree of ``levels`` running folds
    (Lemma 10), divisions within 2 ulp where ``fast``: the first chunk's ``decode_chunk_steps``,
    ``tree_fold_steps`` more. ``relaycore.testing.blocked_steps(chunk_from="request", merge="running", ...)`` counts
    the same."""
    parts = -(-num_keys // chunk)
    return decode_chunk_steps(min(chunk, num_keys), block, groups) + tree_fold_steps(parts, levels, fast)


def segment_chunk_steps(segments: list, chunk: int, block: int, groups: int, levels: int, fast: bool) -> int:
    """``request_chunk_steps`` for chunks cut from each segment's first key instead (``segments``:
    the keys the row sees in each, at least one in all), as ``relaycore.testing.blocked_steps(chunk=...)``
    counts by default: the largest chunk's ``decode_chunk_steps``, ``tree_fold_steps`` more."""
    parts = sum(-(-n // chunk) for n in segments)
    return (max(decode_chunk_steps(min(chunk, n), block, groups) for n in segments if n)
            + tree_fold_steps(parts, levels, fast))


def tree_fold_steps(held: int, levels: int, fast: bool) -> int:
    """Lemma 10's count for a tree of ``levels`` running folds over ``held >= 1`` states that hold keys of the row:
    ``K' - 1 + levels`` for ``K' >= 2``; for ``K' = 1``, ``levels - 1``, a step for each fold over the lone state
    that another fold reads (its lse takes a logarithm of 1, which may err), none where ``fast`` (its steps hold
    them); ``levels`` more where ``fast``."""
    return (held - 1 + levels if held >= 2 else 0 if fast else levels - 1) + levels * int(fast)


def part_block(problem: dict, part: int) -> int:
    """Keys per step of ``part``: its entry of ``problem["blocks"]`` where the parts walk
    blocks of different sizes (the Triton kernels' short own tiles), else ``problem["block"]``."""
    return problem["blocks"][part] if "blocks" in problem else problem["block"]


#: The pairwise orders other than ``relaycore.state.merge``'s that "Lemma 3, other pairwise
#: orders" covers at Lemma 3's count: ``problem["merge"]`` names one for ``simulate``.
OTHER_PAIRWISE = {"sigmoid": simulate_merge_sigmoid, "logaddexp": simulate_merge_logaddexp}
#: Every pairwise order priced at Lemma 3's two steps, ``"standard"`` being Lemma 3's own
#: (``relaycore.state.merge``'s): ``problem["merge"]`` may be a tuple of these names, one per
#: merge of ``simulate``'s left fold, in turn (a fold that mixes them).
PAIRWISE = {"standard": simulate_merge, **OTHER_PAIRWISE}


def simulate(problem: dict, exp) -> tuple:
    """The relay computation of one query row: each part blocked, the parts merged (pairwise
    left to right in natural log, or all at once in base 2), the output rounded once to the
    input format."""
    out, lse = simulate_fp32(problem, exp)
    return [fp.round_to(x, problem["dtype"]) for x in out], lse


def simulate_fp32(problem: dict, exp) -> tuple:
    """``simulate`` before the output's rounding to the input format: ``(out [D] fp32, lse)``.
    Where ``problem["stored"]`` holds, the parts are folded left to right by Lemma 8's merge of
    stored outputs in the problem's base (the lse converted to natural log at the end, as
    ``fl(fl(lse) fl(ln 2))`` in base 2), the parts' and the merges' divisions within 2 ulp where
    ``problem["fast_division"]``. Where ``problem["merge"] == "running"`` (base 2), they
    are folded by Lemma 9's running fold, every division within 2 ulp where
    ``problem["fast_division"]`` (``Elementary.divide``). Otherwise in base 2 they are folded all
    at once (Lemma 4, the Triton merge kernel's), the parts' and the fold's divisions within 2 ulp
    where ``problem["fast_division"]`` (the Triton kernels' ``div.full.f32``). Where
    ``problem["single_pass"]`` (one part, base 2) there is no fold: the part's output and its lse
    times ``fl(ln 2)``, as a single-pass tile writes them."""
    q, keys, values, dtype = problem["q"], problem["keys"], problem["values"], problem["dtype"]
    ar = fp.Arithmetic(problem.get("accumulate", "nearest"), problem.get("flush", False))
    base = 2 if problem.get("form") == "base2" else None
    divide = (lambda a, b: exp.divide(a, b, ar)) if problem.get("fast_division") else None
    states = []
    for part in range(problem["parts"]):
        idx = [j for j, label in enumerate(problem["labels"]) if label == part]
        states.append(simulate_part(q, [keys[j] for j in idx], [values[j] for j in idx], problem["scale"], dtype,
                                    part_block(problem, part), exp, ar, base, problem.get("restart", 0), divide))
    if problem.get("single_pass"):  # a single-pass tile's row: its one part's state, the lse to natural log
        (out, lse), = states
        return out, fp.r32(lse * fp.r32(mpmath.log(2)))
    if problem.get("merge") == "running":
        return simulate_merge_running(states, exp, ar, divide)
    if problem.get("stored"):
        out, lse = exact.fold(states, lambda a, b: simulate_merge_stored(a, b, exp, ar, dtype, base, divide))
        return out, (lse if base is None else fp.r32(lse * fp.r32(mpmath.log(2))))
    if base == 2:
        return simulate_merge_all_base2(states, exp, ar, divide)
    merge = problem.get("merge")
    if merge in OTHER_PAIRWISE or isinstance(merge, tuple):
        if isinstance(merge, tuple) and len(merge) != len(states) - 1:
            raise ValueError(f"problem['merge']: expected {len(states) - 1} orders, one per merge, got {merge}")
        orders = iter(merge if isinstance(merge, tuple) else [merge] * (len(states) - 1))
        return exact.fold(states, lambda a, b: PAIRWISE[next(orders)](a, b, exp, ar))
    return exact.fold(states, lambda a, b: simulate_merge(a, b, exp, ar))


def reference(problem: dict) -> tuple:
    """The exact state, and the bound's inputs ``(V [D], A)``."""
    c = mpmath.mpf(problem["scale"])
    q, keys, values = problem["q"], problem["keys"], problem["values"]
    scores = [c * mpmath.fsum(mpmath.mpf(a) * b for a, b in zip(q, k)) for k in keys]
    score_abs = max(c * mpmath.fsum(abs(mpmath.mpf(a) * b) for a, b in zip(q, k)) for k in keys)
    value_abs = [max(abs(v[d]) for v in values) for d in range(len(q))]
    return exact.attention(scores, values), value_abs, score_abs


def errors_and_bounds(problem: dict, exp, steps=None, stored=None) -> tuple:
    """``(out errors [D], out bounds [D], lse error, lse bound)`` as floats; ``steps`` and
    ``stored`` (the out bound's) as in ``relaycore.bounds`` (default: ``default_steps``, 0)."""
    (ref_out, ref_lse), value_abs, score_abs = reference(problem)
    out, lse = simulate(problem, exp)
    prec = bounds.precision(problem["dtype"])
    n, dim = len(problem["keys"]), len(problem["q"])
    out_err = [float(abs(x - y)) for x, y in zip(out, ref_out)]
    scale = float(problem["scale"])
    out_b = bounds.out_bound(np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), n, float(score_abs), dim, prec, steps,
                             scale=scale, stored=stored)
    lse_b = float(bounds.lse_bound(float(ref_lse), n, float(score_abs), dim, prec, steps, scale=scale))
    return out_err, [float(b) for b in out_b], float(abs(lse - ref_lse)), lse_b


def _exact_in(dtype: str, x: float) -> float:
    return float(fp.round_to(x, dtype))


@st.composite
def problems(draw, max_parts: int = 4, forms=("natural", "base2"), dtypes=("float16", "bfloat16", "float32"),
             value_exponents=(0,)):
    """A small adversarial problem: one query row, 1-12 keys, 1 to ``max_parts`` relay parts
    (some may be empty), blocks of 1-4, one of ``forms`` (natural-log pairwise merges, or the
    base-2 all-at-once form), one of ``dtypes``, values in ``[-4, 4]`` times ``2^e`` (``e`` one
    of ``value_exponents``), fp32 sums rounded to nearest or truncated, subnormals flushed to
    zero or kept (``flush``, Lemma 6)."""
    dtype = draw(st.sampled_from(dtypes))
    dim = draw(st.integers(1, 6))
    n = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["typical", "large", "underflow"]))
    if kind == "underflow":  # scores spread so that weights reach fp16 subnormals and fp32 underflow
        dim, scale = 1, 1.0
        q = [1.0]
        keys = [[float(draw(st.sampled_from([0, -8, -12, -16, -17.5, -20, -24, -80, -87.5, -90, -104, -200])) + draw(st.floats(-2, 2)))] for _ in range(n)]
    else:
        magnitude = 1.0 if kind == "typical" else draw(st.sampled_from([30.0, 100.0, 250.0]))
        scale = draw(st.sampled_from([1 / np.sqrt(dim), 1.0, 0.125]))
        q = draw(st.lists(st.floats(-magnitude, magnitude), min_size=dim, max_size=dim))
        keys = draw(st.lists(st.lists(st.floats(-magnitude, magnitude), min_size=dim, max_size=dim), min_size=n, max_size=n))
    values = draw(st.lists(st.lists(st.floats(-4, 4), min_size=dim, max_size=dim), min_size=n, max_size=n))
    parts = draw(st.integers(1, max_parts))
    form = draw(st.sampled_from(forms))
    accumulate = draw(st.sampled_from(["nearest", "toward_zero"]))
    exact_vec = lambda vs: [mpmath.mpf(_exact_in(dtype, x)) for x in vs]  # noqa: E731
    labels = draw(st.lists(st.integers(0, parts - 1), min_size=n, max_size=n))
    block = draw(st.integers(1, 4))
    flush = draw(st.booleans())
    value_scale = 2.0 ** draw(st.sampled_from(value_exponents))
    return dict(
        dtype=dtype,
        scale=scale,
        q=exact_vec(q),
        keys=[exact_vec(k) for k in keys],
        values=[exact_vec([x * value_scale for x in v]) for v in values],
        parts=parts,
        labels=labels,
        block=block,
        form=form,
        accumulate=accumulate,
        flush=flush,
    )


def check_perturbed_weights_lemma():
    """Lemma 1 at 60 digits, with the perturbations at their extremes."""

    @checked(400)
    @given(
        st.lists(st.tuples(st.floats(-30, 0), st.floats(-5, 5), st.booleans(), st.booleans(), st.sampled_from([-1, 0, 1]), st.sampled_from([-1, 0, 1])), min_size=1, max_size=10),
        st.sampled_from([1e-7, 1e-4, 1e-2, 0.3]),
        st.sampled_from([0.0, 2.0**-25, 1e-3]),
    )
    def run(rows, rho, tau):
        rho, tau = mpmath.mpf(rho), mpmath.mpf(tau)
        scores = [mpmath.mpf(r[0]) for r in rows]
        top = max(scores)
        w = [mpmath.exp(s - top) for s in scores]  # the largest weight is 1, so Z >= e^-rho
        v = [mpmath.mpf(r[1]) for r in rows]
        a = [wj * mpmath.exp(rho if r[2] else -rho) + r[4] * tau for wj, r in zip(w, rows)]
        b = [wj * mpmath.exp(rho if r[3] else -rho) + r[5] * tau for wj, r in zip(w, rows)]
        eps = len(rows) * tau * mpmath.exp(rho)
        if eps >= 1 or min(b) < 0:
            return
        got = mpmath.fsum(x * y for x, y in zip(a, v)) / mpmath.fsum(b)
        want = mpmath.fsum(x * y for x, y in zip(w, v)) / mpmath.fsum(w)
        bound = (mpmath.expm1(2 * rho) + 2 * eps) / (1 - eps) * max(abs(x) for x in v)
        assert abs(got - want) <= bound * (1 + exact.AGREE)  # attained by one key: 60-digit slack

    run()


def check_merge_coefficients():
    """One fp32 merge: each coefficient (with its product and sum) within exp(+-rho_1) of exact,
    the sums rounded to nearest or truncated, the subtraction to nearest. The merge monoid's
    opposite pair ``-(32 - 2^-19)``, ``32 + 2^-17`` is always tried: a truncated subtraction
    would move ``c_a`` beyond rho_1 there."""
    prec = bounds.precision("float32")

    @checked(400)
    @given(st.floats(-1e4, 1e4), st.floats(-60, 60), st.randoms(use_true_random=False), st.sampled_from(["nearest", "toward_zero"]))
    @example(-(32 - 2.0**-19), 64 + 2.0**-17 - 2.0**-19, random.Random(0), "toward_zero")
    def run(la, gap, rnd, accumulate):
        la, lb = fp.r32(la), fp.r32(la + gap)
        exp, ar = Elementary(rnd, extreme=True), fp.Arithmetic(accumulate)
        (ca,), _ = simulate_merge(([mpmath.mpf(1)], la), ([mpmath.mpf(0)], lb), exp, ar)
        (cb,), _ = simulate_merge(([mpmath.mpf(0)], la), ([mpmath.mpf(1)], lb), exp, ar)
        rho1 = merge_rho(float(max(abs(la), abs(lb))), prec)
        for got, want in ((ca, exact.sigmoid(la - lb)), (cb, exact.sigmoid(lb - la))):
            if got == 0:  # fp32 underflow of the smaller side: an absolute error below tau
                assert want <= bounds.UNDERFLOW_ABS["float32"]
                continue
            assert abs(mpmath.log(got / want)) <= rho1, (accumulate, la, lb, got, want)

    run()


def check_simulated_kernel():
    """The whole kernel with explicit roundings, natural log and pairwise merges, stays within
    relaycore.bounds at ``default_steps`` (the base-2 form: ``check_triton_step_count``)."""

    @checked(600)
    @given(problems(forms=("natural",)), st.randoms(use_true_random=False), st.booleans())
    def run(problem, rnd, extreme):
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme))
        for e, b in zip(out_err, out_b):
            assert e <= b, (problem["dtype"], e, b)
        assert lse_err <= lse_b, (problem["dtype"], lse_err, lse_b)

    run()


def one_step(score_abs: float, num_keys: int, prec: bounds.Precision) -> float:
    """One step of ``relaycore.bounds``: ``u_exp + 3 u_acc + u_acc (A + log N + 1)``."""
    return merge_rho(score_abs + np.log(num_keys), prec)


def merge_all_at_once(chunks: list, draw) -> list:
    """Lemma 4's merge in the standard model of rounding, at 60 digits.

    Every fp32 operation multiplies its exact result by ``1 + draw(u_acc / 2)``, the
    exponential (exact at 0) by ``1 + draw(u_exp)``, and the base-2 logarithm is off by
    ``draw(u_exp) / ln 2``: ``draw(size)`` is the adversary, a number in ``[-size, size]``.

    Args:
        chunks: ``[(m_i, l_i)]``: each chunk's running maximum (base 2) and normaliser
            (``l_i >= 1``; 0 for a chunk that holds no key the row sees).

    Returns:
        Per chunk, ``None`` if it is empty, else ``(w_i, alpha_i, beta_i)``: its computed weight
        and the logs of the factors by which the merge multiplies its keys' numerator weights
        (``w_i`` times the roundings of the state's division ``acc_i / l_i`` and of the product
        ``w_i o_i``; the final division is the output's, Lemma 2 item 5) and normaliser weights
        (``w_i``) against the exact ``2^(m_i - M) l_i``, ``M`` the merge's maximum.
    """
    prec = bounds.precision("float32")
    half, u_exp, ln2 = mpmath.mpf(prec.u_acc) / 2, mpmath.mpf(prec.u_exp), mpmath.log(2)

    def fl(x):
        return x * (1 + draw(half))

    lse2 = [fl(m + fl(mpmath.log(l, 2) + draw(u_exp) / ln2)) if l else exact.NEG_INF for m, l in chunks]
    top = max(lse2)
    result = []
    for (m, l), x in zip(chunks, lse2):
        if not l:
            result.append(None)
            continue
        arg = fl(x - top)
        w = mpmath.mpf(1) if arg == 0 else mpmath.power(2, arg) * (1 + draw(u_exp))
        beta = mpmath.log(w / (mpmath.power(2, m - top) * l))
        result.append((w, beta + mpmath.log((1 + draw(half)) * (1 + draw(half))), beta))
    return result


@st.composite
def merge_chunks(draw):
    """1 to 8 chunk states ``(m_i, l_i)`` of one row, some empty, and the bound's ``(A, N)``: the
    chunk of ``n_i`` keys has its maximum score (natural log) up to ``A`` in magnitude and
    ``1 <= l_i <= n_i``."""
    magnitude = draw(st.sampled_from([1.0, 40.0, 1e3, 1e4]))
    chunks, score_abs, num_keys = [], 0.0, 0
    for _ in range(draw(st.integers(1, 8))):
        n = draw(st.sampled_from([0, 1, 2, 5, 64, 4096]))
        if n == 0:
            chunks.append((mpmath.mpf(0), mpmath.mpf(0)))
            continue
        m = fp.r32(draw(st.floats(-magnitude, magnitude)) / np.log(2))
        chunks.append((m, fp.r32(draw(st.floats(1, n)))))
        score_abs, num_keys = max(score_abs, abs(float(m)) * np.log(2)), num_keys + n
    return chunks, score_abs, num_keys


def _adversary(rng: random.Random, extreme: bool):
    return lambda size: rng.choice((-1, 1)) * size if extreme else rng.uniform(-1, 1) * size


def underflow_fits(rho, eps, num_keys, sigma0) -> bool:
    """Lemma 4's underflow inequality: the flushed or subnormal weights' errors (the normaliser's
    relative ``2^-102``, the numerator's ``F = 3 N 2^-126 (e^2rho + eps) / (1 - eps) V_d``) fit
    in Lemma 1's first term lowered by ``sigma_0`` on both sides (in units of ``V_d``)."""
    rho, eps, n, two = mpmath.mpf(rho), mpmath.mpf(eps), mpmath.mpf(num_keys), mpmath.mpf(2)
    rho_minus = rho - sigma0 + two**-102
    lowered = (mpmath.expm1(2 * rho_minus) + 2 * eps) / (1 - eps)
    numerator = 3 * n * two**-126 * (mpmath.exp(2 * rho) + eps) / (1 - eps)
    return lowered + numerator <= (mpmath.expm1(2 * rho) + 2 * eps) / (1 - eps)


def check_all_at_once_merge():
    """Lemma 4: with two or more non-empty states the merge moves every weight by at most
    ``ALL_AT_ONCE_MERGE_STEPS`` steps (and by at most the proof's sharper sum); with one it
    passes that state on unchanged. The drawn states include weights below fp32's smallest
    normal (their chunks' lses more than 126 apart in base 2): those are not charged to the
    steps but to ``sigma_0``, by "Underflow"'s inequality, which does not depend on the draw:
    it is checked here as the constant inequality it is, for ``rho`` from ``sigma_0`` to 88,
    ``eps`` up to ``1 - 2^-50`` and ``N`` up to ``2^23 - 1``, with ``sigma_0`` at its least
    (``A = 0``, ``N = 1``), and with the two bounds the proof gives it (left side below
    ``2^-100 e^2rho``, right side above ``2^-20.1 e^2rho``)."""
    prec = bounds.precision("float32")
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    second_order = 1 + mpmath.mpf(2) ** -20
    two = mpmath.mpf(2)
    sigma0 = own_step_room(0.0, 1, prec)
    assert sigma0 >= 4 * u_acc - two**-40
    for num_keys in (2, 2**10, 2**23 - 1):
        for rho in (sigma0, 1e-6, 1e-3, 0.1, 1.0, 3.0, 10.0, 30.0, 88.0):
            for eps in (0.0, 0.5, 1 - 2.0**-20, 1 - 2.0**-50):
                assert underflow_fits(rho, eps, num_keys, sigma0), (num_keys, rho, eps)
                e2 = mpmath.exp(2 * mpmath.mpf(rho))
                assert 3 * num_keys * two**-126 * (e2 + eps) < two**-100 * e2
                assert e2 - mpmath.exp(2 * (rho - sigma0 + two**-102)) > two**-20.1 * e2
    reached = []

    @checked(400)
    @given(merge_chunks(), st.randoms(use_true_random=False), st.booleans())
    def run(drawn, rnd, extreme):
        chunks, score_abs, num_keys = drawn
        merged = merge_all_at_once(chunks, _adversary(rnd, extreme))
        held = [(c, r) for c, r in zip(chunks, merged) if r is not None]
        if len(held) == 1:
            assert held[0][1][0] == 1  # its weight is exactly 1, every other one 0
            return
        if not held:
            return
        steps = ALL_AT_ONCE_MERGE_STEPS * one_step(score_abs, num_keys, prec)
        lse = [mpmath.log(2) * m + mpmath.log(l) for m, l in (c for c, _ in held)]
        top = max(lse)
        for ((m, l), (w, alpha, beta)), ell in zip(held, lse):
            if w < fp.SMALLEST_NORMAL:  # flushed or subnormal: charged to sigma_0 (above), not to the steps
                reached.append(w)
                continue
            sharper = 2 * u_exp + u_acc + u_acc / 2 * (mpmath.log(l) + 2 * abs(ell) + abs(top))
            assert max(abs(alpha), abs(beta)) <= sharper * second_order <= steps, (alpha, beta, sharper, steps)

    run()
    assert reached  # the draws do reach the weights below 2^-126


def own_step_room(score_abs, num_keys, prec: bounds.Precision):
    """``sigma_0`` of Lemma 2: the part of a key's own exponential step that no weight uses,
    ``3 u_acc + u_acc (A + log N + 1) - (-log(1 - u_exp) - u_exp)``."""
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    return 3 * u_acc + u_acc * (mpmath.mpf(score_abs) + mpmath.log(num_keys) + 1) - (-mpmath.log(1 - u_exp) - u_exp)


def _merge_inputs(a: tuple, b: tuple, draw) -> tuple:
    """What the standard-model merges (``merge_pairwise``, ``merge_pairwise_other``) start from:
    ``(half, full, u_exp, fl, lse, top)``, fp32's ``u_acc / 2``, ``u_acc`` and ``u_exp`` (mpmath),
    ``fl`` (an elementwise rounding, a factor ``1 + draw(u_acc / 2)``), the two states' computed
    lses (each ``m + log l``, the log off by ``draw(u_exp)``, both operations rounded) and their
    maximum."""
    prec = bounds.precision("float32")
    half, full, u_exp = mpmath.mpf(prec.u_acc) / 2, mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)

    def fl(x):
        return x * (1 + draw(half))

    lse = [fl(m + fl(mpmath.log(l) + draw(u_exp))) for m, l in (a, b)]
    return half, full, u_exp, fl, lse, max(lse)


def merge_pairwise(a: tuple, b: tuple, draw, fast: bool = False) -> list:
    """Lemma 3's merge of two part states in the standard model of rounding, at 60 digits.

    Each state is ``(m, l)``: its running maximum (natural log) and normaliser ``l >= 1``. Every
    elementwise fp32 operation multiplies its exact result by ``1 + draw(u_acc / 2)``, the two
    sums (``w_a + w_b`` and the final one) by ``1 + draw(u_acc)`` (they may truncate), the
    exponential (exact at 0) by ``1 + draw(u_exp)``; the logarithm is off by ``draw(u_exp)``.
    ``fast``: the part's division and the coefficient's within 2 ulp (``1 + draw(2 u_acc)`` each, Lemma 8's
    divisions within 2 ulp).

    Returns:
        Per state ``(alpha, beta)``: the logs of the factors by which the merge multiplies its
        keys' numerator weights (the part's division ``acc / l``, the coefficient's division
        and product, the final sum) and normaliser weights (``w`` and the sum ``T``), against
        the exact ``e^(m - M) l`` over the merged normaliser, ``M`` the merge's maximum.
    """
    half, full, u_exp, fl, lse, top = _merge_inputs(a, b, draw)
    w = []
    for x in lse:
        arg = fl(x - top)
        w.append(mpmath.mpf(1) if arg == 0 else mpmath.exp(arg) * (1 + draw(u_exp)))
    total_factor = 1 + draw(full)  # T = (w_a + w_b)(1 + delta_T)
    result = []
    for (m, l), wx in zip((a, b), w):
        beta = mpmath.log(wx * total_factor / (mpmath.exp(m - top) * l))
        # o = fl(sum_x fl(fl(w_x / T) fl(acc_x / l_x))) = sum_x w_x (four roundings) acc_x / l_x / T
        division = 2 * full if fast else half
        numer = wx * (1 + draw(division)) * (1 + draw(division)) * (1 + draw(half)) * (1 + draw(full))
        result.append((mpmath.log(numer / (mpmath.exp(m - top) * l)), beta))
    return result


@st.composite
def pairwise_states(draw):
    """Two part states ``(m, l)`` of one row and the bound's ``(A, N)``: each of ``n`` keys, its
    maximum score up to ``A`` in magnitude and ``1 <= l <= n``; opposite maxima included."""
    magnitude = draw(st.sampled_from([1.0, 40.0, 1e3, 1e4]))
    ma = fp.r32(draw(st.floats(-magnitude, magnitude)))
    mb = -ma if draw(st.booleans()) else fp.r32(draw(st.floats(-magnitude, magnitude)))
    na, nb = draw(st.sampled_from([1, 2, 64, 4096])), draw(st.sampled_from([1, 2, 64, 4096]))
    states = ((ma, fp.r32(draw(st.floats(1, na)))), (mb, fp.r32(draw(st.floats(1, nb)))))
    return states, max(abs(float(ma)), abs(float(mb))), na + nb


def check_pairwise_merge():
    """Lemma 3: a pairwise merge of two part states moves every numerator and normaliser weight
    by at most its growth ``2 u_exp + 5/2 u_acc + u_acc / 2 (log l_a + 2 |l_a| + |l_b|)`` (to
    second order), and that is within 2 steps."""
    merge_growth_within_steps(fast=False, examples=400)


def merge_growth_within_steps(*, fast: bool, examples: int) -> None:
    """``merge_pairwise`` (``fast``: its divisions within 2 ulp) of drawn part states moves every
    numerator and normaliser weight by at most Lemma 3's growth, plus ``3 u_acc`` with ``fast``
    (to second order), within Lemma 3's two steps, one more with ``fast`` (``examples``
    Hypothesis draws)."""
    prec = bounds.precision("float32")
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    second_order = 1 + mpmath.mpf(2) ** -20
    extra, merge_steps = (3 * u_acc, 3) if fast else (0, 2)

    @checked(examples)
    @given(pairwise_states(), st.randoms(use_true_random=False), st.booleans())
    def run(drawn, rnd, extreme):
        states, score_abs, num_keys = drawn
        merged = merge_pairwise(*states, _adversary(rnd, extreme), fast=fast)
        steps = merge_steps * one_step(score_abs, num_keys, prec)
        lse = [m + mpmath.log(l) for m, l in states]
        for (m, l), (alpha, beta), ell, other in zip(states, merged, lse, lse[::-1]):
            growth = 2 * u_exp + 5 * u_acc / 2 + extra + u_acc / 2 * (mpmath.log(l) + 2 * abs(ell) + abs(other))
            assert max(abs(alpha), abs(beta)) <= growth * second_order <= steps, (alpha, beta, growth, steps)

    run()


def merge_pairwise_other(a: tuple, b: tuple, draw, form: str, normaliser: str = "proof") -> tuple:
    """The orders (S) (``form="sigmoid"``) and (L) (``"logaddexp"``) of "Lemma 3, other pairwise
    orders" on two part states, in the standard model of rounding at 60 digits, as
    ``merge_pairwise`` models Lemma 3's: the incoming lses as there; the difference
    ``fl(l_a - l_b)`` (or ``fl(l_x - L)``) rounded by ``1 + draw(u_acc / 2)``; the sigmoid (or the
    exponential, exact at 0) by ``1 + draw(u_exp)``; the lse ``logaddexp`` off by ``draw(u_exp)``
    absolutely, then rounded; on the numerator the part's division, the product and the final
    sum (``1 + draw(u_acc)``).

    ``normaliser`` picks the merged state's Lemma-1 normaliser: ``"proof"`` the one the proof
    uses (the exact ``T = e^(l_a - M) + e^(l_b - M)`` for (S), ``e^(L - M)`` for (L)), ``"exact"``
    the exact ``T`` for both (a mutation: for (L) it leaves ``L``'s error on the numerator).

    Returns:
        ``([(alpha, beta)] per state, eta, Z)``: the logs of the factors on the state's numerator
        and normaliser weights against the exact ``e^(m - M) l`` (``M`` the larger computed
        lse), the merged lse's error ``eta = L - M - log Z`` (Lemma 3 (a) for the next merge)
        and the normaliser ``Z``.
    """
    half, full, u_exp, fl, lse, top = _merge_inputs(a, b, draw)
    total = mpmath.fsum(mpmath.exp(x - top) for x in lse)  # the exact T of the computed lses
    big_l = fl(top + mpmath.log(total) + draw(u_exp))  # logaddexp: off by u_exp, then rounded
    if form == "sigmoid":
        d = fl(lse[0] - lse[1])
        coefficients = [exact.sigmoid(d) * (1 + draw(u_exp)), exact.sigmoid(-d) * (1 + draw(u_exp))]
        z = total
    else:
        args = [fl(x - big_l) for x in lse]
        coefficients = [mpmath.mpf(1) if t == 0 else mpmath.exp(t) * (1 + draw(u_exp)) for t in args]
        z = mpmath.exp(big_l - top) if normaliser == "proof" else total
    result = []
    for (m, l), x, c in zip((a, b), lse, coefficients):
        exact_weight = mpmath.exp(m - top) * l
        numer = c * (1 + draw(half)) * (1 + draw(half)) * (1 + draw(full)) * z  # o = sum_x c_x acc_x / l_x
        normal = mpmath.exp(x - top) * z / total  # Z = sum_x e^(l_x - M) (Z / T)
        result.append((mpmath.log(numer / exact_weight), mpmath.log(normal / exact_weight)))
    return result, big_l - top - mpmath.log(z), z


def other_pairwise_growth(states, prec: bounds.Precision, argument: bool = True) -> list:
    """Lemma 3's growth per state, ``2 u_exp + 5/2 u_acc + u_acc / 2 (log l_x + 2 |l_x| +
    |l_y|)``; ``argument=False`` drops the ``u_acc / 2 (|l_x| + |l_y|)`` that the rounding of the
    coefficient's argument takes (a mutation)."""
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    lse = [m + mpmath.log(l) for m, l in states]
    return [2 * u_exp + 5 * u_acc / 2 + u_acc / 2 * (mpmath.log(l) + abs(ell) + (abs(ell) + abs(other) if argument else 0))
            for (m, l), ell, other in zip(states, lse, lse[::-1])]


def check_other_pairwise_merges():
    """"Lemma 3, other pairwise orders": the sigmoid form (S) and the logaddexp form (L) of a
    pairwise merge of two part states move every numerator and normaliser weight by at most
    Lemma 3's growth (to second order), within two steps, and leave the merged lse within Lemma
    3 (a)'s ``u_exp + u_acc / 2 (log Z + |L|)`` of ``M + log Z`` with ``Z >= e^-|eta_L|``. Not
    vacuous: at lses of +-1000 the worst extreme adversary needs the argument's rounding term
    (the growth without it is exceeded), and (L) with the exact ``T`` as its normaliser
    exceeds Lemma 3's growth."""
    prec = bounds.precision("float32")
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    second_order = 1 + mpmath.mpf(2) ** -20

    def holds(states, score_abs, num_keys, draw, form):
        merged, eta, z = merge_pairwise_other(*states, draw, form)
        steps = 2 * one_step(score_abs, num_keys, prec)
        for (alpha, beta), growth in zip(merged, other_pairwise_growth(states, prec)):
            assert max(abs(alpha), abs(beta)) <= growth * second_order <= steps, (form, alpha, beta, growth, steps)
        big_l = max(m + mpmath.log(l) for m, l in states) + eta + mpmath.log(z)
        assert abs(eta) <= (u_exp + u_acc / 2 * (max(mpmath.log(z), 0) + abs(big_l))) * second_order, (form, eta)
        assert z >= mpmath.exp(-(u_exp + u_acc / 2 * abs(big_l)) * second_order)  # Z >= e^-|eta_L|
        return merged

    @checked(400)
    @given(pairwise_states(), st.randoms(use_true_random=False), st.booleans(), st.sampled_from(["sigmoid", "logaddexp"]))
    def run(drawn, rnd, extreme, form):
        states, score_abs, num_keys = drawn
        holds(states, score_abs, num_keys, _adversary(rnd, extreme), form)

    run()
    states = ((fp.r32(1000.0), mpmath.mpf(1)), (fp.r32(-1000.0), mpmath.mpf(1)))
    for form in ("sigmoid", "logaddexp"):
        worst = max(max(abs(alpha) for alpha, _ in holds(states, 1000.0, 2, _adversary(random.Random(seed), True), form))
                    for seed in range(200))
        without = max(other_pairwise_growth(states, prec, argument=False))
        assert worst > 1.5 * without, (form, worst / without)  # the argument's rounding is needed
        assert worst <= max(other_pairwise_growth(states, prec)) * second_order
    mutated = max(max(abs(alpha) - growth for (alpha, _), growth in
                      zip(merge_pairwise_other(*states, _adversary(random.Random(seed), True), "logaddexp", "exact")[0],
                          other_pairwise_growth(states, prec)))
                  for seed in range(200))
    assert mutated > 0  # (L) needs L's error on its normaliser, not on its numerator


def check_other_pairwise_step_count():
    """"Lemma 3, other pairwise orders": the natural-log form merged pairwise in the sigmoid form
    (S) or the logaddexp form (L) (``simulate_merge_sigmoid``, ``simulate_merge_logaddexp``:
    every rounding explicit in fp32, the library functions adversarial within the assumption),
    or in left folds that mix them with Lemma 3's merge (``PAIRWISE``), stays within
    ``out_bound`` and ``lse_bound`` at Lemma 3's count ``pairwise_steps``. Not vacuous: a
    sigmoid or logaddexp off by ``2^-12`` (past the assumption) breaks the bound on a fixed
    problem, named alone or as a mixed fold's merge."""

    @checked(300)
    @given(problems(forms=("natural",)), st.randoms(use_true_random=False), st.booleans(),
           st.sampled_from(sorted(OTHER_PAIRWISE)), st.lists(st.sampled_from(sorted(PAIRWISE)), min_size=3, max_size=3),
           st.booleans())
    def run(problem, rnd, extreme, merge, orders, mixed):
        problem = dict(problem, merge=tuple(orders[: problem["parts"] - 1]) if mixed else merge)
        steps = pairwise_steps(problem)
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme), steps)
        for e, b in zip(out_err, out_b):
            assert e <= b, (merge, problem["dtype"], steps, e, b)
        assert lse_err <= lse_b, (merge, problem["dtype"], steps, lse_err, lse_b)

    run()

    class Wrong(Elementary):  # a library function past the assumption: off by 2^-12
        def sigmoid(self, x):
            return Elementary.sigmoid(self, x) * (1 + mpmath.mpf(2) ** -12)

        def logaddexp(self, a, b):
            return Elementary.logaddexp(self, a, b) - mpmath.mpf(2) ** -12

    one = [mpmath.mpf(1)]
    problem = dict(dtype="float32", scale=1.0, q=one, keys=[[mpmath.mpf(0)], [mpmath.mpf(1)]], values=[one, one],
                   parts=2, labels=[0, 1], block=1, form="natural", accumulate="nearest", flush=False)
    for merge in sorted(OTHER_PAIRWISE) + [(name,) for name in sorted(OTHER_PAIRWISE)]:
        case = dict(problem, merge=merge)
        out_err, out_b, _, _ = errors_and_bounds(case, Elementary(random.Random(0), False), pairwise_steps(case))
        assert all(e <= b for e, b in zip(out_err, out_b))
        out_err, out_b, _, _ = errors_and_bounds(case, Wrong(random.Random(0), False), pairwise_steps(case))
        assert any(e > b for e, b in zip(out_err, out_b)), (merge, out_err, out_b)


def lse_error_bound(score_abs, num_keys, head_dim: int, prec: bounds.Precision, steps, lse_abs, form: str):
    """``E`` of "The lse": the most the roundings after the weights leave ``|lse - ref|``, with the
    normaliser's perturbation ``r`` at its largest, ``rho - u_p - sigma_0 - sigma_1`` plus the
    underflow term. ``form``: ``"natural"``, ``"base2"`` or ``"base2_single"`` (Lemma 4's fold
    with ``K' = 1``: a second logarithm and addition)."""
    u_acc, u_exp, u_p = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp), mpmath.mpf(prec.u_p)
    h, log_n, ell = u_acc / 2, mpmath.log(num_keys), mpmath.mpf(lse_abs)
    rho = mpmath.mpf(float(bounds.weight_perturbation(num_keys, score_abs, head_dim, prec, steps)))
    sigma1 = mpmath.mpf(float(bounds.gamma(num_keys, prec.u_acc) - bounds.gamma(num_keys - 1, prec.u_acc)))
    underflow = -mpmath.log(1 - num_keys * mpmath.mpf(2) ** -125 * mpmath.exp(rho))
    r = rho - u_p - own_step_room(score_abs, num_keys, prec) - sigma1 + underflow
    x = r + u_exp + h * (log_n + rho + u_exp)  # the logarithm, its rounding
    e = x + h * (ell + x)  # the addition of the shift
    if form == "base2_single":
        e = e + u_exp + h * u_exp  # log2 of w = 1, and its rounding
        e = e + h * (ell + e)  # the addition of M
    if form != "natural":
        e = e + (2 * h + h * h) * (ell + e)  # fl(ln 2) and the product
    return e, rho


def check_lse_accounting():
    """"The lse": the roundings after the weights fit ``bounds.lse_bound`` itself (its float64
    value) for every policy, the three forms, ``A`` from 0 to 1e6, ``N`` from 1 to 2^22, ``D`` up
    to 256, ``nu`` (steps) from 1 to ``2N`` and ``rho <= 2`` (the logarithm's ``u_exp`` within ``sigma_0``
    on its own); ``lse_bound`` refuses every point of the grid beyond ``rho = 2`` with
    ``NoBound``; and the inequality fails beyond, first near ``rho = 5.6`` for fp32, where the
    proof says it stops."""
    refused = 0
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        prec = bounds.precision(dtype)
        assert prec.u_exp <= 4 * prec.u_acc  # item 1: u_exp within sigma_0 >= 4 u_acc - 2^-40
        for score_abs in (0.0, 1.0, 20.0, 1e3, 1e4, 1e6):
            for num_keys in (1, 2, 3, 16, 4096, 2**16, 2**20, 2**22):
                for head_dim in (1, 128, 256):
                    for steps in sorted({1, 2, 3, -(-num_keys // 64) + 2, num_keys, 2 * num_keys}):
                        for lse_abs in (0.0, score_abs + np.log(num_keys)):
                            rho = float(bounds.weight_perturbation(num_keys, score_abs, head_dim, prec, steps))
                            if rho > bounds.LSE_RHO_MAX:
                                try:
                                    bounds.lse_bound(lse_abs, num_keys, score_abs, head_dim, prec, steps)
                                except bounds.NoBound:
                                    refused += 1
                                    continue
                                raise AssertionError(("not refused", dtype, score_abs, num_keys, head_dim, steps))
                            implemented = mpmath.mpf(float(bounds.lse_bound(lse_abs, num_keys, score_abs, head_dim,
                                                                            prec, steps)))
                            closed = mpmath.mpf(rho) + 3 * mpmath.mpf(prec.u_acc) * (mpmath.mpf(lse_abs) + 1)
                            assert abs(implemented - closed) <= closed * 2.0**-50  # the closed form, in float64
                            for form in ("natural", "base2", "base2_single"):
                                e, _ = lse_error_bound(score_abs, num_keys, head_dim, prec, steps, lse_abs, form)
                                assert e <= min(closed, implemented), (dtype, score_abs, num_keys, head_dim, steps, lse_abs, form)
    assert refused > 0  # the grid does reach past rho = 2
    prec = bounds.precision("float32")
    e, rho = lse_error_bound(0.0, 2**20, 128, prec, 2**21, 0.0, "base2_single")
    assert 5 < rho < 6 and e > rho + 3 * mpmath.mpf(prec.u_acc)


def lse_error_at(score_abs, num_keys, rho, prec: bounds.Precision):
    """``E`` of "The lse" as a function of ``rho``, for an exact lse at the edge ``A + log N``:
    ``r`` taken as ``rho`` plus the normaliser's underflow term (larger than the section's ``r``,
    which also subtracts ``u_p``, ``sigma_0`` and ``sigma_1``), in the form with the most
    roundings (Lemma 4's fold with ``K' = 1``, in base 2). An upper bound on a state's lse error
    at any ``rho`` where the state has the Lemma-1 form and ``N 2^-125 e^rho < 1``."""
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    h, log_n, rho = u_acc / 2, mpmath.log(num_keys), mpmath.mpf(rho)
    ell = mpmath.mpf(score_abs) + log_n
    assert num_keys * mpmath.mpf(2) ** -125 * mpmath.exp(rho) < 1
    r = rho - mpmath.log(1 - num_keys * mpmath.mpf(2) ** -125 * mpmath.exp(rho))
    x = r + u_exp + h * (log_n + rho + u_exp)
    e = x + h * (ell + x)
    e = e + u_exp + h * u_exp
    e = e + h * (ell + e)
    return e + (2 * h + h * h) * (ell + e)


def merge_growth(score_abs, num_keys, rho_in, prec: bounds.Precision, lse_error=None):
    """Lemma 3's bound on a pairwise merge's growth, its states' perturbations within ``rho_in``
    and their exact lses at the edge ``A + log N``: ``2 u_exp + 5/2 u_acc + u_acc / 2 (log Z_a
    + 2 |l_a| + |l_b|)`` with ``log Z_a <= log N + rho_in`` and each computed lse within
    ``lse_error`` of its exact one: by default ``rho_in + 3 u_acc (A + log N + 1)`` (the states'
    lse bound, proved for ``rho_in <= 2``); pass ``lse_error_at(...)`` beyond."""
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    a, log_n, rho_in = mpmath.mpf(score_abs), mpmath.log(num_keys), mpmath.mpf(rho_in)
    if lse_error is None:
        lse_error = rho_in + 3 * u_acc * (a + log_n + 1)
    lse = a + log_n + lse_error
    return 2 * u_exp + 5 * u_acc / 2 + u_acc / 2 * (log_n + rho_in + 3 * lse)


def check_merge_growth_needs_bounded_rho():
    """Lemma 3's "two steps" holds, to first order, while the merged states' ``rho <= 2`` (the
    lse section's bound on their lses included), with at least ``u_acc (3/2 + A/2)`` (less a
    relative 2^-16) left for second-order terms; and up to the out bound's limit
    ``rho = 2.5 + min(A, 256) / 4`` (``bounds.out_rho_limit``), with the states' lse error taken
    as the accounting ``E`` at that ``rho``, with at least ``0.45 u_acc`` left. At ``A = 0`` it
    stops near ``rho = 2.75``. Beyond, the merge lemma is not proved: that is why ``out_bound``
    refuses ``rho`` past the limit (and ``lse_bound`` past 2, where the lse's closed form ends)."""
    prec = bounds.precision("float32")
    u_acc = mpmath.mpf(prec.u_acc)
    for score_abs in (0.0, 1.0, 20.0, 100.0, 256.0, 1e3, 1e4, 1e6):
        for num_keys in (2, 3, 16, 4096, 2**16, 2**20, 2**22):
            two_steps = 2 * one_step(score_abs, num_keys, prec)
            room = two_steps - merge_growth(score_abs, num_keys, 2, prec)
            assert room >= u_acc * (mpmath.mpf(3) / 2 + mpmath.mpf(score_abs) / 2) * (1 - mpmath.mpf(2) ** -16), \
                (score_abs, num_keys, room / u_acc)
            limit = float(bounds.out_rho_limit(score_abs))
            edge = merge_growth(score_abs, num_keys, limit, prec, lse_error_at(score_abs, num_keys, limit, prec))
            assert two_steps - edge >= mpmath.mpf(0.45) * u_acc, (score_abs, num_keys, (two_steps - edge) / u_acc)
    two_steps = 2 * one_step(0.0, 2**20, prec)
    assert merge_growth(0.0, 2**20, 2.7, prec) < two_steps < merge_growth(0.0, 2**20, 2.8, prec)
    at = lambda rho: merge_growth(0.0, 2**20, rho, prec, lse_error_at(0.0, 2**20, rho, prec))  # noqa: E731
    assert at(2.7) < two_steps < at(2.8)


def fused_sum(addends, guard: int):
    """A matrix unit's fused addition (Lemma 2's accumulation model): the fp32 addends aligned to
    the largest one's exponent ``e``, every bit below ``2^(e - 23 - guard)`` dropped (toward
    zero), the kept sum normalised to fp32 toward zero."""
    addends = [mpmath.mpf(x) for x in addends if x != 0]
    if not addends:
        return mpmath.mpf(0)
    top = max(int(mpmath.frexp(x)[1]) - 1 for x in addends)  # 2^top <= |x_max| < 2^(top + 1)
    quantum = mpmath.ldexp(1, top - 23 - guard)
    kept = [(mpmath.floor if x > 0 else mpmath.ceil)(x / quantum) * quantum for x in addends]
    return fp.round_to(mpmath.fsum(kept), "float32", "toward_zero")


def check_fused_accumulation():
    """Lemma 2's accumulation model: a fused addition of ``r`` non-zero fp32 addends, aligned to
    the largest and truncated, with 0 to 3 extra alignment bits, errs by less than
    ``(r - 1) u_acc sum |x_i|``, the bound of a chain of ``r - 1`` truncated additions. The
    adversarial case (the largest at a power of two, the others just below its last place) is
    always tried."""
    u_acc = mpmath.mpf(bounds.precision("float32").u_acc)
    addend = st.builds(lambda s, m, e: fp.r32(s * m * 2.0**e), st.sampled_from([-1, 1]), st.floats(0.5, 1), st.integers(-40, 5))

    @checked(400)
    @given(st.lists(addend, min_size=2, max_size=17), st.integers(0, 3), st.booleans())
    @example([1.0] + [2.0**-23 * (1 - 2.0**-20)] * 16, 0, False)
    @example([2.0 - 2.0**-23] + [2.0**-23 * (1 - 2.0**-20)] * 16, 1, False)
    def run(addends, guard, cancel):
        if cancel:  # the first two nearly cancel
            addends = [addends[0], fp.r32(-addends[0] * (1 - 2.0**-12))] + addends[2:]
        nonzero = [x for x in addends if x != 0]
        exact_sum = mpmath.fsum(nonzero)
        err = abs(fused_sum(nonzero, guard) - exact_sum)
        assert err < (len(nonzero) - 1) * u_acc * mpmath.fsum(abs(x) for x in nonzero) or err == 0, (addends, guard)

    run()


def check_one_step_per_merge_is_not_enough():
    """Two states of lse near +40 and -40: among 200 seeded extreme adversaries, the worst moves
    the smaller state's weights by about 1.42 steps: more than one (Lemma 4's remark), within
    the two counted."""
    prec = bounds.precision("float32")
    chunks = [(fp.r32(40 / np.log(2)), mpmath.mpf(1)), (fp.r32(-40 / np.log(2)), mpmath.mpf(1))]
    step = one_step(40.0, 2, prec)
    worst = max(abs(merge_all_at_once(chunks, _adversary(random.Random(seed), True))[1][1]) for seed in range(200))
    assert 1.4 * step < worst < 1.45 * step <= ALL_AT_ONCE_MERGE_STEPS * step, (worst / step)


def triton_steps(problem: dict, divisions: int = TRITON_DIVISION_STEPS) -> int:
    """``nu`` of "Counting the Triton kernels' steps" for a simulated problem, its parts being the
    chunks: the most blocks one part fills, plus the merge's steps if two parts hold keys, plus
    ``divisions`` for the divisions within 2 ulp (``div.full.f32``; 0: the count with divisions
    rounded to nearest, as before they were priced)."""
    held = [(n, part_block(problem, part)) for part, n in
            ((part, problem["labels"].count(part)) for part in range(problem["parts"])) if n]
    merge = ALL_AT_ONCE_MERGE_STEPS if len(held) >= 2 else 0
    return max(-(-n // b) for n, b in held) + merge + divisions


def check_triton_divisions_cost_a_step():
    """"Counting the Triton kernels' steps", the divisions: the Triton kernels' quotients are PTX
    ``div.full.f32``, within 2 ulp (``2 u_acc`` relatively) where Lemma 4 (c) charges a state's
    division ``u_acc / 2`` and Lemma 2's item 5 the output's ``u_acc``. Their excess on a key's
    numerator weights, as logs of the worst factors (a quotient's ``1 - 2 u_acc`` against the charge's
    ``1 - u_acc / 2`` or ``1 - u_acc``), is about ``u_acc`` for a single-pass token, ``3 u_acc`` for a
    token of one chunk (its chunk's division, then the fold's by a sum of 1) and ``5/2 u_acc`` for
    one of two chunks or more (its chunk's, then the fold's). Checked to first order, Lemma 4's
    growth (Lemma 9's at ``G = 0``) taken at the out bound's limit on ``rho`` with the states' lse errors
    ``E`` in full, over ``A`` from 0 to 10^6 and ``N`` from 2 to 2^22: with ``TRITON_DIVISION_STEPS``
    the merge's steps leave at least ``8.1 u_acc``, one step holds the one chunk's excess with
    ``4.9 u_acc`` left and the single pass's with ``6.99 u_acc``; the merge's two steps alone leave
    ``1.98 u_acc`` (``A = 256``, ``N = 2^22``), and with the divisions' excess ``-0.51 u_acc``: the
    old count is short there. An end-to-end run cannot show that: one fp32 key of value 1.5 in one
    chunk beside an empty one, both divisions ``1.5 * 2^-24`` high (``Elementary.divide`` at its
    extreme; the fold's ``1.5 / 1`` is not exact), errs by ``2 u_acc``, where the bound at the old count
    (1 step) allows ``30.75 u_acc`` and the new (2) ``54.75 u_acc``: the bound doubles ``rho`` (numerator
    and normaliser weights at opposite extremes) and spends a whole step on the key's own exponential,
    slack that no run of a few divisions reaches. With the full 2 ulp (``division_ulps=2``) a key of value 1
    comes out ``1 + 2^-22``, then ``1 + 2^-21``: ``4 u_acc``, within the bound at either count too."""
    prec = bounds.precision("float32")
    u_acc = mpmath.mpf(prec.u_acc)
    ln = mpmath.log

    def excess(charge):  # a quotient within 2 ulp against a division charged ``charge`` (log, worst side)
        return ln((1 - charge) / (1 - 2 * u_acc))

    single = excess(u_acc)
    one_chunk = excess(u_acc) - ln(1 - 2 * u_acc)  # the chunk's quotient, item 5's, and the fold's x / 1
    chunks = excess(u_acc / 2) + excess(u_acc)  # the chunk's against (c), the fold's against item 5
    assert single <= u_acc * (1 + 2 * u_acc) and one_chunk <= 3 * u_acc + 4 * u_acc**2
    assert chunks <= mpmath.mpf(5) / 2 * u_acc * (1 + 2 * u_acc)
    merge, old_merge, one, alone = [], [], [], []
    for score_abs in (0.0, 1.0, 20.0, 100.0, 256.0, 1e3, 1e4, 1e6):
        for num_keys in (2, 3, 16, 4096, 2**16, 2**20, 2**22):
            step = one_step(score_abs, num_keys, prec)
            grown = running_fold_growth(score_abs, num_keys, float(bounds.out_rho_limit(score_abs)), prec, 0, False)
            merge.append((ALL_AT_ONCE_MERGE_STEPS + TRITON_DIVISION_STEPS) * step - grown - chunks)
            old_merge.append(ALL_AT_ONCE_MERGE_STEPS * step - grown)
            alone.append(ALL_AT_ONCE_MERGE_STEPS * step - grown - chunks)
        for num_keys in (1, 2, 2**22):
            step = one_step(score_abs, num_keys, prec)
            one.append((TRITON_DIVISION_STEPS * step - one_chunk, TRITON_DIVISION_STEPS * step - single))
    assert min(merge) >= mpmath.mpf(8.1) * u_acc, min(merge) / u_acc
    # tight: one step at A = 0, N = 1 is u_exp + 4 u_acc = 8 u_acc, less 3 u_acc (one chunk, the fold's x / 1
    # included) and u_acc (a single pass)
    assert mpmath.mpf(4.9) * u_acc <= min(r for r, _ in one) < 5 * u_acc, min(r for r, _ in one) / u_acc
    assert mpmath.mpf(6.99) * u_acc <= min(r for _, r in one) < 7 * u_acc, min(r for _, r in one) / u_acc
    assert mpmath.mpf(1.98) * u_acc <= min(old_merge) < 2 * u_acc, min(old_merge) / u_acc
    assert -mpmath.mpf(0.52) * u_acc < min(alone) < -mpmath.mpf(0.5) * u_acc, min(alone) / u_acc

    class Above(Elementary):  # every error at its largest, one sign
        def _draw(self, size):
            return size

    value = [[mpmath.mpf(1.5)]]
    key = dict(dtype="float32", scale=1.0, q=[mpmath.mpf(1)], keys=[[mpmath.mpf(0)]], values=value, parts=2,
               labels=[0], block=1, form="base2", fast_division=True)
    nearest = simulate(dict(key, fast_division=False), Above(random.Random(0), True))[0]
    assert nearest == value[0]  # rounded to nearest, both divisions (1.5 / 1, then / 1) are exact
    for steps, allowed in ((triton_steps(key, 0), mpmath.mpf(30.75)), (triton_steps(key), mpmath.mpf(54.75))):
        out_err, out_b, _, _ = errors_and_bounds(key, Above(random.Random(0), True), steps)
        assert out_err == [float(2 * u_acc)] and allowed < mpmath.mpf(out_b[0]) / u_acc < allowed + mpmath.mpf(0.01)
    # ``Elementary.divide``'s wobble reaches at most 5/4 u_acc a quotient; at the full 2 ulp
    # (``division_ulps=2``) a value of 1 comes out 1 + 2^-22, then 1 + 2^-21: 2 u_acc a division,
    # the proof's figure, 4 u_acc in all, still inside the bound at either count
    one = dict(key, values=[[mpmath.mpf(1)]])
    for steps in (triton_steps(one, 0), triton_steps(one)):
        out_err, out_b, _, _ = errors_and_bounds(one, Above(random.Random(0), True, division_ulps=2), steps)
        assert out_err == [float(4 * u_acc)] and out_err[0] <= out_b[0]


def part_lses(problem: dict) -> list:
    """The exact lse (natural log) of each part that holds a key."""
    c = mpmath.mpf(problem["scale"])
    scores = [c * mpmath.fsum(mpmath.mpf(a) * b for a, b in zip(problem["q"], k)) for k in problem["keys"]]
    held = [[s for s, label in zip(scores, problem["labels"]) if label == part] for part in range(problem["parts"])]
    return [mpmath.log(mpmath.fsum(mpmath.exp(s) for s in part)) for part in held if part]


def check_triton_step_count():
    """The base-2, all-at-once form over up to 8 chunks, each walked in blocks of its own size
    (the prefix tiles' and the short own tiles' steps differ), every division within 2 ulp (the
    chunks' and the fold's, ``div.full.f32``, ``Elementary.divide``; a fold over one state divides
    by 1 inexactly too), stays within relaycore.bounds at the counted steps ``triton_steps``
    (never above ``default_steps``), with an ``exp2`` that flushes results below ``2^-126`` to
    zero (``ex2.approx.ftz``) or keeps them. The draws reach merges whose smaller chunk weights
    fall below ``2^-126`` (Lemma 4, "Underflow"). An end-to-end run, not a test of the count's
    division step: the bound's slack hides it (``check_triton_divisions_cost_a_step``)."""
    reached = []

    @checked(400)
    @given(problems(max_parts=8, forms=("base2",)), st.randoms(use_true_random=False), st.booleans(),
           st.lists(st.integers(1, 4), min_size=8, max_size=8), st.booleans())
    def run(problem, rnd, extreme, blocks, ftz):
        problem = dict(problem, blocks=blocks[: problem["parts"]], fast_division=True)
        steps = triton_steps(problem)
        assert steps <= bounds.default_steps(len(problem["keys"]))
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme, ftz, division_ulps=2),
                                                           steps)
        for e, b in zip(out_err, out_b):
            assert e <= b, (problem["dtype"], steps, e, b)
        assert lse_err <= lse_b, (problem["dtype"], steps, lse_err, lse_b)
        lses = part_lses(problem)
        if ftz and max(lses) - min(lses) > 127 * mpmath.log(2):  # a chunk's weight 2^(lse_i - M) < 2^-126
            reached.append(problem)

    run()
    assert reached


def check_single_pass_step_count():
    """A single-pass walk (one part: blocks from the first key, and again from the own KV's
    first key ``T``; no merge; its division within 2 ulp, ``div.full.f32``) stays within
    relaycore.bounds at ``ceil(T / b) + ceil((n - T) / b) + TRITON_DIVISION_STEPS`` steps, the
    count of "Counting the Triton kernels' steps"."""

    @checked(400)
    @given(problems(max_parts=1, forms=("base2",)), st.data(), st.randoms(use_true_random=False), st.booleans())
    def run(problem, data, rnd, extreme):
        n, b = len(problem["keys"]), problem["block"]
        prefix = data.draw(st.integers(0, n))
        problem = dict(problem, restart=prefix, fast_division=True, single_pass=True)
        steps = -(-prefix // b) + -(-(n - prefix) // b) + TRITON_DIVISION_STEPS
        assert steps <= bounds.default_steps(n)
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme, division_ulps=2),
                                                           steps)
        for e, bound in zip(out_err, out_b):
            assert e <= bound, (problem["dtype"], prefix, b, steps, e, bound)
        assert lse_err <= lse_b, (problem["dtype"], prefix, b, steps, lse_err, lse_b)

    run()


def pairwise_steps(problem: dict) -> int:
    """``nu`` of a left-to-right pairwise fold of the parts (as ``simulate`` merges them): the
    most, over the parts that hold keys, of the part's blocks plus two for each merge its keys
    pass with keys on both sides (the first such part passes all ``K' - 1``, the ``k``-th joins
    at the ``k``-th and passes the rest), and one for each part that holds none (a merge with an
    empty side: its lse takes a logarithm of 1, Lemma 3). ``relaycore.testing.blocked_steps(merge="pairwise")``
    counts ``max blocks + 2 (K' - 1) + E``, at least this."""
    held = [n for n in (problem["labels"].count(part) for part in range(problem["parts"])) if n]
    b = problem["block"]
    return max(-(-n // b) + 2 * (len(held) - max(k, 1)) for k, n in enumerate(held)) + problem["parts"] - len(held)


def check_pairwise_step_count():
    """The natural-log form merged pairwise (``relaycore.state.merge``'s order, the PyTorch
    backend's) stays within relaycore.bounds at the counted steps ``pairwise_steps`` (two per
    merge, Lemma 3, and one per merge with an empty side), not only at ``default_steps``
    (``check_simulated_kernel``). The empty sides' step is needed: one fp32 key of score 0 merged with three
    empty parts, the logarithm ``LOG_WOBBLE`` above the exact one at every argument, 1 included (within the
    precision policy), errs in its lse by ``16 u_acc``, past the bound at the count without them (``12.5 u_acc``)
    and within it at ``pairwise_steps``."""

    class Above(Elementary):  # the logarithm's largest error, one sign, at every argument
        def _draw(self, size):
            return size

    one = [mpmath.mpf(1)]
    problem = dict(dtype="float32", scale=1.0, q=one, keys=[[mpmath.mpf(0)]], values=[one], parts=4, labels=[0],
                   block=1, form="natural")
    u_acc = 2.0**-23
    _, _, lse_err, without = errors_and_bounds(problem, Above(random.Random(0), True), 1)
    _, _, _, with_steps = errors_and_bounds(problem, Above(random.Random(0), True), pairwise_steps(problem))
    assert without < lse_err == 16 * u_acc <= with_steps, (lse_err / u_acc, without / u_acc, with_steps / u_acc)
    # the error grows by u_exp per empty side, so no count of N alone holds it: five empty parts err by 24 u_acc,
    # past the bound at default_steps(1) = 2 (20.5 u_acc), within it at pairwise_steps (6)
    problem["parts"] = 6
    _, _, lse_err, at_default = errors_and_bounds(problem, Above(random.Random(0), True), None)
    _, _, _, with_steps = errors_and_bounds(problem, Above(random.Random(0), True), pairwise_steps(problem))
    assert at_default < lse_err == 24 * u_acc <= with_steps, (lse_err / u_acc, at_default / u_acc)

    @checked(600)
    @given(problems(forms=("natural",)), st.randoms(use_true_random=False), st.booleans())
    def run(problem, rnd, extreme):
        steps = pairwise_steps(problem)
        assert steps <= bounds.default_steps(len(problem["keys"])) or len(set(problem["labels"])) < problem["parts"]
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme), steps)
        for e, b in zip(out_err, out_b):
            assert e <= b, (problem["dtype"], steps, e, b)
        assert lse_err <= lse_b, (problem["dtype"], steps, lse_err, lse_b)

    run()


def merge_running(chunks: list, draw, fast: bool = False, reciprocal: bool = False) -> list:
    """Lemma 9's running fold in the standard model of rounding, at 60 digits, as
    ``merge_all_at_once`` models Lemma 4's merge (the same adversary ``draw``).

    Args:
        chunks: ``[(m_i, l_i)]`` in the fold's order, as ``merge_all_at_once`` takes them.
        fast: the divisions within 2 ulp (``__fdividef``): the state's division errs by up to
            ``2 u_acc`` instead of ``u_acc / 2``, and the final one by ``u_acc`` more than
            item 5's (charged here to the numerator, as the proof does).
        reciprocal: the divisions as FlashInfer's ``normalize`` from commit ``d7f2c64`` on (Lemma 13), a
            reciprocal within 2 ulp and a product: a state's output (an inner fold's) errs by up to
            ``(1 + 2 u_acc)(1 + u_acc / 2)``, and the final one by ``3/2 u_acc`` more than item 5's, drawn as
            ``u_acc`` and ``u_acc / 2``.

    Returns:
        Per chunk, ``None`` if it is empty, else ``(alpha, beta, growths, raised)``: the logs of
        the factors by which the fold multiplies its keys' numerator and normaliser weights
        against the exact ``2^(m_i - M) l_i`` (``M`` the fold's final maximum), the number of
        later states that raised the maximum, and whether its own state raised it.
    """
    prec = bounds.precision("float32")
    half, u_exp, ln2 = mpmath.mpf(prec.u_acc) / 2, mpmath.mpf(prec.u_exp), mpmath.log(2)
    u_acc = 2 * half

    def fl(x):
        return x * (1 + draw(half))

    lse2 = [fl(m + fl(mpmath.log(l, 2) + draw(u_exp) / ln2)) if l else exact.NEG_INF for m, l in chunks]
    top, terms = exact.NEG_INF, {}
    for i, x in enumerate(lse2):
        if x == exact.NEG_INF:
            continue
        raised = x > top
        if raised and top != exact.NEG_INF:  # the maximum grows: every earlier term is rescaled
            g = mpmath.power(2, fl(top - x)) * (1 + draw(u_exp))
            for term in terms.values():
                term[0] *= g * (1 + draw(half))
                term[1] *= g * (1 + draw(half))
                term[2] += 1
        top = max(top, x)
        arg = fl(x - top)
        f = mpmath.mpf(1) if arg == 0 else mpmath.power(2, arg) * (1 + draw(u_exp))
        division = 1 + draw(2 * u_acc if fast else half)
        if reciprocal:
            division = (1 + draw(2 * u_acc)) * (1 + draw(half))
        terms[i] = [f * division * (1 + draw(half)), f, 0, raised]
    result = []
    for i, (m, l) in enumerate(chunks):
        if i not in terms:
            result.append(None)
            continue
        numerator, normaliser, growths, raised = terms[i]
        if reciprocal:
            numerator *= (1 + draw(u_acc)) * (1 + draw(half))
        elif fast:
            numerator *= 1 + draw(u_acc)
        exact_weight = mpmath.power(2, m - top) * l
        result.append((mpmath.log(numerator / exact_weight), mpmath.log(normaliser / exact_weight), growths, raised))
    return result


def running_fold_steps(growths: int, raised: bool, fast: bool = False) -> int:
    """Lemma 9's count for a key whose state saw ``growths`` later raises of the maximum:
    ``2 + growths``, or ``max(2, 1 + growths)`` where its own state raised it; one more with
    divisions within 2 ulp."""
    return (max(2, 1 + growths) if raised else 2 + growths) + int(fast)


def check_running_fold():
    """Lemma 9: in the running fold a key's weights move by at most its count of steps
    (``running_fold_steps``: two plus one per later growth of the maximum, with divisions
    rounded to nearest, within 2 ulp, or a reciprocal within 2 ulp and a product as FlashInfer's
    ``normalize`` from commit ``d7f2c64`` on, Lemma 13), and by at most the proof's sharper sum
    (``5/2 u_acc`` more with divisions within 2 ulp, ``7/2 u_acc`` with the reciprocal's), which a fold of two
    states of one lse with every rounding up or down meets to second order with each division; every key by at
    most ``K'`` steps (``K' + 1`` with divisions within 2 ulp); a fold of one non-empty state
    passes it on unchanged. The model does not flush, so the growth is asserted for every key,
    those whose weights fall below ``2^-126`` too (the draws reach them); what a flush adds is
    charged to ``sigma_0`` by the proof's "Underflow", a constant inequality checked here as
    Lemma 4's is, with ``3N + 2^12 K'^2 < 2^59`` and ``2^-71``. And a fold from ``M = -inf``
    whose first state holds no key returns NaN (the claim's condition)."""
    prec = bounds.precision("float32")
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    second_order = 1 + mpmath.mpf(2) ** -20
    two = mpmath.mpf(2)
    sigma0 = own_step_room(0.0, 1, prec)
    for rho in (sigma0, 1e-6, 1e-3, 0.1, 1.0, 3.0, 10.0, 30.0, 88.0):
        for eps in (0.0, 0.5, 1 - 2.0**-20, 1 - 2.0**-50):
            rho_m, e2 = mpmath.mpf(rho) - sigma0 + two**-71, mpmath.exp(2 * mpmath.mpf(rho))
            lowered = (mpmath.expm1(2 * rho_m) + 2 * eps) / (1 - eps)
            assert lowered + two**59 * two**-126 * (e2 + eps) / (1 - eps) <= (mpmath.expm1(2 * mpmath.mpf(rho)) + 2 * eps) / (1 - eps)
            assert two**59 * two**-126 * (e2 + eps) < two**-66 * e2
            assert e2 - mpmath.exp(2 * rho_m) > two**-20.1 * e2
    one = Elementary(random.Random(0), True)
    nan_out, nan_lse = simulate_merge_running([exact.empty(1), ([mpmath.mpf(1)], mpmath.mpf(0))], one, fp.Arithmetic())
    assert mpmath.isnan(nan_lse) and mpmath.isnan(nan_out[0])
    reached = []

    def within(chunks, draw, division, score_abs, num_keys):
        """The fold of ``chunks`` (a non-empty first) under ``draw``: every key within the sharper sum and its
        count; returns the largest growth over the sharper sum."""
        fast, reciprocal = division != "nearest", division == "reciprocal"
        merged = merge_running(chunks, draw, fast, reciprocal)
        kept = [(c, r) for c, r in zip(chunks, merged) if r is not None]
        if len(kept) == 1:  # entered at its own maximum with weight exactly 1, never rescaled
            assert kept[0][1][2:] == (0, True)
            return 0
        lse = [mpmath.log(2) * m + mpmath.log(l) for m, l in (c for c, _ in kept)]
        top = max(lse)
        step = one_step(score_abs, num_keys, prec)
        ratios = []
        for ((m, l), (alpha, beta, growths, raised)), ell in zip(kept, lse):
            if ell < top - 126 * mpmath.log(2):  # its final weight below 2^-126
                reached.append(ell)
            steps = running_fold_steps(growths, raised, fast)
            assert steps <= len(kept) + int(fast)
            exps = 1 + (0 if raised else 1) + growths
            extra = mpmath.mpf(7 if reciprocal else 5 if fast else 0) / 2
            sharper = (exps * u_exp + (1 + mpmath.mpf(growths) / 2 + extra) * u_acc
                       + u_acc / 2 * (mpmath.log(l) + 2 * abs(ell) + abs(top)))
            assert max(abs(alpha), abs(beta)) <= sharper * second_order <= steps * step, \
                (alpha, beta, growths, raised, fast, sharper, steps)
            ratios.append(max(abs(alpha), abs(beta)) / sharper)
        return max(ratios)

    # two states of lse 0, every rounding up (or down): the first state's keys meet the sharper sum to second
    # order with each division, so a division's extra (5/2 or 7/2 u_acc) that were too small would fail here
    for division in ("nearest", "within 2 ulp", "reciprocal"):
        for sign in (1, -1):
            level = [(mpmath.mpf(0), mpmath.mpf(1))] * 2
            assert within(level, lambda size: sign * size, division, 0.0, 2) >= 1 - two**-20, (division, sign)

    @checked(400)
    @given(merge_chunks(), st.randoms(use_true_random=False), st.booleans(),
           st.sampled_from(["nearest", "within 2 ulp", "reciprocal"]))
    def run(drawn, rnd, extreme, division):
        chunks, score_abs, num_keys = drawn
        held = [c for c in chunks if c[1]]
        if not held:
            return
        chunks = [c for c in chunks if c[1]][:1] + [c for c in chunks if c is not held[0]]  # a non-empty first
        within(chunks, _adversary(rnd, extreme), division, score_abs, num_keys)

    run()
    assert reached


def running_fold_growth(score_abs, num_keys, rho, prec: bounds.Precision, growths: int, raised: bool):
    """Lemma 9's growth for a key whose state saw ``growths`` later raises of the maximum, to
    first order, its states' lses at the edge ``A + log N`` and off by ``lse_error_at``'s ``E``
    at ``rho``: ``(2 + G) u_exp`` (one less if its state raised the maximum) ``+ (1 + G/2)
    u_acc + u_acc / 2 (log N + rho + 3 (A + log N + E))``."""
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    a, log_n, rho = mpmath.mpf(score_abs), mpmath.log(num_keys), mpmath.mpf(rho)
    lse = a + log_n + lse_error_at(score_abs, num_keys, rho, prec)
    exps = 1 + (0 if raised else 1) + growths
    return exps * u_exp + (1 + mpmath.mpf(growths) / 2) * u_acc + u_acc / 2 * (log_n + rho + 3 * lse)


def check_running_fold_growth():
    """Lemma 9's counts hold to first order up to the out bound's limit
    ``rho = 2.5 + min(A, 256) / 4`` (``bounds.out_rho_limit``), the states' lse errors taken as
    the accounting ``E`` at that ``rho``: ``2 + G`` steps, or ``max(2, 1 + G)`` where the key's
    state raised the maximum, leave at least ``1.4 u_acc`` for second-order terms at every ``G``
    from 0 to 6, and so does one step more with divisions within 2 ulp (``5/2 u_acc`` more
    growth) or with FlashInfer's reciprocal within 2 ulp and product (Lemma 13: ``7/2 u_acc + 2 u_acc^2``
    more, a state's division and the fold's); the tightest case is a state that raised the maximum and saw
    one growth after it. Without that step the reciprocal's growth leaves no room there (the count
    ``fast_division`` adds is needed by the accounting; no end-to-end run can show it, the bound's slack
    being larger). Each further growth adds a step and less than a step's growth."""
    prec = bounds.precision("float32")
    u_acc = mpmath.mpf(prec.u_acc)
    extra = {"nearest": 0, "within 2 ulp": mpmath.mpf(5) / 2 * u_acc,
             "reciprocal": mpmath.mpf(7) / 2 * u_acc + 2 * u_acc**2}
    short = []  # the reciprocal's room at the count without the step for its divisions
    for score_abs in (0.0, 1.0, 20.0, 100.0, 256.0, 1e3, 1e4, 1e6):
        for num_keys in (2, 3, 16, 4096, 2**16, 2**20, 2**22):
            step = one_step(score_abs, num_keys, prec)
            limit = float(bounds.out_rho_limit(score_abs))
            for growths in range(7):
                for raised in (False, True):
                    grown = running_fold_growth(score_abs, num_keys, limit, prec, growths, raised)
                    for division, more in extra.items():
                        room = running_fold_steps(growths, raised, division != "nearest") * step - grown - more
                        assert room >= mpmath.mpf(1.4) * u_acc, (score_abs, num_keys, growths, raised, division,
                                                                  room / u_acc)
                    short.append(running_fold_steps(growths, raised) * step - grown - extra["reciprocal"])
    assert min(short) < 0, min(short) / u_acc


def running_steps(problem: dict) -> int:
    """Lemma 9's count for a simulated problem whose parts are folded in order by the running
    fold, without the lses: the most blocks one part fills, plus ``K'`` if ``K' >= 2`` parts
    hold keys, plus one with divisions within 2 ulp. ``relaycore.testing.blocked_steps(merge=
    "running", fast_division=...)`` counts the same."""
    held = [(n, part_block(problem, part)) for part, n in
            ((part, problem["labels"].count(part)) for part in range(problem["parts"])) if n]
    fold = len(held) if len(held) >= 2 else 0
    return max(-(-n // b) for n, b in held) + fold + int(bool(problem.get("fast_division")))


def check_running_fold_step_count():
    """Whole kernels merged by Lemma 9's running fold (base 2, up to 8 chunks walked in blocks of
    their own sizes, a non-empty first chunk, divisions rounded to nearest or within 2 ulp, an
    ``exp2`` that flushes or keeps subnormals) stay within relaycore.bounds at the counted steps
    ``running_steps`` (never above ``default_steps`` plus one): an end-to-end run, which the
    bound's slack keeps from testing the count itself (``check_running_fold`` does). The draws
    reach weights or rescales flushed to zero (lses more than 127 apart in base 2 under an
    ``exp2`` that flushes)."""
    reached = []

    @checked(400)
    @given(problems(max_parts=8, forms=("base2",)), st.randoms(use_true_random=False), st.booleans(),
           st.lists(st.integers(1, 4), min_size=8, max_size=8), st.booleans(), st.booleans())
    def run(problem, rnd, extreme, blocks, ftz, fast):
        first = problem["labels"][0]  # relabel so that part 0 holds a key
        labels = [0 if x == first else first if x == 0 else x for x in problem["labels"]]
        problem = dict(problem, labels=labels, blocks=blocks[: problem["parts"]], merge="running",
                       fast_division=fast)
        steps = running_steps(problem)
        assert steps <= bounds.default_steps(len(problem["keys"])) + 1
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme, ftz, division_ulps=2),
                                                           steps)
        for e, b in zip(out_err, out_b):
            assert e <= b, (problem["dtype"], steps, e, b)
        assert lse_err <= lse_b, (problem["dtype"], steps, lse_err, lse_b)
        lses = part_lses(problem)
        if ftz and max(lses) - min(lses) > 127 * mpmath.log(2):
            reached.append(problem)

    run()
    assert reached


def simulate_stored_folds(problem: dict, exp, threads, start=None) -> tuple:
    """Lemma 10's trees of running folds over outputs stored in the input format, in base 2. Each
    part is ``simulate_part``'s (its division ``Elementary.divide`` where
    ``problem["fast_division"]``), its output stored in ``problem["dtype"]`` (rounded to
    nearest), its lse kept in fp32. ``threads=None``: one running fold of the stored part outputs
    (FlashInfer's ``merge_states`` on outputs in the input dtype). Else thread ``t`` folds the
    parts ``t, t + threads, ...`` (``running_fold_base2``), its result stored in the input dtype,
    its base-2 lse kept in fp32, and the threads' results are folded (FlashInfer's large and
    variable-length merge kernels, as read in their source). Where ``problem["groups"]`` is set,
    each part is a chunk of FlashInfer's split-KV decode instead (``simulate_decode_chunk``, its
    blocks ``part_block``'s, from ``start``), as ``BatchDecodeWithPagedKVCacheDispatched`` stores
    its chunks in the output dtype and merges them with ``VariableLengthMergeStates`` (Lemma 11).
    ``start=None``: every fold starts
    from ``M = -inf`` and parts and threads that hold no key of the row are left out (after a
    state that holds one they change nothing, bit for bit, Lemma 9). ``start=FLASHINFER_START``:
    FlashInfer's arithmetic as it runs, every fold from its phantom ``(0, -5e4)``, every part
    folded, empty ones too, and every thread's result, those of threads with no part or only
    empty ones (phantoms) too, in thread order. ``start=FLASHINFER_IEEE_START``: FlashInfer's arithmetic
    from commit ``d7f2c64`` on (Lemma 13), every part and thread folded as with ``FLASHINFER_START``, from
    ``-inf`` with its clamps. Where ``problem["reciprocal"]`` the folds divide as its ``normalize`` does from
    that commit on (``reciprocal_divide``), whatever ``start``; the parts' divisions stay ``fast_division``'s.
    Returns ``(out [D] fp32 before item 5's rounding, lse natural, the most folds a key passed)``, the last
    counted as the folds run."""
    q, keys, values, dtype = problem["q"], problem["keys"], problem["values"], problem["dtype"]
    ar = fp.Arithmetic(problem.get("accumulate", "nearest"), problem.get("flush", False))
    divide = (lambda a, b: exp.divide(a, b, ar)) if problem.get("fast_division") else None
    fold_divide = reciprocal_divide(exp, ar) if problem.get("reciprocal") else divide
    stored = lambda state: ([fp.round_to(x, dtype) for x in state[0]], state[1])  # noqa: E731
    parts = []
    for part in range(problem["parts"]):
        idx = [j for j, label in enumerate(problem["labels"]) if label == part]
        k, v, b = [keys[j] for j in idx], [values[j] for j in idx], part_block(problem, part)
        if problem.get("groups"):  # a split-KV decode chunk (Lemma 11)
            state = simulate_decode_chunk(q, k, v, problem["scale"], b, problem["groups"], exp, ar, divide, start)[:2]
        else:
            state = simulate_part(q, k, v, problem["scale"], dtype, b, exp, ar, 2, divide=divide)
        parts.append(stored(state))
    # (state, the most folds its keys have passed; None where it holds no key)
    parts = [(state, 0 if state[1] != exact.NEG_INF else None) for state in parts]
    kept = (lambda states: [x for x in states if x[1] is not None]) if start is None else list  # noqa: E731

    def fold(states):  # a running fold, and the most folds its keys have passed, this one too
        held = [n for _, n in states if n is not None]
        out = running_fold_base2([s for s, _ in states], exp, ar, fold_divide, start, len(q))
        return out, (1 + max(held) if held else None)

    if threads is not None:
        shares = [kept(parts[t::threads]) for t in range(threads)]
        parts = [(stored(state), n) for state, n in (fold(share) for share in shares if share or start is not None)]
    (out, lse), passed = fold(kept(parts))
    return out, fp.r32(lse * fp.r32(mpmath.log(2))), passed


def stored_fold_counts(problem: dict, threads) -> tuple:
    """``(steps, stored)`` of Lemma 10 for ``simulate_stored_folds``: per key, its part's blocks
    (Lemma 11's ``decode_chunk_steps`` for a decode chunk where ``problem["groups"]`` is set),
    Lemma 9's count ``K'_v`` at each fold on its way (0 where the fold holds one non-empty state, 1 where another
    fold reads that one's result, less with divisions within 2 ulp and one state in all), one more per fold with divisions within 2 ulp (``fast_division``) or a reciprocal within 2 ulp
    and a product (``reciprocal``, Lemma 13); the most over the keys. ``stored`` is the folds a key
    passes (1, or 2 with ``threads``), each reading stored outputs."""
    sizes = [problem["labels"].count(part) for part in range(problem["parts"])]
    fast = int(bool(problem.get("fast_division") or problem.get("reciprocal")))
    groups = [list(range(problem["parts"]))] if threads is None else [
        list(range(t, problem["parts"], threads)) for t in range(threads)]
    held = [[p for p in group if sizes[p]] for group in groups]
    top = sum(1 for group in held if group) if threads is not None else 0
    # a fold over one state that the top fold reads: one (its lse takes a logarithm of 1), which with one state in
    # all the steps of 2-ulp divisions hold (Lemma 10)
    lone = int(threads is not None and not (fast and top == 1))
    count = lambda k: k if k >= 2 else 0  # noqa: E731
    divisions = fast * (1 + (threads is not None))  # one 2-ulp division per fold on the key's way
    walked = (lambda p: decode_chunk_steps(sizes[p], part_block(problem, p), problem["groups"])) if problem.get(
        "groups") else (lambda p: -(-sizes[p] // part_block(problem, p)))  # noqa: E731
    steps = max(walked(p) + (count(len(group)) or lone) + count(top) + divisions for group in held for p in group)
    return steps, 1 if threads is None else 2


def stored_fold_errors(problem: dict, exp, threads, start=None) -> tuple:
    """One run of ``simulate_stored_folds`` (from ``start``) against the bounds at
    ``stored_fold_counts``: ``(out errors [D], out bounds with stored_merge="running" [D], out
    bounds at stored = 0 [D], lse error, lse bound, steps)``, the output rounded to the input
    format (item 5)."""
    (ref_out, ref_lse), value_abs, score_abs = reference(problem)
    out, lse, passed = simulate_stored_folds(problem, exp, threads, start)
    out = [fp.round_to(x, problem["dtype"]) for x in out]
    steps, stored = stored_fold_counts(problem, threads)
    assert stored == passed, (stored, passed)  # S: the folds the simulation passed the keys through
    prec = bounds.precision(problem["dtype"])
    n, dim, scale = len(problem["keys"]), len(problem["q"]), float(problem["scale"])
    args = (np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), n, float(score_abs), dim,
            prec, steps)
    with_term = bounds.out_bound(*args, scale=scale, stored=stored, stored_merge="running")
    without = bounds.out_bound(*args, scale=scale)
    lse_b = float(bounds.lse_bound(float(ref_lse), n, float(score_abs), dim, prec, steps, scale=scale))
    return ([float(abs(x - y)) for x, y in zip(out, ref_out)], [float(b) for b in with_term],
            [float(b) for b in without], float(abs(lse - ref_lse)), lse_b, steps)


def two_level_example(dtype: str = "float16") -> dict:
    """Lemma 10's example, FlashInfer's large merge kernel as read in its source: one row, all
    scores 0, values that are multiples of the input format's smallest subnormal (``2^-24`` in
    fp16, ``2^-133`` in bf16), parts of 8 keys, seven of 1 key and one of 8, folded by 8 threads
    (thread 0 folds the first and the last part), their results stored and folded."""
    tiny = mpmath.ldexp(1, -24 if dtype == "float16" else -133)
    sizes = [8] + [1] * 7 + [8]
    values = [5, 5, 5, 5, 5, 4, 4, 4] + [5, 5, 5, 4, 4, 4, 4] + [6, 6, 6, 6, 6, 5, 5, 5]
    return dict(dtype=dtype, scale=1.0, q=[mpmath.mpf(0)], keys=[[mpmath.mpf(0)] for _ in values],
                values=[[v * tiny] for v in values], parts=len(sizes),
                labels=[part for part, n in enumerate(sizes) for _ in range(n)], block=64, form="base2",
                accumulate="nearest", flush=False)


def check_two_level_stored_folds():
    """Lemma 10 on two-level running folds with stored intermediate outputs. ``two_level_example``
    in fp16 errs by ``1.087 * 2^-24``: past the bound without the stored term (``1.008 *
    2^-24``, at Lemma 9's count of 10 steps for one fold of the nine parts and at the tree's
    count of 11), within it with ``stored = 2, stored_merge="running"`` (``2.02 * 2^-24``); the same
    parts folded once from stored outputs (``stored = 1``) stay within it too, and the bf16
    example (values ``k 2^-133``) as well. Hypothesis-drawn problems (fp16, bf16 and fp32, values
    down to fp16's and bf16's subnormals, 1 to 8 parts walked in blocks of their own sizes, one
    fold or 1 to 4 threads, divisions rounded to nearest or within 2 ulp, an ``exp2`` that
    flushes or keeps subnormals) stay within ``out_bound`` at Lemma 10's counts and within
    ``lse_bound``, the counts within the closed form of ``blocked_steps(merge="running", levels=...)``
    (recomputed here from the parts' sizes: drawn parts have no ``Batch``), and the ``stored`` each run
    prices equals the folds the simulation passed the row's keys through, counted as it ran."""
    still = Elementary(_Still(), False, ftz=True)
    problem = two_level_example()
    (err,), (with_term,), (without,), _, _, steps = stored_fold_errors(problem, still, 8)
    tiny = 2.0**-24
    assert steps == 11 and 1.08 * tiny < err <= with_term and without < err, (err / tiny, without / tiny, steps)
    one_fold = bounds.out_bound(np.zeros(1), np.array([6 * tiny]), 24, 0.0, 1, bounds.precision("float16"),
                                running_steps(dict(problem, merge="running")), scale=1.0)[0]
    assert one_fold < 1.01 * tiny < err, (one_fold / tiny, err / tiny)
    (err, ), (with_term, ), _, _, _, _ = stored_fold_errors(problem, still, None)
    assert err <= with_term, (err / tiny, with_term / tiny)
    (err, ), (with_term, ), _, _, _, _ = stored_fold_errors(two_level_example("bfloat16"), still, 8)
    assert err <= with_term, (err, with_term)

    @checked(400)
    @given(problems(max_parts=8, forms=("base2",), value_exponents=(0, -20, -24, -128)),
           st.randoms(use_true_random=False), st.booleans(), st.sampled_from([None, 1, 2, 3, 4]),
           st.lists(st.integers(1, 4), min_size=8, max_size=8), st.booleans(), st.booleans())
    def run(problem, rnd, extreme, threads, blocks, ftz, fast):
        problem = dict(problem, blocks=blocks[: problem["parts"]], fast_division=fast)
        exp = Elementary(rnd, extreme, ftz, division_ulps=2)
        out_err, with_term, _, lse_err, lse_b, steps = stored_fold_errors(problem, exp, threads)
        for e, b in zip(out_err, with_term):
            assert e <= b, (problem["dtype"], threads, steps, e, b)
        assert lse_err <= lse_b, (problem["dtype"], threads, steps, lse_err, lse_b)
        held = [n for n in (problem["labels"].count(p) for p in range(problem["parts"])) if n]
        levels = 1 if threads is None else 2
        smallest = min(part_block(problem, p) for p in range(problem["parts"]))
        counted = -(-max(held) // smallest) + tree_fold_steps(len(held), levels, fast)
        assert steps <= counted, (steps, counted)

    run()


def with_empty_parts(problem: dict, before: int, after: int) -> dict:
    """``problem`` with ``before`` parts that hold no key put before its parts and ``after`` after
    them (FlashInfer's index sets that a row sees no key of)."""
    return dict(problem, parts=problem["parts"] + before + after, labels=[x + before for x in problem["labels"]],
                **({"blocks": [1] * before + problem["blocks"] + [1] * after} if "blocks" in problem else {}))


def check_flashinfer_start_in_trees():
    """Lemma 10's paragraph on FlashInfer's start: a tree of its running folds from the phantom
    ``(0, -5e4)``, with empty parts and threads with no part or only empty ones (phantoms) before
    and after non-empty ones, computes what the folds from ``-inf`` that leave them out compute,
    bit for bit (output, lse and the folds a key passes), subnormals flushed or kept by the
    arithmetic and by ``exp2``; so its error stays within Lemma 10's bound with no term for them.
    ``two_level_example`` in bf16 (values ``k 2^-133``, outputs below fp32's normal range), with
    one empty part first, two last and 16 threads (thread 0 a phantom before the non-empty ones,
    threads 10-15 phantoms after them), is the case a flush of the output sum would show: there
    is none. Hypothesis draws (1 to 8 parts, some empty, one fold or 1 to 12 threads, more
    threads than parts too) check the same, and the bound, wherever every part that holds keys has
    an lse above ``-5e4 + 127`` in base 2 (Lemma 9's condition with a margin for the lse's error;
    the large draws' scores reach ``-62500``, outside it)."""
    problem = with_empty_parts(two_level_example("bfloat16"), 1, 2)
    tiny = mpmath.ldexp(1, -126)
    for flush, ftz, fast in ((False, False, False), (True, True, False), (False, True, True), (True, False, True)):
        case = dict(problem, flush=flush, fast_division=fast)
        runs = [simulate_stored_folds(case, Elementary(_Still(), False, ftz), 16, start)
                for start in (FLASHINFER_START, None)]
        assert runs[0] == runs[1], (flush, ftz, fast)
        (out,), _, _ = runs[0]
        assert (0 < abs(out) < tiny) != flush, (flush, out)  # an fp32 subnormal sum where subnormals are kept
        (err,), (with_term,), _, _, _, _ = stored_fold_errors(case, Elementary(_Still(), False, ftz), 16,
                                                             FLASHINFER_START)
        assert err <= with_term, (flush, ftz, err, with_term)

    @checked(200)
    @given(problems(max_parts=8, forms=("base2",), value_exponents=(0, -24, -128, -132)),
           st.randoms(use_true_random=False), st.booleans(), st.sampled_from([None, 1, 2, 3, 5, 8, 12]),
           st.lists(st.integers(1, 4), min_size=8, max_size=8), st.booleans(), st.booleans(),
           st.integers(0, 2), st.integers(0, 2))
    def run(problem, rnd, extreme, threads, blocks, ftz, fast, before, after):
        problem = with_empty_parts(dict(problem, blocks=blocks[: problem["parts"]], fast_division=fast), before, after)
        if min(part_lses(problem)) <= (FLASHINFER_START + 127) * mpmath.log(2):  # Lemma 9's condition fails
            return
        exp = Repeatable(rnd.random(), extreme, ftz, division_ulps=2)
        runs = [simulate_stored_folds(problem, exp, threads, start) for start in (FLASHINFER_START, None)]
        assert runs[0] == runs[1], (problem["dtype"], threads)
        out_err, with_term, _, lse_err, lse_b, steps = stored_fold_errors(problem, exp, threads, FLASHINFER_START)
        assert all(e <= b for e, b in zip(out_err, with_term)), (problem["dtype"], threads, steps, out_err, with_term)
        assert lse_err <= lse_b, (problem["dtype"], threads, steps, lse_err, lse_b)
        held = sum(1 for p in range(problem["parts"]) if p in problem["labels"])
        if threads is not None and threads > held:  # empty threads among the non-empty ones
            reached.append(threads)

    reached = []
    run()
    assert len(reached) >= 20, len(reached)


def decode_chunk_growth(scores: list, block: int, groups: int, draw) -> list:
    """Lemma 11's factors in the standard model of rounding, at 60 digits, as ``merge_running``
    models Lemma 9's (the same adversary ``draw``): a decode chunk whose computed base-2 scores are
    ``scores`` (item 1's error is the score's, not the walk's), walked as ``simulate_decode_chunk``
    walks it from ``-inf``.

    Returns:
        Per key ``(alpha, beta, steps, arguments)``: the logs of the factors by which the walk
        multiplies its numerator weight (with the product ``p v``'s rounding) and its normaliser
        weight against the exact ``2^(s_j - M)`` (``M`` the chunk's final maximum), its count of
        exponentials (its own and each rescale not exactly ``2^0`` of a sum that holds it), and
        the sum of the magnitudes of those exponentials' rounded arguments (base 2).
    """
    prec = bounds.precision("float32")
    half, u_exp = mpmath.mpf(prec.u_acc) / 2, mpmath.mpf(prec.u_exp)

    def fl(x):
        return x * (1 + draw(half))

    def rescale(keys, arg):  # a rescale exp2(arg) of the sums that hold ``keys``: one product on each side
        factor = mpmath.power(2, arg) * (1 + draw(u_exp))
        for j in keys:
            terms[j][0] *= factor * (1 + draw(half))
            terms[j][1] *= factor * (1 + draw(half))
            terms[j][2] += 1
            terms[j][3] += abs(arg)

    n, width, terms, states = len(scores), block * groups, {}, []
    for z in range(groups):
        m, held = exact.NEG_INF, []
        for t in range(-(-n // width)):
            seen = [j for j in range(t * width + z * block, t * width + (z + 1) * block) if j < n]
            if not seen:
                continue
            m_new = max([m] + [scores[j] for j in seen])
            if m != exact.NEG_INF and m_new > m:
                rescale(held, fl(m - m_new))
            elif m != exact.NEG_INF:  # a block that does not raise the maximum: 2^0, exact, counted
                for j in held:
                    terms[j][2] += 1
            for j in seen:
                arg = fl(scores[j] - m_new)
                p = mpmath.mpf(1) if arg == 0 else mpmath.power(2, arg) * (1 + draw(u_exp))
                terms[j] = [p * (1 + draw(half)), p, 1, abs(arg)]
            held, m = held + seen, m_new
        if held:
            states.append((m, held))
    top, inside = exact.NEG_INF, []
    for m, held in states:
        m_new = max(top, m)
        if top != exact.NEG_INF and m_new > top:
            rescale(inside, fl(top - m_new))
        if m < m_new:
            rescale(held, fl(m - m_new))
        inside, top = inside + held, m_new
    return [(mpmath.log(num / mpmath.power(2, x - top)), mpmath.log(norm / mpmath.power(2, x - top)), count, args)
            for x, (num, norm, count, args) in ((scores[j], terms[j]) for j in range(n))]


class _Up:
    """A random source whose ``choice`` always takes the last option: ``Elementary(_Up(), True)``
    errs by ``+EXP_WOBBLE`` at every exponential, the extreme of one sign."""

    def choice(self, seq):
        return seq[-1]


def decode_example(groups: int = 64) -> dict:
    """Lemma 11's example: one fp32 row of ``groups`` keys, one per group of a decode chunk walked
    one slot per block, scores ``j 2^-10`` rising with the group, so that every group raises the
    maximum and the first group's key passes ``groups`` exponentials, values 0 but the last."""
    keys = [[mpmath.mpf(j) * 2**-10] for j in range(groups)]
    return dict(dtype="float32", scale=1.0, q=[mpmath.mpf(1)], keys=keys,
                values=[[mpmath.mpf(j == groups - 1)] for j in range(groups)], parts=1, labels=[0] * groups, block=1,
                groups=groups, form="base2", accumulate="nearest", flush=False)


def check_decode_chunks():
    """Lemma 11 on FlashInfer's split-KV decode chunks. (1) In the standard model
    (``decode_chunk_growth``) every key's weights move by at most the proof's sharper sum, one
    ``u_exp + u_acc / 2`` per exponential and ``u_acc / 2`` per unit of its rounded arguments,
    within its count of steps, and its count within ``decode_chunk_steps``, which the key of the
    first group of a chunk whose groups each raise the maximum attains, for every shape tried. That
    key, all roundings up, moves by more than a count that does not grow with the groups (the
    walk's ``I`` plus the two steps of an all-at-once merge) allows. (2) ``decode_example`` (64
    groups) run end to end: its lse errs by more than ``lse_bound`` at ``I = 1`` step, within it
    at Lemma 11's 64, the count ``stored_fold_counts`` prices the drawn decodes below at. (3) A key
    at the condition's edge (natural score -34570) with masked slots and a group that holds none,
    and Hypothesis-drawn chunks (1 to 12 keys, blocks of 1 to 4 slots, 1 to 8 groups, fp16, bf16
    and fp32), from FlashInfer's start, with its ``exp2`` that flushes, compute bit for bit what
    the walk from ``-inf`` computes, every drawn key within ``decode_chunk_steps``; and
    the whole split-KV decode (chunks stored in the input dtype, then one fold or FlashInfer's
    two-level merge, from its start) stays within ``out_bound`` at Lemma 10's counts with Lemma
    11's per chunk and within ``lse_bound``."""
    prec = bounds.precision("float32")
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    second_order = 1 + mpmath.mpf(2) ** -20
    shown = []
    for n, block, groups in ((8, 1, 8), (16, 1, 16), (40, 2, 4), (37, 3, 5), (100, 4, 8), (5, 2, 4)):
        scores = [mpmath.mpf(0)] * n
        for j in range(n):  # each group's maximum above the last group's, and rising within a group's walk
            t, rest = divmod(j, block * groups)
            z, i = divmod(rest, block)
            scores[j] = mpmath.mpf(z) * 2**-4 + mpmath.mpf(t) * 2**-10 + mpmath.mpf(i) * 2**-14
        grown = decode_chunk_growth(scores, block, groups, lambda size: size)
        counted = decode_chunk_steps(n, block, groups)
        step = one_step(float(max(abs(x) for x in scores) * mpmath.log(2)), n, prec)
        assert max(g[2] for g in grown) == counted, (n, block, groups, counted)
        first = max(grown, key=lambda g: g[2])
        iterations = -(-n // (block * groups))
        if iterations == 1 and groups >= 8:  # one block per group: the sync's rescales are all it has
            assert first[0] > (iterations + ALL_AT_ONCE_MERGE_STEPS) * step, (n, block, groups, first[0] / step)
            shown.append((groups, float(first[0] / step)))
    assert len(shown) == 2, shown
    reached = []

    @checked(300)
    @given(st.lists(st.floats(-100, 100), min_size=1, max_size=24), st.integers(1, 4), st.integers(1, 8),
           st.randoms(use_true_random=False), st.booleans())
    def growth(scores, block, groups, rnd, extreme):
        scores = [fp.r32(mpmath.mpf(x)) for x in scores]
        score_abs = float(max(abs(x) for x in scores) * mpmath.log(2))
        step = one_step(score_abs, len(scores), prec)
        counted = decode_chunk_steps(len(scores), block, groups)
        for alpha, beta, count, args in decode_chunk_growth(scores, block, groups, _adversary(rnd, extreme)):
            sharper = count * (u_exp + u_acc / 2) + u_acc / 2 * mpmath.log(2) * args
            assert max(abs(alpha), abs(beta)) <= sharper * second_order <= count * step, (alpha, beta, count)
            assert count <= counted, (count, counted)
            if count == counted:
                reached.append(counted)

    growth()
    assert reached
    problem = decode_example()
    up = Elementary(_Up(), True)
    (ref_out, ref_lse), value_abs, score_abs = reference(problem)
    out, lse, steps = simulate_decode_chunk(problem["q"], problem["keys"], problem["values"], 1.0, 1, 64, up,
                                            fp.Arithmetic())
    # the count the whole decodes drawn below are priced at is the one this example needs
    assert max(steps) == decode_chunk_steps(64, 1, 64) == stored_fold_counts(problem, None)[0] == 64
    lse_err = abs(lse * mpmath.log(2) - ref_lse)
    at = {s: float(bounds.lse_bound(float(ref_lse), 64, float(score_abs), 1, prec, s, scale=1.0)) for s in (1, 64)}
    assert at[1] < lse_err <= at[64], (lse_err / u_acc, at[1] / u_acc, at[64] / u_acc)
    # the condition's edge, which the draws do not reach: a key of natural score -34570 (base 2 -49873.97, above
    # -5e4 + 126) and 63 masked slots in the first group, 64 masked slots in the second, which holds no key
    edge = [simulate_decode_chunk([mpmath.mpf(1)], [[mpmath.mpf(-34570)]], [[mpmath.mpf(1)]], 1.0, 64, 2,
                                  Elementary(_Still(), False, True), fp.Arithmetic(), None, start)
            for start in (FLASHINFER_START, None)]
    assert edge[0] == edge[1], edge

    @checked(300)
    @given(problems(max_parts=4, forms=("base2",), value_exponents=(0, -24, -128)), st.randoms(use_true_random=False),
           st.booleans(), st.sampled_from([None, 1, 2, 3, 8]), st.lists(st.integers(1, 4), min_size=4, max_size=4),
           st.integers(1, 8), st.booleans(), st.booleans())
    def chunks(problem, rnd, extreme, threads, blocks, groups, ftz, fast):
        problem = dict(problem, blocks=blocks[: problem["parts"]], groups=groups, fast_division=fast)
        if min(part_lses(problem)) <= (FLASHINFER_START + 127) * mpmath.log(2):  # the condition of Lemmas 9 and 11
            return
        exp = Repeatable(rnd.random(), extreme, ftz, division_ulps=2)
        ar = fp.Arithmetic(problem["accumulate"], problem["flush"])
        for part in range(problem["parts"]):
            idx = [j for j, label in enumerate(problem["labels"]) if label == part]
            k, v = [problem["keys"][j] for j in idx], [problem["values"][j] for j in idx]
            # FlashInfer's start only with its flushing exp2, the lemma's; one that keeps subnormals gives the same
            # bits here too (its phantom weights, below 2^-126, join sums of at least 2^-25 and are rounded
            # away), which the lemma does not claim, so no run of it is asked for
            runs = [simulate_decode_chunk(problem["q"], k, v, problem["scale"], blocks[part], groups, exp, ar, None, x)
                    for x in ((FLASHINFER_START, None) if ftz else (None,))]
            assert runs[0] == runs[-1], (problem["dtype"], groups)
            assert max(runs[0][2], default=0) <= (decode_chunk_steps(len(idx), blocks[part], groups) if idx else 0)
        start = FLASHINFER_START if ftz else None
        out_err, with_term, _, lse_err, lse_b, steps = stored_fold_errors(problem, exp, threads, start)
        assert all(e <= b for e, b in zip(out_err, with_term)), (problem["dtype"], threads, groups, out_err, with_term)
        assert lse_err <= lse_b, (problem["dtype"], threads, groups, lse_err, lse_b)

    chunks()


def request_example() -> dict:
    """Lemma 12's example: one fp32 row of a request that reads a prefix of 96 keys and has 96 of
    its own, FlashInfer's chunks of 128 keys from its first key (keys 0-127 and 128-191) walked by
    4 groups of 4 slots, the scores of the first chunk rising with the group (``2^-4``), the
    iteration (``2^-10``) and the slot (``2^-14``), so that every block and every group raises the
    maximum; the own keys' scores 0; values alternating -1, 0, 1; divisions within 2 ulp."""
    scores = []
    for j in range(192):
        t, rest = divmod(j, 16)
        z, i = divmod(rest, 4)
        scores.append(mpmath.mpf(z) * 2**-4 + mpmath.mpf(t) * 2**-10 + mpmath.mpf(i) * 2**-14 if j < 128 else 0)
    return dict(dtype="float32", scale=1.0, q=[mpmath.mpf(1)], keys=[[x] for x in scores],
                values=[[mpmath.mpf(j % 3 - 1)] for j in range(192)], parts=2, labels=[j // 128 for j in range(192)],
                block=4, groups=4, form="base2", accumulate="nearest", flush=True, fast_division=True)


def check_request_chunks():
    """Lemma 12 on FlashInfer's chunks of a request's whole KV. (1) ``request_example`` (a prefix
    of 96 keys and 96 own, chunks of 128 across the prefix's end, ``T = Z = 4``), run from
    FlashInfer's start with its flushing ``exp2`` erring by its largest positive error, the chunks
    merged by its two-level kernel over 8 threads: the first key passes 11 exponentials in its
    chunk, as the walk counts them, more than Lemma 11 allows any chunk of 96 keys (9, each
    segment's); Lemma 10's count of that tree, 16, is above the count per segment (14) and equal to
    ``request_chunk_steps``; the run stays within ``out_bound`` and ``lse_bound`` at it.
    (2) Over every row of up to 12 keys in two prefixes (an empty one unread) and its own, chunks
    of 1 to 8 keys, blocks of 1 to 4 slots and 1 to 4 groups, in FlashInfer's tree with 2-ulp
    divisions: ``request_chunk_steps`` equals ``segment_chunk_steps`` (``blocked_steps``' count per
    segment) where both prefixes are whole numbers of chunks, and is above it for some rows and
    below it for others; FlashInfer's planner's count of chunks in pages is the lemma's in keys.
    (3) Hypothesis-drawn rows (1 to 12 keys, fp16, bf16 and fp32, chunks of 1 to 8 keys from the
    first, blocks of 1 to 4 slots, 1 to 4 groups, one fold or 1 to 4 threads, divisions to nearest
    or within 2 ulp): every key within its chunk's ``decode_chunk_steps`` as
    the walk counts it; Lemma 10's count of the tree over the chunks within
    ``request_chunk_steps``, equal to it in some draws; the decode from FlashInfer's start
    (flushing ``exp2``) or from ``-inf`` within ``out_bound`` and ``lse_bound`` at the tree's
    count, so at ``request_chunk_steps``."""
    problem = request_example()
    up = Elementary(_Up(), True, True, division_ulps=2)
    ar = fp.Arithmetic(problem["accumulate"], problem["flush"])
    walked = simulate_decode_chunk(problem["q"], problem["keys"][:128], problem["values"][:128], 1.0, 4, 4, up, ar,
                                  None, FLASHINFER_START)[2]
    assert max(walked) == walked[0] == decode_chunk_steps(128, 4, 4) == 11 > decode_chunk_steps(96, 4, 4) == 9
    out_err, with_term, _, lse_err, lse_b, steps = stored_fold_errors(problem, up, 8, FLASHINFER_START)
    assert segment_chunk_steps([96, 96], 128, 4, 4, 2, True) == 14 < steps == 16, steps
    assert steps == request_chunk_steps(192, 128, 4, 4, 2, True)
    assert all(e <= b for e, b in zip(out_err, with_term)) and lse_err <= lse_b, (out_err, with_term, lse_err, lse_b)
    # (2) the two cuts over every row of up to 12 keys in two prefixes and its own (FlashInfer's tree, 2-ulp
    # divisions): the same count where every prefix is a whole number of chunks, either one larger elsewhere
    larger = smaller = 0
    for n, chunk, block, groups in itertools.product(range(1, 13), range(1, 9), range(1, 5), range(1, 5)):
        for first, second in ((a, b) for a in range(n) for b in range(n - a)):
            segments = [first, second, n - first - second]
            request = request_chunk_steps(n, chunk, block, groups, 2, True)
            per_segment = segment_chunk_steps(segments, chunk, block, groups, 2, True)
            if first % chunk == second % chunk == 0:
                assert request == per_segment, (segments, chunk, block, groups)
            larger, smaller = larger + (request > per_segment), smaller + (request < per_segment)
    assert larger and smaller, (larger, smaller)
    # FlashInfer's planner counts a request's chunks in pages, ceil(pages / pages_per_chunk), the lemma in keys,
    # ceil(N / C) with C = pages_per_chunk * size
    for size, pages_per_chunk, pages in itertools.product(range(1, 9), range(1, 5), range(1, 13)):
        for last in range(1, size + 1):
            num_keys = (pages - 1) * size + last
            assert -(-pages // pages_per_chunk) == -(-num_keys // (pages_per_chunk * size)), (size, pages, last)
    reached = []

    @checked(200)
    @given(problems(max_parts=1, forms=("base2",), value_exponents=(0, -24, -128)), st.randoms(use_true_random=False),
           st.booleans(), st.sampled_from([None, 1, 2, 3, 4]), st.integers(1, 8), st.integers(1, 4), st.integers(1, 4),
           st.booleans(), st.booleans())
    def run(problem, rnd, extreme, threads, chunk, block, groups, ftz, fast):
        n = len(problem["keys"])
        labels = [j // chunk for j in range(n)]
        problem = dict(problem, parts=labels[-1] + 1, labels=labels, block=block, groups=groups, fast_division=fast)
        if min(part_lses(problem)) <= (FLASHINFER_START + 127) * mpmath.log(2):  # the condition of Lemmas 9 and 11
            return
        exp = Repeatable(rnd.random(), extreme, ftz, division_ulps=2)
        ar = fp.Arithmetic(problem["accumulate"], problem["flush"])
        for part in range(problem["parts"]):
            idx = [j for j, label in enumerate(labels) if label == part]
            walked = simulate_decode_chunk(problem["q"], [problem["keys"][j] for j in idx],
                                           [problem["values"][j] for j in idx], problem["scale"], block, groups, exp,
                                           ar)[2]
            assert max(walked) <= decode_chunk_steps(len(idx), block, groups), (len(idx), block, groups)
        counted = request_chunk_steps(n, chunk, block, groups, 1 if threads is None else 2, fast)
        # within the bounds at the tree's count, so at the lemma's, which is not smaller
        out_err, with_term, _, lse_err, lse_b, steps = stored_fold_errors(problem, exp, threads,
                                                                         FLASHINFER_START if ftz else None)
        assert all(e <= b for e, b in zip(out_err, with_term)) and lse_err <= lse_b, (n, chunk, steps)
        assert steps <= counted, (n, chunk, threads, steps, counted)
        reached.append(steps == counted)

    run()
    assert any(reached), len(reached)


def reciprocal_fold_amplification(k: int, prec: bounds.Precision):
    """Lemma 13's bound on a fold's factor ``sum_i |c_i| / D_hat`` at 60 digits, ``k >= 1`` states, where the
    fold normalises by a reciprocal within 2 ulp and a product (FlashInfer's ``normalize`` from commit
    ``d7f2c64`` on): ``(1 + 2u)(1 + u/2)(1 + Xi) max_i R_i`` with ``R_1 = ((1 + u/2)/(1 - u/2))^(k-1)
    ((1 + u)/(1 - u))^(k-1)`` (the first state enters exactly, ``0 + x 1``) and, for ``i >= 2``, ``R_i = (1 +
    u/2) ((1 + u/2)/(1 - u/2))^(k-i) ((1 + u)/(1 - u))^(k-i+1)`` (its product ``x_i f_i``, at most ``k - i``
    later growths and ``k - i + 1`` sums), largest at ``i = 2``; ``u``, ``Xi`` as in
    ``stored_fold_amplification``."""
    u, u_exp, tau_acc = (mpmath.mpf(x) for x in (prec.u_acc, prec.u_exp, prec.tau_acc))
    e = k * tau_acc * mpmath.exp((u_exp + 3 * u / 2) * k)
    product, total = (1 + u / 2) / (1 - u / 2), (1 + u) / (1 - u)
    division = (1 + 2 * u) * (1 + u / 2)
    first = division * product ** (k - 1) * total ** (k - 1) * (1 + e)
    return max(first, division * (1 + u / 2) * product ** (k - 2) * total ** (k - 1) * (1 + e)) if k >= 2 else first


def stored_fold_amplification(k: int, prec: bounds.Precision):
    """Lemma 10's bound on a fold's factor ``sum_i |c_i| / D_hat`` at 60 digits, for ``k >= 1``
    states: ``(1 + 2u)(1 + u/2) ((1 + u/2)/(1 - u/2))^(k-1) ((1 + u)/(1 - u))^(k-1) (1 + Xi)``,
    ``u = u_acc``, ``Xi = k tau_acc exp((u_exp + 3u/2) k)``: the division within 2 ulp, the
    product ``o_i f_i``, the rescales' and the sums' roundings on the numerator against the
    normaliser's, and the normaliser's rescales below the normal range."""
    u, u_exp, tau_acc = (mpmath.mpf(x) for x in (prec.u_acc, prec.u_exp, prec.tau_acc))
    k = mpmath.mpf(k)
    e = k * tau_acc * mpmath.exp((u_exp + 3 * u / 2) * k)
    return (1 + 2 * u) * (1 + u / 2) * ((1 + u / 2) / (1 - u / 2)) ** (k - 1) * ((1 + u) / (1 - u)) ** (k - 1) * (1 + e)


def adversarial_fold_amplification(k: int, u) -> mpmath.mpf:
    """The factor ``sum_i c_i / D_hat`` of a running fold of ``k`` states of equal lse in the
    standard model of rounding, every sum of the numerator rounded up by ``1 + u`` and every sum
    of the normaliser down by ``1 - u`` (the rescales are all exactly 1), the product and the
    division exact: how much the stored roundings' absolute rest can grow in one fold."""
    u = mpmath.mpf(u)
    numerator, normaliser = mpmath.mpf(1), mpmath.mpf(1)  # the first state: 0 + x 1, 1 0 + 1, exact
    for _ in range(k - 1):
        numerator, normaliser = (numerator + 1) * (1 + u), (normaliser + 1) * (1 - u)
    return numerator / normaliser


def check_stored_fold_factor():
    """Lemma 10's factor per fold. (1) Its exact expression (``stored_fold_amplification``) is at
    most ``exp(5/2 u_acc + 3 u_acc (K' - 1))`` for ``K'`` from 1 to ``2^23 - 1`` with fp32 sums
    (and to ``2^52 - 1`` with float64's). (2) The growth with ``K'`` is needed: in the standard
    model a fold of ``K'`` states of equal lse whose numerator sums round up and normaliser sums
    down reaches a factor above ``exp(0.9 u_acc (K' - 1))``: above Lemma 8's ``exp(4 u_acc)`` from
    ``K' = 6`` on, so no bound per fold independent of ``K'`` holds in the model. (3) The
    recursion over a tree of folds, ``h <= k_v ((1 + u_p) max h_i + tau) + tau_acc`` with
    ``k_v = exp(5/2 u + 3u (K'_v - 1))``, stays within the closed form ``S (tau + tau_acc)
    exp(S (u_p + 5/2 u) + 3u (N - 1))`` on chains and two-level trees, and ``out_bound`` with
    ``stored_merge="running"`` carries that ``H``."""
    for dtype in ("float16", "float64"):
        prec = bounds.precision(dtype)
        u = mpmath.mpf(prec.u_acc)
        top = 2**23 - 1 if dtype == "float16" else 2**52 - 1
        for k in (1, 2, 3, 8, 1000, 2**16, 2**20, 2**22, top):
            bound = mpmath.exp(mpmath.mpf(5) / 2 * u + 3 * u * (k - 1))
            assert stored_fold_amplification(k, prec) <= bound, (dtype, k)
    u = mpmath.mpf(bounds.precision("float32").u_acc)
    for k in (2, 6, 16, 256, 4096):
        factor = adversarial_fold_amplification(k, u)
        proved = stored_fold_amplification(k, bounds.precision("float32"))
        assert mpmath.exp(mpmath.mpf(0.9) * u * (k - 1)) < factor <= proved
        assert (factor > mpmath.exp(4 * u)) == (k >= 6), (k, factor)
    for dtype in ("float16", "bfloat16"):
        prec = bounds.precision(dtype)
        u, u_p, tau, tau_acc = (mpmath.mpf(x) for x in (prec.u_acc, prec.u_p, prec.tau, prec.tau_acc))
        fold = lambda k: mpmath.exp(mpmath.mpf(5) / 2 * u + 3 * u * (k - 1))  # noqa: E731
        closed = lambda s, n: (s * (tau + tau_acc)  # noqa: E731
                               * mpmath.exp(s * (u_p + mpmath.mpf(5) / 2 * u) + 3 * u * (n - 1)))
        h = mpmath.mpf(0)
        for s in range(1, 65):  # a chain: each fold takes the last one's stored result and one part of 1 key
            h = fold(2 if s > 1 else 1) * ((1 + u_p) * h + tau) + tau_acc
            assert h <= closed(s, s), (dtype, s)
        for per_thread, threads in ((1, 8), (2, 8), (16, 64), (64, 32)):
            inner = fold(per_thread) * tau + tau_acc
            h = fold(threads) * ((1 + u_p) * inner + tau) + tau_acc
            n = per_thread * threads
            assert h <= closed(2, n), (dtype, per_thread, threads)
            carried = bounds.out_bound(np.zeros(1), np.zeros(1), n, 0.0, 1, prec, 2 * threads + 2, stored=2,
                                       stored_merge="running")[0]
            assert carried - 2 * prec.tau >= closed(2, n) * (1 - mpmath.mpf(2) ** -40), (dtype, n, carried)


def check_flashinfer_ieee_start():
    """Lemma 13 on FlashInfer from commit ``d7f2c64`` on (IEEE ``-inf`` start, clamped exponents, ``normalize``
    by ``__fdividef(1, d)`` and a product). (1) A key far below Lemma 11's condition (natural score -40960, base
    2 -59093) in a chunk of blocks of 64 slots and 2 groups (63 masked slots, a keyless group): the kernel from
    ``-inf`` computes bit for bit the walk from ``-inf`` that leaves them out, output 1, with an ``exp2`` that
    flushes and one that keeps subnormals; from 0.5.0's ``-5e4`` the same row returns 0 (the key's weight
    flushed, the masked slots' 1 each). (2) Folds: an empty state first, an all-empty fold and a fold of no
    state give the fold from ``-inf`` over the non-empty states and ``(0, -inf)`` twice, where the unclamped
    fold from ``-inf`` gives NaN. (3) The reciprocal's factor per fold (``reciprocal_fold_amplification``) is
    within Lemma 10's (``stored_fold_amplification``) for ``K'`` up to ``2^23 - 1``, so ``H^run_S`` is
    unchanged, and it is not if the first state's product were rounded too; the standard model's fold
    (``adversarial_fold_amplification``) times the reciprocal's and the product's roundings is within it.
    (4) ``decode_example`` run from ``-inf``: its lse past ``lse_bound`` at 1 step, within it at Lemma 11's 64.
    (5) Hypothesis-drawn split-KV decodes of a request's KV (1 to 12 keys, chunks of 1 to 8 keys from its first
    key, blocks of 1 to 4 slots, 1 to 4 groups, one fold or 1 to 6 threads, more threads than chunks too;
    fp16, bf16 and fp32; scores shifted by 0 or -40960; an ``exp2`` that flushes or not): the kernel from
    ``-inf`` computes bit for bit the walks and folds from ``-inf`` that leave out masked slots, keyless groups
    and empty threads (with the same reciprocal normalise), and stays within ``out_bound`` and ``lse_bound``
    at Lemma 10's count, which is within ``request_chunk_steps`` with divisions within 2 ulp (what
    ``blocked_steps(..., chunk_from="request", merge="running", levels=2, fast_division=True, groups=Z)``
    counts), equal to it in some draws; draws outside 0.5.0's condition are reached."""
    prec = bounds.precision("float32")
    for ftz in (True, False):
        exp = Elementary(_Still(), False, ftz)
        runs = [simulate_decode_chunk([mpmath.mpf(1)], [[mpmath.mpf(-40960)]], [[mpmath.mpf(1)]], 1.0, 64, 2, exp,
                                      fp.Arithmetic(), None, start)
                for start in (FLASHINFER_IEEE_START, None, FLASHINFER_START)]
        assert runs[0] == runs[1] and runs[0][0] == [1] and runs[2][0] == [0], (ftz, runs)
    exp, ar = Elementary(_Still(), False, True), fp.Arithmetic()
    full = ([mpmath.mpf(3)], mpmath.mpf(-7))
    divide = reciprocal_divide(exp, ar)
    ieee = running_fold_base2([exact.empty(1), full, exact.empty(1)], exp, ar, divide, FLASHINFER_IEEE_START)
    assert ieee == running_fold_base2([full], exp, ar, divide), ieee
    assert mpmath.isnan(running_fold_base2([exact.empty(1), full], exp, ar, divide)[1])
    for states in ([exact.empty(1), exact.empty(1)], []):
        assert running_fold_base2(states, exp, ar, divide, FLASHINFER_IEEE_START, 1) == ([0], exact.NEG_INF), states
    u = mpmath.mpf(prec.u_acc)
    for dtype in ("float16", "float64"):
        at = bounds.precision(dtype)
        for k in (1, 2, 3, 8, 1000, 2**16, 2**20, 2**22, 2**23 - 1 if dtype == "float16" else 2**52 - 1):
            assert reciprocal_fold_amplification(k, at) <= stored_fold_amplification(k, at), (dtype, k)
            if k >= 2:  # the argument takes the first state's product x_1 f_1 = x_1 as exact
                u_at = mpmath.mpf(at.u_acc)
                assert reciprocal_fold_amplification(k, at) * (1 + u_at / 2) > stored_fold_amplification(k, at)
    for k in (2, 6, 256):
        assert (adversarial_fold_amplification(k, u) * (1 + 2 * u) * (1 + u / 2)
                <= reciprocal_fold_amplification(k, prec)), k
    problem = decode_example()
    (ref_out, ref_lse), value_abs, score_abs = reference(problem)
    up = Elementary(_Up(), True)
    _, lse, steps = simulate_decode_chunk(problem["q"], problem["keys"], problem["values"], 1.0, 1, 64, up,
                                          fp.Arithmetic(), None, FLASHINFER_IEEE_START)
    lse_err = abs(lse * mpmath.log(2) - ref_lse)
    at = {s: float(bounds.lse_bound(float(ref_lse), 64, float(score_abs), 1, prec, s, scale=1.0)) for s in (1, 64)}
    assert max(steps) == 64 and at[1] < lse_err <= at[64], (lse_err / u, at[1] / u, at[64] / u)
    reached = []

    @checked(150)
    @given(problems(max_parts=1, forms=("base2",), value_exponents=(0, -24, -128)), st.randoms(use_true_random=False),
           st.booleans(), st.sampled_from([None, 1, 2, 3, 6]), st.integers(1, 8), st.integers(1, 4), st.integers(1, 4),
           st.booleans(), st.sampled_from([0, -40960]))
    def run(problem, rnd, extreme, threads, chunk, block, groups, ftz, shift):
        n = len(problem["keys"])
        labels = [j // chunk for j in range(n)]
        problem = dict(problem, scale=1.0, q=problem["q"] + [mpmath.mpf(1)],
                       keys=[k + [mpmath.mpf(shift)] for k in problem["keys"]],
                       values=[v + [mpmath.mpf(1)] for v in problem["values"]], parts=labels[-1] + 1, labels=labels,
                       block=block, groups=groups, fast_division=True, reciprocal=True)
        exp = Repeatable(rnd.random(), extreme, ftz, division_ulps=2)
        ar = fp.Arithmetic(problem["accumulate"], problem["flush"])
        for part in range(problem["parts"]):
            idx = [j for j, label in enumerate(labels) if label == part]
            k, v = [problem["keys"][j] for j in idx], [problem["values"][j] for j in idx]
            walks = [simulate_decode_chunk(problem["q"], k, v, 1.0, block, groups, exp, ar,
                                           lambda a, b: exp.divide(a, b, ar), start)
                     for start in (FLASHINFER_IEEE_START, None)]
            assert walks[0] == walks[1], (problem["dtype"], block, groups)
        trees = [simulate_stored_folds(problem, exp, threads, start) for start in (FLASHINFER_IEEE_START, None)]
        assert trees[0] == trees[1], (problem["dtype"], threads)
        out_err, with_term, _, lse_err, lse_b, steps = stored_fold_errors(problem, exp, threads, FLASHINFER_IEEE_START)
        assert all(e <= b for e, b in zip(out_err, with_term)) and lse_err <= lse_b, (n, chunk, steps)
        counted = request_chunk_steps(n, chunk, block, groups, 1 if threads is None else 2, True)
        assert steps <= counted, (n, chunk, threads, steps, counted)
        reached.append((min(part_lses(problem)) <= (FLASHINFER_START + 127) * mpmath.log(2), steps == counted,
                        threads is not None and threads > problem["parts"]))

    run()
    assert all(any(r[i] for r in reached) for i in range(3)), len(reached)


#: How the compiler may evaluate FA2 prefill's base-2 exponent ``x * c2 - m * c2`` (``update_mdo_states`` in
#: FlashInfer 0.5.0's ``include/flashinfer/attention/prefill.cuh``, raw scores ``x`` and running maximum ``m``):
#: ``None`` rounds both products, ``"score"`` fuses the score's product, ``fl(x c2 - fl(m c2))``, ``"max"`` the
#: maximum's, ``fl(fl(x c2) - m c2)`` (nvcc's default ``--fmad=true`` may contract either; Lemma 14).
PREFILL_FMA = (None, "score", "max")


def prefill_exponent(x, m, c2, fma, ar: fp.Arithmetic):
    """FA2 prefill's fp32 exponent ``x * c2 - m * c2`` of a raw score (or a previous maximum) ``x`` under the raw
    running maximum ``m``, each product rounded unless ``fma`` (one of ``PREFILL_FMA``) fuses it; ``-inf`` for
    ``x = -inf`` (the walk from ``-inf``'s first rescale)."""
    if x == exact.NEG_INF:
        return exact.NEG_INF
    if fma == "score":
        return fp.r32(x * c2 - ar.mul(m, c2))
    if fma == "max":
        return fp.r32(ar.mul(x, c2) - m * c2)
    return fp.r32(ar.mul(x, c2) - ar.mul(m, c2))


def simulate_prefill_chunk(q, keys, values, scale, dtype: str, block: int, groups: int, seen: int, iterations: int,
                           exp, ar: fp.Arithmetic, fma=None, start=None, divide=None) -> tuple:
    """FlashInfer 0.5.0's FA2 prefill (``BatchPrefillWithPagedKVCacheDevice`` / ``...RaggedKVCache...`` in
    ``include/flashinfer/attention/prefill.cuh``, the default variant) for one query row over one KV chunk
    (Lemma 14), every rounding explicit as ``simulate_decode_chunk``'s.

    The CTA runs ``iterations`` iterations of ``block * groups`` slots (``CTA_TILE_KV``); in iteration ``t`` warp
    ``z`` (``threadIdx.z``, ``groups = NUM_WARPS_KV``, ``block = NUM_MMA_KV * 16``) takes the slots ``t block
    groups + z block`` to ``... + block - 1``. A slot past the chunk's keys is masked with the value 0 (filled
    zero), a key at or past ``seen`` (the row's causal limit in the chunk) is masked with its real value; a masked
    slot scores ``-5e4`` (``MaskFillValue``), raw. Per block: raw scores ``fl(q . k)`` (no scale), ``m`` their
    running maximum (raw, from ``-5e4``), the factor ``a = exp2(e(m_old, m))`` and the weights ``p_j =
    exp2(e(s_j, m))``, ``e`` as ``prefill_exponent`` with ``c2 = fl(fl(scale) fl(log2 e))`` (``sm_scale_log2``);
    ``d <- fl(d a)``, ``o <- fl(o a)``; the weights rounded to ``dtype`` (``vec_cast``), ``d`` plus their sum
    (``m16k16_rowsum_f16f16f32``, an mma of the rounded weights), ``o`` plus the sum of their products with the
    values. After the loop ``finalize_m`` scales every maximum but the start, ``M = fl(m c2)``, and for
    ``groups > 1`` ``threadblock_sync_mdo_states`` folds the warps: from ``(M, D) = (-5e4, 1)``, in warp order,
    ``M' = max(M, M_z)``, ``D = fl(fl(D exp2(fl(M - M'))) + fl(d_z exp2(fl(M_z - M'))))``, then ``O`` the sum in
    warp order of ``fl(o_z exp2(fl(M_z - M)))`` with the final ``M``. The output is ``divide(O, D)``
    (``OutputTransform``: ``O`` times ``rcp.approx(D)``, 0 where ``M`` is the start), the lse ``fl(log2(D) + M)``.

    ``start=None``: the walk from ``-inf``: masked slots, the blocks of a warp before its first key the row sees
    and the warps that hold none are left out (its later blocks are run, keys or not). ``start=FLASHINFER_START``:
    the kernel as it runs.

    Args:
        q: ``[D]`` query; keys, values: ``[n][D]``, the chunk's keys in order; exact in ``dtype``.
        scale: the softmax scale (a float); dtype: ``"float16"`` or ``"bfloat16"`` (FA2's q is 16-bit).
        block, groups: as above (positive); seen: keys the row sees, ``1 <= seen <= n``.
        iterations: the CTA's iterations, at least ``ceil(seen / (block groups))``.
        exp: the fp32 ``exp2`` and ``log2`` (``Elementary``); ar: the fp32 arithmetic.
        fma: one of ``PREFILL_FMA``; start: ``None`` or ``FLASHINFER_START``.
        divide: the output's division; ``None``: ``ar.div``.

    Returns:
        ``(out [D] fp32, lse base 2 fp32, steps [seen])``: ``steps[j]`` counts key ``j``'s exponential, each later
        block of its warp whose factor is not exactly 1 and each factor of the warps' fold not exactly 1 that
        multiplies its normaliser.
    """
    dim, n = len(q), len(keys)
    c2 = fp.r32(fp.r32(scale) * fp.r32(LOG2E))
    width, top = block * groups, exact.NEG_INF if start is None else mpmath.mpf(start)
    steps, states = [0] * seen, []
    for z in range(groups):
        m, d, o, held = top, mpmath.mpf(1), [mpmath.mpf(0)] * dim, []
        for t in range(iterations):
            slots = range(t * width + z * block, t * width + (z + 1) * block)
            mine = [j for j in slots if j < seen]
            if start is None and not held and not mine:
                continue
            kept = [j for j in slots if start is not None or j < seen]
            s = [ar.dot(q, keys[j]) if j < seen else top for j in kept]
            v = [values[j] if j < n else [mpmath.mpf(0)] * dim for j in kept]
            m_new = max([m] + s)
            alpha = exp(prefill_exponent(m, m_new, c2, fma, ar), 2)
            p = [fp.round_to(exp(prefill_exponent(x, m_new, c2, fma, ar), 2), dtype) for x in s]
            d = ar.add(ar.mul(d, alpha), ar.total(p))
            o = [ar.add(ar.mul(a, alpha), ar.total([ar.mul(x, vj[i]) for x, vj in zip(p, v)])) for i, a in enumerate(o)]
            for j in held if alpha != 1 else []:
                steps[j] += 1
            for j in mine:
                steps[j] = 1
            held, m = held + mine, m_new
        if held or start is not None:
            states.append((m if m == top else ar.mul(m, c2), d, o, held))
    if groups == 1:
        m_top, total, acc, _ = states[0]
    else:
        m_top, total, inside = top, mpmath.mpf(1), []
        for m, d, _, held in states:
            m_new = max(m_top, m)
            f1, f2 = exp2_clamped(exp, m_top, m_new), exp2_clamped(exp, m, m_new)
            total = ar.add(ar.mul(total, f1), ar.mul(d, f2))
            for j in (inside if f1 != 1 else []) + (held if f2 != 1 else []):
                steps[j] += 1
            inside, m_top = inside + held, m_new
        acc = [mpmath.mpf(0)] * dim
        for m, _, o, _ in states:
            f = exp2_clamped(exp, m, m_top)
            acc = [ar.add(a, ar.mul(b, f)) for a, b in zip(acc, o)]
    divide = divide or ar.div
    out = [divide(a, total) if m_top != top else mpmath.mpf(0) for a in acc]
    return out, fp.r32(exp.log(total, 2) + m_top), steps


def prefill_chunk_factors(seen: int, block: int, groups: int, iterations: int, fma) -> int:
    """The most exponentials a key meets (its own, its warp's later rescales not exactly 1, the warps' fold) in a
    row that sees ``seen >= 1`` keys of an FA2 prefill chunk walked by ``groups`` warps in blocks of ``block``
    slots over the CTA's ``iterations``: Lemma 11's ``I + Z' - 1`` (``decode_chunk_steps``) where the exponents
    round both products; ``J + Z' - 1``, ``J = iterations``, where the compiler fuses one (``fma`` in
    ``PREFILL_FMA``: every later iteration rescales, keys or not)."""
    if fma is None:
        return decode_chunk_steps(seen, block, groups)
    return iterations + min(groups, -(-seen // block)) - 1


def prefill_chunk_steps(seen: int, block: int, groups: int, iterations: int, fma) -> int:
    """Lemma 14's count of steps for such a key: ``prefill_chunk_factors``, and one more where ``fma`` fuses a
    product (the exponents' mismatched roundings of the maxima, ``J + Z'``)."""
    return prefill_chunk_factors(seen, block, groups, iterations, fma) + (fma is not None)


def prefill_chunk_growth(scores: list, c2, block: int, groups: int, seen: int, iterations: int, fma, draw) -> list:
    """Lemma 14's factors in the standard model of rounding, at 60 digits, as ``decode_chunk_growth`` models Lemma
    11's: an FA2 prefill row that sees the first ``seen`` of the chunk's computed raw scores ``scores`` (item 1's
    error is the score's), walked as ``simulate_prefill_chunk`` walks it from ``-inf`` over ``iterations``. A
    product ``fl(x c2)`` rounds the same way wherever it is formed (the hardware's rounding is a function of ``x``),
    so that without ``fma`` the exponents telescope as Lemma 11's.

    Returns:
        Per key ``(alpha, beta, steps)`` against each shift the claim may take: the logs of the factors by which the
        walk multiplies its numerator and normaliser weights against the exact ``2^(s_j c2 - M)``, ``M`` the
        computed ``fl(m c2)`` of the final maximum ``m`` (and, where ``fma``, also ``m c2``), and its count of
        exponentials (its own and each factor not exactly 1 on its normaliser).
    """
    prec = bounds.precision("float32")
    half, u_exp = mpmath.mpf(prec.u_acc) / 2, mpmath.mpf(prec.u_exp)
    products = {}

    def product(x):  # fl(x c2), the same wherever it is formed
        if x not in products:
            products[x] = x * c2 * (1 + draw(half))
        return products[x]

    def exponent(x, m):
        if fma == "score":
            return (x * c2 - product(m)) * (1 + draw(half))
        if fma == "max":
            return (product(x) - m * c2) * (1 + draw(half))
        return (product(x) - product(m)) * (1 + draw(half))

    def rescale(keys, arg, sides=(0, 1)):  # exp2(arg) times the sums that hold ``keys``, one product on each side
        if arg == 0:
            return
        factor = mpmath.power(2, arg) * (1 + draw(u_exp))
        for j in keys:
            for side in sides:
                terms[j][side] *= factor * (1 + draw(half))
            terms[j][2] += 1 in sides

    width, terms, states = block * groups, {}, []
    for z in range(groups):
        m, held = exact.NEG_INF, []
        for t in range(iterations):
            mine = [j for j in range(t * width + z * block, t * width + (z + 1) * block) if j < seen]
            if not held and not mine:
                continue
            m_new = max([m] + [scores[j] for j in mine])
            if held:
                rescale(held, exponent(m, m_new))
            for j in mine:
                arg = exponent(scores[j], m_new)
                p = mpmath.mpf(1) if arg == 0 else mpmath.power(2, arg) * (1 + draw(u_exp))
                terms[j] = [p, p, 1]
            held, m = held + mine, m_new
        if held:
            states.append((product(m), held))
    top, inside = exact.NEG_INF, []
    for m, held in states:  # the normaliser's running fold
        m_new = max(top, m)
        if top != exact.NEG_INF:
            rescale(inside, (top - m_new) * (1 + draw(half)), (1,))
        rescale(held, (m - m_new) * (1 + draw(half)), (1,))
        inside, top = inside + held, m_new
    for m, held in states:  # the numerator's factor per warp, from the final maximum
        rescale(held, (m - top) * (1 + draw(half)), (0,))
    exact_top = max(scores[:seen]) * c2
    shifts = (top,) if fma is None else (top, exact_top)
    return [(mpmath.log(num / mpmath.power(2, scores[j] * c2 - shift)),
             mpmath.log(norm / mpmath.power(2, scores[j] * c2 - shift)), count)
            for shift in shifts for j, (num, norm, count) in sorted(terms.items())]


def prefill_condition(q, keys, seen: int, scale, ar: fp.Arithmetic) -> bool:
    """Lemma 14's condition on a row of an FA2 prefill chunk (FlashInfer 0.5.0's ``-5e4`` start, raw): every raw
    score ``fl(q . k)`` of a key it sees above ``-5e4 + 127 / c2`` and every scaled one, ``fl(fl(q . k) c2)``, above
    ``-5e4 + 127`` (the warps' fold, whose start ``finalize_m`` leaves unscaled), ``c2`` the kernel's
    ``sm_scale_log2``; the margin of 1 over 126 covers the exponent's roundings."""
    c2 = fp.r32(fp.r32(scale) * fp.r32(LOG2E))
    raw = [ar.dot(q, k) for k in keys[:seen]]
    return min(raw) * c2 > FLASHINFER_START * c2 + 127 and min(ar.mul(x, c2) for x in raw) > FLASHINFER_START + 127


def check_prefill_chunks():
    """Lemma 14 on FlashInfer 0.5.0's FA2 prefill. (1) In the standard model (``prefill_chunk_growth``, products
    ``fl(x c2)`` rounded alike wherever formed) every key's weights move by at most ``prefill_chunk_steps`` steps
    (plus item 1's ``u_acc / 2 |s_j c2|`` of its score's product), with both products of the exponent rounded and
    with either fused, its count of factors within that count (one less where fused); and a row that sees one key
    of a causal tile walked 7 iterations past it moves, with a fused product, by more than 3 steps where Lemma 11's
    count (``blocked_steps(groups=...)``) allows 1; and one block of keys at natural scores +-1000 with the
    maximum's product fused moves its far key past ``J + Z' - 1`` steps (the count less its last step), within
    ``prefill_chunk_steps``. (2) A key whose natural score is -5000 (Lemma 11's condition holds, the raw one of
    Lemma 14 does not: raw -56576 at the scale ``1/sqrt(128)``) beside a causally masked key of value 7: the kernel
    returns 0 (the masked slot's ``-5e4`` is the row's maximum, which ``OutputTransform`` takes for a row with no
    key), the walk from ``-inf`` 1. Rows at the condition's edges: just inside its raw clause and its scaled one
    the kernel computes the walk's bits, 10 and 2 above ``-5e4`` (scaled) the condition fails and the bits differ.
    (3) Hypothesis-drawn rows of a chunk (fp16 and bf16, 1 to 12 keys, the row's causal limit anywhere, 0 to 2
    iterations past it, blocks of 1 to 4 slots, 1 to 4 warps, every ``PREFILL_FMA``, sums to nearest or truncated,
    subnormals kept or flushed): from FlashInfer's start with its flushing ``exp2`` the kernel computes bit for bit
    the walk from ``-inf`` wherever the condition holds, its counts within ``prefill_chunk_steps``, and its output,
    stored in the input format, stays within ``out_bound`` at that count plus one (``OutputTransform``'s division
    within 2 ulp). The lse is not checked: Lemma 14 does not claim ``lse_bound``."""
    prec = bounds.precision("float32")
    u_acc = mpmath.mpf(prec.u_acc)
    second_order = 1 + mpmath.mpf(2) ** -20
    c2_of = {scale: fp.r32(fp.r32(scale) * fp.r32(LOG2E)) for scale in (1 / np.sqrt(128), 1.0, 0.125, 0.7)}
    reached = []

    @checked(300)
    @given(st.lists(st.floats(-3000, 3000), min_size=1, max_size=16), st.sampled_from(sorted(c2_of)),
           st.integers(1, 4), st.integers(1, 4), st.integers(1, 16), st.integers(0, 2), st.sampled_from(PREFILL_FMA),
           st.randoms(use_true_random=False), st.booleans())
    def growth(scores, scale, block, groups, seen, extra, fma, rnd, extreme):
        scores = [fp.r32(mpmath.mpf(x)) for x in scores]
        seen = min(seen, len(scores))
        c2 = c2_of[scale]
        iterations = -(-seen // (block * groups)) + extra
        score_abs = float(max(abs(x * c2) for x in scores[:seen]) * mpmath.log(2))
        step = one_step(score_abs, seen, prec)
        counted = prefill_chunk_steps(seen, block, groups, iterations, fma)
        factors = prefill_chunk_factors(seen, block, groups, iterations, fma)
        for j, (alpha, beta, count) in enumerate(prefill_chunk_growth(scores, c2, block, groups, seen, iterations,
                                                                        fma, _adversary(rnd, extreme))):
            item1 = u_acc / 2 * abs(scores[j % seen] * c2) * mpmath.log(2)
            assert max(abs(alpha), abs(beta)) <= (counted * step + item1) * second_order, (fma, alpha, beta, counted)
            assert count <= factors, (fma, count, factors)
            reached.append(fma)

    growth()
    assert set(reached) == set(PREFILL_FMA), set(reached)
    c2 = c2_of[1 / np.sqrt(128)]
    raw = fp.r32(mpmath.mpf(1000) / (c2 * mpmath.log(2)))  # natural score 1000
    for fma in PREFILL_FMA[1:]:
        grown = prefill_chunk_growth([raw, raw], c2, 1, 1, 1, 8, fma, lambda size: size)
        step = one_step(1000.0, 1, prec)
        assert max(abs(g[0]) for g in grown) > 3 * decode_chunk_steps(1, 1, 1) * step, fma
        assert prefill_chunk_growth([raw, raw], c2, 1, 1, 1, 8, None, lambda size: size)[0][2] == 1
    # the last step of J + Z': one block (J = Z' = 1) of keys at natural scores +-1000, the maximum's product fused;
    # where a seed draws the far key's product, argument and the maximum's epsilon one way, J + Z' - 1 is too few
    score_abs = float(raw * c2 * mpmath.log(2))
    counted, step, item1 = prefill_chunk_steps(2, 2, 1, 1, "max"), one_step(score_abs, 2, prec), u_acc / 2 * score_abs
    far = max(abs(g[0]) for seed in range(64)
              for g in prefill_chunk_growth([raw, -raw], c2, 2, 1, 2, 1, "max", _adversary(random.Random(seed), True)))
    assert (counted - 1) * step + item1 < far <= (counted * step + item1) * second_order, (far, counted, step)
    exp, ar = Elementary(_Still(), False, True), fp.Arithmetic()
    edge = [[mpmath.mpf(-56576)], [mpmath.mpf(0)]]
    assert not prefill_condition([mpmath.mpf(1)], edge, 1, 1 / np.sqrt(128), ar)
    assert fp.r32(-56576 * c2) > FLASHINFER_START + 127  # Lemma 11's condition, on the scaled score, holds
    runs = [simulate_prefill_chunk([mpmath.mpf(1)], edge, [[mpmath.mpf(1)], [mpmath.mpf(7)]], 1 / np.sqrt(128),
                                   "float16", 2, 1, 1, 1, exp, ar, None, start)[0]
            for start in (FLASHINFER_START, None)]
    assert runs == [[0], [1]], runs
    # the condition's edges: raw -49004 (c = 1/sqrt(128)) and -34569 (c = 1, a keyless warp beside it), just inside
    # its raw and its scaled clause, compute the walk's bits; -49920 and -34656, 10 and 2 above -5e4 scaled, do not
    edges = ((1 / np.sqrt(128), 1, (-48992, -12)), (1 / np.sqrt(128), 1, (-49920, 0)), (1.0, 2, (-34560, -9)),
             (1.0, 2, (-34656, 0)))
    for (scale, groups, key), inside in zip(edges, (True, False, True, False)):
        q, keys = [mpmath.mpf(1)] * 2, [[mpmath.mpf(x) for x in key], [mpmath.mpf(3)] * 2]
        values = [[mpmath.mpf(1)] * 2, [mpmath.mpf(7)] * 2]
        runs = [simulate_prefill_chunk(q, keys, values, scale, "float16", 2 // groups, groups, 1, 1, exp, ar, None,
                                       start) for start in (FLASHINFER_START, None)]
        assert prefill_condition(q, keys, 1, scale, ar) == (runs[0] == runs[1]) == inside, (key, runs)
    reached = []

    @checked(200)
    @given(problems(max_parts=1, forms=("base2",), dtypes=("float16", "bfloat16"), value_exponents=(0, -24)),
           st.integers(1, 12), st.integers(0, 2), st.integers(1, 4), st.integers(1, 4), st.sampled_from(PREFILL_FMA),
           st.randoms(use_true_random=False), st.booleans(), st.booleans())
    def run(problem, seen, extra, block, groups, fma, rnd, extreme, ftz):
        q, keys, values, scale, dtype = (problem[k] for k in ("q", "keys", "values", "scale", "dtype"))
        seen = min(seen, len(keys))
        iterations = -(-seen // (block * groups)) + extra
        exp = Repeatable(rnd.random(), extreme, ftz, division_ulps=2)
        ar = fp.Arithmetic(problem["accumulate"], problem["flush"])
        divide = (lambda a, b: exp.divide(a, b, ar))
        walk = simulate_prefill_chunk(q, keys, values, scale, dtype, block, groups, seen, iterations, exp, ar, fma,
                                      None, divide)
        counted = prefill_chunk_steps(seen, block, groups, iterations, fma)
        assert max(walk[2]) <= prefill_chunk_factors(seen, block, groups, iterations, fma), (fma, walk[2])
        if ftz and prefill_condition(q, keys, seen, scale, ar):
            kernel = simulate_prefill_chunk(q, keys, values, scale, dtype, block, groups, seen, iterations, exp, ar,
                                            fma, FLASHINFER_START, divide)
            assert kernel == walk, (dtype, block, groups, seen, fma)
            reached.append(fma)
        (ref_out, _), value_abs, score_abs = reference(dict(problem, keys=keys[:seen], values=values[:seen]))
        out = [fp.round_to(x, dtype) for x in walk[0]]
        out_b = bounds.out_bound(np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), seen,
                                 float(score_abs), len(q), bounds.precision(dtype), counted + 1, scale=float(scale))
        assert all(abs(x - y) <= b for x, y, b in zip(out, ref_out, out_b)), (dtype, fma, seen, counted)

    run()
    assert set(reached) == set(PREFILL_FMA), set(reached)


def stored_errors(problem: dict, exp, stored: int) -> tuple:
    """One run of ``simulate`` on ``problem`` (merged as Lemma 8's stored outputs where
    ``problem["stored"]``) against its bounds: ``(out errors [D], out bounds at stored [D], out
    bounds at stored = 0 [D], lse error, lse bound)`` as floats, at ``default_steps``."""
    (ref_out, ref_lse), value_abs, score_abs = reference(problem)
    out, lse = simulate(problem, exp)
    prec = bounds.precision(problem["dtype"])
    n, dim = len(problem["keys"]), len(problem["q"])
    args = (np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), n, float(score_abs), dim,
            prec)
    with_term, without = (bounds.out_bound(*args, scale=float(problem["scale"]), stored=s) for s in (stored, 0))
    lse_b = float(bounds.lse_bound(float(ref_lse), n, float(score_abs), dim, prec, scale=float(problem["scale"])))
    return ([float(abs(x - y)) for x, y in zip(out, ref_out)], [float(b) for b in with_term],
            [float(b) for b in without], float(abs(lse - ref_lse)), lse_b)


class _Still:
    """A random source that always draws 0: ``Elementary(_Still(), False)`` is the hardware's
    exponential and logarithm with no extra error (only fp32's rounding of the logarithm)."""

    def uniform(self, low, high):
        return 0.0

    def choice(self, seq):
        return 0


def stored_example() -> dict:
    """Lemma 8's example: one fp16 row, all scores 0, values that are fp16 subnormals (multiples
    of ``2^-24``), in four parts of 2, 2, 4 and 8 keys, so that every merge weighs its two states
    by 1/2 exactly. Folded left to right from stored outputs, the roundings of the stored means
    add up to an output error of ``1.1875 * 2^-24``, past the bound without ``stored``
    (``1.04 * 2^-24``) and within it with ``stored = 3`` (``2.63 * 2^-24``)."""
    tiny = mpmath.ldexp(1, -24)
    sizes = (2, 2, 4, 8)
    values = (26, 29, 23, 23, 17, 8, 9, 1, 28, 22, 3, 9, 23, 29, 13, 6)
    return dict(dtype="float16", scale=1.0, q=[mpmath.mpf(0)], keys=[[mpmath.mpf(0)] for _ in values],
                values=[[v * tiny] for v in values], parts=len(sizes),
                labels=[part for part, n in enumerate(sizes) for _ in range(n)], block=4, form="natural",
                accumulate="nearest", flush=False, stored=True)


def check_stored_state_merges():
    """Lemma 8: parts folded pairwise from outputs stored in the input format (natural log as
    ``relaycore.state.merge``, or base 2 as FlashInfer's ``merge_state_in_place``), with fp16,
    bf16 and fp32 values down to fp16's subnormals, stay within ``out_bound`` at ``stored`` =
    the fold's merges (a key passes at most ``parts - 1``) and within ``lse_bound``, which takes
    no ``stored``. The term is needed: ``stored_example`` leaves the bound without it."""
    (err,), (with_term,), (without,), _, _ = stored_errors(stored_example(), Elementary(_Still(), False), 3)
    assert without < err <= with_term, (err, without, with_term)
    assert err == 1.1875 * 2.0**-24

    @checked(600)
    @given(problems(value_exponents=(0, -20, -24)), st.randoms(use_true_random=False), st.booleans())
    def run(problem, rnd, extreme):
        problem = dict(problem, stored=True)
        out_err, with_term, _, lse_err, lse_b = stored_errors(problem, Elementary(rnd, extreme), problem["parts"] - 1)
        for e, b in zip(out_err, with_term):
            assert e <= b, (problem["dtype"], problem["parts"], e, b)
        assert lse_err <= lse_b, (problem["dtype"], lse_err, lse_b)

    run()


def check_stored_rounding_terms():
    """Lemma 8's two facts about a stored output, at 60 digits. (1) Rounding a value to the
    input format, to nearest, multiplies it by a factor within ``e^(+-u_p)`` where the result
    is normal and errs by at most ``tau`` (``relaycore.bounds``' ``prec.tau``) below the normal
    range: on drawn values of every binade from below the smallest subnormal to the largest
    finite value, fp16 and bf16. (2) The absolute terms' recursion
    ``H_S <= k ((1 + u_p) H_(S-1) + tau)``, ``k = (1 + u/2)^2 (1 + u) / (1 - u)``, stays within
    ``S tau exp(S (u_p + 4 u_acc))``, the bound's ``H``, for ``S`` up to 4096."""
    for dtype in ("float16", "bfloat16"):
        prec = bounds.precision(dtype)
        u_p, tau = mpmath.mpf(prec.u_p), mpmath.mpf(prec.tau)
        bits, min_exponent, max_exponent = fp.FORMATS[dtype]
        smallest_normal = mpmath.ldexp(1, min_exponent)

        @checked(400)
        @given(st.integers(min_exponent - bits - 2, max_exponent), st.floats(1, 2, exclude_max=True))
        def run(exponent, mantissa):
            z = mpmath.ldexp(mpmath.mpf(mantissa), exponent)
            if z > fp.largest(dtype):
                return
            stored = fp.round_to(z, dtype)
            if stored >= smallest_normal:
                assert abs(mpmath.log(stored / z)) <= u_p, (dtype, z, stored)
            else:
                assert abs(stored - z) <= tau, (dtype, z, stored)

        run()
        u = mpmath.mpf(prec.u_acc)
        k = (1 + u / 2) ** 2 * (1 + u) / (1 - u)
        assert k <= mpmath.exp(4 * u)
        h = mpmath.mpf(0)
        for s in range(1, 4097):
            h = k * ((1 + u_p) * h + tau)
            assert h <= s * tau * mpmath.exp(s * (u_p + 4 * u)), (dtype, s)
            if s in (1, 8, 64):  # out_bound carries H (a row of one key, V = 0, within its rho limit)
                carried = bounds.out_bound(np.zeros(1), np.zeros(1), 1, 0.0, 1, prec, 2 * s + 1, stored=s)[0]
                assert carried - 2 * prec.tau >= h, (dtype, s, carried, h)


def pairwise_fast_steps(problem: dict) -> int:
    """Lemma 8's count with divisions within 2 ulp, for ``simulate``'s left fold of ``problem``'s ``P`` parts
    from stored outputs (``K'`` of them holding keys): the parts' most blocks, three per merge of two states
    that hold keys (Lemma 3's two and one, ``K' - 1`` of them) and two per merge with an empty side on a key's
    way (``P - K'`` at most), at least one in all (its part's division). ``relaycore.testing.blocked_steps(merge=
    "pairwise", fast_division=True)`` counts the same for the same parts
    (``check_pairwise_fast_steps_match_blocked_steps``)."""
    sizes = [problem["labels"].count(part) for part in range(problem["parts"])]
    blocks = max(-(-n // part_block(problem, part)) for part, n in enumerate(sizes))
    held = sum(1 for n in sizes if n)
    return blocks + max(1, 3 * (held - 1) + 2 * (problem["parts"] - held))


def empty_side_growth(score_abs, num_keys, rho_in, prec: bounds.Precision, lse_error):
    """Lemma 8's last part, a merge with an empty side whose lse's logarithm of ``T = 1`` is not 0: the growth of
    the merged state taken in Lemma 3's form with shift ``M`` (the side that holds keys at ``M``), ``|eta_a| + 9/2
    u_acc`` (the part's division within 2 ulp, the coefficient's, its product; the sum adds an exact 0), with
    Lemma 3 (a)'s ``|eta_a| <= u_exp + u_acc / 2 (log Z_a + |l_a|)``, ``log Z_a <= log N + rho_in`` and ``|l_a| <= A
    + log N + lse_error`` (as ``merge_growth`` takes them)."""
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    a, log_n, rho_in = mpmath.mpf(score_abs), mpmath.log(num_keys), mpmath.mpf(rho_in)
    eta = u_exp + u_acc / 2 * (log_n + rho_in + a + log_n + lse_error)
    return eta + 9 * u_acc / 2


def check_logarithm_of_one_costs_a_step():
    """Lemma 3's merge with an empty side and Lemma 10's fold over one state that another fold reads, where the
    logarithm of ``T = 1`` is not 0: the state re-formed with shift ``M`` and normaliser 1 grows by Lemma 3 (a)'s
    ``|eta_a|`` alone (``empty_side_growth`` less the ``9/2 u_acc`` of 2-ulp divisions), which one step holds with at
    least ``1.4 u_acc`` left up to the out bound's limit on ``rho`` (the states' lse error the accounting ``E``
    there), for one key on. With divisions within 2 ulp, a tree of ``L`` folds over one state in all takes ``L``
    steps, each a division's ``3/2 u_acc`` on the numerator: they hold the ``L - 1`` re-forms besides, up to
    ``L = 8``."""
    prec = bounds.precision("float32")
    u_acc = mpmath.mpf(prec.u_acc)
    for score_abs in (0.0, 1.0, 20.0, 100.0, 256.0, 1e3, 1e4, 1e6):
        for num_keys in (1, 2, 3, 16, 4096, 2**16, 2**20, 2**22):
            step = one_step(score_abs, num_keys, prec)
            limit = float(bounds.out_rho_limit(score_abs))
            eta = empty_side_growth(score_abs, num_keys, limit, prec,
                                    lse_error_at(score_abs, num_keys, limit, prec)) - 9 * u_acc / 2
            assert step - eta >= mpmath.mpf(1.4) * u_acc, (score_abs, num_keys, (step - eta) / u_acc)
            for folds in range(2, 9):
                assert folds * step - folds * 3 * u_acc / 2 - (folds - 1) * eta > 0, (score_abs, num_keys, folds)


def check_stored_merges_fast_division():
    """Lemma 8 with divisions within 2 ulp (FlashInfer's ``merge_state_in_place`` under ``-use_fast_math``).
    (1) In the standard model (``merge_pairwise(fast=True)``: the part's division and the coefficient's
    within ``2 u_acc``) a merge moves every weight by at most Lemma 3's growth plus ``3 u_acc``, within three
    steps. (2) To first order up to the out bound's limit on ``rho`` (the states' lse error the accounting
    ``E`` there), three steps hold that growth with at least ``1.4 u_acc`` left, and two do not (the step per
    merge is needed: no end-to-end run can show it, the bound's slack being larger); a merge with an empty side
    whose lse's ``lg2.approx(1)`` is not 0 (``empty_side_growth``) grows within Lemma 3's bound on a merge's growth
    and within its two steps, with at least ``5 u_acc`` left (less a relative ``2^-16``; 5.0 at one key, ``A = 0``,
    5.7 from two keys on); one step does not hold it (short by up to ``3 u_acc``,
    at ``A = 0``). (3) The absolute rest:
    a merge's factor is within Lemma 10's ``kappa_2`` bound ``e^(5/2 u + 3 u)`` with two sides that hold keys and
    ``kappa_1``'s ``e^(5/2 u)`` with one, so Lemma 10's ``H^run_S`` holds (the recursion stays within what
    ``out_bound`` carries with ``stored_merge="running"``), where Lemma 8's argument for ``H_S`` does not: the
    factor passes its ``e^(4 u_acc)``. (4) Hypothesis-drawn rows (fp16, bf16, fp32,
    values down to fp16's subnormals, natural log or base 2, subnormals flushed or kept) folded pairwise from
    stored outputs with every division adversarial within 2 ulp (``Elementary(division_ulps=2).divide``, up to
    ``2 u_acc`` a quotient: the parts', and the merges' on empty sides too) stay within ``out_bound`` at
    ``pairwise_fast_steps`` with ``stored = P - 1``, ``stored_merge="running"``, and within ``lse_bound`` at that
    count."""
    prec = bounds.precision("float32")
    u_acc = mpmath.mpf(prec.u_acc)
    merge_growth_within_steps(fast=True, examples=300)
    short, one_short = [], []
    for score_abs in (0.0, 1.0, 20.0, 100.0, 256.0, 1e3, 1e4, 1e6):
        for num_keys in (1, 2, 3, 16, 4096, 2**16, 2**20, 2**22):
            step = one_step(score_abs, num_keys, prec)
            limit = float(bounds.out_rho_limit(score_abs))
            lse_error = lse_error_at(score_abs, num_keys, limit, prec)
            grown = merge_growth(score_abs, num_keys, limit, prec, lse_error)
            assert 3 * step - grown - 3 * u_acc >= mpmath.mpf(1.4) * u_acc, (score_abs, num_keys)
            short.append(2 * step - grown - 3 * u_acc)
            empty = empty_side_growth(score_abs, num_keys, limit, prec, lse_error)
            assert 2 * step - empty >= 5 * u_acc * (1 - mpmath.mpf(2) ** -16) and empty <= grown, (score_abs, num_keys)
            one_short.append(step - empty)
    assert min(short) < 0, min(short) / u_acc
    assert min(one_short) <= -3 * u_acc, min(one_short) / u_acc
    for dtype in ("float16", "bfloat16", "float32"):
        at = bounds.precision(dtype)
        u, u_p, tau = mpmath.mpf(at.u_acc), mpmath.mpf(at.u_p), mpmath.mpf(at.tau)
        two_sides = (1 + u / 2) * (1 + u) * ((1 + 2 * u) / (1 - u) + mpmath.mpf(2) ** -147)
        assert two_sides <= mpmath.exp(5 * u / 2 + 3 * u) and (1 + 2 * u) * (1 + u / 2) <= mpmath.exp(5 * u / 2)
        assert two_sides > mpmath.exp(4 * u)  # Lemma 8's kappa <= e^(4 u_acc), which its induction for H_S uses
        h = mpmath.mpf(0)
        for s in range(1, 257):
            h = two_sides * ((1 + u_p) * h + tau)
            if s in (1, 8, 64, 256):  # a row of s + 1 keys, V = 0: out_bound's term with stored_merge="running"
                carried = bounds.out_bound(np.zeros(1), np.zeros(1), s + 1, 0.0, 1, at, 3 * s + 1, stored=s,
                                           stored_merge="running")[0]
                assert carried - 2 * at.tau >= h, (dtype, s, carried, h)
    reached = []

    @checked(400)
    @given(problems(value_exponents=(0, -20, -24)), st.randoms(use_true_random=False), st.booleans())
    def run(problem, rnd, extreme):
        problem = dict(problem, stored=True, fast_division=True)
        exp = Elementary(rnd, extreme, division_ulps=2)
        (ref_out, ref_lse), value_abs, score_abs = reference(problem)
        out, lse = simulate(problem, exp)
        steps, stored = pairwise_fast_steps(problem), problem["parts"] - 1
        n, dim, scale = len(problem["keys"]), len(problem["q"]), float(problem["scale"])
        try:
            out_b = bounds.out_bound(np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), n,
                                     float(score_abs), dim, at_dtype := bounds.precision(problem["dtype"]), steps,
                                     scale=scale, stored=stored, stored_merge="running")
            lse_b = bounds.lse_bound(float(ref_lse), n, float(score_abs), dim, at_dtype, steps, scale=scale)
        except bounds.NoBound:  # no bound claimed for the row
            return
        for x, y, b in zip(out, ref_out, out_b):
            assert abs(x - y) <= b, (problem["dtype"], problem["parts"], steps, float(abs(x - y)), b)
        assert abs(lse - ref_lse) <= lse_b, (problem["dtype"], steps)
        reached.append(stored)

    run()
    assert max(reached) == 3, sorted(set(reached))


def row_parts(batch: Batch, chunk=None, chunk_from: str = "segment", every_level: bool = False) -> list:
    """Per query row of ``batch``, the keys it sees in each part a pairwise cascade folds into it, in the fold's
    order: the segments of its request's context (each prefix level it reads, in level order, and with
    ``every_level`` each level it does not read as a segment of no keys; then its own KV), each one part, or cut
    into parts of ``chunk`` keys from its first key (from the context's first key with ``chunk_from="request"``).
    What a row sees is the oracle's: the first ``N`` keys of its context (``Batch.oracle().stats.num_keys``), so
    a part holds the keys of its range below ``N``, none for a range past it (a chunk past a causal row's last key).

    Returns:
        ``[total_q]`` lists of ints, one per part.
    """
    seen = batch.oracle().stats.num_keys[:, 0]
    rows = []
    for b in range(batch.batch_size):
        lengths = []
        for level in batch.prefixes:
            pid = int(level.prefix_ids[b])
            if pid >= 0:
                lengths.append(int(level.cu_seqlens[pid + 1] - level.cu_seqlens[pid]))
            elif every_level:
                lengths.append(0)
        lengths.append(int(batch.kv_lens[b]))
        if chunk_from == "request":
            lengths = [sum(lengths)]
        starts = np.concatenate([[0], np.cumsum(lengths)])
        ranges = list(zip(starts[:-1], starts[1:]))
        if chunk:
            ranges = [(c, min(c + chunk, stop)) for start, stop in ranges for c in range(start, stop, chunk)]
        for row in range(int(batch.cu_seqlens_q[b]), int(batch.cu_seqlens_q[b + 1])):
            rows.append([int(max(0, min(seen[row], stop) - start)) for start, stop in ranges])
    return rows


@st.composite
def cascade_batches(draw) -> Batch:
    """A small batch for the step counts: 1 to 3 requests of 0 to 6 queries over as many own keys or up to 8, 0 to
    3 prefix levels of 1 to 3 prefixes of 0 to 12 keys each, each request reading one of a level's prefixes or
    none; causal or not (one head of dimension 1: only the lengths matter)."""
    batch_size = draw(st.integers(1, 3))
    kv_lens = draw(st.lists(st.integers(0, 8), min_size=batch_size, max_size=batch_size))
    q_lens = [draw(st.integers(0, min(n, 6))) for n in kv_lens]
    prefix_lens = [draw(st.lists(st.integers(0, 12), min_size=1, max_size=3)) for _ in range(draw(st.integers(0, 3)))]
    prefix_ids = [draw(st.lists(st.integers(-1, len(lens) - 1), min_size=batch_size, max_size=batch_size))
                  for lens in prefix_lens]
    return make_batch(q_lens, kv_lens, prefix_lens, prefix_ids, num_q_heads=1, head_dim=1, causal=draw(st.booleans()))


def check_pairwise_fast_steps_match_blocked_steps():
    """The count the simulations of Lemma 8's last part run at is the count users are given: for every row of
    drawn batches (causal or not, 0 to 3 prefix levels read or not, prefixes of no keys, requests of no queries),
    blocks of 1 to 4 keys, one part per segment or chunks of 1, 2, 3 or 5 keys from each segment's first key or from
    the request's, every level merged into every row (``every_level=True``) or only those read: the row's parts
    (``row_parts``, from the oracle's count of the keys it sees) given to ``pairwise_fast_steps`` as a
    ``simulate`` problem count what ``blocked_steps(..., merge="pairwise", fast_division=True)`` returns for
    that row, and, one part per segment, the simulation's ``stored = P - 1`` is ``stored_merges``' count. The two
    counts are equal, not merely ordered: both charge every key the whole fold (three steps per merge of two
    states that hold keys, two per part that holds none, at least one), whatever the order of its parts.
    Without ``fast_division`` they may differ, and the simulation's count, ``pairwise_steps``, is never the
    larger: it follows each key through the left fold (the last part's keys pass one merge), where
    ``blocked_steps``, which does not know the order, charges every key all ``K' - 1``; a bound at more steps is
    larger, so the simulations' bound covers the users'. The draws reach rows with parts that hold no key beside
    one or more that do, rows of one part (the count's floor of one), and rows where the two plain counts differ;
    half the draws merge every level (no chunks there), and at least 100 rows merge a level their request does not
    read."""
    reached, unread_rows = set(), []

    @checked(300)
    @given(cascade_batches(), st.integers(1, 4), st.sampled_from([None, 1, 2, 3, 5]), st.sampled_from(CHUNK_FROM),
           st.booleans())
    def run(batch, block, chunk, chunk_from, every_level):
        chunk, chunk_from = (None, "segment") if every_level or not chunk else (chunk, chunk_from)
        options = dict(chunk=chunk, chunk_from=chunk_from, every_level=every_level)
        users = blocked_steps(batch, block, merge="pairwise", fast_division=True, **options)[:, 0]
        plain = blocked_steps(batch, block, merge="pairwise", **options)[:, 0]
        stored = stored_merges(batch, every_level=every_level)[:, 0]
        unread = np.repeat([any(int(level.prefix_ids[b]) < 0 for level in batch.prefixes)
                            for b in range(batch.batch_size)], batch.q_lens)
        for row, sizes in enumerate(row_parts(batch, **options)):
            problem = dict(labels=[part for part, n in enumerate(sizes) for _ in range(n)], parts=len(sizes),
                           block=block)
            assert pairwise_fast_steps(problem) == users[row], (batch.recipe, options, block, row, sizes)
            assert pairwise_steps(problem) <= plain[row], (batch.recipe, options, block, row, sizes)
            assert chunk is not None or problem["parts"] - 1 == stored[row], (batch.recipe, every_level, row)
            held = sum(1 for n in sizes if n)
            reached.update({"one part"} if len(sizes) == 1 else set())
            if held < len(sizes):
                reached.update({f"{min(held, 2)} held, empty", "every level" if every_level else chunk_from})
                unread_rows.extend([row] if every_level and unread[row] else [])
                reached.update({"past a causal row"} if chunk and batch.causal and not sizes[-1] else set())
            reached.update({"plain counts differ"} if pairwise_steps(problem) < plain[row] else set())

    run()
    assert reached == {"one part", "1 held, empty", "2 held, empty", "every level", "segment", "request",
                       "past a causal row", "plain counts differ"}, sorted(reached)
    assert len(unread_rows) >= 100, len(unread_rows)


def empty_levels_floor(levels: int) -> float:
    """The base-2 lse from which a level a row reads meets FlashInfer 0.5.0's empty levels as empty sides, bit for
    bit, in a cascade of ``levels`` levels (Lemma 8's paragraph on them): 26 above ``FLASHINFER_START``, plus
    ``1.01`` per merge of two empty levels before the first level the row reads (at most ``levels - 2``)."""
    return FLASHINFER_START + 26 + 1.01 * (levels - 2)


def flashinfer_cascade(levels: list, exp, ar: fp.Arithmetic, dtype: str, empty, fast: bool = True) -> tuple:
    """One row of FlashInfer's ``MultiLevelCascadeAttentionWrapper.run``: its levels' states ``(out [D], base-2
    lse)`` in level order, ``None`` for a level the row's request does not read, which hands on ``(0, empty)``
    (``FLASHINFER_START`` in 0.5.0; ``-inf`` is the claim's empty side), folded left to right by Lemma 8's merge in
    base 2 from outputs stored in ``dtype`` (``merge_state_in_place``), every coefficient divided within 2 ulp
    (``exp.divide``; ``fast=False``: to nearest). Returns ``(out [D] fp32, base-2 lse)``, ``D = 1`` where the row
    reads no level."""
    dim = max((len(state[0]) for state in levels if state is not None), default=1)
    states = [state if state is not None else ([mpmath.mpf(0)] * dim, mpmath.mpf(empty)) for state in levels]
    divide = (lambda w, total: exp.divide(w, total, ar)) if fast else None
    return exact.fold(states, lambda a, b: simulate_merge_stored(a, b, exp, ar, dtype, 2, divide))


def check_flashinfer_empty_levels():
    """Lemma 8's paragraph on FlashInfer's empty levels: a cascade that merges every level into every row,
    ``(0, -5e4)`` for a level the row does not read, computes what the merges with the claim's empty side
    ``(0, -inf)`` compute, bit for bit, wherever every level that holds a key of the row has a base-2 lse of at least
    ``empty_levels_floor``. Two empty levels, then the row's own 25 above the lse of their merge: the same bits;
    20 above it, not (the margin is needed). 1 to 7 empty levels, then the row's own at the floor: the same bits;
    at ``-5e4 + 26`` without the floor's 1.01 per merge of two empty levels, not from 4 empty levels on (the empty
    levels' merge rises by log2 of their number, within the 1.01 per merge). Hypothesis draws (2 to 8 levels, any
    of them but the last unread, lses at the floor's edge, near Lemma 9's ``-5e4 + 126`` and ordinary, outputs down to fp32's subnormals, an
    ``exp2`` that flushes or keeps subnormals, sums to nearest or truncated, divisions within 2 ulp or to
    nearest): the same bits. The floor stays below Lemma 9's condition up to 100 levels."""
    assert empty_levels_floor(100) < FLASHINFER_START + 126
    ar, dtype = fp.Arithmetic(), "float32"
    exp = Repeatable(0.5, True, ftz=True, division_ulps=2)
    merged = flashinfer_cascade([None, None], exp, ar, dtype, FLASHINFER_START)[1]  # two empty levels' lse
    assert FLASHINFER_START + 1 <= merged <= FLASHINFER_START + 1.01, merged
    for gap, same in ((25, True), (20, False)):
        levels = [None, None, ([mpmath.mpf(1.5)], fp.r32(merged + gap))]
        runs = [flashinfer_cascade(levels, exp, ar, dtype, empty) for empty in (FLASHINFER_START, exact.NEG_INF)]
        assert (runs[0] == runs[1]) == same, (gap, runs)
    for count in range(2, 9):  # every level but the last unread, the last at the floor (its 1.01 per merge needed)
        for floor, same in ((empty_levels_floor(count), True), (FLASHINFER_START + 26, count < 5)):
            levels = [None] * (count - 1) + [([mpmath.mpf(1.5)], fp.r32(floor))]
            runs = [flashinfer_cascade(levels, exp, ar, dtype, empty) for empty in (FLASHINFER_START, exact.NEG_INF)]
            assert (runs[0] == runs[1]) == same, (count, floor, runs)

    lse_near = st.sampled_from(["floor", "lemma9", "ordinary"])

    @checked(300)
    @given(st.integers(2, 8), st.data(), st.sampled_from(["float16", "bfloat16", "float32"]), st.integers(1, 3),
           st.booleans(), st.booleans(), st.sampled_from(["nearest", "toward_zero"]), st.booleans(),
           st.floats(0, 1), st.booleans())
    def run(count, data, dtype, dim, ftz, flush, accumulate, extreme, seed, fast):
        read = data.draw(st.lists(st.booleans(), min_size=count - 1, max_size=count - 1)) + [True]
        levels = []
        for reads in read:
            near = data.draw(lse_near)
            low = {"floor": empty_levels_floor(count), "lemma9": FLASHINFER_START + 126, "ordinary": -200.0}[near]
            lse = fp.r32(low + data.draw(st.floats(0, 3 if near != "ordinary" else 400)))
            scale = mpmath.ldexp(1, data.draw(st.sampled_from([0, -24, -130])))
            out = [fp.r32(scale * data.draw(st.floats(-4, 4))) for _ in range(dim)]
            levels.append((out, lse) if reads else None)
        exp, ar = Repeatable(seed, extreme, ftz, division_ulps=2), fp.Arithmetic(accumulate, flush)
        runs = [flashinfer_cascade(levels, exp, ar, dtype, empty, fast) for empty in (FLASHINFER_START, exact.NEG_INF)]
        assert runs[0] == runs[1], (dtype, read, fast, runs)
        reached.append(read.index(True))

    reached = []
    run()
    assert max(reached) >= 3, sorted(set(reached))  # three empty levels merged before the first one read


def overflow_example() -> dict:
    """Lemma 5's counter-example: fp16, 12 keys of value 65504, scores 0 and eleven times
    -0.6724 (rounded to fp16); the weights rounded to fp16 are above the fp32 ones the
    normaliser sums, and the fp32 output, 65536, rounds to inf in fp16."""
    score = fp.round_to(-0.6724, "float16")
    return dict(dtype="float16", scale=1.0, q=[mpmath.mpf(1)], keys=[[mpmath.mpf(0)]] + [[score]] * 11,
                values=[[mpmath.mpf(65504)]] * 12, parts=1, labels=[0] * 12, block=4, form="natural")


@st.composite
def large_value_problems(draw):
    """Problems as ``problems`` draws them, with values near the format's largest finite value:
    ``largest * 2^-k * f``, ``k`` 0 to 4, ``f`` in ``[1/2, 1]``, of one sign or both."""
    problem = draw(problems(max_parts=4))
    dtype = problem["dtype"]
    top = fp.largest(dtype) * mpmath.mpf(2) ** -draw(st.integers(0, 4))
    one_sign = draw(st.booleans())
    values = [[fp.round_to(top * draw(st.floats(0.5, 1)) * (1 if one_sign else draw(st.sampled_from([-1, 1]))), dtype)
               for _ in v] for v in problem["values"]]
    return dict(problem, values=values)


def check_overflow_is_refused():
    """Lemma 5. The counter-example overflows (the simulated kernel returns inf) and
    ``out_bound`` refuses it, naming ``value_abs``. On drawn problems whose values reach each
    format's largest finite value (natural and base-2 forms, ``default_steps``): the fp32 output
    before its last rounding is within ``exp(rho_Delta) (1 + eps) V_d + 2 eps rho``, and wherever
    ``out_bound`` gives a bound the simulated kernel stays finite and within it; the draws
    include both refused and bounded rows."""
    problem = overflow_example()
    (ref_out, _), value_abs, score_abs = reference(problem)
    out, _ = simulate(problem, Elementary(random.Random(0), extreme=False))
    assert out == [mpmath.inf], out
    prec = bounds.precision("float16")
    try:
        bounds.out_bound(np.array([float(ref_out[0])]), np.array([float(value_abs[0])]), 12, float(score_abs), 1, prec)
    except bounds.NoBound as exc:
        assert str(exc).startswith("value_abs: expected exp(rho_Delta) (1 + eps) V_d"), exc
    else:
        raise AssertionError("out_bound gave a bound where the output overflows")
    counts = {"refused": 0, "bounded": 0}

    @checked(300)
    @given(large_value_problems(), st.randoms(use_true_random=False), st.booleans())
    def run(problem, rnd, extreme):
        exp = Elementary(rnd, extreme)
        prec = bounds.precision(problem["dtype"])
        (ref_out, _), value_abs, score_abs = reference(problem)
        n, dim = len(problem["keys"]), len(problem["q"])
        rho = mpmath.mpf(float(bounds.weight_perturbation(n, float(score_abs), dim, prec)))
        eps = n * mpmath.mpf(prec.tau) * mpmath.exp(rho)
        growth = mpmath.mpf(float(bounds.output_growth(n, prec)))
        try:
            bound = bounds.out_bound(np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), n,
                                     float(score_abs), dim, prec, scale=float(problem["scale"]))
        except bounds.NoBound as exc:
            assert str(exc).startswith(("value_abs: expected", "num_keys: expected")), exc
            counts["refused"] += 1
            return
        counts["bounded"] += 1
        x, _ = simulate_fp32(problem, exp)
        for xd, v in zip(x, value_abs):
            assert abs(xd) <= mpmath.exp(growth) * (1 + eps) * v + 2 * eps * rho, (problem["dtype"], xd, v)
        out = [fp.round_to(xd, problem["dtype"]) for xd in x]
        for o, r, b in zip(out, ref_out, bound):
            assert mpmath.isfinite(o) and abs(o - r) <= b, (problem["dtype"], o, r, b)

    run()
    assert counts["refused"] and counts["bounded"], counts


def underflow_example() -> dict:
    """Lemma 6's example: fp32, one key of score 0 and eleven of score -8, all of value
    ``2^-115`` (normal), computed with subnormals flushed to zero. The eleven products
    ``e^-8 2^-115 < 2^-126`` become 0, so the output is about ``2^-115 / (1 + 11 e^-8)`` where the exact
    one is ``2^-115``: an error near ``2^-123``, about 3.7 times the bound without ``5 eps_acc``."""
    value = [mpmath.ldexp(1, -115)]
    return dict(dtype="float32", scale=1.0, q=[mpmath.mpf(1)], keys=[[mpmath.mpf(0)]] + [[mpmath.mpf(-8)]] * 11,
                values=[value] * 12, parts=1, labels=[0] * 12, block=4, form="natural", accumulate="nearest",
                flush=True)


def underflow_errors(problem: dict, exp) -> tuple:
    """``(errors, bounds, bounds without 5 eps_acc)`` of the simulated output, per element, as
    floats: ``out_bound`` at the counted steps of the problem's form, and the same at
    ``tau_acc = 0``."""
    steps = triton_steps(problem) if problem["form"] == "base2" else pairwise_steps(problem)
    (ref_out, _), value_abs, score_abs = reference(problem)
    out, _ = simulate(problem, exp)
    prec = bounds.precision(problem["dtype"])
    args = (np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), len(problem["keys"]),
            float(score_abs), len(problem["q"]))
    scale = float(problem["scale"])
    bound = bounds.out_bound(*args, prec, steps, scale=scale)
    without = bounds.out_bound(*args, dataclasses.replace(prec, tau_acc=0.0), steps, scale=scale)
    return [float(abs(o - r)) for o, r in zip(out, ref_out)], [float(b) for b in bound], [float(w) for w in without]


def check_accumulator_underflow():
    """Lemma 6. The term is at most ``5/2 tau_acc / (u_acc V_d)`` of Lemma 1's first term, for
    every policy, ``N`` up to ``2^22``, ``A`` up to ``1e4`` and ``nu`` from 1 to ``2N``.
    ``underflow_example``'s error is beyond the bound without its ``5 eps_acc`` (at
    ``tau_acc = 0``), and within the bound. On drawn bf16 and fp32 problems with values down to
    ``2^-149``, computed with subnormals flushed to zero or kept (by the arithmetic and the
    exponential alike), in both forms at their counted steps, every output is within
    ``out_bound``."""
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        prec = bounds.precision(dtype)
        tau_acc, u_acc = mpmath.mpf(prec.tau_acc), mpmath.mpf(prec.u_acc)
        for num_keys in (1, 2, 4096, 2**22):
            for score_abs in (0.0, 20.0, 1e4):
                for steps in (1, 2 * num_keys):
                    rho = mpmath.mpf(float(bounds.weight_perturbation(num_keys, score_abs, 128, prec, steps)))
                    term = bounds.UNDERFLOW_ROUNDINGS * num_keys * tau_acc * mpmath.exp(rho)
                    assert term <= bounds.UNDERFLOW_ROUNDINGS / 2 * tau_acc / u_acc * mpmath.expm1(2 * rho), \
                        (dtype, num_keys, steps)
    (err,), (bound,), (without,) = underflow_errors(underflow_example(), Elementary(random.Random(0), extreme=False))
    assert without < err <= bound, (without, err, bound)

    @checked(300)
    @given(problems(dtypes=("bfloat16", "float32"), value_exponents=(-100, -115, -122, -126, -135, -149)),
           st.randoms(use_true_random=False), st.booleans())
    def run(problem, rnd, extreme):
        errors, limits, _ = underflow_errors(problem, Elementary(rnd, extreme, ftz=problem["flush"]))
        for e, b in zip(errors, limits):
            assert e <= b, (problem["dtype"], problem["flush"], e, b)

    run()


def fp16_scores(draw):
    """Two fp16 vectors of 1 to 16 elements (subnormals, values down to ``2^-24``, up to
    65504, signs drawn), the second sometimes the first negated but for its last element, so
    that the sum nearly cancels."""
    dim = draw(st.integers(1, 16))
    smallest = st.one_of(st.just(1), st.integers(0, 2047)), st.one_of(st.just(-24), st.integers(-24, 5))
    element = st.builds(lambda s, m, e: fp.round_to(s * m * mpmath.ldexp(1, e), "float16"), st.sampled_from([-1, 1]),
                        *smallest)  # the smallest subnormal, 2^-24, often
    q = draw(st.lists(element, min_size=dim, max_size=dim))
    k = draw(st.lists(element, min_size=dim, max_size=dim))
    if draw(st.booleans()):
        k = [-x for x in q[:-1]] + k[-1:]
    return q, k


def check_fp16_scores_have_no_subnormals():
    """Lemma 7: in fp32 arithmetic, chains (rounded to nearest or truncated, subnormals flushed or
    kept) and fused sums (0 to 3 alignment bits) of fp16 products only compute 0 or values of at
    least ``2^-48``; a chain's score is the same flushed or kept; ``fl(2^-78 s)`` is 0 or normal.
    bf16's ``2^-70 * 2^-70`` is a subnormal product that a flush changes."""
    floor = mpmath.ldexp(1, -48)

    tiny = mpmath.ldexp(1, -24)  # fp16's smallest subnormal

    @checked(300)
    @given(st.composite(fp16_scores)(), st.integers(0, 3))
    @example(([tiny], [tiny]), 0)  # the product 2^-48 itself
    @example(([tiny, 1, tiny], [tiny, 1, -tiny]), 0)  # cancelling
    def run(vectors, guard):
        q, k = vectors
        scores = {}
        for accumulate in ("nearest", "toward_zero"):
            for flush in (False, True):
                ar, acc = fp.Arithmetic(accumulate, flush), mpmath.mpf(0)
                for a, b in zip(q, k):
                    product = ar.mul(a, b)
                    acc = ar.add(acc, product)
                    assert product == 0 or abs(product) >= floor, (a, b, product)
                    assert acc == 0 or abs(acc) >= floor, (q, k, acc)
                scores[accumulate, flush] = acc
                scaled = ar.mul(mpmath.ldexp(1, -78), acc)
                assert scaled == 0 or abs(scaled) >= fp.SMALLEST_NORMAL, (acc, scaled)
            assert scores[accumulate, False] == scores[accumulate, True], (q, k, accumulate)
        fused = fused_sum([fp.r32(a * b) for a, b in zip(q, k)], guard)
        assert fused == 0 or abs(fused) >= floor, (q, k, guard, fused)

    run()
    small = fp.round_to(mpmath.ldexp(1, -70), "bfloat16")
    assert small == mpmath.ldexp(1, -70)  # a normal bf16 number
    assert fp.Arithmetic(flush=False).mul(small, small) == mpmath.ldexp(1, -140)
    assert fp.Arithmetic(flush=True).mul(small, small) == 0


def fast_exp(x):
    """``exp(x)`` from a natural-log argument as Triton's ``tl.exp`` on fp32 and CUDA's
    ``__expf`` compute it: ``ex2(fl(x * fl(log2 e)))``, the ``ex2`` here correctly rounded."""
    return fp.r32(mpmath.power(2, fp.r32(x * fp.r32(LOG2E))))


def check_exp_from_a_natural_argument_is_not_covered():
    """An exponential taken as ``2^fl(x fl(log2 e))`` errs, at arguments a merge of lses near
    +-40 reaches (``|x|`` up to ``2 (A + log N + 1)``, ``A = 40``), by more than what a step
    leaves it once its argument's own rounding has taken ``u_acc (A + log N + 1)``:
    ``u_exp + 3 u_acc``; so a kernel built on it is not covered. The kernels' form, ``exp2`` of
    an fp32 base-2 argument, errs there only by its own rounding (here: half an ulp)."""
    prec = bounds.precision("float32")
    a, n = 40.0, 2
    reach = 2 * (a + np.log(n) + 1)
    worst = mpmath.mpf(0)
    for i in range(1, 2001):
        x = fp.r32(-reach * i / 2000)
        worst = max(worst, abs(mpmath.log(fast_exp(x) / mpmath.exp(x))))
        x2 = fp.r32(x * LOG2E)  # a base-2 argument, exact in fp32
        assert abs(mpmath.log(fp.r32(mpmath.power(2, x2)) / mpmath.power(2, x2))) <= 2.0**-24
    assert worst > 4 * (prec.u_exp + 3 * prec.u_acc), (worst / prec.u_acc)


def typical_ratios(cases: int = 6, keys: int = 48, dim: int = 16, seed: int = 0) -> dict:
    """Worst observed error / bound per format on typical inputs (normal q, k, v, scale 1/sqrt(D),
    blocks of 16 keys, two relay parts of ``keys / 2``).

    Returns:
        ``{dtype: {"out": r, "lse": r, "out_counted": r, "lse_counted": r}}``: the largest ratios
        over ``cases`` drawn problems, against the bound with ``default_steps`` and with the steps
        this blocking really takes (``*_counted``: 1 exponential + 1 rescale + 2 for the merge).
    """
    rng = np.random.default_rng(seed)
    counted = 1 + (-(-(keys // 2) // 16) - 1) + 2  # blocks of 16 over a part of keys / 2: ceil
    result = {}
    for dtype in ("float16", "bfloat16", "float32"):
        worst = dict(out=0.0, lse=0.0, out_counted=0.0, lse_counted=0.0)
        for _ in range(cases):
            vec = lambda shape: [[mpmath.mpf(_exact_in(dtype, x)) for x in row] for row in rng.standard_normal(shape)]  # noqa: E731
            problem = dict(dtype=dtype, scale=1 / np.sqrt(dim), q=vec((1, dim))[0], keys=vec((keys, dim)), values=vec((keys, dim)),
                           parts=2, labels=[int(j >= keys // 2) for j in range(keys)], block=16)
            for suffix, steps in (("", None), ("_counted", counted)):
                out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(random.Random(seed), extreme=False), steps)
                worst["out" + suffix] = max(worst["out" + suffix], max(e / b for e, b in zip(out_err, out_b)))
                worst["lse" + suffix] = max(worst["lse" + suffix], lse_err / lse_b)
        result[dtype] = worst
    return result


#: The least observed / bound ratio on typical inputs that ``check_not_absurdly_loose`` accepts,
#: ``(with default_steps, with counted steps)``. fp32's rounding errors are far below its
#: worst case on random data (they cancel like a random walk), and the exponential's error,
#: eight times fp32's unit roundoff, dominates its bound.
LOOSENESS_FLOOR = {"float16": (1e-2, 1e-2), "bfloat16": (1e-2, 1e-2), "float32": (1e-5, 1e-4)}


def check_not_absurdly_loose():
    """On typical inputs the worst observed output error is above ``LOOSENESS_FLOOR`` times the
    bound, per format (and never above the bound)."""
    for dtype, r in typical_ratios(cases=3).items():
        floor_default, floor_counted = LOOSENESS_FLOOR[dtype]
        assert floor_counted <= r["out_counted"] <= 1, (dtype, r)
        assert floor_default <= r["out"] <= r["out_counted"], (dtype, r)
        assert r["lse"] <= r["lse_counted"] <= 1, (dtype, r)
