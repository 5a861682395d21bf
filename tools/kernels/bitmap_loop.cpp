// What the bitmap path's inner loop (bitmap_dot in sparse_kernels/csr_cpu.cpp, one-token generation with
// AVX-512) costs per 16-column chunk on one core, for each way of spreading a chunk's kept values into the
// lanes its mask marks: vpermps with indices from vpopcntd (the kernel's choice on AMD CPUs with VPOPCNTDQ), vexpandps
// from a register, or from memory (the kernel's choice elsewhere, and what GCC makes of a load followed by an expand);
// then with the spreading taken away, and also the offsets that depend on each chunk's popcount. GPT-2
// Small's MLP-in matrix (3072 x 768) at 75 %, its values and bitmap in cache, best of 20 passes, three
// rounds. The permute and expand variants must give the same sums (checked); the last two give wrong ones:
// they time the loop, nothing else. Build and run:
//
//   g++ -O3 -march=native -o /tmp/bitmap_loop tools/kernels/bitmap_loop.cpp && /tmp/bitmap_loop
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>
using clk = std::chrono::steady_clock;
constexpr int CHUNKS = 4;  // 16-column chunks per 64-bit word, as in the kernel
enum Variant { PERMUTE, EXPAND, EXPAND_FROM_MEMORY, NO_SPREAD, NO_SPREAD_FIXED_OFFSETS };

template <Variant V>
__attribute__((noinline)) float dot(const uint64_t* bits, int64_t words, const float* val, int64_t p, const float* x) {
  __m512 acc[CHUNKS] = {};
  for (int64_t w = 0; w < words; w++) {
    const uint16_t* cb = (const uint16_t*)(bits + w);
    int n[CHUNKS];
    for (int c = 0; c < CHUNKS; c++) n[c] = __builtin_popcount(cb[c]);
    for (int c = 0; c < CHUNKS; c++) {
      const __mmask16 k = _load_mask16((__mmask16*)(cb + c));
      __m512 v;
      if (V == PERMUTE) {  // as csr_cpu.cpp's chunk()
        const __m512i below = _mm512_set_epi32(0x7fff, 0x3fff, 0x1fff, 0xfff, 0x7ff, 0x3ff, 0x1ff, 0xff,
                                               0x7f, 0x3f, 0x1f, 0xf, 7, 3, 1, 0);
        const __m512i word = _mm512_set1_epi32(((const int*)(bits + w))[c >> 1]);
        const __m512i src = _mm512_popcnt_epi32(_mm512_and_si512(word, c & 1 ? _mm512_slli_epi32(below, 16) : below));
        v = _mm512_maskz_permutexvar_ps(k, src, _mm512_loadu_ps(val + p));
      } else if (V == EXPAND_FROM_MEMORY) {
        v = _mm512_maskz_expandloadu_ps(k, val + p);
      } else {
        v = _mm512_loadu_ps(val + p);
        asm("" : "+v"(v));  // keeps the load a plain load (GCC would fold it into a memory-operand expand)
        if (V == EXPAND) v = _mm512_maskz_expand_ps(k, v);
      }
      acc[c] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + w * 64 + c * 16), acc[c]);
      p += V == NO_SPREAD_FIXED_OFFSETS ? 4 : n[c];
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

template <Variant V>
double seconds(const std::vector<uint64_t>& bits, const std::vector<int64_t>& crow, const std::vector<float>& val,
               const std::vector<float>& x, std::vector<float>& y, int words) {
  double best = 1e9;
  for (int r = 0; r < 20; r++) {
    auto t = clk::now();
    for (size_t i = 0; i < y.size(); i++) y[i] = dot<V>(bits.data() + i * words, words, val.data(), crow[i], x.data());
    best = std::min(best, std::chrono::duration<double>(clk::now() - t).count());
  }
  return best;
}

int main() {
  const int M = 3072, K = 768, words = K / 64;
  std::mt19937 g(0);
  std::vector<uint64_t> bits(M * words);
  std::vector<int64_t> crow(M + 1, 0);
  for (int i = 0; i < M; i++) {
    crow[i + 1] = crow[i];
    for (int w = 0; w < words; w++) {
      uint64_t b = 0;
      for (int j = 0; j < 64; j++) if (g() % 4 == 0) b |= 1ull << j;  // each weight kept with probability 1/4
      bits[i * words + w] = b;
      crow[i + 1] += __builtin_popcountll(b);
    }
  }
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> val(crow[M] + 64), x(K), y(M), y_expand(M);  // 64 spare values: every load stays inside
  for (auto& e : val) e = u(g);
  for (auto& e : x) e = u(g);
  seconds<PERMUTE>(bits, crow, val, x, y, words);
  seconds<EXPAND>(bits, crow, val, x, y_expand, words);
  if (y != y_expand) return printf("the permute and the expand disagree\n"), 1;
  const double chunks = double(M) * words * CHUNKS;
  const char* names[] = {"permute (vpopcntd, vpermps)", "expand (vexpandps)", "expand from memory", "neither", "neither, fixed offsets"};
  for (int round = 0; round < 3; round++) {
    double s[] = {seconds<PERMUTE>(bits, crow, val, x, y, words), seconds<EXPAND>(bits, crow, val, x, y, words),
                  seconds<EXPAND_FROM_MEMORY>(bits, crow, val, x, y, words), seconds<NO_SPREAD>(bits, crow, val, x, y, words),
                  seconds<NO_SPREAD_FIXED_OFFSETS>(bits, crow, val, x, y, words)};
    for (int v = 0; v < 5; v++) printf("%-30s %6.3f ns per chunk  %6.1f us per matrix\n", names[v], s[v] * 1e9 / chunks, s[v] * 1e6);
  }
}
