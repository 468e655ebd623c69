//! Dense feature vectors (`FixedSizeList<Float64>`), assembling numeric columns into them, and
//! the zero-copy row-major view of a batch that the hot loops work on.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, Float64Array};
use arrow::buffer::ScalarBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type};

use crate::error::{QuiverError, Result};

/// The Arrow type of a dense feature vector of `dim` elements.
pub fn vector_type(dim: usize) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float64, false)),
        dim as i32,
    )
}

/// Whether `dt` is a numeric type that can be a feature (any integer or float type).
pub fn is_numeric(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float16
            | DataType::Float32
            | DataType::Float64
    ) || matches!(dt, DataType::Decimal128(_, _) | DataType::Decimal256(_, _))
}

/// Number of feature elements a column of type `dt` contributes: 1 for a numeric scalar, the
/// list size for a fixed-size list of numbers, `None` if it cannot be a feature.
pub fn feature_width(dt: &DataType) -> Option<usize> {
    match dt {
        DataType::FixedSizeList(f, n) if is_numeric(f.data_type()) => Some(*n as usize),
        dt if is_numeric(dt) => Some(1),
        _ => None,
    }
}

/// A batch of feature rows as the hot loops see it: one contiguous row-major slice of
/// `n_rows × dim` values, plus optional label and weight columns. Borrowed, never copied.
#[derive(Debug, Clone, Copy)]
pub struct FeatureBatch<'a> {
    /// Row-major feature values, `values[r * dim + j]` is feature `j` of row `r`.
    pub values: &'a [f64],
    pub n_rows: usize,
    pub dim: usize,
    pub label: Option<&'a [f64]>,
    pub weight: Option<&'a [f64]>,
}

impl<'a> FeatureBatch<'a> {
    /// A batch of features only.
    pub fn new(values: &'a [f64], dim: usize) -> Result<Self> {
        if dim == 0 || !values.len().is_multiple_of(dim) {
            return Err(QuiverError::internal(format!(
                "feature slice of {} values is not a whole number of rows of {dim}",
                values.len()
            )));
        }
        Ok(FeatureBatch {
            values,
            n_rows: values.len() / dim,
            dim,
            label: None,
            weight: None,
        })
    }

    /// Row `r` as a slice of `dim` values.
    #[inline]
    pub fn row(&self, r: usize) -> &'a [f64] {
        &self.values[r * self.dim..(r + 1) * self.dim]
    }

    /// Rows `start..end` as a smaller batch (zero-copy).
    pub fn slice(&self, start: usize, end: usize) -> FeatureBatch<'a> {
        FeatureBatch {
            values: &self.values[start * self.dim..end * self.dim],
            n_rows: end - start,
            dim: self.dim,
            label: self.label.map(|l| &l[start..end]),
            weight: self.weight.map(|w| &w[start..end]),
        }
    }
}

/// The zero-copy row-major view of a vector column: `(values, dim)`. Nulls (a null vector or a
/// null element) are an error naming `column` and the row within the batch.
pub fn vector_values<'a>(array: &'a dyn Array, column: &str) -> Result<(&'a [f64], usize)> {
    let list = array
        .as_fixed_size_list_opt()
        .ok_or_else(|| QuiverError::NonNumericColumn {
            column: column.to_string(),
            data_type: array.data_type().to_string(),
        })?;
    let dim = list.value_length() as usize;
    if let Some(nulls) = list.nulls()
        && nulls.null_count() > 0
        && let Some(row) = (0..list.len()).find(|&r| nulls.is_null(r))
    {
        return Err(QuiverError::InvalidValueInBatch {
            kind: "null",
            column: column.to_string(),
            row_in_batch: row,
        });
    }
    let values = list
        .values()
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| QuiverError::NonNumericColumn {
            column: column.to_string(),
            data_type: array.data_type().to_string(),
        })?;
    if values.null_count() > 0
        && let Some(i) = (0..values.len()).find(|&i| values.is_null(i))
    {
        return Err(QuiverError::InvalidValueInBatch {
            kind: "null",
            column: column.to_string(),
            row_in_batch: i / dim.max(1),
        });
    }
    let raw: &[f64] = values.values();
    let needed = list.len() * dim;
    if raw.len() < needed {
        return Err(QuiverError::internal(format!(
            "vector column '{column}' has {} values for {} rows of {dim}",
            raw.len(),
            list.len()
        )));
    }
    Ok((&raw[..needed], dim))
}

/// A plain numeric column as `f64`s (cast if needed; borrowed when already `Float64`).
/// Nulls are an error naming `column`.
pub fn numeric_values(array: &ArrayRef, column: &str) -> Result<ScalarBuffer<f64>> {
    if !is_numeric(array.data_type()) {
        return Err(QuiverError::NonNumericColumn {
            column: column.to_string(),
            data_type: array.data_type().to_string(),
        });
    }
    if array.null_count() > 0
        && let Some(row) = (0..array.len()).find(|&r| array.is_null(r))
    {
        return Err(QuiverError::InvalidValueInBatch {
            kind: "null",
            column: column.to_string(),
            row_in_batch: row,
        });
    }
    let as_f64 = if array.data_type() == &DataType::Float64 {
        array.clone()
    } else {
        cast(array, &DataType::Float64)?
    };
    Ok(as_f64.as_primitive::<Float64Type>().values().clone())
}

/// `a · b` with four independent partial sums, so that the multiply-adds pipeline (and
/// vectorise) instead of waiting on one chain of additions. The summation order is fixed: the
/// same inputs give the same bits everywhere (no fused multiply-adds: the baseline target's).
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    crate::math::dot::<false>(a, b)
}

/// Rows of [`affine_rows`] per block: the next block's rows are fetched into L2 while this
/// one is worked on (20 features: 40 KB).
const AFFINE_BLOCK: usize = 256;

/// An affine map of every row: `out[r·k + j] = offsets[j] + dot(weights_j, row r)` for the
/// `rows` rows of `values` (row-major) and the `k = offsets.len()` weight vectors of `weights`
/// (`k × dim`, row-major), each with exactly [`dot`]'s bits (as a model scoring one row at a
/// time gets them). Four rows at a time (independent chains that fill the pipeline), the next
/// block's rows asked into L2 meanwhile, and compiled for AVX2 and AVX-512 where the CPU runs
/// them (the same bits: no fused multiply-adds).
pub fn affine_rows(values: &[f64], rows: usize, weights: &[f64], offsets: &[f64]) -> Vec<f64> {
    let k = offsets.len();
    let mut out = vec![0.0; rows * k];
    debug_assert!(rows == 0 || values.len() / rows * k == weights.len());
    affine::affine(values, rows, weights, offsets, &mut out);
    out
}

/// [`affine_rows`]' loop. `_WIDE` names the compilation only: the arithmetic is the same
/// (unfused) in each, so that every one gives [`dot`]'s bits.
#[inline(always)]
fn affine_into<const _WIDE: bool>(
    values: &[f64],
    rows: usize,
    weights: &[f64],
    offsets: &[f64],
    out: &mut [f64],
) {
    use crate::math::{dot4, prefetch_l2};
    let k = offsets.len();
    if k == 0 || rows == 0 {
        return;
    }
    let d = values.len() / rows;
    if d == 0 {
        for o in out.chunks_exact_mut(k) {
            o.copy_from_slice(offsets);
        }
        return;
    }
    for start in (0..rows).step_by(AFFINE_BLOCK) {
        let end = (start + AFFINE_BLOCK).min(rows);
        let block = &values[start * d..end * d];
        let next = &values[end * d..(end + AFFINE_BLOCK).min(rows) * d];
        let mut ahead = next.chunks(4 * d);
        let fours = (end - start) / 4 * 4;
        for (g, x4) in block[..fours * d].chunks_exact(4 * d).enumerate() {
            if let Some(lines) = ahead.next() {
                for line in lines.chunks(8) {
                    prefetch_l2(line.as_ptr());
                }
            }
            let o = &mut out[(start + 4 * g) * k..(start + 4 * g + 4) * k];
            for (j, (w, b)) in weights.chunks_exact(d).zip(offsets).enumerate() {
                for (q, s) in dot4::<false>(w, x4).into_iter().enumerate() {
                    o[q * k + j] = *b + s;
                }
            }
        }
        for r in start + fours..end {
            let x = &values[r * d..(r + 1) * d];
            for (o, (w, b)) in out[r * k..(r + 1) * k]
                .iter_mut()
                .zip(weights.chunks_exact(d).zip(offsets))
            {
                *o = *b + crate::math::dot::<false>(w, x);
            }
        }
    }
}

crate::fma_kernels!(affine => affine_baseline, affine_avx2, affine_avx512;
    fn affine(values: &[f64], rows: usize, weights: &[f64], offsets: &[f64], out: &mut [f64]) => affine_into;
);

/// Index of the first NaN in `values`, if any. Cheap when there is none: a branch-free scan.
#[inline]
pub fn first_nan(values: &[f64]) -> Option<usize> {
    // Chunked so that the common (no NaN) case vectorises.
    const CHUNK: usize = 256;
    for (c, chunk) in values.chunks(CHUNK).enumerate() {
        let any = chunk.iter().fold(false, |acc, v| acc | v.is_nan());
        if any {
            let i = chunk.iter().position(|v| v.is_nan()).unwrap_or(0);
            return Some(c * CHUNK + i);
        }
    }
    None
}

/// Whether any value is not a finite number (NaN or ±∞; with `allow_nan`, ±∞ only). Arithmetic
/// rather than tests, in eight lanes, so that it vectorises on any x86-64 (a test per value
/// with `is_finite() || …` compiles to a branch per value, about 4× slower in cache): `x · 0`
/// is ±0 for every finite `x` and NaN for ±∞ and NaN, and with NaN allowed the largest `|x|`
/// is ∞ exactly when there is an infinity (the maximum passes over NaN).
#[inline]
pub fn any_non_finite(values: &[f64], allow_nan: bool) -> bool {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    if allow_nan {
        for c in chunks {
            for l in 0..8 {
                lanes[l] = lanes[l].max(c[l].abs());
            }
        }
        for x in rest {
            lanes[0] = lanes[0].max(x.abs());
        }
        lanes.contains(&f64::INFINITY)
    } else {
        for c in chunks {
            for l in 0..8 {
                lanes[l] += c[l] * 0.0;
            }
        }
        for x in rest {
            lanes[0] += x * 0.0;
        }
        lanes.iter().any(|s| *s != 0.0)
    }
}

/// The first value that is not a finite number (NaN, or ±∞ — which no model can learn from),
/// with its kind; with `allow_nan`, NaN passes (it means missing) and only ±∞ is found.
/// Cheap when every value is fine: a vectorised sweep ([`any_non_finite`]), a block at a time.
#[inline]
pub fn first_non_finite(values: &[f64], allow_nan: bool) -> Option<(usize, &'static str)> {
    const CHUNK: usize = 1024;
    let bad = |v: f64| !(v.is_finite() || allow_nan && v.is_nan());
    for (c, chunk) in values.chunks(CHUNK).enumerate() {
        if any_non_finite(chunk, allow_nan)
            && let Some(i) = chunk.iter().position(|v| bad(*v))
        {
            let kind = if chunk[i].is_nan() {
                "NaN"
            } else {
                "infinite value"
            };
            return Some((c * CHUNK + i, kind));
        }
    }
    None
}

/// What assembling does with a missing value (a null, or NaN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missing {
    /// An error naming the column and the row (the default: most models need every value).
    #[default]
    Refuse,
    /// Kept as NaN (Spark's `handleInvalid = "keep"`): for models that learn what a missing
    /// value means, as trees do.
    Keep,
}

/// `array` as Float64 values (or a Float64 list) with every null, of a row or of a list
/// element, made NaN.
fn nulls_as_nan(array: &ArrayRef) -> Result<ArrayRef> {
    if let DataType::FixedSizeList(_, w) = array.data_type() {
        let list = array.as_fixed_size_list();
        let w = *w as usize;
        let values = cast(list.values(), &DataType::Float64)?;
        let values = values.as_primitive::<Float64Type>();
        let mut out: Vec<f64> = values
            .iter()
            .take(list.len() * w)
            .map(|v| v.unwrap_or(f64::NAN))
            .collect();
        if let Some(nulls) = list.nulls() {
            for r in (0..list.len()).filter(|r| nulls.is_null(*r)) {
                out[r * w..(r + 1) * w].fill(f64::NAN);
            }
        }
        return Ok(Arc::new(vector_array(out, w)?));
    }
    let f = cast(array, &DataType::Float64)?;
    if f.null_count() == 0 {
        return Ok(f);
    }
    Ok(Arc::new(Float64Array::from_iter_values(
        f.as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.unwrap_or(f64::NAN)),
    )))
}

/// Assembles feature columns (numeric scalars of any integer/float type, and numeric
/// fixed-size lists) into one dense vector column, in the order given. Nulls and NaN are errors
/// that name the column and the row within the batch.
pub fn assemble(columns: &[(&str, &ArrayRef)]) -> Result<FixedSizeListArray> {
    assemble_with(columns, Missing::Refuse)
}

/// [`assemble`], with missing values refused or kept as NaN.
pub fn assemble_with(
    columns: &[(&str, &ArrayRef)],
    missing: Missing,
) -> Result<FixedSizeListArray> {
    let filled: Vec<ArrayRef>;
    let kept: Vec<(&str, &ArrayRef)>;
    let columns = if missing == Missing::Keep {
        filled = columns
            .iter()
            .map(|(name, a)| {
                if feature_width(a.data_type()).is_none() {
                    return Err(QuiverError::NonNumericColumn {
                        column: name.to_string(),
                        data_type: a.data_type().to_string(),
                    });
                }
                nulls_as_nan(a)
            })
            .collect::<Result<_>>()?;
        kept = columns.iter().map(|(n, _)| *n).zip(filled.iter()).collect();
        &kept[..]
    } else {
        columns
    };
    let n_rows = columns.first().map(|(_, a)| a.len()).unwrap_or(0);
    let mut widths = Vec::with_capacity(columns.len());
    for (name, array) in columns {
        let w = feature_width(array.data_type()).ok_or_else(|| QuiverError::NonNumericColumn {
            column: name.to_string(),
            data_type: array.data_type().to_string(),
        })?;
        if array.len() != n_rows {
            return Err(QuiverError::internal(format!(
                "column '{name}' has {} rows, expected {n_rows}",
                array.len()
            )));
        }
        widths.push(w);
    }
    let dim: usize = widths.iter().sum();
    if dim == 0 {
        return Err(QuiverError::InvalidParam {
            param: "features".to_string(),
            reason: "no feature columns to assemble".to_string(),
        });
    }
    // Validate and convert every column first: (row-major values, width).
    let mut sources: Vec<(ScalarBuffer<f64>, usize)> = Vec::with_capacity(columns.len());
    for ((name, array), w) in columns.iter().zip(&widths) {
        let values = if let DataType::FixedSizeList(_, _) = array.data_type() {
            let list = array.as_fixed_size_list();
            let list = if list.value_type() == DataType::Float64 {
                list.clone()
            } else {
                FixedSizeListArray::try_new(
                    Arc::new(Field::new_list_field(DataType::Float64, true)),
                    *w as i32,
                    cast(list.values(), &DataType::Float64)?,
                    list.nulls().cloned(),
                )?
            };
            vector_values(&list, name)?;
            list.values()
                .as_primitive::<Float64Type>()
                .values()
                .slice(0, n_rows * w)
        } else {
            numeric_values(array, name)?
        };
        if let Some((i, kind)) = first_non_finite(&values, missing == Missing::Keep) {
            return Err(QuiverError::InvalidValueInBatch {
                kind,
                column: name.to_string(),
                row_in_batch: i / w,
            });
        }
        sources.push((values, *w));
    }
    if let [(values, w)] = &sources[..]
        && *w == dim
    {
        // One vector column, already row-major: its values as they are (no copy).
        return vector_array_of(values.clone(), dim);
    }
    // Interleave into row-major order, a block of rows at a time so that the strided writes
    // stay in L1; every slot is written exactly once, so no zero-fill is needed.
    const BLOCK_ROWS: usize = 256;
    let mut out: Vec<f64> = Vec::with_capacity(n_rows * dim);
    let spare = &mut out.spare_capacity_mut()[..n_rows * dim];
    let mut r0 = 0;
    while r0 < n_rows {
        let r1 = (r0 + BLOCK_ROWS).min(n_rows);
        let mut offset = 0;
        for (src, w) in &sources {
            let w = *w;
            let dst_rows = spare[r0 * dim..r1 * dim].chunks_exact_mut(dim);
            if w == 1 {
                for (dst, v) in dst_rows.zip(&src[r0..r1]) {
                    dst[offset].write(*v);
                }
            } else {
                for (dst, row) in dst_rows.zip(src[r0 * w..r1 * w].chunks_exact(w)) {
                    for (d, v) in dst[offset..offset + w].iter_mut().zip(row) {
                        d.write(*v);
                    }
                }
            }
            offset += w;
        }
        r0 = r1;
    }
    // SAFETY: the widths sum to `dim`, so the loops above wrote all `n_rows * dim` slots.
    unsafe { out.set_len(n_rows * dim) };
    vector_array(out, dim)
}

/// Wraps row-major values into a vector column of `dim` elements (no copy).
pub fn vector_array(values: Vec<f64>, dim: usize) -> Result<FixedSizeListArray> {
    vector_array_of(values.into(), dim)
}

/// [`vector_array`] over values already in an Arrow buffer (shared, no copy).
pub fn vector_array_of(values: ScalarBuffer<f64>, dim: usize) -> Result<FixedSizeListArray> {
    Ok(FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float64, false)),
        dim as i32,
        Arc::new(Float64Array::new(values, None)),
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Int32Array, Int64Array, StringArray, UInt8Array};

    /// The vectorised sweep finds exactly the values the per-value test refuses: ±∞ and NaN
    /// in the lanes and in the remainder, NaN allowed or not, and never the largest finite
    /// values or subnormals.
    #[test]
    fn any_non_finite_agrees_with_the_test_per_value() {
        for n in [0usize, 1, 7, 8, 9, 23, 1024, 1030] {
            let fine: Vec<f64> = (0..n)
                .map(|i| match i % 4 {
                    0 => f64::MAX,
                    1 => -f64::MAX,
                    2 => f64::MIN_POSITIVE / 4.0,
                    _ => i as f64 - 3.5,
                })
                .collect();
            assert!(!any_non_finite(&fine, false) && !any_non_finite(&fine, true));
            assert_eq!(first_non_finite(&fine, false), None);
            for at in [0, n / 2, n.saturating_sub(1)]
                .into_iter()
                .filter(|_| n > 0)
            {
                for (bad, kind) in [
                    (f64::INFINITY, "infinite value"),
                    (f64::NEG_INFINITY, "infinite value"),
                    (f64::NAN, "NaN"),
                ] {
                    let mut v = fine.clone();
                    v[at] = bad;
                    assert!(any_non_finite(&v, false), "{bad} at {at} of {n}");
                    assert_eq!(
                        any_non_finite(&v, true),
                        !bad.is_nan(),
                        "{bad} at {at} of {n}"
                    );
                    assert_eq!(first_non_finite(&v, false), Some((at, kind)));
                    let allowed = first_non_finite(&v, true);
                    assert_eq!(allowed, (!bad.is_nan()).then_some((at, kind)));
                }
            }
        }
    }

    /// The blocked affine map gives each row's `offset + dot` bits, in every compilation the
    /// CPU runs: block and four-row edges, several weight vectors, odd widths, no features.
    #[test]
    fn affine_rows_equals_dot_row_by_row() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1e3
        };
        for (rows, d, k) in [
            (0, 3, 1),
            (1, 3, 1),
            (3, 20, 1),
            (4, 20, 2),
            (255, 7, 3),
            (256, 20, 1),
            (257, 1, 2),
            (1030, 20, 3),
            (9, 0, 2),
        ] {
            let values: Vec<f64> = (0..rows * d).map(|_| next()).collect();
            let weights: Vec<f64> = (0..k * d).map(|_| next()).collect();
            let offsets: Vec<f64> = (0..k).map(|_| next()).collect();
            let want: Vec<f64> = (0..rows)
                .flat_map(|r| {
                    let x = &values[r * d..(r + 1) * d];
                    let w = &weights;
                    offsets
                        .iter()
                        .enumerate()
                        .map(move |(j, b)| b + dot(&w[j * d..(j + 1) * d], x))
                })
                .collect();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let got = affine_rows(&values, rows, &weights, &offsets);
            assert_eq!(
                bits(&got),
                bits(&want),
                "{rows} rows, {d} features, {k} vectors"
            );
            let mut base = vec![0.0; rows * k];
            // SAFETY: the baseline variant runs anywhere; the others only where detected.
            unsafe {
                affine_baseline::affine(&values, rows, &weights, &offsets, &mut base);
                assert_eq!(bits(&base), bits(&want));
                #[cfg(target_arch = "x86_64")]
                if crate::cpu::has_avx2_fma() {
                    let mut v = vec![0.0; rows * k];
                    affine_avx2::affine(&values, rows, &weights, &offsets, &mut v);
                    assert_eq!(bits(&v), bits(&want));
                }
                #[cfg(target_arch = "x86_64")]
                if crate::cpu::has_avx512_fma() {
                    let mut v = vec![0.0; rows * k];
                    affine_avx512::affine(&values, rows, &weights, &offsets, &mut v);
                    assert_eq!(bits(&v), bits(&want));
                }
            }
        }
    }

    #[test]
    fn assembles_mixed_numeric_types_row_major() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![1, 2, 3]));
        let b: ArrayRef = Arc::new(Float32Array::from(vec![0.5, 1.5, 2.5]));
        let c: ArrayRef = Arc::new(UInt8Array::from(vec![7, 8, 9]));
        let v = assemble(&[("a", &a), ("b", &b), ("c", &c)]).unwrap();
        let (vals, dim) = vector_values(&v, "features").unwrap();
        assert_eq!(dim, 3);
        assert_eq!(vals, &[1.0, 0.5, 7.0, 2.0, 1.5, 8.0, 3.0, 2.5, 9.0]);
    }

    #[test]
    fn assembles_vectors_with_scalars() {
        let v1: ArrayRef = Arc::new(vector_array(vec![1.0, 2.0, 3.0, 4.0], 2).unwrap());
        let s: ArrayRef = Arc::new(Int64Array::from(vec![10, 20]));
        let v = assemble(&[("s", &s), ("v", &v1)]).unwrap();
        let (vals, dim) = vector_values(&v, "f").unwrap();
        assert_eq!(dim, 3);
        assert_eq!(vals, &[10.0, 1.0, 2.0, 20.0, 3.0, 4.0]);
    }

    /// One Float64 vector column is already the assembled layout: its values are shared, not
    /// copied (also for a slice of it), and still checked.
    #[test]
    fn a_single_vector_column_assembles_without_a_copy() {
        let v = vector_array((0..20).map(f64::from).collect(), 4).unwrap();
        let base = vector_values(&v, "f").unwrap().0.as_ptr();
        let sliced: ArrayRef = Arc::new(v.slice(1, 3));
        let out = assemble(&[("v", &sliced)]).unwrap();
        let (vals, dim) = vector_values(&out, "features").unwrap();
        assert_eq!((dim, out.len()), (4, 3));
        assert_eq!(vals, (4..16).map(f64::from).collect::<Vec<_>>());
        assert_eq!(vals.as_ptr(), base.wrapping_add(4), "no copy");
        let mut bad: Vec<f64> = (0..8).map(f64::from).collect();
        bad[6] = f64::NAN;
        let bad: ArrayRef = Arc::new(vector_array(bad, 4).unwrap());
        let err = assemble(&[("v", &bad)]).unwrap_err().to_string();
        assert!(err.contains("'v'") && err.contains("row 1"), "{err}");
    }

    #[test]
    fn view_of_a_sliced_vector_column_is_zero_copy() {
        let v = vector_array((0..20).map(f64::from).collect(), 4).unwrap();
        let base = vector_values(&v, "f").unwrap().0.as_ptr();
        let sliced = v.slice(2, 2);
        let (vals, dim) = vector_values(&sliced, "f").unwrap();
        assert_eq!(dim, 4);
        assert_eq!(vals, &[8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]);
        assert_eq!(
            vals.as_ptr(),
            base.wrapping_add(8),
            "the view must not copy"
        );
    }

    #[test]
    fn null_and_nan_name_column_and_row() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![Some(1), None, Some(3)]));
        let err = assemble(&[("age", &a)]).unwrap_err().to_string();
        assert!(
            err.contains("null") && err.contains("'age'") && err.contains("row 1"),
            "{err}"
        );

        let b: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, f64::NAN]));
        let err = assemble(&[("age", &a.slice(0, 1)), ("x", &b.slice(2, 1))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("NaN") && err.contains("'x'") && err.contains("row 0"),
            "{err}"
        );
    }

    #[test]
    fn non_numeric_column_is_rejected() {
        let s: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let err = assemble(&[("name", &s)]).unwrap_err().to_string();
        assert!(
            assemble_with(&[("name", &s)], Missing::Keep)
                .unwrap_err()
                .to_string()
                .contains("'name'")
        );
        assert!(err.contains("'name'") && err.contains("Utf8"), "{err}");
    }

    #[test]
    fn first_nan_finds_the_first() {
        let mut v = vec![0.0; 1000];
        assert_eq!(first_nan(&v), None);
        v[700] = f64::NAN;
        v[900] = f64::NAN;
        assert_eq!(first_nan(&v), Some(700));
    }
}
