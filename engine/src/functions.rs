//! The engine's own SQL functions: `vector_assemble(col, …)` and `vector_from_list(list, dim)`
//! build dense feature vectors; `vector_summary(v)` is the feature summary as an aggregate.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float64Array, ListArray, StructArray, UInt64Array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::aggregate::{Statistic, StatisticAccumulator, binary_state_field};
use crate::error::{QuiverError, Result};
use crate::summary::Summarizer;
use crate::vector::{assemble, feature_width, vector_type};

/// `vector_assemble(c1, c2, …)`: numeric columns (any integer or float type) and numeric
/// vectors concatenated into one `FixedSizeList<Float64>`; nulls and NaN are errors naming the
/// column. Spark's `VectorAssembler` as a function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AssembleUdf {
    signature: Signature,
}

impl Default for AssembleUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl AssembleUdf {
    pub fn new() -> Self {
        AssembleUdf {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for AssembleUdf {
    fn name(&self) -> &str {
        "vector_assemble"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        let mut dim = 0;
        for (i, t) in arg_types.iter().enumerate() {
            dim += feature_width(t).ok_or_else(|| {
                QuiverError::NonNumericColumn {
                    column: format!("argument {} of vector_assemble", i + 1),
                    data_type: t.to_string(),
                }
                .into_datafusion()
            })?;
        }
        Ok(vector_type(dim))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let cols: Vec<(&str, &arrow::array::ArrayRef)> = args
            .arg_fields
            .iter()
            .map(|f| f.name().as_str())
            .zip(arrays.iter())
            .collect();
        let out = assemble(&cols).map_err(QuiverError::into_datafusion)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `vector_from_list(list, dim)`: a list column of numbers (`List`, `LargeList` or
/// `FixedSizeList`) as a dense `FixedSizeList<Float64>` vector of `dim` elements. A row of
/// another length, a null or a NaN is an error naming the column and the row.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorFromListUdf {
    signature: Signature,
}

impl Default for VectorFromListUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl VectorFromListUdf {
    pub fn new() -> Self {
        VectorFromListUdf {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

fn list_to_vector(array: &ArrayRef, column: &str, dim: usize) -> Result<FixedSizeListArray> {
    let (offsets, values, nulls): (Vec<usize>, ArrayRef, Option<&NullBuffer>) =
        match array.data_type() {
            DataType::List(_) => {
                let l = array.as_list::<i32>();
                (
                    l.offsets().iter().map(|o| *o as usize).collect(),
                    l.values().clone(),
                    l.nulls(),
                )
            }
            DataType::LargeList(_) => {
                let l = array.as_list::<i64>();
                (
                    l.offsets().iter().map(|o| *o as usize).collect(),
                    l.values().clone(),
                    l.nulls(),
                )
            }
            DataType::FixedSizeList(_, n) => {
                let l = array.as_fixed_size_list();
                let n = *n as usize;
                (
                    (0..=l.len()).map(|i| i * n).collect(),
                    l.values().clone(),
                    l.nulls(),
                )
            }
            other => {
                return Err(QuiverError::NonNumericColumn {
                    column: column.to_string(),
                    data_type: other.to_string(),
                });
            }
        };
    for r in 0..array.len() {
        if nulls.is_some_and(|n| n.is_null(r)) {
            return Err(QuiverError::InvalidValueInBatch {
                kind: "null",
                column: column.to_string(),
                row_in_batch: r,
            });
        }
        let found = offsets[r + 1] - offsets[r];
        if found != dim {
            return Err(QuiverError::VectorLengthInBatch {
                column: column.to_string(),
                row_in_batch: r,
                expected: dim,
                found,
            });
        }
    }
    let start = offsets.first().copied().unwrap_or(0);
    let used = values.slice(start, array.len() * dim);
    let flat = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(used.data_type().clone(), true)),
        dim as i32,
        used,
        None,
    )?;
    let flat: ArrayRef = Arc::new(flat);
    assemble(&[(column, &flat)])
}

impl ScalarUDFImpl for VectorFromListUdf {
    fn name(&self) -> &str {
        "vector_from_list"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        datafusion::common::internal_err!("vector_from_list: return_field_from_args is used")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DFResult<FieldRef> {
        let dim = match args.scalar_arguments.get(1).copied().flatten() {
            Some(v) => v.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                // A vector's length is an Arrow i32; larger ones would wrap.
                ScalarValue::Int64(Some(d)) if d > 0 && d <= i32::MAX as i64 => Some(d as usize),
                _ => None,
            }),
            None => None,
        };
        let dim = dim.ok_or_else(|| {
            QuiverError::InvalidParam {
                param: "vector_from_list".to_string(),
                reason:
                    "the second argument must be a positive integer literal (the vector length, at most 2147483647)"
                        .to_string(),
            }
            .into_datafusion()
        })?;
        Ok(Arc::new(Field::new(self.name(), vector_type(dim), false)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let dim = match args.return_field.data_type() {
            DataType::FixedSizeList(_, n) => *n as usize,
            other => return datafusion::common::internal_err!("vector_from_list returns {other}"),
        };
        let arrays = ColumnarValue::values_to_arrays(&args.args[..1])?;
        let name = args.arg_fields[0].name().clone();
        let out = list_to_vector(&arrays[0], &name, dim).map_err(QuiverError::into_datafusion)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The engine's functions, for the registry.
pub fn engine_scalar_functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(AssembleUdf::new()),
        ScalarUDF::from(VectorFromListUdf::new()),
        ScalarUDF::from(RowUniformUdf::new()),
        ScalarUDF::from(VectorOpUdf::new(VectorOp::Dot)),
        ScalarUDF::from(VectorOpUdf::new(VectorOp::Norm)),
        ScalarUDF::from(VectorOpUdf::new(VectorOp::Element)),
        ScalarUDF::from(ProcessIdUdf::new()),
    ]
}

/// `quiver_process()`: the name of the process evaluating the row (the executor id on a cluster
/// executor, `host:pid` elsewhere). Volatile, so it is never folded
/// into a constant by the planner: it shows where the work ran.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ProcessIdUdf {
    signature: Signature,
}

impl ProcessIdUdf {
    pub fn new() -> Self {
        ProcessIdUdf {
            signature: Signature::nullary(Volatility::Volatile),
        }
    }
}

impl Default for ProcessIdUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for ProcessIdUdf {
    fn name(&self) -> &str {
        "quiver_process"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let name = crate::fanout::worker_id();
        let out: arrow::array::StringArray =
            std::iter::repeat_n(Some(name.as_str()), args.number_rows).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The vector helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VectorOp {
    /// `vector_dot(a, b)`: the dot product of two vectors of one length.
    Dot,
    /// `vector_norm(v)`: the Euclidean norm.
    Norm,
    /// `vector_element(v, i)`: element `i`, counting from 1 (NULL out of range, as arrays).
    Element,
}

/// `vector_dot`, `vector_norm` and `vector_element` over `FixedSizeList<Float64>` vectors (as
/// `vector_assemble` and `vector_from_list` make them); a NULL vector gives NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorOpUdf {
    op: VectorOp,
    signature: Signature,
}

impl VectorOpUdf {
    pub fn new(op: VectorOp) -> Self {
        let arity = if op == VectorOp::Norm { 1 } else { 2 };
        VectorOpUdf {
            op,
            signature: Signature::any(arity, Volatility::Immutable),
        }
    }
}

/// The rows of a vector argument: (values, length, nulls).
fn vector_rows<'a>(
    function: &str,
    position: usize,
    array: &'a ArrayRef,
) -> DFResult<(&'a [f64], usize, Option<&'a NullBuffer>)> {
    match array.data_type() {
        DataType::FixedSizeList(f, n) if f.data_type() == &DataType::Float64 => {
            let l = array.as_fixed_size_list();
            let values = l.values().as_primitive::<Float64Type>().values();
            let start = l.offset() * *n as usize;
            Ok((&values[start..], *n as usize, l.nulls()))
        }
        other => Err(QuiverError::InvalidParam {
            param: format!("argument {position} of {function}"),
            reason: format!(
                "expects a vector (FixedSizeList<Float64>, e.g. from vector_assemble), got {other}"
            ),
        }
        .into_datafusion()),
    }
}

impl ScalarUDFImpl for VectorOpUdf {
    fn name(&self) -> &str {
        match self.op {
            VectorOp::Dot => "vector_dot",
            VectorOp::Norm => "vector_norm",
            VectorOp::Element => "vector_element",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let name = self.name();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let n_rows = args.number_rows;
        if arrays.iter().any(|a| a.data_type() == &DataType::Null) {
            return Ok(ColumnarValue::Array(Arc::new(Float64Array::new_null(
                n_rows,
            ))));
        }
        let (a, dim, a_nulls) = vector_rows(name, 1, &arrays[0])?;
        let valid = |nulls: Option<&NullBuffer>, r: usize| nulls.is_none_or(|n| n.is_valid(r));
        let out: Float64Array = match self.op {
            VectorOp::Norm => (0..n_rows)
                .map(|r| {
                    valid(a_nulls, r).then(|| {
                        crate::vector::dot(&a[r * dim..(r + 1) * dim], &a[r * dim..(r + 1) * dim])
                            .sqrt()
                    })
                })
                .collect(),
            VectorOp::Dot => {
                let (b, dim_b, b_nulls) = vector_rows(name, 2, &arrays[1])?;
                if dim_b != dim {
                    return Err(QuiverError::InvalidParam {
                        param: "vector_dot".to_string(),
                        reason: format!("vectors of {dim} and {dim_b} elements"),
                    }
                    .into_datafusion());
                }
                (0..n_rows)
                    .map(|r| {
                        (valid(a_nulls, r) && valid(b_nulls, r)).then(|| {
                            crate::vector::dot(
                                &a[r * dim..(r + 1) * dim],
                                &b[r * dim..(r + 1) * dim],
                            )
                        })
                    })
                    .collect()
            }
            VectorOp::Element => {
                let index = arrow::compute::cast(&arrays[1], &DataType::Int64)?;
                let index = index.as_primitive::<arrow::datatypes::Int64Type>();
                (0..n_rows)
                    .map(|r| {
                        if !valid(a_nulls, r) || index.is_null(r) {
                            return None;
                        }
                        let i = index.value(r);
                        (i >= 1 && i as usize <= dim).then(|| a[r * dim + i as usize - 1])
                    })
                    .collect()
            }
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `vector_summary(v)`: the feature summary of a vector column as one struct (`count`, and per
/// feature `mean`, `variance`, `std`, `min`, `max`, `norm_l1`, `norm_l2`, `num_nonzeros` as
/// lists); NULL over no rows. `SELECT vector_summary(vector_assemble(a, b)) FROM t`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorSummaryUdaf {
    signature: Signature,
}

impl Default for VectorSummaryUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl VectorSummaryUdaf {
    pub fn new() -> Self {
        VectorSummaryUdaf {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

const SUMMARY_LISTS: [&str; 7] = [
    "mean", "variance", "std", "min", "max", "norm_l1", "norm_l2",
];

fn summary_fields() -> Fields {
    let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
    let mut fields = vec![Field::new("count", DataType::UInt64, false)];
    fields.extend(
        SUMMARY_LISTS
            .iter()
            .map(|n| Field::new(*n, list(DataType::Float64), false)),
    );
    fields.push(Field::new("num_nonzeros", list(DataType::UInt64), false));
    Fields::from(fields)
}

fn vector_dim(t: &DataType) -> Result<usize> {
    match t {
        DataType::FixedSizeList(f, n) if f.data_type() == &DataType::Float64 => Ok(*n as usize),
        other => Err(QuiverError::NonNumericColumn {
            column: "argument of vector_summary".to_string(),
            data_type: format!("{other} (build a vector with vector_assemble)"),
        }),
    }
}

impl AggregateUDFImpl for VectorSummaryUdaf {
    fn name(&self) -> &str {
        "vector_summary"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DFResult<DataType> {
        vector_dim(&arg_types[0]).map_err(QuiverError::into_datafusion)?;
        Ok(DataType::Struct(summary_fields()))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DFResult<Box<dyn Accumulator>> {
        let dim =
            vector_dim(args.expr_fields[0].data_type()).map_err(QuiverError::into_datafusion)?;
        Ok(Box::new(VectorSummaryAccumulator(
            StatisticAccumulator::new(Arc::new(Summarizer::new(dim))),
        )))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DFResult<Vec<FieldRef>> {
        Ok(binary_state_field(args.name))
    }
}

/// The summary statistic's accumulator, finishing into the SQL struct instead of bytes.
#[derive(Debug)]
struct VectorSummaryAccumulator(StatisticAccumulator<Summarizer>);

impl VectorSummaryAccumulator {
    fn value(&self) -> Result<ScalarValue> {
        let fields = summary_fields();
        let summary = match self.0.statistic().finish(self.0.current_state().clone()) {
            Ok(s) => s,
            Err(QuiverError::EmptyDataset { .. }) => {
                return Ok(ScalarValue::try_from(&DataType::Struct(fields))?);
            }
            Err(e) => return Err(e),
        };
        let list = |v: &[f64]| -> ArrayRef {
            Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>([Some(
                v.iter().map(|x| Some(*x)),
            )]))
        };
        let mut cols: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(vec![summary.count]))];
        for v in [
            &summary.mean,
            &summary.variance,
            &summary.std,
            &summary.min,
            &summary.max,
            &summary.norm_l1,
            &summary.norm_l2,
        ] {
            cols.push(list(v));
        }
        cols.push(Arc::new(
            ListArray::from_iter_primitive::<UInt64Type, _, _>([Some(
                summary.num_nonzeros.iter().map(|x| Some(*x)),
            )]),
        ));
        Ok(ScalarValue::Struct(Arc::new(StructArray::try_new(
            fields, cols, None,
        )?)))
    }
}

impl Accumulator for VectorSummaryAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DFResult<()> {
        self.0.update_batch(values)
    }

    fn evaluate(&mut self) -> DFResult<ScalarValue> {
        self.value().map_err(QuiverError::into_datafusion)
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> DFResult<Vec<ScalarValue>> {
        Accumulator::state(&mut self.0)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DFResult<()> {
        self.0.merge_batch(states)
    }
}

/// The engine's aggregate functions, for the registry.
pub fn engine_aggregate_functions() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(VectorSummaryUdaf::new()),
        AggregateUDF::from(crate::moments::MomentsUdaf::default()),
    ]
}

/// `row_uniform(seed, col, …)`: a number in [0, 1) drawn from the row's values and the seed —
/// the same row always draws the same number, on any runner or partitioning. Used by
/// `Dataset::random_split`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RowUniformUdf {
    signature: Signature,
}

impl Default for RowUniformUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl RowUniformUdf {
    pub fn new() -> Self {
        RowUniformUdf {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// splitmix64's finaliser.
#[inline]
fn mix(mut h: u64) -> u64 {
    h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Per row, the range of a list column's values it holds (`None`: a null list).
type RowRanges = Vec<Option<(usize, usize)>>;

/// The salt mixed into a row's hash before each column.
const COLUMN_SALT: u64 = 0xA5A5_A5A5_A5A5_A5A5;

/// Mixes one column into the rows' hashes: per row, its values (`ranges` of `values` for a
/// list column, else the row's own value) each as `word(i)`, nulls skipped.
fn mix_column(
    h: &mut [u64],
    values: &dyn Array,
    ranges: Option<&[Option<(usize, usize)>]>,
    word: impl Fn(usize) -> u64,
) {
    let nulls = values.logical_nulls();
    let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
    match ranges {
        None if nulls.is_none() => {
            for (r, hr) in h.iter_mut().enumerate() {
                *hr = mix_word(*hr, word(r));
            }
        }
        None => {
            for (r, hr) in h.iter_mut().enumerate() {
                let mut x = *hr ^ COLUMN_SALT;
                if valid(r) {
                    x = mix(x ^ word(r));
                }
                *hr = mix(x);
            }
        }
        Some(ranges) => {
            for (hr, range) in h.iter_mut().zip(ranges) {
                let mut x = *hr ^ COLUMN_SALT;
                for i in range.map_or(0..0, |(lo, hi)| lo..hi) {
                    if valid(i) {
                        x = mix(x ^ word(i));
                    }
                }
                *hr = mix(x);
            }
        }
    }
}

/// One value of a row without nulls mixed into the row's hash (as `mix_column` does).
#[inline(always)]
fn mix_word(h: u64, word: u64) -> u64 {
    mix(mix(h ^ COLUMN_SALT ^ word))
}

/// [`mix_column`] for a column of numbers without nulls, one word per row: the loop the
/// split draw spends its time in, compiled also for AVX-512 (eight 64-bit multiplies per
/// instruction) and AVX2 and chosen at run time. Every compilation computes the same words.
fn mix_dense<T: Copy>(h: &mut [u64], values: &[T], word: impl Fn(T) -> u64 + Copy) {
    #[inline(always)]
    fn each<T: Copy>(h: &mut [u64], values: &[T], word: impl Fn(T) -> u64) {
        for (hr, v) in h.iter_mut().zip(values) {
            *hr = mix_word(*hr, word(*v));
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512dq")]
        fn avx512<T: Copy>(h: &mut [u64], values: &[T], word: impl Fn(T) -> u64) {
            each(h, values, word)
        }
        #[target_feature(enable = "avx2")]
        fn avx2<T: Copy>(h: &mut [u64], values: &[T], word: impl Fn(T) -> u64) {
            each(h, values, word)
        }
        // SAFETY: each variant runs only where the CPU reports its features.
        if crate::cpu::has_avx512dq() {
            return unsafe { avx512(h, values, word) };
        }
        if crate::cpu::has_avx2_fma() {
            return unsafe { avx2(h, values, word) };
        }
    }
    each(h, values, word)
}

/// A float's word: its bits, NaN as one word.
fn float_word(v: f64) -> u64 {
    if v.is_nan() {
        f64::NAN.to_bits()
    } else {
        v.to_bits()
    }
}

/// Mixes a number or boolean column in by value (one word each); `false` for other types.
fn mix_numbers(
    h: &mut [u64],
    values: &dyn Array,
    ranges: Option<&[Option<(usize, usize)>]>,
) -> bool {
    use arrow::datatypes::{
        Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
        UInt32Type, UInt64Type,
    };
    let dense = ranges.is_none() && values.logical_null_count() == 0;
    macro_rules! ints {
        ($t:ty) => {{
            let v = values.as_primitive::<$t>().values();
            if dense {
                mix_dense(h, v, |x| x as i64 as u64)
            } else {
                mix_column(h, values, ranges, |i| v[i] as i64 as u64)
            }
        }};
    }
    match values.data_type() {
        DataType::Float64 => {
            let v = values.as_primitive::<Float64Type>().values();
            if dense {
                mix_dense(h, v, float_word)
            } else {
                mix_column(h, values, ranges, |i| float_word(v[i]))
            }
        }
        DataType::Float32 => {
            let v = values.as_primitive::<Float32Type>().values();
            if dense {
                mix_dense(h, v, |x| float_word(f64::from(x)))
            } else {
                mix_column(h, values, ranges, |i| float_word(f64::from(v[i])))
            }
        }
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        DataType::Boolean => {
            let b = values.as_boolean();
            mix_column(h, values, ranges, |i| u64::from(b.value(i)))
        }
        _ => return false,
    }
    true
}

impl ScalarUDFImpl for RowUniformUdf {
    fn name(&self) -> &str {
        "row_uniform"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut h: Vec<u64> = vec![0; n];
        for a in &arrays {
            // A list (a feature vector) hashes its elements in order.
            let (values, ranges): (ArrayRef, Option<RowRanges>) = match a.data_type() {
                DataType::FixedSizeList(_, w) => {
                    let l = a.as_fixed_size_list();
                    let w = *w as usize;
                    let ranges = (0..n)
                        .map(|r| l.is_valid(r).then_some((r * w, (r + 1) * w)))
                        .collect();
                    (Arc::clone(l.values()), Some(ranges))
                }
                DataType::List(_) => {
                    let l = a.as_list::<i32>();
                    let o = l.value_offsets();
                    let ranges = (0..n)
                        .map(|r| l.is_valid(r).then_some((o[r] as usize, o[r + 1] as usize)))
                        .collect();
                    (Arc::clone(l.values()), Some(ranges))
                }
                _ => (Arc::clone(a), None),
            };
            // Numbers and booleans hash their value (one word each); every other type its
            // text form, which is stable for every type. Nulls add nothing.
            if !mix_numbers(&mut h, values.as_ref(), ranges.as_deref()) {
                let text = arrow::compute::cast(&values, &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                let ranges = ranges.unwrap_or_else(|| (0..n).map(|r| Some((r, r + 1))).collect());
                for (hr, range) in h.iter_mut().zip(ranges) {
                    let mut x = *hr ^ COLUMN_SALT;
                    for i in range.map_or(0..0, |(lo, hi)| lo..hi) {
                        if text.is_valid(i) {
                            for chunk in text.value(i).as_bytes().chunks(8) {
                                let mut b = [0u8; 8];
                                b[..chunk.len()].copy_from_slice(chunk);
                                x = mix(x ^ u64::from_le_bytes(b));
                            }
                        }
                    }
                    *hr = mix(x);
                }
            }
        }
        let out: arrow::array::Float64Array = h
            .into_iter()
            .map(|v| (v >> 11) as f64 / (1u64 << 53) as f64)
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Float64Array, Int32Array};

    /// A row's hash after one column, as `row_uniform` documents it: the salt, the value's word
    /// mixed in unless null, mixed once more.
    fn reference(h: u64, word: Option<u64>) -> u64 {
        let x = h ^ COLUMN_SALT;
        mix(word.map_or(x, |w| mix(x ^ w)))
    }

    /// The vectorised loop (AVX-512 or AVX2 where the CPU has them) mixes every number column
    /// exactly as the row-by-row definition: floats with NaN and −0, integers, nulls (the
    /// other path), lengths around the vector widths.
    #[test]
    fn dense_mixing_equals_the_definition() {
        for n in [0usize, 1, 3, 4, 7, 8, 9, 17, 1000] {
            let start: Vec<u64> = (0..n as u64).map(|r| mix(r ^ 77)).collect();
            let floats: Vec<f64> = (0..n)
                .map(|r| match r % 5 {
                    0 => f64::NAN,
                    1 => -0.0,
                    _ => r as f64 * 1.25 - 3.0,
                })
                .collect();
            let ints: Vec<i32> = (0..n as i32).map(|r| r * 7919 - 500).collect();
            let f64s = Float64Array::from(floats.clone());
            let f32s = Float32Array::from(floats.iter().map(|v| *v as f32).collect::<Vec<_>>());
            let i32s = Int32Array::from(ints.clone());
            let with_nulls = Float64Array::from(
                (0..n)
                    .map(|r| (r % 3 != 1).then_some(floats[r]))
                    .collect::<Vec<_>>(),
            );
            let cases: Vec<(&dyn Array, Vec<Option<u64>>)> = vec![
                (&f64s, floats.iter().map(|v| Some(float_word(*v))).collect()),
                (
                    &f32s,
                    floats
                        .iter()
                        .map(|v| Some(float_word(f64::from(*v as f32))))
                        .collect(),
                ),
                (&i32s, ints.iter().map(|v| Some(*v as i64 as u64)).collect()),
                (
                    &with_nulls,
                    (0..n)
                        .map(|r| (r % 3 != 1).then(|| float_word(floats[r])))
                        .collect(),
                ),
            ];
            for (values, words) in cases {
                let mut got = start.clone();
                assert!(mix_numbers(&mut got, values, None));
                let want: Vec<u64> = start
                    .iter()
                    .zip(&words)
                    .map(|(h, w)| reference(*h, *w))
                    .collect();
                assert_eq!(got, want, "n {n} {}", values.data_type());
            }
        }
    }
}
