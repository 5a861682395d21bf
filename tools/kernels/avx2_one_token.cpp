// The AVX2 build's one-token product (generation without AVX-512), three ways, on one matrix of GPT-2 Small's
// block-matrix size (110,592 x 768 at 25 % density: 21 M kept weights, 85 MB of values, streamed from memory):
//   gather int16: the kernel's sparse_dot (scalar loads, 8 chains, int16 column indices, prefetch);
//   vgather: the same stream with vpgatherdps, 16 entries per iteration;
//   tzcnt xW: the pattern as a bitmap (4.5 bytes per kept weight instead of 6), each word's set bits walked
//   with tzcnt/blsr, W words side by side. Best of 7 passes, three rounds; the sums are checked against gather.
// Build and run (AVX2 code on any x86-64-v3 CPU):
//
//   g++ -O3 -march=x86-64-v3 -fopenmp -o /tmp/avx2_one_token tools/kernels/avx2_one_token.cpp
//   OMP_NUM_THREADS=1 /tmp/avx2_one_token; OMP_NUM_THREADS=2 /tmp/avx2_one_token
#include <immintrin.h>
#include <omp.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>
using clk = std::chrono::steady_clock;
constexpr int64_t AHEAD = 1024;

static float gather_dot(const int16_t* col, const float* val, int64_t p, int64_t end, const float* x) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; p + 8 <= end; p += 8) {
    _mm_prefetch((const char*)(val + p + AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char*)(col + p + AHEAD), _MM_HINT_T0);
    for (int u = 0; u < 8; u++) a[u] += val[p + u] * x[col[p + u]];
  }
  float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; p < end; p++) s += val[p] * x[col[p]];
  return s;
}

static float vgather_dot(const int16_t* col, const float* val, int64_t p, int64_t end, const float* x) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; p + 16 <= end; p += 16) {
    _mm_prefetch((const char*)(val + p + AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char*)(col + p + AHEAD), _MM_HINT_T0);
    __m256i i0 = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i*)(col + p)));
    __m256i i1 = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i*)(col + p + 8)));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + p), _mm256_i32gather_ps(x, i0, 4), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(val + p + 8), _mm256_i32gather_ps(x, i1, 4), a1);
  }
  __m256 a = _mm256_add_ps(a0, a1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h)); h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float s = _mm_cvtss_f32(h);
  for (; p < end; p++) s += val[p] * x[col[p]];
  return s;
}

// each 64-bit word: walk its set bits (tzcnt, blsr); W words walked side by side, each with its own offset
template <int W>
static float tz_dot(const uint64_t* bits, int64_t words, const float* val, int64_t p, const float* x) {
  float a[W] = {};
  int64_t w = 0;
  for (; w < words; w += W) {
    _mm_prefetch((const char*)(val + p + AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char*)(bits + w + AHEAD / 16), _MM_HINT_T0);
    uint64_t b[W]; int64_t q[W];
    for (int u = 0; u < W; u++) { b[u] = bits[w + u]; q[u] = p; p += __builtin_popcountll(b[u]); }
    bool any = true;
    while (any) {
      any = false;
      for (int u = 0; u < W; u++) if (b[u]) {
        a[u] += val[q[u]++] * x[(w + u) * 64 + __builtin_ctzll(b[u])];
        b[u] &= b[u] - 1; any = true;
      }
    }
  }
  float s = 0;  // words is a multiple of W here (12 words per row)
  for (int u = 0; u < W; u++) s += a[u];
  return s;
}

int main(int argc, char** argv) {
  const int64_t K = 768, words = K / 64, M = argc > 1 ? atol(argv[1]) : 110592;
  std::mt19937_64 g(0);
  std::vector<uint64_t> bits(M * words);
  std::vector<int64_t> crow(M + 1, 0);
  std::vector<int16_t> col;
  for (int64_t i = 0; i < M; i++) {
    crow[i + 1] = crow[i];
    for (int64_t w = 0; w < words; w++) {
      uint64_t b = 0;
      for (int j = 0; j < 64; j++) if ((g() & 3) == 0) { b |= 1ull << j; col.push_back(w * 64 + j); }
      bits[i * words + w] = b; crow[i + 1] += __builtin_popcountll(b);
    }
  }
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> val(crow[M] + 64), x(K), y0(M), y1(M), y2(M), y4(M);
  for (auto& e : val) e = u(g);
  for (auto& e : x) e = u(g);
  printf("M=%ld K=%ld nnz=%ld (%.0f MB values), %d threads\n", M, K, crow[M], crow[M] * 4 / 1e6, omp_get_max_threads());
  auto run = [&](auto f, std::vector<float>& y) {
    double best = 1e9;
    for (int r = 0; r < 7; r++) {
      auto t = clk::now();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < M; i++) y[i] = f(i);
      best = std::min(best, std::chrono::duration<double>(clk::now() - t).count());
    }
    return best * 1e3;
  };
  for (int round = 0; round < 3; round++) {
    double a = run([&](int64_t i) { return gather_dot(col.data(), val.data(), crow[i], crow[i + 1], x.data()); }, y0);
    double v = run([&](int64_t i) { return vgather_dot(col.data(), val.data(), crow[i], crow[i + 1], x.data()); }, y1);
    double vd = 0; for (int64_t i = 0; i < M; i++) vd = std::max(vd, (double)std::abs(y0[i] - y1[i]));
    printf("vgather %.2f ms (max diff %.1e) | ", v, vd);
    double b = run([&](int64_t i) { return tz_dot<1>(bits.data() + i * words, words, val.data(), crow[i], x.data()); }, y1);
    double c = run([&](int64_t i) { return tz_dot<2>(bits.data() + i * words, words, val.data(), crow[i], x.data()); }, y2);
    double d = run([&](int64_t i) { return tz_dot<4>(bits.data() + i * words, words, val.data(), crow[i], x.data()); }, y4);
    double err = 0; for (int64_t i = 0; i < M; i++) err = std::max({err, (double)std::abs(y0[i] - y1[i]), (double)std::abs(y0[i] - y2[i]),
                                                            (double)std::abs(y0[i] - y4[i])});
    printf("gather int16 %.2f ms | tzcnt x1 %.2f ms | x2 %.2f ms | x4 %.2f ms   (max diff %.1e)\n", a, b, c, d, err);
  }
}
