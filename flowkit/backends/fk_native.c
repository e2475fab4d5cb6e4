/* flowkit's fused Gaussian reductions (AVX2 + FMA, float32).

   exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' degree-6 expf
   polynomial (measured max relative error 1.2e-7, about 1 ulp); arguments below the float
   range give exactly 0. Threads are made by the caller (Python threads; ctypes releases
   the GIL), so no OpenMP runtime is mixed with torch's.

   The sizes the fused kernel supports are defined here only and read by Python through
   fk_dmax() / fk_kmax(); fk_abi() versions the calling convention. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

/* exp on x already clamped to [-87.3365447, 88.3762626] (the float range). */
static inline __m256 fk_exp8_core(__m256 x) {
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                   _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#define FK_EXP_LO (-87.3365447f)

static inline __m256 fk_exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(FK_EXP_LO), hi = _mm256_set1_ps(88.3762626f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    return _mm256_andnot_ps(under, fk_exp8_core(_mm256_min_ps(_mm256_max_ps(x, lo), hi)));
}

/* exp(min(x, 0)): the kernel's exponent, whose rounding may push it slightly above 0.
   Below -88 the exponent field n + 127 is 0, so the result is exactly 0 (as fk_exp8's
   underflow) without a compare and a mask: two instructions fewer per vector. */
static inline __m256 fk_exp8_nonpos(__m256 x) {
    return fk_exp8_core(_mm256_max_ps(_mm256_min_ps(x, _mm256_setzero_ps()),
                                      _mm256_set1_ps(-88.0f)));
}

void fk_scaled_exp(float *a, int64_t n, float s) {
    const __m256 sv = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(a + i, fk_exp8(_mm256_mul_ps(sv, _mm256_loadu_ps(a + i))));
    if (i < n) {
        float buf[8] = {0};
        for (int64_t k = i; k < n; ++k) buf[k - i] = a[k];
        _mm256_storeu_ps(buf, fk_exp8(_mm256_mul_ps(sv, _mm256_loadu_ps(buf))));
        for (int64_t k = i; k < n; ++k) a[k] = buf[k - i];
    }
}

#define FK_R 4
#define FK_DMAX 16
#define FK_KMAX 17
#define FK_ABI 2

int64_t fk_dmax(void) { return FK_DMAX; }
int64_t fk_kmax(void) { return FK_KMAX; }
int64_t fk_abi(void) { return FK_ABI; }

/* out[i, k] += sum_j exp(-|xs_i - ys_j|^2) vt[k, j] for r0 <= i < r1; xs (N, d) rows,
   yt (d, M) and vt (K, M) transposed, M a multiple of 8 (padding columns have vt = 0). */
void fk_gauss_reduce(const float *xs, const float *yt, const float *vt, float *out,
                     int64_t r0, int64_t r1, int64_t M, int64_t d, int64_t K) {
    for (int64_t i0 = r0; i0 < r1; i0 += FK_R) {
        int64_t nr = (r1 - i0 < FK_R) ? (r1 - i0) : FK_R;
        __m256 xb[FK_R][FK_DMAX];
        __m256 acc[FK_R][FK_KMAX];
        for (int64_t a = 0; a < FK_R; ++a) {
            int64_t row = i0 + (a < nr ? a : 0);
            for (int64_t c = 0; c < d; ++c) xb[a][c] = _mm256_set1_ps(xs[row * d + c]);
            for (int64_t k = 0; k < K; ++k) acc[a][k] = _mm256_setzero_ps();
        }
        for (int64_t j = 0; j < M; j += 8) {
            __m256 r2[FK_R], e[FK_R];
            for (int64_t a = 0; a < FK_R; ++a) r2[a] = _mm256_setzero_ps();
            for (int64_t c = 0; c < d; ++c) {
                __m256 yv = _mm256_loadu_ps(yt + c * M + j);
                for (int64_t a = 0; a < FK_R; ++a) {
                    __m256 diff = _mm256_sub_ps(xb[a][c], yv);
                    r2[a] = _mm256_fmadd_ps(diff, diff, r2[a]);
                }
            }
            for (int64_t a = 0; a < FK_R; ++a)
                e[a] = fk_exp8(_mm256_sub_ps(_mm256_setzero_ps(), r2[a]));
            for (int64_t k = 0; k < K; ++k) {
                __m256 vv = _mm256_loadu_ps(vt + k * M + j);
                for (int64_t a = 0; a < FK_R; ++a)
                    acc[a][k] = _mm256_fmadd_ps(e[a], vv, acc[a][k]);
            }
        }
        for (int64_t a = 0; a < nr; ++a)
            for (int64_t k = 0; k < K; ++k) {
                float t[8];
                _mm256_storeu_ps(t, acc[a][k]);
                out[(i0 + a) * K + k] +=
                    ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
            }
    }
}

/* One vector of a Gram tile turned into the Gaussian kernel: exp(min(s g + p_i + q, 0)). */
static inline __m256 fk_gram8(const float *g, const float *q, __m256 pi, __m256 sv) {
    return fk_exp8_nonpos(_mm256_fmadd_ps(sv, _mm256_loadu_ps(g),
                                          _mm256_add_ps(pi, _mm256_loadu_ps(q))));
}

/* The epilogue of one tile of the large-d (Gram) path, while the tile is in cache:
   g[i, j] <- exp(min(s g[i, j] + p[i] + q[j], 0)) and acc[i] += sum_j g[i, j] u[j] for a
   contiguous rows x cols tile g. With g = x y^T, s = 2c, p = -c|x|^2, q = -c|y|^2 the tile
   becomes the Gaussian kernel exp(-c|x - y|^2) (the min clips the Gram form's rounding,
   which can make a squared distance slightly negative) and acc gains the tile's share of
   the reduction against u, so that column never goes through a second BLAS product. */
void fk_gauss_tile(float *g, const float *p, const float *q, const float *u, float *acc,
                   int64_t rows, int64_t cols, float s) {
    const __m256 sv = _mm256_set1_ps(s);
    const int64_t body = cols - cols % 8;
    for (int64_t i = 0; i < rows; ++i) {
        float *gi = g + i * cols;
        const __m256 pi = _mm256_set1_ps(p[i]);
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();  /* two FMA chains */
        int64_t j = 0;
        for (; j + 16 <= body; j += 16) {
            __m256 e0 = fk_gram8(gi + j, q + j, pi, sv);
            __m256 e1 = fk_gram8(gi + j + 8, q + j + 8, pi, sv);
            _mm256_storeu_ps(gi + j, e0);
            _mm256_storeu_ps(gi + j + 8, e1);
            a0 = _mm256_fmadd_ps(e0, _mm256_loadu_ps(u + j), a0);
            a1 = _mm256_fmadd_ps(e1, _mm256_loadu_ps(u + j + 8), a1);
        }
        for (; j < body; j += 8) {
            __m256 e0 = fk_gram8(gi + j, q + j, pi, sv);
            _mm256_storeu_ps(gi + j, e0);
            a0 = _mm256_fmadd_ps(e0, _mm256_loadu_ps(u + j), a0);
        }
        float t[8];
        _mm256_storeu_ps(t, _mm256_add_ps(a0, a1));
        float total = ((t[0] + t[4]) + (t[1] + t[5])) + ((t[2] + t[6]) + (t[3] + t[7]));
        if (j < cols) {  /* the last cols % 8 entries, through zero-padded buffers */
            float gb[8] = {0}, qb[8] = {0};
            for (int64_t k = j; k < cols; ++k) {
                gb[k - j] = gi[k];
                qb[k - j] = q[k];
            }
            _mm256_storeu_ps(gb, fk_gram8(gb, qb, pi, sv));
            for (int64_t k = j; k < cols; ++k) {
                gi[k] = gb[k - j];
                total += gb[k - j] * u[k];
            }
        }
        acc[i] += total;
    }
}

/* Sinkhorn's softmin, fused (Feydy et al. 2019's log-domain update, no M-column buffer):
   lse[i] = log sum_j exp(h_j - |xs_i - ys_j|^2) for r0 <= i < r1 and, when K > 0,
   out[i, k] = sum_j softmax_j(h_j - |xs_i - ys_j|^2) vt[k, j]. xs (N, d) rows, yt (d, M)
   and vt (K, M) transposed, M a multiple of 8 (padding columns have h = -inf).
   Two sweeps over j: the row's maximum first (no exponential), then the shifted sums, so
   the largest term is exactly exp(0) = 1 and nothing under- or overflows. The 8-lane
   float32 sums are flushed into double every FK_FLUSH columns. A NaN anywhere in a row
   makes its lse NaN (the vector max would drop it). */
#define FK_FLUSH 512

static inline __m256 fk_logits8(const __m256 *xb, const float *yt, const float *h,
                                int64_t j, int64_t M, int64_t d) {
    __m256 r2 = _mm256_setzero_ps();
    for (int64_t c = 0; c < d; ++c) {
        __m256 diff = _mm256_sub_ps(xb[c], _mm256_loadu_ps(yt + c * M + j));
        r2 = _mm256_fmadd_ps(diff, diff, r2);
    }
    return _mm256_sub_ps(_mm256_loadu_ps(h + j), r2);
}

static inline double fk_hsum8(__m256 v) {
    float t[8];
    _mm256_storeu_ps(t, v);
    return ((double)t[0] + t[4] + t[1] + t[5]) + ((double)t[2] + t[6] + t[3] + t[7]);
}

/* One group of 8 columns into the running sums: sv += e, av[.][k] += e * v_k. */
static inline void fk_accumulate8(const __m256 *e, const float *vt, int64_t M, int64_t j,
                                  int64_t K, __m256 *sv, __m256 av[][FK_KMAX]) {
    for (int64_t a = 0; a < FK_R; ++a) sv[a] = _mm256_add_ps(sv[a], e[a]);
    for (int64_t k = 0; k < K; ++k) {
        __m256 vv = _mm256_loadu_ps(vt + k * M + j);
        for (int64_t a = 0; a < FK_R; ++a) av[a][k] = _mm256_fmadd_ps(e[a], vv, av[a][k]);
    }
}

/* The float lanes into the double totals, every FK_FLUSH columns (bounds float rounding). */
static inline void fk_flush(const __m256 *sv, __m256 av[][FK_KMAX], int64_t K, double *s,
                            double acc[][FK_KMAX]) {
    for (int64_t a = 0; a < FK_R; ++a) {
        s[a] += fk_hsum8(sv[a]);
        for (int64_t k = 0; k < K; ++k) acc[a][k] += fk_hsum8(av[a][k]);
    }
}

/* Rows i0 .. i0 + nr - 1 of a softmin: lse = max + log(sum), the barycentre acc / sum; a
   NaN met on the row gives NaN, a row of -inf logits (zero weights only) lse = -inf. */
static void fk_softmin_store(int64_t i0, int64_t nr, const float *rowmax, const __m256 *bad,
                             const double *s, double acc[][FK_KMAX], int64_t K, float *lse,
                             float *out) {
    for (int64_t a = 0; a < nr; ++a) {
        float m = rowmax[a];
        int isbad = _mm256_movemask_ps(bad[a]) != 0;
        int64_t i = i0 + a;
        if (isbad) lse[i] = NAN;
        else lse[i] = m > -INFINITY ? (float)(m + log(s[a])) : -INFINITY;
        for (int64_t k = 0; k < K; ++k)
            out[i * K + k] = (isbad || !(m > -INFINITY)) ? NAN : (float)(acc[a][k] / s[a]);
    }
}

void fk_softmin(const float *xs, const float *yt, const float *h, const float *vt,
                float *lse, float *out, int64_t r0, int64_t r1, int64_t M, int64_t d,
                int64_t K) {
    for (int64_t i0 = r0; i0 < r1; i0 += FK_R) {
        int64_t nr = (r1 - i0 < FK_R) ? (r1 - i0) : FK_R;
        __m256 xb[FK_R][FK_DMAX], mx[FK_R], bad[FK_R];
        for (int64_t a = 0; a < FK_R; ++a) {
            int64_t row = i0 + (a < nr ? a : 0);
            for (int64_t c = 0; c < d; ++c) xb[a][c] = _mm256_set1_ps(xs[row * d + c]);
            mx[a] = _mm256_set1_ps(-INFINITY);
            bad[a] = _mm256_setzero_ps();
        }
        for (int64_t j = 0; j < M; j += 8)
            for (int64_t a = 0; a < FK_R; ++a) {
                __m256 v = fk_logits8(xb[a], yt, h, j, M, d);
                bad[a] = _mm256_or_ps(bad[a], _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                mx[a] = _mm256_max_ps(mx[a], v);
            }
        __m256 shift[FK_R];
        float rowmax[FK_R];
        for (int64_t a = 0; a < FK_R; ++a) {
            float t[8];
            _mm256_storeu_ps(t, mx[a]);
            float m = t[0];
            for (int k = 1; k < 8; ++k) m = t[k] > m ? t[k] : m;
            rowmax[a] = m;
            /* a row of -inf logits (zero weights only) sums nothing: shift by 0 */
            shift[a] = _mm256_set1_ps(m > -INFINITY ? m : 0.0f);
        }
        double s[FK_R] = {0}, acc[FK_R][FK_KMAX] = {{0}};
        for (int64_t j0 = 0; j0 < M; j0 += FK_FLUSH) {
            int64_t j1 = (M - j0 < FK_FLUSH) ? M : j0 + FK_FLUSH;
            __m256 sv[FK_R], av[FK_R][FK_KMAX];
            for (int64_t a = 0; a < FK_R; ++a) {
                sv[a] = _mm256_setzero_ps();
                for (int64_t k = 0; k < K; ++k) av[a][k] = _mm256_setzero_ps();
            }
            for (int64_t j = j0; j < j1; j += 8) {
                __m256 e[FK_R];
                for (int64_t a = 0; a < FK_R; ++a)
                    e[a] = fk_exp8(_mm256_sub_ps(fk_logits8(xb[a], yt, h, j, M, d), shift[a]));
                fk_accumulate8(e, vt, M, j, K, sv, av);
            }
            fk_flush(sv, av, K, s, acc);
        }
        fk_softmin_store(i0, nr, rowmax, bad, s, acc, K, lse, out);
    }
}

/* Block-sparse softmin for the multiscale Sinkhorn (kernel truncation, Schmitzer 2019):
   the rows of cluster c (rows[2c] <= i < rows[2c+1]) reduce only over the column ranges
   cols[2q] <= j < cols[2q+1], ptr[c] <= q < ptr[c+1], that the truncation kept; results
   as fk_softmin's on those columns (a row with no kept column: lse = -inf, out NaN). Same
   two sweeps, exponential and float64 flushes as fk_softmin. Ranges need not be aligned:
   each 8-column load starts at a multiple of 8 (inside the padded M) and the lanes
   outside [lo, hi) get -inf added to their logits. Clusters c0 <= c < c1 are done. */
static const float fk_mask_tbl[24] = {
    -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY,
    0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f,
    -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};

/* 0 on the lanes k with lo <= j + k < hi, -inf elsewhere (j a multiple of 8 in range). */
static inline __m256 fk_range_mask(int64_t j, int64_t lo, int64_t hi) {
    int64_t a = lo - j, b = hi - j;
    a = a < 0 ? 0 : a;
    b = b > 8 ? 8 : b;
    return _mm256_add_ps(_mm256_loadu_ps(fk_mask_tbl + 8 - a),
                         _mm256_loadu_ps(fk_mask_tbl + 16 - b));
}

/* The logits of columns j..j+7, -inf outside [lo, hi): only a range's first and last
   groups straddle its ends, so the groups inside skip the mask. */
static inline __m256 fk_range_logits8(const __m256 *xb, const float *yt, const float *h,
                                      int64_t j, int64_t M, int64_t d, int64_t lo,
                                      int64_t hi) {
    __m256 v = fk_logits8(xb, yt, h, j, M, d);
    return (j >= lo && j + 8 <= hi) ? v : _mm256_add_ps(v, fk_range_mask(j, lo, hi));
}

static inline float fk_hmax8(__m256 v) {
    float t[8];
    _mm256_storeu_ps(t, v);
    float m = t[0];
    for (int k = 1; k < 8; ++k) m = t[k] > m ? t[k] : m;
    return m;
}

/* One pass over the kept columns: each chunk of up to FK_FLUSH columns has its logits
   stored (FK_R x FK_FLUSH floats, in L1), its maximum taken, the row's sums rescaled to
   that maximum when it rises (an online log-sum-exp), then its exponentials summed; the
   logits are computed once, not once for the maximum and once for the sums. */
void fk_softmin_ranges(const float *xs, const float *yt, const float *h, const float *vt,
                       float *lse, float *out, const int64_t *rows, const int64_t *ptr,
                       const int64_t *cols, int64_t c0, int64_t c1, int64_t M, int64_t d,
                       int64_t K) {
    float buf[FK_R][FK_FLUSH];
    for (int64_t c = c0; c < c1; ++c) {
        const int64_t *cr = cols + 2 * ptr[c];
        int64_t nq = ptr[c + 1] - ptr[c], r1 = rows[2 * c + 1];
        for (int64_t i0 = rows[2 * c]; i0 < r1; i0 += FK_R) {
            int64_t nr = (r1 - i0 < FK_R) ? (r1 - i0) : FK_R;
            __m256 xb[FK_R][FK_DMAX], bad[FK_R];
            float rowmax[FK_R];
            double s[FK_R] = {0}, acc[FK_R][FK_KMAX] = {{0}};
            for (int64_t a = 0; a < FK_R; ++a) {
                int64_t row = i0 + (a < nr ? a : 0);
                for (int64_t k = 0; k < d; ++k) xb[a][k] = _mm256_set1_ps(xs[row * d + k]);
                bad[a] = _mm256_setzero_ps();
                rowmax[a] = -INFINITY;
            }
            for (int64_t q = 0; q < nq; ++q) {
                int64_t lo = cr[2 * q], hi = cr[2 * q + 1];
                for (int64_t j0 = lo & ~(int64_t)7; j0 < hi; j0 += FK_FLUSH) {
                    int64_t j1 = (hi - j0 < FK_FLUSH) ? hi : j0 + FK_FLUSH;
                    __m256 cm[FK_R], shift[FK_R], sv[FK_R], av[FK_R][FK_KMAX];
                    for (int64_t a = 0; a < FK_R; ++a) cm[a] = _mm256_set1_ps(-INFINITY);
                    for (int64_t j = j0; j < j1; j += 8) {
                        for (int64_t a = 0; a < FK_R; ++a) {
                            __m256 v = fk_range_logits8(xb[a], yt, h, j, M, d, lo, hi);
                            bad[a] = _mm256_or_ps(bad[a], _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                            cm[a] = _mm256_max_ps(cm[a], v);
                            _mm256_storeu_ps(buf[a] + (j - j0), v);
                        }
                    }
                    for (int64_t a = 0; a < FK_R; ++a) {
                        float m = fk_hmax8(cm[a]);
                        if (m > rowmax[a]) {
                            if (rowmax[a] > -INFINITY) {
                                double r = exp((double)rowmax[a] - (double)m);
                                s[a] *= r;
                                for (int64_t k = 0; k < K; ++k) acc[a][k] *= r;
                            }
                            rowmax[a] = m;
                        }
                        shift[a] = _mm256_set1_ps(rowmax[a] > -INFINITY ? rowmax[a] : 0.0f);
                        sv[a] = _mm256_setzero_ps();
                        for (int64_t k = 0; k < K; ++k) av[a][k] = _mm256_setzero_ps();
                    }
                    for (int64_t j = j0; j < j1; j += 8) {
                        __m256 e[FK_R];
                        for (int64_t a = 0; a < FK_R; ++a)
                            e[a] = fk_exp8_nonpos(_mm256_sub_ps(
                                _mm256_loadu_ps(buf[a] + (j - j0)), shift[a]));
                        fk_accumulate8(e, vt, M, j, K, sv, av);
                    }
                    fk_flush(sv, av, K, s, acc);
                }
            }
            fk_softmin_store(i0, nr, rowmax, bad, s, acc, K, lse, out);
        }
    }
}
