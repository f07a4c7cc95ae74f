//! Host tensors for the reference interpreter.

/// Tensor contents.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// f32 values.
    F32(Vec<f32>),
    /// i64 values.
    I64(Vec<i64>),
}

/// A dense row-major host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Data,
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Tensor {
    /// An f32 tensor.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(numel(&shape), data.len());
        Tensor {
            shape,
            data: Data::F32(data),
        }
    }
    /// An i64 tensor.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        debug_assert_eq!(numel(&shape), data.len());
        Tensor {
            shape,
            data: Data::I64(data),
        }
    }
    /// A scalar.
    pub fn scalar(v: f32) -> Tensor {
        Tensor::f32(vec![], vec![v])
    }
    /// f32 values (empty for i64 tensors).
    pub fn f(&self) -> &[f32] {
        match &self.data {
            Data::F32(v) => v,
            Data::I64(_) => &[],
        }
    }
    /// i64 values (empty for f32 tensors).
    pub fn i(&self) -> &[i64] {
        match &self.data {
            Data::I64(v) => v,
            Data::F32(_) => &[],
        }
    }
    /// Values as f64 (either dtype).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        numel(&self.shape)
    }
    /// True for zero elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Largest absolute difference to another f32 tensor of the same shape.
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        self.f()
            .iter()
            .zip(other.f())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}
