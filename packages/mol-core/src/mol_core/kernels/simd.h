// Width-generic float vectors for mol's C++ kernels: sixteen lanes of AVX-512F when the build defines
// MOL_AVX512 (with -mavx512f), else eight lanes of AVX2 and FMA (avx2_math.h). A kernel written against
// mol_simd:: compiles to either; cpu_build.py adds this folder to the include path and this file to the
// build's cache key. Both widths use the same exp polynomial; the reciprocal in sigmoid and SiLU is a
// division with AVX2 and an estimate plus one Newton step with AVX-512.
#ifndef MOL_SIMD_H_
#define MOL_SIMD_H_

#include <immintrin.h>

#include "avx2_math.h"

namespace mol_simd {

#ifdef MOL_AVX512

using vec = __m512;
constexpr int kLanes = 16;

inline vec load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline vec zero() { return _mm512_setzero_ps(); }
inline vec set1(float x) { return _mm512_set1_ps(x); }
inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
inline vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
// 1 / x: the 14-bit estimate and one Newton step (relative error about 2^-23; a division costs several
// times more on AVX-512 CPUs).
inline vec recip(vec x) {
  const vec r = _mm512_rcp14_ps(x);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
}
inline float hsum(vec v) { return _mm512_reduce_add_ps(v); }
inline float hmax(vec v) { return _mm512_reduce_max_ps(v); }
inline __mmask16 first(int count) {
  return count >= kLanes ? static_cast<__mmask16>(0xffff)
                         : static_cast<__mmask16>(count <= 0 ? 0 : (1u << count) - 1u);
}
// Lanes 0 .. count-1 of p, the others zero (nothing past them is read).
inline vec load_first(const float* p, int count) { return _mm512_maskz_loadu_ps(first(count), p); }
// v in lanes 0 .. count-1, fill in the others.
inline vec keep_first(vec v, int count, vec fill) { return _mm512_mask_blend_ps(first(count), fill, v); }

// The sum of the two halves: eight floats whose total is v's.
inline __m256 fold(vec v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
// Whether any lane of v is above x.
inline bool any_greater(vec v, float x) { return _mm512_cmp_ps_mask(v, _mm512_set1_ps(x), _CMP_GT_OQ) != 0; }

// exp(x) for each lane: avx2_math.h's exp256 at sixteen lanes (same clamp, reduction and polynomial).
inline vec exp(vec x) {
  x = _mm512_min_ps(x, set1(88.3762626647949f));
  x = _mm512_max_ps(x, set1(-87.3365447504f));
  const vec fx = _mm512_roundscale_ps(fma(x, set1(1.44269504088896341f), set1(0.5f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, set1(0.6931471805599453f), x);
  const vec z = mul(x, x);
  vec y = set1(0.00831255f);
  y = fma(y, x, set1(0.04189012f));
  y = fma(y, x, set1(0.16667114f));
  y = fma(y, x, set1(0.49999232f));
  y = fma(y, z, x);
  y = add(y, set1(1.0f));
  return _mm512_scalef_ps(y, fx);  // y * 2^fx
}

#else

using vec = __m256;
constexpr int kLanes = 8;

inline vec load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec zero() { return _mm256_setzero_ps(); }
inline vec set1(float x) { return _mm256_set1_ps(x); }
inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
inline vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c
// 1 / x (a division: measured faster than an estimate and a Newton step on an AVX2-only AMD EPYC).
inline vec recip(vec x) { return _mm256_div_ps(_mm256_set1_ps(1.0f), x); }
inline float hsum(vec v) { return mol_avx2::hsum(v); }
inline float hmax(vec v) { return mol_avx2::hmax(v); }
// Lanes 0 .. count-1 of p, the others zero (nothing past them is read).
inline vec load_first(const float* p, int count) {
  return count >= kLanes ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mol_avx2::lane_mask(count));
}
// v in lanes 0 .. count-1, fill in the others.
inline vec keep_first(vec v, int count, vec fill) {
  return _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(mol_avx2::lane_mask(count)));
}
inline __m256 fold(vec v) { return v; }  // eight floats whose total is v's
// Whether any lane of v is above x.
inline bool any_greater(vec v, float x) {
  return _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(x), _CMP_GT_OQ)) != 0;
}
inline vec exp(vec x) { return mol_avx2::exp256(x); }

#endif

inline vec broadcast(const float* p) { return set1(*p); }
// 1 / (1 + exp(-x)).
inline vec sigmoid(vec x) { return recip(add(set1(1.0f), exp(sub(zero(), x)))); }
// x * sigmoid(x).
inline vec silu(vec x) {
#ifdef MOL_AVX512
  return mul(x, sigmoid(x));
#else
  return mol_avx2::silu256(x);  // x / (1 + exp(-x)): one division
#endif
}

}  // namespace mol_simd

#endif  // MOL_SIMD_H_
