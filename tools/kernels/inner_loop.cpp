// What the AVX-512 kernel's inner loop can do on one core, apart from the rest of the kernel:
// 512-bit multiply-adds per second (G FMA/s) for the loop as the kernel runs it, one thing changed
// at a time, against the register-only peak. Interleaved, best of 20 rounds. Build and run:
//
//   g++ -O3 -march=native -o /tmp/inner_loop tools/kernels/inner_loop.cpp && /tmp/inner_loop
//
// The kernel's loop (sparse_kernels/csr_cpu.cpp, spmm_avx512): for each row of a 256-row block, load its 8
// partial sums (128 tokens) from L2, then per nonzero {column offset, weight} broadcast the weight and
// do 8 FMAs, each with its own 64-byte load of the packed x slab (here 64 columns x 128 tokens = 32 KB,
// in L1), then store the sums back.
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
using clk = std::chrono::steady_clock;
struct Entry { int off; float w; };
constexpr int KB = 64, TILE = 128, V = 8, ROWS = 256;
static float* xt;
static volatile float sink;  // keeps the peak loop from being optimized away

template <int PF>
__attribute__((noinline)) void rows(const Entry* ent, const int* start, float* part) {
  for (int r = 0; r < ROWS; r++) {
    if (PF) for (int l = 0; l < 3; l++) _mm_prefetch((const char*)(ent + start[r]) + PF + 64 * l, _MM_HINT_T0);
    __m512 acc[V];
    for (int u = 0; u < V; u++) acc[u] = _mm512_load_ps(part + r * TILE + 16 * u);
    for (int p = start[r]; p < start[r + 1]; p++) {
      const __m512 v = _mm512_set1_ps(ent[p].w);
      const float* x = xt + ent[p].off;
      for (int u = 0; u < V; u++) acc[u] = _mm512_fmadd_ps(v, _mm512_load_ps(x + 16 * u), acc[u]);
    }
    for (int u = 0; u < V; u++) _mm512_store_ps(part + r * TILE + 16 * u, acc[u]);
  }
}

__attribute__((noinline)) float peak(long n) {  // 16 independent chains, no memory
  __m512 a[16], m = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(1e-4f);
  for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps(i * 1e-3f);
  for (long k = 0; k < n; k++)
    for (int i = 0; i < 16; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
  float s = 0;
  for (int i = 0; i < 16; i++) s += _mm512_reduce_add_ps(a[i]);
  return s;
}

int main() {
  xt = (float*)aligned_alloc(64, KB * TILE * 4);
  for (int i = 0; i < KB * TILE; i++) xt[i] = 1e-3f * (i % 91);
  float* part = (float*)aligned_alloc(64, ROWS * TILE * 4);
  std::fill(part, part + ROWS * TILE, 0.f);
  std::mt19937 g(1);
  const int blocks = 512;  // 256 rows x 24 entries x 8 B = 48 KB a block; 512 blocks = 24 MB (L3)
  std::vector<Entry> ent((size_t)blocks * ROWS * 192);
  for (auto& e : ent) e = {(int)(g() % KB) * TILE, 1e-4f * (g() % 7)};
  std::vector<int> s24(ROWS + 1), s192(ROWS + 1);
  for (int r = 0; r <= ROWS; r++) s24[r] = 24 * r, s192[r] = 192 * r;
  const char* what[] = {
      "register-only peak (16 chains)",
      "kernel loop, 24 entries a row, entries in L2 (the same 8 blocks again)",
      "kernel loop, 24 entries a row, entries streamed from L3 (24 MB)",
      "  the same, entries prefetched 1 KB ahead",
      "kernel loop, 192 entries a row (one column block), entries from L3"};
  double best[5] = {};
  for (int round = 0; round < 20; round++)
    for (int m = 0; m < 5; m++) {
      double fmas = 0;
      const auto t0 = clk::now();
      if (m == 0) sink = peak(1 << 24), fmas = 16.0 * (1 << 24);
      for (int b = 0; m > 0 && b < blocks / (m == 4 ? 8 : 1); b++) {
        const bool long_rows = m == 4;
        const Entry* e = ent.data() + (size_t)(m == 1 ? b % 8 : b) * ROWS * (long_rows ? 192 : 24);
        const int* st = long_rows ? s192.data() : s24.data();
        if (m == 3) rows<1024>(e, st, part); else rows<0>(e, st, part);
        fmas += (double)ROWS * (long_rows ? 192 : 24) * V;
      }
      best[m] = std::max(best[m], fmas / std::chrono::duration<double>(clk::now() - t0).count() / 1e9);
    }
  for (int m = 0; m < 5; m++) printf("%-72s %5.2f G FMA/s  %4.2f of peak\n", what[m], best[m], best[m] / best[0]);
}
