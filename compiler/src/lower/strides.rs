//! Strided views of matrix operands and results: how a permute of a contiguous buffer is read
//! (or written) in place by a batched product instead of being copied.

/// Element strides of the batched matrices of a permuted view of a contiguous buffer (rank at
/// most 4, so at most two batch axes): how attention reads and writes heads in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    /// `(extent, stride)` of the outer and inner batch axes; batch `i` is
    /// `(i / inner extent, i % inner extent)`.
    pub batch: [(usize, usize); 2],
    /// Stride between rows.
    pub row: usize,
    /// Stride between columns.
    pub col: usize,
}

impl Strides {
    /// The view of `permute(x, perm)` for a contiguous `x` of shape `src` (`None` past rank 4).
    pub fn of_permute(src: &[usize], perm: &[usize]) -> Option<Strides> {
        let r = src.len();
        if !(2..=4).contains(&r) || perm.len() != r {
            return None;
        }
        let mut stride = vec![1usize; r];
        for d in (0..r - 1).rev() {
            stride[d] = stride[d + 1] * src[d + 1];
        }
        let axes: Vec<(usize, usize)> = perm.iter().map(|&p| (src[p], stride[p])).collect();
        Some(Strides::from_axes(&axes))
    }

    /// The view through which a product's `[.., m, n]` result lands in `permute(result, perm)`
    /// stored contiguously (`None` past rank 4).
    pub fn into_permute(result: &[usize], perm: &[usize]) -> Option<Strides> {
        let r = result.len();
        if !(2..=4).contains(&r) || perm.len() != r {
            return None;
        }
        let dst: Vec<usize> = perm.iter().map(|&p| result[p]).collect();
        let mut stride = vec![1usize; r];
        for d in (0..r - 1).rev() {
            stride[d] = stride[d + 1] * dst[d + 1];
        }
        let mut axes = vec![(0, 0); r];
        for (d, &p) in perm.iter().enumerate() {
            axes[p] = (result[p], stride[d]);
        }
        Some(Strides::from_axes(&axes))
    }

    fn from_axes(axes: &[(usize, usize)]) -> Strides {
        let r = axes.len();
        let mut batch = [(1, 0); 2];
        for (slot, &ax) in batch[4 - r.max(2)..].iter_mut().zip(&axes[..r - 2]) {
            *slot = ax;
        }
        Strides {
            batch,
            row: axes[r - 2].1,
            col: axes[r - 1].1,
        }
    }

    /// Rows are contiguous, as in a stored row-major matrix. Such views are folded into any
    /// product; a column-strided one only into products whose rounding `gemm` keeps whatever
    /// the layout (`ops::linalg::gemm_layout_free`): for thin ones it picks its kernel by
    /// layout, and a column-strided operand rounds differently from the row-major copy the
    /// reference interpreter multiplies.
    pub fn rows_contiguous(&self) -> bool {
        self.col == 1
    }

    /// Element offset of batch matrix `i`.
    pub fn batch_offset(&self, i: usize) -> usize {
        let inner = self.batch[1].0.max(1);
        (i / inner) * self.batch[0].1 + (i % inner) * self.batch[1].1
    }
}

#[cfg(test)]
mod tests {
    use super::Strides;

    #[test]
    fn permute_views_in_closed_form() {
        // Heads read in place: [B, T, H, D] → [B, H, T, D].
        let v = Strides::of_permute(&[16, 128, 12, 32], &[0, 2, 1, 3]).unwrap();
        assert_eq!(v.batch, [(16, 128 * 384), (12, 32)]);
        assert_eq!((v.row, v.col), (384, 1));
        assert_eq!(v.batch_offset(12 + 5), 128 * 384 + 5 * 32);
        // A [2, 3, 5, 4] result written into its [0, 2, 1, 3] permute, stored [2, 5, 3, 4].
        let w = Strides::into_permute(&[2, 3, 5, 4], &[0, 2, 1, 3]).unwrap();
        assert_eq!(w.batch, [(2, 60), (3, 4)]);
        assert_eq!((w.row, w.col), (12, 1));
        // Rank 3: one batch axis; keys' transpose is column-strided.
        let k = Strides::of_permute(&[7, 5, 3], &[0, 2, 1]).unwrap();
        assert_eq!(k.batch, [(1, 0), (7, 15)]);
        assert!(!k.rows_contiguous());
        assert!(Strides::of_permute(&[2, 2, 2, 2, 2], &[0, 1, 2, 4, 3]).is_none());
    }
}
