//! The runtime's safetensors loader (weights, adapters, checkpoints) turns truncated and
//! hostile files into errors, never panics or huge allocations. `tests/hostile_runtime_files.rs`
//! checks the coded diagnostics of the commands that read them.

use lorac_runtime::weights::{load, load_with_meta};
use std::path::PathBuf;

/// A safetensors file: 8-byte little-endian header length, the header, the data.
fn file(header_len: u64, header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = header_len.to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

fn good() -> Vec<u8> {
    let h = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    file(h.len() as u64, h, &[0u8; 16])
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorac-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hostile_cases() -> Vec<(&'static str, Vec<u8>)> {
    let g = good();
    let with = |h: &str, data: &[u8]| file(h.len() as u64, h, data);
    vec![
        ("empty file", vec![]),
        ("shorter than the length prefix", vec![1, 2, 3]),
        ("truncated in the data", g[..g.len() - 5].to_vec()),
        ("truncated in the header", g[..20].to_vec()),
        ("header claims 2^60 bytes", file(1 << 60, "{}", &[])),
        ("header longer than the file", file(4096, "{}", &[])),
        ("header is not JSON", with("{not json}", &[])),
        (
            "offsets past the end",
            with(
                r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,1600]}}"#,
                &[0; 16],
            ),
        ),
        (
            "offsets disagree with the shape",
            with(
                r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}}"#,
                &[0; 16],
            ),
        ),
        (
            "reversed offsets",
            with(
                r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#,
                &[0; 16],
            ),
        ),
        (
            "overlapping tensors",
            with(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
        ),
        (
            "element count overflows",
            with(
                r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#,
                &[0; 16],
            ),
        ),
        (
            "unsupported dtype",
            with(
                r#"{"w":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}}"#,
                &[0; 4],
            ),
        ),
    ]
}

#[test]
fn the_loader_rejects_every_hostile_file() {
    let d = dir("loader");
    let p = d.join("w.safetensors");
    std::fs::write(&p, good()).unwrap();
    assert_eq!(load(&p, None).unwrap()["w"].shape, vec![2, 2]);
    for (what, bytes) in hostile_cases() {
        std::fs::write(&p, &bytes).unwrap();
        assert!(load(&p, None).is_err(), "{what}: loaded");
        assert!(load_with_meta(&p).is_err(), "{what}: loaded with metadata");
    }
    assert!(load(&d.join("missing.safetensors"), None).is_err());
    let _ = std::fs::remove_dir_all(&d);
}
