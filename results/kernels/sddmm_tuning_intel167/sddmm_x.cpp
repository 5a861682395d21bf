// Appended to a copy of sparse_kernels/csr_cpu.cpp at commit c19122d (before the tuning), with
// m.def("sddmm_x", &sddmm_x); added to its PYBIND11_MODULE, saved as /tmp/sd/exp.cpp for ab.py.
// The first sweep (07:20 UTC) ran this without the partial-group path (tails went entry by entry, as at c19122d).
// ---- experimental sddmm: templated V (vectors per tile), G (nonzeros per group); runtime RB, KB
template <int G>
static inline void hsumG_store(vec* a, float* g) {
#ifdef __AVX2__
  for (int q = 0; q < G; q += 4) _mm_storeu_ps(g + q, _mm_add_ps(_mm_loadu_ps(g + q), hsum4(a[q], a[q + 1], a[q + 2], a[q + 3])));
#endif
}
template <int V, int G, typename Index>
static inline void sddmm_row_x(const vec* d, const Index* col, int64_t p, int64_t end, const float* xt, float* g) {
  constexpr int TILE = V * VW;
  for (; p + G <= end; p += G) {
    const vec* xr[G];
    for (int q = 0; q < G; q++) xr[q] = (const vec*)(xt + (int64_t)col[p + q] * TILE);
    vec a[G];
    for (int q = 0; q < G; q++) a[q] = d[0] * xr[q][0];
    for (int u = 1; u < V; u++)
      for (int q = 0; q < G; q++) a[q] += d[u] * xr[q][u];
    hsumG_store<G>(a, g + p);
  }
  if (G > 4 && p + 4 <= end) {
    const vec* xr[4];
    for (int q = 0; q < 4; q++) xr[q] = (const vec*)(xt + (int64_t)col[p + q] * TILE);
    vec a[4];
    for (int q = 0; q < 4; q++) a[q] = d[0] * xr[q][0];
    for (int u = 1; u < V; u++)
      for (int q = 0; q < 4; q++) a[q] += d[u] * xr[q][u];
    hsumG_store<4>(a, g + p);
    p += 4;
  }
  const int r = (int)(end - p);
  if (r > 0) {  // 1-3 left: one hsum4 with zeros in the unused lanes
    const vec* x0 = (const vec*)(xt + (int64_t)col[p] * TILE);
    const vec* x1 = (const vec*)(xt + (int64_t)col[r > 1 ? p + 1 : p] * TILE);
    const vec* x2 = (const vec*)(xt + (int64_t)col[r > 2 ? p + 2 : p] * TILE);
    vec a0 = d[0] * x0[0], a1 = d[0] * x1[0], a2 = d[0] * x2[0];
    for (int u = 1; u < V; u++) {
      a0 += d[u] * x0[u];
      a1 += d[u] * x1[u];
      a2 += d[u] * x2[u];
    }
    float t[4];
    _mm_storeu_ps(t, hsum4(a0, a1, a2, a2));
    for (int q = 0; q < r; q++) g[p + q] += t[q];
  }
}

template <int V, int G>
torch::Tensor sddmm_x_impl(torch::Tensor crow, torch::Tensor col, torch::Tensor dy, torch::Tensor x, int64_t RBX, int64_t KB, torch::Tensor bnd) {
  dy = dy.contiguous(); x = x.contiguous();
  constexpr int TILE = V * VW;
  const int64_t N = x.size(0), K = x.size(1), M = dy.size(1), ntiles = (N + TILE - 1) / TILE;
  const int64_t nkb = (K + KB - 1) / KB;
  auto g = torch::zeros({col.numel()}, x.options());
  TORCH_CHECK(bnd.numel() == M * (nkb + 1), "bnd");
  const float *xs = x.data_ptr<float>(), *ds = dy.data_ptr<float>();
  static PackBuffer xbuf;
  float* xp = xbuf.get(ntiles * K * TILE);
  at::parallel_for(0, ntiles, 1, [&](int64_t b, int64_t e) {
    for (int64_t tile = b; tile < e; tile++) pack_tile<TILE>(xs, N, K, tile * TILE, xp + tile * K * TILE);
  });
  const int* cr = crow.data_ptr<int>();
  const int* bd = bnd.data_ptr<int>();
  float* gp = g.data_ptr<float>();
  with_index(col, [&](auto cl) {
    at::parallel_for(0, M, grain(M, (int64_t)cr[M] * N), [&](int64_t b, int64_t e) {
      thread_local PackBuffer dbuf;
      float* dt = dbuf.get(RBX * TILE);
      for (int64_t r0 = b; r0 < e; r0 += RBX) {
        const int64_t rows = std::min(e, r0 + RBX) - r0;
        for (int64_t tile = 0; tile < ntiles; tile++) {
          const int64_t t0 = tile * TILE, nt = std::min<int64_t>(TILE, N - t0);
          const float* xt = xp + tile * K * TILE;
          transpose(ds + t0 * M + r0, M, dt, TILE, nt, rows);
          if (nt < TILE)
            for (int64_t r = 0; r < rows; r++) std::fill(dt + r * TILE + nt, dt + (r + 1) * TILE, 0.f);
          for (int64_t c = 0; c < nkb; c++)
            for (int64_t i = r0; i < r0 + rows; i++) {
              const int* rb = bd + i * (nkb + 1) + c;
              if (rb[0] == rb[1]) continue;
              vec d[V];
              for (int u = 0; u < V; u++) d[u] = ((const vec*)(dt + (i - r0) * TILE))[u];
              sddmm_row_x<V, G>(d, cl, rb[0], rb[1], xt, gp);
            }
        }
      }
    });
  });
  return g;
}

torch::Tensor sddmm_x(torch::Tensor crow, torch::Tensor col, torch::Tensor dy, torch::Tensor x, int64_t V, int64_t G, int64_t RBX, int64_t KB, torch::Tensor bnd) {
  if (V == 8 && G == 4) return sddmm_x_impl<8, 4>(crow, col, dy, x, RBX, KB, bnd);
  if (V == 8 && G == 8) return sddmm_x_impl<8, 8>(crow, col, dy, x, RBX, KB, bnd);
  if (V == 4 && G == 8) return sddmm_x_impl<4, 8>(crow, col, dy, x, RBX, KB, bnd);
  if (V == 4 && G == 4) return sddmm_x_impl<4, 4>(crow, col, dy, x, RBX, KB, bnd);
  if (V == 16 && G == 8) return sddmm_x_impl<16, 8>(crow, col, dy, x, RBX, KB, bnd);
  if (V == 16 && G == 4) return sddmm_x_impl<16, 4>(crow, col, dy, x, RBX, KB, bnd);
  if (V == 12 && G == 8) return sddmm_x_impl<12, 8>(crow, col, dy, x, RBX, KB, bnd);
  TORCH_CHECK(false, "combo");
}
