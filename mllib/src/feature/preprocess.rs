//! `Preprocessor`: BigQuery ML's automatic preprocessing as a fitted pipeline stage. It takes
//! the columns a query returns as they are — numbers, booleans, strings, dates and timestamps,
//! with nulls — and writes one feature vector:
//!
//! | column type | feature values | a null becomes |
//! |---|---|---|
//! | integer, float | the value | the training mean (`Impute`), or NaN for models that route missing values (`Keep`: trees) |
//! | boolean | 0 / 1 | the training fraction of true (`Impute`), NaN (`Keep`) |
//! | date, timestamp | seconds since the Unix epoch | as a number |
//! | string (any Arrow string type, dictionary) | one-hot, dummy or label encoded, categories sorted | its own category, with unseen values |
//!
//! NaN and infinite numbers are refused, naming the column and the row (trees take NaN as
//! missing). A classification label of string or boolean type becomes the index of its class
//! (classes sorted), and `ml_predict` maps the predicted index back to the label.
//!
//! Fitting reads the data with DataFusion aggregates (one query for the numeric columns, one
//! per string column and for a string label), so it runs where the data is, also on a cluster.
//! The same [`Encoder`] runs inside queries (a scalar function with a cluster codec) and row by
//! row in `ml_predict`, so training, evaluation and prediction encode alike.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{cast, col, lit};
use quiver_engine::aggregate::quoted_name;
use quiver_engine::vector::{vector_array, vector_type};
use quiver_engine::{Dataset, ModelDraft, ModelMetadata, QuiverError, QuiverSession};
use serde::{Deserialize, Serialize};

use crate::api::{ColumnEncoder, Estimator, Model, RowStage, Transformer};
use crate::error::{MllibError, Result};
use crate::persist::params_json;

mod one_pass;
pub use one_pass::{OnePassFit, OnePassPart, OnePassRows};

/// The column the class index of a string or boolean label is written to.
pub const LABEL_INDEX: &str = "__quiver_label";

/// Most classes a string or boolean label may have (Spark's limit for trees, and far more than
/// any label an analyst means as classes).
pub const MAX_LABEL_CLASSES: usize = 100;

/// How string columns become numbers (BigQuery ML's `category_encoding_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum CategoryEncoding {
    /// One 0/1 feature per category (linear models, k-means, naive Bayes, PCA).
    #[default]
    #[serde(rename = "one_hot_encoding")]
    OneHot,
    /// One-hot without the first category's feature (no redundant column for unregularised
    /// linear models).
    #[serde(rename = "dummy_encoding")]
    Dummy,
    /// The category's index as one feature (trees).
    #[serde(rename = "label_encoding")]
    Label,
}

impl CategoryEncoding {
    /// Reads `category_encoding_method`'s value.
    pub fn parse(text: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_lowercase())).map_err(|_| {
            MllibError::InvalidOption {
                option: "category_encoding_method".to_string(),
                reason: format!(
                    "unknown method '{text}'; use 'one_hot_encoding', 'dummy_encoding' or 'label_encoding'"
                ),
            }
        })
    }
}

/// What a missing number (null) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissingNumbers {
    /// The training mean (BigQuery ML's default).
    #[default]
    Impute,
    /// NaN, for models that learn where missing values go (trees); NaN input is kept too.
    Keep,
}

/// How a column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    Numeric,
    Boolean,
    Temporal,
    Categorical,
}

impl ColumnKind {
    /// The kind for an Arrow type, if the preprocessor reads it.
    pub fn of(t: &DataType) -> Option<Self> {
        match t {
            t if t.is_integer() || t.is_floating() => Some(ColumnKind::Numeric),
            DataType::Decimal128(..) | DataType::Decimal256(..) => Some(ColumnKind::Numeric),
            DataType::Boolean => Some(ColumnKind::Boolean),
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
                Some(ColumnKind::Temporal)
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Some(ColumnKind::Categorical)
            }
            DataType::Dictionary(_, v) => match ColumnKind::of(v) {
                Some(ColumnKind::Categorical) => Some(ColumnKind::Categorical),
                _ => None,
            },
            _ => None,
        }
    }

    fn accepts(self, t: &DataType) -> bool {
        if *t == DataType::Null {
            // A NULL literal: missing, whatever the column.
            return true;
        }
        match self {
            // Numbers and booleans read alike; a string column takes any value as text.
            ColumnKind::Numeric | ColumnKind::Boolean => {
                matches!(
                    ColumnKind::of(t),
                    Some(ColumnKind::Numeric | ColumnKind::Boolean)
                )
            }
            ColumnKind::Temporal => ColumnKind::of(t) == Some(ColumnKind::Temporal),
            ColumnKind::Categorical => ColumnKind::of(t) == Some(ColumnKind::Categorical),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ColumnKind::Numeric => "a number",
            ColumnKind::Boolean => "a boolean (or number)",
            ColumnKind::Temporal => "a date or timestamp",
            ColumnKind::Categorical => "a string",
        }
    }
}

/// The automatic preprocessing of `input_cols` (and of a classification label), fitted on a
/// dataset's rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    input_cols: Vec<String>,
    label_col: Option<String>,
    /// Whether a string or boolean label is indexed into classes (classification).
    classify: bool,
    encoding: CategoryEncoding,
    missing: MissingNumbers,
    /// Most categories kept per string column (the most frequent); the rest share the
    /// "other" category with nulls and unseen values.
    max_categories: usize,
    output_col: String,
}

impl Preprocessor {
    /// Preprocesses `input_cols` into `"features"`: one-hot strings, nulls imputed by the mean.
    pub fn new<S: AsRef<str>>(input_cols: impl IntoIterator<Item = S>) -> Self {
        Preprocessor {
            input_cols: input_cols
                .into_iter()
                .map(|c| c.as_ref().to_string())
                .collect(),
            label_col: None,
            classify: false,
            encoding: CategoryEncoding::OneHot,
            missing: MissingNumbers::Impute,
            max_categories: 1000,
            output_col: "features".to_string(),
        }
    }

    /// The label column; with `classify`, a string or boolean label becomes class indices.
    pub fn label(mut self, column: impl Into<String>, classify: bool) -> Self {
        self.label_col = Some(column.into());
        self.classify = classify;
        self
    }

    pub fn encoding(mut self, e: CategoryEncoding) -> Self {
        self.encoding = e;
        self
    }

    pub fn missing(mut self, m: MissingNumbers) -> Self {
        self.missing = m;
        self
    }

    pub fn max_categories(mut self, n: usize) -> Self {
        self.max_categories = n;
        self
    }

    pub fn output_col(mut self, c: impl Into<String>) -> Self {
        self.output_col = c.into();
        self
    }

    pub fn check(&self) -> Result<()> {
        if self.input_cols.is_empty() {
            return Err(MllibError::InvalidParam {
                param: "input_cols".to_string(),
                reason: "at least one input column is needed".to_string(),
            });
        }
        if self.output_col.trim().is_empty() {
            return Err(MllibError::EmptyOutputColumn);
        }
        if self.max_categories == 0 {
            return Err(MllibError::InvalidParam {
                param: "max_categories".to_string(),
                reason: "must be at least 1".to_string(),
            });
        }
        Ok(())
    }
}

/// What fitting learnt about one input column (also what `ml_feature_info` shows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    /// The Arrow type at fit, as text.
    pub data_type: String,
    pub kind: ColumnKind,
    /// Rows seen, and how many were null.
    pub rows: u64,
    pub nulls: u64,
    /// NaN or infinite values (numeric columns).
    #[serde(default)]
    pub non_finite: u64,
    /// Over the finite values (numbers, booleans as 0/1, times as epoch seconds).
    pub mean: Option<f64>,
    pub stddev: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// String columns: the kept categories, sorted, and how many distinct values were seen.
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub distinct: u64,
}

impl ColumnInfo {
    /// A column before its statistics: every row counted, none null.
    fn unread(name: &str, data_type: &DataType, kind: ColumnKind, rows: u64) -> Self {
        ColumnInfo {
            name: name.to_string(),
            data_type: data_type.to_string(),
            kind,
            rows,
            nulls: 0,
            non_finite: 0,
            mean: None,
            stddev: None,
            min: None,
            max: None,
            categories: Vec::new(),
            distinct: 0,
        }
    }

    /// A number column's counts and `[mean, stddev, min, max]` (each kept only when finite)
    /// from its moments: `present` non-null values, `finite` of them finite.
    fn set_moments(&mut self, present: u64, finite: u64, stats: [Option<f64>; 4]) {
        let [mean, stddev, min, max] = stats.map(|v| v.filter(|v| v.is_finite()));
        self.nulls = self.rows - present.min(self.rows);
        self.non_finite = present - finite.min(present);
        (self.mean, self.stddev, self.min, self.max) = (mean, stddev, min, max);
    }

    /// A string column's nulls, distinct values and kept categories from its value counts
    /// (`None` counting the nulls): the `max` most frequent (ties by value), sorted.
    fn set_categories(&mut self, mut counts: Vec<(Option<String>, u64)>, max: usize) {
        self.nulls = counts
            .iter()
            .filter(|(v, _)| v.is_none())
            .map(|(_, n)| n)
            .sum();
        counts.retain(|(v, _)| v.is_some());
        self.distinct = counts.len() as u64;
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts.truncate(max);
        let mut kept: Vec<String> = counts.into_iter().filter_map(|(v, _)| v).collect();
        kept.sort();
        self.categories = kept;
    }

    /// Whether the string column has an "other" category (nulls, values beyond the kept
    /// ones): then one-hot writes a feature for it.
    fn has_other(&self) -> bool {
        self.kind == ColumnKind::Categorical
            && (self.nulls > 0 || self.distinct > self.categories.len() as u64)
    }
}

/// A string or boolean classification label's classes, sorted: index `i` is `classes[i]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelClasses {
    pub column: String,
    pub classes: Vec<String>,
    /// Whether the label is boolean (`ml_predict` then returns booleans).
    pub boolean: bool,
}

/// The fitted encoding: what the query function, its cluster codec and `ml_predict` share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Encoder {
    columns: Vec<ColumnInfo>,
    encoding: CategoryEncoding,
    missing: MissingNumbers,
    label: Option<LabelClasses>,
    #[serde(skip)]
    derived: Derived,
}

#[derive(Debug, Clone, Default)]
struct Derived {
    inputs: Vec<String>,
    offsets: Vec<usize>,
    dim: usize,
    names: Vec<String>,
    index: Vec<TextMap<usize>>,
}

/// A map keyed by text, with a fast fixed hash (categories are looked up once per row).
pub(crate) type TextMap<V> = HashMap<String, V, foldhash::fast::FixedState>;

/// Calls `f` with each row's text (`None` for a null) of a column read as text: strings of
/// any Arrow string type read in place, anything else (booleans, dictionaries) cast to text.
fn for_each_text(
    array: &ArrayRef,
    mut f: impl FnMut(usize, Option<&str>),
) -> quiver_engine::Result<()> {
    match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .enumerate()
            .for_each(|(r, v)| f(r, v)),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .enumerate()
            .for_each(|(r, v)| f(r, v)),
        DataType::Utf8View => array
            .as_string_view()
            .iter()
            .enumerate()
            .for_each(|(r, v)| f(r, v)),
        _ => {
            let text = arrow::compute::cast(array, &DataType::Utf8).map_err(QuiverError::from)?;
            text.as_string::<i32>()
                .iter()
                .enumerate()
                .for_each(|(r, v)| f(r, v));
        }
    }
    Ok(())
}

impl PartialEq for Encoder {
    fn eq(&self, o: &Self) -> bool {
        self.columns == o.columns
            && self.encoding == o.encoding
            && self.missing == o.missing
            && self.label == o.label
    }
}

impl Encoder {
    fn new(
        columns: Vec<ColumnInfo>,
        encoding: CategoryEncoding,
        missing: MissingNumbers,
        label: Option<LabelClasses>,
    ) -> Self {
        let mut e = Encoder {
            columns,
            encoding,
            missing,
            label,
            derived: Derived::default(),
        };
        e.derive();
        e
    }

    fn derive(&mut self) {
        let mut d = Derived::default();
        for c in &self.columns {
            d.inputs.push(c.name.clone());
            d.offsets.push(d.names.len());
            d.index.push(
                c.categories
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.clone(), i))
                    .collect(),
            );
            if c.kind != ColumnKind::Categorical || self.encoding == CategoryEncoding::Label {
                d.names.push(c.name.clone());
                continue;
            }
            let skip = usize::from(self.encoding == CategoryEncoding::Dummy);
            for k in c.categories.iter().skip(skip) {
                d.names.push(format!("{}_{k}", c.name));
            }
            if c.has_other() {
                d.names.push(format!("{}_<other>", c.name));
            }
        }
        d.dim = d.names.len();
        self.derived = d;
    }

    /// Checks what was read from a store or a plan: the derived layout must be usable.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.columns.is_empty() {
            return Err("no input columns".to_string());
        }
        for c in &self.columns {
            let mut sorted = c.categories.clone();
            sorted.sort();
            sorted.dedup();
            if sorted != c.categories {
                return Err(format!(
                    "the categories of column '{}' are not sorted and distinct",
                    c.name
                ));
            }
            if c.kind != ColumnKind::Categorical && !c.categories.is_empty() {
                return Err(format!(
                    "column '{}' is not a string column but has categories",
                    c.name
                ));
            }
            if c.nulls > c.rows {
                return Err(format!("column '{}' has more nulls than rows", c.name));
            }
            if c.mean.is_some_and(|m| !m.is_finite()) {
                return Err(format!("column '{}' has a non-finite mean", c.name));
            }
        }
        if let Some(l) = &self.label
            && (l.classes.is_empty() || l.classes.len() > MAX_LABEL_CLASSES)
        {
            return Err(format!(
                "label '{}' has {} classes",
                l.column,
                l.classes.len()
            ));
        }
        if self.derived.dim == 0 {
            return Err("the encoding writes no features".to_string());
        }
        Ok(())
    }

    pub fn columns(&self) -> &[ColumnInfo] {
        &self.columns
    }

    pub fn label_classes(&self) -> Option<&LabelClasses> {
        self.label.as_ref()
    }

    /// The value a null of column `c` becomes.
    fn fill(&self, c: &ColumnInfo) -> f64 {
        match self.missing {
            MissingNumbers::Keep => f64::NAN,
            // A column with no finite value at fit has no mean: zero, as after centring.
            MissingNumbers::Impute => c.mean.unwrap_or(0.0),
        }
    }

    /// The error for the first value of column `j` the encoding refuses: ±∞ always, NaN unless
    /// kept. One vectorised sweep when every value is fine.
    fn check_finite(&self, j: usize, values: &[f64]) -> quiver_engine::Result<()> {
        let keep_nan = self.missing == MissingNumbers::Keep;
        match quiver_engine::vector::first_non_finite(values, keep_nan) {
            None => Ok(()),
            Some((r, kind)) => Err(QuiverError::InvalidValueInBatch {
                kind: if kind == "NaN" {
                    "NaN"
                } else {
                    "an infinite value"
                },
                column: self.columns[j].name.clone(),
                row_in_batch: r,
            }),
        }
    }

    fn encode_into(
        &self,
        j: usize,
        array: &ArrayRef,
        rows: usize,
        out: &mut [f64],
    ) -> quiver_engine::Result<()> {
        let c = &self.columns[j];
        let dim = self.derived.dim;
        let off = self.derived.offsets[j];
        if array.len() != rows {
            return Err(QuiverError::internal(format!(
                "column '{}' has {} values for {rows} rows",
                c.name,
                array.len()
            )));
        }
        if c.kind != ColumnKind::Categorical {
            let values = numbers(array, &c.name)?;
            let fill = self.fill(c);
            for r in 0..rows {
                let v = if values.is_null(r) {
                    fill
                } else {
                    let x = values.value(r);
                    let kept = x.is_nan() && self.missing == MissingNumbers::Keep;
                    if !(x.is_finite() || kept) {
                        return Err(QuiverError::InvalidValueInBatch {
                            kind: if x.is_nan() {
                                "NaN"
                            } else {
                                "an infinite value"
                            },
                            column: c.name.clone(),
                            row_in_batch: r,
                        });
                    }
                    x
                };
                out[r * dim + off] = v;
            }
            return Ok(());
        }
        let index = &self.derived.index[j];
        let n = c.categories.len();
        let other = c.has_other();
        let encoding = self.encoding;
        for_each_text(array, |r, v| {
            // The category's index; `n` is "other" (null, unseen, or beyond the kept ones).
            let k = v.and_then(|v| index.get(v).copied()).unwrap_or(n);
            let slot = match encoding {
                CategoryEncoding::Label => {
                    out[r * dim + off] = k as f64;
                    return;
                }
                CategoryEncoding::OneHot if k < n => Some(k),
                CategoryEncoding::Dummy if k < n => k.checked_sub(1),
                CategoryEncoding::OneHot if other => Some(n),
                CategoryEncoding::Dummy if other => Some(n - 1),
                _ => None,
            };
            if let Some(s) = slot {
                out[r * dim + off + s] = 1.0;
            }
        })
    }
}

/// Rows the encoder fills at a time: a block of the output that stays in cache while every
/// number column writes into it.
const BLOCK_ROWS: usize = 256;

/// Writes rows `first..` of the null-free number columns `dense` (their feature offsets and
/// values) into `block`, rows of `dim` values.
fn write_dense(block: &mut [f64], dim: usize, first: usize, dense: &[(usize, Float64Array)]) {
    let n = block.len() / dim;
    for (off, values) in dense {
        let values = &values.values()[first..first + n];
        for (row, &x) in block.chunks_exact_mut(dim).zip(values) {
            row[*off] = x;
        }
    }
}

/// A number column (or boolean, date, timestamp) as Float64 values: booleans 0/1, dates and
/// timestamps as seconds since the epoch.
fn numbers(array: &ArrayRef, column: &str) -> quiver_engine::Result<arrow::array::Float64Array> {
    let out = match array.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            let micros = arrow::compute::cast(
                &arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
                &DataType::Int64,
            )?;
            micros
                .as_primitive::<Int64Type>()
                .unary::<_, Float64Type>(|m| m as f64 / 1e6)
        }
        t if *t == DataType::Null
            || ColumnKind::of(t).is_some_and(|k| k != ColumnKind::Categorical) =>
        {
            arrow::compute::cast(array, &DataType::Float64)?
                .as_primitive::<Float64Type>()
                .clone()
        }
        other => {
            return Err(QuiverError::InvalidParam {
                param: column.to_string(),
                reason: format!("has type {other}; expected a number, boolean, date or timestamp"),
            });
        }
    };
    Ok(out)
}

impl ColumnEncoder for Encoder {
    fn inputs(&self) -> &[String] {
        &self.derived.inputs
    }

    fn dim(&self) -> usize {
        self.derived.dim
    }

    fn feature_names(&self) -> &[String] {
        &self.derived.names
    }

    fn check_input(&self, i: usize, t: &DataType) -> std::result::Result<(), String> {
        let c = self
            .columns
            .get(i)
            .ok_or_else(|| format!("the model takes {} columns", self.columns.len()))?;
        if c.kind.accepts(t) {
            Ok(())
        } else {
            Err(format!(
                "the model's '{}' is {} ({} at training)",
                c.name,
                c.kind.describe(),
                c.data_type
            ))
        }
    }

    fn encode(&self, arrays: &[ArrayRef], rows: usize) -> quiver_engine::Result<Vec<f64>> {
        if arrays.len() != self.columns.len() {
            return Err(QuiverError::FeatureCountMismatch {
                function: "preprocessor".to_string(),
                expected: self.columns.len(),
                found: arrays.len(),
            });
        }
        let dim = self.derived.dim;
        // Number columns without nulls, checked whole first, are written a block of rows at a
        // time (every column into the block while it is in cache, not one strided sweep of the
        // whole batch per column); the others value by value.
        let dense_column = |j: usize, a: &ArrayRef| {
            self.columns[j].kind != ColumnKind::Categorical
                && a.len() == rows
                && a.null_count() == 0
        };
        if dim > 0
            && dim == arrays.len()
            && arrays.iter().enumerate().all(|(j, a)| dense_column(j, a))
        {
            // Every slot is a number column's: each block is filled in a small buffer and
            // appended, so the batch's rows are written once (no zeroing pass before).
            let mut dense = Vec::with_capacity(arrays.len());
            for (j, a) in arrays.iter().enumerate() {
                let values = numbers(a, &self.columns[j].name)?;
                self.check_finite(j, values.values())?;
                dense.push((self.derived.offsets[j], values));
            }
            if dense.iter().all(|(_, v)| v.null_count() == 0) {
                let mut out = Vec::with_capacity(rows * dim);
                let mut block = vec![0.0; BLOCK_ROWS * dim];
                for first in (0..rows).step_by(BLOCK_ROWS) {
                    let n = BLOCK_ROWS.min(rows - first);
                    let block = &mut block[..n * dim];
                    write_dense(block, dim, first, &dense);
                    out.extend_from_slice(block);
                }
                return Ok(out);
            }
        }
        let mut out = vec![0.0; rows * dim];
        let mut dense = Vec::with_capacity(arrays.len());
        for (j, a) in arrays.iter().enumerate() {
            if dense_column(j, a) {
                let values = numbers(a, &self.columns[j].name)?;
                if values.null_count() == 0 {
                    self.check_finite(j, values.values())?;
                    dense.push((self.derived.offsets[j], values));
                    continue;
                }
            }
            self.encode_into(j, a, rows, &mut out)?;
        }
        if dim == 0 || dense.is_empty() {
            return Ok(out);
        }
        for (b, block) in out.chunks_mut(BLOCK_ROWS * dim).enumerate() {
            write_dense(block, dim, b * BLOCK_ROWS, &dense);
        }
        Ok(out)
    }

    fn classes(&self) -> Option<(&[String], DataType)> {
        self.label.as_ref().map(|l| {
            let t = if l.boolean {
                DataType::Boolean
            } else {
                DataType::Utf8
            };
            (l.classes.as_slice(), t)
        })
    }
}

/// The encoding as a scalar function over the input columns, writing the feature vector.
#[derive(Debug)]
struct PreprocessUdf {
    encoder: Arc<Encoder>,
    signature: Signature,
}

impl PreprocessUdf {
    fn new(encoder: Arc<Encoder>) -> Self {
        PreprocessUdf {
            encoder,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl PartialEq for PreprocessUdf {
    fn eq(&self, o: &Self) -> bool {
        self.encoder == o.encoder
    }
}

impl Eq for PreprocessUdf {}

impl Hash for PreprocessUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.encoder.derived.names.hash(state);
        self.encoder.encoding.hash(state);
        self.encoder.missing.hash(state);
    }
}

impl ScalarUDFImpl for PreprocessUdf {
    fn name(&self) -> &str {
        "quiver_preprocess"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(vector_type(self.encoder.derived.dim))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let run = || -> quiver_engine::Result<ArrayRef> {
            let values = self.encoder.encode(&arrays, rows)?;
            Ok(Arc::new(vector_array(values, self.encoder.derived.dim)?))
        };
        run()
            .map(ColumnarValue::Array)
            .map_err(QuiverError::into_datafusion)
    }
}

/// A fitted [`Preprocessor`].
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessorModel {
    params: Preprocessor,
    encoder: Arc<Encoder>,
}

impl PreprocessorModel {
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Names of the feature values it writes.
    pub fn feature_names(&self) -> &[String] {
        self.encoder.feature_names()
    }

    pub fn output_col(&self) -> &str {
        &self.params.output_col
    }

    /// The label column it indexes (string or boolean classification labels), if any.
    pub fn label_classes(&self) -> Option<&LabelClasses> {
        self.encoder.label.as_ref()
    }

    /// The roles over a frame that holds the stage's output column: the vector is the
    /// features (named by the stage), with the given label and weight.
    pub fn encoded_rows(
        &self,
        df: datafusion::prelude::DataFrame,
        label: Option<&str>,
        weight: Option<&str>,
    ) -> Result<Dataset> {
        let mut out = Dataset::new(df)
            .with_assembled_features(&self.params.output_col, self.feature_names().to_vec())?;
        if let Some(l) = label {
            out = out.with_label(l)?;
        }
        if let Some(w) = weight {
            out = out.with_weight(w)?;
        }
        if self.params.missing == MissingNumbers::Keep {
            out = out.keep_missing();
        }
        Ok(out)
    }

    /// `ml_feature_info`'s rows: per input column its type, null count, statistics and
    /// category count.
    pub fn feature_info(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.encoder
                .columns
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "feature": c.name,
                        "type": c.data_type,
                        "kind": c.kind,
                        "count": c.rows.saturating_sub(c.nulls),
                        "null_count": c.nulls,
                        "min": c.min,
                        "max": c.max,
                        "mean": c.mean,
                        "stddev": c.stddev,
                        "category_count": (c.kind == ColumnKind::Categorical).then_some(c.distinct),
                    })
                })
                .collect(),
        )
    }
}

fn column_missing(column: &str, available: &[String]) -> MllibError {
    QuiverError::ColumnNotFound {
        column: column.to_string(),
        available: available.join(", "),
    }
    .into()
}

/// Counts per distinct text value of `expr` (nulls under `None`).
async fn value_counts(data: &Dataset, expr: Expr) -> Result<Vec<(Option<String>, u64)>> {
    let batches = data
        .dataframe()
        .clone()
        .aggregate(
            vec![cast(expr, DataType::Utf8).alias("v")],
            vec![count(lit(1)).alias("n")],
        )
        .map_err(QuiverError::from)?
        .collect()
        .await
        .map_err(QuiverError::from)?;
    let mut out = Vec::new();
    for b in &batches {
        let v = b.column(0).as_string::<i32>();
        let n = arrow::compute::cast(b.column(1), &DataType::Int64)?;
        let n = n.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let value = v.is_valid(i).then(|| v.value(i).to_string());
            out.push((value, n.value(i).max(0) as u64));
        }
    }
    Ok(out)
}

/// The column as Float64 for the statistics, as [`numbers`] reads it.
fn number_expr(name: &str, t: &DataType) -> Expr {
    let c = col(quoted_name(name));
    match t {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            cast(
                cast(c, DataType::Timestamp(TimeUnit::Microsecond, None)),
                DataType::Int64,
            ) / lit(1e6)
        }
        _ => cast(c, DataType::Float64),
    }
}

impl Estimator for Preprocessor {
    type Model = PreprocessorModel;

    async fn fit(&self, _session: &QuiverSession, data: &Dataset) -> Result<PreprocessorModel> {
        self.check()?;
        let available = data.columns();
        let schema = data.dataframe().schema().clone();
        let mut kinds = Vec::with_capacity(self.input_cols.len());
        for name in &self.input_cols {
            let field = schema
                .field_with_unqualified_name(name)
                .map_err(|_| column_missing(name, &available))?;
            let t = field.data_type().clone();
            let kind = ColumnKind::of(&t).ok_or_else(|| MllibError::InvalidParam {
                param: name.clone(),
                reason: format!(
                    "feature column '{name}' has type {t}; automatic preprocessing takes numbers, booleans, strings, dates and timestamps (cast it, or leave it out of the query)"
                ),
            })?;
            kinds.push((name.clone(), t, kind));
        }
        // One query for every number column: counts, and moments over the finite values, one
        // pass per column (`column_moments`).
        let moments = datafusion::logical_expr::AggregateUDF::from(
            quiver_engine::moments::MomentsUdaf::default(),
        );
        let mut aggregates = vec![count(lit(1)).alias("rows")];
        for (j, (name, t, kind)) in kinds.iter().enumerate() {
            if *kind == ColumnKind::Categorical {
                continue;
            }
            // number_expr is DOUBLE for every kind of number column.
            aggregates.push(
                moments
                    .call(vec![number_expr(name, t)])
                    .alias(format!("m{j}")),
            );
        }
        let stats = data
            .dataframe()
            .clone()
            .aggregate(vec![], aggregates)
            .map_err(QuiverError::from)?
            .collect()
            .await
            .map_err(QuiverError::from)?;
        let batch = stats
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| QuiverError::internal("the statistics query returned no row"))?;
        let number = |a: &ArrayRef| -> Option<f64> {
            let a = arrow::compute::cast(a, &DataType::Float64).ok()?;
            let a = a.as_primitive::<Float64Type>();
            a.is_valid(0).then(|| a.value(0)).filter(|v| v.is_finite())
        };
        let value = |name: &str| number(batch.column_by_name(name)?);
        // A field of column j's moments.
        let moment = |j: usize, field: &str| -> Option<f64> {
            let m = batch.column_by_name(&format!("m{j}"))?.as_struct_opt()?;
            number(m.column_by_name(field)?)
        };
        let rows = value("rows").unwrap_or(0.0) as u64;
        if rows == 0 {
            return Err(QuiverError::EmptyDataset {
                context: "automatic preprocessing".to_string(),
            }
            .into());
        }
        let mut columns = Vec::with_capacity(kinds.len());
        for (j, (name, t, kind)) in kinds.into_iter().enumerate() {
            let mut info = ColumnInfo::unread(&name, &t, kind, rows);
            if kind == ColumnKind::Categorical {
                let counts = value_counts(data, col(quoted_name(&name))).await?;
                info.set_categories(counts, self.max_categories);
            } else {
                info.set_moments(
                    moment(j, "count").unwrap_or(0.0) as u64,
                    moment(j, "finite").unwrap_or(0.0) as u64,
                    [
                        moment(j, "mean"),
                        moment(j, "stddev"),
                        moment(j, "min"),
                        moment(j, "max"),
                    ],
                );
            }
            columns.push(info);
        }
        let label = match &self.label_col {
            Some(l) if self.classify => self.label_classes(data, l, &available).await?,
            _ => None,
        };
        self.model(columns, label)
    }
}

impl Preprocessor {
    /// The fitted stage from what fitting learnt, checked.
    fn model(
        &self,
        columns: Vec<ColumnInfo>,
        label: Option<LabelClasses>,
    ) -> Result<PreprocessorModel> {
        let encoder = Encoder::new(columns, self.encoding, self.missing, label);
        encoder
            .validate()
            .map_err(|reason| MllibError::InvalidParam {
                param: "input_cols".to_string(),
                reason,
            })?;
        Ok(PreprocessorModel {
            params: self.clone(),
            encoder: Arc::new(encoder),
        })
    }

    /// The classes of a string or boolean classification label; `None` for a numeric label
    /// (its values are the class indices).
    async fn label_classes(
        &self,
        data: &Dataset,
        label: &str,
        available: &[String],
    ) -> Result<Option<LabelClasses>> {
        let schema = data.dataframe().schema().clone();
        let field = schema
            .field_with_unqualified_name(label)
            .map_err(|_| column_missing(label, available))?;
        let t = field.data_type();
        let boolean = *t == DataType::Boolean;
        if !boolean && ColumnKind::of(t) != Some(ColumnKind::Categorical) {
            return Ok(None);
        }
        let counts = value_counts(data, col(quoted_name(label))).await?;
        label_classes_of(label, boolean, counts).map(Some)
    }
}

/// A string or boolean classification label's classes from its value counts (`None` counting
/// the nulls, which are refused, as more than [`MAX_LABEL_CLASSES`] classes are).
fn label_classes_of(
    label: &str,
    boolean: bool,
    counts: Vec<(Option<String>, u64)>,
) -> Result<LabelClasses> {
    if let Some((_, n)) = counts.iter().find(|(v, _)| v.is_none()) {
        return Err(MllibError::InvalidParam {
            param: label.to_string(),
            reason: format!(
                "the label column '{label}' has {n} null values; filter them out (WHERE {label} IS NOT NULL)"
            ),
        });
    }
    let mut classes: Vec<String> = counts.into_iter().filter_map(|(v, _)| v).collect();
    classes.sort();
    if classes.len() > MAX_LABEL_CLASSES {
        return Err(MllibError::InvalidParam {
            param: label.to_string(),
            reason: format!(
                "the label column '{label}' has {} distinct values; a classifier takes at most {MAX_LABEL_CLASSES} classes (is it a regression target?)",
                classes.len()
            ),
        });
    }
    Ok(LabelClasses {
        column: label.to_string(),
        classes,
        boolean,
    })
}

impl Transformer for PreprocessorModel {
    fn transform(&self, data: &Dataset) -> Result<Dataset> {
        let available = data.columns();
        let mut args = Vec::with_capacity(self.encoder.columns.len());
        for c in &self.encoder.columns {
            if !available.contains(&c.name) {
                return Err(column_missing(&c.name, &available));
            }
            args.push(col(quoted_name(&c.name)));
        }
        let udf = ScalarUDF::from(PreprocessUdf::new(Arc::clone(&self.encoder)));
        let mut df = data
            .dataframe()
            .clone()
            .with_column(&self.params.output_col, udf.call(args))
            .map_err(QuiverError::from)?;
        let mut label = self
            .params
            .label_col
            .as_deref()
            .filter(|l| available.iter().any(|a| a == l));
        if let (Some(l), Some(classes)) = (label, &self.encoder.label) {
            // The class index by label text, beside the label itself (whose values still
            // decide a row's side of a split); an unseen label becomes null, refused where a
            // label is needed.
            let text = cast(col(quoted_name(l)), DataType::Utf8);
            let mut case = datafusion::logical_expr::case(text);
            for (i, c) in classes.classes.iter().enumerate() {
                case = case.when(lit(c.clone()), lit(i as f64));
            }
            let index = case
                .otherwise(lit(ScalarValue::Float64(None)))
                .map_err(QuiverError::from)?;
            df = df
                .with_column(LABEL_INDEX, index)
                .map_err(QuiverError::from)?;
            label = Some(LABEL_INDEX);
        }
        // The label and weight stay.
        self.encoded_rows(df, label.or(data.label()), data.weight())
    }

    fn row_stage(&self) -> RowStage {
        RowStage::Encode(Arc::clone(&self.encoder) as Arc<dyn ColumnEncoder>)
    }
}

/// What the store holds: the parameters in the metadata, the fitted columns in a part.
#[derive(Serialize, Deserialize)]
struct Fitted {
    columns: Vec<ColumnInfo>,
    label: Option<LabelClasses>,
}

impl Model for PreprocessorModel {
    const KIND: &'static str = "preprocessor";
    const FORMAT_VERSION: u32 = 1;

    fn to_parts(&self) -> Result<(ModelDraft, Vec<(String, Bytes)>)> {
        let params = params_json(&self.params)?;
        let fitted = serde_json::to_vec(&Fitted {
            columns: self.encoder.columns.clone(),
            label: self.encoder.label.clone(),
        })
        .map_err(|e| MllibError::InvalidParam {
            param: "columns".to_string(),
            reason: e.to_string(),
        })?;
        Ok((
            ModelDraft {
                params,
                ..Default::default()
            },
            vec![("columns.json".to_string(), Bytes::from(fitted))],
        ))
    }

    fn from_parts(meta: &ModelMetadata, parts: &BTreeMap<String, Bytes>) -> Result<Self> {
        let corrupt = |reason: String| MllibError::CorruptModel {
            name: meta.name.clone(),
            reason,
        };
        let params: Preprocessor = serde_json::from_value(meta.params.clone())
            .map_err(|e| corrupt(format!("invalid params: {e}")))?;
        params.check()?;
        let bytes = parts
            .get("columns.json")
            .ok_or_else(|| corrupt("no part 'columns.json'".to_string()))?;
        let fitted: Fitted =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("invalid columns: {e}")))?;
        let names: Vec<&String> = fitted.columns.iter().map(|c| &c.name).collect();
        if names.iter().copied().ne(params.input_cols.iter()) {
            return Err(corrupt(format!(
                "its columns {names:?} are not its input columns {:?}",
                params.input_cols
            )));
        }
        let encoder = Encoder::new(
            fitted.columns,
            params.encoding,
            params.missing,
            fitted.label,
        );
        encoder.validate().map_err(corrupt)?;
        Ok(PreprocessorModel {
            params,
            encoder: Arc::new(encoder),
        })
    }
}

/// Lets the preprocessing function run on a cluster.
pub(crate) fn register(r: &mut quiver_engine::FunctionRegistry) -> quiver_engine::Result<()> {
    use quiver_engine::registry::{ScalarCodec, from_json_params, json_params};
    let what = "a preprocessor";
    r.add_scalar_codec(
        "quiver_preprocess",
        ScalarCodec {
            encode: Arc::new(move |udf: &ScalarUDF| {
                let u = udf.inner().downcast_ref::<PreprocessUdf>()?;
                Some(json_params(what, u.encoder.as_ref()))
            }),
            decode: Arc::new(move |bytes: &[u8]| {
                let mut e: Encoder = from_json_params(what, bytes)?;
                e.derive();
                e.validate().map_err(|reason| QuiverError::InvalidParam {
                    param: "quiver_preprocess".to_string(),
                    reason,
                })?;
                Ok(ScalarUDF::from(PreprocessUdf::new(Arc::new(e))))
            }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Float64Array, Int32Array, StringArray};

    fn column(name: &str, kind: ColumnKind, categories: &[&str], nulls: u64) -> ColumnInfo {
        ColumnInfo {
            name: name.to_string(),
            data_type: String::new(),
            kind,
            rows: 10,
            nulls,
            non_finite: 0,
            mean: (kind != ColumnKind::Categorical).then_some(2.5),
            stddev: None,
            min: None,
            max: None,
            categories: categories.iter().map(|s| s.to_string()).collect(),
            distinct: categories.len() as u64,
        }
    }

    fn arrays() -> Vec<ArrayRef> {
        vec![
            Arc::new(Int32Array::from(vec![Some(1), None, Some(3)])),
            Arc::new(StringArray::from(vec![Some("b"), Some("zz"), None])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
        ]
    }

    fn encoder(encoding: CategoryEncoding, missing: MissingNumbers, null_seen: u64) -> Encoder {
        Encoder::new(
            vec![
                column("x", ColumnKind::Numeric, &[], 1),
                column("s", ColumnKind::Categorical, &["a", "b"], null_seen),
                column("t", ColumnKind::Boolean, &[], 1),
            ],
            encoding,
            missing,
            None,
        )
    }

    #[test]
    fn one_hot_imputes_and_gives_other_its_own_feature() {
        let e = encoder(CategoryEncoding::OneHot, MissingNumbers::Impute, 1);
        assert_eq!(e.feature_names(), ["x", "s_a", "s_b", "s_<other>", "t"]);
        let v = e.encode(&arrays(), 3).unwrap();
        assert_eq!(
            v,
            [
                1.0, 0.0, 1.0, 0.0, 1.0, //
                2.5, 0.0, 0.0, 1.0, 0.0, // unseen 'zz' is "other"
                3.0, 0.0, 0.0, 1.0, 2.5, // null string is "other"; null bool the mean
            ]
        );
    }

    #[test]
    fn without_nulls_at_fit_unseen_values_are_all_zero() {
        let e = encoder(CategoryEncoding::OneHot, MissingNumbers::Impute, 0);
        assert_eq!(e.feature_names(), ["x", "s_a", "s_b", "t"]);
        let v = e.encode(&arrays(), 3).unwrap();
        assert_eq!(&v[4..8], &[2.5, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn dummy_drops_the_first_category_and_label_indexes() {
        let e = encoder(CategoryEncoding::Dummy, MissingNumbers::Impute, 1);
        assert_eq!(e.feature_names(), ["x", "s_b", "s_<other>", "t"]);
        let v = e.encode(&arrays(), 3).unwrap();
        assert_eq!(&v[0..4], &[1.0, 1.0, 0.0, 1.0]);
        let e = encoder(CategoryEncoding::Label, MissingNumbers::Keep, 1);
        assert_eq!(e.feature_names(), ["x", "s", "t"]);
        let v = e.encode(&arrays(), 3).unwrap();
        assert_eq!(&v[0..3], &[1.0, 1.0, 1.0]);
        assert!(v[3].is_nan(), "a null number stays missing for trees");
        assert_eq!(v[4], 2.0, "unseen is the extra index");
        assert_eq!(v[7], 2.0, "null string is the extra index");
        assert!(v[8].is_nan());
    }

    #[test]
    fn non_finite_numbers_are_named_with_their_row() {
        let e = encoder(CategoryEncoding::OneHot, MissingNumbers::Impute, 0);
        let mut a = arrays();
        a[0] = Arc::new(Float64Array::from(vec![1.0, f64::INFINITY, 2.0]));
        let err = e.encode(&a, 3).unwrap_err().to_string();
        assert!(err.contains("infinite value in column 'x' (row 1"), "{err}");
        a[0] = Arc::new(Float64Array::from(vec![1.0, 2.0, f64::NAN]));
        let err = e.encode(&a, 3).unwrap_err().to_string();
        assert!(err.contains("NaN in column 'x' (row 2"), "{err}");
        // Trees keep NaN as missing, but not infinity.
        let e = encoder(CategoryEncoding::Label, MissingNumbers::Keep, 0);
        assert!(e.encode(&a, 3).is_ok());
    }

    /// Number columns without nulls take the blocked path: the same values as the one that
    /// writes value by value, for a batch that is not a whole number of blocks, beside a
    /// one-hot column.
    #[test]
    fn blocked_numbers_equal_value_by_value() {
        let rows = 1000;
        let e = encoder(CategoryEncoding::OneHot, MissingNumbers::Impute, 1);
        let a: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from((0..rows as i32).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                (0..rows)
                    .map(|i| ["a", "b", "q"][i % 3])
                    .collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                (0..rows).map(|i| i % 7 == 0).collect::<Vec<_>>(),
            )),
        ];
        let blocked = e.encode(&a, rows).unwrap();
        let mut one_by_one = vec![0.0; rows * e.dim()];
        for (j, array) in a.iter().enumerate() {
            e.encode_into(j, array, rows, &mut one_by_one).unwrap();
        }
        assert_eq!(blocked, one_by_one);
        assert_eq!(
            &blocked[998 * 5..],
            &[998.0, 0.0, 0.0, 1.0, 0.0, 999.0, 1.0, 0.0, 0.0, 0.0]
        );
        // Only number columns (the appended blocks, no zeroing pass): the same again.
        let numbers_only = Encoder::new(
            vec![
                column("x", ColumnKind::Numeric, &[], 0),
                column("t", ColumnKind::Boolean, &[], 0),
            ],
            CategoryEncoding::OneHot,
            MissingNumbers::Impute,
            None,
        );
        let b = vec![a[0].clone(), a[2].clone()];
        let appended = numbers_only.encode(&b, rows).unwrap();
        let mut one_by_one = vec![0.0; rows * 2];
        for (j, array) in b.iter().enumerate() {
            numbers_only
                .encode_into(j, array, rows, &mut one_by_one)
                .unwrap();
        }
        assert_eq!(appended, one_by_one);
        assert_eq!(&appended[2 * 700..2 * 701], &[700.0, 1.0]);
        let mut x: Vec<f64> = (0..rows).map(|i| i as f64).collect();
        x[513] = f64::NAN;
        let bad = vec![Arc::new(Float64Array::from(x)) as ArrayRef, a[2].clone()];
        let err = numbers_only.encode(&bad, rows).unwrap_err().to_string();
        assert!(err.contains("NaN in column 'x' (row 513"), "{err}");
        // A refused value far into the batch is named with its row.
        let mut x: Vec<f64> = (0..rows).map(|i| i as f64).collect();
        x[777] = f64::NEG_INFINITY;
        let mut bad = a.clone();
        bad[0] = Arc::new(Float64Array::from(x));
        let err = e.encode(&bad, rows).unwrap_err().to_string();
        assert!(
            err.contains("infinite value in column 'x' (row 777"),
            "{err}"
        );
    }

    #[test]
    fn times_are_epoch_seconds() {
        let d: ArrayRef = Arc::new(arrow::array::Date32Array::from(vec![Some(1), None]));
        let v = numbers(&d, "d").unwrap();
        assert_eq!(v.value(0), 86400.0);
        assert!(v.is_null(1));
        let t: ArrayRef = Arc::new(arrow::array::TimestampMillisecondArray::from(vec![1500]));
        assert_eq!(numbers(&t, "t").unwrap().value(0), 1.5);
    }

    #[test]
    fn a_bad_stored_layout_is_refused() {
        let mut e = encoder(CategoryEncoding::OneHot, MissingNumbers::Impute, 0);
        e.columns[1].categories = vec!["b".to_string(), "a".to_string()];
        e.derive();
        assert!(e.validate().unwrap_err().contains("not sorted"));
    }

    #[test]
    fn encoding_names_parse() {
        assert_eq!(
            CategoryEncoding::parse("LABEL_ENCODING").unwrap(),
            CategoryEncoding::Label
        );
        let err = CategoryEncoding::parse("binary").unwrap_err().to_string();
        assert!(err.contains("category_encoding_method"), "{err}");
    }
}
