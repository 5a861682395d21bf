// CSR sparse x dense kernels for the CPU, fp32. Built by kernels/cpu.py on first use.
//
// spmm:  y (N, M) = x (N, K) @ W.T, W (M, K) in CSR.
//   The naive loop, "for each token, for each row, gather x[col] and multiply", is a scalar
//   gather per nonzero. Instead we turn the token dimension into the vector dimension: a tile of
//   TILE tokens is packed as a (K, TILE) block, so input feature j of those tokens is TILE
//   contiguous floats. Each nonzero (i, j, w) then does one AXPY, acc[0:TILE] += w * xt[j, 0:TILE],
//   with acc living in vector registers. For a large K the (K, TILE) tile outgrows the L2 cache,
//   so the columns go in blocks of KB_BYTES: a block of RB rows sweeps one (KB, TILE) slab of x at
//   a time, keeping its partial sums in a small buffer. Work is split over (token tile, block of
//   rows) pairs with at::parallel_for, so it obeys torch.set_num_threads.
//   Columns must be sorted within each row (to_csr and transpose_plan guarantee it).
// Few tokens (generation, one token at a time): no tile to fill, so each row becomes a gathered
//   dot product over its nonzeros, parallel over rows. Memory-bound on reading W: CSR reads
//   8 bytes per kept weight (value + int32 column) against 4 per weight for dense.
// sddmm: g[p] = sum_t dy[t, i] * x[t, j] for each nonzero p = (i, j): the weight gradient, only
//   where the pattern allows. Same packing: two contiguous TILE-long rows per nonzero.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

// 16 floats as one value: the compiler maps it to one AVX-512 register (or two AVX2 ones).
// aligned(4) so it may load from any float address.
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v16_aligned __attribute__((vector_size(64)));  // storage: 64-byte aligned rows
#ifndef BIG_TILE
#define BIG_TILE 64  // tokens per tile: 4 AVX-512 or 8 AVX2 registers per accumulator set
#endif
#ifndef KB_BYTES
#define KB_BYTES (128 * 1024)  // one (columns, TILE) block of x: fits the L2 cache with room to spare
#endif

// at::parallel_for runs a range in the calling thread when it is below the grain: give each
// thread at least MIN_WORK multiply-adds, so small products (generation) skip the thread
// hand-off, which costs more than the work itself, and far more on a busy machine
constexpr int64_t MIN_WORK = 1 << 22;
static int64_t grain(int64_t items, int64_t total_work) {
  return std::max<int64_t>(1, MIN_WORK * items / std::max<int64_t>(1, total_work));
}

// rows [t0, t0 + TILE) of a row-major (N, K) matrix -> (K, TILE) block, zero-padded past N
template <int TILE>
static void pack_tile(const float* x, int64_t N, int64_t K, int64_t t0, float* out) {
  const int64_t nt = std::min<int64_t>(TILE, N - t0);
  for (int64_t t = 0; t < TILE; t++) {
    const float* src = x + (t0 + t) * K;
    for (int64_t k = 0; k < K; k++) out[k * TILE + t] = t < nt ? src[k] : 0.f;
  }
}

// every packed row of TILE floats starts on a cache line, so a row is whole cache lines
template <int TILE>
static std::vector<v16_aligned> pack_all(const float* x, int64_t N, int64_t K) {
  const int64_t ntiles = (N + TILE - 1) / TILE;
  std::vector<v16_aligned> buffer(ntiles * K * TILE / 16);
  float* packed = (float*)buffer.data();
  at::parallel_for(0, ntiles, grain(ntiles, ntiles * K * TILE), [&](int64_t b, int64_t e) {
    for (int64_t tile = b; tile < e; tile++) pack_tile<TILE>(x, N, K, tile * TILE, packed + tile * K * TILE);
  });
  return buffer;
}

template <int TILE>
static void spmm_tiled(const int* crow, const int* col, const float* val, const float* bias,
                       const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  constexpr int V = TILE / 16;       // vectors per token tile
  constexpr int64_t RB = 128;        // rows per work item: their partial sums stay in L1/L2
  const int64_t KB = std::max<int64_t>(16, KB_BYTES / (TILE * 4));  // columns per cache block
  const int64_t ntiles = (N + TILE - 1) / TILE, nrb = (M + RB - 1) / RB, nkb = (K + KB - 1) / KB;
  const std::vector<v16_aligned> buffer = pack_all<TILE>(x, N, K);
  const float* packed = (const float*)buffer.data();
  // split[i * (nkb + 1) + c]: first entry of row i with column >= c * KB (columns are sorted),
  // so each row's entries are cut into one run per column block
  std::vector<int> split(M * (nkb + 1));
  at::parallel_for(0, M, grain(M, M * (nkb + 1) * 16), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++)
      for (int64_t c = 0; c <= nkb; c++)
        split[i * (nkb + 1) + c] = std::lower_bound(col + crow[i], col + crow[i + 1], (int)std::min(K, c * KB)) - col;
  });
  at::parallel_for(0, ntiles * nrb, grain(ntiles * nrb, (int64_t)crow[M] * ntiles * TILE), [&](int64_t b, int64_t e) {
    std::vector<v16> part(RB * V);  // this work item's outputs, (rows, TILE), across column blocks
    for (int64_t w = b; w < e; w++) {
      const int64_t tile = w / nrb, r0 = (w % nrb) * RB, r1 = std::min(M, r0 + RB);
      const float* xt = packed + tile * K * TILE;
      for (int64_t i = r0; i < r1; i++)
        for (int u = 0; u < V; u++) part[(i - r0) * V + u] = v16{} + (bias ? bias[i] : 0.f);
      for (int64_t c = 0; c < nkb; c++) {  // the (KB, TILE) block of x is reused by all RB rows
        for (int64_t i = r0; i < r1; i++) {
          v16* acc0 = &part[(i - r0) * V];
          v16 acc1[V] = {};  // a second accumulator set: two independent FMA chains
          int p = split[i * (nkb + 1) + c];
          const int end = split[i * (nkb + 1) + c + 1];
          for (; p + 1 < end; p += 2) {
            const float v0 = val[p], v1 = val[p + 1];
            const v16* x0 = (const v16*)(xt + (int64_t)col[p] * TILE);
            const v16* x1 = (const v16*)(xt + (int64_t)col[p + 1] * TILE);
            for (int u = 0; u < V; u++) { acc0[u] += v0 * x0[u]; acc1[u] += v1 * x1[u]; }
          }
          if (p < end) {
            const v16* x0 = (const v16*)(xt + (int64_t)col[p] * TILE);
            for (int u = 0; u < V; u++) acc0[u] += val[p] * x0[u];
          }
          for (int u = 0; u < V; u++) acc0[u] += acc1[u];
        }
      }
      const int64_t t0 = tile * TILE, nt = std::min<int64_t>(TILE, N - t0);
      for (int64_t i = r0; i < r1; i++) {
        const float* out = (const float*)&part[(i - r0) * V];
        for (int64_t t = 0; t < nt; t++) y[(t0 + t) * M + i] = out[t];
      }
    }
  });
}

static void spmm_gather(const int* crow, const int* col, const float* val, const float* bias,
                        const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  at::parallel_for(0, M, grain(M, (int64_t)crow[M] * N), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      for (int64_t t = 0; t < N; t++) {
        const float* xr = x + t * K;
        // four independent partial sums; scalar loads (a vector gather is slower on many CPUs)
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        int p = crow[i];
        const int end = crow[i + 1];
        for (; p + 3 < end; p += 4) {
          s0 += val[p] * xr[col[p]];
          s1 += val[p + 1] * xr[col[p + 1]];
          s2 += val[p + 2] * xr[col[p + 2]];
          s3 += val[p + 3] * xr[col[p + 3]];
        }
        for (; p < end; p++) s0 += val[p] * xr[col[p]];
        const float s = (s0 + s1) + (s2 + s3);
        y[t * M + i] = s + (bias ? bias[i] : 0.f);
      }
    }
  });
}

torch::Tensor spmm(torch::Tensor crow, torch::Tensor col, torch::Tensor val,
                   c10::optional<torch::Tensor> bias, torch::Tensor x, int64_t M) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && val.scalar_type() == torch::kFloat,
              "spmm: x (N, K) and values must be float32");
  TORCH_CHECK(crow.scalar_type() == torch::kInt && col.scalar_type() == torch::kInt, "spmm: int32 indices");
  x = x.contiguous();
  const int64_t N = x.size(0), K = x.size(1);
  auto y = torch::empty({N, M}, x.options());
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const int* cr = crow.data_ptr<int>();
  const int* cl = col.data_ptr<int>();
  const float* v = val.data_ptr<float>();
  if (N >= BIG_TILE) spmm_tiled<BIG_TILE>(cr, cl, v, b, x.data_ptr<float>(), y.data_ptr<float>(), N, K, M);
  else if (N >= 8) spmm_tiled<16>(cr, cl, v, b, x.data_ptr<float>(), y.data_ptr<float>(), N, K, M);
  else spmm_gather(cr, cl, v, b, x.data_ptr<float>(), y.data_ptr<float>(), N, K, M);
  return y;
}

torch::Tensor sddmm(torch::Tensor crow, torch::Tensor col, torch::Tensor dy, torch::Tensor x) {
  TORCH_CHECK(dy.scalar_type() == torch::kFloat && x.scalar_type() == torch::kFloat, "sddmm: float32");
  dy = dy.contiguous(); x = x.contiguous();
  constexpr int TILE = 64;
  const int64_t N = x.size(0), K = x.size(1), M = dy.size(1), ntiles = (N + TILE - 1) / TILE;
  const int* cr = crow.data_ptr<int>();
  const int* cl = col.data_ptr<int>();
  auto g = torch::zeros({col.numel()}, x.options());
  float* gp = g.data_ptr<float>();
  const std::vector<v16_aligned> xbuf = pack_all<TILE>(x.data_ptr<float>(), N, K);
  const std::vector<v16_aligned> dbuf = pack_all<TILE>(dy.data_ptr<float>(), N, M);
  const float* xp = (const float*)xbuf.data();
  const float* dp = (const float*)dbuf.data();
  for (int64_t tile = 0; tile < ntiles; tile++) {  // one token tile at a time stays in cache
    const float* xt = xp + tile * K * TILE;
    const float* dt = dp + tile * M * TILE;
    at::parallel_for(0, M, grain(M, (int64_t)cr[M] * TILE), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) {
        const float* d = dt + i * TILE;
        for (int p = cr[i]; p < cr[i + 1]; p++) {
          const float* xr = xt + (int64_t)cl[p] * TILE;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int t = 0; t < TILE; t++) s += d[t] * xr[t];
          gp[p] += s;
        }
      }
    });
  }
  return g;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm", &spmm, "y = x @ W.T with W in CSR (fp32)");
  m.def("sddmm", &sddmm, "weight gradient at the CSR nonzeros (fp32)");
}
