//! Lowering: the optimised IR graph → a backend-neutral [`plan::Plan`] (fused kernels, matrix
//! products, host ops over planned buffers) → backend code (`cpu`: Cranelift JIT).

pub mod cpu;
pub mod kernel;
pub mod memplan;
pub mod plan;
pub mod print;

pub use kernel::{Access, Form, Inst, Kernel};
pub use plan::{Buf, BufId, Mat, Plan, Step, Storage};
