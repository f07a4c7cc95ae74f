//! Reads only the JSON header of a safetensors file, validating it against hostile input.

use std::io::Read;
use std::path::Path;

/// One tensor's entry in a safetensors header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `encoder.layer.0.attention.self.query.weight`.
    pub name: String,
    /// Dtype as written (`F32`, `BF16`, …).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// Largest header we accept (the format's own readers cap it at 100 MB).
pub const MAX_HEADER: u64 = 100_000_000;

fn dtype_size(d: &str) -> Option<u64> {
    Some(match d {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Reads and validates the header; the error string says exactly what is wrong.
pub fn read_header(path: &Path) -> Result<Vec<TensorInfo>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = f.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    if file_len < 8 {
        return Err(format!(
            "file is {file_len} bytes, too short to hold the 8-byte header length"
        ));
    }
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| format!("cannot read header length: {e}"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(format!(
            "header claims {n} bytes (limit {MAX_HEADER}); the file is corrupt or not safetensors"
        ));
    }
    if n > file_len - 8 {
        return Err(format!(
            "header claims {n} bytes but only {} follow; the file is truncated",
            file_len - 8
        ));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)
        .map_err(|e| format!("cannot read header: {e}"))?;
    parse_header(&buf, file_len - 8 - n)
}

/// Validates a header's JSON against a data section of `data_len` bytes.
pub fn parse_header(buf: &[u8], data_len: u64) -> Result<Vec<TensorInfo>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(buf).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("header is not a JSON object")?;
    let mut out = Vec::new();
    let mut ranges = Vec::new();
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or(format!("tensor `{name}` has no dtype"))?;
        let size =
            dtype_size(dtype).ok_or(format!("tensor `{name}` has unknown dtype `{dtype}`"))?;
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or(format!("tensor `{name}` has no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<_>>()
            .ok_or(format!(
                "tensor `{name}` has a shape entry that is not a non-negative integer"
            ))?;
        let off = t
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or(format!("tensor `{name}` has no valid data_offsets"))?;
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let bytes = numel
            .and_then(|n| n.checked_mul(size))
            .ok_or(format!("tensor `{name}` is too large"))?;
        if off.0 > off.1 || off.1 > data_len {
            return Err(format!(
                "tensor `{name}` claims bytes {}..{} but the data section has {data_len} bytes",
                off.0, off.1
            ));
        }
        if off.1 - off.0 != bytes {
            return Err(format!(
                "tensor `{name}` has {} bytes of data but its shape and dtype need {bytes}",
                off.1 - off.0
            ));
        }
        ranges.push((off.0, off.1, name.clone()));
        out.push(TensorInfo {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
        });
    }
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!(
                "tensors `{}` and `{}` overlap in the data section",
                w[0].2, w[1].2
            ));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
