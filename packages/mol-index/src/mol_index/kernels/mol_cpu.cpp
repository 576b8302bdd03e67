// Exact Mixture-of-Logits scores of queries against a corpus, fused, for x86-64 CPUs with AVX2 and FMA, or
// AVX-512F when built with -DMOL_AVX512 (mol_core/kernels/simd.h).
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

#include "simd.h"

namespace {

namespace v = mol_simd;
using v::vec;

constexpr int L = v::kLanes;  // floats per vector: 8 (AVX2) or 16 (AVX-512)
constexpr int kTile = 6;      // items per tile: 6 x 2 vectors of hidden units, 12 accumulator registers
constexpr int kMaxP = 256;    // largest padded P
constexpr int kMaxH = 1024;   // largest padded H
constexpr int kBlock = 96;    // items per block; a block's items stay in L2 while the batch's queries pass
constexpr float kNoShiftBelow = 80.0f;  // gate values above this get the softmax's max shift
constexpr int kPrefetchTiles = 1;       // score_gathered starts loading the rows of the tile this many ahead

constexpr int padded(int size, int multiple) { return (size + multiple - 1) / multiple * multiple; }

struct Shapes {
  int pq, px, d, p, p_pad, h_pad;  // p_pad: p rounded up to a vector; h_pad: the hidden width, to two
};

struct Operands {
  const float* fq;     // (B, pq8, d): query components / temperature, rows pq .. pq8-1 zero
  const float* qf;     // (B, p_pad): query gating features, zero padded
  const float* items;  // (N, px, d)
  const float* igate;  // (N, p)
  const float* w1t;    // (p, h_pad): hidden weight transposed, zero padded columns
  const float* b1;     // (h_pad)
  const float* w2t;    // (h_pad, p_pad): output weight transposed, zero padded
  const float* b2;     // (p_pad)
  float* out;          // (B, out_stride)
  int64_t batch, out_stride;
};

// Eight vectors of eight floats -> one vector of their horizontal sums.
inline __m256 hsum8(const __m256* a) {
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]), s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s45 = _mm256_hadd_ps(a[4], a[5]), s67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// pair rows of R items (hidden rows hid + r * hid_stride), output columns [0, L * NJ) (pair rows at
// pair + r * pair_stride): R * NJ accumulators.
template <int R, int NJ>
inline void out_layer(const float* hid, int hid_stride, const float* w2t, int stride, int h_pad, const float* b2,
                      float* pair, int pair_stride) {
  vec a[R][NJ];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NJ; ++j) a[r][j] = v::zero();  // the bias comes last, as in torch
  for (int h = 0; h < h_pad; ++h) {
    const float* w = w2t + static_cast<int64_t>(h) * stride;
    vec wj[NJ];
#pragma GCC unroll 4
    for (int j = 0; j < NJ; ++j) wj[j] = v::load(w + L * j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vec x = v::broadcast(hid + r * hid_stride + h);
#pragma GCC unroll 4
      for (int j = 0; j < NJ; ++j) a[r][j] = v::fma(x, wj[j], a[r][j]);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NJ; ++j) {
    const vec bias = v::load(b2 + L * j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) v::store(pair + r * pair_stride + L * j, v::add(a[r][j], bias));
  }
}

// Rows per register block of the output layer and vectors per row: 12 accumulators either way (3 x 4
// with AVX2's 8-float vectors, 6 x 2 with AVX-512's 16, where P is rarely more than two vectors).
constexpr int kOutRows = L == 16 ? 6 : 3;
constexpr int kOutVectors = 12 / kOutRows;

// Scores of kTile items (items, igate point at the first) for one query (fq, qf point at its rows).
// Template arguments other than 0 fix a shape at compile time (the loops then unroll); 0 reads it from s.
template <int kPq, int kPx, int kD, int kH>
void score_tile(const Shapes& shapes, const float* fq, const float* qf, const float* items, const float* igate,
                const Operands& op, float* out, float* logits_out = nullptr) {
  constexpr bool kFixed = kPq > 0;
  constexpr int kPPad = padded(kPq * kPx, L);
  const Shapes s = kFixed ? Shapes{kPq, kPx, kD, kPq * kPx, kPPad, kH} : shapes;
  alignas(64) float logit[kTile][kFixed ? kPPad : kMaxP];
  alignas(64) float hidden[kTile][kFixed ? kH : kMaxH];
  alignas(64) float pair[kTile][kFixed ? kPPad : kMaxP];
  const int pq8 = padded(s.pq, 8);

  // 1. component logits, eight query components at a time; lanes p .. p_pad-1 zero
  for (int i = 0; i < kTile; ++i) {
    for (int p = s.p; p < s.p_pad; ++p) logit[i][p] = 0.0f;
    for (int b = 0; b < s.px; ++b) {
      const float* g = items + (static_cast<int64_t>(i) * s.px + b) * s.d;
      for (int a0 = 0; a0 < pq8; a0 += 8) {
        vec acc[8];
#pragma GCC unroll 8
        for (int a = 0; a < 8; ++a) acc[a] = v::zero();
        const float* f = fq + static_cast<int64_t>(a0) * s.d;
        for (int c = 0; c < s.d; c += L) {
          const vec gv = v::load(g + c);
#pragma GCC unroll 8
          for (int a = 0; a < 8; ++a) acc[a] = v::fma(v::load(f + a * s.d + c), gv, acc[a]);
        }
        __m256 folded[8];
#pragma GCC unroll 8
        for (int a = 0; a < 8; ++a) folded[a] = v::fold(acc[a]);
        alignas(32) float sums[8];
        _mm256_store_ps(sums, hsum8(folded));
        const int count = std::min(8, s.pq - a0);
        for (int a = 0; a < count; ++a) logit[i][(a0 + a) * s.px + b] = sums[a];
      }
    }
  }

  if (logits_out != nullptr) {  // (kTile, p) component logits, for callers that fit on them
    for (int i = 0; i < kTile; ++i) std::memcpy(logits_out + static_cast<int64_t>(i) * s.p, logit[i], s.p * sizeof(float));
  }

  // 2. hidden = silu(logit @ W1^T + b1), kTile items x two vectors of units per register block
  for (int h = 0; h < s.h_pad; h += 2 * L) {
    vec acc[kTile][2];
    const vec bias0 = v::load(op.b1 + h), bias1 = v::load(op.b1 + h + L);
#pragma GCC unroll 8
    for (int i = 0; i < kTile; ++i) acc[i][0] = acc[i][1] = v::zero();  // the bias comes last
    for (int p = 0; p < s.p; ++p) {
      const float* w = op.w1t + static_cast<int64_t>(p) * s.h_pad + h;
      const vec w0 = v::load(w), w1 = v::load(w + L);
#pragma GCC unroll 8
      for (int i = 0; i < kTile; ++i) {
        const vec l = v::broadcast(&logit[i][p]);
        acc[i][0] = v::fma(l, w0, acc[i][0]);
        acc[i][1] = v::fma(l, w1, acc[i][1]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < kTile; ++i) {
      v::store(&hidden[i][h], v::silu(v::add(acc[i][0], bias0)));
      v::store(&hidden[i][h + L], v::silu(v::add(acc[i][1], bias1)));
    }
  }

  // 3. pair = hidden @ W2^T + b2, kOutRows items x up to kOutVectors vectors of outputs per register block
  constexpr int kHidStride = sizeof(hidden[0]) / sizeof(float), kPairStride = sizeof(pair[0]) / sizeof(float);
  for (int i = 0; i < kTile; i += kOutRows) {
    for (int j0 = 0; j0 < s.p_pad; j0 += kOutVectors * L) {
      const float* w = op.w2t + j0;
      const float* b2 = op.b2 + j0;
      const float* hid = hidden[i];
      float* out_rows = &pair[i][j0];
      const int vectors = std::min(kOutVectors, (s.p_pad - j0) / L);
      if (vectors == 1) {
        out_layer<kOutRows, 1>(hid, kHidStride, w, s.p_pad, s.h_pad, b2, out_rows, kPairStride);
      } else if (vectors == 2) {
        out_layer<kOutRows, 2>(hid, kHidStride, w, s.p_pad, s.h_pad, b2, out_rows, kPairStride);
      } else if constexpr (kOutVectors == 4) {
        if (vectors == 3) {
          out_layer<kOutRows, 3>(hid, kHidStride, w, s.p_pad, s.h_pad, b2, out_rows, kPairStride);
        } else {
          out_layer<kOutRows, 4>(hid, kHidStride, w, s.p_pad, s.h_pad, b2, out_rows, kPairStride);
        }
      }
    }
  }

  // 4. gate = silu(qf * ig + pair); score = softmax(gate) . logit over the p real lanes
  const int chunks = s.p_pad / L;
  const bool ragged = s.p != s.p_pad;  // the last chunk has lanes beyond p
  const int tail = s.p - (chunks - 1) * L;  // real lanes of the last chunk
  const vec minus_inf = v::set1(-INFINITY);
  __m256 sums[16];
  sums[12] = sums[13] = sums[14] = sums[15] = _mm256_setzero_ps();
  for (int i = 0; i < kTile; ++i) {
    const float* ig = igate + static_cast<int64_t>(i) * s.p;
    vec gate[kFixed ? kPPad / L : kMaxP / L];
    vec best = minus_inf;
    for (int j = 0; j < chunks; ++j) {
      const bool last = ragged && j == chunks - 1;
      const vec item_part = last ? v::load_first(ig + L * j, tail) : v::load(ig + L * j);
      vec z = v::silu(v::fma(v::load(qf + L * j), item_part, v::load(&pair[i][L * j])));
      if (last) z = v::keep_first(z, tail, minus_inf);
      gate[j] = z;
      best = v::max(best, z);
    }
    // SiLU >= -0.28, so exp(z) cannot underflow; subtract the maximum only where exp(z) could overflow
    const vec top = v::any_greater(best, kNoShiftBelow) ? v::set1(v::hmax(best)) : v::zero();
    vec num = v::zero(), den = v::zero();
    for (int j = 0; j < chunks; ++j) {
      vec e = v::exp(v::sub(gate[j], top));
      if (ragged && j == chunks - 1) e = v::keep_first(e, tail, v::zero());
      den = v::add(den, e);
      num = v::fma(e, v::load(&logit[i][L * j]), num);
    }
    sums[2 * i] = v::fold(num);
    sums[2 * i + 1] = v::fold(den);
  }
  // horizontal sums of all six items at once: lanes (num_i, den_i) pairs
  alignas(32) float reduced[16];
  _mm256_store_ps(reduced, hsum8(sums));
  _mm256_store_ps(reduced + 8, hsum8(sums + 8));
#pragma GCC unroll 6
  for (int i = 0; i < kTile; ++i) out[i] = reduced[2 * i] / reduced[2 * i + 1];
}

// Items [start, stop), a multiple of kTile apart, for every query.
template <int kPq, int kPx, int kD, int kH>
void score_range(const Shapes& s, const Operands& op, int64_t start, int64_t stop) {
  const int64_t item_floats = static_cast<int64_t>(s.px) * s.d;
  const int pq8 = padded(s.pq, 8);
  for (int64_t block = start; block < stop; block += kBlock) {
    const int64_t end = std::min(stop, block + kBlock);
    for (int64_t q = 0; q < op.batch; ++q) {
      const float* fq = op.fq + q * pq8 * s.d;
      const float* qf = op.qf + q * s.p_pad;
      for (int64_t i = block; i < end; i += kTile) {
        score_tile<kPq, kPx, kD, kH>(s, fq, qf, op.items + i * item_floats, op.igate + i * s.p, op, op.out + q * op.out_stride + i);
      }
    }
  }
}

// The last n % kTile items, through a zero-padded copy (same arithmetic as a full tile).
template <int kPq, int kPx, int kD, int kH>
void score_tail(const Shapes& s, const Operands& op, int64_t first, int64_t n) {
  const int64_t count = n - first;
  if (count <= 0) return;
  const int64_t item_floats = static_cast<int64_t>(s.px) * s.d;
  std::vector<float> items(kTile * item_floats, 0.0f), igate(kTile * s.p, 0.0f);
  std::memcpy(items.data(), op.items + first * item_floats, count * item_floats * sizeof(float));
  std::memcpy(igate.data(), op.igate + first * s.p, count * s.p * sizeof(float));
  const int pq8 = padded(s.pq, 8);
  float scores[kTile];
  for (int64_t q = 0; q < op.batch; ++q) {
    score_tile<kPq, kPx, kD, kH>(s, op.fq + q * pq8 * s.d, op.qf + q * s.p_pad, items.data(), igate.data(), op, scores);
    for (int64_t i = 0; i < count; ++i) op.out[q * op.out_stride + first + i] = scores[i];
  }
}

// Every item for every query: threads split the full tiles, the caller's thread scores the tail.
template <int kPq, int kPx, int kD, int kH>
void score_all(const Shapes& s, const Operands& op, int64_t n, int threads) {
  const int64_t full = n / kTile * kTile;
  const int64_t tiles = full / kTile;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, tiles / 16));
  if (workers <= 1) {
    score_range<kPq, kPx, kD, kH>(s, op, 0, full);
  } else {
    std::vector<std::thread> pool;
    const int64_t per = (tiles + workers - 1) / workers * kTile;
    for (int64_t w = 1; w < workers; ++w) {
      const int64_t start = std::min(full, w * per), stop = std::min(full, (w + 1) * per);
      if (start < stop) pool.emplace_back(score_range<kPq, kPx, kD, kH>, std::cref(s), std::cref(op), start, stop);
    }
    score_range<kPq, kPx, kD, kH>(s, op, 0, std::min(full, per));
    for (auto& t : pool) t.join();
  }
  score_tail<kPq, kPx, kD, kH>(s, op, full, n);
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
template <int kPq, int kPx, int kD, int kH>
void score_gathered(const Shapes& s, const Operands& op, const int64_t* rows, int64_t width,
                    const FeatureOut& features, int threads) {
  const int64_t item_floats = static_cast<int64_t>(s.px) * s.d;
  const int pq8 = padded(s.pq, 8);
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
      score_tile<kPq, kPx, kD, kH>(s, op.fq + q * pq8 * s.d, op.qf + q * s.p_pad, items.data(), igate.data(), op,
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

bool bad_shapes(const Shapes& s) {
  return s.d <= 0 || s.d % L != 0 || s.pq <= 0 || s.px <= 0 || s.p_pad > kMaxP || s.h_pad <= 0 ||
         s.h_pad % (2 * L) != 0 || s.h_pad > kMaxH;
}

}  // namespace

extern "C" {

// Limits of this build; mol_cpu.py refuses shapes beyond them before calling.
int mol_cpu_max_padded_components() { return kMaxP; }
int mol_cpu_max_padded_hidden() { return kMaxH; }
// Floats per vector of this build: 8 (AVX2) or 16 (AVX-512).
int mol_cpu_vector_floats() { return L; }

// Writes out[q * out_stride + i] for q < batch, i < n. pq8 = pq rounded up to 8, p = pq * px, p_pad = p
// rounded up to a vector (mol_cpu_vector_floats()); h_pad = the hidden width rounded up to two vectors
// (padded hidden units have zero weights and bias, so silu(0) = 0 adds nothing). Returns 0, or 1 when a shape is outside this build's limits (d not a
// positive multiple of a vector, p_pad > kMaxP, h_pad not a positive multiple of two vectors or > kMaxH).
int mol_cpu_scores(const float* fq, const float* qf, const float* items, const float* igate, const float* w1t,
                   const float* b1, const float* w2t, const float* b2, int64_t batch, int64_t n, int pq, int px,
                   int d, int h_pad, int threads, float* out, int64_t out_stride) {
  const int p = pq * px;
  const Shapes s{pq, px, d, p, padded(p, L), h_pad};
  if (bad_shapes(s)) return 1;
  const Operands op{fq, qf, items, igate, w1t, b1, w2t, b2, out, batch, out_stride};
  if (pq == 8 && px == 4 && d == 64 && h_pad == 128) {  // the default MoL shape, unrolled
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
                            const int64_t* rows, int64_t batch, int64_t width, int pq, int px, int d, int h_pad,
                            int threads, float* out, int64_t out_stride, float* features, int64_t query_stride,
                            int64_t row_stride, int with_gating) {
  const int p = pq * px;
  const Shapes s{pq, px, d, p, padded(p, L), h_pad};
  if (bad_shapes(s)) return 1;
  const Operands op{fq, qf, items, igate, w1t, b1, w2t, b2, out, batch, out_stride};
  const FeatureOut feature_out{features, query_stride, row_stride, with_gating != 0};
  if (width <= 0) return 0;
  if (pq == 8 && px == 4 && d == 64 && h_pad == 128) {
    score_gathered<8, 4, 64, 128>(s, op, rows, width, feature_out, threads);
  } else {
    score_gathered<0, 0, 0, 0>(s, op, rows, width, feature_out, threads);
  }
  return 0;
}

}  // extern "C"
