//! Lowering: the optimised IR graph → a backend-neutral [`plan::Plan`] (fused kernels, matrix
//! products, host ops over planned buffers) → backend code (`cpu`: Cranelift JIT; `cuda`: CUDA C and a launch plan).

pub mod cpu;
pub mod cuda;
mod fusion;
pub mod kernel;
pub mod memplan;
pub mod plan;
pub mod print;
pub mod strides;

pub use kernel::{Access, Form, Inst, Kernel};
pub use plan::{Buf, BufId, Mat, Plan, Step, Storage};
