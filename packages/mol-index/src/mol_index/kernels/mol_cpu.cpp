// Exact Mixture-of-Logits scores of queries against a corpus, fused, for x86-64 CPUs with AVX2 and FMA.
//
// For each (query, item) pair, in registers and a few KB of stack per tile of kTile items:
//   L[p]  = <f_a, g_b>            p = a * Px + b; f is pre-divided by the temperature
//   hid   = silu(L @ W1^T + b1)   the gating's pair-wise MLP, hidden width H
//   pair  = hid @ W2^T + b2
//   z     = silu(qf * ig + pair)  qf: the query's gating features, ig: the item's
//   score = sum_p exp(z_p - max z) L_p / sum_p exp(z_p - max z)
// Only the (B, N) scores are written. Built and loaded by mol_core/kernels/cpu_build.py; called through
// ctypes by mol_index/kernels/mol_cpu.py, which pads the small operands as described at mol_cpu_scores.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "avx2_math.h"

namespace {

using mol_avx2::exp256;
using mol_avx2::hmax;
using mol_avx2::hsum;
using mol_avx2::lane_mask;
using mol_avx2::silu256;

constexpr int kTile = 6;      // items per tile: 6 x 16 hidden units fill 12 of the 16 ymm registers
constexpr int kMaxP = 256;    // largest padded P
constexpr int kMaxH = 1024;   // largest padded H
constexpr int kBlock = 96;    // items per block; a block's items stay in L2 while the batch's queries pass
constexpr float kNoShiftBelow = 80.0f;  // gate values above this get the softmax's max shift
constexpr int kPrefetchTiles = 1;       // score_gathered starts loading the rows of the tile this many ahead

struct Shapes {
  int pq, px, d, p, p8, h16;
};

struct Operands {
  const float* fq;     // (B, pq8, d): query components / temperature, rows pq .. pq8-1 zero
  const float* qf;     // (B, p8): query gating features, zero padded
  const float* items;  // (N, px, d)
  const float* igate;  // (N, p)
  const float* w1t;    // (p, h16): hidden weight transposed, zero padded columns
  const float* b1;     // (h16)
  const float* w2t;    // (h16, p8): output weight transposed, zero padded
  const float* b2;     // (p8)
  float* out;          // (B, out_stride)
  int64_t batch, out_stride;
};

// Eight vectors -> one vector of their horizontal sums.
inline __m256 hsum8(const __m256* a) {
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}


// pair rows of three items (hidden rows h0, h1, h2), output columns [0, 8 * NJ).
template <int NJ>
inline void out_layer(const float* h0, const float* h1, const float* h2, const float* w2t, int stride, int h16,
                      const float* b2, float* p0, float* p1, float* p2) {
  __m256 a[NJ], c[NJ], e[NJ];
#pragma GCC unroll 4
  for (int j = 0; j < NJ; ++j) a[j] = c[j] = e[j] = _mm256_setzero_ps();  // the bias comes last, as in torch
  for (int h = 0; h < h16; ++h) {
    const float* w = w2t + static_cast<int64_t>(h) * stride;
    const __m256 x = _mm256_broadcast_ss(h0 + h), y = _mm256_broadcast_ss(h1 + h), z = _mm256_broadcast_ss(h2 + h);
#pragma GCC unroll 4
    for (int j = 0; j < NJ; ++j) {
      const __m256 wj = _mm256_loadu_ps(w + 8 * j);
      a[j] = _mm256_fmadd_ps(x, wj, a[j]);
      c[j] = _mm256_fmadd_ps(y, wj, c[j]);
      e[j] = _mm256_fmadd_ps(z, wj, e[j]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NJ; ++j) {
    const __m256 bias = _mm256_loadu_ps(b2 + 8 * j);
    _mm256_storeu_ps(p0 + 8 * j, _mm256_add_ps(a[j], bias));
    _mm256_storeu_ps(p1 + 8 * j, _mm256_add_ps(c[j], bias));
    _mm256_storeu_ps(p2 + 8 * j, _mm256_add_ps(e[j], bias));
  }
}

// Scores of kTile items (items, igate point at the first) for one query (fq, qf point at its rows).
// Template arguments other than 0 fix a shape at compile time (the loops then unroll); 0 reads it from s.
template <int kPq, int kPx, int kD, int kH16>
void score_tile(const Shapes& shapes, const float* fq, const float* qf, const float* items, const float* igate,
                const Operands& op, float* out, float* logits_out = nullptr) {
  constexpr bool kFixed = kPq > 0;
  const Shapes s = kFixed ? Shapes{kPq, kPx, kD, kPq * kPx, (kPq * kPx + 7) / 8 * 8, kH16} : shapes;
  alignas(32) float logit[kTile][kFixed ? (kPq * kPx + 7) / 8 * 8 : kMaxP];
  alignas(32) float hidden[kTile][kFixed ? kH16 : kMaxH];
  alignas(32) float pair[kTile][kFixed ? (kPq * kPx + 7) / 8 * 8 : kMaxP];
  const int pq8 = (s.pq + 7) / 8 * 8;

  // 1. component logits; lanes p .. p8-1 zero
  for (int i = 0; i < kTile; ++i) {
    for (int p = s.p; p < s.p8; ++p) logit[i][p] = 0.0f;
    for (int b = 0; b < s.px; ++b) {
      const float* g = items + (static_cast<int64_t>(i) * s.px + b) * s.d;
      for (int a0 = 0; a0 < pq8; a0 += 8) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (int a = 0; a < 8; ++a) acc[a] = _mm256_setzero_ps();
        const float* f = fq + static_cast<int64_t>(a0) * s.d;
        for (int c = 0; c < s.d; c += 8) {
          const __m256 gv = _mm256_loadu_ps(g + c);
#pragma GCC unroll 8
          for (int a = 0; a < 8; ++a) acc[a] = _mm256_fmadd_ps(_mm256_loadu_ps(f + a * s.d + c), gv, acc[a]);
        }
        alignas(32) float sums[8];
        _mm256_store_ps(sums, hsum8(acc));
        const int count = std::min(8, s.pq - a0);
        for (int a = 0; a < count; ++a) logit[i][(a0 + a) * s.px + b] = sums[a];
      }
    }
  }

  if (logits_out != nullptr) {  // (kTile, p) component logits, for callers that fit on them
    for (int i = 0; i < kTile; ++i) std::memcpy(logits_out + static_cast<int64_t>(i) * s.p, logit[i], s.p * sizeof(float));
  }

  // 2. hidden = silu(logit @ W1^T + b1), kTile items x 16 units per register block
  for (int h = 0; h < s.h16; h += 16) {
    __m256 acc[kTile][2];
    const __m256 bias0 = _mm256_loadu_ps(op.b1 + h), bias1 = _mm256_loadu_ps(op.b1 + h + 8);
#pragma GCC unroll 8
    for (int i = 0; i < kTile; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();  // the bias comes last
    for (int p = 0; p < s.p; ++p) {
      const float* w = op.w1t + static_cast<int64_t>(p) * s.h16 + h;
      const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 8
      for (int i = 0; i < kTile; ++i) {
        const __m256 l = _mm256_broadcast_ss(&logit[i][p]);
        acc[i][0] = _mm256_fmadd_ps(l, w0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(l, w1, acc[i][1]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < kTile; ++i) {
      _mm256_store_ps(&hidden[i][h], silu256(_mm256_add_ps(acc[i][0], bias0)));
      _mm256_store_ps(&hidden[i][h + 8], silu256(_mm256_add_ps(acc[i][1], bias1)));
    }
  }

  // 3. pair = hidden @ W2^T + b2, three items x up to 32 outputs per register block
  for (int i = 0; i < kTile; i += 3) {
    for (int j0 = 0; j0 < s.p8; j0 += 32) {
      const float* w = op.w2t + j0;
      float* p0 = &pair[i][j0];
      float* p1 = &pair[i + 1][j0];
      float* p2 = &pair[i + 2][j0];
      const float* b2 = op.b2 + j0;
      switch (std::min(4, (s.p8 - j0) / 8)) {
        case 1: out_layer<1>(hidden[i], hidden[i + 1], hidden[i + 2], w, s.p8, s.h16, b2, p0, p1, p2); break;
        case 2: out_layer<2>(hidden[i], hidden[i + 1], hidden[i + 2], w, s.p8, s.h16, b2, p0, p1, p2); break;
        case 3: out_layer<3>(hidden[i], hidden[i + 1], hidden[i + 2], w, s.p8, s.h16, b2, p0, p1, p2); break;
        default: out_layer<4>(hidden[i], hidden[i + 1], hidden[i + 2], w, s.p8, s.h16, b2, p0, p1, p2); break;
      }
    }
  }

  // 4. gate = silu(qf * ig + pair); score = softmax(gate) . logit over the p real lanes
  const int chunks = s.p8 / 8;
  const bool ragged = s.p != s.p8;  // the last chunk has lanes beyond p
  const __m256i tail = lane_mask(s.p - (chunks - 1) * 8);
  const __m256 minus_inf = _mm256_set1_ps(-INFINITY);
  __m256 sums[16];
  sums[12] = sums[13] = sums[14] = sums[15] = _mm256_setzero_ps();
  for (int i = 0; i < kTile; ++i) {
    const float* ig = igate + static_cast<int64_t>(i) * s.p;
    __m256 gate[kFixed ? (kPq * kPx + 7) / 8 : kMaxP / 8];
    __m256 best = minus_inf;
    for (int j = 0; j < chunks; ++j) {
      const bool last = ragged && j == chunks - 1;
      const __m256 item_part = last ? _mm256_maskload_ps(ig + 8 * j, tail) : _mm256_loadu_ps(ig + 8 * j);
      __m256 z = silu256(_mm256_fmadd_ps(_mm256_loadu_ps(qf + 8 * j), item_part, _mm256_load_ps(&pair[i][8 * j])));
      if (last) z = _mm256_blendv_ps(minus_inf, z, _mm256_castsi256_ps(tail));
      gate[j] = z;
      best = _mm256_max_ps(best, z);
    }
    // SiLU >= -0.28, so exp(z) cannot underflow; subtract the maximum only where exp(z) could overflow
    const bool large = _mm256_movemask_ps(_mm256_cmp_ps(best, _mm256_set1_ps(kNoShiftBelow), _CMP_GT_OQ)) != 0;
    const __m256 top = large ? _mm256_set1_ps(hmax(best)) : _mm256_setzero_ps();
    __m256 num = _mm256_setzero_ps(), den = _mm256_setzero_ps();
    for (int j = 0; j < chunks; ++j) {
      __m256 e = exp256(_mm256_sub_ps(gate[j], top));
      if (ragged && j == chunks - 1) e = _mm256_and_ps(e, _mm256_castsi256_ps(tail));
      den = _mm256_add_ps(den, e);
      num = _mm256_fmadd_ps(e, _mm256_load_ps(&logit[i][8 * j]), num);
    }
    sums[2 * i] = num;
    sums[2 * i + 1] = den;
  }
  // horizontal sums of all six items at once: lanes (num_i, den_i) pairs
  alignas(32) float reduced[16];
  _mm256_store_ps(reduced, hsum8(sums));
  _mm256_store_ps(reduced + 8, hsum8(sums + 8));
#pragma GCC unroll 6
  for (int i = 0; i < kTile; ++i) out[i] = reduced[2 * i] / reduced[2 * i + 1];
}

// Items [start, stop), a multiple of kTile apart, for every query.
template <int kPq, int kPx, int kD, int kH16>
void score_range(const Shapes& s, const Operands& op, int64_t start, int64_t stop) {
  const int64_t item_floats = static_cast<int64_t>(s.px) * s.d;
  const int pq8 = (s.pq + 7) / 8 * 8;
  for (int64_t block = start; block < stop; block += kBlock) {
    const int64_t end = std::min(stop, block + kBlock);
    for (int64_t q = 0; q < op.batch; ++q) {
      const float* fq = op.fq + q * pq8 * s.d;
      const float* qf = op.qf + q * s.p8;
      for (int64_t i = block; i < end; i += kTile) {
        score_tile<kPq, kPx, kD, kH16>(s, fq, qf, op.items + i * item_floats, op.igate + i * s.p, op, op.out + q * op.out_stride + i);
      }
    }
  }
}

// The last n % kTile items, through a zero-padded copy (same arithmetic as a full tile).
template <int kPq, int kPx, int kD, int kH16>
void score_tail(const Shapes& s, const Operands& op, int64_t first, int64_t n) {
  const int64_t count = n - first;
  if (count <= 0) return;
  const int64_t item_floats = static_cast<int64_t>(s.px) * s.d;
  std::vector<float> items(kTile * item_floats, 0.0f), igate(kTile * s.p, 0.0f);
  std::memcpy(items.data(), op.items + first * item_floats, count * item_floats * sizeof(float));
  std::memcpy(igate.data(), op.igate + first * s.p, count * s.p * sizeof(float));
  const int pq8 = (s.pq + 7) / 8 * 8;
  float scores[kTile];
  for (int64_t q = 0; q < op.batch; ++q) {
    score_tile<kPq, kPx, kD, kH16>(s, op.fq + q * pq8 * s.d, op.qf + q * s.p8, items.data(), igate.data(), op, scores);
    for (int64_t i = 0; i < count; ++i) op.out[q * op.out_stride + first + i] = scores[i];
  }
}

// Every item for every query: threads split the full tiles, the caller's thread scores the tail.
template <int kPq, int kPx, int kD, int kH16>
void score_all(const Shapes& s, const Operands& op, int64_t n, int threads) {
  const int64_t full = n / kTile * kTile;
  const int64_t tiles = full / kTile;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, tiles / 16));
  if (workers <= 1) {
    score_range<kPq, kPx, kD, kH16>(s, op, 0, full);
  } else {
    std::vector<std::thread> pool;
    const int64_t per = (tiles + workers - 1) / workers * kTile;
    for (int64_t w = 1; w < workers; ++w) {
      const int64_t start = std::min(full, w * per), stop = std::min(full, (w + 1) * per);
      if (start < stop) pool.emplace_back(score_range<kPq, kPx, kD, kH16>, std::cref(s), std::cref(op), start, stop);
    }
    score_range<kPq, kPx, kD, kH16>(s, op, 0, std::min(full, per));
    for (auto& t : pool) t.join();
  }
  score_tail<kPq, kPx, kD, kH16>(s, op, full, n);
}

// Where score_gathered writes each candidate's features: p component logits, then (with_gating) its p
// item gating features, the row of (query q, candidate j) at data + q * query_stride + j * row_stride.
struct FeatureOut {
  float* data;
  int64_t query_stride, row_stride;
  bool with_gating;
};

// Per-query candidate rows: tiles of kTile candidates of one query, gathered into a local buffer; the
// threads split the (query, tile) pairs.
template <int kPq, int kPx, int kD, int kH16>
void score_gathered(const Shapes& s, const Operands& op, const int64_t* rows, int64_t width,
                    const FeatureOut& features, int threads) {
  const int64_t item_floats = static_cast<int64_t>(s.px) * s.d;
  const int pq8 = (s.pq + 7) / 8 * 8;
  const int64_t per_query = (width + kTile - 1) / kTile;
  const int64_t tiles = op.batch * per_query;
  // The rows of tile t are scattered over the table: start loading them a few tiles before they are scored.
  auto prefetch_tile = [&](int64_t t) {
    const int64_t q = t / per_query, j0 = (t % per_query) * kTile;
    const int64_t count = std::min<int64_t>(kTile, width - j0);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t row = rows[q * width + j0 + i];
      const char* item = reinterpret_cast<const char*>(op.items + row * item_floats);
      for (int64_t byte = 0; byte < item_floats * 4; byte += 64) __builtin_prefetch(item + byte);
      const char* gate = reinterpret_cast<const char*>(op.igate + row * s.p);
      for (int64_t byte = 0; byte < static_cast<int64_t>(s.p) * 4; byte += 64) __builtin_prefetch(gate + byte);
    }
  };
  auto run = [&](int64_t first, int64_t last) {
    std::vector<float> items(kTile * item_floats), igate(kTile * s.p), tile_logits(kTile * s.p);
    float scores[kTile];
    for (int64_t t = first + 1; t < std::min(last, first + kPrefetchTiles); ++t) prefetch_tile(t);
    for (int64_t t = first; t < last; ++t) {
      if (t + kPrefetchTiles < last) prefetch_tile(t + kPrefetchTiles);
      const int64_t q = t / per_query, j0 = (t % per_query) * kTile;
      const int64_t count = std::min<int64_t>(kTile, width - j0);
      for (int64_t i = 0; i < kTile; ++i) {
        const int64_t row = i < count ? rows[q * width + j0 + i] : rows[q * width + j0];  // pad with a copy
        std::memcpy(items.data() + i * item_floats, op.items + row * item_floats, item_floats * sizeof(float));
        std::memcpy(igate.data() + i * s.p, op.igate + row * s.p, s.p * sizeof(float));
      }
      score_tile<kPq, kPx, kD, kH16>(s, op.fq + q * pq8 * s.d, op.qf + q * s.p8, items.data(), igate.data(), op,
                                     scores, features.data != nullptr ? tile_logits.data() : nullptr);
      for (int64_t i = 0; i < count; ++i) op.out[q * op.out_stride + j0 + i] = scores[i];
      if (features.data != nullptr) {
        for (int64_t i = 0; i < count; ++i) {
          float* row_out = features.data + q * features.query_stride + (j0 + i) * features.row_stride;
          std::memcpy(row_out, tile_logits.data() + i * s.p, s.p * sizeof(float));
          if (features.with_gating) std::memcpy(row_out + s.p, igate.data() + i * s.p, s.p * sizeof(float));
        }
      }
    }
  };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, tiles / 16));
  if (workers <= 1) {
    run(0, tiles);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (tiles + workers - 1) / workers;
  for (int64_t w = 1; w < workers; ++w) {
    const int64_t first = std::min(tiles, w * per), last = std::min(tiles, (w + 1) * per);
    if (first < last) pool.emplace_back(run, first, last);
  }
  run(0, std::min(tiles, per));
  for (auto& t : pool) t.join();
}

}  // namespace

extern "C" {

// Limits of this build; mol_cpu.py refuses shapes beyond them before calling.
int mol_cpu_max_padded_components() { return kMaxP; }
int mol_cpu_max_padded_hidden() { return kMaxH; }

// Writes out[q * out_stride + i] for q < batch, i < n. pq8 = pq rounded up to 8, p = pq * px, p8 = p
// rounded up to 8; h16 = the hidden width rounded up to 16 (padded hidden units have zero weights and bias,
// so silu(0) = 0 adds nothing). Returns 0, or 1 when a shape is outside this build's limits (d not a
// positive multiple of 8, p8 > kMaxP, h16 not a positive multiple of 16 or > kMaxH).
int mol_cpu_scores(const float* fq, const float* qf, const float* items, const float* igate, const float* w1t,
                   const float* b1, const float* w2t, const float* b2, int64_t batch, int64_t n, int pq, int px,
                   int d, int h16, int threads, float* out, int64_t out_stride) {
  const int p = pq * px;
  const Shapes s{pq, px, d, p, (p + 7) / 8 * 8, h16};
  if (d <= 0 || d % 8 != 0 || pq <= 0 || px <= 0 || s.p8 > kMaxP || h16 <= 0 || h16 % 16 != 0 || h16 > kMaxH) {
    return 1;
  }
  const Operands op{fq, qf, items, igate, w1t, b1, w2t, b2, out, batch, out_stride};
  if (pq == 8 && px == 4 && d == 64 && h16 == 128) {  // the default MoL shape, unrolled
    score_all<8, 4, 64, 128>(s, op, n, threads);
  } else {
    score_all<0, 0, 0, 0>(s, op, n, threads);
  }
  return 0;
}

// Scores of per-query candidates: out[q * out_stride + j] for the corpus row rows[q * width + j] (every row
// in [0, N): the caller clamps padding and masks it after), and, when features is not null, their component
// logits features[q * query_stride + j * row_stride + a * px + b], followed, when with_gating is not 0, by
// the item's p gating features. Operands and return value as mol_cpu_scores.
int mol_cpu_scores_gathered(const float* fq, const float* qf, const float* items, const float* igate,
                            const float* w1t, const float* b1, const float* w2t, const float* b2,
                            const int64_t* rows, int64_t batch, int64_t width, int pq, int px, int d, int h16,
                            int threads, float* out, int64_t out_stride, float* features, int64_t query_stride,
                            int64_t row_stride, int with_gating) {
  const int p = pq * px;
  const Shapes s{pq, px, d, p, (p + 7) / 8 * 8, h16};
  if (d <= 0 || d % 8 != 0 || pq <= 0 || px <= 0 || s.p8 > kMaxP || h16 <= 0 || h16 % 16 != 0 || h16 > kMaxH) {
    return 1;
  }
  const Operands op{fq, qf, items, igate, w1t, b1, w2t, b2, out, batch, out_stride};
  const FeatureOut feature_out{features, query_stride, row_stride, with_gating != 0};
  if (width <= 0) return 0;
  if (pq == 8 && px == 4 && d == 64 && h16 == 128) {
    score_gathered<8, 4, 64, 128>(s, op, rows, width, feature_out, threads);
  } else {
    score_gathered<0, 0, 0, 0>(s, op, rows, width, feature_out, threads);
  }
  return 0;
}

}  // extern "C"
