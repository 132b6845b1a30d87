//! Every product of the CPU path, c += a · w with a weight-like w used many times: the
//! per-step products with W_hh (an a of few rows, the batch), and the chunk products of the
//! input projection and the weight gradients. ndarray's product packs both operands on every
//! call, which costs about as much as a step's product; on x86_64 with AVX2 and FMA, w is
//! packed once, gathered straight from the layer's weights, and a register-blocked kernel
//! streams through it. Elsewhere it is ndarray's product of the gathered copy.

use super::pool;
use crate::scalar::Scalar;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayViewMut2};
use std::borrow::Cow;
use std::ops::Range;

/// A weight matrix w (k, n), packed for the kernel where it runs, else a plain copy.
pub(super) struct PackedMatrix<F: Scalar> {
    k: usize,
    n: usize,
    storage: Storage<F>,
}

enum Storage<F: Scalar> {
    #[cfg(target_arch = "x86_64")]
    Panels(Vec<F>),
    Plain(Array2<F>),
}

/// A row of values as a slice: borrowed where they are contiguous, else copied.
fn contiguous<F: Clone>(values: ArrayView1<'_, F>) -> Cow<'_, [F]> {
    match values.to_slice() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(values.to_vec()),
    }
}

/// Writes a (k, n) matrix into panels of `width` columns: ⌈n / width⌉ row-major (k, width)
/// blocks one after the other.
struct Writer<'a, F> {
    data: &'a mut [F],
    k: usize,
    width: usize,
}

impl<F: Copy> Writer<'_, F> {
    /// Row kk, from its n values.
    fn put_row(&mut self, kk: usize, values: &[F]) {
        for (p, segment) in values.chunks(self.width).enumerate() {
            let start = (p * self.k + kk) * self.width;
            self.data[start..start + segment.len()].copy_from_slice(segment);
        }
    }

    /// Panel p, from its columns: at most `width`, of k values each.
    fn put_panel(&mut self, p: usize, columns: &[impl AsRef<[F]>]) {
        let panel = &mut self.data[p * self.k * self.width..][..self.k * self.width];
        for (jj, column) in columns.iter().enumerate() {
            let column = &column.as_ref()[..self.k];
            for (row, &value) in panel.chunks_exact_mut(self.width).zip(column) {
                row[jj] = value;
            }
        }
    }
}

impl<F: Scalar> PackedMatrix<F> {
    /// w = source[rows, :]ᵀ: (k, n) = (source columns, rows.len()); column j of w is row
    /// `rows[j]` of `source`.
    pub(super) fn transposed_rows(source: ArrayView2<'_, F>, rows: &[usize]) -> Self {
        let (k, n) = (source.ncols(), rows.len());
        Self::build(k, n, |w| {
            for (p, panel_rows) in rows.chunks(w.width).enumerate() {
                let columns: Vec<_> = panel_rows
                    .iter()
                    .map(|&r| contiguous(source.row(r)))
                    .collect();
                w.put_panel(p, &columns);
            }
        })
    }

    /// w = source[rows, cols]: (k, n) = (rows.len(), cols.len()).
    pub(super) fn rows(source: ArrayView2<'_, F>, rows: &[usize], cols: Range<usize>) -> Self {
        let (k, n) = (rows.len(), cols.len());
        Self::build(k, n, |w| {
            for (kk, &row) in rows.iter().enumerate() {
                w.put_row(
                    kk,
                    &contiguous(source.row(row).slice_move(s![cols.clone()])),
                );
            }
        })
    }

    /// Packs the (k, n) matrix that `fill` writes whole.
    fn build(k: usize, n: usize, fill: impl FnOnce(&mut Writer<'_, F>)) -> Self {
        #[cfg(target_arch = "x86_64")]
        if avx2::available::<F>() {
            let nr = avx2::panel_width::<F>();
            let len = n.div_ceil(nr) * k * nr;
            // `fill` writes every element of w; only the last panel's padding is zeroed.
            let mut panels = pool::take(len).unwrap_or_default();
            panels.resize(len, F::zero());
            if !n.is_multiple_of(nr) {
                let last = n / nr * k * nr;
                for row in panels[last..].chunks_exact_mut(nr) {
                    row[n % nr..].fill(F::zero());
                }
            }
            fill(&mut Writer {
                data: &mut panels,
                k,
                width: nr,
            });
            return PackedMatrix {
                k,
                n,
                storage: Storage::Panels(panels),
            };
        }
        // Row-major (k, n) is the layout of a single panel n wide.
        let mut plain = vec![F::zero(); k * n];
        fill(&mut Writer {
            data: &mut plain,
            k,
            width: n,
        });
        PackedMatrix {
            k,
            n,
            storage: Storage::Plain(Array2::from_shape_vec((k, n), plain).expect("k·n elements")),
        }
    }

    /// c += a · w for a (m, k) and c (m, n).
    pub(super) fn add_product(&self, a: ArrayView2<'_, F>, c: ArrayViewMut2<'_, F>) {
        self.add_product_columns(a, c, 0..self.n);
    }

    /// c += a · w[:, cols] for a (m, k) and c (m, cols.len()); `cols` starts at a multiple of
    /// 16 columns (a panel boundary for f32 and f64).
    pub(super) fn add_product_columns(
        &self,
        a: ArrayView2<'_, F>,
        mut c: ArrayViewMut2<'_, F>,
        cols: Range<usize>,
    ) {
        assert_eq!(a.ncols(), self.k, "a is (m, k)");
        assert!(
            cols.start.is_multiple_of(16) && cols.end <= self.n,
            "cols start a panel"
        );
        assert_eq!(c.dim(), (a.nrows(), cols.len()), "c is (m, cols)");
        match &self.storage {
            #[cfg(target_arch = "x86_64")]
            Storage::Panels(panels) => {
                let width = avx2::panel_width::<F>();
                let panels = &panels[cols.start / width * self.k * width..];
                let n = cols.len();
                let [row_stride, col_stride] = [c.strides()[0], c.strides()[1]];
                if (c.ncols() <= 1 || col_stride == 1)
                    && (c.nrows() <= 1 || row_stride >= c.ncols() as isize)
                {
                    return avx2::add_product(panels, (self.k, n), a, c);
                }
                // A c of another layout (only in tests): the product in place of a copy.
                let mut copy = c.as_standard_layout().into_owned();
                avx2::add_product(panels, (self.k, n), a, copy.view_mut());
                c.assign(&copy);
            }
            Storage::Plain(w) => {
                general_mat_mul(F::one(), &a, &w.slice(s![.., cols]), F::one(), &mut c)
            }
        }
    }
}

impl<F: Scalar> Drop for PackedMatrix<F> {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if let Storage::Panels(panels) = &mut self.storage {
            pool::recycle_vec(std::mem::take(panels));
        }
    }
}

/// a (m, k) of any strides as a row-major matrix, copied in cache-friendly blocks: for an
/// operand that several products read, which would each copy it otherwise.
pub(super) fn row_major<F: Scalar>(a: ArrayView2<'_, F>) -> Array2<F> {
    let mut copy = pool::take(a.len()).unwrap_or_default();
    copy_rows(a, &mut copy);
    Array2::from_shape_vec(a.dim(), copy).expect("m·k elements")
}

/// a (m, k), any strides, into `out` in row-major order, in square blocks so that both
/// the reads and the writes of a transposed a stay in cache.
fn copy_rows<F: Scalar>(a: ArrayView2<'_, F>, out: &mut Vec<F>) {
    const BLOCK: usize = 16;
    let (m, k) = a.dim();
    let [rs, cs] = [a.strides()[0], a.strides()[1]];
    // `take` leaves at most m·k stale values, and every element is written below.
    out.truncate(m * k);
    out.resize(m * k, F::zero());
    for r0 in (0..m).step_by(BLOCK) {
        for k0 in (0..k).step_by(BLOCK) {
            for kk in k0..(k0 + BLOCK).min(k) {
                for r in r0..(r0 + BLOCK).min(m) {
                    // SAFETY: (r, kk) is within a's (m, k).
                    out[r * k + kk] =
                        unsafe { *a.as_ptr().offset(r as isize * rs + kk as isize * cs) };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{copy_rows, pool};
    use crate::scalar::Scalar;
    use ndarray::{ArrayView2, ArrayViewMut2};
    use std::any::TypeId;
    use std::arch::x86_64::*;

    /// Rows of a tile at most: 6 rows × 2 registers = 12 accumulators.
    const MR: usize = 6;

    /// Whether the kernel runs here for F.
    pub(super) fn available<F: 'static>() -> bool {
        let f = TypeId::of::<F>();
        (f == TypeId::of::<f32>() || f == TypeId::of::<f64>())
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    }

    /// Columns of a panel: two 256-bit registers of F.
    pub(super) const fn panel_width<F>() -> usize {
        64 / size_of::<F>()
    }

    /// c += a · w for a (m, k) of any strides (copied where its rows are not contiguous), c
    /// (m, n) with unit column stride and a row stride of at least n, and w (k, n) packed as ⌈n / NR⌉ row-major (k, NR) panels of NR = [`panel_width`]
    /// columns, the last one zero-padded; F is f32 or f64 and the CPU has AVX2 and FMA
    /// ([`available`]).
    pub(super) fn add_product<F: Scalar>(
        panels: &[F],
        (k, n): (usize, usize),
        a: ArrayView2<'_, F>,
        mut c: ArrayViewMut2<'_, F>,
    ) {
        let m = c.nrows();
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        let ldc = if m == 1 { n } else { c.strides()[0] as usize };
        // a is read in place when its rows are contiguous, else from a row-major copy.
        let mut copy = Vec::new();
        let (a, lda) = match a.strides() {
            &[rs, 1] if rs >= 0 => (a.as_ptr(), rs as usize),
            _ => {
                copy = pool::take(m * k).unwrap_or_default();
                copy_rows(a, &mut copy);
                (copy.as_ptr(), k)
            }
        };
        assert!(panels.len() >= n.div_ceil(panel_width::<F>()) * k * panel_width::<F>());
        // SAFETY: c's rows lie at multiples of ldc from its first element, n elements each.
        let c = unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr(), (m - 1) * ldc + n) };
        let f = TypeId::of::<F>();
        let a = (a, lda);
        // SAFETY: each branch reinterprets F as the type it is, `available` checked the
        // features the kernel is compiled for, a holds m rows of k at a row stride of lda, and
        // the slices hold what `product` reads.
        unsafe {
            if f == TypeId::of::<f32>() {
                product::<__m256>(retype(panels), (m, k, n, ldc), retype_ptr(a), retype_mut(c));
            } else if f == TypeId::of::<f64>() {
                product::<__m256d>(retype(panels), (m, k, n, ldc), retype_ptr(a), retype_mut(c));
            } else {
                unreachable!("the kernel is only packed for f32 and f64");
            }
        }
        pool::recycle_vec(copy);
    }

    /// # Safety
    /// F and T are the same type.
    unsafe fn retype<F, T>(x: &[F]) -> &[T] {
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) }
    }

    /// # Safety
    /// F and T are the same type.
    unsafe fn retype_ptr<F, T>((p, lda): (*const F, usize)) -> (*const T, usize) {
        (p.cast(), lda)
    }

    /// # Safety
    /// F and T are the same type.
    unsafe fn retype_mut<F, T>(x: &mut [F]) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), x.len()) }
    }

    /// A 256-bit register of f32 or f64 lanes. Its methods need AVX2 and FMA.
    trait Register: Copy {
        type Lane: Copy + Default + std::ops::AddAssign;
        const LANES: usize;
        unsafe fn zero() -> Self;
        unsafe fn splat(x: Self::Lane) -> Self;
        /// Loads `LANES` values from `p`.
        unsafe fn load(p: *const Self::Lane) -> Self;
        /// Stores `LANES` values at `p`.
        unsafe fn store(self, p: *mut Self::Lane);
        unsafe fn add(self, b: Self) -> Self;
        /// self · a + b, fused.
        unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    }

    impl Register for __m256 {
        type Lane = f32;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            unsafe { _mm256_add_ps(self, b) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            unsafe { _mm256_fmadd_ps(self, a, b) }
        }
    }

    impl Register for __m256d {
        type Lane = f64;
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { _mm256_setzero_pd() }
        }
        #[inline(always)]
        unsafe fn splat(x: f64) -> Self {
            unsafe { _mm256_set1_pd(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            unsafe { _mm256_loadu_pd(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            unsafe { _mm256_storeu_pd(p, self) }
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            unsafe { _mm256_add_pd(self, b) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            unsafe { _mm256_fmadd_pd(self, a, b) }
        }
    }

    /// c (m, n, row stride ldc) += a (m, k) · the panels, panel by panel, in tiles of up to
    /// [`MR`] rows. Tiles of one or two rows split k over more accumulators, so that the FMA
    /// latency is hidden at batch 1 and 2 too.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `panels` holds ⌈n / NR⌉ panels of k·NR elements, `c`
    /// (m − 1)·ldc + n, and a's element (r, kk) is at `a + r·lda + kk` for r < m, kk < k,
    /// where `a` = (pointer, lda).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn product<V: Register>(
        panels: &[V::Lane],
        (m, k, n, ldc): (usize, usize, usize, usize),
        (a, lda): (*const V::Lane, usize),
        c: &mut [V::Lane],
    ) {
        let nr = 2 * V::LANES;
        let (c, panels) = (c.as_mut_ptr(), panels.as_ptr());
        for p in 0..n.div_ceil(nr) {
            let (j0, cols) = (p * nr, nr.min(n - p * nr));
            // SAFETY (all below): the tiles read rows i..i + rows of a, panel p, and write
            // rows i..i + rows, columns j0..j0 + cols of c, all within the caller's bounds.
            let panel = unsafe { panels.add(p * k * nr) };
            let mut i = 0;
            while i < m {
                let rows = MR.min(m - i);
                let tile = Tile {
                    a: unsafe { a.add(i * lda) },
                    lda,
                    k,
                    panel,
                    c: unsafe { c.add(i * ldc + j0) },
                    ldc,
                    cols,
                };
                unsafe {
                    match rows {
                        6 => tile.run::<V, 6, 1>(),
                        5 => tile.run::<V, 5, 1>(),
                        4 => tile.run::<V, 4, 1>(),
                        3 => tile.run::<V, 3, 1>(),
                        2 => tile.run::<V, 2, 3>(),
                        _ => tile.run::<V, 1, 4>(),
                    }
                }
                i += rows;
            }
        }
    }

    /// One tile: c[..R, ..cols] += a (R, k) · panel (k, 2·LANES), a with row stride `lda`, c
    /// with row stride `ldc`.
    struct Tile<L> {
        a: *const L,
        lda: usize,
        k: usize,
        panel: *const L,
        c: *mut L,
        ldc: usize,
        cols: usize,
    }

    impl<L: Copy + Default + std::ops::AddAssign> Tile<L> {
        /// R rows, with KU sets of accumulators that take every KU-th k and are summed at the
        /// end.
        ///
        /// # Safety
        /// As for [`product`]; inlined into it, so the kernel runs with its features.
        #[inline(always)]
        unsafe fn run<V: Register<Lane = L>, const R: usize, const KU: usize>(&self) {
            let (k, nr) = (self.k, 2 * V::LANES);
            // SAFETY (all blocks): reads stay within the R rows of a and the panel's k·NR
            // lanes, writes within the tile of c.
            // The tile of c is read after the loop over k: asked for now, it arrives meanwhile.
            for r in 0..R {
                let row = self.c.wrapping_add(r * self.ldc);
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(row.cast());
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(nr - 1).cast());
                }
            }
            let mut acc = [[[unsafe { V::zero() }; 2]; R]; KU];
            let mut kk = 0;
            while kk < k {
                // KU steps of k at a time, one set of accumulators each; the rest into set 0.
                let (sets, steps) = if kk + KU <= k { (KU, KU) } else { (1, 1) };
                for (u, acc) in acc.iter_mut().enumerate().take(sets) {
                    let kk = kk + u;
                    unsafe {
                        let w = self.panel.add(kk * nr);
                        let (w0, w1) = (V::load(w), V::load(w.add(V::LANES)));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let x = V::splat(*self.a.add(r * self.lda + kk));
                            *acc = [x.mul_add(w0, acc[0]), x.mul_add(w1, acc[1])];
                        }
                    }
                }
                kk += steps;
            }
            for r in 0..R {
                let [mut s0, mut s1] = acc[0][r];
                for acc in &acc[1..] {
                    unsafe { (s0, s1) = (s0.add(acc[r][0]), s1.add(acc[r][1])) };
                }
                let c = unsafe { self.c.add(r * self.ldc) };
                unsafe {
                    if self.cols == nr {
                        V::load(c).add(s0).store(c);
                        V::load(c.add(V::LANES)).add(s1).store(c.add(V::LANES));
                    } else {
                        let mut sums = [L::default(); 16]; // 16 ≥ 2·LANES
                        s0.store(sums.as_mut_ptr());
                        s1.store(sums.as_mut_ptr().add(V::LANES));
                        for (j, &s) in sums[..self.cols].iter().enumerate() {
                            *c.add(j) += s;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PackedMatrix;
    use crate::scalar::Scalar;
    use ndarray::linalg::general_mat_mul;
    use ndarray::{s, Array2, Axis, ShapeBuilder};

    /// Multiples of 1/8 in [−5/8, 5/8]: every product and sum below is exact in f32, so any
    /// order of summation gives the same result.
    fn eighths<F: Scalar>((rows, cols): (usize, usize), seed: usize) -> Array2<F> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            F::from_f64(((i * 7 + j * 3 + seed) % 11) as f64 / 8.0 - 0.625)
        })
    }

    /// c += a · w against ndarray's product, over every remainder of the row tiles, the
    /// k-split accumulators and the panels, with w gathered both ways from a larger matrix,
    /// a row-major, transposed (column-major) and with reversed rows, and c in row-major and
    /// column-major layout and as a column block of a wider matrix (nothing outside it
    /// changes), and a product with w's columns from 16 on.
    fn matches_ndarray<F: Scalar>() {
        for (m, k, n) in [
            (1, 1, 1),
            (2, 3, 5),
            (3, 5, 7),
            (5, 17, 33),
            (7, 9, 16),
            (13, 7, 17),
            (16, 64, 40),
        ] {
            let a = eighths::<F>((m, k), 1);
            // Rows in a scrambled order, as the gate order gathers them.
            let rows_k: Vec<usize> = (0..k).map(|i| (i * 5 + 3) % (k + 2)).collect();
            let rows_n: Vec<usize> = (0..n).map(|j| (j * 7 + 1) % (n + 3)).collect();
            let source = eighths::<F>((k + 2, n + 4), 2);
            let source_t = eighths::<F>((n + 3, k), 5);
            let c = eighths::<F>((m, n), 3);
            let cases = [
                (
                    PackedMatrix::rows(source.view(), &rows_k, 2..n + 2),
                    source
                        .select(Axis(0), &rows_k)
                        .slice(s![.., 2..n + 2])
                        .to_owned(),
                ),
                (
                    PackedMatrix::transposed_rows(source_t.view(), &rows_n),
                    source_t.select(Axis(0), &rows_n).reversed_axes(),
                ),
            ];
            let a_column_major = a.t().as_standard_layout().into_owned();
            let a_reversed = a.slice(s![..;-1, ..]).to_owned();
            for (packed, w) in cases {
                let mut want = c.clone();
                general_mat_mul(F::one(), &a, &w, F::one(), &mut want);
                for a in [
                    a.view(),
                    a_column_major.t(),
                    a_reversed.slice(s![..;-1, ..]),
                ] {
                    let mut got = c.clone();
                    packed.add_product(a, got.view_mut());
                    assert_eq!(got, want, "({m}, {k}, {n}), a strides {:?}", a.strides());
                }
                let mut got = Array2::zeros((m, n).f());
                got.assign(&c);
                packed.add_product(a.view(), got.view_mut());
                assert_eq!(got, want, "({m}, {k}, {n}), column-major c");
                let mut wider = eighths::<F>((m, n + 5), 4);
                wider.slice_mut(s![.., 2..n + 2]).assign(&c);
                let mut wider_want = wider.clone();
                wider_want.slice_mut(s![.., 2..n + 2]).assign(&want);
                packed.add_product(a.view(), wider.slice_mut(s![.., 2..n + 2]));
                assert_eq!(wider, wider_want, "({m}, {k}, {n}), c a column block");
                // The columns from the second panel of 16 on.
                if n > 16 {
                    let mut got = c.slice(s![.., 16..]).to_owned();
                    packed.add_product_columns(a.view(), got.view_mut(), 16..n);
                    assert_eq!(
                        got,
                        want.slice(s![.., 16..]),
                        "({m}, {k}, {n}), columns 16.."
                    );
                }
            }
        }
    }

    #[test]
    fn product_matches_ndarray_f32() {
        matches_ndarray::<f32>();
    }

    #[test]
    fn product_matches_ndarray_f64() {
        matches_ndarray::<f64>();
    }
}
