//! The map primitive: a function applied to whole feature batches as a DataFusion `ScalarUDF`
//! (what `ml_predict` and `Model::transform` are made of).

use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::DataType;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::col;

use crate::aggregate::quoted_name;
use crate::dataset::Dataset;
use crate::error::{QuiverError, Result};
use crate::vector::{FeatureBatch, Missing, assemble_with, vector_values};

/// A function of a batch of feature rows that returns one value per row.
pub trait BatchFunction: std::any::Any + Send + Sync + Debug {
    /// SQL name of the function.
    fn name(&self) -> &str;
    /// Parameters as bytes: the function's identity in plans and its codec payload.
    fn params(&self) -> Result<Vec<u8>>;
    /// Features per row the function expects.
    fn input_dim(&self) -> usize;
    fn return_type(&self) -> DataType;
    /// One output value per row of `batch`.
    fn apply(&self, batch: &FeatureBatch<'_>) -> Result<ArrayRef>;

    /// Whether rows with missing features (null or NaN, seen as NaN) are valid input: for
    /// models that route them, as trees do. Refused with their column and row otherwise.
    fn accepts_missing(&self) -> bool {
        false
    }
}

/// A [`BatchFunction`] as a DataFusion scalar function. Called with one vector column or with
/// the feature columns themselves (assembled on the fly, batch by batch).
#[derive(Debug)]
pub struct MapUdf {
    func: Arc<dyn BatchFunction>,
    params: Vec<u8>,
    signature: Signature,
}

impl MapUdf {
    pub fn new(func: Arc<dyn BatchFunction>) -> Result<Self> {
        Ok(MapUdf {
            params: func.params()?,
            func,
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }

    pub fn function(&self) -> &Arc<dyn BatchFunction> {
        &self.func
    }

    /// The function's parameters (its identity in plans and its codec payload).
    pub fn params(&self) -> &[u8] {
        &self.params
    }

    /// Wraps it as a `ScalarUDF`.
    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::from(self)
    }

    fn invoke(&self, args: ScalarFunctionArgs) -> Result<ArrayRef> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names: Vec<&str> = args.arg_fields.iter().map(|f| f.name().as_str()).collect();
        apply_to_columns(self.func.as_ref(), &arrays, &names, args.number_rows)
    }
}

/// Applies `func` to a batch given as one vector column or as its feature columns (assembled
/// on the fly; `names` name them in errors); checks the feature count and the output length.
pub fn apply_to_columns(
    func: &dyn BatchFunction,
    arrays: &[ArrayRef],
    names: &[&str],
    n_rows: usize,
) -> Result<ArrayRef> {
    let assembled;
    let (values, dim) = match arrays {
        [single] if matches!(single.data_type(), DataType::FixedSizeList(f, _) if f.data_type() == &DataType::Float64) => {
            vector_values(
                single.as_ref(),
                names.first().copied().unwrap_or("features"),
            )?
        }
        _ => {
            let cols: Vec<(&str, &ArrayRef)> = names.iter().copied().zip(arrays.iter()).collect();
            let missing = if func.accepts_missing() {
                Missing::Keep
            } else {
                Missing::Refuse
            };
            assembled = assemble_with(&cols, missing)?;
            vector_values(&assembled, "features")?
        }
    };
    if dim != func.input_dim() {
        return Err(QuiverError::FeatureCountMismatch {
            function: func.name().to_string(),
            expected: func.input_dim(),
            found: dim,
        });
    }
    let out = func.apply(&FeatureBatch::new(values, dim)?)?;
    if out.len() != n_rows {
        return Err(QuiverError::internal(format!(
            "{} returned {} values for {n_rows} rows",
            func.name(),
            out.len()
        )));
    }
    Ok(out)
}

impl PartialEq for MapUdf {
    fn eq(&self, other: &Self) -> bool {
        self.func.name() == other.func.name() && self.params == other.params
    }
}

impl Eq for MapUdf {}

impl Hash for MapUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.func.name().hash(state);
        self.params.hash(state);
    }
}

impl ScalarUDFImpl for MapUdf {
    fn name(&self) -> &str {
        self.func.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(self.func.return_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        self.invoke(args)
            .map(ColumnarValue::Array)
            .map_err(QuiverError::into_datafusion)
    }
}

/// Adds `output` = `func(features)` to `dataset`, lazily (a projection).
pub fn map_dataset(
    dataset: Dataset,
    func: Arc<dyn BatchFunction>,
    output: &str,
) -> Result<Dataset> {
    let udf = MapUdf::new(func)?.into_udf();
    let args = if dataset.features().len() == 1 {
        vec![col(quoted_name(&dataset.features()[0]))]
    } else {
        dataset
            .features()
            .iter()
            .map(|c| col(quoted_name(c)))
            .collect()
    };
    let df = dataset
        .dataframe()
        .clone()
        .with_column(output, udf.call(args))?;
    let mut out = Dataset::new(df).with_features(dataset.features())?;
    if let Some(l) = dataset.label() {
        out = out.with_label(l)?;
    }
    if let Some(w) = dataset.weight() {
        out = out.with_weight(w)?;
    }
    Ok(out)
}
