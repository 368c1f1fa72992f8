//! The one matrix product the kernels use: gemm (the crate candle itself uses) on the calling
//! thread, behind a bounds check of every operand. The only `unsafe` in the workspace.

/// A row-major or strided read-only matrix view for [`gemm_into`].
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    /// Distance between consecutive rows.
    pub(crate) rs: usize,
    /// Distance between consecutive columns.
    pub(crate) cs: usize,
}

impl<'a> Mat<'a> {
    /// Block `i` of a buffer of row-major `rows × cols` blocks (a Winograd position's operand
    /// in a `[36][rows][cols]` buffer), row-major.
    pub(crate) fn block(data: &'a [f32], i: usize, (rows, cols): (usize, usize)) -> Self {
        Self {
            data: &data[i * rows * cols..][..rows * cols],
            rs: cols,
            cs: 1,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m×n, row-major) = [dst +] a (m×k) · b (k×n)` on the calling thread.
pub(crate) fn gemm_into(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    acc: bool,
) {
    assert!(
        dst.len() >= m * n && a.fits(m, k) && b.fits(k, n),
        "gemm_into: bad shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assertion above bounds every element gemm reads ((m−1)·rs + (k−1)·cs within
    // `a`, likewise for `b`) and writes (m·n within `dst`); the slices cannot alias because
    // `dst` is borrowed mutably while `a` and `b` are shared borrows.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
