//! Loading tensors from safetensors files into host tensors.

use lorac_compiler::ir::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let frac = (bits & 0x3ff) as u32;
    let v = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut f = frac;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(v)
}

/// Converts one safetensors view to a host tensor (floats become f32, integers i64).
pub fn to_tensor(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Tensor, String> {
    let shape = view.shape().to_vec();
    let b = view.data();
    let t = match view.dtype() {
        Dtype::F32 => Tensor::f32(
            shape,
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F64 => Tensor::f32(
            shape,
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        ),
        Dtype::BF16 => Tensor::f32(
            shape,
            b.chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
        ),
        Dtype::F16 => Tensor::f32(
            shape,
            b.chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
        ),
        Dtype::I64 => Tensor::i64(
            shape,
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        Dtype::I32 => Tensor::i64(
            shape,
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        other => return Err(format!("tensor `{name}` has unsupported dtype {other:?}")),
    };
    Ok(t)
}

/// Loads the named tensors (or all, when `names` is `None`) from a safetensors file.
pub fn load(path: &Path, names: Option<&[String]>) -> Result<HashMap<String, Tensor>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for name in st.names() {
        if names.is_some_and(|n| !n.iter().any(|x| x == name)) {
            continue;
        }
        let view = st
            .tensor(name)
            .map_err(|e| format!("{}: {name}: {e}", path.display()))?;
        out.insert(name.to_string(), to_tensor(name, &view)?);
    }
    Ok(out)
}

/// Writes f32 tensors to a safetensors file atomically (temp file, fsync, rename), so an
/// interrupted write never leaves a corrupt file behind.
pub fn save_atomic(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), String> {
    save_atomic_meta(path, tensors, None)
}

/// [`save_atomic`] with string metadata in the safetensors header, written in the same
/// rename (a checkpoint's step can never disagree with its tensors).
pub fn save_atomic_meta(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: Option<HashMap<String, String>>,
) -> Result<(), String> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let t = &tensors[*n];
            let b: Vec<u8> = t.f().iter().flat_map(|v| v.to_le_bytes()).collect();
            ((*n).clone(), t.shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let data = safetensors::serialize(views, meta).map_err(|e| e.to_string())?;
    write_atomic(path, &data)
}

/// The string key/value metadata of a safetensors header.
pub type Metadata = HashMap<String, String>;

/// Loads every tensor of a safetensors file and the string metadata of its header.
pub fn load_with_meta(path: &Path) -> Result<(HashMap<String, Tensor>, Metadata), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        out.insert(name.clone(), to_tensor(&name, &view)?);
    }
    Ok((out, meta))
}

/// Writes bytes atomically: a temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.sync_all()
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
