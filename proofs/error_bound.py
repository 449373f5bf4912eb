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
roundoff, and $\tau$ bounds the absolute error of rounding a weight in $[0, 1]$ near underflow.

## Notation

One query row sees $N \ge 1$ keys with exact scores $s_j = c \sum_d q_d k_{jd}$
($c$ the softmax scale). Put $A = \max_j c \sum_d |q_d k_{jd}|$ (so $|s_j| \le A$),
$V_d = \max_j |v_{jd}|$, $\gamma_n = n u_{acc} / (1 - n u_{acc})$, and let the exact result be
$o_d = \sum_j w_j v_{jd} / \sum_j w_j$, $\ell = \log \sum_j e^{s_j}$, with
$w_j = e^{s_j - m}$ for any shift $m$ (it cancels).

## Lemma 1: perturbed weights

*If the computed output is*

$$
\hat o_d = \frac{\sum_j (a_j + t_j)\, v_{jd}}{\sum_j (b_j + t'_j)},\qquad
a_j = w_j e^{\alpha_j},\; b_j = w_j e^{\beta_j},\; |\alpha_j|, |\beta_j| \le \rho,\;
|t_j|, |t'_j| \le \tau,
$$

*with a shift $m$ for which $B = \sum_j b_j \ge e^{-\rho}$, and $\varepsilon = N \tau e^{\rho}
< 1$, then*

$$
|\hat o_d - o_d| \le \frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}\, V_d .
$$

*Proof.* Let $W = \sum_j w_j$ and $B' = B + \sum_j t'_j$, so $|B' - B| \le N\tau \le
\varepsilon B$. Since $e^{-\rho} W \le B \le e^{\rho} W$, each $a_j / B$ lies in
$[e^{-2\rho}, e^{2\rho}]\, w_j / W$, hence $a_j / B'$ lies within
$\bigl(e^{2\rho}/(1-\varepsilon) - 1\bigr) w_j / W$ of $w_j / W$. Then

$$
|\hat o_d - o_d| \le \sum_j \Bigl|\frac{a_j}{B'} - \frac{w_j}{W}\Bigr| V_d
+ \frac{\sum_j |t_j|}{B'} V_d
\le \Bigl(\frac{e^{2\rho}}{1 - \varepsilon} - 1\Bigr) V_d + \frac{N \tau}{(1-\varepsilon) e^{-\rho}} V_d ,
$$

which is the claim, because $\sum_j w_j / W = 1$. $\blacksquare$

The bound is attained: one key with $\alpha = \rho$, $\beta = -\rho$ gives
$\hat o = e^{2\rho} v$. Without the underflow terms it is $(e^{2\rho} - 1) V_d \approx 2\rho V_d$: relative
errors of the *weights* become an absolute error of the output on the scale of the values,
not of the output (which may be near 0 through cancellation).

The proof uses the $t$-terms only through $\sum_j |t_j| \le \varepsilon B$ and
$\sum_j |t'_j| \le \varepsilon B$; $|t_j|, |t'_j| \le \tau$ with $B \ge e^{-\rho}$ is one way to
have them. Lemmas 3 and 4 use the sums: a state's $t$-terms reach a merge's result multiplied by
a factor slightly above 1, and the merged normaliser's margin over $e^{-\rho}$ absorbs it.

## Lemma 2: one part computed in low precision has that form

The weight of key $j$, in the units of the final running maximum, is perturbed by:

1. *the score*: the fp32 dot product errs by at most $\gamma_D \cdot c\sum_d|q_d k_{jd}|$, the
   scale's rounding and the product by $u_{acc} |s_j|$, the subtraction of the running
   maximum by $u_{acc} |\hat s_j - m|/2 \le u_{acc} A$: together at most $\gamma_{D+6} A$ in
   the exponent. The maximum itself is a shift common to all keys and cancels. A kernel whose
   head axis is wider than $D$ (the Triton tiles' power of two) sums exact zeros beside the
   $D$ products: a zero addend leaves a rounded addition exact (up to the sign of a zero), and
   a fused one aligns to its largest addend, which a zero is not, so the model drops it
   (`fused_sum`; an assumption about the hardware, as the model is): the bound keeps $D$.
2. *the weight's rounding* to the input format (numerator only): $|\log(\hat p/p)| \le
   \log(1 + u_p) \le u_p$ for a normal result (round to nearest), else an absolute error
   $\le \tau$ (the $t_j$; the normaliser's own fp32 underflow is the $t'_j$).
3. *the sums*: an $N$-term fp32 sum in any order multiplies each term by $\prod (1 +
   \delta)^{\pm 1}$ over at most $N$ roundings, a factor within $e^{\pm \gamma_N}$.
   (fp16 and bf16 products $\hat p_j v_{jd}$ are exact in fp32; for fp32 inputs the product's
   rounding takes the slot of item 2.)
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
\rho = \gamma_{D+6}\, A + u_p + \gamma_N + S\,\bigl(u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)\bigr),
$$

$S$ the number of steps; the key that attains the final maximum has weight
$e^{0} = 1$ before its perturbation, so $B \ge e^{-\rho}$. Lemma 1 and item 5 give
`out_bound`:

$$
|\hat o_d - o_d| \le \frac{(e^{2\rho} - 1) + 2\varepsilon}{1 - \varepsilon}\, V_d\,(1 + u_o)
+ u_o\, |o_d| + 2\tau .
$$

*Room left in $\rho$.* Two parts of $\rho$ go unused on the normaliser side. $u_p$ is the
numerator's alone (the normaliser sums the fp32 weights). And the key's own exponential is a
step of its own in every count $S$, but it uses only the exponential's error, a factor within
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
normalisers $\hat B_a, \hat B_b$, perturbations within $\rho' \le 2$ and outputs $\hat o_a$:
$\mathrm{fl}(\mathrm{acc}_a / \hat B_a)$ for a part (Lemma 2), or a merge's result. Their lses
are $\hat\ell_a = \mathrm{fl}(m_a + \mathrm{fl}(\widehat{\log}\,\hat B_a))$, with
$\widehat{\log}$ the hardware's logarithm. Here $1 \le \hat B_a$, because the weight at a running
maximum is $e^{0} = 1$ exactly and a sum of non-negative terms, rounded to nearest or truncated,
is not below its largest term. Also $\log \hat B_a \le \log N + \rho'$, because the computed
weights are exponentials of non-positive numbers, at most $1 + u_{exp}$, and the factors that
rescales and sums put on them lie within $\rho'$. `relaycore.state.merge` computes
$M = \max(\hat\ell_a, \hat\ell_b)$, $w_a = \widehat{\exp}(\mathrm{fl}(\hat\ell_a - M))$,
$\hat T = \mathrm{fl}(w_a + w_b)$, $\hat c_a = \mathrm{fl}(w_a / \hat T)$ (and so for $b$),
$\hat o = \mathrm{fl}(\mathrm{fl}(\hat c_a \hat o_a) + \mathrm{fl}(\hat c_b \hat o_b))$ and
$\hat\ell = \mathrm{fl}(M + \mathrm{fl}(\widehat{\log}\,\hat T))$. To first order:

(a) *The incoming lse.* $e^{\hat\ell_a} = e^{m_a} \hat B_a e^{\eta_a}$ with
$|\eta_a| \le u_{exp} + \tfrac{u_{acc}}{2}(\log \hat B_a + |\hat\ell_a|)$. These are the
logarithm's own error, the rounding of its result and the rounding of the addition.

(b) *The weight.* $w_a = e^{\hat\ell_a - M} e^{\theta_a}$ with
$|\theta_a| \le u_{exp} + \tfrac{u_{acc}}{2}|\hat\ell_a - M|$ ($\theta = 0$ on the side at $M$).

(c) *The roundings after the weights.* On the numerator there are four: the part's own
division $\mathrm{fl}(\mathrm{acc}_a / \hat B_a)$ (none for a merged state), the coefficient's
division, its product ($u_{acc}/2$ each) and the final sum ($u_{acc}$, since it may truncate).
Together they make a factor $1 + \delta_a$, $|\log(1 + \delta_a)| \le \tfrac52 u_{acc}$. On the
normaliser there is one: $\hat T$'s sum, a factor $1 + \delta_T$ within $e^{\pm u_{acc}}$.

Write $\mathrm{acc}_a = \sum_{j \in S_a} (a_j + t_j) v_j$ and
$\hat B_a = \sum_{j \in S_a} (b_j + t'_j)$. Since $\hat c_x \hat o_x = w_x \hat o_x (1 + \cdot)/\hat T$,
the $\hat B_x$ cancels:

$$
\hat o = \frac{\sum_{x \in \{a, b\}} e^{m_x - M} e^{\eta_x + \theta_x} (1 + \delta_x)\, \mathrm{acc}_x}{\hat T},
\qquad
\hat T = \sum_{x \in \{a, b\}} e^{m_x - M} e^{\eta_x + \theta_x} (1 + \delta_T)\, \hat B_x .
$$

This is the Lemma-1 form over $S_a \sqcup S_b$ with shift $M$ and normaliser $\hat T$. The
numerator weights are perturbed by $\eta_x + \theta_x + \log(1 + \delta_x)$ more, and the
normaliser weights by $\eta_x + \theta_x + \log(1 + \delta_T)$. The merged state is again of the
kind this lemma takes, with $\hat B = \hat T \in [1, 2(1 + u_{exp})(1 + u_{acc})]$ and
$\hat\ell = \mathrm{fl}(M + \mathrm{fl}(\widehat{\log}\,\hat T))$, so a chain of merges repeats
(a)-(c). The $t$-terms come out multiplied by $e^{m_x - M} e^{\eta_x + \theta_x}(1 + \cdot)$.
That factor is at most $e^{|\theta_x|}(1 + \cdot)$, because
$e^{m_x - M} e^{\eta_x} = e^{\hat\ell_x - M} / \hat B_x \le 1$. Lemma 1 takes them through its
sums. They reach at most $N\tau e^{\kappa}$, $\kappa$ the sum of the growths (below) of the
merges they passed, so $\kappa \le \rho - u_{exp}$. The new normaliser without its $t'$ is at
least $1 - N 2^{-126} e^{\rho}$, since the $t'$ are fp32 underflows. So $\sum_j |t_j| \le
\varepsilon B$ holds. A weight that underflows is handled as in Lemma 4. The growth is
at most

$$
|\eta_a| + |\theta_a| + \tfrac52 u_{acc} \le 2u_{exp} + \tfrac52 u_{acc}
+ \tfrac{u_{acc}}{2}\bigl(\log \hat B_a + 2|\hat\ell_a| + |\hat\ell_b|\bigr).
$$

The exact lse of a state lies in $[-A, A + \log N]$, and its computed one lies within
$\rho' + 3u_{acc}(A + \log N + 1)$ of it (the lse section). With
$\log \hat B_a \le \log N + \rho'$ the bracket is at most $3A + 4\log N + 4\rho'$, up to terms
of order $u_{acc}$. The growth is then at most
$2u_{exp} + \tfrac52 u_{acc} + u_{acc}(\tfrac32 A + 2\log N + 2\rho')$, against two steps,
$2u_{exp} + 8u_{acc} + 2u_{acc}(A + \log N)$. With $\rho' \le 2$ that leaves
$\tfrac32 u_{acc} + \tfrac12 u_{acc} A$ for the second-order terms: **two steps**. A merge
therefore counts as two steps, one for the exponential and the coefficient and one for the
incoming lse. A larger $\rho'$ puts the out bound above $(e^{4} - 1)V_d$, which it meets anyway
(Lemma 4); the lse section needs $\rho \le 2$ too. The room is
$u_{acc}(\tfrac{11}{2} + \tfrac12 A - 2\rho')$ to first order, so at $A = 0$ the argument stops
near $\rho' = 2.75$
(`check_merge_growth_needs_bounded_rho`). The merge monoid's $\rho_1$ bounds (b) and
the coefficient's roundings of (c) for one coefficient (`check_merge_coefficients`);
`check_pairwise_merge` checks the growth above in the standard model of rounding. A merge with
an empty state is exact ($e^{0} = 1$, $e^{-\infty} = 0$) and costs nothing.

*Counting steps.* In a part of $N_i$ keys cut in blocks of at least one key, a key is
rescaled at most $N_i - 1$ times; with $P$ non-empty parts, $N_i \le N - P + 1$, so a key
passes at most $1 + (N - P) + 2(P - 1) \le 2N - 1$ steps. `default_steps` is $2N$: safe for
any blocking and any relay split.

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
$N\tau e^{\kappa}$, $\kappa$ the growth below, while the merged normaliser without its $t'$ is
at least $1 - N 2^{-126} e^{\rho}$: $\sum_i w_i \ge 1$ (the top state's $w = 2^0 = 1$), and the
$t'$ are fp32 underflows. So $\sum_j |t_j| \le \varepsilon B$ holds, because
$\rho \ge \kappa + u_{exp}$ (the key's own exponential is a step too).

*Underflow.* A weight $w_i$ below fp32's smallest normal number $2^{-126}$ is flushed to 0
(`ex2.approx.ftz`) or returned subnormal. Either way it is off by some $e_i$, $|e_i| < 2^{-126}$,
from the value $2^{m_i - M} e^{\eta_i + \theta_i} l_i$ the form gives it. That error is not of
Lemma 1's per-key form and is not charged to $\varepsilon$. It falls on all of the state's keys
at once, a state of one key may already use its $\tau$, and $2^{-126}$ is not below $\tau$ for
fp32 and bf16. On the normaliser, where $\sum_i w_i \ge 1$, it is a relative error below
$2^{-126}$ per state. On the numerator it is an absolute error
$|e_i \hat o_{id}| < 2^{-126} \cdot 3e^{2\rho}V_d$, since Lemma 1 for the chunk gives
$|\hat o_{id}| \le (e^{2\rho} + \varepsilon)V_d/(1 - \varepsilon) \le 3e^{2\rho}V_d$ for
$\varepsilon \le \tfrac12$. At most $N - 1 < 2^{23}$ states underflow. With $\rho \le 3$ the
normaliser's total is a relative error below $2^{-103}$ and the numerator's below
$2^{23} \cdot 2^{-126} \cdot 3e^{6}V_d < 2^{-92}V_d$. Both are charged to $\sigma_0$, the part of
the key's own exponential step that no weight uses (Lemma 2, at least $4u_{acc} - 2^{-40}$ on
both sides). The weights' perturbations then lie within $\rho - \sigma_0 + 2^{-103}$, which
lowers Lemma 1's first term by at least $(e^{2\rho} - e^{2(\rho - \sigma_0 + 2^{-103})})V_d \ge
2^{-20.1}V_d$. The numerator's error adds at most $2^{-92}V_d\, e^{\rho}/(1 - \varepsilon) <
2^{-86}V_d$ to the output. `check_all_at_once_merge` checks these numbers on the states it
draws.

The growth is at most

$$
|\eta_i| + |\theta_i| + u_{acc} \le 2u_{exp} + u_{acc}
+ \tfrac{u_{acc}}{2}\bigl(\log l_i + 2|\hat\ell_i| + |\hat\ell_{max}|\bigr).
$$

The exact lse of a chunk lies in $[-A, A + \log N]$ and $l_i \le N e^{\rho}$ (up to the
$t'$), so while the chunks' $\rho \le 3$ the bracket is at most $3A + 4\log N + 12$ (up to
terms of order $u_{acc}$) and the growth at most $2u_{exp} + 8u_{acc} + 2u_{acc}(A + \log N)$:
**two steps**, since one step is $u_{exp} + 3u_{acc} + u_{acc}(A + \log N + 1)$ (the
second-order terms, such as $|\log(1 - u_{exp})| - u_{exp}$, fit in the $u_{acc}$ left
over). (A larger $\rho$ puts the bound above $(e^{6} - 1)V_d$, while every computed output is a weighted mean of values, within
$V_d$ up to its roundings: the bound then holds anyway.) One step is not enough in general:
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
exact zeros. So the token's keys pass at most

$$
S = \max_i \lceil n_i / b_i \rceil + \begin{cases} 2 & K' \ge 2 \\ 0 & K' = 1 \end{cases}
$$

steps, $K'$ the chunks holding a key it sees. A single-pass request's token (its own tiles
walk its prefix of $T$ keys, none for a request that sees no prefix, and then its own KV in one
running state, and write its result: `single_pass_requests` in `fast/triton/plan.py`) is one part whose blocks ($b$ keys, its
tile's step) are the prefix's $\lceil T / b \rceil$ and its own $\lceil n / b \rceil$ (the last block of each segment may be
short; Lemma 2 takes blocks of any size), with no merge:
$S = \lceil T / b \rceil + \lceil n / b \rceil \le T + n \le 2N$.
On an sm_90 GPU the single-pass tiles run `relaycore.fast.triton.hopper.single_pass_tile`,
which walks $b = 128$ keys a step and adds a block's products $P_j V_j$ to the accumulator
before the next block's rescale instead of after its own,
$\mathrm{acc} \leftarrow \mathrm{fl}(\alpha_{j+1} \cdot \mathrm{fl}(\mathrm{acc} + P_j V_j))$:
a key's product still enters the accumulator once and is rescaled once per later step, so its
count is the formula's at $b = 128$, at most the count at the Triton tile's $b = 64$.
`relaycore.fast.triton.rounding.steps_per_token`
computes $S$ per token from the batch's lengths and the configuration (the Triton tiles' $b$). It is never above
`default_steps`: with $K' \ge 2$ a chunk holds at most $N - 1$ keys, so
$S \le N + 1 \le 2N$. For a decode token over a prefix of 16384 keys and 128 own keys in fp16
with head dimension 128 and one KV head (prefix chunks of 1024 keys in steps of 64, own keys
in one step of 128) $S = 18$ where `default_steps` is 33024.

## The lse

`lse_bound` is $\rho + 3u_{acc}(|\ell| + 1)$. The lse leaves a kernel in one of three ways:

* $\hat\ell = \mathrm{fl}(\mu + \mathrm{fl}(\widehat{\log}\,\hat B))$ in natural log: one part
  ($\mu = m$, its running maximum; $\hat B$ its normaliser), or a pairwise merge ($\mu = M$,
  $\hat B = \hat T$, Lemma 3);
* $\hat\ell = \mathrm{fl}\bigl(\mathrm{fl}(M + \mathrm{fl}(\widehat{\log_2}\hat B)) \cdot
  \mathrm{fl}(\ln 2)\bigr)$ in the base-2 form: Lemma 4's fold with $K' \ge 2$
  ($\hat B = \sum_i w_i$), or a single-pass tile ($M = m$);
* Lemma 4's fold with $K' = 1$: the same, with $M = \hat\lambda_i$, which went through the
  chunk's own logarithm and addition (Lemma 4 (a)), and $\hat B = w_i = 1$. This case takes
  two logarithms and charges no merge step.

In each, $\hat B$ is the normaliser of the final state's Lemma-1 form with shift $\mu$ (natural
units, $\mu = M \ln 2$ in base 2). So $|\log \hat B - (\ell - \mu)| \le r$, where $r$ is the
normaliser's perturbation plus $-\log(1 - N 2^{-125} e^{\rho})$ for its fp32 underflows (the
$t'_j < 2^{-126}$ and Lemma 4's flushed weights). Also $0 \le \log \hat B \le \log N + \rho$
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
from 1 to $2^{22}$, $D$ up to 256, $S$ from 1 to $2N$ and $\rho \le 2$. The slack is least,
$\tfrac12 u_{acc}$, at fp32, $A = 0$, $N = 1$ in the $K' = 1$ fold. The terms in $h\rho$ and $hr$
are where $\rho$ must be bounded. For fp32 the inequality first fails near $\rho = 5.6$
($N = 2^{20}$, $A = 0$, `default_steps`). For fp16 and bf16, $u_p$ leaves room far beyond. Lemma 3
needs the states' $\rho \le 2$ and Lemma 4 needs $\rho \le 3$, so the lse bound is proved for $\rho \le 2$
evaluated at the steps the kernel really takes. A larger $S$ only raises the bound.
`default_steps` ($S = 2N$) reaches $\rho = 2$ near $N = 2 \cdot 10^5$ keys at $A = 20$; the
Triton kernels' counted $S$ stays far below it.

Beyond $\rho = 2$ not even the accounting $E$ is proved to be a bound. It takes the final
state to be of the Lemma-1 form with perturbation $\rho$. For one part, Lemma 2 puts no
condition on $\rho$. For a merged state the form rests on Lemma 3, which needs its states'
$\rho' \le 2$, and on Lemma 4, which needs $\rho \le 3$. `lse_bound` cannot tell a merged
state from a part, so it raises `NoBound` on a row whose $\rho$ exceeds 2 (`LSE_RHO_MAX`),
naming its $N$, $A$ and $S$.
A caller that meets it passes the kernel's counted steps.

## Machine check

`check_perturbed_weights_lemma` draws weights, values and extreme perturbations ($\pm\rho$
exactly, worst signs, underflow terms $\pm\tau$) and checks Lemma 1 at 60 digits.
`check_merge_coefficients` checks the rounding of one merge in fp32 against $\rho_1$, its sums
rounded to nearest or truncated, and on the merge monoid's opposite pair $\mp 32$, where a
truncated subtraction would leave $\rho_1$.
`check_simulated_kernel` runs the whole computation at 60 digits with *every* rounding done
explicitly to fp32, fp16 or bf16 (`relaycore.proofs.rounding`), an adversarial exponential
(relative error up to $2^{-22}$ with drawn signs) and logarithm (absolute error up to
$2^{-22}$), fp32 accumulations (dot products, sums of weights and of products, the merges'
sums) rounded to nearest or truncated and every elementwise operation rounded to nearest, as
Lemmas 2-4 assume, blocks of 1 to 4 keys and 1 to 4
relay parts merged pairwise in natural log (`relaycore.state.merge`, the PyTorch backend),
over Hypothesis-drawn problems including scores up to $10^4$ and weights down to the
underflow of fp16 and fp32, and asserts that the error of every output element and of the
lse is within `relaycore.bounds.out_bound` / `lse_bound` at `default_steps`.
`check_triton_step_count` does the same for the form of the Triton kernels (scores scaled by
$c \log_2 e$, `exp2`, `log2`, 1 to 8 parts, i.e. chunks, merged all at once, the lse times
$\ln 2$ at the end) against the bound at the counted $S$ of the previous section, which is
never above `default_steps`; `check_single_pass_step_count` does it for a single-pass walk (one
part whose blocks restart at the own KV's first key, no merge) at
$\lceil T / b \rceil + \lceil n / b \rceil$. `check_all_at_once_merge` checks Lemma 4's inequality itself at
60 digits in the standard model of rounding ($\mathrm{fl}(x \circ y) = (x \circ y)(1 +
\delta)$, $|\delta| \le u_{acc}/2$; every $\delta$ and every error of the exponential and the
logarithm drawn by the adversary, at its extremes or anywhere between) over 1 to 8 states,
some empty, with scores up to $10^4$: it reaches the sharper sum of the proof (to second
order) and stays within two steps, and it checks the underflow's numbers against $\sigma_0$.
`check_pairwise_merge` does the same for Lemma 3's growth, on two part states with maxima up to
$\pm 10^4$ (opposite ones included), and reaches that growth.
`check_lse_accounting` checks the lse section's inequality over its grid against the float64
value `lse_bound` returns, checks that `lse_bound` refuses every point of the grid beyond
$\rho = 2$, and checks that the inequality fails beyond $\rho = 2$ where the section says so.
`check_merge_growth_needs_bounded_rho` checks Lemma 3's room at $\rho' = 2$ and where it runs
out. `check_fused_accumulation` checks the fused
addition's error bound of Lemma 2's accumulation model on drawn fp32 addends, with the adversarial
one (the largest at a power of two, the others just below its last place) always tried. It
checks the model, not the hardware. `check_one_step_per_merge_is_not_enough` exhibits two
states whose merge moves a weight by 1.4 steps. `check_not_absurdly_loose` measures
observed error / bound on typical inputs (normal $q, k, v$, $c = 1/\sqrt{D}$, 48 keys in two
relay parts, blocks of 16) and requires the ratio to stay above `LOOSENESS_FLOOR`: within a
factor 100 for fp16 and bf16, where the rounding of the weights dominates; fp32's errors on
random data are far below its worst case. The docs page of this proof shows the measured
table.
"""

from __future__ import annotations

import random

import mpmath
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from relaycore import bounds
from relaycore.proofs import exact
from relaycore.proofs import rounding as fp
from relaycore.proofs.draws import checked
from relaycore.proofs.merge_monoid import merge_rho

#: The adversarial exponential's largest extra relative error (with fp32's own rounding it stays
#: within ``bounds.EXP_REL_FP32``).
EXP_WOBBLE = 2.0**-22
#: The adversarial logarithm's largest extra absolute error (``lg2.approx.f32`` is documented
#: at ``2^-22.6`` absolute near 1).
LOG_WOBBLE = 2.0**-22
#: Steps per key of the all-at-once merge of two or more non-empty states (Lemma 4); the
#: Triton backend's count, ``relaycore.fast.triton.rounding.MERGE_STEPS``, must equal it.
ALL_AT_ONCE_MERGE_STEPS = 2


class Elementary:
    """The hardware's fp32 ``exp``/``exp2`` and ``log``/``log2``, as an adversary: each result
    carries an extra error drawn per call from ``rng`` (relative ``EXP_WOBBLE`` for the
    exponential, exact at 0; absolute ``LOG_WOBBLE`` for the logarithm)."""

    def __init__(self, rng: random.Random, extreme: bool):
        self.rng, self.extreme = rng, extreme

    def _draw(self, size: float) -> float:
        return self.rng.choice((-1, 1)) * size if self.extreme else self.rng.uniform(-1, 1) * size

    def __call__(self, x, base=None):
        if x == 0 or x == exact.NEG_INF:
            return mpmath.mpf(1) if x == 0 else mpmath.mpf(0)
        return fp.exp(x, self._draw(EXP_WOBBLE), base)

    def log(self, x, base=None):
        """fp32 ``log(x)`` (or ``log2``) with an absolute error up to ``LOG_WOBBLE``, then rounded."""
        return fp.r32((mpmath.log(x) if base is None else mpmath.log(x, base)) + self._draw(LOG_WOBBLE))


def simulate_part(q, keys, values, scale, dtype: str, block: int, exp, ar: fp.Arithmetic, base=None,
                  restart: int = 0) -> tuple:
    """One part (one query row over some keys) as a blocked online-softmax kernel computes it.

    The precision model of Lemma 2: the accumulations (the score's dot product, the sums of the
    weights and of the products ``p v``, added to the rescaled accumulators) round as ``ar``
    does, possibly toward zero; every elementwise operation (the scale's product, the
    subtractions of the running maximum, the rescales, the division, the lse's addition) rounds
    to nearest, ``fp.r32``.

    Args:
        q: ``[D]`` query, exact in ``dtype``.
        keys, values: ``[n][D]``, exact in ``dtype``.
        scale: the softmax scale; rounded to fp32 as a kernel receives it (times ``log2 e``
            first when ``base == 2``).
        dtype: ``"float16"``, ``"bfloat16"`` or ``"float32"``.
        block: keys per block.
        exp: the fp32 exponential and logarithm (``Elementary``).
        ar: the fp32 accumulator's arithmetic (the rounding of the sums).
        base: ``None`` for natural exponentials, ``2`` for the ``exp2``/``log2`` form of the
            Triton kernels (scores and lse in base 2).
        restart: where a second segment starts (``0``: none): blocks are cut from the first key
            and again from ``restart``, as a single-pass tile walks a prefix of ``restart``
            keys and then the own keys.

    Returns:
        ``(out [D] fp32 values, lse fp32)``, lse in ``base``; ``(0, -inf)`` for ``n == 0``.
    """
    dim, n = len(q), len(keys)
    if n == 0:
        return exact.empty(dim)
    scale = fp.r32(scale if base is None else scale / mpmath.log(2))
    m, norm, acc = exact.NEG_INF, mpmath.mpf(0), [mpmath.mpf(0)] * dim
    starts = list(range(0, restart, block)) + list(range(restart, n, block))
    for start, stop in zip(starts, starts[1:] + [n]):
        rows = range(start, stop)
        s = [fp.r32(ar.dot(q, keys[j]) * scale) for j in rows]
        m_new = max([m] + s)
        # Lemma 2 items 1 and 4 take these subtractions at u_acc / 2: to nearest, never truncated.
        alpha = exp(fp.r32(m - m_new), base) if m != exact.NEG_INF else mpmath.mpf(0)
        p = [exp(fp.r32(x - m_new), base) for x in s]
        norm = ar.add(fp.r32(norm * alpha), ar.total(p))
        p_low = [fp.round_to(x, dtype) for x in p]
        for d in range(dim):
            products = [fp.r32(p_low[i] * values[j][d]) for i, j in enumerate(rows)]
            acc[d] = ar.add(fp.r32(acc[d] * alpha), ar.total(products))
        m = m_new
    return [fp.r32(a / norm) for a in acc], fp.r32(m + exp.log(norm, base))


def simulate_merge(a: tuple, b: tuple, exp, ar: fp.Arithmetic) -> tuple:
    """``relaycore.state.merge`` (torch path, fp32) with every operation rounded to fp32: the
    subtractions, the division, the products and the lse's addition to nearest (``fp.r32``),
    the two sums ``w_a + w_b`` and ``c_a o_a + c_b o_b`` as ``ar`` rounds (the merge monoid's
    rounding leaves them room to truncate; torch rounds them to nearest)."""
    (oa, la), (ob, lb) = a, b
    m = max(la, lb)
    m = m if mpmath.isfinite(m) else mpmath.mpf(0)
    wa, wb = exp(fp.r32(la - m)), exp(fp.r32(lb - m))
    total = ar.add(wa, wb)
    if total == 0:
        return [mpmath.mpf(0)] * len(oa), exact.NEG_INF
    ca, cb = fp.r32(wa / total), fp.r32(wb / total)
    return [ar.add(fp.r32(ca * x), fp.r32(cb * y)) for x, y in zip(oa, ob)], fp.r32(m + exp.log(total))


def simulate_merge_all_base2(states: list, exp, ar: fp.Arithmetic) -> tuple:
    """The Triton merge kernel's form: all parts at once, base-2 lses, one max, one division,
    the lse converted to natural log (times ``ln 2``) at the end. As in Lemma 4, the sums over
    the states round as ``ar`` does (possibly toward zero, item (d)); the subtractions
    ``lse_i - M`` (item (b)), the products, the division (item (c)) and the lse's addition and
    product (item (a)) round to nearest."""
    dim = len(states[0][0])
    m = max(lse for _, lse in states)
    m = m if mpmath.isfinite(m) else mpmath.mpf(0)
    total, acc = mpmath.mpf(0), [mpmath.mpf(0)] * dim
    for out, lse in states:
        w = exp(fp.r32(lse - m), 2)
        total = ar.add(total, w)
        acc = [ar.add(x, fp.r32(w * o)) for x, o in zip(acc, out)]
    if total == 0:
        return [mpmath.mpf(0)] * dim, exact.NEG_INF
    return [fp.r32(x / total) for x in acc], fp.r32(fp.r32(m + exp.log(total, 2)) * fp.r32(mpmath.log(2)))


def part_block(problem: dict, part: int) -> int:
    """Keys per step of ``part``: its entry of ``problem["blocks"]`` where the parts walk
    blocks of different sizes (the Triton kernels' short own tiles), else ``problem["block"]``."""
    return problem["blocks"][part] if "blocks" in problem else problem["block"]


def simulate(problem: dict, exp) -> tuple:
    """The relay computation of one query row: each part blocked, the parts merged (pairwise
    left to right in natural log, or all at once in base 2), the output rounded once to the
    input format."""
    q, keys, values, dtype = problem["q"], problem["keys"], problem["values"], problem["dtype"]
    ar = fp.Arithmetic(problem.get("accumulate", "nearest"))
    base = 2 if problem.get("form") == "base2" else None
    states = []
    for part in range(problem["parts"]):
        idx = [j for j, label in enumerate(problem["labels"]) if label == part]
        states.append(simulate_part(q, [keys[j] for j in idx], [values[j] for j in idx], problem["scale"], dtype,
                                    part_block(problem, part), exp, ar, base, problem.get("restart", 0)))
    if base == 2:
        out, lse = simulate_merge_all_base2(states, exp, ar)
    else:
        out, lse = exact.fold(states, lambda a, b: simulate_merge(a, b, exp, ar))
    return [fp.round_to(x, dtype) for x in out], lse


def reference(problem: dict) -> tuple:
    """The exact state, and the bound's inputs ``(V [D], A)``."""
    c = mpmath.mpf(problem["scale"])
    q, keys, values = problem["q"], problem["keys"], problem["values"]
    scores = [c * mpmath.fsum(mpmath.mpf(a) * b for a, b in zip(q, k)) for k in keys]
    score_abs = max(c * mpmath.fsum(abs(mpmath.mpf(a) * b) for a, b in zip(q, k)) for k in keys)
    value_abs = [max(abs(v[d]) for v in values) for d in range(len(q))]
    return exact.attention(scores, values), value_abs, score_abs


def errors_and_bounds(problem: dict, exp, steps=None) -> tuple:
    """``(out errors [D], out bounds [D], lse error, lse bound)`` as floats; ``steps`` as in
    ``relaycore.bounds`` (default: ``default_steps``)."""
    (ref_out, ref_lse), value_abs, score_abs = reference(problem)
    out, lse = simulate(problem, exp)
    prec = bounds.precision(problem["dtype"])
    n, dim = len(problem["keys"]), len(problem["q"])
    out_err = [float(abs(x - y)) for x, y in zip(out, ref_out)]
    out_b = bounds.out_bound(np.array([float(x) for x in ref_out]), np.array([float(v) for v in value_abs]), n, float(score_abs), dim, prec, steps)
    lse_b = float(bounds.lse_bound(float(ref_lse), n, float(score_abs), dim, prec, steps))
    return out_err, [float(b) for b in out_b], float(abs(lse - ref_lse)), lse_b


def _exact_in(dtype: str, x: float) -> float:
    return float(fp.round_to(x, dtype))


@st.composite
def problems(draw, max_parts: int = 4, forms=("natural", "base2")):
    """A small adversarial problem: one query row, 1-12 keys, 1 to ``max_parts`` relay parts
    (some may be empty), blocks of 1-4, one of ``forms`` (natural-log pairwise merges, or the
    base-2 all-at-once form), fp32 sums rounded to nearest or truncated."""
    dtype = draw(st.sampled_from(["float16", "bfloat16", "float32"]))
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
    return dict(
        dtype=dtype,
        scale=scale,
        q=exact_vec(q),
        keys=[exact_vec(k) for k in keys],
        values=[exact_vec(v) for v in values],
        parts=parts,
        labels=draw(st.lists(st.integers(0, parts - 1), min_size=n, max_size=n)),
        block=draw(st.integers(1, 4)),
        form=form,
        accumulate=accumulate,
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
        w = [mpmath.exp(s - top) for s in scores]  # the largest weight is 1, so B >= e^-rho
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


def check_all_at_once_merge():
    """Lemma 4: with two or more non-empty states the merge moves every weight by at most
    ``ALL_AT_ONCE_MERGE_STEPS`` steps (and by at most the proof's sharper sum); with one it
    passes that state on unchanged. A weight below fp32's smallest normal (flushed to 0 or
    subnormal, an absolute error below it) moves the normaliser by a relative ``2^-103`` and the
    numerator by ``2^-92 V_d`` at most over all such states (``rho <= 3``), and those fit in the
    own exponential's unused ``sigma_0`` with a factor ``2^60`` to spare."""
    prec = bounds.precision("float32")
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    smallest_normal = mpmath.mpf(2) ** -126
    second_order = 1 + mpmath.mpf(2) ** -20

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
        sigma0 = own_step_room(score_abs, num_keys, prec)
        flushed = [w for _, (w, _, _) in held if w < smallest_normal]  # each errs by < 2^-126
        normaliser = len(flushed) * smallest_normal  # relative to sum_i w_i >= 1
        numerator = len(flushed) * smallest_normal * 3 * mpmath.exp(6)  # times V_d, rho <= 3
        assert num_keys < 2**23 and normaliser <= num_keys * smallest_normal < mpmath.mpf(2) ** -103
        assert numerator < mpmath.mpf(2) ** -92
        rho = mpmath.mpf(3)  # Lemma 1's first term lowered by sigma0 on both sides, against the error
        assert numerator * mpmath.exp(rho) * 2 <= 2.0**-60 * (mpmath.exp(2 * rho) - mpmath.exp(2 * (rho - sigma0 + normaliser)))
        for ((m, l), (w, alpha, beta)), ell in zip(held, lse):
            if w < smallest_normal:  # flushed: charged to sigma0 above, not to Lemma 1's t-terms
                continue
            sharper = 2 * u_exp + u_acc + u_acc / 2 * (mpmath.log(l) + 2 * abs(ell) + abs(top))
            assert max(abs(alpha), abs(beta)) <= sharper * second_order <= steps, (alpha, beta, sharper, steps)

    run()


def own_step_room(score_abs, num_keys, prec: bounds.Precision):
    """``sigma_0`` of Lemma 2: the part of a key's own exponential step that no weight uses,
    ``3 u_acc + u_acc (A + log N + 1) - (-log(1 - u_exp) - u_exp)``."""
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    return 3 * u_acc + u_acc * (mpmath.mpf(score_abs) + mpmath.log(num_keys) + 1) - (-mpmath.log(1 - u_exp) - u_exp)


def merge_pairwise(a: tuple, b: tuple, draw) -> list:
    """Lemma 3's merge of two part states in the standard model of rounding, at 60 digits.

    Each state is ``(m, l)``: its running maximum (natural log) and normaliser ``l >= 1``. Every
    elementwise fp32 operation multiplies its exact result by ``1 + draw(u_acc / 2)``, the two
    sums (``w_a + w_b`` and the final one) by ``1 + draw(u_acc)`` (they may truncate), the
    exponential (exact at 0) by ``1 + draw(u_exp)``; the logarithm is off by ``draw(u_exp)``.

    Returns:
        Per state ``(alpha, beta)``: the logs of the factors by which the merge multiplies its
        keys' numerator weights (the part's division ``acc / l``, the coefficient's division
        and product, the final sum) and normaliser weights (``w`` and the sum ``T``), against
        the exact ``e^(m - M) l`` over the merged normaliser, ``M`` the merge's maximum.
    """
    prec = bounds.precision("float32")
    half, full, u_exp = mpmath.mpf(prec.u_acc) / 2, mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)

    def fl(x):
        return x * (1 + draw(half))

    lse = [fl(m + fl(mpmath.log(l) + draw(u_exp))) for m, l in (a, b)]
    top = max(lse)
    w = []
    for x in lse:
        arg = fl(x - top)
        w.append(mpmath.mpf(1) if arg == 0 else mpmath.exp(arg) * (1 + draw(u_exp)))
    total_factor = 1 + draw(full)  # T = (w_a + w_b)(1 + delta_T)
    result = []
    for (m, l), wx in zip((a, b), w):
        beta = mpmath.log(wx * total_factor / (mpmath.exp(m - top) * l))
        # o = fl(sum_x fl(fl(w_x / T) fl(acc_x / l_x))) = sum_x w_x (four roundings) acc_x / l_x / T
        numer = wx * (1 + draw(half)) * (1 + draw(half)) * (1 + draw(half)) * (1 + draw(full))
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
    second order), and that is within ``MERGE_STEPS`` = 2 steps."""
    prec = bounds.precision("float32")
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    second_order = 1 + mpmath.mpf(2) ** -20

    @checked(400)
    @given(pairwise_states(), st.randoms(use_true_random=False), st.booleans())
    def run(drawn, rnd, extreme):
        states, score_abs, num_keys = drawn
        merged = merge_pairwise(*states, _adversary(rnd, extreme))
        steps = 2 * one_step(score_abs, num_keys, prec)
        lse = [m + mpmath.log(l) for m, l in states]
        for (m, l), (alpha, beta), ell, other in zip(states, merged, lse, lse[::-1]):
            growth = 2 * u_exp + 5 * u_acc / 2 + u_acc / 2 * (mpmath.log(l) + 2 * abs(ell) + abs(other))
            assert max(abs(alpha), abs(beta)) <= growth * second_order <= steps, (alpha, beta, growth, steps)

    run()


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
    to 256, ``S`` from 1 to ``2N`` and ``rho <= 2`` (the logarithm's ``u_exp`` within ``sigma_0``
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


def merge_growth(score_abs, num_keys, rho_in, prec: bounds.Precision):
    """Lemma 3's bound on a pairwise merge's growth, its states' perturbations within ``rho_in``
    and their exact lses at the edge ``A + log N``: ``2 u_exp + 5/2 u_acc + u_acc / 2 (log B_a
    + 2 |l_a| + |l_b|)`` with ``log B_a <= log N + rho_in`` and each computed lse within
    ``rho_in + 3 u_acc (A + log N + 1)`` of its exact one (the states' lse bound)."""
    u_acc, u_exp = mpmath.mpf(prec.u_acc), mpmath.mpf(prec.u_exp)
    a, log_n, rho_in = mpmath.mpf(score_abs), mpmath.log(num_keys), mpmath.mpf(rho_in)
    lse = a + log_n + rho_in + 3 * u_acc * (a + log_n + 1)
    return 2 * u_exp + 5 * u_acc / 2 + u_acc / 2 * (log_n + rho_in + 3 * lse)


def check_merge_growth_needs_bounded_rho():
    """Lemma 3's "two steps" holds, to first order, while the merged states' ``rho <= 2`` (the
    lse section's bound on their lses included), with at least ``u_acc (3/2 + A/2)`` (less a
    relative 2^-16) left for second-order terms; at ``A = 0`` it stops near ``rho = 2.75``.
    Beyond it the merge lemma, and with it the lse accounting on a merged state, is not proved:
    that is why ``lse_bound`` refuses ``rho > 2``."""
    prec = bounds.precision("float32")
    u_acc = mpmath.mpf(prec.u_acc)
    for score_abs in (0.0, 1.0, 20.0, 1e3, 1e4, 1e6):
        for num_keys in (2, 3, 16, 4096, 2**16, 2**20, 2**22):
            two_steps = 2 * one_step(score_abs, num_keys, prec)
            room = two_steps - merge_growth(score_abs, num_keys, 2, prec)
            assert room >= u_acc * (mpmath.mpf(3) / 2 + mpmath.mpf(score_abs) / 2) * (1 - mpmath.mpf(2) ** -16), \
                (score_abs, num_keys, room / u_acc)
    two_steps = 2 * one_step(0.0, 2**20, prec)
    assert merge_growth(0.0, 2**20, 2.7, prec) < two_steps < merge_growth(0.0, 2**20, 2.8, prec)


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
    """Two states of lse near +40 and -40: among 200 seeded extreme adversaries, one moves the
    smaller state's weights by more than one step (Lemma 4's remark)."""
    prec = bounds.precision("float32")
    chunks = [(fp.r32(40 / np.log(2)), mpmath.mpf(1)), (fp.r32(-40 / np.log(2)), mpmath.mpf(1))]
    step = one_step(40.0, 2, prec)
    worst = max(abs(merge_all_at_once(chunks, _adversary(random.Random(seed), True))[1][1]) for seed in range(200))
    assert step < worst <= ALL_AT_ONCE_MERGE_STEPS * step, (worst / step)


def triton_steps(problem: dict) -> int:
    """``S`` of "Counting the Triton kernels' steps" for a simulated problem, its parts being the
    chunks: the most blocks one part fills, plus the merge's steps if two parts hold keys."""
    held = [(n, part_block(problem, part)) for part, n in
            ((part, problem["labels"].count(part)) for part in range(problem["parts"])) if n]
    merge = ALL_AT_ONCE_MERGE_STEPS if len(held) >= 2 else 0
    return max(-(-n // b) for n, b in held) + merge


def check_triton_step_count():
    """The base-2, all-at-once form over up to 8 chunks, each walked in blocks of its own size
    (the prefix tiles' and the short own tiles' steps differ), stays within relaycore.bounds at
    the counted steps ``triton_steps`` (never above ``default_steps``)."""

    @checked(400)
    @given(problems(max_parts=8, forms=("base2",)), st.randoms(use_true_random=False), st.booleans(),
           st.lists(st.integers(1, 4), min_size=8, max_size=8))
    def run(problem, rnd, extreme, blocks):
        problem = dict(problem, blocks=blocks[: problem["parts"]])
        steps = triton_steps(problem)
        assert steps <= bounds.default_steps(len(problem["keys"]))
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme), steps)
        for e, b in zip(out_err, out_b):
            assert e <= b, (problem["dtype"], steps, e, b)
        assert lse_err <= lse_b, (problem["dtype"], steps, lse_err, lse_b)

    run()


def check_single_pass_step_count():
    """A single-pass walk (one part: blocks from the first key, and again from the own KV's
    first key ``T``; no merge) stays within relaycore.bounds at ``ceil(T / b) + ceil((n - T) /
    b)`` steps, the count of "Counting the Triton kernels' steps"."""

    @checked(400)
    @given(problems(max_parts=1, forms=("base2",)), st.data(), st.randoms(use_true_random=False), st.booleans())
    def run(problem, data, rnd, extreme):
        n, b = len(problem["keys"]), problem["block"]
        prefix = data.draw(st.integers(0, n))
        problem = dict(problem, restart=prefix)
        steps = -(-prefix // b) + -(-(n - prefix) // b)
        assert steps <= bounds.default_steps(n)
        out_err, out_b, lse_err, lse_b = errors_and_bounds(problem, Elementary(rnd, extreme), steps)
        for e, bound in zip(out_err, out_b):
            assert e <= bound, (problem["dtype"], prefix, b, steps, e, bound)
        assert lse_err <= lse_b, (problem["dtype"], prefix, b, steps, lse_err, lse_b)

    run()


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
