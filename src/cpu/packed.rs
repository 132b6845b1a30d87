//! The per-step products of the recurrence, c += a · w for an a of few rows (the batch) and a
//! weight matrix w used at every step. ndarray's product packs both operands on every call,
//! which costs about as much as a product this small; on x86_64 with AVX2 and FMA, w is packed
//! once instead and a register-blocked kernel streams through it. Elsewhere it is ndarray's
//! product, as before.

use crate::scalar::Scalar;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// A weight matrix w (k, n) and, where the kernel runs, its packed copy.
pub(super) struct PackedMatrix<'a, F> {
    w: ArrayView2<'a, F>,
    #[cfg(target_arch = "x86_64")]
    panels: Option<Vec<F>>,
}

impl<'a, F: Scalar> PackedMatrix<'a, F> {
    pub(super) fn new(w: ArrayView2<'a, F>) -> Self {
        PackedMatrix {
            #[cfg(target_arch = "x86_64")]
            panels: avx2::available::<F>().then(|| avx2::pack(w)),
            w,
        }
    }

    /// c += a · w for a (m, k) and c (m, n).
    pub(super) fn add_product(&self, a: ArrayView2<'_, F>, mut c: ArrayViewMut2<'_, F>) {
        #[cfg(target_arch = "x86_64")]
        if let Some(panels) = &self.panels {
            let [row_stride, col_stride] = [c.strides()[0], c.strides()[1]];
            if (c.ncols() <= 1 || col_stride == 1)
                && (c.nrows() <= 1 || row_stride >= c.ncols() as isize)
            {
                return avx2::add_product(panels, self.w.dim(), a, c);
            }
        }
        general_mat_mul(F::one(), &a, &self.w, F::one(), &mut c);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::scalar::Scalar;
    use ndarray::{ArrayView2, ArrayViewMut2};
    use std::any::TypeId;
    use std::arch::x86_64::*;

    /// Rows of a tile at most: 4 rows × 2 registers = 8 accumulators.
    const MR: usize = 4;

    /// Whether the kernel runs here for F.
    pub(super) fn available<F: 'static>() -> bool {
        let f = TypeId::of::<F>();
        (f == TypeId::of::<f32>() || f == TypeId::of::<f64>())
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
    }

    /// Columns of a panel: two 256-bit registers of F.
    const fn panel_width<F>() -> usize {
        64 / size_of::<F>()
    }

    /// w (k, n) as ⌈n / NR⌉ row-major (k, NR) panels of NR = [`panel_width`] columns, the last
    /// one zero-padded.
    pub(super) fn pack<F: Scalar>(w: ArrayView2<'_, F>) -> Vec<F> {
        let (k, n) = w.dim();
        let nr = panel_width::<F>();
        let mut panels = vec![F::zero(); n.div_ceil(nr) * k * nr];
        let at = |kk: usize, j: usize| (j / nr * k + kk) * nr + j % nr;
        // In w's memory order: by columns for w_hh's transpose, else by rows.
        let w_t = w.t();
        if let Some(columns) = w_t.as_slice() {
            for (j, column) in columns.chunks_exact(k).enumerate() {
                for (kk, &v) in column.iter().enumerate() {
                    panels[at(kk, j)] = v;
                }
            }
        } else {
            let w = w.as_standard_layout();
            let rows = w
                .as_slice()
                .unwrap_or_else(|| unreachable!("standard layout"));
            for (kk, row) in rows.chunks_exact(n).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    panels[at(kk, j)] = v;
                }
            }
        }
        panels
    }

    /// c += a · w for a (m, k), c (m, n) with unit column stride and a row stride of at least
    /// n, and w (k, n) packed by [`pack`]; F is f32 or f64 and the CPU has AVX2 and FMA ([`available`]).
    pub(super) fn add_product<F: Scalar>(
        panels: &[F],
        (k, n): (usize, usize),
        a: ArrayView2<'_, F>,
        mut c: ArrayViewMut2<'_, F>,
    ) {
        let m = c.nrows();
        assert_eq!(a.dim(), (m, k), "a is (m, k)");
        assert_eq!(c.ncols(), n, "c is (m, n)");
        if m == 0 || n == 0 {
            return;
        }
        let ldc = if m == 1 { n } else { c.strides()[0] as usize };
        let a = a.as_standard_layout();
        let a = a
            .as_slice()
            .unwrap_or_else(|| unreachable!("standard-layout arrays are slices"));
        // SAFETY: c's rows lie at multiples of ldc from its first element, n elements each.
        let c = unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr(), (m - 1) * ldc + n) };
        let f = TypeId::of::<F>();
        // SAFETY: each branch reinterprets F as the type it is, and `available` checked the
        // features the kernel is compiled for.
        unsafe {
            if f == TypeId::of::<f32>() {
                product::<__m256>(retype(panels), (k, n, ldc), retype(a), retype_mut(c));
            } else if f == TypeId::of::<f64>() {
                product::<__m256d>(retype(panels), (k, n, ldc), retype(a), retype_mut(c));
            } else {
                unreachable!("the kernel is only packed for f32 and f64");
            }
        }
    }

    /// # Safety
    /// F and T are the same type.
    unsafe fn retype<F, T>(x: &[F]) -> &[T] {
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) }
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
    /// [`MR`] rows.
    #[target_feature(enable = "avx2,fma")]
    fn product<V: Register>(
        panels: &[V::Lane],
        (k, n, ldc): (usize, usize, usize),
        a: &[V::Lane],
        c: &mut [V::Lane],
    ) {
        let (m, nr) = (a.len() / k, 2 * V::LANES);
        for (p, panel) in panels.chunks_exact(k * nr).enumerate() {
            let (j0, cols) = (p * nr, nr.min(n - p * nr));
            for i in (0..m).step_by(MR) {
                let rows = MR.min(m - i);
                let (a, c) = (&a[i * k..(i + rows) * k], &mut c[i * ldc + j0..]);
                // SAFETY: this function's features are the tile's.
                unsafe {
                    match rows {
                        4 => tile::<V, 4>(a, panel, c, ldc, cols),
                        3 => tile::<V, 3>(a, panel, c, ldc, cols),
                        2 => tile::<V, 2>(a, panel, c, ldc, cols),
                        _ => tile::<V, 1>(a, panel, c, ldc, cols),
                    }
                }
            }
        }
    }

    /// c[..R, ..cols] += a (R, k) · panel (k, 2·LANES), c with row stride `ldc`.
    #[inline(always)]
    unsafe fn tile<V: Register, const R: usize>(
        a: &[V::Lane],
        panel: &[V::Lane],
        c: &mut [V::Lane],
        ldc: usize,
        cols: usize,
    ) {
        let (k, nr) = (a.len() / R, 2 * V::LANES);
        let rows: [&[V::Lane]; R] = std::array::from_fn(|r| &a[r * k..(r + 1) * k]);
        // SAFETY (all blocks): loads and stores stay within the slices sliced just before.
        let mut acc = [[unsafe { V::zero() }; 2]; R];
        for kk in 0..k {
            let w = &panel[kk * nr..(kk + 1) * nr];
            let (w0, w1) = unsafe { (V::load(w.as_ptr()), V::load(w[V::LANES..].as_ptr())) };
            for r in 0..R {
                let x = unsafe { V::splat(rows[r][kk]) };
                acc[r] = unsafe { [x.mul_add(w0, acc[r][0]), x.mul_add(w1, acc[r][1])] };
            }
        }
        for (r, [s0, s1]) in acc.into_iter().enumerate() {
            let c = &mut c[r * ldc..];
            if cols == nr {
                let c = &mut c[..nr];
                unsafe {
                    V::load(c.as_ptr()).add(s0).store(c.as_mut_ptr());
                    V::load(c[V::LANES..].as_ptr())
                        .add(s1)
                        .store(c[V::LANES..].as_mut_ptr());
                }
            } else {
                let mut sums = [V::Lane::default(); 16]; // 16 ≥ 2·LANES
                unsafe {
                    s0.store(sums.as_mut_ptr());
                    s1.store(sums[V::LANES..].as_mut_ptr());
                }
                for (c, &s) in c.iter_mut().zip(&sums[..cols]) {
                    *c += s;
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
    use ndarray::{s, Array2, ShapeBuilder};

    /// Multiples of 1/8 in [−5/8, 5/8]: every product and sum below is exact in f32, so any
    /// order of summation gives the same result.
    fn eighths<F: Scalar>((rows, cols): (usize, usize), seed: usize) -> Array2<F> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            F::from_f64(((i * 7 + j * 3 + seed) % 11) as f64 / 8.0 - 0.625)
        })
    }

    /// c += a · w against ndarray's product, over every remainder of the row tiles and the
    /// panels, with w in row-major, column-major and strided layout, and c in row-major and
    /// column-major layout and as a column block of a wider matrix (nothing outside it changes).
    fn matches_ndarray<F: Scalar>() {
        for (m, k, n) in [
            (1, 1, 1),
            (2, 3, 5),
            (3, 5, 7),
            (5, 17, 33),
            (7, 9, 16),
            (16, 64, 40),
        ] {
            let a = eighths::<F>((m, k), 1);
            let w = eighths::<F>((k, n), 2);
            let w_col_major = w.t().as_standard_layout().into_owned();
            let mut w_strided = Array2::zeros((k, 2 * n));
            w_strided.slice_mut(s![.., ..;2]).assign(&w);
            let c = eighths::<F>((m, n), 3);
            let mut want = c.clone();
            general_mat_mul(F::one(), &a, &w, F::one(), &mut want);
            for w in [w.view(), w_col_major.t(), w_strided.slice(s![.., ..;2])] {
                let packed = PackedMatrix::new(w);
                let mut got = c.clone();
                packed.add_product(a.view(), got.view_mut());
                assert_eq!(got, want, "({m}, {k}, {n})");
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
