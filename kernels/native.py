"""Small C kernels for gated block layers and sparse recurrent layers on CPU, compiled on first use
and called through ctypes.

Three entry points: :func:`gated_linear_fused` runs a whole :class:`GatedBlockLinear` forward
(gate network, softplus, top-k, rescaling, kept blocks, bias) in one call, which is what the module
uses for CPU inference; :func:`gated_block_matvec` applies given kept blocks and gates (the
``path="native"`` of :func:`~compressor.kernels.gated_ops.gated_block_linear`); :func:`rnn_layer`
runs the whole time loop of one block-sparse LSTM/GRU layer and direction, which
``SparseLSTM``/``SparseGRU`` use for CPU inference over full sequences (see its docstring).

Why: at batch 1 the eager gated path (:func:`~compressor.kernels.gated_ops.gated_block_linear`,
``path="ebag"``) is a dozen small torch ops per matrix plus an ``embedding_bag`` over 256-byte
column segments; at the built-in LM's size (1024 x 256 matrices) that is about twice the time of
the dense GEMV it is meant to beat. This kernel walks the kept blocks once, each block a contiguous
``bw x bh`` tile streamed with FMA, and accumulates straight into the output rows. Measured
(``compress bench kernels --sections gated``, 4 rotated weight copies, 2 threads, 4096 x 1024,
128-blocks, keep 0.5, gate included): 306 us against 1120 us dense and 633 us on the ``ebag``
path; see BENCHMARKS.md.

How: the C source below is compiled on first use by :class:`compressor.native_build.NativeLibrary`
(the system C compiler, cached under ``$COMPRESSOR_CACHE/native/`` keyed by source, flags and CPU,
written atomically; ``-march=native`` first, then portable flags). Without a compiler, or with
``COMPRESSOR_NATIVE=0``, :func:`library` returns None and callers keep the pure-torch path;
:func:`unavailable_reason` says why.

The kernel is inference-only (no autograd): :func:`native_eligible` checks that nothing needs a
gradient. Work is split over block rows with OpenMP when the build has it, using torch's thread
count.
"""

from __future__ import annotations

import ctypes
import os

import torch

from ..native_build import NativeLibrary, cache_dir
from ._checks import pad_columns

__all__ = ["library", "unavailable_reason", "native_eligible", "gated_block_matvec", "fused_eligible", "gated_linear_fused",
           "cpu_inference_path", "rnn_layer", "block_linear", "check_bsr_index", "cache_dir", "RNN_THREADS"]

_HEADER = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* exp for the gates, vectorizable (no libm call and no float branch in the loop, so GCC vectorizes
 * it without fast-math flags): Cephes' expf, range reduction by ln 2 in two parts, degree-6
 * polynomial, 2^n built from exponent bits, within a few ulp of expf for x in [-87, 88]. The
 * clamp is on the integer n only (a float clamp blocks vectorization): above 88 the result
 * overflows to +inf as expf does; below -87 it is some value of magnitude under 1e-20 instead of
 * a denormal or 0, harmless here because the gates only ever add it to 1 (sigmoid(v) =
 * 1 / (1 + exp(-v)), tanh(v) = 1 - 2 / (exp(2v) + 1)). The float kernel uses it (scalar
 * expf/tanhf took 3/4 of a 1024-unit LSTM step at batch 1); the double kernel keeps libm's exp. */
static inline float vexp_f32(float x) {
  int32_t n = (int32_t)(x * 1.44269504088896341f + __builtin_copysignf(0.5f, x));
  n = n < -126 ? -126 : n;
  n = n > 127 ? 127 : n;
  const float nf = (float)n;
  const float r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } e;
  e.i = (n + 127) << 23;
  return p * e.f;
}
"""

# Written once for a scalar type `real` (suffix @S@); instantiated for float and double below.
_BODY = r"""
/* Block products of one example: ys[j*bh + r] += g[t] * sum_c x[i*bw + c] * blocks[k, c, r] over the
 * kept blocks t (k = idx[t], j = k / Ci, i = k % Ci). blocks (K, bw, bh) contiguous, each block stored
 * transposed, so a block is one contiguous tile streamed column by column. Threads split the block
 * rows: no two threads write the same output. */
static void blocks_@S@(const real* xb, const real* blocks, const int64_t* ib, const real* gb, int64_t n,
                       int64_t Ro, int64_t Ci, int64_t bw, int64_t bh, real* yb, int64_t nt) {
  if (nt > Ro) nt = Ro;
  if (nt < 1) nt = 1;
  #pragma omp parallel for num_threads(nt) schedule(static) if(nt > 1)
  for (int64_t part = 0; part < nt; ++part) {
    for (int64_t t = 0; t < n; ++t) {
      const int64_t k = ib[t], j = k / Ci;
      if (j % nt != part) continue;
      const real* w = blocks + k * bw * bh; const real* xs = xb + (k % Ci) * bw; real* ys = yb + j * bh;
      const real gv = gb[t];
      for (int64_t c = 0; c < bw; ++c) {
        const real s = gv * xs[c]; const real* wr = w + c * bh;
        #pragma omp simd
        for (int64_t r = 0; r < bh; ++r) ys[r] += s * wr[r];
      }
    }
  }
}

/* y (B, Ro*bh), zeroed by the caller, += the kept blocks given as idx (B, n) and g (B, n). */
void gated_block_matvec_@S@(const real* x, int64_t x_stride, const real* blocks, const int64_t* idx, const real* g,
                            int64_t B, int64_t n, int64_t Ro, int64_t Ci, int64_t bw, int64_t bh,
                            real* y, int64_t y_stride, int64_t threads) {
  for (int64_t b = 0; b < B; ++b)
    blocks_@S@(x + b * x_stride, blocks, idx + b * n, g + b * n, n, Ro, Ci, bw, bh, y + b * y_stride, threads);
}

/* out[o] = bias[o] + sum_i w[o*ld + i] * v[i] for o < rows (bias may be NULL). */
static void gemv_@S@(const real* w, int64_t ld, const real* bias, const real* v, int64_t rows, int64_t cols,
                     real* out, int64_t nt) {
  #pragma omp parallel for num_threads(nt) schedule(static) if(nt > 1 && rows * cols > 65536)
  for (int64_t o = 0; o < rows; ++o) {
    const real* wr = w + o * ld;
    real acc = 0;
    #pragma omp simd reduction(+:acc)
    for (int64_t i = 0; i < cols; ++i) acc += wr[i] * v[i];
    out[o] = bias ? acc + bias[o] : acc;
  }
}

/* Reorder idx[0..n) so that its first k entries index the k largest s (quickselect; order within
 * the kept set is unspecified, as for any top-k whose result is summed). */
static void select_top_@S@(const real* s, int64_t* idx, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const real pivot = s[idx[lo + (hi - lo) / 2]];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (s[idx[i]] > pivot) ++i;
      while (s[idx[j]] < pivot) --j;
      if (i <= j) { const int64_t tmp = idx[i]; idx[i] = idx[j]; idx[j] = tmp; ++i; --j; }
    }
    if (k - 1 <= j) hi = j;
    else if (k - 1 >= i) lo = i;
    else break;
  }
}

/* The whole gated linear for B examples, as GatedBlockLinear computes it:
 *   logits = gate(x)           full gate: gw (K, in) + gb;  rank r > 0: gw (K, r) @ (down (r, in) @ x) + gb
 *   s = softplus(logits)       torch's: logits above 20 pass through
 *   keep the top k of s over all K blocks, or the top k of every block row (row_mode)
 *   g = s_kept / (sum(s_kept) / K);  y = bias + sum over kept blocks of g * W_block x_segment.
 * x (B, Ci*bw) padded; y (B, Ro*bh); idx_out / g_out (B, n) receive the kept blocks and gates
 * (both NULL: not wanted, kept in scratch). */
void gated_linear_@S@(const real* x, int64_t x_stride, int64_t B, int64_t in_f,
                      const real* down, int64_t rank, const real* gw, const real* gb,
                      const real* blocks, int64_t Ro, int64_t Ci, int64_t bw, int64_t bh, int64_t k, int64_t row_mode,
                      const real* bias, int64_t out_f, real* y, int64_t y_stride,
                      int64_t* idx_out, real* g_out, int64_t threads) {
  const int64_t K = Ro * Ci, n = row_mode ? Ro * k : k, nt = threads < 1 ? 1 : threads;
  real* s = (real*)malloc(sizeof(real) * (size_t)(K + rank + (g_out ? 0 : n)));
  int64_t* order = (int64_t*)malloc(sizeof(int64_t) * (size_t)(K + (idx_out ? 0 : n)));
  const int keep_selection = idx_out != NULL && g_out != NULL;  /* else one example's scratch, reused */
  for (int64_t b = 0; b < B; ++b) {
    const real* xb = x + b * x_stride;
    if (rank > 0) {
      gemv_@S@(down, in_f, NULL, xb, rank, in_f, s + K, nt);
      gemv_@S@(gw, rank, gb, s + K, K, rank, s, nt);
    } else {
      gemv_@S@(gw, in_f, gb, xb, K, in_f, s, nt);
    }
    for (int64_t o = 0; o < K; ++o) {
      s[o] = s[o] > 20 ? s[o] : @LOG1P@(@EXP@(s[o]));
      order[o] = o;
    }
    int64_t* ib = keep_selection ? idx_out + b * n : order + K;
    real* gbuf = keep_selection ? g_out + b * n : s + K + rank;
    if (row_mode) {
      for (int64_t j = 0; j < Ro; ++j) {
        select_top_@S@(s, order + j * Ci, Ci, k);
        for (int64_t t = 0; t < k; ++t) ib[j * k + t] = order[j * Ci + t];
      }
    } else {
      select_top_@S@(s, order, K, k);
      for (int64_t t = 0; t < k; ++t) ib[t] = order[t];
    }
    real total = 0;
    for (int64_t t = 0; t < n; ++t) total += s[ib[t]];
    const real tiny = @TINY@;
    const real mean = (total > tiny ? total : tiny) / (real)K;
    for (int64_t t = 0; t < n; ++t) gbuf[t] = s[ib[t]] / mean;
    real* yb = y + b * y_stride;
    for (int64_t o = 0; o < Ro * bh; ++o) yb[o] = (bias && o < out_f) ? bias[o] : 0;
    blocks_@S@(xb, blocks, ib, gbuf, n, Ro, Ci, bw, bh, yb, nt);
  }
  free(order);
  free(s);
}

/* Block row j of the recurrent product for example b: yr[0..bh) = bias + sum over the row's stored
 * blocks p of W_p hs. Inlined with BH a constant (16, 32, 64) so the accumulator lives in
 * registers; BH 0 means "use bh". */
static inline __attribute__((always_inline)) void rnn_row_@S@(
    const real* restrict vals, const int64_t* restrict crow, const int64_t* restrict cols, int64_t j, int64_t bw,
    int64_t bh, const int64_t BH, const real* restrict hs, const real* restrict bias, int64_t gh, real* restrict yr) {
  const int64_t n = BH ? BH : bh;
  real acc[64];
  real* a = BH ? acc : yr;
  for (int64_t r = 0; r < n; ++r) a[r] = (bias && j * n + r < gh) ? bias[j * n + r] : 0;
  for (int64_t p = crow[j]; p < crow[j + 1]; ++p) {
    const real* w = vals + p * bw * n; const real* xs = hs + cols[p] * bw;
    for (int64_t c = 0; c < bw; ++c) {
      const real s = xs[c]; const real* wr = w + c * n;
      #pragma omp simd
      for (int64_t r = 0; r < n; ++r) a[r] += s * wr[r];
    }
  }
  if (BH) for (int64_t r = 0; r < n; ++r) yr[r] = acc[r];
}

/* The same block row for E = 1 to 4 examples at once with GCC/clang vector types (32-byte vectors
 * of VL = 32 / sizeof(real) lanes, a block row of height NV * VL): the accumulators stay in
 * registers and every weight vector loaded serves all E examples, so the weight traffic from L1
 * falls with E (the scalar helper below reloads each block once per example). E is what the
 * 16 vector registers of AVX2 hold: E * NV accumulators, one weight vector, E broadcasts. */
typedef real vr_@S@ __attribute__((vector_size(32), aligned(sizeof(real))));

static inline __attribute__((always_inline)) void rnn_row_v_@S@(
    const real* restrict vals, const int64_t* restrict crow, const int64_t* restrict cols, int64_t j, int64_t bw,
    const int NV, const int E, const real* const* hs, const real* restrict bias, int64_t gh, real* const* ys) {
  enum { VL = 32 / sizeof(real) };
  const int64_t BH = (int64_t)NV * VL;
  vr_@S@ a[4][8];
  for (int v = 0; v < NV; ++v) {
    for (int l = 0; l < VL; ++l) {
      const int64_t o = j * BH + v * VL + l;
      a[0][v][l] = (bias && o < gh) ? bias[o] : 0;
    }
    for (int e = 1; e < E; ++e) a[e][v] = a[0][v];
  }
  for (int64_t p = crow[j]; p < crow[j + 1]; ++p) {
    const real* w = vals + p * bw * BH;
    const real* x[4];
    for (int e = 0; e < E; ++e) x[e] = hs[e] + cols[p] * bw;
    for (int64_t c = 0; c < bw; ++c) {
      real sc[4];
      for (int e = 0; e < E; ++e) sc[e] = x[e][c];
      const vr_@S@* wr = (const vr_@S@*)(w + c * BH);
      for (int v = 0; v < NV; ++v) {
        const vr_@S@ wv = wr[v];
        for (int e = 0; e < E; ++e) a[e][v] += sc[e] * wv;
      }
    }
  }
  for (int e = 0; e < E; ++e)
    for (int v = 0; v < NV; ++v) *(vr_@S@*)(ys[e] + v * VL) = a[e][v];
}

/* Outputs [off, off + 2 VL) of block row j (block height bh) for E <= 6 examples: for many examples
 * (a whole sequence's input projection) a slice of two vectors lets each weight vector loaded serve
 * six examples (12 accumulators, two weight vectors, one broadcast: 15 of AVX2's 16 registers),
 * half the weight traffic per multiply-add of rnn_row_v's four vectors for three examples, and the
 * slice's weights (16 KB for 8 kept 32 x 32 float blocks) stay in L1 across every example. */
static inline __attribute__((always_inline)) void block_slice_v_@S@(
    const real* restrict vals, const int64_t* restrict crow, const int64_t* restrict cols, int64_t j, int64_t bw,
    int64_t bh, int64_t off, const int E, const real* const* xs, const real* restrict bias, int64_t gh,
    real* const* ys) {
  enum { VL = 32 / sizeof(real) };
  vr_@S@ a[6][2];
  for (int v = 0; v < 2; ++v) {
    for (int l = 0; l < VL; ++l) {
      const int64_t o = j * bh + off + v * VL + l;
      a[0][v][l] = (bias && o < gh) ? bias[o] : 0;
    }
    for (int e = 1; e < E; ++e) a[e][v] = a[0][v];
  }
  for (int64_t p = crow[j]; p < crow[j + 1]; ++p) {
    const real* w = vals + p * bw * bh + off;
    const real* x[6];
    for (int e = 0; e < E; ++e) x[e] = xs[e] + cols[p] * bw;
    for (int64_t c = 0; c < bw; ++c) {
      const vr_@S@ w0 = *(const vr_@S@*)(w + c * bh), w1 = *(const vr_@S@*)(w + c * bh + VL);
      for (int e = 0; e < E; ++e) {
        const real s = x[e][c];
        a[e][0] += s * w0;
        a[e][1] += s * w1;
      }
    }
  }
  for (int e = 0; e < E; ++e)
    for (int v = 0; v < 2; ++v) *(vr_@S@*)(ys[e] + off + v * VL) = a[e][v];
}

/* From this many examples on, rnn_rows takes a block row slice by slice (block_slice_v) where the
 * block height is a multiple of two vectors. Measured (one thread, 4096 x 1024 float weight at 75%
 * in 32 x 32 blocks, AVX2): with the weights in cache, slices win from 12 rows on (16 rows 0.40
 * against 0.49 ms, 128 rows 2.7 against 4.4 ms, 2048 rows 75-88 against 103-120 ms); streamed from
 * memory (8 weight copies rotated, as a streaming step sees them) they lose up to 32 rows (16 rows
 * 0.90 against 0.59 ms, 32 rows 1.10 against 1.04) and win from 48 on (1.38 against 1.45 ms, 128
 * rows 3.41 against 3.67). So: a sequence's input projection and the recurrent products of a
 * sequence of two or more steps (one weight, reused every step, stays in cache: the 2-layer
 * 1024-wide LSTM at 75%, 16 x 128 tokens, ran its forward in 266 against 282 ms) take the slices
 * from BLOCK_SLICE_ROWS_HOT rows on, a streaming step's products from BLOCK_SLICE_ROWS. */
#define BLOCK_SLICE_ROWS 48
#define BLOCK_SLICE_ROWS_HOT 12

/* Block row j of the product for every example: six at a time slice by slice from
 * BLOCK_SLICE_ROWS examples on (where the height allows), else the vector helper where the block
 * height is 1, 2, 4 or 8 vectors (examples in groups of 4, 4, 3 and 2: the accumulators of 4 x 8
 * vectors spill, as 2 x 8 already partly do), the scalar one otherwise. */
static void rnn_rows_@S@(const real* vals, const int64_t* crow, const int64_t* cols, int64_t j, int64_t bw, int64_t bh,
                         int64_t B, const real* hb, int64_t Wd, const real* bias, int64_t gh, real* y, int64_t O,
                         int64_t slice_rows) {
  const int64_t VL = 32 / sizeof(real), NV = bh % VL == 0 ? bh / VL : 0;
  if (B >= slice_rows && bh % (2 * VL) == 0) {
    for (int64_t off = 0; off < bh; off += 2 * VL)
      for (int64_t b = 0; b < B; b += 6) {
        const int64_t E = B - b < 6 ? B - b : 6;
        const real* xs[6]; real* ys[6];
        for (int64_t e = 0; e < E; ++e) { xs[e] = hb + (b + e) * Wd; ys[e] = y + (b + e) * O + j * bh; }
        #define SLICE(EE) block_slice_v_@S@(vals, crow, cols, j, bw, bh, off, EE, xs, bias, gh, ys)
        switch (E) {
          case 1: SLICE(1); break;
          case 2: SLICE(2); break;
          case 3: SLICE(3); break;
          case 4: SLICE(4); break;
          case 5: SLICE(5); break;
          default: SLICE(6);
        }
        #undef SLICE
      }
    return;
  }
  if (NV != 1 && NV != 2 && NV != 4 && NV != 8) {
    for (int64_t b = 0; b < B; ++b) rnn_row_@S@(vals, crow, cols, j, bw, bh, 0, hb + b * Wd, bias, gh, y + b * O + j * bh);
    return;
  }
  const int64_t most = NV <= 2 ? 4 : NV == 4 ? 3 : 2;
  for (int64_t b = 0; b < B; b += most) {
    const int64_t E = B - b < most ? B - b : most;
    const real* h[4]; real* yo[4];
    for (int64_t e = 0; e < E; ++e) { h[e] = hb + (b + e) * Wd; yo[e] = y + (b + e) * O + j * bh; }
    #define RNN_ROW_V(N, EE) rnn_row_v_@S@(vals, crow, cols, j, bw, N, EE, h, bias, gh, yo)
    #define RNN_ROW_E(N) do { if (E == 1) RNN_ROW_V(N, 1); else if (E == 2) RNN_ROW_V(N, 2); \
                              else if (E == 3) RNN_ROW_V(N, 3); else RNN_ROW_V(N, 4); } while (0)
    if (NV == 1) RNN_ROW_E(1);
    else if (NV == 2) RNN_ROW_E(2);
    else if (NV == 4) RNN_ROW_E(4);
    else if (E == 1) RNN_ROW_V(8, 1);
    else RNN_ROW_V(8, 2);
    #undef RNN_ROW_E
    #undef RNN_ROW_V
  }
}

/* y (B, Ro*bh) = bias + x W^T for a BSR W with transposed blocks (the product of rnn_layer's steps,
 * for a streaming step's input projection); x (B, Ci*bw) padded. */
void block_linear_@S@(const real* x, int64_t B, const real* vals, const int64_t* crow, const int64_t* cols,
                      int64_t Ro, int64_t Ci, int64_t bw, int64_t bh, const real* bias, int64_t out_f, real* y) {
  for (int64_t j = 0; j < Ro; ++j)
    rnn_rows_@S@(vals, crow, cols, j, bw, bh, B, x, Ci * bw, bias, out_f, y, Ro * bh, BLOCK_SLICE_ROWS);
}

static inline real sigm_@S@(real v) { return (real)1 / ((real)1 + @VEXP@(-v)); }
static inline real tanh_@S@(real v) { return (real)1 - (real)2 / (@VEXP@((real)2 * v) + (real)1); }

/* One recurrent layer and direction over a whole sequence, as kernels/rnn.py's torch path runs it:
 *   per step t (T-1..0 when reverse): y = W_hh h + b_hh (block sparse, stored as BSR with every block
 *   transposed: vals (nnzb, bw, bh), crow (Ro+1), cols (nnzb) block columns), then the gates with
 *   the precomputed input projection xp[t] (T, B, G*H, b_ih included):
 *   kind 0, LSTM (i, f, g, o): c = sig(f) c + sig(i) tanh(g); h = sig(o) tanh(c)
 *   kind 1, GRU (r, z, n):     r = sig(xr + yr); z = sig(xz + yz); n = tanh(xn + r yn); h = n + z (h - n)
 * h0 (B, H), c0 (B, H) (LSTM only); out[t*out_st + b*out_sb + u] = h_t; hT, cT (B, H) the last state.
 * One parallel region for the whole loop: threads split block rows for the product, then
 * (example, unit) pairs for the gates, with a barrier after each. Returns 0, or 1 when out of memory. */
int rnn_layer_@S@(const real* xp, int64_t T, int64_t B, int64_t H, int64_t kind, int64_t reverse,
                  const real* vals, const int64_t* crow, const int64_t* cols, int64_t Ro, int64_t Ci,
                  int64_t bw, int64_t bh, const real* bias, const real* h0, const real* c0,
                  real* out, int64_t out_st, int64_t out_sb, real* hT, real* cT, int64_t threads) {
  const int64_t G = kind == 0 ? 4 : 3, GH = G * H, Wd = Ci * bw, O = Ro * bh;
  real* hb = (real*)calloc((size_t)(B * Wd), sizeof(real));  /* padded hidden state: pad columns stay 0 */
  real* y = (real*)malloc(sizeof(real) * (size_t)(B * O));
  if (!hb || !y) { free(hb); free(y); return 1; }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t u = 0; u < H; ++u) {
      hb[b * Wd + u] = h0[b * H + u];
      if (kind == 0) cT[b * H + u] = c0[b * H + u];
    }
  const int64_t CH = 256, nch = (H + CH - 1) / CH;  /* gate work in chunks of units: vector loops */
  const int64_t slice_rows = T > 1 ? BLOCK_SLICE_ROWS_HOT : BLOCK_SLICE_ROWS;  /* W_hh stays in cache over steps */
  int64_t nt = threads < 1 ? 1 : threads;
  if (nt > Ro) nt = Ro;
  #pragma omp parallel num_threads(nt) if(nt > 1)
  for (int64_t step = 0; step < T; ++step) {
    const int64_t t = reverse ? T - 1 - step : step;
    #pragma omp for schedule(static)
    for (int64_t j = 0; j < Ro; ++j) rnn_rows_@S@(vals, crow, cols, j, bw, bh, B, hb, Wd, bias, GH, y, O, slice_rows);
    /* implicit barrier: the product read the old h everywhere before any gate writes the new one */
    #pragma omp for schedule(static)
    for (int64_t q = 0; q < B * nch; ++q) {
      const int64_t b = q / nch, u0 = (q % nch) * CH, u1 = u0 + CH < H ? u0 + CH : H;
      const real* restrict x = xp + (t * B + b) * GH; const real* restrict g = y + b * O;
      real* restrict hs = hb + b * Wd; real* restrict os = out + t * out_st + b * out_sb;
      if (kind == 0) {
        real* restrict cs = cT + b * H;
        #pragma omp simd
        for (int64_t u = u0; u < u1; ++u) {
          const real i = sigm_@S@(x[u] + g[u]), f = sigm_@S@(x[H + u] + g[H + u]);
          const real gg = tanh_@S@(x[2 * H + u] + g[2 * H + u]), o = sigm_@S@(x[3 * H + u] + g[3 * H + u]);
          const real c = f * cs[u] + i * gg;
          cs[u] = c;
          const real h = o * tanh_@S@(c);
          hs[u] = h;
          os[u] = h;
        }
      } else {
        #pragma omp simd
        for (int64_t u = u0; u < u1; ++u) {
          const real r = sigm_@S@(x[u] + g[u]), z = sigm_@S@(x[H + u] + g[H + u]);
          const real n = tanh_@S@(x[2 * H + u] + r * g[2 * H + u]);
          const real h = n + z * (hs[u] - n);
          hs[u] = h;
          os[u] = h;
        }
      }
    }
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t u = 0; u < H; ++u) hT[b * H + u] = hb[b * Wd + u];
  free(y);
  free(hb);
  return 0;
}
"""


def _instantiate(real: str, suffix: str, log1p: str, exp: str, vexp: str, tiny: str) -> str:
    body = (_BODY.replace("@S@", suffix).replace("@LOG1P@", log1p).replace("@EXP@", exp).replace("@VEXP@", vexp)
            .replace("@TINY@", tiny))
    return f"#define real {real}\n{body}\n#undef real\n"


_SOURCE = (_HEADER + _instantiate("float", "f32", "log1pf", "expf", "vexp_f32", "1.17549435e-38f")
           + _instantiate("double", "f64", "log1p", "exp", "exp", "2.2250738585072014e-308"))


def _declare(lib: ctypes.CDLL) -> None:
    P, I = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f32", "f64"):
        fn = getattr(lib, f"gated_block_matvec_{suffix}")
        fn.argtypes = [P, I, P, P, P, I, I, I, I, I, I, P, I, I]
        fn.restype = None
        fn = getattr(lib, f"gated_linear_{suffix}")
        fn.argtypes = [P, I, I, I, P, I, P, P, P, I, I, I, I, I, I, P, I, P, I, P, P, I]
        fn.restype = None
        fn = getattr(lib, f"block_linear_{suffix}")
        fn.argtypes = [P, I, P, P, P, I, I, I, I, P, I, P]
        fn.restype = None
        fn = getattr(lib, f"rnn_layer_{suffix}")
        fn.argtypes = [P, I, I, I, I, I, P, P, P, I, I, I, I, P, P, P, P, I, I, P, P, I]
        fn.restype = ctypes.c_int


_LIBRARY = NativeLibrary("gated_block", _SOURCE, _declare)


def library() -> ctypes.CDLL | None:
    """The compiled kernel library (built on first call), or None when it cannot be built."""
    return _LIBRARY.get()


def unavailable_reason() -> str | None:
    """Why :func:`library` is None (None when the kernel is available)."""
    return _LIBRARY.unavailable_reason()


def native_eligible(x: torch.Tensor, *tensors: torch.Tensor, contiguous: bool = False) -> bool:
    """Whether the native kernel can run these inputs: CPU, fp32/fp64, no autograd needed, built,
    and not being traced (export, torch.compile and jit tracing see the torch ops); with ``contiguous``, also
    that ``tensors`` are contiguous. (One plain loop: this runs on every batch-1 call.)"""
    dtype = x.dtype
    if not x.is_cpu or (dtype is not torch.float32 and dtype is not torch.float64):
        return False
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    grad = torch.is_grad_enabled()
    if grad and x.requires_grad:
        return False
    for t in tensors:
        if t.dtype is not dtype or not t.is_cpu or (grad and t.requires_grad) or (contiguous and not t.is_contiguous()):
            return False
    return (_LIBRARY.lib if _LIBRARY.tried else library()) is not None


def gated_block_matvec(x: torch.Tensor, blocks_t: torch.Tensor, idx: torch.Tensor, g: torch.Tensor,
                       grid: tuple[int, int]) -> torch.Tensor:
    """``(B, Ro*bh)`` block-row outputs of the kept blocks: the native twin of the ``ebag`` path.

    ``x (B, Ci*bw)`` (already padded), ``blocks_t (K, bw, bh)``, ``idx (B, n)`` global block
    indices and ``g (B, n)`` gate values from :func:`~compressor.kernels.gated_ops.select_blocks`
    (either mode: row mode's indices are global too). Raises RuntimeError when not built.
    """
    if x.dtype not in (torch.float32, torch.float64) or any(t.dtype != x.dtype for t in (blocks_t, g)):
        raise TypeError(f"the native gated kernel takes fp32 or fp64 (all alike), got x {x.dtype}, "
                        f"blocks {blocks_t.dtype}, g {g.dtype}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, blocks_t, g)):
        raise RuntimeError("the native gated kernel is inference-only: run it under torch.no_grad() "
                           "or use path 'ebag' / 'bmm' for training")
    lib = library()
    if lib is None:
        raise RuntimeError(f"native gated kernel unavailable: {unavailable_reason()}")
    Ro, Ci = grid
    K, bw, bh = blocks_t.shape
    B, n = idx.shape
    if x.shape != (B, Ci * bw) or K != Ro * Ci or g.shape != (B, n):
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, blocks {tuple(blocks_t.shape)}, grid {grid}, "
                         f"idx {tuple(idx.shape)}, g {tuple(g.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= K):  # C reads no bounds: check here
        raise ValueError(f"idx must hold block indices in [0, {K}), got {int(idx.min())}..{int(idx.max())}")
    x, blocks_t, g = x.contiguous(), blocks_t.contiguous(), g.contiguous()  # no copies when already so
    idx = idx.contiguous() if idx.dtype == torch.int64 else idx.to(torch.int64).contiguous()
    y = torch.zeros(B, Ro * bh, dtype=x.dtype)
    fn = lib.gated_block_matvec_f32 if x.dtype == torch.float32 else lib.gated_block_matvec_f64
    fn(x.data_ptr(), x.stride(0), blocks_t.data_ptr(), idx.data_ptr(), g.data_ptr(), B, n, Ro, Ci, bw, bh,
       y.data_ptr(), y.stride(0), torch.get_num_threads())
    return y


_LOW_RANK_GATE: list = []  # the LowRankGate class, imported on first use (gated_rnn imports this module)


def _gate_parts(gate) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None] | None:
    """``(down, weight, bias)`` of a gate the fused kernel knows (``nn.Linear`` or a low-rank gate), else None."""
    if not _LOW_RANK_GATE:
        from .gated_rnn import LowRankGate

        _LOW_RANK_GATE.append(LowRankGate)
    # _parameters / _modules directly: nn.Module.__getattr__ costs about a microsecond per lookup
    if type(gate) is torch.nn.Linear:
        p = gate._parameters
        return None, p["weight"], p.get("bias")
    if isinstance(gate, _LOW_RANK_GATE[0]) and gate.down.bias is None:
        return gate.down.weight, gate.up.weight, gate.up.bias
    return None


def _fused_parts(module, x2: torch.Tensor):
    """The tensors of ``module``'s fused call, or None when the fused kernel cannot run it (see
    :func:`fused_eligible`)."""
    gate = module._modules["gate"]
    if gate._forward_hooks or gate._forward_pre_hooks or torch.nn.modules.module._global_forward_hooks \
            or torch.nn.modules.module._global_forward_pre_hooks:
        return None
    parts = _gate_parts(gate)
    if parts is None:
        return None
    down, gw, gb = parts
    blocks, bias = module._parameters.get("blocks"), module._parameters.get("bias")
    if blocks is None:
        return None
    # the C code trusts every size: anything a user reshaped by hand goes the torch way (which raises)
    (Ro, Ci), in_f = module.grid, module.in_features
    K, bw, bh = blocks.shape
    width = in_f if down is None else down.shape[0]
    if K != Ro * Ci or Ci * bw < in_f or x2.shape[1] != in_f or gw.shape != (K, width) \
            or (down is not None and down.shape != (width, in_f)) or (gb is not None and gb.shape != (K,)) \
            or (bias is not None and bias.shape != (module.out_features,)) or Ro * bh < module.out_features \
            or not 1 <= module.k <= (Ci if module.mode == "row" else K):
        return None
    tensors = (gw, blocks) + tuple(t for t in (down, gb, bias) if t is not None)
    return (down, gw, gb, blocks, bias) if native_eligible(x2, *tensors, contiguous=True) else None


def fused_eligible(module, x2: torch.Tensor) -> bool:
    """Whether :func:`gated_linear_fused` can run ``module`` (a GatedBlockLinear) on ``x2``.

    Besides :func:`native_eligible`: the gate is an ``nn.Linear`` or a low-rank gate with
    contiguous weights, and nothing hooks the gate module (the fused kernel does not call it, so
    hooks such as the keep-frequency counter would miss it).
    """
    return _fused_parts(module, x2) is not None


def gated_linear_fused(module, x2: torch.Tensor, selection: bool = True):
    """``module``'s whole forward in one native call: gate, softplus, top-k, rescale, kept blocks, bias.

    ``x2 (B, in)``; returns ``y (B, out)`` and the kept blocks ``idx``, gates ``g`` ``(B, n)`` (the
    same choice as :func:`~compressor.kernels.gated_ops.select_blocks`, up to exact ties and the
    order within the kept set; ``None, None`` with ``selection=False``, which the module's forward
    uses), or None where :func:`fused_eligible` is false.
    """
    parts = _fused_parts(module, x2)
    if parts is None:
        return None
    down, gw, gb, blocks, bias = parts
    (Ro, Ci), k, out_f = module.grid, module.k, module.out_features
    K, bw, bh = blocks.shape
    B, width = x2.shape[0], Ci * bw
    x = pad_columns(x2, width).contiguous()
    row = module.mode == "row"
    n = k * Ro if row else k
    y = torch.empty(B, Ro * bh, dtype=x.dtype)
    idx = torch.empty(B, n, dtype=torch.int64) if selection else None
    g = torch.empty(B, n, dtype=x.dtype) if selection else None
    lib = _LIBRARY.lib
    fn = lib.gated_linear_f32 if x.dtype == torch.float32 else lib.gated_linear_f64
    fn(x.data_ptr(), width, B, module.in_features, None if down is None else down.data_ptr(),
       0 if down is None else down.shape[0], gw.data_ptr(), None if gb is None else gb.data_ptr(), blocks.data_ptr(),
       Ro, Ci, bw, bh, k, row, None if bias is None else bias.data_ptr(), out_f, y.data_ptr(), Ro * bh,
       idx.data_ptr() if selection else None, g.data_ptr() if selection else None, torch.get_num_threads())
    return (y if Ro * bh == out_f else y[:, :out_f]), idx, g


def cpu_inference_path(module) -> str:
    """How ``module`` (a GatedBlockLinear) runs batch-1 CPU inference, for reports:
    ``"native"`` or ``"torch (<why not native>)"``."""
    with torch.no_grad():
        x = torch.zeros(1, module.in_features, dtype=module.blocks.dtype)
        if fused_eligible(module, x):
            return "native"
    if library() is None:
        return f"torch ({unavailable_reason()})"
    if _gate_parts(module.gate) is None:
        return f"torch (gate {type(module.gate).__name__} is not a Linear or low-rank gate)"
    return f"torch ({module.blocks.dtype} on {module.blocks.device.type}, or a hook on the gate)"


#: Threads of :func:`rnn_layer` when its caller names none. One: the time loop synchronises its
#: threads twice per step, and on the shared 2-core development machine (load average 5-6) two
#: threads ran a 1024-unit LSTM layer 1.5x slower at batch 1 and 3-7x slower at batch 16 than one
#: (a descheduled thread stalls every barrier). Raise it on a machine with idle cores.
RNN_THREADS = 1


def rnn_layer(xproj: torch.Tensor, values_t: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor,
              bias: torch.Tensor | None, h0: torch.Tensor, c0: torch.Tensor | None, reverse: bool,
              out: torch.Tensor | None = None, threads: int | None = None, index_checked: bool = False):
    """One LSTM (``c0`` given) or GRU (``c0`` None) layer and direction over a whole sequence, the
    time loop in C: ``(out (T, B, H), h_T (B, H), c_T (B, H) or None)``.

    Why: the torch path (:mod:`.rnn`) calls the sparse recurrent product and half a dozen gate ops
    per time step from Python, about a dozen op dispatches per step, against one fused call per
    layer for ``nn.LSTM``; at 90% sparsity the product itself is a tenth of the dense one, so the
    dispatch overhead decided the race (the built-in LM's compressed forward ran at 0.5x dense).
    Here the whole loop is one call: per step the block product ``W_hh h + b_hh`` over the kept
    blocks, then the gate math of the torch path (LSTM gates i, f, g, o; GRU r, z, n with
    ``b_hn`` inside ``r * (W_hn h + b_hn)``).

    ``xproj (T, B, G*H)``: the input projection of every step, ``b_ih`` included (computed by the
    caller as one sparse product). The recurrent weight is BSR with every block transposed:
    ``values_t (nnzb, bw, bh)``, ``crow (Ro+1,)``, ``cols (nnzb,)`` int64 (a balanced layout is
    the BSR with ``k`` blocks per row: ``values_t.view(-1, bw, bh)``). ``bias (G*H,)`` is ``b_hh``.
    ``out``: where to write the outputs, any ``(T, B, H)`` view whose last dimension is contiguous
    (a half of a bidirectional layer's output); allocated when None. ``threads``: OpenMP threads
    splitting each step's block rows (default :data:`RNN_THREADS`). Every size is checked here:
    the C code reads no bounds; ``index_checked=True`` skips only the scan of ``crow``/``cols``,
    for a caller that passed them through :func:`check_bsr_index` for these sizes and cached them
    (a streaming step would otherwise spend a tenth of its time re-checking). Raises RuntimeError when the library is not built or autograd is
    needed (it is inference-only).
    """
    lib = library()
    if lib is None:
        raise RuntimeError(f"native RNN kernel unavailable: {unavailable_reason()}")
    lstm = c0 is not None
    dtype = xproj.dtype
    tensors = [t for t in (xproj, values_t, bias, h0, c0) if t is not None]
    if dtype not in (torch.float32, torch.float64) or any(t.dtype != dtype for t in tensors):
        raise TypeError(f"the native RNN kernel takes fp32 or fp64 (all alike), got {[t.dtype for t in tensors]}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError("the native RNN kernel is inference-only: run it under torch.no_grad()")
    if any(not t.is_cpu for t in tensors + [crow, cols]):
        raise ValueError("the native RNN kernel runs on CPU tensors only")
    G = 4 if lstm else 3
    if xproj.dim() != 3 or values_t.dim() != 3 or crow.dim() != 1 or cols.dim() != 1:
        raise ValueError(f"xproj must be (T, B, G*H) and values_t (nnzb, bw, bh), got {tuple(xproj.shape)}, "
                         f"{tuple(values_t.shape)}")
    T, B, GH = xproj.shape
    H = GH // G
    nnzb, bw, bh = values_t.shape
    Ro = crow.numel() - 1
    Ci = -(-H // bw)
    if GH != G * H or h0.shape != (B, H) or (lstm and c0.shape != (B, H)) or Ro * bh < GH or Ro < 1 \
            or cols.numel() != nnzb or (bias is not None and bias.shape != (GH,)):
        raise ValueError(f"shapes do not fit an {'LSTM' if lstm else 'GRU'} layer: xproj {tuple(xproj.shape)}, "
                         f"values {tuple(values_t.shape)}, {Ro} block rows, h0 {tuple(h0.shape)}"
                         + (f", c0 {tuple(c0.shape)}" if lstm else "")
                         + ("" if bias is None else f", bias {tuple(bias.shape)}"))
    if not index_checked:
        crow, cols = check_bsr_index(crow, cols, Ci, nnzb)
    if out is None:
        out = torch.empty(T, B, H, dtype=dtype)
    elif out.shape != (T, B, H) or out.dtype != dtype or out.stride(2) != 1 or not out.is_cpu:
        raise ValueError(f"out must be a ({T}, {B}, {H}) {dtype} CPU tensor with a contiguous last dimension, "
                         f"got {tuple(out.shape)} {out.dtype} strides {out.stride()}")
    xproj, values_t, h0 = xproj.contiguous(), values_t.contiguous(), h0.contiguous()
    c0 = c0.contiguous() if lstm else None
    bias = bias.contiguous() if bias is not None else None
    hT = torch.empty(B, H, dtype=dtype)
    cT = torch.empty(B, H, dtype=dtype) if lstm else None
    fn = lib.rnn_layer_f32 if dtype == torch.float32 else lib.rnn_layer_f64
    rc = fn(xproj.data_ptr(), T, B, H, 0 if lstm else 1, int(bool(reverse)), values_t.data_ptr(), crow.data_ptr(),
            cols.data_ptr(), Ro, Ci, bw, bh, None if bias is None else bias.data_ptr(), h0.data_ptr(),
            c0.data_ptr() if lstm else None, out.data_ptr(), out.stride(0), out.stride(1), hT.data_ptr(),
            cT.data_ptr() if lstm else None, RNN_THREADS if threads is None else threads)
    if rc != 0:
        raise MemoryError("the native RNN kernel could not allocate its state buffers")
    return out, hT, cT


def check_bsr_index(crow: torch.Tensor, cols: torch.Tensor, Ci: int, nnzb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(crow, cols)`` as contiguous int64 after checking that they index ``nnzb`` blocks in
    ``Ci`` block columns (``crow`` starts at 0, ends at ``nnzb``, never decreases; every column in
    range); ValueError otherwise. The native kernels trust these indices."""
    crow = crow.to(torch.int64).contiguous()
    cols = cols.to(torch.int64).contiguous()
    if crow.dim() != 1 or cols.shape != (nnzb,) or crow.numel() < 2 or int(crow[0]) != 0 or int(crow[-1]) != nnzb \
            or bool((crow[1:] < crow[:-1]).any()) or (nnzb and (int(cols.min()) < 0 or int(cols.max()) >= Ci)):
        raise ValueError(f"crow/cols are not a BSR index of {crow.numel() - 1} block rows, {Ci} block columns and "
                         f"{nnzb} blocks")
    return crow, cols


def block_linear(x2: torch.Tensor, values_t: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor,
                 bias: torch.Tensor | None, in_features: int, out_features: int,
                 index_checked: bool = False) -> torch.Tensor:
    """``x2 (B, in) -> (B, out)``: a BSR product with transposed blocks (``values_t (nnzb, bw, bh)``)
    plus ``bias``, in one native call; what a streaming step uses for its input projection at
    small batch, where the torch op's gather, copy and batched matmul cost more than the product.
    Same checks and ``index_checked`` meaning as :func:`rnn_layer`."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"native block kernel unavailable: {unavailable_reason()}")
    dtype = x2.dtype
    tensors = [t for t in (x2, values_t, bias) if t is not None]
    if dtype not in (torch.float32, torch.float64) or any(t.dtype != dtype for t in tensors):
        raise TypeError(f"the native block kernel takes fp32 or fp64 (all alike), got {[t.dtype for t in tensors]}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError("the native block kernel is inference-only: run it under torch.no_grad()")
    nnzb, bw, bh = values_t.shape
    Ro, Ci = crow.numel() - 1, -(-in_features // bw)
    if x2.dim() != 2 or x2.shape[1] != in_features or Ro * bh < out_features or Ro < 1 \
            or (bias is not None and bias.shape != (out_features,)) or any(not t.is_cpu for t in tensors):
        raise ValueError(f"shapes do not fit: x {tuple(x2.shape)}, values {tuple(values_t.shape)}, {Ro} block rows, "
                         f"in {in_features}, out {out_features}")
    if not index_checked:
        crow, cols = check_bsr_index(crow, cols, Ci, nnzb)
    x = pad_columns(x2, Ci * bw).contiguous()
    values_t = values_t.contiguous()
    bias = bias.contiguous() if bias is not None else None
    B = x.shape[0]
    y = torch.empty(B, Ro * bh, dtype=dtype)
    fn = lib.block_linear_f32 if dtype == torch.float32 else lib.block_linear_f64
    fn(x.data_ptr(), B, values_t.data_ptr(), crow.data_ptr(), cols.data_ptr(), Ro, Ci, bw, bh,
       None if bias is None else bias.data_ptr(), out_features, y.data_ptr())
    return y if Ro * bh == out_features else y[:, :out_features]


class StepPlan:
    """A streaming step of a stacked unidirectional LSTM/GRU in two native calls per layer (the
    input projection, then the recurrent product and gates), with every size, dtype and index
    checked once, when the plan is built, instead of on every step.

    Why: at batch 1 a 2-layer 1024-wide LSTM at 90% block sparsity spends about 120 us per step in
    the four C calls and was spending about 370 us more in their Python wrappers' checks and in the
    step's own bookkeeping (warm caches, one thread): the wrappers are written for any caller and
    check everything on every call. A plan is built from the layers' ``(values_t, crow, cols,
    bias)`` for ``W_ih`` and ``W_hh`` (each index already through :func:`check_bsr_index`) and only
    runs inputs of its dtype whose sizes it checks per call (cheap integer comparisons); the caller keeps it only while the tensors it points at are unchanged
    (:attr:`key`)."""

    def __init__(self, layers: list[tuple[tuple, tuple]], input_size: int, hidden: int, lstm: bool, key: tuple):
        lib = library()
        if lib is None:
            raise RuntimeError(f"native kernels unavailable: {unavailable_reason()}")
        self.key, self.hidden, self.lstm = key, hidden, lstm
        G = 4 if lstm else 3
        first = layers[0][0][0]
        self.dtype = first.dtype
        f32 = self.dtype == torch.float32
        self._linear, self._rnn = (lib.block_linear_f32, lib.rnn_layer_f32) if f32 else (lib.block_linear_f64, lib.rnn_layer_f64)
        self.layers = []
        self.in_features = []
        self._keep = []  # the tensors the pointers below point into: alive as long as the plan
        for layer, ((values_i, crow_i, cols_i, bias_i, in_f, out_i), (values_h, crow_h, cols_h, bias_h, in_h, out_h)) \
                in enumerate(layers):
            tensors = [t for t in (values_i, bias_i, values_h, bias_h) if t is not None]
            if any(t.dtype != self.dtype or not t.is_cpu or not t.is_contiguous() for t in tensors):
                raise ValueError("a step plan takes contiguous CPU tensors of one dtype")
            nnz_i, bw_i, bh_i = values_i.shape
            nnz_h, bw_h, bh_h = values_h.shape
            Ro_i, Ro_h = crow_i.numel() - 1, crow_h.numel() - 1
            # the C code reads in_f columns of each layer's input (x, then the previous layer's h) and
            # Ci * bw of h for the recurrent product: every width must be the one the buffers have
            if in_f != (input_size if layer == 0 else hidden) or in_h != hidden or out_i != G * hidden \
                    or out_h != G * hidden or in_f % bw_i or hidden % bw_h \
                    or Ro_i * bh_i != G * hidden or Ro_h * bh_h != G * hidden \
                    or cols_i.numel() != nnz_i or cols_h.numel() != nnz_h \
                    or (nnz_i and int(cols_i.max()) >= in_f // bw_i) or (nnz_h and int(cols_h.max()) >= hidden // bw_h) \
                    or (bias_i is not None and bias_i.shape != (G * hidden,)) \
                    or (bias_h is not None and bias_h.shape != (G * hidden,)):
                raise ValueError("these layers' sizes or block grids do not tile their weights exactly: no step plan")
            # detached views: they hold the memory the pointers below point into, even when a
            # parameter's .data is swapped later (the caller's key then retires the plan)
            self._keep += [t.detach() for t in (values_i, crow_i, cols_i, bias_i, values_h, crow_h, cols_h, bias_h)
                           if t is not None]
            self.in_features.append(in_f)
            self.layers.append((
                (values_i.data_ptr(), crow_i.data_ptr(), cols_i.data_ptr(), Ro_i, in_f // bw_i, bw_i, bh_i,
                 None if bias_i is None else bias_i.data_ptr(), G * hidden),
                (values_h.data_ptr(), crow_h.data_ptr(), cols_h.data_ptr(), Ro_h, hidden // bw_h, bw_h, bh_h,
                 None if bias_h is None else bias_h.data_ptr())))

    def run(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None):
        """``(y (B, H), h (L, B, H), c (L, B, H) or None)`` for ``x (B, in)``, ``h0``/``c0 (L, B, H)``
        (any strides: copied when not contiguous); None when the inputs are not what the plan runs
        (dtype, device, sizes, autograd, tracing): the caller takes its general path."""
        dtype, H, L = self.dtype, self.hidden, len(self.layers)
        if x.dtype is not dtype or h0.dtype is not dtype or not x.is_cpu or not h0.is_cpu or x.dim() != 2 \
                or x.shape[1] != self.in_features[0]:
            return None
        B = x.shape[0]
        if h0.shape != (L, B, H) or (self.lstm and (c0 is None or c0.dtype is not dtype or not c0.is_cpu
                                                    or c0.shape != (L, B, H))):
            return None
        if torch.is_grad_enabled() and (x.requires_grad or h0.requires_grad or (c0 is not None and c0.requires_grad)):
            return None
        if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return None
        x, h0 = x.contiguous(), h0.contiguous()  # a column of a sequence (x[:, t]) is strided: small copies
        c0 = c0.contiguous() if self.lstm else None
        G = 4 if self.lstm else 3
        hN = torch.empty(L, B, H, dtype=dtype)
        cN = torch.empty(L, B, H, dtype=dtype) if self.lstm else None
        size = dtype.itemsize
        for layer, (lin, rec) in enumerate(self.layers):
            xproj = torch.empty(B, G * H, dtype=dtype)
            out = torch.empty(B, H, dtype=dtype)
            self._linear(x.data_ptr(), B, lin[0], lin[1], lin[2], lin[3], lin[4], lin[5], lin[6], lin[7], lin[8],
                         xproj.data_ptr())
            at = layer * B * H * size
            rc = self._rnn(xproj.data_ptr(), 1, B, H, 0 if self.lstm else 1, 0, rec[0], rec[1], rec[2], rec[3], rec[4],
                           rec[5], rec[6], rec[7], h0.data_ptr() + at, c0.data_ptr() + at if self.lstm else None,
                           out.data_ptr(), B * H, H, hN.data_ptr() + at, cN.data_ptr() + at if self.lstm else None,
                           RNN_THREADS)
            if rc != 0:
                raise MemoryError("the native RNN kernel could not allocate its state buffers")
            x = out
        return x, hN, cN
