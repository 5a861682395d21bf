// CSR sparse x dense kernels for the CPU, fp32. Built by sparse_kernels/cpu.py on first use.
//
// spmm:  y (N, M) = x (N, K) @ W.T, W (M, K) in CSR.
//   The naive loop, "for each token, for each row, gather x[col] and multiply", is a scalar
//   gather per nonzero. Instead we turn the token dimension into the vector dimension: a tile of
//   TILE tokens is transposed into a (K, TILE) block, so input feature j of those tokens is TILE
//   contiguous floats. Each nonzero (i, j, w) then does one AXPY, acc[0:TILE] += w * xt[j, 0:TILE],
//   with acc in NACC = 8 vector registers (8 independent FMA chains hide the FMA latency).
//   What limits it is loading x: TILE floats per nonzero. So the columns go in blocks of KB, whose
//   (KB, TILE) slab of x stays in L1/L2 while a block of RB rows sweeps it, their partial sums kept
//   in a small buffer. The nonzeros are first copied into exactly that visiting order (row block,
//   column block, row), so the weights stream through memory sequentially: read in CSR row order,
//   the same sweep touches RB separate places per column block and the prefetcher loses track.
//   Where each row's entries cross into the next column block depends on the pattern alone, so
//   the caller computes that table once (bounds) and the copy per call is one pass.
//   Each thread takes whole token tiles (its own packing buffer, reused); when there are fewer
//   tiles than threads, a tile's rows are split between threads instead.
//   Reading and writing the token-major x and y goes through 8x8 register transposes: writing a
//   column of y element by element strides M floats, and with M a multiple of 1024 all those
//   addresses fall into one cache set.
//   Columns must be sorted within each row (to_csr and transpose_plan guarantee it).
//   With AVX-512 and at least 128 tokens, spmm_avx512 below does the same with its own blocking.
// Few tokens (generation, one token at a time): no tile to fill, so each row becomes a gathered
//   dot product over its nonzeros, parallel over rows. Memory-bound on reading W: CSR reads
//   6 or 8 bytes per kept weight (value + int16 or int32 column) against 4 per weight for dense.
// sddmm: g[p] = sum_t dy[t, i] * x[t, j] for each nonzero p = (i, j): the weight gradient, only
//   where the pattern allows. Same packing, and row i's dy tile stays in registers across the
//   row's nonzeros, so each costs one load of x per FMA, as in spmm (see sddmm below).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

// One SIMD register of floats, as a GCC vector type: the compiler emits the native instructions.
#ifdef __AVX512F__
constexpr int VW = 16;
#else
constexpr int VW = 8;  // AVX2 (and, two registers per value, plain SSE)
#endif
typedef float vec __attribute__((vector_size(VW * 4)));
constexpr int NACC = 8;                    // accumulator registers per row
constexpr int BIG_TILE = NACC * VW;        // tokens per tile: 64 with AVX2, 128 with AVX-512
constexpr int64_t SLAB_BYTES = 32 * 1024;  // one (KB, TILE) slab of x: the size of L1, half of L2
constexpr int64_t RB = 64;                 // rows per block: their partial sums, RB * TILE floats
// A token tile of x larger than this (in_features >= 2048 with 64 tokens) no longer stays in L2 beside the
// weights: then 4x the rows per block (the slab of x is fetched 4x less often, the partial sums live in L2)
// and the next slab is prefetched into L2 while the current one is in use, as on the AVX-512 path.
// AVX2 only, 2026-12-05: GPT-3 XL c_proj forward 1.72-1.76x -> 2.00-2.03x dense; for a small tile
// (in_features 768) it cost 5 % at 90 % (sparse_kernels/README.md)
constexpr int64_t WIDE_TILE_BYTES = 256 * 1024, RB_WIDE = 256;

// The next (KB, TILE) slab of x goes to L2 while a block's rows sweep the current one: `lines` cache lines from
// `next`, each row issuing its share, so the loads overlap the rows' FMAs instead of bunching up
struct SlabPrefetch {
  const char* next = nullptr;
  int64_t lines = 0, per_row = 0;
  void row(int64_t r) const {
#ifdef __AVX2__
    for (int64_t l = r * per_row; l < std::min(lines, (r + 1) * per_row); l++) _mm_prefetch(next + 64 * l, _MM_HINT_T1);
#endif
  }
};

// slab c of the packed token tile xt (K, TILE), shared over `rows` rows
static inline SlabPrefetch slab_prefetch(const float* xt, int64_t c, int64_t KB, int64_t K, int64_t TILE, int64_t rows) {
  const int64_t lines = std::min<int64_t>(KB, K - c * KB) * TILE / 16;  // TILE floats per column: TILE / 16 lines
  return {(const char*)(xt + c * KB * TILE), lines, (lines + rows - 1) / rows};
}

// at::parallel_for runs a range in the calling thread when it is below the grain: give each
// thread at least MIN_WORK multiply-adds, so small products (generation) skip the thread
// hand-off, which costs more than the work itself, and far more on a busy machine
// The gather path is bound by reading W from memory, not by arithmetic: a thread pays off from
// MIN_GATHER nonzeros (512 KB of W), and it does when W outgrows one core's cache (generation).
constexpr int64_t MIN_WORK = 1 << 22, MIN_GATHER = 1 << 16;
static int64_t grain(int64_t items, int64_t total_work, int64_t min_work = MIN_WORK) {
  return std::max<int64_t>(1, min_work * items / std::max<int64_t>(1, total_work));
}

// row blocks are split into chunks only when there are too few token tiles to share out among threads
static int64_t row_chunks(int64_t nrb, int64_t ntiles) {
  return std::min<int64_t>(nrb, (at::get_num_threads() + ntiles - 1) / ntiles);
}

// dst[j * ldd + i] = src[i * lds + j] for the (rows, cols) block of src; 8x8 blocks in registers
static void transpose(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
  int64_t i = 0;
#ifdef __AVX2__
  for (; i + 8 <= rows; i += 8) {
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      __m256 a[8], b[8];
      for (int u = 0; u < 8; u++) a[u] = _mm256_loadu_ps(src + (i + u) * lds + j);
      for (int u = 0; u < 8; u += 2) {  // interleave pairs of rows, then pairs of pairs, then halves
        b[u] = _mm256_unpacklo_ps(a[u], a[u + 1]);
        b[u + 1] = _mm256_unpackhi_ps(a[u], a[u + 1]);
      }
      for (int u = 0; u < 8; u += 4) {
        a[u] = _mm256_shuffle_ps(b[u], b[u + 2], 0x44);
        a[u + 1] = _mm256_shuffle_ps(b[u], b[u + 2], 0xEE);
        a[u + 2] = _mm256_shuffle_ps(b[u + 1], b[u + 3], 0x44);
        a[u + 3] = _mm256_shuffle_ps(b[u + 1], b[u + 3], 0xEE);
      }
      for (int u = 0; u < 4; u++) {
        _mm256_storeu_ps(dst + (j + u) * ldd + i, _mm256_permute2f128_ps(a[u], a[u + 4], 0x20));
        _mm256_storeu_ps(dst + (j + u + 4) * ldd + i, _mm256_permute2f128_ps(a[u], a[u + 4], 0x31));
      }
    }
    for (; j < cols; j++)
      for (int u = 0; u < 8; u++) dst[j * ldd + i + u] = src[(i + u) * lds + j];
  }
#endif
  for (; i < rows; i++)
    for (int64_t j = 0; j < cols; j++) dst[j * ldd + i] = src[i * lds + j];
}

// tokens [t0, t0 + TILE) of a row-major (N, K) matrix -> (K, TILE) block, zero-padded past N
template <int TILE>
static void pack_tile(const float* x, int64_t N, int64_t K, int64_t t0, float* out) {
  const int64_t nt = std::min<int64_t>(TILE, N - t0);
  transpose(x + t0 * K, K, out, TILE, nt, K);
  if (nt < TILE)
    for (int64_t k = 0; k < K; k++) std::fill(out + k * TILE + nt, out + (k + 1) * TILE, 0.f);
}

// Where each row's entries cross into the next column block: bnd[i * (nkb + 1) + c] is the first
// entry of row i whose column is >= c * KB (the columns are sorted, so row i's entries in column
// block c are the run bnd[..c] .. bnd[..c + 1]). It depends on the pattern alone, which stays fixed
// while the values train: cpu.py asks for it once per layer (bounds() below) and passes it back.
template <typename Index>
static void fill_bounds(const int* crow, const Index* col, int64_t K, int64_t M, int64_t KB, int* bnd) {
  const int64_t nkb = (K + KB - 1) / KB;
  at::parallel_for(0, M, grain(M, (int64_t)crow[M] + M * nkb), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      int* b = bnd + i * (nkb + 1);
      int64_t p = crow[i];
      for (int64_t c = 0; c < nkb; c++) {
        b[c] = (int)p;
        const int64_t lim = std::min<int64_t>(K, (c + 1) * KB);
        while (p < crow[i + 1] && col[p] < lim) p++;
      }
      b[nkb] = crow[i + 1];
    }
  });
}

// One nonzero as the kernel reads it: the offset of its column's row in the packed x tile
// (col * TILE floats) and its weight, side by side, so the weights are one sequential stream.
struct Entry {
  int off;
  float w;
};

// The nonzeros in the order the kernel visits them: (row block, column block, row). Segment
// q = (rb * nkb + c) * RB + (i % RB) holds row i's entries in column block c: ent[start[q] ..
// start[q + 1]). Read in CSR row order, one sweep would touch RB separate places per column block
// and the prefetcher would lose track. Rebuilt every call (the values change every step) into
// buffers that this thread keeps: a fresh one per call would page-fault its way in.
struct Blocked {
  std::vector<int64_t> start;
  std::vector<Entry> ent;
};

template <typename Index>
static const Blocked& block_nonzeros(const int* crow, const Index* col, const float* val, const int* bnd,
                                     int64_t M, int64_t nkb, int64_t RB, int64_t TILE) {
  thread_local Blocked mine;
  Blocked& b = mine;  // the caller's: inside the lambda, `mine` would name each worker's own
  const int64_t nrb = (M + RB - 1) / RB;
  b.start.resize(nrb * nkb * RB + 1);
  if ((int64_t)b.ent.size() < crow[M]) b.ent.resize(crow[M]);
  at::parallel_for(0, nrb, grain(nrb, (int64_t)crow[M] + M * nkb), [&](int64_t lo, int64_t hi) {
    for (int64_t rb = lo; rb < hi; rb++) {
      const int64_t r0 = rb * RB, rows = std::min(RB, M - r0);
      int64_t d = crow[r0];  // a row block keeps its place as a whole; only the order inside changes
      int64_t* s = b.start.data() + rb * nkb * RB;
      for (int64_t c = 0; c < nkb; c++)
        for (int64_t r = 0; r < RB; r++) {
          s[c * RB + r] = d;
          if (r >= rows) continue;  // the last block's missing rows: empty segments
          const int* bd = bnd + (r0 + r) * (nkb + 1) + c;
          for (int64_t p = bd[0]; p < bd[1]; p++, d++) b.ent[d] = Entry{(int)(col[p] * TILE), val[p]};
        }
    }
  });
  b.start[nrb * nkb * RB] = crow[M];
  return b;
}

constexpr int64_t slab_cols(int TILE) { return std::max<int64_t>(VW, SLAB_BYTES / (TILE * 4)); }

// KB: the column-block width, block_cols(N, ...), which bnd was made for
template <int TILE, typename Index>
static void spmm_tiled(const int* crow, const Index* col, const float* val, const int* bnd, int64_t KB,
                       const float* bias, const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  constexpr int V = TILE / VW;  // accumulator registers per row
  const bool wide = K * TILE * 4 > WIDE_TILE_BYTES;
  const int64_t RB = wide ? RB_WIDE : ::RB;
  const int64_t nkb = (K + KB - 1) / KB, nrb = (M + RB - 1) / RB, ntiles = (N + TILE - 1) / TILE;
  const Blocked& w = block_nonzeros(crow, col, val, bnd, M, nkb, RB, TILE);
  // work item = (token tile, chunk of row blocks)
  const int64_t nchunks = row_chunks(nrb, ntiles), per_chunk = (nrb + nchunks - 1) / nchunks;
  at::parallel_for(0, ntiles * nchunks, grain(ntiles * nchunks, (int64_t)crow[M] * N), [&](int64_t b, int64_t e) {
    std::vector<vec> packed(K * V), part(RB * V);  // this thread's x tile and partial sums
    float* xt = (float*)packed.data();
    int64_t packed_tile = -1;
    for (int64_t item = b; item < e; item++) {
      const int64_t tile = item / nchunks, chunk = item % nchunks, t0 = tile * TILE;
      if (tile != packed_tile) pack_tile<TILE>(x, N, K, t0, xt), packed_tile = tile;
      for (int64_t rb = chunk * per_chunk; rb < std::min(nrb, (chunk + 1) * per_chunk); rb++) {
        const int64_t r0 = rb * RB, rows = std::min(RB, M - r0);
        for (int64_t c = 0; c < nkb; c++) {  // the (KB, TILE) slab of x is reused by all RB rows
          const int64_t* seg = w.start.data() + (rb * nkb + c) * RB;
          // wide: the slab after this one (the first, at the last column block) to L2, a few lines per row
          const SlabPrefetch pf = wide ? slab_prefetch(xt, c + 1 < nkb ? c + 1 : 0, KB, K, TILE, rows) : SlabPrefetch{};
          for (int64_t r = 0; r < rows; r++) {
            pf.row(r);
            vec acc[V];
            for (int u = 0; u < V; u++) acc[u] = c == 0 ? vec{} + (bias ? bias[r0 + r] : 0.f) : part[r * V + u];
            for (int64_t p = seg[r]; p < seg[r + 1]; p++) {
              const Entry en = w.ent[p];
              const vec* xr = (const vec*)(xt + en.off);
              for (int u = 0; u < V; u++) acc[u] += en.w * xr[u];
            }
            for (int u = 0; u < V; u++) part[r * V + u] = acc[u];
          }
        }
        transpose((const float*)part.data(), TILE, y + t0 * M + r0, M, rows, std::min<int64_t>(TILE, N - t0));
      }
    }
  });
}

#ifdef __AVX512F__
// ---- The AVX-512 path (N >= 128 tokens). Same arithmetic as spmm_tiled, tuned separately.
// On these cores dense fp32 GEMM runs near two 512-bit FMAs per cycle, reusing loads from
// registers; here every FMA needs its own 64-byte load of x (the loads, not the FMAs, are the
// limit: per nonzero V loads of x plus two scalar loads, value and column, for V FMAs). What
// differs from the generic path, each measured on a 2-core Xeon (AVX-512), see sparse_kernels/README.md:
// - RB_512 = 256 rows per block instead of 64: the (KB, TILE) slab of x brought into L1 is
//   reused by 4x more rows; the partial sums (256 x 512 B) now live in L2, read and written
//   sequentially once per row and column block.
// - The next slab is prefetched into L2 while the current one is in use: when x's tile does not
//   fit in L2 next to the weights (in_features 3072 and up), its lines would otherwise come from L3
//   at random, one miss at a time.
// - Transposes go through 16x16 register blocks with the output loop inner, so every line of y is
//   written whole by one store; a large y is written with streaming stores (no read for ownership,
//   no eviction of the x tile and the weights).
constexpr int TILE_512 = 128;                // tokens per tile: 8 accumulator registers
constexpr int64_t SEG_NNZ = 24, KB_MAX = 192;
// columns per block: enough that a row has about SEG_NNZ entries in each, since its partial sums
// make one round trip to L2 per block; at least 64 (a 32 KB slab of x, 2/3 of L1), at most
// KB_MAX (96 KB: the slab spills from L1 to L2, which measured better at 90 % than 4x the trips)
static int64_t kb_512(int64_t nnz, int64_t M, int64_t K) {
  const int64_t want = SEG_NNZ * M * K / std::max<int64_t>(1, nnz);
  return std::min<int64_t>(KB_MAX, std::max<int64_t>(64, (want + 16) / 32 * 32));
}
constexpr int64_t RB_512 = 256;              // rows per block
constexpr int64_t STREAM_BYTES = 4 << 20;    // y at least this large: streaming stores

// in place: r[u] (row u of a 16x16 block) becomes column u
static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 2; i++)
    for (int m = 0; m < 4; m++) {
      t[8 * i + m] = _mm512_shuffle_f32x4(r[8 * i + m], r[8 * i + 4 + m], 0x88);
      t[8 * i + 4 + m] = _mm512_shuffle_f32x4(r[8 * i + m], r[8 * i + 4 + m], 0xDD);
    }
  for (int m = 0; m < 8; m++) {
    r[m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0x88);
    r[8 + m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0xDD);
  }
}

// dst[j * ldd + i] = src[i * lds + j] for the (rows, cols) block of src. 16x16 blocks; for each
// 16 destination rows, the source blocks are walked along i, so each destination line is
// completed by one store. stream: non-temporal stores (dst 64-byte aligned, ldd % 16 == 0).
static void transpose512(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols,
                         bool stream) {
  const int64_t r16 = rows / 16 * 16, c16 = cols / 16 * 16;
  for (int64_t j = 0; j < c16; j += 16) {
    for (int64_t i = 0; i < r16; i += 16) {
      __m512 r[16];
      for (int u = 0; u < 16; u++) r[u] = _mm512_loadu_ps(src + (i + u) * lds + j);
      transpose16(r);
      if (stream)
        for (int u = 0; u < 16; u++) _mm512_stream_ps(dst + (j + u) * ldd + i, r[u]);
      else
        for (int u = 0; u < 16; u++) _mm512_storeu_ps(dst + (j + u) * ldd + i, r[u]);
    }
    for (int64_t u = j; u < j + 16; u++)
      for (int64_t i = r16; i < rows; i++) dst[u * ldd + i] = src[i * lds + u];
  }
  for (int64_t u = c16; u < cols; u++)
    for (int64_t i = 0; i < rows; i++) dst[u * ldd + i] = src[i * lds + u];
}

template <typename Index>
static void spmm_avx512(const int* crow, const Index* col, const float* val, const int* bnd, int64_t KB,
                        const float* bias, const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  constexpr int TILE = TILE_512, V = TILE / 16;
  const int64_t nkb = (K + KB - 1) / KB, nrb = (M + RB_512 - 1) / RB_512, ntiles = (N + TILE - 1) / TILE;
  const Blocked& w = block_nonzeros(crow, col, val, bnd, M, nkb, RB_512, TILE);
  const bool stream = (uintptr_t)y % 64 == 0 && M % 16 == 0 && N * M * 4 >= STREAM_BYTES;
  const int64_t nchunks = row_chunks(nrb, ntiles), per_chunk = (nrb + nchunks - 1) / nchunks;
  at::parallel_for(0, ntiles * nchunks, grain(ntiles * nchunks, (int64_t)crow[M] * N), [&](int64_t b, int64_t e) {
    std::vector<__m512> packed(K * V), part(RB_512 * V);  // this thread's x tile and partial sums
    float* xt = (float*)packed.data();
    int64_t packed_tile = -1;
    for (int64_t item = b; item < e; item++) {
      const int64_t tile = item / nchunks, chunk = item % nchunks, t0 = tile * TILE;
      const int64_t nt = std::min<int64_t>(TILE, N - t0);
      if (tile != packed_tile) {
        transpose512(x + t0 * K, K, xt, TILE, nt, K, false);
        if (nt < TILE)
          for (int64_t k = 0; k < K; k++) std::fill(xt + k * TILE + nt, xt + (k + 1) * TILE, 0.f);
        packed_tile = tile;
      }
      for (int64_t rb = chunk * per_chunk; rb < std::min(nrb, (chunk + 1) * per_chunk); rb++) {
        const int64_t r0 = rb * RB_512, rows = std::min(RB_512, M - r0);
        for (int64_t c = 0; c < nkb; c++) {
          // the slab after this one (the first, at the last column block) goes to L2 meanwhile,
          // a few lines per row
          const SlabPrefetch pf = slab_prefetch(xt, c + 1 < nkb ? c + 1 : 0, KB, K, TILE, rows);
          const int64_t* seg = w.start.data() + (rb * nkb + c) * RB_512;
          for (int64_t r = 0; r < rows; r++) {
            pf.row(r);
            __m512 acc[V];
            for (int u = 0; u < V; u++)
              acc[u] = c == 0 ? _mm512_set1_ps(bias ? bias[r0 + r] : 0.f) : part[r * V + u];
            for (int64_t p = seg[r]; p < seg[r + 1]; p++) {
              const Entry en = w.ent[p];
              const __m512 v = _mm512_set1_ps(en.w);
              const float* xr = xt + en.off;
              for (int u = 0; u < V; u++) acc[u] = _mm512_fmadd_ps(v, _mm512_load_ps(xr + 16 * u), acc[u]);
            }
            for (int u = 0; u < V; u++) part[r * V + u] = acc[u];
          }
        }
        transpose512((const float*)part.data(), TILE, y + t0 * M + r0, M, rows, nt, stream && nt == TILE);
      }
    }
  });
  if (stream) _mm_sfence();  // streaming stores are weakly ordered: make them visible
}
#endif


// sum over p in [begin, end) of val[p] * x[col[p]], with scalar loads in 8 independent chains. At one
// token this is bound by reading W from memory, not by arithmetic: on a Zen 4 EPYC this loop, the AVX2
// gather and the AVX-512 gather all read 22-23 GB/s (dense GEMV: 17.5 GB/s). Scalar loads are kept
// because recent Intel cores run gathers slowly (their Gather Data Sampling microcode mitigation), and
// the gather version read only ~7 GB/s on the AVX-512 Xeon. In a model the weights come from memory,
// not cache, and the hardware prefetcher alone left the loop waiting on them: prefetching
// GATHER_AHEAD entries ahead (4 KB of values) cut the time of gpt2-small's block matrices per
// generated token by about 30 % (sparse_kernels/README.md).
constexpr int64_t GATHER_AHEAD = 1024;
template <typename Index>
static float sparse_dot(const Index* col, const float* val, int64_t p, int64_t end, const float* x) {
  float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (; p + 8 <= end; p += 8) {
#ifdef __AVX2__
    _mm_prefetch((const char*)(val + p + GATHER_AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char*)(col + p + GATHER_AHEAD), _MM_HINT_T0);
#endif
    for (int u = 0; u < 8; u++) a[u] += val[p + u] * x[col[p + u]];
  }
  float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; p < end; p++) s += val[p] * x[col[p]];
  return s;
}

template <typename Index>
static void spmm_gather(const int* crow, const Index* col, const float* val, const float* bias,
                        const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  at::parallel_for(0, M, grain(M, (int64_t)crow[M] * N, MIN_GATHER), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++)
      for (int64_t t = 0; t < N; t++)
        y[t * M + i] = sparse_dot(col, val, crow[i], crow[i + 1], x + t * K) + (bias ? bias[i] : 0.f);
  });
}

// With AVX-512, the gather path again with each row's pattern as a bitmap (one bit per weight, 64
// to a word) in place of its column indices: at 75 % sparsity 4.5 bytes per kept weight instead of
// 6, and the stream of W is what a generated token waits on. A chunk of 16 columns takes its mask
// from the bitmap, loads the next popcount(mask) values and spreads them into the lanes the mask
// marks, then one FMA with 16 contiguous floats of x. The counts come straight from the
// bitmap in memory, so a chunk's offset does not wait on the previous chunk's loads; the masks are
// loaded from memory too (kmovw), leaving the shuffle port to the spreading. x is read as a padded copy
// (zeros past K), since a word's lanes past K meet x there. With AVX2 the same idea (an 8-lane
// permute from a table per 8-bit mask) was slower than the scalar gather: 7.1 against 6.2 ms for
// gpt2-small's block matrices per token (sparse_kernels/README.md), so AVX2 keeps the gather.
#ifdef __AVX512F__
constexpr int64_t BITMAP_MIN_PERMILLE = 125;  // below 1/8 density most chunks hold one entry or none
constexpr int CHUNKS = 4;                      // 16-column chunks per 64-bit word

// Chunk c (bits 16c..16c+15) of a bitmap word, n = its popcount. FULL: the 16 floats from v lie inside
// the values array (the usual case), so one plain load takes them; else a masked load touches only n.
// The spreading, two ways, and each CPU maker is faster with one (tools/kernels/bitmap_loop.cpp, per chunk
// on one core, 3072 x 768 at 75 % in cache): PERMUTE computes lane j's source, popcount(mask & ((1 << j) - 1))
// with VPOPCNTDQ, and one vpermps moves the values there (Zen 4: 1.11 ns, Intel Xeon family 6 model 167:
// 1.05 ns); vexpandps from memory does it in one instruction (Zen 4: 1.71 ns, that Xeon: 0.91 ns). The
// mask's 32-bit word is broadcast straight from memory (a load, no shuffle), the odd chunk's prefixes
// shifted into its upper half.
template <bool FULL, bool PERMUTE>
static inline __m512 chunk(const float* v, const uint64_t* word, int c, int n) {
  const __mmask16 k = _load_mask16((__mmask16*)word + c);  // the intrinsic takes no const
#ifdef __AVX512VPOPCNTDQ__
  if (PERMUTE) {
    const __m512 packed = FULL ? _mm512_loadu_ps(v) : _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), v);
    const __m512i below = _mm512_set_epi32(0x7fff, 0x3fff, 0x1fff, 0xfff, 0x7ff, 0x3ff, 0x1ff, 0xff,
                                           0x7f, 0x3f, 0x1f, 0xf, 7, 3, 1, 0);  // lane j: the bits below j
    const __m512i bits = _mm512_set1_epi32(((const int*)word)[c >> 1]);
    const __m512i src = _mm512_popcnt_epi32(_mm512_and_si512(bits, c & 1 ? _mm512_slli_epi32(below, 16) : below));
    return _mm512_maskz_permutexvar_ps(k, src, packed);
  }
#endif
  return _mm512_maskz_expandloadu_ps(k, v);  // reads the n values only
}

// a row's dot product with x: its values start at p; the array holds nnz
template <bool PERMUTE>
static float bitmap_dot(const uint64_t* bits, int64_t words, const float* val, int64_t p, int64_t nnz, const float* x) {
  __m512 acc[CHUNKS] = {};
  for (int64_t w = 0; w < words; w++) {
    const uint16_t* cb = (const uint16_t*)(bits + w);
    _mm_prefetch((const char*)(val + p + GATHER_AHEAD), _MM_HINT_T0);
    _mm_prefetch((const char*)(bits + w + GATHER_AHEAD / 16), _MM_HINT_T0);
    int n[CHUNKS];
    for (int c = 0; c < CHUNKS; c++) n[c] = __builtin_popcount(cb[c]);
    const bool full = p + 64 <= nnz;  // a word's chunks read at most 64 values on from p
    for (int c = 0; c < CHUNKS; c++) {
      const __m512 v = full ? chunk<true, PERMUTE>(val + p, bits + w, c, n[c])
                            : chunk<false, PERMUTE>(val + p, bits + w, c, n[c]);
      acc[c] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + w * 64 + c * 16), acc[c]);
      p += n[c];
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// PERMUTE where it pays: with VPOPCNTDQ, on AMD's CPUs (SPDF_BITMAP_SPREAD=permute or expand overrides, to compare)
static bool bitmap_permute() {
#ifdef __AVX512VPOPCNTDQ__
  static const bool permute = [] {
    const char* how = std::getenv("SPDF_BITMAP_SPREAD");
    if (how && std::string(how) == "permute") return true;
    if (how && std::string(how) == "expand") return false;
    return (bool)__builtin_cpu_is("amd");
  }();
  return permute;
#else
  return false;
#endif
}

static void spmm_bitmap(const int* crow, const uint64_t* bits, const float* val, const float* bias,
                        const float* x, float* y, int64_t N, int64_t K, int64_t M) {
  const int64_t words = (K + 63) / 64;
  std::vector<float> xpad(N * words * 64, 0.f);
  for (int64_t t = 0; t < N; t++)
    std::copy(x + t * K, x + (t + 1) * K, xpad.data() + t * words * 64);
  const bool permute = bitmap_permute();
  at::parallel_for(0, M, grain(M, (int64_t)crow[M] * N, MIN_GATHER), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++)
      for (int64_t t = 0; t < N; t++)
        y[t * M + i] = (permute ? bitmap_dot<true> : bitmap_dot<false>)(bits + i * words, words, val, crow[i], crow[M],
                                                                        xpad.data() + t * words * 64)
                       + (bias ? bias[i] : 0.f);
  });
}
#endif

// Column indices come as int32 (the CSR format) or int16 (SparseLinear's copy when the width
// allows): a quarter fewer bytes to stream per nonzero, which is what generation is bound by.
template <typename F>
static void with_index(const torch::Tensor& col, F&& f) {
  if (col.scalar_type() == torch::kInt) f(col.data_ptr<int>());
  else if (col.scalar_type() == torch::kShort) f(col.data_ptr<int16_t>());
  else TORCH_CHECK(false, "column indices must be int32 or int16");
}

// The column-block width of the tiled kernel that N tokens take, 0 for the gather path (no blocks)
int64_t block_cols(int64_t N, int64_t nnz, int64_t M, int64_t K) {
#ifdef __AVX512F__
  if (N >= TILE_512) return kb_512(nnz, M, K);
#endif
  return N >= BIG_TILE ? slab_cols(BIG_TILE) : N >= 8 ? slab_cols(2 * VW) : 0;
}

torch::Tensor bounds(torch::Tensor crow, torch::Tensor col, int64_t K, int64_t KB) {
  TORCH_CHECK(crow.scalar_type() == torch::kInt && KB > 0, "bounds: int32 row pointers, KB > 0");
  const int64_t M = crow.numel() - 1, nkb = (K + KB - 1) / KB;
  auto bnd = torch::empty({M * (nkb + 1)}, crow.options());
  with_index(col, [&](auto cl) { fill_bounds(crow.data_ptr<int>(), cl, K, M, KB, bnd.data_ptr<int>()); });
  return bnd;
}

// The pattern as bitmaps for spmm_bitmap, (M, ceil(K / 64)) words in an int64 tensor; an empty tensor
// where that path does not pay (density below 1/8) or does not exist (no AVX-512)
torch::Tensor bitmap(torch::Tensor crow, torch::Tensor col, int64_t K) {
  TORCH_CHECK(crow.scalar_type() == torch::kInt, "bitmap: int32 row pointers");
  const int64_t M = crow.numel() - 1, words = (K + 63) / 64;
  auto bits = torch::zeros({0}, crow.options().dtype(torch::kLong));
#ifdef __AVX512F__
  if (col.numel() * 1000 < BITMAP_MIN_PERMILLE * M * K) return bits;
  bits = torch::zeros({M * words}, crow.options().dtype(torch::kLong));
  uint64_t* bp = (uint64_t*)bits.data_ptr<int64_t>();
  const int* cr = crow.data_ptr<int>();
  with_index(col, [&](auto cl) {
    for (int64_t i = 0; i < M; i++)
      for (int64_t p = cr[i]; p < cr[i + 1]; p++) bp[i * words + cl[p] / 64] |= uint64_t{1} << (cl[p] % 64);
  });
#endif
  return bits;
}

// bnd: bounds(crow, col, K, block_cols(N, nnz, M, K)) when the caller keeps it, else computed here
// bits: bitmap(crow, col, K), which fewer than 8 tokens then read in place of col when it is not empty
torch::Tensor spmm(torch::Tensor crow, torch::Tensor col, torch::Tensor val,
                   c10::optional<torch::Tensor> bias, torch::Tensor x, int64_t M, c10::optional<torch::Tensor> bnd,
                   c10::optional<torch::Tensor> bits) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == torch::kFloat && val.scalar_type() == torch::kFloat,
              "spmm: x (..., K) and values must be float32");
  TORCH_CHECK(crow.scalar_type() == torch::kInt, "spmm: int32 row pointers");
  auto y_shape = x.sizes().vec();  // (..., M): x's leading dimensions are tokens too (batch, time)
  y_shape.back() = M;
  x = x.reshape({-1, x.size(-1)}).contiguous();
  const int64_t N = x.size(0), K = x.size(1), KB = block_cols(N, val.numel(), M, K);
  TORCH_CHECK(K * 256 < (int64_t{1} << 31), "spmm: in_features too large for 32-bit tile offsets");
  auto y = torch::empty(y_shape, x.options());
  if (K == 0) return bias.has_value() ? bias->expand(y_shape).contiguous() : y.zero_();  // an empty sum
  if (KB > 0 && !bnd.has_value()) bnd = bounds(crow, col, K, KB);
  TORCH_CHECK(KB == 0 || bnd->numel() == M * ((K + KB - 1) / KB + 1), "spmm: bounds made for another shape");
  const int* bd = KB > 0 ? bnd->data_ptr<int>() : nullptr;
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const int* cr = crow.data_ptr<int>();
  const float* v = val.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#ifdef __AVX512F__
  if (KB == 0 && bits.has_value() && bits->numel() > 0) {
    TORCH_CHECK(bits->numel() == M * ((K + 63) / 64), "spmm: bitmap made for another shape");
    spmm_bitmap(cr, (const uint64_t*)bits->data_ptr<int64_t>(), v, b, xp, yp, N, K, M);
    return y;
  }
#endif
  with_index(col, [&](auto cl) {
#ifdef __AVX512F__
    if (N >= TILE_512) spmm_avx512(cr, cl, v, bd, KB, b, xp, yp, N, K, M);
    else
#endif
    if (N >= BIG_TILE) spmm_tiled<BIG_TILE>(cr, cl, v, bd, KB, b, xp, yp, N, K, M);
    else if (N >= 8) spmm_tiled<2 * VW>(cr, cl, v, bd, KB, b, xp, yp, N, K, M);
    else spmm_gather(cr, cl, v, b, xp, yp, N, K, M);
  });
  return y;
}

// ---- sddmm: the weight gradient at the nonzeros, g[p] = sum over tokens t of dy[t, i] * x[t, j].
// Tokens are again the vector dimension: x and dy are packed into token tiles, (K, TILE) and
// (M, TILE), so both operands of a nonzero are TILE contiguous floats. Row i's dy tile is loaded
// into V registers once and stays there across the row's nonzeros: each nonzero then costs V loads
// of x and V FMAs, one load per FMA as in spmm, plus a horizontal sum. The sums of SDDMM_GROUP
// nonzeros are reduced together (hadd tree) and added to g[p..] with one vector store, since a row's
// entries are contiguous in g. Columns are blocked (bnd, as in spmm) so the slab of x that a sweep
// over the rows touches stays in L2. Threads take disjoint row ranges and every tile: no barrier, no
// shared write. The packing buffers are kept between calls (reused, not page-faulted in again).


constexpr int SDDMM_TILE = NACC * VW;           // 64 tokens with AVX2, 128 with AVX-512
constexpr int64_t SDDMM_RB = 512;  // rows per block: their dy tiles (128 KB with AVX2) and their share of g
// Column blocks sized by density: 12 KB / density of x per slab, 24-96 KB (48 KB at 75 %, 96 KB at 90 %).
// Longer runs per row and block mean fewer loop exits, dy reloads and partial groups; measured on both
// paths against 24 KB slabs (sparse_kernels/README.md, "SDDMM tuned"), the gain outweighs spilling L1.
int64_t sddmm_cols(int64_t K, int64_t nnz, int64_t M) {
  const double density = std::max(1e-3, (double)nnz / std::max<double>(1.0, (double)M * K));
  const double slab = std::min(96.0 * 1024, std::max(24.0 * 1024, 12.0 * 1024 / density));
  return std::max<int64_t>(VW, (int64_t)(slab / (SDDMM_TILE * 4)) / VW * VW);
}

#ifdef __AVX2__
// the horizontal sums of four vectors, as one 128-bit vector [sum a0, sum a1, sum a2, sum a3]
static inline __m128 hsum4(const vec& a0, const vec& a1, const vec& a2, const vec& a3) {
#ifdef __AVX512F__
  auto fold = [](const vec& a) {  // 16 lanes -> 8
    const __m512 z = (__m512)a;
    return _mm256_add_ps(_mm512_castps512_ps256(z), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
  };
  const __m256 b0 = fold(a0), b1 = fold(a1), b2 = fold(a2), b3 = fold(a3);
#else
  const __m256 b0 = (__m256)a0, b1 = (__m256)a1, b2 = (__m256)a2, b3 = (__m256)a3;
#endif
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
#endif

static inline float hsum(const vec& a) {
  float s = 0.f;
  for (int l = 0; l < VW; l++) s += a[l];
  return s;
}

#ifdef __AVX2__
// the dot products of the dy tile d (V vectors, in registers) with the packed x tiles of four columns
// (their offsets in the tile, in columns), as one 128-bit vector [dot j0, dot j1, dot j2, dot j3]
static inline __m128 dot4(const vec* d, const float* xt, int64_t j0, int64_t j1, int64_t j2, int64_t j3) {
  constexpr int TILE = SDDMM_TILE, V = TILE / VW;
  const vec *x0 = (const vec*)(xt + j0 * TILE), *x1 = (const vec*)(xt + j1 * TILE);
  const vec *x2 = (const vec*)(xt + j2 * TILE), *x3 = (const vec*)(xt + j3 * TILE);
  vec a0 = d[0] * x0[0], a1 = d[0] * x1[0], a2 = d[0] * x2[0], a3 = d[0] * x3[0];
  for (int u = 1; u < V; u++) {
    a0 += d[u] * x0[u];
    a1 += d[u] * x1[u];
    a2 += d[u] * x2[u];
    a3 += d[u] * x3[u];
  }
  return hsum4(a0, a1, a2, a3);
}
#endif

// one row's entries [p, end) against its dy tile d (V vectors, in registers), added into g
template <typename Index>
static inline void sddmm_row(const vec* d, const Index* col, int64_t p, int64_t end, const float* xt, int64_t c0,
                             float* g) {
#ifdef __AVX2__
  for (; p + 4 <= end; p += 4)
    _mm_storeu_ps(g + p, _mm_add_ps(_mm_loadu_ps(g + p), dot4(d, xt, col[p] - c0, col[p + 1] - c0,
                                                              col[p + 2] - c0, col[p + 3] - c0)));
  // 1-3 entries left: one more dot4, its unused lanes on a repeated column and dropped (a horizontal
  // sum per entry costs more than the FMAs of a whole group)
  if (p < end) {
    const int r = (int)(end - p);
    const int64_t j0 = col[p] - c0, j1 = col[r > 1 ? p + 1 : p] - c0, j2 = col[r > 2 ? p + 2 : p] - c0;
    float t[4];
    _mm_storeu_ps(t, dot4(d, xt, j0, j1, j2, j2));
    for (int q = 0; q < r; q++) g[p + q] += t[q];
  }
#else
  constexpr int TILE = SDDMM_TILE, V = TILE / VW;
  for (; p < end; p++) {
    const vec* xr = (const vec*)(xt + ((int64_t)col[p] - c0) * TILE);
    vec a = d[0] * xr[0];
    for (int u = 1; u < V; u++) a += d[u] * xr[u];
    g[p] += hsum(a);
  }
#endif
}

struct PackBuffer {  // a buffer that keeps its pages between calls (a fresh one would page-fault in)
  std::vector<vec> v;
  float* get(int64_t floats) {
    if ((int64_t)v.size() * VW < floats) v.resize((floats + VW - 1) / VW);
    return (float*)v.data();
  }
};

// perm: when given, (crow, col) is the transposed pattern (W.T's, so dy and x come swapped: dy here is the
// layer's input, x its output gradient) and entry q's sum is W's entry perm[q]: g[perm[q]]. A layer whose input
// is wider than its output (c_proj: 3072 -> 768) takes this way, since then the packed tiles are the narrow
// operand's: 4x less to write and read back, and each row block's share of g stays in L2 (measured,
// sparse_kernels/README.md). The scatter happens per row block, while its sums are still in cache.
torch::Tensor sddmm(torch::Tensor crow, torch::Tensor col, torch::Tensor dy, torch::Tensor x,
                    c10::optional<torch::Tensor> bnd, c10::optional<torch::Tensor> perm) {
  TORCH_CHECK(dy.scalar_type() == torch::kFloat && x.scalar_type() == torch::kFloat, "sddmm: float32");
  TORCH_CHECK(crow.scalar_type() == torch::kInt, "sddmm: int32 row pointers");
  dy = dy.contiguous(); x = x.contiguous();
  constexpr int TILE = SDDMM_TILE, V = TILE / VW;
  const int64_t N = x.size(0), K = x.size(1), M = dy.size(1), ntiles = (N + TILE - 1) / TILE;
  const int64_t KB = sddmm_cols(K, col.numel(), M), nkb = (K + KB - 1) / KB;
  TORCH_CHECK(K * TILE < (int64_t{1} << 31), "sddmm: in_features too large");
  TORCH_CHECK(!perm.has_value() || (perm->scalar_type() == torch::kInt && perm->numel() == col.numel()),
              "sddmm: perm must be int32, one per entry");
  auto g = torch::zeros({col.numel()}, x.options());
  if (N == 0 || col.numel() == 0) return g;
  if (!bnd.has_value()) bnd = bounds(crow, col, K, KB);
  TORCH_CHECK(bnd->numel() == M * (nkb + 1), "sddmm: bounds made for another shape");
  const float *xs = x.data_ptr<float>(), *ds = dy.data_ptr<float>();
  // every token tile of x, packed once and shared by the threads. One buffer per process: autograd
  // runs a CPU backward in one thread, so two calls never overlap
  static PackBuffer xbuf;
  float* xp = xbuf.get(ntiles * K * TILE);
  at::parallel_for(0, ntiles, 1, [&](int64_t b, int64_t e) {
    for (int64_t tile = b; tile < e; tile++) pack_tile<TILE>(xs, N, K, tile * TILE, xp + tile * K * TILE);
  });
  const int* cr = crow.data_ptr<int>();
  const int* bd = bnd->data_ptr<int>();
  float* gout = g.data_ptr<float>();
  const int* pm = perm.has_value() ? perm->data_ptr<int>() : nullptr;
  static PackBuffer gbuf;  // with perm: the sums in the transposed order, one row block at a time
  float* gp = pm ? gbuf.get(col.numel()) : gout;
  with_index(col, [&](auto cl) {
    at::parallel_for(0, M, grain(M, (int64_t)cr[M] * N), [&](int64_t b, int64_t e) {
      thread_local PackBuffer dbuf;  // this thread's rows of dy, one token tile at a time
      float* dt = dbuf.get(SDDMM_RB * TILE);
      // rows in blocks, and all token tiles of a block before the next: the block's share of g, which
      // every tile adds to, stays in cache (the whole g of a GPT-3 XL matrix would stream from memory)
      for (int64_t r0 = b; r0 < e; r0 += SDDMM_RB) {
        const int64_t rows = std::min(e, r0 + SDDMM_RB) - r0;
        if (pm) std::fill(gp + cr[r0], gp + cr[r0 + rows], 0.f);
        for (int64_t tile = 0; tile < ntiles; tile++) {
          const int64_t t0 = tile * TILE, nt = std::min<int64_t>(TILE, N - t0);
          const float* xt = xp + tile * K * TILE;
          transpose(ds + t0 * M + r0, M, dt, TILE, nt, rows);  // dy[t0:, r0:] -> (rows, TILE)
          if (nt < TILE)
            for (int64_t r = 0; r < rows; r++) std::fill(dt + r * TILE + nt, dt + (r + 1) * TILE, 0.f);
          for (int64_t c = 0; c < nkb; c++) {  // a slab of x in L1 while the block's rows sweep it
            // the next slab (after the last, the next tile's first) goes to L2 meanwhile, a few lines per
            // row: 3-11 % faster on every shape measured (sparse_kernels/README.md)
            const SlabPrefetch pf = c + 1 < nkb ? slab_prefetch(xt, c + 1, KB, K, TILE, rows)
                                                : slab_prefetch(tile + 1 < ntiles ? xt + K * TILE : xt, 0, KB, K, TILE, rows);
            for (int64_t i = r0; i < r0 + rows; i++) {
              pf.row(i - r0);
              const int* rb = bd + i * (nkb + 1) + c;
              if (rb[0] == rb[1]) continue;
              vec d[V];
              for (int u = 0; u < V; u++) d[u] = ((const vec*)(dt + (i - r0) * TILE))[u];
              sddmm_row(d, cl, rb[0], rb[1], xt, 0, gp);
            }
          }
        }
        if (pm)
          for (int64_t q = cr[r0]; q < cr[r0 + rows]; q++) gout[pm[q]] = gp[q];
      }
    });
  });
  return g;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("spmm", &spmm, "y = x @ W.T with W in CSR (fp32)", py::arg("crow"), py::arg("col"), py::arg("val"),
        py::arg("bias"), py::arg("x"), py::arg("M"), py::arg("bnd") = py::none(), py::arg("bits") = py::none());
  m.def("bitmap_spread", [] {
#ifdef __AVX512F__
    return std::string(bitmap_permute() ? "permute" : "expand");
#else
    return std::string("");
#endif
  }, "how the bitmap path spreads a chunk's values into its lanes: permute, expand, or '' (no bitmap path)");
  m.def("bitmap", &bitmap, "the pattern as one bit per weight, for fewer than 8 tokens (empty: not used)");
  m.def("block_cols", &block_cols, "column-block width of the kernel N tokens take (0: none)");
  m.def("bounds", &bounds, "where each row's entries cross into the next column block");
  m.def("sddmm", &sddmm, "weight gradient at the CSR nonzeros (fp32)", py::arg("crow"), py::arg("col"),
        py::arg("dy"), py::arg("x"), py::arg("bnd") = py::none(), py::arg("perm") = py::none());
  m.def("sddmm_cols", &sddmm_cols, "column-block width of sddmm for a (M, K) pattern with nnz entries");
}
