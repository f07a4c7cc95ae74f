//! The CUDA executor: the lowered plan's kernels compiled with NVRTC, matrix products through
//! cuBLAS, temporaries in one device arena placed by the memory planner. Host steps (gathers,
//! materialised views, …) round-trip through host memory until they get device kernels.
//!
//! CUDA is loaded at run time (cudarc's dynamic loading), so loraC builds and runs without
//! it; [`probe`] turns a missing driver or library into an error message rather than the
//! loader's panic.

use super::host::{self, In, Out};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    result as drv, sys as drv_sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use lorac_compiler::ir::{DType, Data, Graph, Tensor};
use lorac_compiler::lower::cuda::{self, source, NVRTC_OPTIONS};
use lorac_compiler::lower::memplan::MemPlan;
use lorac_compiler::lower::plan::{Mat, Plan, Step, Storage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Runs `f`, turning a panic of the dynamic loader (a library or symbol missing) into an
/// error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(format!("{what}: {msg}"))
    })
}

/// Checks that the driver, NVRTC and cuBLAS load and that a GPU is visible.
pub fn probe() -> Result<(), String> {
    guarded("loading CUDA", || {
        // SAFETY: these only try to open the shared libraries.
        let (driver, nvrtc, cublas) = unsafe {
            (
                drv_sys::is_culib_present(),
                cudarc::nvrtc::sys::is_culib_present(),
                blas_sys::is_culib_present(),
            )
        };
        if !driver {
            return Err("libcuda.so (the NVIDIA driver) was not found".into());
        }
        if !nvrtc {
            return Err("libnvrtc.so (CUDA 12 NVRTC) was not found on the loader's path".into());
        }
        if !cublas {
            return Err("libcublas.so (CUDA 12 cuBLAS) was not found on the loader's path".into());
        }
        drv::init().map_err(|e| format!("the CUDA driver failed to start: {e:?}"))?;
        match CudaContext::device_count() {
            Ok(n) if n > 0 => Ok(()),
            Ok(_) => Err("no CUDA device is visible".into()),
            Err(e) => Err(format!("cannot count CUDA devices: {e:?}")),
        }
    })
}

/// A program compiled for the GPU.
pub struct CudaProgram {
    /// The lowered plan.
    pub plan: Plan,
    /// Where each temporary lives in the device arena.
    pub mem: MemPlan,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: Vec<CudaFunction>,
    consts: HashMap<usize, CudaSlice<f32>>,
    arena: Mutex<CudaSlice<u8>>,
}

fn e<D: std::fmt::Debug>(what: &'static str) -> impl Fn(D) -> String {
    move |x| format!("{what}: {x:?}")
}

impl CudaProgram {
    /// Lowers, plans memory, compiles the kernels for device 0 and uploads the constants.
    pub fn new(g: &Graph) -> Result<CudaProgram, String> {
        probe()?;
        guarded("CUDA", || {
            let em = cuda::emit(g, "kernels.cu").map_err(|x| x.0)?;
            let ctx = CudaContext::new(0).map_err(e("creating a CUDA context"))?;
            let (major, minor) = ctx.compute_capability().map_err(e("device query"))?;
            let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
            let opts = CompileOptions {
                arch: Some(arch),
                options: NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            let ptx = compile_ptx_with_opts(&em.source, opts).map_err(e("NVRTC"))?;
            let module = ctx.load_module(ptx).map_err(e("loading the kernels"))?;
            let funcs = em
                .function
                .iter()
                .map(|f| module.load_function(f).map_err(e("kernel lookup")))
                .collect::<Result<Vec<_>, _>>()?;
            let stream = ctx.default_stream();
            let blas = CudaBlas::new(stream.clone()).map_err(e("cuBLAS"))?;
            let mut consts = HashMap::new();
            for (b, buf) in em.plan.bufs.iter().enumerate() {
                if let Storage::Const(d) = &buf.storage {
                    consts.insert(b, stream.clone_htod(d.as_slice()).map_err(e("upload"))?);
                }
            }
            let arena = stream
                .alloc_zeros::<u8>(em.mem.peak.max(256))
                .map_err(e("arena allocation"))?;
            Ok(CudaProgram {
                plan: em.plan,
                mem: em.mem,
                stream,
                blas,
                funcs,
                consts,
                arena: Mutex::new(arena),
            })
        })
    }

    /// Runs the program; inputs are looked up by name in the maps, in order.
    pub fn run(
        &self,
        inputs: &[&HashMap<String, Tensor>],
    ) -> Result<HashMap<String, Tensor>, String> {
        let arena = self
            .arena
            .lock()
            .map_err(|_| "a previous run of this program panicked".to_string())?;
        let s = &self.stream;
        let base = arena.device_ptr(s).0;
        // Inputs are uploaded on every run (caching the frozen weights is future work).
        let mut uploads_f: Vec<CudaSlice<f32>> = vec![];
        let mut uploads_i: Vec<CudaSlice<i64>> = vec![];
        let mut ptr = Vec::with_capacity(self.plan.bufs.len());
        for (b, buf) in self.plan.bufs.iter().enumerate() {
            ptr.push(match &buf.storage {
                Storage::Input(name) => {
                    let t = inputs
                        .iter()
                        .find_map(|m| m.get(name))
                        .ok_or_else(|| format!("no value for input `{name}`"))?;
                    match (&t.data, buf.dtype) {
                        (Data::F32(v), DType::F32) if v.len() == buf.len => {
                            uploads_f.push(s.clone_htod(v.as_slice()).map_err(e("upload"))?);
                            uploads_f.last().map(|u| u.device_ptr(s).0).unwrap_or(0)
                        }
                        (Data::I64(v), DType::I64) if v.len() == buf.len => {
                            uploads_i.push(s.clone_htod(v.as_slice()).map_err(e("upload"))?);
                            uploads_i.last().map(|u| u.device_ptr(s).0).unwrap_or(0)
                        }
                        _ => {
                            return Err(format!(
                                "input `{name}` expects {:?} with {} values, got {:?}",
                                buf.dtype, buf.len, t.shape
                            ))
                        }
                    }
                }
                Storage::Const(_) => self.consts.get(&b).map(|c| c.device_ptr(s).0).unwrap_or(0),
                Storage::Temp => self.mem.offset[b].map(|o| base + o as u64).unwrap_or(0),
            });
        }
        for step in &self.plan.steps {
            self.step(step, &ptr)?;
        }
        s.synchronize().map_err(e("synchronize"))?;
        let mut out = HashMap::new();
        for (name, b, shape, dtype) in &self.plan.outputs {
            let len = self.plan.bufs[*b].len;
            // SAFETY: the buffer holds `len` elements of `dtype` on the device.
            let t = unsafe {
                match dtype {
                    DType::F32 => {
                        let mut v = vec![0f32; len];
                        drv::memcpy_dtoh_sync(&mut v, ptr[*b]).map_err(e("download"))?;
                        Tensor::f32(shape.clone(), v)
                    }
                    DType::I64 => {
                        let mut v = vec![0i64; len];
                        drv::memcpy_dtoh_sync(&mut v, ptr[*b]).map_err(e("download"))?;
                        Tensor::i64(shape.clone(), v)
                    }
                }
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    fn step(&self, step: &Step, ptr: &[u64]) -> Result<(), String> {
        let s = &self.stream;
        match step {
            Step::Kernel { kernel, ins, outs } => {
                let k = &self.plan.kernels[*kernel];
                let l = source::launch(k);
                let args: Vec<u64> = ins.iter().chain(outs).map(|&b| ptr[b]).collect();
                let mut lb = s.launch_builder(&self.funcs[*kernel]);
                for a in &args {
                    lb.arg(a);
                }
                let cfg = LaunchConfig {
                    grid_dim: (l.grid as u32, 1, 1),
                    block_dim: (l.block as u32, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: the kernel takes one pointer per operand and output, each
                // addressing a buffer of the planned length.
                unsafe { lb.launch(cfg) }.map_err(e("kernel launch"))?;
            }
            Step::MatMul {
                a,
                b,
                out,
                out_view: None,
                batch,
                m,
                k,
                n,
            } if a.view.is_none() && b.view.is_none() => {
                self.gemm(ptr, *a, *b, *out, *batch, *m, *k, *n)?
            }
            Step::MatMul { .. } => {
                return Err(
                    "a strided matrix view reached the CUDA executor (it lowers \
                     without them)"
                        .into(),
                )
            }
            Step::Host {
                op,
                ins,
                out,
                shape,
            } => {
                s.synchronize().map_err(e("synchronize"))?;
                let mut fs: Vec<Vec<f32>> = vec![];
                let mut is: Vec<Vec<i64>> = vec![];
                for (b, sh) in ins {
                    let len: usize = sh.iter().product();
                    // SAFETY: the operand holds `len` elements on the device.
                    unsafe {
                        match self.plan.bufs[*b].dtype {
                            DType::F32 => {
                                let mut v = vec![0f32; len];
                                drv::memcpy_dtoh_sync(&mut v, ptr[*b]).map_err(e("download"))?;
                                fs.push(v);
                            }
                            DType::I64 => {
                                let mut v = vec![0i64; len];
                                drv::memcpy_dtoh_sync(&mut v, ptr[*b]).map_err(e("download"))?;
                                is.push(v);
                            }
                        }
                    }
                }
                let (mut fi, mut ii) = (fs.iter(), is.iter());
                let views: Vec<In<'_>> = ins
                    .iter()
                    .filter_map(|(b, sh)| match self.plan.bufs[*b].dtype {
                        DType::F32 => fi.next().map(|v| In::F(v, sh.as_slice())),
                        DType::I64 => ii.next().map(|v| In::I(v, sh.as_slice())),
                    })
                    .collect();
                let len = self.plan.bufs[*out].len;
                // SAFETY: the output holds `len` elements on the device.
                match self.plan.bufs[*out].dtype {
                    DType::F32 => {
                        let mut v = vec![0f32; len];
                        host::run(op, &views, &mut Out::F(&mut v), shape)?;
                        unsafe { drv::memcpy_htod_sync(ptr[*out], &v) }.map_err(e("upload"))?;
                    }
                    DType::I64 => {
                        let mut v = vec![0i64; len];
                        host::run(op, &views, &mut Out::I(&mut v), shape)?;
                        unsafe { drv::memcpy_htod_sync(ptr[*out], &v) }.map_err(e("upload"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// One product through cuBLAS (the row-major → column-major mapping is documented in
    /// `lorac_compiler::lower::cuda::launch`).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        ptr: &[u64],
        a: Mat,
        b: Mat,
        out: usize,
        batch: usize,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(), String> {
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let ldb = if b.trans { k } else { n }.max(1) as i32;
        let lda = if a.trans { m } else { k }.max(1) as i32;
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: the three buffers hold `batch` matrices of the stated sizes.
        unsafe {
            blas::sgemm_strided_batched(
                *self.blas.handle(),
                op(b.trans),
                op(a.trans),
                n as i32,
                m as i32,
                k as i32,
                &alpha,
                ptr[b.buf] as *const f32,
                ldb,
                (k * n) as i64,
                ptr[a.buf] as *const f32,
                lda,
                (m * k) as i64,
                &beta,
                ptr[out] as *mut f32,
                n as i32,
                (m * n) as i64,
                batch as i32,
            )
        }
        .map_err(e("cuBLAS sgemm"))
    }
}
