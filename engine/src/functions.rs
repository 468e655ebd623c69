//! The engine's own SQL functions: `vector_assemble(col, …)` builds a dense feature vector.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::QuiverError;
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

/// The engine's functions, for the registry.
pub fn engine_scalar_functions() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(AssembleUdf::new())]
}
