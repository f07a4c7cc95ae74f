//! Host implementations of the ops the CPU backend does not fuse: views that move data,
//! gathers, casts; anything rarer falls back to the reference semantics.

use lorac_compiler::ir::tensor::strides;
use lorac_compiler::ir::{ops, Data, Op, Tensor};
use rayon::prelude::*;

/// A read-only operand: its data and shape.
pub enum In<'a> {
    /// f32 data.
    F(&'a [f32], &'a [usize]),
    /// i64 data.
    I(&'a [i64], &'a [usize]),
}

/// The output buffer.
pub enum Out<'a> {
    /// f32 data.
    F(&'a mut [f32]),
    /// i64 data.
    I(&'a mut [i64]),
}

/// Visits every index tuple of `dims` in row-major order with its offsets along strides `a`
/// and `b`: `f(Σ idx·a, Σ idx·b)`. No dims: one visit at (0, 0).
fn odometer(dims: &[usize], a: &[usize], b: &[usize], mut f: impl FnMut(usize, usize)) {
    if dims.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; dims.len()];
    let (mut oa, mut ob) = (0usize, 0usize);
    loop {
        f(oa, ob);
        let mut d = dims.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            oa += a[d];
            ob += b[d];
            if idx[d] < dims[d] {
                break;
            }
            oa -= a[d] * dims[d];
            ob -= b[d] * dims[d];
            idx[d] = 0;
        }
    }
}

/// Visits every output index in row-major order with the matching source offset, where the
/// source offset advances by `st[axis]` along each output axis.
fn walk(shape: &[usize], st: &[usize], mut f: impl FnMut(usize, usize)) {
    let Some((&inner, lead)) = shape.split_last() else {
        f(0, 0);
        return;
    };
    let ist = st[lead.len()];
    let ost = strides(shape);
    odometer(lead, &st[..lead.len()], &ost[..lead.len()], |so, oo| {
        for j in 0..inner {
            f(oo + j, so + j * ist);
        }
    });
}

fn strided<T: Copy + Send + Sync>(src: &[T], dst: &mut [T], shape: &[usize], st: &[usize]) {
    // Large copies (attention's key transposes) split over the leading axis across threads.
    if dst.len() >= 1 << 16 && shape.len() > 1 && shape[0] > 1 {
        let per = dst.len() / shape[0];
        dst.par_chunks_mut(per).enumerate().for_each(|(i, d)| {
            copy_strided(&src[i * st[0]..], d, &shape[1..], &st[1..]);
        });
        return;
    }
    copy_strided(src, dst, shape, st);
}

/// Side of the square tiles a transposing copy moves at a time (two 16 × 16 f32 tiles
/// fit in L1 many times over; a row of one is a 64-byte line).
const TILE: usize = 16;

/// `dst[o] = src[i]` over the view, as [`walk`] visits it. When the last output axis
/// strides through the source and another output axis `a` is the source's contiguous one
/// (a transpose, as attention's keys), each `a × last` plane is copied in square tiles:
/// `walk` would touch a new source line per element, and measured ~1 ns per element.
fn copy_strided<T: Copy>(src: &[T], dst: &mut [T], shape: &[usize], st: &[usize]) {
    let r = shape.len();
    let a = (r >= 2 && st[r - 1] != 1)
        .then(|| (0..r - 1).rev().find(|&a| st[a] == 1 && shape[a] > 1))
        .flatten();
    let Some(a) = a else {
        if r >= 1 && st[r - 1] == 1 {
            // The last axis is contiguous on both sides (attention's head permutes): whole
            // runs at a time, not element by element.
            let inner = shape[r - 1];
            let ost = strides(shape);
            odometer(&shape[..r - 1], &st[..r - 1], &ost[..r - 1], |so, oo| {
                dst[oo..oo + inner].copy_from_slice(&src[so..so + inner]);
            });
            return;
        }
        walk(shape, st, |o, i| dst[o] = src[i]);
        return;
    };
    let ost = strides(shape);
    let (rows, cols, sc, orow) = (shape[a], shape[r - 1], st[r - 1], ost[a]);
    // The other axes address the planes.
    let outer: Vec<usize> = (0..r - 1).filter(|&x| x != a).collect();
    let pick = |v: &[usize]| outer.iter().map(|&x| v[x]).collect::<Vec<_>>();
    // 4-byte elements (f32) move as whole tiles through registers where the CPU allows.
    let wide = std::mem::size_of::<T>() == 4 && ops::thin::has_avx512();
    odometer(&pick(shape), &pick(st), &pick(&ost), |so, oo| {
        for i0 in (0..rows).step_by(TILE) {
            for j0 in (0..cols).step_by(TILE) {
                let (h, w) = (TILE.min(rows - i0), TILE.min(cols - j0));
                let (s, d) = (so + i0 + j0 * sc, oo + i0 * orow + j0);
                tile(src, dst, (s, sc), (d, orow), (h, w), wide);
            }
        }
    });
}

/// One tile of a transposing copy: `dst[d + i·orow + j] = src[s + i + j·sc]` for `i < h`,
/// `j < w`; a full tile of 4-byte elements goes through AVX-512 registers when `wide`.
#[inline]
fn tile<T: Copy>(
    src: &[T],
    dst: &mut [T],
    (s, sc): (usize, usize),
    (d, orow): (usize, usize),
    (h, w): (usize, usize),
    wide: bool,
) {
    if wide && h == TILE && w == TILE {
        #[cfg(target_arch = "x86_64")]
        {
            // The tile's last read and write lie within the slices (the indexing the element
            // loop below does, once per tile).
            assert!(
                s + (TILE - 1) * sc + TILE <= src.len()
                    && d + (TILE - 1) * orow + TILE <= dst.len()
            );
            // SAFETY: `wide` means AVX-512 was detected and T is 4 bytes and Copy (bits move
            // unchanged); every read and write lies between `s`/`d` and the ends just checked.
            unsafe {
                transpose::tile16(
                    src.as_ptr().add(s) as *const u32,
                    sc,
                    dst.as_mut_ptr().add(d) as *mut u32,
                    orow,
                )
            };
            return;
        }
    }
    for i in 0..h {
        let o = d + i * orow;
        for j in 0..w {
            dst[o + j] = src[s + i + j * sc];
        }
    }
}

/// A 16 × 16 transpose of 4-byte elements in AVX-512 registers: 16 row loads, 64 shuffles,
/// 16 row stores, where the element-wise tile loop read a new source line per element.
#[cfg(target_arch = "x86_64")]
mod transpose {
    /// `dst[ii·ds + jj] = src[jj·ss + ii]` for `ii, jj < 16`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, and both 16 × 16 tiles must lie in valid memory.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile16(src: *const u32, ss: usize, dst: *mut u32, ds: usize) {
        use std::arch::x86_64::*;
        let mut r = [_mm512_setzero_si512(); 16];
        for (jj, v) in r.iter_mut().enumerate() {
            // SAFETY: within the source tile.
            *v = unsafe { _mm512_loadu_si512(src.add(jj * ss) as *const __m512i) };
        }
        // Rows pairwise by 32-bit element, then by 64-bit pair: afterwards each 128-bit lane
        // L of r[4g + c] holds column 4L + c of rows 4g..4g+4.
        let mut t = r;
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
        }
        for g in 0..4 {
            let b = 4 * g;
            r[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            r[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            r[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            r[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        // Then the 128-bit lanes: 0x88 takes lanes (0, 2) of each source, 0xdd lanes (1, 3).
        for c in 0..4 {
            t[c] = _mm512_shuffle_i32x4::<0x88>(r[c], r[4 + c]);
            t[4 + c] = _mm512_shuffle_i32x4::<0xdd>(r[c], r[4 + c]);
            t[8 + c] = _mm512_shuffle_i32x4::<0x88>(r[8 + c], r[12 + c]);
            t[12 + c] = _mm512_shuffle_i32x4::<0xdd>(r[8 + c], r[12 + c]);
        }
        for c in 0..4 {
            r[c] = _mm512_shuffle_i32x4::<0x88>(t[c], t[8 + c]);
            r[4 + c] = _mm512_shuffle_i32x4::<0x88>(t[4 + c], t[12 + c]);
            r[8 + c] = _mm512_shuffle_i32x4::<0xdd>(t[c], t[8 + c]);
            r[12 + c] = _mm512_shuffle_i32x4::<0xdd>(t[4 + c], t[12 + c]);
        }
        for (ii, v) in r.iter().enumerate() {
            // SAFETY: within the destination tile.
            unsafe { _mm512_storeu_si512(dst.add(ii * ds) as *mut __m512i, *v) };
        }
    }
}

/// Source strides (per output axis) of a permute or broadcast.
fn view_strides(op: &Op, ins: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    let s = strides(ins);
    match op {
        Op::Permute { perm } => Some(perm.iter().map(|&p| s[p]).collect()),
        Op::Broadcast { .. } => {
            let lead = out.len() - ins.len();
            Some(
                (0..out.len())
                    .map(|a| {
                        if a < lead || ins[a - lead] == 1 {
                            0
                        } else {
                            s[a - lead]
                        }
                    })
                    .collect(),
            )
        }
        Op::Slice { .. } => Some(s),
        _ => None,
    }
}

fn copy_view(op: &Op, x: &In<'_>, out: &mut Out<'_>, shape: &[usize]) -> Option<()> {
    let (ins, base) = match x {
        In::F(_, s) | In::I(_, s) => (*s, 0usize),
    };
    let st = view_strides(op, ins, shape)?;
    let base = match op {
        Op::Slice { axis, start, .. } => base + start * st[*axis],
        _ => base,
    };
    match (x, out) {
        (In::F(v, _), Out::F(o)) => strided(&v[base..], o, shape, &st),
        (In::I(v, _), Out::I(o)) => strided(&v[base..], o, shape, &st),
        _ => return None,
    }
    Some(())
}

fn concat<T: Copy>(parts: &[(&[T], &[usize])], axis: usize, dst: &mut [T]) {
    let outer: usize = parts[0].1[..axis].iter().product();
    let mut o = 0;
    for b in 0..outer {
        for (v, s) in parts {
            let blk: usize = s[axis..].iter().product();
            dst[o..o + blk].copy_from_slice(&v[b * blk..(b + 1) * blk]);
            o += blk;
        }
    }
}

fn to_tensor(x: &In<'_>) -> Tensor {
    match x {
        In::F(v, s) => Tensor::f32(s.to_vec(), v.to_vec()),
        In::I(v, s) => Tensor::i64(s.to_vec(), v.to_vec()),
    }
}

/// Runs one host op into `out`.
pub fn run(op: &Op, ins: &[In<'_>], out: &mut Out<'_>, shape: &[usize]) -> Result<(), String> {
    let view = matches!(
        op,
        Op::Permute { .. } | Op::Broadcast { .. } | Op::Slice { .. }
    );
    if view && copy_view(op, &ins[0], out, shape).is_some() {
        return Ok(());
    }
    match op {
        Op::Concat { axis } => match out {
            Out::F(o) => {
                let parts: Option<Vec<(&[f32], &[usize])>> = ins
                    .iter()
                    .map(|x| match x {
                        In::F(v, s) => Some((*v, *s)),
                        In::I(..) => None,
                    })
                    .collect();
                if let Some(p) = parts {
                    concat(&p, *axis, o);
                    return Ok(());
                }
            }
            Out::I(o) => {
                let parts: Option<Vec<(&[i64], &[usize])>> = ins
                    .iter()
                    .map(|x| match x {
                        In::I(v, s) => Some((*v, *s)),
                        In::F(..) => None,
                    })
                    .collect();
                if let Some(p) = parts {
                    concat(&p, *axis, o);
                    return Ok(());
                }
            }
        },
        Op::Dropout { p, salt } => {
            if let (In::F(x, _), In::I(seed, _), Out::F(o)) = (&ins[0], &ins[1], &mut *out) {
                let st = ops::random::stream(seed.first().copied().unwrap_or(0) as u64, *salt);
                const CHUNK: usize = 1 << 14;
                // One pass: each factor multiplies its value in registers (`x · f`, the
                // reference's product).
                o.par_chunks_mut(CHUNK).enumerate().for_each(|(c, oc)| {
                    super::mask::apply(st, (c * CHUNK) as u64, *p, &x[c * CHUNK..], oc);
                });
                return Ok(());
            }
        }
        Op::AttnProbs { scale } => {
            if let (In::F(q, qs), In::F(k, ks), In::F(mask, ms), Out::F(o)) =
                (&ins[0], &ins[1], &ins[2], &mut *out)
            {
                let geo = ops::attention::Geometry::new(qs, ks, ms)?;
                super::attention::probs(&geo, *scale, q, k, mask, o);
                return Ok(());
            }
        }
        Op::AttnGrad { scale } => {
            if let (In::F(p, ps), In::F(g, _), Out::F(o)) = (&ins[0], &ins[1], &mut *out) {
                super::attention::grad(p, g, o, ps.last().copied().unwrap_or(1), *scale);
                return Ok(());
            }
        }
        Op::RoutedKeep { p, salts, k, n } => {
            if let (In::F(mask, ms), In::I(seed, _), Out::I(o)) = (&ins[0], &ins[1], &mut *out) {
                let seed = seed.first().copied().unwrap_or(0) as u64;
                let st = ops::routing::streams(seed, salts);
                super::routed::keep(mask, ms[1], *k, *p, &st, *n, o);
                return Ok(());
            }
        }
        Op::RoutedProject { p, k } | Op::RoutedExpand { p, k } | Op::RoutedOuter { p, k } => {
            if let (In::F(u, _), In::F(v, vs), In::F(mask, ms), In::I(keep, _), Out::F(o)) =
                (&ins[0], &ins[1], &ins[2], &ins[3], &mut *out)
            {
                let r = super::routed::Routing {
                    mask,
                    experts: ms[1],
                    k: *k,
                    scale: ops::random::kept_factor(*p),
                    keep,
                    words: ops::routing::words(vs[1]),
                };
                match op {
                    Op::RoutedProject { .. } => super::routed::project(u, v, vs[1], &r, o),
                    Op::RoutedExpand { .. } => super::routed::expand(u, v, vs[1], &r, o),
                    _ => super::routed::outer(u, v, vs[1], &r, o),
                }
                return Ok(());
            }
        }
        Op::TopKMask { k } => {
            if let (In::F(x, s), Out::F(o)) = (&ins[0], &mut *out) {
                let n = s.last().copied().unwrap_or(1).max(1);
                o.par_chunks_mut(n)
                    .zip(x.par_chunks(n))
                    .for_each(|(o, row)| ops::index::top_k_row(row, *k, o));
                return Ok(());
            }
        }
        Op::Gather => {
            if let (In::F(t, ts), In::I(idx, _), Out::F(o)) = (&ins[0], &ins[1], &mut *out) {
                let row: usize = ts[1..].iter().product();
                if let Some(&r) = idx.iter().find(|&&r| r < 0 || r as usize >= ts[0]) {
                    return Err(format!("gather index {r} outside 0..{}", ts[0]));
                }
                if row == 0 {
                    return Ok(());
                }
                // Rows of a large table (the word embeddings) come from memory one by one:
                // split them over threads, 64 rows a task.
                const ROWS: usize = 64;
                o[..idx.len() * row]
                    .par_chunks_mut(ROWS * row)
                    .zip(idx.par_chunks(ROWS))
                    .for_each(|(o, ids)| {
                        for (o, &r) in o.chunks_exact_mut(row).zip(ids) {
                            let r = r as usize;
                            o.copy_from_slice(&t[r * row..(r + 1) * row]);
                        }
                    });
                return Ok(());
            }
        }
        _ => {}
    }
    // Rare ops: the reference semantics on copies.
    let ts: Vec<Tensor> = ins.iter().map(to_tensor).collect();
    let refs: Vec<&Tensor> = ts.iter().collect();
    let t = ops::eval(op, &refs)?;
    match (&t.data, out) {
        (Data::F32(v), Out::F(o)) if v.len() == o.len() => o.copy_from_slice(v),
        (Data::I64(v), Out::I(o)) if v.len() == o.len() => o.copy_from_slice(v),
        _ => return Err(format!("{}: result does not fit its buffer", op.name())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lorac_compiler::ir::tensor::numel;

    /// Gathers split over threads give the reference's rows (past one 64-row task, with
    /// repeats), and an index outside the table is an error, not a panic.
    #[test]
    fn gathers_equal_the_reference_and_refuse_bad_indices() {
        let (rows, width) = (37, 5);
        let table: Vec<f32> = (0..rows * width).map(|i| i as f32 * 0.5).collect();
        let idx: Vec<i64> = (0..150).map(|i| (i * 7 % rows) as i64).collect();
        let ts = [rows, width];
        let is = [150];
        let mut got = vec![0f32; 150 * width];
        let ins = [In::F(&table, &ts), In::I(&idx, &is)];
        run(&Op::Gather, &ins, &mut Out::F(&mut got), &[150, width]).unwrap();
        let want = ops::eval(
            &Op::Gather,
            &[
                &Tensor::f32(ts.to_vec(), table.clone()),
                &Tensor::i64(is.to_vec(), idx.clone()),
            ],
        )
        .unwrap();
        assert_eq!(got, want.f());
        for bad in [-1, rows as i64] {
            let mut idx = idx.clone();
            idx[100] = bad;
            let ins = [In::F(&table, &ts), In::I(&idx, &is)];
            let e = run(&Op::Gather, &ins, &mut Out::F(&mut got), &[150, width]).unwrap_err();
            assert!(e.contains("outside 0..37"), "{e}");
        }
    }

    /// Tiled transposing copies equal the element-by-element walk (the definition) for
    /// every permutation of rank 2–4 views with odd and tile-straddling extents, and for
    /// the leading-axis parallel split.
    #[test]
    fn tiled_permutes_equal_the_walk() {
        let shapes: [&[usize]; 5] = [
            &[3, 17],
            &[33, 1, 5],
            &[2, 3, 16, 31],
            &[1, 18, 7, 2],
            &[40, 3, 17, 33],
        ];
        for ins in shapes {
            let n = numel(ins);
            let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let s = strides(ins);
            let mut perm: Vec<usize> = (0..ins.len()).collect();
            // Every ordering of the axes.
            let mut all = vec![];
            permutations(&mut perm, 0, &mut all);
            for p in all {
                let shape: Vec<usize> = p.iter().map(|&x| ins[x]).collect();
                let st: Vec<usize> = p.iter().map(|&x| s[x]).collect();
                let mut want = vec![-1f32; n];
                walk(&shape, &st, |o, i| want[o] = src[i]);
                let mut got = vec![-2f32; n];
                strided(&src, &mut got, &shape, &st);
                assert_eq!(got, want, "shape {ins:?} perm {p:?}");
            }
        }
    }

    /// Broadcast views (a source stride of 0 on the last axis, with another axis contiguous)
    /// take the tiled path too; f32 and i64 alike, through the leading-axis split.
    #[test]
    fn tiled_broadcasts_equal_the_walk() {
        // (output shape, source strides): [n,1]→[n,m]; [k,1]→[b,k,m]; [b,k,1]→[b,k,m].
        let cases: [(&[usize], &[usize]); 3] = [
            (&[37, 300], &[1, 0]),
            (&[5, 33, 400], &[0, 1, 0]),
            (&[3, 50, 700], &[50, 1, 0]),
        ];
        for (shape, st) in cases {
            let n = numel(shape);
            let len = 200;
            let src: Vec<i64> = (0..len as i64).collect();
            let mut want = vec![-1i64; n];
            walk(shape, st, |o, i| want[o] = src[i]);
            let mut got = vec![-2i64; n];
            strided(&src, &mut got, shape, st);
            assert_eq!(got, want, "i64 shape {shape:?}");
            let srcf: Vec<f32> = src.iter().map(|&v| v as f32).collect();
            let mut gotf = vec![-2f32; n];
            strided(&srcf, &mut gotf, shape, st);
            assert!(
                gotf.iter().zip(&want).all(|(&a, &b)| a == b as f32),
                "f32 shape {shape:?}"
            );
        }
    }

    fn permutations(p: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
        if k == p.len() {
            out.push(p.clone());
            return;
        }
        for i in k..p.len() {
            p.swap(k, i);
            permutations(p, k + 1, out);
            p.swap(k, i);
        }
    }
}
