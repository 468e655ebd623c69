//! The engine's own SQL functions: `vector_assemble(col, …)` builds a dense feature vector.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::error::{QuiverError, Result};
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
                ScalarValue::Int64(Some(d)) if d > 0 => Some(d as usize),
                _ => None,
            }),
            None => None,
        };
        let dim = dim.ok_or_else(|| {
            QuiverError::InvalidParam {
                param: "vector_from_list".to_string(),
                reason:
                    "the second argument must be a positive integer literal (the vector length)"
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
    ]
}
