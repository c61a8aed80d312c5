"""The decoder's transformer pass at batch 1, compiled (numba): what :class:`~simagents.model.Context` runs.

At batch 1 an action pushes about four tokens through the transformer. Through torch that is
some 35 operator calls, each a few microseconds of dispatch, and matrix products that MKL runs
at a third of the core's speed on so few rows. Here the whole pass is one compiled call: every
linear layer reads its weight once for up to four rows at a time, in tiles of four rows by four
outputs (each load feeds four of sixteen running sums, which keeps the core's FMA units busy:
on a 2-core Intel Xeon, 2026-12-06, 1.3-1.8x the speed of four rows by one output at 4 and 16
rows), and the small steps between (layer norms, GELU, attention over the cached keys) run in
the same loops, with no temporaries allocated per call. At the reference size (3 layers, width
128) the pass reads 2.4 MB of weights per call; where that exceeds the core's L2 (2 MB on that
Xeon) they stream from L3 (a 384x128 product at one row: 6.1 us against 3.1 from L2), and the
pass evicts the interpreter's own data: the Python and numpy steps after it run 3-5 times
slower than warm (the dt policy step 118 us against 30 after reading 2 MB of other data; one
numpy reduction 10-25 us). So the steps around the pass are compiled too, each one call
(:func:`decode_tokens` embeds the tokens, runs the pass and the policy head;
:func:`gaussian_actions`, :func:`scaled_into`, :func:`evaluation_heads`, :func:`best_supported`).

How fast the tiles run is bounded by what LLVM emits for them: it vectorises each running sum
over the inputs in 256-bit registers (the host's "prefer 256-bit" tuning), then reduces each
one horizontally (some 100 instructions a tile beside its 256 FMAs at width 128); on the Xeon, 16 rows:
70-95 GFLOP/s against the 162 of torch's large fp32 matmuls, which use 512-bit FMAs. Tried and
dropped (2026-12-06): 512-bit code for the whole process (``NUMBA_CPU_FEATURES`` with
``-prefer-256-bit``) speeds 512-input products (90 -> 106 GFLOP/s) and slows 128-input ones
(the reductions get longer); weights transposed with the sums held over the outputs (a
broadcast-FMA tile, as BLAS kernels are written) comes out scalar from numba, 7-11 GFLOP/s,
with the tile in locals or on the stack; numpy's BLAS at 16 rows runs at 74-104.

The arithmetic is the model's, in float32, so the outputs equal the torch forward pass to
float32 rounding (sums reassociated for SIMD); ``tests/test_model.py`` checks it against
``Simulator.forward``. The first call in a process compiles (about 15 s) or loads the
compiled code from numba's cache beside this file (or, where that is read-only, in the user's
cache; ``NUMBA_CACHE_DIR`` picks another folder).

Shapes: C the width, M the MLP width, L layers, n rows (tokens) in the pass, S cache slots.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

_F = TypeVar("_F", bound=Callable[..., Any])

LayerWeights = tuple[
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
]
"""The blocks' weights in :func:`decode_layers`' order: norms, eps, qkv_w, qkv_b, proj_w, proj_b,
fc_w, fc_b, out_w, out_b."""

# Reassociation lets sums vectorise; no "nnan"/"ninf": nothing here relies on those being absent.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


def _compiled(fn: _F) -> _F:
    # error_model="numpy": a float division by zero gives inf instead of raising, so no check per
    # division, which would keep LLVM from vectorising a loop that divides (GELU at 16x512:
    # 23 us with the check, 2.8 without). No division here has a zero divisor.
    return cast(_F, numba.njit(fastmath=_FAST, error_model="numpy", cache=True, nogil=True)(fn))


def _compiled_exact(fn: _F) -> _F:
    """Compiled with IEEE arithmetic: a few values, each computed as numpy and torch would."""
    return cast(_F, numba.njit(cache=True, nogil=True)(fn))


@_compiled
def _four_rows(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out (4,O) = x (4,I) @ w.T + b, in tiles of 4 rows by 4 outputs: 16 running sums, each
    weight and each input element loaded once per tile and used four times."""
    n_out, n_in = w.shape
    x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
    j = 0
    while j + 4 <= n_out:
        wa, wb, wc, wd = w[j], w[j + 1], w[j + 2], w[j + 3]
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
        c0 = c1 = c2 = c3 = d0 = d1 = d2 = d3 = np.float32(0.0)
        for i in range(n_in):
            p, q, s, t = wa[i], wb[i], wc[i], wd[i]
            y0, y1, y2, y3 = x0[i], x1[i], x2[i], x3[i]
            a0, b0, c0, d0 = a0 + y0 * p, b0 + y0 * q, c0 + y0 * s, d0 + y0 * t
            a1, b1, c1, d1 = a1 + y1 * p, b1 + y1 * q, c1 + y1 * s, d1 + y1 * t
            a2, b2, c2, d2 = a2 + y2 * p, b2 + y2 * q, c2 + y2 * s, d2 + y2 * t
            a3, b3, c3, d3 = a3 + y3 * p, b3 + y3 * q, c3 + y3 * s, d3 + y3 * t
        sums = ((a0, a1, a2, a3), (b0, b1, b2, b3), (c0, c1, c2, c3), (d0, d1, d2, d3))  # [output][row]
        for k in range(4):
            for row in range(4):
                out[row, j + k] = sums[k][row] + b[j + k]
        j += 4
    for k in range(j, n_out):  # the last O % 4 outputs, one at a time
        wk = w[k]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(n_in):
            a0, a1, a2, a3 = a0 + x0[i] * wk[i], a1 + x1[i] * wk[i], a2 + x2[i] * wk[i], a3 + x3[i] * wk[i]
        out[0, k], out[1, k], out[2, k], out[3, k] = a0 + b[k], a1 + b[k], a2 + b[k], a3 + b[k]


@_compiled
def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out (n,O) = x (n,I) @ w.T + b, with w (O,I) as torch stores it: four rows at a time share
    each weight load (:func:`_four_rows`), then two, then one."""
    n = x.shape[0]
    n_out, n_in = w.shape
    r = 0
    while r + 4 <= n:
        _four_rows(x[r : r + 4], w, b, out[r : r + 4])
        r += 4
    while r + 2 <= n:
        x0, x1 = x[r], x[r + 1]
        for j in range(n_out):
            wj = w[j]
            a0 = a1 = np.float32(0.0)
            for i in range(n_in):
                a0 += x0[i] * wj[i]
                a1 += x1[i] * wj[i]
            out[r, j] = a0 + b[j]
            out[r + 1, j] = a1 + b[j]
        r += 2
    if r < n:
        x0 = x[r]
        for j in range(n_out):
            wj = w[j]
            a0 = np.float32(0.0)
            for i in range(n_in):
                a0 += x0[i] * wj[i]
            out[r, j] = a0 + b[j]


@_compiled
def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out (n,C) = LayerNorm(x (n,C)) with weight w and bias b (C,), biased variance as torch's."""
    n, C = x.shape
    for r in range(n):
        mean = np.float32(0.0)
        for j in range(C):
            mean += x[r, j]
        mean /= C
        var = np.float32(0.0)
        for j in range(C):
            d = x[r, j] - mean
            var += d * d
        scale = np.float32(1.0 / math.sqrt(var / C + eps))
        for j in range(C):
            out[r, j] = (x[r, j] - mean) * scale * w[j] + b[j]


@_compiled
def gelu_(h: np.ndarray) -> None:
    """h (n,M) <- GELU(h), the exact (erf) form torch's nn.GELU computes.

    erf by Abramowitz and Stegun 7.1.28 (absolute error under 3e-7, float32 rounding): only
    products and one division, so the loop vectorises where libm's erf would not."""
    n, M = h.shape
    for r in range(n):
        for j in range(M):
            u = h[r, j]
            z = min(abs(u) * np.float32(0.70710678), np.float32(6.0))  # erf(6) is 1 in float32
            p = np.float32(0.0000430638)
            p = p * z + np.float32(0.0002765672)
            p = p * z + np.float32(0.0001520143)
            p = p * z + np.float32(0.0092705272)
            p = p * z + np.float32(0.0422820123)
            p = p * z + np.float32(0.0705230784)
            p = p * z + np.float32(1.0)
            p2 = p * p
            p4 = p2 * p2
            p8 = p4 * p4
            erf = np.float32(1.0) - np.float32(1.0) / (p8 * p8)
            h[r, j] = np.float32(0.5) * u * (np.float32(1.0) + (erf if u >= 0 else -erf))


@_compiled
def _softmax_(scores: np.ndarray, n: int) -> None:
    """The first n attention scores (n,) -> their softmax, in place (the largest subtracted first)."""
    top = scores[:n].max()
    total = np.float32(0.0)
    for t in range(n):
        p = np.float32(math.exp(scores[t] - top))
        scores[t] = p
        total += p
    scores[:n] *= np.float32(1.0) / total


@_compiled
def _attend_four(
    qkv: np.ndarray,
    cache: np.ndarray,
    seen: int,
    own: int,
    n_head: int,
    scale: np.float32,
    scores: np.ndarray,
    out: np.ndarray,
) -> None:
    """Attention of four candidate rows (their qkv (4,3C)) over the history's slots [0, seen) of
    one layer's cache (S,2C) and each its own slot own + k, written to out (4,C); scores (4,>seen)
    is scratch. Each cached key and value is loaded once for the four rows, as in :func:`_four_rows`."""
    C = out.shape[1]
    hd = C // n_head
    for head in range(n_head):
        lo, hi = head * hd, (head + 1) * hd
        q0, q1, q2, q3 = qkv[0, lo:hi], qkv[1, lo:hi], qkv[2, lo:hi], qkv[3, lo:hi]
        for t in range(seen):
            key = cache[t, lo:hi]
            s0 = s1 = s2 = s3 = np.float32(0.0)
            for i in range(hd):
                k = key[i]
                s0, s1, s2, s3 = s0 + q0[i] * k, s1 + q1[i] * k, s2 + q2[i] * k, s3 + q3[i] * k
            scores[0, t], scores[1, t], scores[2, t], scores[3, t] = (
                s0 * scale,
                s1 * scale,
                s2 * scale,
                s3 * scale,
            )
        for row in range(4):
            q, key = qkv[row, lo:hi], cache[own + row, lo:hi]
            s = np.float32(0.0)
            for i in range(hd):
                s += q[i] * key[i]
            scores[row, seen] = s * scale
            _softmax_(scores[row], seen + 1)
            p, value = scores[row, seen], cache[own + row, C + lo : C + hi]
            for i in range(hd):  # a loop: an array expression would allocate a temporary
                out[row, lo + i] = p * value[i]
        o0, o1, o2, o3 = out[0, lo:hi], out[1, lo:hi], out[2, lo:hi], out[3, lo:hi]
        for t in range(seen):
            value = cache[t, C + lo : C + hi]
            p0, p1, p2, p3 = scores[0, t], scores[1, t], scores[2, t], scores[3, t]
            for i in range(hd):
                v = value[i]
                o0[i] += p0 * v
                o1[i] += p1 * v
                o2[i] += p2 * v
                o3[i] += p3 * v


@_compiled
def decode_layers(
    x: np.ndarray,
    start: int,
    committed: int,
    read: int,
    kv: np.ndarray,
    norms: np.ndarray,
    eps: np.ndarray,
    qkv_w: np.ndarray,
    qkv_b: np.ndarray,
    proj_w: np.ndarray,
    proj_b: np.ndarray,
    fc_w: np.ndarray,
    fc_b: np.ndarray,
    out_w: np.ndarray,
    out_b: np.ndarray,
    n_head: int,
) -> np.ndarray:
    """Embeddings x (n,C) of tokens at cache slots start.. -> last-layer states of rows read.. (n-read,C).

    The first ``committed`` rows are the history's next tokens: each sees the slots before it and
    itself. The rest are candidates: each sees the history (slots before start + committed) and
    itself. Every row's keys and values are written to kv (L,S,2C: keys, then values, heads as in
    qkv); the caller keeps the committed ones. The last layer computes queries, attention and MLP
    for rows read.. alone. Weights are per layer as torch stores them: norms (L,4,C) ln1 w, b,
    ln2 w, b; eps (L,2); qkv_w (L,3C,C), qkv_b (L,3C); proj_w (L,C,C), proj_b (L,C);
    fc_w (L,M,C), fc_b (L,M); out_w (L,C,M), out_b (L,C)."""
    n, C = x.shape
    L, M = fc_w.shape[0], fc_w.shape[1]
    hd = C // n_head
    scale = np.float32(1.0 / math.sqrt(hd))
    x = x.copy()
    h = np.empty((n, C), np.float32)
    qkv = np.empty((n, 3 * C), np.float32)
    y = np.empty((n, C), np.float32)
    mlp = np.empty((n, M), np.float32)
    scores = np.empty((4, kv.shape[1]), np.float32)
    lo = 0
    for layer in range(L):
        layer_norm(x[lo:], norms[layer, 0], norms[layer, 1], eps[layer, 0], h[lo:])
        if layer == L - 1 and read > 0:
            # keys and values for every row, queries only for the rows read
            linear(h, qkv_w[layer, C:], qkv_b[layer, C:], qkv[:, C:])
            linear(h[read:], qkv_w[layer, :C], qkv_b[layer, :C], qkv[read:, :C])
            lo = read
        else:
            linear(h, qkv_w[layer], qkv_b[layer], qkv)
        cache = kv[layer]
        for r in range(n):
            cache[start + r] = qkv[r, C:]
        r = lo
        while r < n:
            if r >= committed and r + 4 <= n:  # four candidates: same history, each its own slot last
                _attend_four(
                    qkv[r : r + 4], cache, start + committed, start + r, n_head, scale, scores, y[r : r + 4]
                )
                r += 4
                continue
            # a committed row sees slots [0, start + r]; a candidate [0, start + committed), then its
            # own slot start + r as its last score
            seen = start + r + 1 if r < committed else start + committed
            span = seen if r < committed else seen + 1
            for head in range(n_head):
                q = qkv[r, head * hd : (head + 1) * hd]
                for t in range(span):
                    slot = t if t < seen else start + r
                    key = cache[slot, head * hd : (head + 1) * hd]
                    s = np.float32(0.0)
                    for i in range(hd):
                        s += q[i] * key[i]
                    scores[0, t] = s * scale
                _softmax_(scores[0], span)
                out = y[r, head * hd : (head + 1) * hd]
                out[:] = 0.0
                for t in range(span):
                    slot = t if t < seen else start + r
                    p, value = scores[0, t], cache[slot, C + head * hd : C + (head + 1) * hd]
                    for i in range(hd):
                        out[i] += p * value[i]
            r += 1
        linear(y[lo:], proj_w[layer], proj_b[layer], h[lo:])
        x[lo:] += h[lo:]
        layer_norm(x[lo:], norms[layer, 2], norms[layer, 3], eps[layer, 1], h[lo:])
        linear(h[lo:], fc_w[layer], fc_b[layer], mlp[lo:])
        gelu_(mlp[lo:])
        linear(mlp[lo:], out_w[layer], out_b[layer], y[lo:])
        x[lo:] += y[lo:]
    return x[lo:]


@_compiled
def embed_tokens(
    rows: np.ndarray, features: np.ndarray, direct: np.ndarray, table: np.ndarray, features_weight: np.ndarray
) -> np.ndarray:
    """Tokens -> embeddings (n,C): the sum of each token's four ``table`` rows (rows (n,4)), its
    continuous features (n,F) times ``features_weight`` (F,C), and its ``direct`` content (n,C)."""
    n = rows.shape[0]
    x = direct.copy()
    for r in range(n):
        for k in range(4):
            x[r] += table[rows[r, k]]
        for f in range(features.shape[1]):
            value = features[r, f]
            if value != 0:  # most of a token's features are zero: it has one kind of content
                for c in range(x.shape[1]):
                    x[r, c] += value * features_weight[f, c]
    return x


@_compiled
def decode_tokens(
    rows: np.ndarray,
    features: np.ndarray,
    direct: np.ndarray,
    first: int,
    end: int,
    table: np.ndarray,
    features_weight: np.ndarray,
    embeddings: np.ndarray,
    start: int,
    committed: int,
    kv: np.ndarray,
    layers: LayerWeights,
    n_head: int,
    final_norm: np.ndarray,
    final_eps: float,
    policy_w: np.ndarray,
    policy_b: np.ndarray,
    policy: np.ndarray,
) -> np.ndarray:
    """Tokens first..end of the token arrays (rows, features, direct as :func:`embed_tokens`
    reads them) -> the states :func:`decode_layers` returns after the final layer norm, the first
    ``committed`` tokens kept in the cache at slots start.., the rest candidates; ``layers`` are
    the layers' weights in :func:`decode_layers`' order (norms .. out_b).

    All in one call, as is the policy head (weight (P,C), bias (P,)) at the last committed
    token, written into ``policy`` (P,): after a pass over more weights than the core's cache
    holds, each call from Python costs more than the arithmetic of a small step. The committed
    tokens' embeddings are stored at ``embeddings[start:start + committed]``, for refills; the
    tokens' features and direct content are zeroed, so the arrays' next tokens start clear."""
    x = embed_tokens(rows[first:end], features[first:end], direct[first:end], table, features_weight)
    features[first:end] = 0
    direct[first:end] = 0
    embeddings[start : start + committed] = x[:committed]
    read = max(committed - 1, 0)  # the first row the last layer computes
    h = decode_layers(x, start, committed, read, kv, *layers, n_head)
    layer_norm(h, final_norm[0], final_norm[1], final_eps, h)
    if committed > 0:
        linear(h[:1], policy_w, policy_b, policy.reshape((1, policy.shape[0])))
    return h


# ---- the few small steps of an act around the pass ----------------------------------------------
# After a pass over more weights than the core's L2 holds, the interpreter's own data is evicted and
# every numpy call costs several times what it does warm (on the 2-core Xeon: ~7 us against ~1-2);
# one compiled call in place of a chain of them costs about one.


@_compiled_exact
def gaussian_actions(
    params: np.ndarray, noise: np.ndarray, temperature: float, low: np.ndarray, half_span: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Box policy head's output (2A,) [mean before tanh, log std] and standard normal ``noise``
    (n,A) -> actions (n,A) in env units (tanh mean + temperature * std * noise, clipped to [-1, 1],
    then ``low + (a + 1) * half_span``) and their log densities under the policy, up to a
    constant shared by all, at the clipped values (n,)."""
    n, A = noise.shape
    t = np.float32(temperature)
    actions = np.empty((n, A), np.float32)
    log_density = np.zeros(n, np.float32)
    for i in range(A):
        mean = np.float32(math.tanh(params[i]))
        std = np.float32(math.exp(min(max(params[A + i], np.float32(-5.0)), np.float32(1.0))))
        for r in range(n):
            a = min(max(mean + t * std * noise[r, i], np.float32(-1.0)), np.float32(1.0))
            actions[r, i] = low[i] + (a + np.float32(1.0)) * half_span[i]
            z = (a - mean) / std
            log_density[r] -= np.float32(0.5) * z * z
    return actions, log_density


@_compiled_exact
def scaled_into(
    values: np.ndarray,
    offset: np.ndarray,
    scale: np.ndarray,
    factor: float,
    shift: float,
    bound: float,
    out: np.ndarray,
    column: int,
) -> None:
    """out[:, column:column + k] = clip((values - offset) / scale * factor + shift, -bound, bound),
    with values (n,k), offset and scale (k,), out (n,F): tokens' features from raw values (an
    observation standardised, actions mapped to [-1, 1]), in float32 as the model's own
    normalisation."""
    f, s, b = np.float32(factor), np.float32(shift), np.float32(bound)
    for r in range(values.shape[0]):
        for i in range(values.shape[1]):
            out[r, column + i] = min(max((values[r, i] - offset[i]) / scale[i] * f + s, -b), b)


@_compiled
def evaluation_heads(
    h: np.ndarray, weight: np.ndarray, bias: np.ndarray, bins: np.ndarray, reward_scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Final states h (n,C) at action tokens -> the action-value head's logits (n,B), the return
    they expect (n,) (softmax over the bins' values (B,)) and the reward head's prediction in env
    units (n,); weight (B+1,C) and bias (B+1,) are the two heads stacked, the reward last."""
    n, B = h.shape[0], bins.shape[0]
    out = np.empty((n, B + 1), np.float32)
    linear(h, weight, bias, out)
    logits = out[:, :B]
    expected = np.empty(n, np.float32)
    for r in range(n):
        top = logits[r].max()
        total = weighted = np.float32(0.0)
        for k in range(B):
            p = np.float32(math.exp(logits[r, k] - top))
            total += p
            weighted += p * bins[k]
        expected[r] = weighted / total
    return logits, expected, out[:, B] * np.float32(reward_scale)


@_compiled_exact
def best_supported(total: np.ndarray, log_p: np.ndarray, log_support: float) -> int:
    """The index of the highest of ``total`` (N,) (the first of ties) among the entries whose
    ``log_p`` (N,) is at least its maximum + ``log_support`` (<= 0): a planner's choice among the
    actions its policy supports."""
    floor = log_p.max() + log_support
    best = -1
    for i in range(total.shape[0]):
        if log_p[i] >= floor and (best < 0 or total[i] > total[best]):
            best = i
    return best
