// MoL's pair-wise gating in training, forward and backward, fused, for x86-64 CPUs with AVX2 and FMA, or
// AVX-512F when built with -DMOL_AVX512 (simd.h).
//
// One group: `rows` query rows meet the same `cands` candidates; pair i = r * cands + x. The component
// logits come as the product of the query and candidate components, (rows * pq, cands * px), already
// divided by the temperature: l_ab of pair (r, x) sits at [(r * pq + a) * cands * px + x * px + b], and the
// gradient is written in the same layout. Per pair, from its logits l (p = pq * px), the query's gating
// features qg[r] and the candidate's ig[x] (p each) and the softmax dropout keep mask (p bytes, 0 or 1):
//   pre = W1 l + b1 (H), h = silu(pre), gl = qg[r] * ig[x] + W2 h + b2 (p), z = silu(gl)
//   e = exp(z - max z) * keep, score = sum e l / sum e
// Backward, from u = dLoss/dscore and w = e / sum e:
//   gg = u w (l - score) silu'(gl)                   dLoss/dgl
//   dLoss/dl = u w + W1^T (silu'(pre) * (W2^T gg))
//   dLoss/dqg[r] = sum_x gg ig[x], dLoss/dig[x] = sum_r gg qg[r]
//   dLoss/dW2 = sum gg h^T, dLoss/db2 = sum gg, dLoss/dW1 = sum gpre l^T, dLoss/db1 = sum gpre
// The hidden layer never leaves a tile of kTile pairs (it is recomputed in backward). Built by
// mol_core/kernels/cpu_build.py with -DMOL_HIDDEN (the hidden width padded to two vectors: 16 floats for
// AVX2, 32 for AVX-512) and -DMOL_COMPONENTS (p padded to one vector: 8 or 16);
// called through ctypes by mol_core/similarity/gating_cpp.py. Threads split the pairs; each keeps its own
// gradient sums, added up at the end.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "simd.h"

#ifndef MOL_HIDDEN
#define MOL_HIDDEN 128
#endif
#ifndef MOL_COMPONENTS
#define MOL_COMPONENTS 48
#endif

namespace {

namespace v = mol_simd;
using v::vec;

constexpr int L = v::kLanes;         // floats per vector
constexpr int H = MOL_HIDDEN;        // padded hidden width: padded units have zero weights and bias (silu(0) = 0)
constexpr int PP = MOL_COMPONENTS;   // padded number of components
constexpr int HC = H / (2 * L);      // chunks of two vectors of hidden units
constexpr int PV = PP / L;           // vectors of components
constexpr int kTile = 4;             // pairs per tile
static_assert(H % (2 * L) == 0 && H > 0 && PP % L == 0 && PP > 0,
              "MOL_HIDDEN must be a multiple of two vectors, MOL_COMPONENTS of one");

struct Group {
  int64_t rows, cands;
  int pq, px, p;
  const float* logits;  // (rows * pq, cands * px)
  const float* qg;      // (rows, p)
  const float* ig;      // (cands, p)
  const uint8_t* keep;  // (rows * cands, p)
};

struct Weights {
  const float* w1t;  // (p, H): the hidden layer's weight transposed, padded columns zero
  const float* b1;   // (H)
  const float* w2t;  // (H, PP): the output layer's weight transposed, padded rows and columns zero
  const float* b2;   // (PP)
  const float* w1h;  // (H, PP): the hidden layer's weight, padded rows and columns zero
  const float* w2;   // (p, H): the output layer's weight, padded columns zero
};

// out[t][0..H) = bias + sum_q x[t][q] w[q][0..H) for q < p (w: (p, H)); bias may be null.
inline void rows_times(const float (*x)[PP], int p, const float* w, const float* bias, float (*out)[H]) {
  for (int c = 0; c < HC; ++c) {
    vec a[kTile][2];
    const vec b0 = bias ? v::load(bias + 2 * L * c) : v::zero();
    const vec b1 = bias ? v::load(bias + 2 * L * c + L) : v::zero();
    for (int t = 0; t < kTile; ++t) {
      a[t][0] = b0;
      a[t][1] = b1;
    }
    for (int q = 0; q < p; ++q) {
      const float* wq = w + static_cast<int64_t>(q) * H + 2 * L * c;
      const vec w0 = v::load(wq), w1 = v::load(wq + L);
#pragma GCC unroll 4
      for (int t = 0; t < kTile; ++t) {
        const vec s = v::broadcast(&x[t][q]);
        a[t][0] = v::fma(s, w0, a[t][0]);
        a[t][1] = v::fma(s, w1, a[t][1]);
      }
    }
    for (int t = 0; t < kTile; ++t) {
      v::store(&out[t][2 * L * c], a[t][0]);
      v::store(&out[t][2 * L * c + L], a[t][1]);
    }
  }
}

// out[t][vectors j0 .. j0 + NJ) (+)= sum_h x[t][h] w[h][...] (w: (H, PP)).
template <int NJ>
inline void hidden_times_part(const float (*x)[H], const float* w, int j0, float (*out)[PP], bool accumulate) {
  vec a[kTile][NJ];
  for (int t = 0; t < kTile; ++t)
    for (int j = 0; j < NJ; ++j) a[t][j] = accumulate ? v::load(&out[t][L * (j0 + j)]) : v::zero();
  for (int h = 0; h < H; ++h) {
    const float* wh = w + static_cast<int64_t>(h) * PP + L * j0;
    vec wv[NJ];
#pragma GCC unroll 4
    for (int j = 0; j < NJ; ++j) wv[j] = v::load(wh + L * j);
#pragma GCC unroll 4
    for (int t = 0; t < kTile; ++t) {
      const vec s = v::broadcast(&x[t][h]);
#pragma GCC unroll 4
      for (int j = 0; j < NJ; ++j) a[t][j] = v::fma(s, wv[j], a[t][j]);
    }
  }
  for (int t = 0; t < kTile; ++t)
    for (int j = 0; j < NJ; ++j) v::store(&out[t][L * (j0 + j)], a[t][j]);
}

inline void hidden_times(const float (*x)[H], const float* w, float (*out)[PP], bool accumulate) {
  int j = 0;
  for (; j + 3 <= PV; j += 3) hidden_times_part<3>(x, w, j, out, accumulate);
  if (PV - j == 2) hidden_times_part<2>(x, w, j, out, accumulate);
  if (PV - j == 1) hidden_times_part<1>(x, w, j, out, accumulate);
}

// acc[q][0..H) += sum_t x[t][q] y[t][0..H) for q < p (acc: (p, H)).
inline void outer_accumulate(const float (*x)[PP], int p, const float (*y)[H], float* acc) {
  for (int c = 0; c < HC; ++c) {
    vec yv[kTile][2];
    for (int t = 0; t < kTile; ++t) {
      yv[t][0] = v::load(&y[t][2 * L * c]);
      yv[t][1] = v::load(&y[t][2 * L * c + L]);
    }
    for (int q = 0; q < p; ++q) {
      float* row = acc + static_cast<int64_t>(q) * H + 2 * L * c;
      vec a0 = v::load(row), a1 = v::load(row + L);
#pragma GCC unroll 4
      for (int t = 0; t < kTile; ++t) {
        const vec s = v::broadcast(&x[t][q]);
        a0 = v::fma(s, yv[t][0], a0);
        a1 = v::fma(s, yv[t][1], a1);
      }
      v::store(row, a0);
      v::store(row + L, a1);
    }
  }
}

// Vector j of a p-float row, lanes past p zero.
inline vec load_part(const float* row, int p, int j) { return v::load_first(row + L * j, p - L * j); }

// silu'(x) from x and sg = sigmoid(x): sg (1 + x (1 - sg)).
inline vec silu_grad(vec x, vec sg) { return v::mul(sg, v::fma(x, v::sub(v::set1(1.0f), sg), v::set1(1.0f))); }

// Pairs [i0, i0 + count) into zero-padded tiles: logits, qg * ig (when base is not null), keep as 0 / 1.
inline void load_tile(const Group& g, int64_t i0, int count, float (*l)[PP], float (*base)[PP], float (*keep)[PP]) {
  const int p = g.p;
  for (int t = 0; t < kTile; ++t) {
    std::memset(l[t], 0, sizeof(l[t]));
    std::memset(keep[t], 0, sizeof(keep[t]));
    if (base != nullptr) std::memset(base[t], 0, sizeof(base[t]));
    if (t >= count) continue;
    const int64_t i = i0 + t, r = i / g.cands, x = i % g.cands;
    for (int a = 0; a < g.pq; ++a) {
      std::memcpy(&l[t][a * g.px], g.logits + ((r * g.pq + a) * g.cands + x) * g.px, sizeof(float) * g.px);
    }
    const uint8_t* k = g.keep + i * p;
    for (int q = 0; q < p; ++q) keep[t][q] = k[q] ? 1.0f : 0.0f;
    if (base != nullptr) {
      for (int j = 0; j < PV; ++j) {
        v::store(&base[t][L * j], v::mul(load_part(g.qg + r * p, p, j), load_part(g.ig + x * p, p, j)));
      }
    }
  }
}

void forward_range(const Group& g, const Weights& w, int64_t first, int64_t last, float* scores, float* gate_logits) {
  const int p = g.p;
  alignas(64) float l[kTile][PP], base[kTile][PP], keep[kTile][PP], pair[kTile][PP], hid[kTile][H];
  const vec lowest = v::set1(-3.0e38f);
  for (int64_t i0 = first; i0 < last; i0 += kTile) {
    const int count = static_cast<int>(std::min<int64_t>(kTile, last - i0));
    load_tile(g, i0, count, l, base, keep);
    rows_times(l, p, w.w1t, w.b1, hid);
    for (int t = 0; t < kTile; ++t)
      for (int c = 0; c < H; c += L) {
        const vec x = v::load(&hid[t][c]);
        v::store(&hid[t][c], v::mul(x, v::sigmoid(x)));
      }
    hidden_times(hid, w.w2t, pair, false);
    for (int t = 0; t < count; ++t) {
      vec z[PV], gl[PV];
      vec top = lowest;
      for (int j = 0; j < PV; ++j) {
        const vec bias = v::load(w.b2 + L * j);
        gl[j] = v::add(v::load(&base[t][L * j]), v::add(v::load(&pair[t][L * j]), bias));
        z[j] = v::mul(gl[j], v::sigmoid(gl[j]));
        top = v::max(top, v::keep_first(z[j], p - L * j, lowest));
      }
      const vec shift = v::set1(v::hmax(top));
      vec num = v::zero(), den = v::zero();
      for (int j = 0; j < PV; ++j) {
        const vec e = v::mul(v::exp(v::sub(z[j], shift)), v::load(&keep[t][L * j]));
        den = v::add(den, e);
        num = v::fma(e, v::load(&l[t][L * j]), num);
        v::store(&pair[t][L * j], gl[j]);
      }
      scores[i0 + t] = v::hsum(num) / std::max(v::hsum(den), 1e-30f);
      std::memcpy(gate_logits + (i0 + t) * p, pair[t], sizeof(float) * p);
    }
  }
}

// Gradient sums of one thread: (p, H), (H), (p, H), (PP), (rows, p), (cands, p).
struct Sums {
  std::vector<float> w1t, b1, w2, b2, qg, ig;
  explicit Sums(const Group& g) : w1t(g.p * H), b1(H), w2(g.p * H), b2(PP), qg(g.rows * g.p), ig(g.cands * g.p) {}
};

void backward_range(const Group& g, const Weights& w, const float* gate_logits, const float* scores, const float* up,
                    int64_t first, int64_t last, float* grad_logits, Sums& sums) {
  const int p = g.p;
  alignas(64) float l[kTile][PP], glt[kTile][PP], keep[kTile][PP], gg[kTile][PP], gout[kTile][PP];
  alignas(64) float pre[kTile][H], hid[kTile][H], gpre[kTile][H];
  const vec lowest = v::set1(-3.0e38f);
  for (int64_t i0 = first; i0 < last; i0 += kTile) {
    const int count = static_cast<int>(std::min<int64_t>(kTile, last - i0));
    load_tile(g, i0, count, l, nullptr, keep);
    for (int t = 0; t < kTile; ++t) {
      std::memset(glt[t], 0, sizeof(glt[t]));
      std::memset(gg[t], 0, sizeof(gg[t]));
      std::memset(gout[t], 0, sizeof(gout[t]));
      if (t >= count) continue;
      const int64_t i = i0 + t;
      std::memcpy(glt[t], gate_logits + i * p, sizeof(float) * p);
      vec z[PV], sg[PV];
      vec top = lowest;
      for (int j = 0; j < PV; ++j) {
        const vec x = v::load(&glt[t][L * j]);
        sg[j] = v::sigmoid(x);
        z[j] = v::mul(x, sg[j]);
        top = v::max(top, v::keep_first(z[j], p - L * j, lowest));
      }
      const vec shift = v::set1(v::hmax(top));
      vec den = v::zero();
      for (int j = 0; j < PV; ++j) {
        z[j] = v::mul(v::exp(v::sub(z[j], shift)), v::load(&keep[t][L * j]));  // e
        den = v::add(den, z[j]);
      }
      const vec scale = v::set1(up[i] / std::max(v::hsum(den), 1e-30f));
      const vec score = v::set1(scores[i]);
      for (int j = 0; j < PV; ++j) {
        const vec uw = v::mul(z[j], scale);  // u w
        const vec diff = v::sub(v::load(&l[t][L * j]), score);
        v::store(&gg[t][L * j], v::mul(v::mul(uw, diff), silu_grad(v::load(&glt[t][L * j]), sg[j])));
        v::store(&gout[t][L * j], uw);
      }
      const int64_t r = i / g.cands, x = i % g.cands;
      float* sum_qg = sums.qg.data() + r * p;
      float* sum_ig = sums.ig.data() + x * p;
      const float* qg = g.qg + r * p;
      const float* ig = g.ig + x * p;
      for (int q = 0; q < p; ++q) {
        sum_qg[q] += gg[t][q] * ig[q];
        sum_ig[q] += gg[t][q] * qg[q];
      }
    }
    rows_times(l, p, w.w1t, w.b1, pre);
    rows_times(gg, p, w.w2, nullptr, gpre);  // W2^T gg
    for (int t = 0; t < kTile; ++t) {
      for (int c = 0; c < H; c += L) {
        const vec x = v::load(&pre[t][c]), sg = v::sigmoid(x);
        v::store(&hid[t][c], v::mul(x, sg));
        v::store(&gpre[t][c], v::mul(v::load(&gpre[t][c]), silu_grad(x, sg)));
      }
    }
    hidden_times(gpre, w.w1h, gout, true);  // += W1^T gpre
    outer_accumulate(gg, p, hid, sums.w2.data());
    outer_accumulate(l, p, gpre, sums.w1t.data());
    for (int t = 0; t < kTile; ++t) {
      for (int c = 0; c < H; c += L) v::store(&sums.b1[c], v::add(v::load(&sums.b1[c]), v::load(&gpre[t][c])));
      for (int j = 0; j < PV; ++j) v::store(&sums.b2[L * j], v::add(v::load(&sums.b2[L * j]), v::load(&gg[t][L * j])));
    }
    for (int t = 0; t < count; ++t) {
      const int64_t i = i0 + t, r = i / g.cands, x = i % g.cands;
      for (int a = 0; a < g.pq; ++a) {
        std::memcpy(grad_logits + ((r * g.pq + a) * g.cands + x) * g.px, &gout[t][a * g.px], sizeof(float) * g.px);
      }
    }
  }
}

// Splits [0, pairs) into at most `threads` ranges of whole tiles and runs fn(worker, first, last) on each.
template <typename Fn>
void split(int64_t pairs, int threads, Fn fn) {
  const int64_t tiles = (pairs + kTile - 1) / kTile;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, tiles / 64));
  const int64_t per = (tiles + workers - 1) / workers * kTile;
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < workers; ++k) {
    const int64_t first = std::min(pairs, k * per), last = std::min(pairs, (k + 1) * per);
    if (first < last) pool.emplace_back(fn, static_cast<int>(k), first, last);
  }
  fn(0, 0, std::min(pairs, per));
  for (auto& t : pool) t.join();
}

bool bad_shape(int64_t rows, int64_t cands, int pq, int px) {
  return rows < 0 || cands < 0 || pq <= 0 || px <= 0 || pq * px <= PP - L || pq * px > PP;
}

}  // namespace

extern "C" {

// The build's padded hidden width and component count.
int mol_gating_train_shape(int* hidden, int* components) {
  *hidden = H;
  *components = PP;
  return 0;
}

// Writes scores (rows * cands) and gate_logits (rows * cands, p). Returns 1 when pq * px does not fit this
// build.
int mol_gating_forward(int64_t rows, int64_t cands, int pq, int px, const float* logits, const float* qg, const float* ig,
                       const uint8_t* keep, const float* w1t, const float* b1, const float* w2t, const float* b2,
                       float* scores, float* gate_logits, int threads) {
  if (bad_shape(rows, cands, pq, px)) return 1;
  const Group g{rows, cands, pq, px, pq * px, logits, qg, ig, keep};
  const Weights w{w1t, b1, w2t, b2, nullptr, nullptr};
  split(rows * cands, threads, [&](int, int64_t first, int64_t last) { forward_range(g, w, first, last, scores, gate_logits); });
  return 0;
}

// Writes grad_logits (in the logits' layout), grad_qg (rows, p) and grad_ig (cands, p); adds the weight
// gradients to gw1t (p, H), gb1 (H), gw2 (p, H) and gb2 (PP). up: dLoss/dscore (rows * cands).
int mol_gating_backward(int64_t rows, int64_t cands, int pq, int px, const float* logits, const float* gate_logits,
                        const uint8_t* keep, const float* scores, const float* up, const float* qg, const float* ig,
                        const float* w1t, const float* b1, const float* w1h, const float* w2, float* grad_logits,
                        float* grad_qg, float* grad_ig, float* gw1t, float* gb1, float* gw2, float* gb2,
                        int threads) {
  if (bad_shape(rows, cands, pq, px)) return 1;
  const int p = pq * px;
  const Group g{rows, cands, pq, px, p, logits, qg, ig, keep};
  const Weights w{w1t, b1, nullptr, nullptr, w1h, w2};
  std::vector<Sums> sums;
  const int64_t tiles = (rows * cands + kTile - 1) / kTile;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, tiles / 64));
  for (int64_t k = 0; k < workers; ++k) sums.emplace_back(g);
  split(rows * cands, static_cast<int>(workers), [&](int k, int64_t first, int64_t last) {
    backward_range(g, w, gate_logits, scores, up, first, last, grad_logits, sums[k]);
  });
  std::fill(grad_qg, grad_qg + rows * p, 0.0f);
  std::fill(grad_ig, grad_ig + cands * p, 0.0f);
  for (const Sums& s : sums) {
    for (int64_t i = 0; i < p * H; ++i) {
      gw1t[i] += s.w1t[i];
      gw2[i] += s.w2[i];
    }
    for (int i = 0; i < H; ++i) gb1[i] += s.b1[i];
    for (int i = 0; i < PP; ++i) gb2[i] += s.b2[i];
    for (int64_t i = 0; i < rows * p; ++i) grad_qg[i] += s.qg[i];
    for (int64_t i = 0; i < cands * p; ++i) grad_ig[i] += s.ig[i];
  }
  return 0;
}

}  // extern "C"
