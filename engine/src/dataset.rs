//! `Dataset` (a DataFrame plus roles: features, label, weight) and `LocalFrame` (a dataset
//! cached in memory as assembled record batches, the local runner's input).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeListArray, RecordBatch};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{DataFrame, Expr, col};
use futures::StreamExt;

use crate::aggregate::quoted_name;
use crate::error::{QuiverError, Result};
use crate::functions::{AssembleUdf, RowUniformUdf, VectorFromListUdf};
use crate::vector::{
    FeatureBatch, Missing, assemble_with, feature_width, first_nan, first_non_finite, is_numeric,
    numeric_values, vector_values,
};

/// A DataFusion `DataFrame` plus the roles of its columns. Transformations are lazy: they add
/// projections to the plan; nothing runs until a statistic, a write or a collect asks.
#[derive(Debug, Clone)]
pub struct Dataset {
    df: DataFrame,
    features: Vec<String>,
    label: Option<String>,
    weight: Option<String>,
    /// A vector column this dataset assembled, with the names of its elements (the columns
    /// it was assembled from), so that errors and weights name those rather than `v[3]`.
    assembled: Option<(String, Vec<String>)>,
    /// What caching the features in memory does with nulls and NaN.
    missing: Missing,
    /// The key its rows stay the same under ([`Dataset::reusable`]); dropped with any change
    /// of the rows.
    reuse: Option<Arc<str>>,
    /// The features' moments, when known from how the rows were made
    /// ([`Dataset::with_feature_moments`]); dropped with any change of the rows, and ignored
    /// once the features are others than those they describe.
    moments: Option<Arc<FeatureMoments>>,
}

/// The mean and sample standard deviation of each feature value over a dataset's rows (of its
/// features in order, vector elements expanded), known without reading the rows: automatic
/// preprocessing computes them in the read that encodes the rows, so a fit that standardises
/// needs no pass of its own to learn them.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMoments {
    /// The rows they were computed over.
    pub rows: u64,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// The feature columns they describe.
    features: Vec<String>,
}

impl FeatureMoments {
    pub fn new(rows: u64, mean: Vec<f64>, std: Vec<f64>) -> Self {
        FeatureMoments {
            rows,
            mean,
            std,
            features: Vec::new(),
        }
    }
}

impl Dataset {
    /// A dataset with no roles assigned yet.
    pub fn new(df: DataFrame) -> Self {
        Dataset {
            df,
            features: Vec::new(),
            label: None,
            weight: None,
            assembled: None,
            missing: Missing::Refuse,
            reuse: None,
            moments: None,
        }
    }

    pub fn dataframe(&self) -> &DataFrame {
        &self.df
    }

    /// Promises that this dataset's rows stay the same for as long as `key` is used (rows
    /// materialised in memory, say): fits may then keep what they derive from the rows in this
    /// process ([`crate::reuse`]) and read them once for many fits. A new DataFrame under the
    /// roles (filtered, assembled, transformed rows) is not reusable until marked again.
    pub fn reusable(mut self, key: impl Into<String>) -> Self {
        self.reuse = Some(Arc::from(key.into()));
        self
    }

    /// Records what is known of the current features' values over these rows (`moments`, one
    /// mean and deviation per feature value): a promise, like [`Dataset::reusable`]'s, that
    /// they were computed over exactly these rows. [`Dataset::feature_moments`] gives them back
    /// while the rows and features stay these.
    pub fn with_feature_moments(mut self, mut moments: FeatureMoments) -> Self {
        moments.features = self.features.clone();
        self.moments = Some(Arc::new(moments));
        self
    }

    /// The moments [`Dataset::with_feature_moments`] recorded, if the features are still the
    /// ones they describe and as many values wide.
    pub fn feature_moments(&self) -> Option<&FeatureMoments> {
        let m = self.moments.as_deref()?;
        let width = self.feature_dim().ok()?;
        (m.features == self.features && m.mean.len() == width && m.std.len() == width).then_some(m)
    }

    /// The key of [`Dataset::reusable`] and the roles and missing-value policy: what derived
    /// rows are kept under (`None` when the dataset is not reusable).
    pub fn reuse_key(&self, what: &str) -> Option<String> {
        self.reuse.as_ref().map(|key| {
            format!(
                "{what}\u{0}{key}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}",
                self.features, self.label, self.weight, self.missing
            )
        })
    }

    /// Keeps missing feature values (nulls and NaN) as NaN when the rows are cached in memory
    /// ([`Dataset::cache_local`]) instead of refusing them: for estimators that learn what a
    /// missing value means (trees). Labels and weights must still be present.
    pub fn keep_missing(mut self) -> Self {
        self.missing = Missing::Keep;
        self
    }

    /// The same roles over another DataFrame (e.g. this one with a column added or rows
    /// filtered); every role column must still be there.
    pub fn with_dataframe(&self, df: DataFrame) -> Result<Dataset> {
        let mut out = Dataset::new(df);
        if !self.features.is_empty() {
            out = out.with_features(&self.features)?;
        }
        if let Some(l) = &self.label {
            out = out.with_label(l)?;
        }
        if let Some(w) = &self.weight {
            out = out.with_weight(w)?;
        }
        out.assembled = self.assembled.clone();
        Ok(out)
    }

    /// Spark's `persist()`: the same dataset (columns and roles) reading rows kept in memory
    /// ([`QuiverSession::persist`]).
    pub async fn persist(&self, session: &crate::QuiverSession) -> Result<Dataset> {
        self.with_dataframe(session.persist(&self.df).await?)
    }

    /// Frees what [`Dataset::persist`] kept (see [`crate::QuiverSession::unpersist`]): the
    /// partitions dropped.
    pub async fn unpersist(&self, session: &crate::QuiverSession) -> Result<usize> {
        session.unpersist(&self.df).await
    }

    pub fn into_dataframe(self) -> DataFrame {
        self.df
    }

    /// Feature columns, in order (numeric scalars or numeric fixed-size vectors).
    pub fn features(&self) -> &[String] {
        &self.features
    }

    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    pub fn weight(&self) -> Option<&str> {
        self.weight.as_deref()
    }

    /// Column names of the underlying data.
    pub fn columns(&self) -> Vec<String> {
        self.df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    fn field(&self, name: &str) -> Result<&Field> {
        self.df
            .schema()
            .field_with_unqualified_name(name)
            .map(|f| f.as_ref())
            .map_err(|_| QuiverError::ColumnNotFound {
                column: name.to_string(),
                available: self.columns().join(", "),
            })
    }

    fn numeric_field(&self, name: &str) -> Result<&Field> {
        let field = self.field(name)?;
        if !is_numeric(field.data_type()) {
            return Err(QuiverError::NonNumericColumn {
                column: name.to_string(),
                data_type: field.data_type().to_string(),
            });
        }
        Ok(field)
    }

    /// Sets the feature columns; each must exist and be numeric (or a numeric vector).
    pub fn with_features<S: AsRef<str>>(
        mut self,
        columns: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let columns: Vec<String> = columns
            .into_iter()
            .map(|c| c.as_ref().to_string())
            .collect();
        if columns.is_empty() {
            return Err(QuiverError::InvalidParam {
                param: "features".to_string(),
                reason: "at least one feature column is needed".to_string(),
            });
        }
        for c in &columns {
            let field = self.field(c)?;
            if feature_width(field.data_type()).is_none() {
                return Err(QuiverError::NonNumericColumn {
                    column: c.clone(),
                    data_type: field.data_type().to_string(),
                });
            }
        }
        self.features = columns;
        Ok(self)
    }

    /// Uses every numeric column except those in `exclude` (and the label and weight) as
    /// features, in schema order.
    pub fn with_numeric_features_except(self, exclude: &[&str]) -> Result<Self> {
        let cols: Vec<String> = self
            .df
            .schema()
            .fields()
            .iter()
            .filter(|f| feature_width(f.data_type()).is_some())
            .map(|f| f.name().clone())
            .filter(|n| {
                !exclude.contains(&n.as_str())
                    && Some(n.as_str()) != self.label.as_deref()
                    && Some(n.as_str()) != self.weight.as_deref()
            })
            .collect();
        self.with_features(cols)
    }

    /// Uses a list column (`List`/`LargeList` of numbers, as JSON arrays and many writers
    /// store vectors) as a feature vector of `dim` elements: it is converted lazily with
    /// `vector_from_list`, and a row of another length is an error naming the row.
    pub fn with_vector_feature(self, column: &str, dim: usize) -> Result<Self> {
        let field = self.field(column)?;
        let element = match field.data_type() {
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                f.data_type().clone()
            }
            other => other.clone(),
        };
        if !is_numeric(&element) {
            return Err(QuiverError::NonNumericColumn {
                column: column.to_string(),
                data_type: field.data_type().to_string(),
            });
        }
        let udf = ScalarUDF::from(VectorFromListUdf::new());
        let expr = udf.call(vec![
            col(quoted_name(column)),
            datafusion::prelude::lit(dim as i64),
        ]);
        let df = self.df.with_column(column, expr)?;
        Dataset {
            df,
            features: Vec::new(),
            label: self.label,
            weight: self.weight,
            assembled: None,
            missing: self.missing,
            reuse: None,
            moments: None,
        }
        .with_features([column])
    }

    /// Uses `column`, a `Float64` vector column a transformer wrote, as the features, its
    /// elements named by `names` (so weights and errors name them, not `v[3]`).
    pub fn with_assembled_features(self, column: &str, names: Vec<String>) -> Result<Self> {
        let width = feature_width(self.field(column)?.data_type());
        if width != Some(names.len()) {
            return Err(QuiverError::internal(format!(
                "vector column '{column}' has width {width:?}, but {} names were given",
                names.len()
            )));
        }
        let mut out = self.with_features([column])?;
        out.assembled = Some((column.to_string(), names));
        Ok(out)
    }

    /// Sets the label column (numeric).
    pub fn with_label(mut self, column: &str) -> Result<Self> {
        self.numeric_field(column)?;
        self.label = Some(column.to_string());
        Ok(self)
    }

    /// Sets the weight column (numeric, non-negative).
    pub fn with_weight(mut self, column: &str) -> Result<Self> {
        self.numeric_field(column)?;
        self.weight = Some(column.to_string());
        Ok(self)
    }

    fn require_features(&self) -> Result<&[String]> {
        if self.features.is_empty() {
            return Err(QuiverError::InvalidParam {
                param: "features".to_string(),
                reason: "the dataset has no feature columns; call with_features first".to_string(),
            });
        }
        Ok(&self.features)
    }

    /// Number of feature values per row, summed over the feature columns.
    pub fn feature_dim(&self) -> Result<usize> {
        let mut dim = 0;
        for c in self.require_features()? {
            let field = self.field(c)?;
            dim +=
                feature_width(field.data_type()).ok_or_else(|| QuiverError::NonNumericColumn {
                    column: c.clone(),
                    data_type: field.data_type().to_string(),
                })?;
        }
        Ok(dim)
    }

    /// One name per feature value: the column name, or `name[i]` for vector elements.
    pub fn feature_names(&self) -> Result<Vec<String>> {
        if let (Some((column, names)), [single]) = (&self.assembled, self.features.as_slice())
            && column == single
        {
            return Ok(names.clone());
        }
        let mut names = Vec::new();
        for c in self.require_features()? {
            match self.field(c)?.data_type() {
                DataType::FixedSizeList(_, n) => names.extend((0..*n).map(|i| format!("{c}[{i}]"))),
                _ => names.push(c.clone()),
            }
        }
        Ok(names)
    }

    /// The expression that yields the feature vector: the column itself when it already is a
    /// `Float64` vector, else `vector_assemble(…)` over the feature columns.
    pub fn features_expr(&self) -> Result<Expr> {
        let features = self.require_features()?;
        if let [single] = features
            && let DataType::FixedSizeList(f, _) = self.field(single)?.data_type()
            && f.data_type() == &DataType::Float64
        {
            return Ok(col(quoted_name(single)));
        }
        let udf = ScalarUDF::from(AssembleUdf::new());
        Ok(udf.call(features.iter().map(|c| col(quoted_name(c))).collect()))
    }

    /// Adds the assembled feature vector as column `output` (lazily, as a projection); the new
    /// dataset's features are that one column. Reusable rows stay reusable: the vector is a
    /// function of the rows, kept under a key that names the columns it was assembled from.
    pub fn assemble(self, output: &str) -> Result<Dataset> {
        let expr = self.features_expr()?;
        let names = self.feature_names()?;
        // The vector holds the features' values in their order: the same moments.
        let features = vec![output.to_string()];
        let moments = self.feature_moments().map(|m| {
            Arc::new(FeatureMoments {
                features: features.clone(),
                ..m.clone()
            })
        });
        let df = self.df.with_column(output, expr)?;
        let reuse = self
            .reuse
            .map(|key| Arc::from(format!("{key}\u{0}assembled from {:?}", self.features)));
        Ok(Dataset {
            df,
            features,
            label: self.label,
            weight: self.weight,
            assembled: Some((output.to_string(), names)),
            missing: self.missing,
            reuse,
            moments,
        })
    }

    /// Splits the rows into parts of (about) the given relative sizes, deterministically: a
    /// row's part depends on its values and `seed` only (Spark's `randomSplit`, but the same on
    /// every runner and partitioning). Lazy: each part is a filter over the same plan.
    pub fn random_split(&self, weights: &[f64], seed: u64) -> Result<Vec<Dataset>> {
        self.random_split_on(&self.columns(), weights, seed)
    }

    /// [`Dataset::random_split`] deciding each row's part by the values of `columns` only
    /// (in that order), e.g. the raw columns a derived dataset was computed from.
    pub fn random_split_on(
        &self,
        columns: &[String],
        weights: &[f64],
        seed: u64,
    ) -> Result<Vec<Dataset>> {
        let u = self.split_draw(columns, seed)?;
        let mut out = Vec::with_capacity(weights.len());
        for (lo, hi) in split_bounds(weights)? {
            let cond = u
                .clone()
                .gt_eq(datafusion::prelude::lit(lo))
                .and(u.clone().lt(datafusion::prelude::lit(hi)));
            let mut part = self.df.clone().filter(cond)?;
            if self.field(SPLIT_DRAW).is_ok() {
                part = part.drop_columns(&[SPLIT_DRAW])?;
            }
            out.push(self.with_dataframe(part)?);
        }
        Ok(out)
    }

    /// Every row's split draw made now (lazily, as a column of the plan) from `seed` and the
    /// values of `columns`, kept in the column [`SPLIT_DRAW`]: the splits of this dataset on
    /// `[SPLIT_DRAW]` then read it instead of hashing the row again (the same rows in each part
    /// as a split on `columns` with `seed`), e.g. when the rows are materialised once and split
    /// several times. The parts of a split never carry the column.
    pub fn with_split_draw(&self, columns: &[String], seed: u64) -> Result<Dataset> {
        let draw = self.split_draw(columns, seed)?;
        self.with_dataframe(self.df.clone().with_column(SPLIT_DRAW, draw)?)
    }

    /// [`Dataset::random_split_on`] computed now, into this process's memory: the same rows in
    /// each part, but every row's draw is made once (a lazy part's filter makes it again for
    /// each part that is read). Per part, its batches partition by partition, in this
    /// dataset's order; `None` when the parts would take more than `limit` bytes.
    pub async fn random_split_collect(
        &self,
        columns: &[String],
        weights: &[f64],
        seed: u64,
        limit: usize,
    ) -> Result<Option<Vec<Vec<Vec<RecordBatch>>>>> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let bounds = Arc::new(split_bounds(weights)?);
        let drawn = if self.draws_kept(columns) {
            self.df.clone()
        } else {
            self.df
                .clone()
                .with_column(SPLIT_DRAW, self.split_draw(columns, seed)?)?
        };
        let at = drawn
            .schema()
            .index_of_column_by_name(None, SPLIT_DRAW)
            .ok_or_else(|| {
                QuiverError::internal("the split draw column is missing from the plan")
            })?;
        let others: Arc<Vec<usize>> = Arc::new(
            (0..drawn.schema().fields().len())
                .filter(|&i| i != at)
                .collect(),
        );
        let used = Arc::new(AtomicUsize::new(0));
        // Inside a fan-out task (a trial: one partition, polled on the task's thread) a few
        // batches at a time are split on the task's threads; elsewhere the partitions run
        // side by side, a batch at a time.
        let pool = crate::fanout::task_pool();
        let tasks: Vec<_> = drawn
            .execute_stream_partitioned()
            .await?
            .into_iter()
            .map(|mut stream| {
                let (bounds, used) = (Arc::clone(&bounds), Arc::clone(&used));
                let others = Arc::clone(&others);
                let pool = pool.clone();
                tokio::spawn(async move {
                    let window = pool.as_ref().map_or(1, |p| 2 * p.current_num_threads());
                    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); bounds.len()];
                    let mut pending: Vec<RecordBatch> = Vec::with_capacity(window);
                    let mut ended = false;
                    while !ended {
                        match stream.next().await {
                            Some(batch) => pending.push(batch?),
                            None => ended = true,
                        }
                        let (full, last) = (pending.len() >= window, ended && !pending.is_empty());
                        if !full && !last {
                            continue;
                        }
                        let split = |b: &RecordBatch| split_batch(b, at, &others, &bounds);
                        let pieces: Vec<Vec<RecordBatch>> = match &pool {
                            Some(p) if pending.len() > 1 => {
                                use rayon::prelude::*;
                                p.install(|| pending.par_iter().map(split).collect::<Result<_>>())?
                            }
                            _ => pending.iter().map(split).collect::<Result<_>>()?,
                        };
                        pending.clear();
                        for batch_parts in pieces {
                            for (part, kept) in parts.iter_mut().zip(batch_parts) {
                                if kept.num_rows() == 0 {
                                    continue;
                                }
                                let size = kept.get_array_memory_size();
                                if used.fetch_add(size, Ordering::Relaxed) + size > limit {
                                    return Ok(None);
                                }
                                part.push(kept);
                            }
                        }
                    }
                    Ok::<_, QuiverError>(Some(parts))
                })
            })
            .collect();
        let mut out: Vec<Vec<Vec<RecordBatch>>> = vec![Vec::new(); bounds.len()];
        for task in tasks {
            let Some(parts) = task
                .await
                .map_err(|e| QuiverError::internal(format!("splitting the rows: {e}")))??
            else {
                return Ok(None);
            };
            for (o, p) in out.iter_mut().zip(parts) {
                o.push(p);
            }
        }
        Ok(Some(out))
    }

    /// Whether a split on `columns` reads draws the rows carry ([`Dataset::with_split_draw`]).
    fn draws_kept(&self, columns: &[String]) -> bool {
        matches!(columns, [c] if c == SPLIT_DRAW) && self.field(SPLIT_DRAW).is_ok()
    }

    /// Every row's uniform draw in [0, 1) from `seed` and the values of `columns`; the kept
    /// draw when `columns` is `[SPLIT_DRAW]` (made with its own seed).
    fn split_draw(&self, columns: &[String], seed: u64) -> Result<Expr> {
        if self.draws_kept(columns) {
            return Ok(col(SPLIT_DRAW));
        }
        let mut args = vec![datafusion::prelude::lit(seed as i64)];
        for c in columns {
            self.field(c)?;
            args.push(col(quoted_name(c)));
        }
        Ok(ScalarUDF::from(RowUniformUdf::new()).call(args))
    }

    /// Number of rows.
    pub async fn count(&self) -> Result<usize> {
        Ok(self.df.clone().count().await?)
    }

    /// The columns a role-aware scan needs: features, then label, then weight.
    fn role_columns(&self) -> Result<Vec<String>> {
        let mut cols = self.require_features()?.to_vec();
        cols.extend(self.label.iter().cloned());
        cols.extend(self.weight.iter().cloned());
        Ok(cols)
    }

    /// Streams the role columns partition by partition, in the dataset's natural order, calling
    /// `f(first_row_of_batch, batch)`.
    async fn for_each_batch(
        &self,
        mut f: impl FnMut(u64, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        let cols: Vec<Expr> = self
            .role_columns()?
            .iter()
            .map(|c| col(quoted_name(c)))
            .collect();
        // Planned in this process even on a cluster session: a distributed query returns its
        // partitions in no particular order, and the row numbers must follow the data's order.
        let (state, plan) = self.df.clone().select(cols)?.into_parts();
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_query_planner(Arc::new(InProcessPlanner))
            .build();
        let streams = DataFrame::new(state, plan)
            .execute_stream_partitioned()
            .await?;
        let mut row = 0u64;
        for mut stream in streams {
            while let Some(batch) = stream.next().await {
                // A kernel upstream (e.g. `vector_assemble`) may reject a value of this batch.
                let batch = batch.map_err(|e| at_row(QuiverError::from(e), row))?;
                let n = batch.num_rows() as u64;
                f(row, batch)?;
                row += n;
            }
        }
        Ok(())
    }

    /// Finds the first null, NaN or infinity in the feature, label or weight columns, in the dataset's
    /// natural order (partition by partition), and returns it as an error value naming the
    /// column and the row. `None` when every value is valid. Runs in this process, also for a
    /// cluster session (it reads the data itself).
    pub async fn locate_invalid(&self) -> Result<Option<QuiverError>> {
        let names = self.role_columns()?;
        // Features may be missing where the dataset keeps missing values; labels never.
        let (keep, n_features) = (self.missing == Missing::Keep, self.features.len());
        let mut found: Option<QuiverError> = None;
        let result = self
            .for_each_batch(|first_row, batch| {
                if found.is_some() {
                    return Ok(());
                }
                for (i, name) in names.iter().enumerate() {
                    if let Some((kind, row, detail)) =
                        first_invalid(batch.column(i), keep && i < n_features)
                    {
                        found = Some(QuiverError::InvalidValue {
                            kind,
                            column: name.clone(),
                            row: first_row + row as u64,
                            detail,
                        });
                        return Ok(());
                    }
                }
                Ok(())
            })
            .await;
        match (result, found) {
            (_, Some(found)) => Ok(Some(found)),
            (Err(e @ QuiverError::InvalidValue { .. }), None)
            | (Err(e @ QuiverError::InconsistentVectorLength { .. }), None) => Ok(Some(e)),
            (Err(e), None) => Err(e),
            (Ok(()), None) => Ok(None),
        }
    }

    /// Finds the first row whose features `check` refuses, in the dataset's natural order:
    /// `check` returns the index of the first refused value in a batch's row-major feature
    /// values and what is wrong with it. The result names the feature (by
    /// [`Dataset::feature_names`]) and the dataset row. Statistics with a domain of their own
    /// (counts ≥ 0, flags 0/1) use it to turn a batch-relative error into a located one, on
    /// every runner and on a cluster (it reads the data in this process).
    pub async fn locate_refused(
        &self,
        check: impl Fn(&FeatureBatch<'_>) -> Option<(usize, &'static str)>,
    ) -> Result<Option<QuiverError>> {
        let names = self.feature_names()?;
        let dim = names.len();
        let mut features = self.clone();
        features.label = None;
        features.weight = None;
        let features = features.assemble("__quiver_features")?;
        let mut found = None;
        let result = features
            .for_each_batch(|first_row, batch| {
                if found.is_some() {
                    return Ok(());
                }
                let (values, width) = vector_values(batch.column(0).as_ref(), "features")?;
                if width != dim {
                    return Ok(());
                }
                let fb = FeatureBatch::new(values, width)?;
                if let Some((i, kind)) = check(&fb) {
                    found = Some(QuiverError::InvalidValue {
                        kind,
                        column: names[i % dim].clone(),
                        row: first_row + (i / dim) as u64,
                        detail: String::new(),
                    });
                }
                Ok(())
            })
            .await;
        match (result, found) {
            (_, Some(found)) => Ok(Some(found)),
            (Err(e), None) => Err(e),
            (Ok(()), None) => Ok(None),
        }
    }

    /// Runs the plan and caches the assembled features (and label, weight) in memory for the
    /// local runner. Nulls and NaN are rejected here, with their column and row.
    pub async fn cache_local(&self) -> Result<LocalFrame> {
        let reuse = self.reuse_key("local frame");
        if let Some(frame) = reuse.as_deref().and_then(crate::reuse::get::<LocalFrame>) {
            return Ok(frame.as_ref().clone());
        }
        let frame = self.read_local().await?;
        if let Some(key) = reuse {
            let bytes = frame.n_rows() as usize * (frame.dim() + 2) * 8;
            crate::reuse::put(key, Arc::new(frame.clone()), bytes);
        }
        Ok(frame)
    }

    /// [`Dataset::cache_local`], reading the rows.
    async fn read_local(&self) -> Result<LocalFrame> {
        let names = Arc::new(self.role_columns()?);
        let feature_names = self.feature_names()?;
        let dim = feature_names.len();
        let roles = Arc::new((self.features.len(), self.label.clone(), self.weight.clone()));
        let missing = self.missing;
        let cols: Vec<Expr> = names.iter().map(|c| col(quoted_name(c))).collect();
        // Planned in this process even on a cluster session: a distributed query returns its
        // partitions in no particular order, and the row numbers must follow the data's order.
        let (state, plan) = self.df.clone().select(cols)?.into_parts();
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_query_planner(Arc::new(InProcessPlanner))
            .build();
        let streams = DataFrame::new(state, plan)
            .execute_stream_partitioned()
            .await?;
        // Partitions are read and assembled in parallel; rows are numbered within a partition
        // first and shifted once the sizes of the partitions before it are known.
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                let names = Arc::clone(&names);
                let roles = Arc::clone(&roles);
                tokio::spawn(async move {
                    let mut chunks = Vec::new();
                    let mut row = 0u64;
                    while let Some(batch) = stream.next().await {
                        let batch = batch.map_err(|e| at_row(QuiverError::from(e), row))?;
                        let n = batch.num_rows() as u64;
                        if n > 0 {
                            let (n_feat, label, weight) = roles.as_ref();
                            chunks.push(cache_batch(
                                &batch, &names, *n_feat, label, weight, row, missing,
                            )?);
                        }
                        row += n;
                    }
                    Ok::<_, QuiverError>((chunks, row))
                })
            })
            .collect();
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        for task in tasks {
            let joined = task
                .await
                .map_err(|e| QuiverError::internal(format!("caching a partition failed: {e}")))?;
            let (part, rows) = joined.map_err(|e| shift_row(e, offset))?;
            chunks.extend(part.into_iter().map(|mut c: LocalChunk| {
                c.first_row += offset;
                c
            }));
            offset += rows;
        }
        Ok(LocalFrame {
            chunks,
            dim,
            feature_names,
            label: self.label.clone(),
            weight: self.weight.clone(),
        })
    }
}

/// A batch-relative bad value as a dataset error, the batch starting at `first_row`.
pub(crate) fn at_row(e: QuiverError, first_row: u64) -> QuiverError {
    match e {
        QuiverError::InvalidValueInBatch {
            kind,
            column,
            row_in_batch,
        } => QuiverError::InvalidValue {
            kind,
            column,
            row: first_row + row_in_batch as u64,
            detail: String::new(),
        },
        QuiverError::VectorLengthInBatch {
            column,
            row_in_batch,
            expected,
            found,
        } => QuiverError::InconsistentVectorLength {
            column,
            row: first_row + row_in_batch as u64,
            expected,
            found,
        },
        other => other,
    }
}

/// Moves the row of a bad-value error by `offset` rows.
fn shift_row(e: QuiverError, offset: u64) -> QuiverError {
    match e {
        QuiverError::InvalidValue {
            kind,
            column,
            row,
            detail,
        } => QuiverError::InvalidValue {
            kind,
            column,
            row: row + offset,
            detail,
        },
        QuiverError::InconsistentVectorLength {
            column,
            row,
            expected,
            found,
        } => QuiverError::InconsistentVectorLength {
            column,
            row: row + offset,
            expected,
            found,
        },
        other => other,
    }
}

/// Assembles and validates one batch of role columns (features, then label, then weight).
fn cache_batch(
    batch: &RecordBatch,
    names: &[String],
    n_feat: usize,
    label: &Option<String>,
    weight: &Option<String>,
    first_row: u64,
    missing: Missing,
) -> Result<LocalChunk> {
    let cols: Vec<(&str, &ArrayRef)> = names[..n_feat]
        .iter()
        .map(String::as_str)
        .zip(batch.columns())
        .collect();
    let features = assemble_with(&cols, missing).map_err(|e| at_row(e, first_row))?;
    let mut next = n_feat;
    let mut role = |name: &Option<String>| -> Result<Option<ScalarBuffer<f64>>> {
        match name {
            None => Ok(None),
            Some(n) => {
                let v = numeric_values(batch.column(next), n).map_err(|e| at_row(e, first_row))?;
                next += 1;
                if let Some((r, kind)) = first_non_finite(&v, false) {
                    return Err(QuiverError::InvalidValue {
                        kind,
                        column: n.clone(),
                        row: first_row + r as u64,
                        detail: String::new(),
                    });
                }
                Ok(Some(v))
            }
        }
    };
    let label = role(label)?;
    let weight = role(weight)?;
    Ok(LocalChunk {
        features,
        label,
        weight,
        first_row,
    })
}

/// The first null or NaN in a column: (kind, row, detail).
fn first_invalid(array: &ArrayRef, allow_missing: bool) -> Option<(&'static str, usize, String)> {
    if array.null_count() > 0 && !allow_missing {
        let row = (0..array.len()).find(|&r| array.is_null(r))?;
        return Some(("null", row, String::new()));
    }
    match array.data_type() {
        DataType::FixedSizeList(_, n) => {
            let list = array.as_fixed_size_list();
            let values = list.values();
            let dim = (*n as usize).max(1);
            if values.null_count() > 0 && !allow_missing {
                let i = (0..values.len()).find(|&i| values.is_null(i))?;
                return Some(("null", i / dim, format!(" (element {})", i % dim)));
            }
            let values = values.as_primitive_opt::<Float64Type>()?;
            let (i, kind) = first_non_finite(values.values(), allow_missing)?;
            Some((kind, i / dim, format!(" (element {})", i % dim)))
        }
        DataType::Float64 => {
            first_non_finite(array.as_primitive::<Float64Type>().values(), allow_missing)
                .map(|(r, kind)| (kind, r, String::new()))
        }
        DataType::Float32 | DataType::Float16 => {
            let v = numeric_values(array, "").ok()?;
            first_non_finite(&v, allow_missing).map(|(r, kind)| (kind, r, String::new()))
        }
        _ => None,
    }
}

/// One cached batch of a [`LocalFrame`].
#[derive(Debug, Clone)]
pub struct LocalChunk {
    features: FixedSizeListArray,
    label: Option<ScalarBuffer<f64>>,
    weight: Option<ScalarBuffer<f64>>,
    first_row: u64,
}

impl LocalChunk {
    pub fn n_rows(&self) -> usize {
        self.features.len()
    }

    /// Row number of this chunk's first row in the dataset.
    pub fn first_row(&self) -> u64 {
        self.first_row
    }

    /// The zero-copy view the statistics work on.
    pub fn batch(&self) -> FeatureBatch<'_> {
        let dim = self.features.value_length() as usize;
        let values: &[f64] = self
            .features
            .values()
            .as_primitive::<Float64Type>()
            .values();
        FeatureBatch {
            values: &values[..self.features.len() * dim],
            n_rows: self.features.len(),
            dim,
            label: self.label.as_deref(),
            weight: self.weight.as_deref(),
        }
    }

    /// The chunk as a record batch with columns `features`, and `label`/`weight` when present.
    pub fn record_batch(&self) -> Result<RecordBatch> {
        let mut fields = vec![Field::new(
            "features",
            self.features.data_type().clone(),
            false,
        )];
        let mut cols: Vec<ArrayRef> = vec![Arc::new(self.features.clone())];
        for (name, v) in [("label", &self.label), ("weight", &self.weight)] {
            if let Some(v) = v {
                fields.push(Field::new(name, DataType::Float64, false));
                cols.push(Arc::new(arrow::array::Float64Array::new(v.clone(), None)));
            }
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }
}

/// A dataset cached in memory as assembled, validated record batches: the input of the local
/// runner. Built by [`Dataset::cache_local`] or [`LocalFrame::from_vectors`].
#[derive(Debug, Clone)]
pub struct LocalFrame {
    chunks: Vec<LocalChunk>,
    dim: usize,
    feature_names: Vec<String>,
    label: Option<String>,
    weight: Option<String>,
}

impl LocalFrame {
    /// A frame over ready-made feature vectors (and optional labels, weights), one chunk per
    /// array. Every value is checked for null and NaN.
    pub fn from_vectors(
        features: Vec<FixedSizeListArray>,
        labels: Option<Vec<ScalarBuffer<f64>>>,
        weights: Option<Vec<ScalarBuffer<f64>>>,
    ) -> Result<Self> {
        let dim = features
            .first()
            .map(|f| f.value_length() as usize)
            .unwrap_or(0);
        let mut chunks = Vec::with_capacity(features.len());
        let mut first_row = 0u64;
        for (i, f) in features.into_iter().enumerate() {
            let (values, d) = vector_values(&f, "features").map_err(|e| at_row(e, first_row))?;
            if d != dim {
                return Err(QuiverError::InconsistentVectorLength {
                    column: "features".to_string(),
                    row: first_row,
                    expected: dim,
                    found: d,
                });
            }
            if let Some(k) = first_nan(values) {
                return Err(QuiverError::InvalidValue {
                    kind: "NaN",
                    column: "features".to_string(),
                    row: first_row + (k / dim) as u64,
                    detail: format!(" (element {})", k % dim),
                });
            }
            let n = f.len();
            let pick = |v: &Option<Vec<ScalarBuffer<f64>>>| -> Result<Option<ScalarBuffer<f64>>> {
                match v {
                    None => Ok(None),
                    Some(v) => {
                        let b = v.get(i).cloned().ok_or_else(|| {
                            QuiverError::internal("fewer label/weight chunks than feature chunks")
                        })?;
                        if b.len() != n {
                            return Err(QuiverError::internal("label/weight chunk length differs"));
                        }
                        Ok(Some(b))
                    }
                }
            };
            chunks.push(LocalChunk {
                label: pick(&labels)?,
                weight: pick(&weights)?,
                features: f,
                first_row,
            });
            first_row += n as u64;
        }
        Ok(LocalFrame {
            chunks,
            dim,
            feature_names: (0..dim).map(|j| format!("features[{j}]")).collect(),
            label: labels.map(|_| "label".to_string()),
            weight: weights.map(|_| "weight".to_string()),
        })
    }

    /// A frame over record batches already in memory whose columns are exactly `features`
    /// (a fixed-size list of non-null `Float64`), and `label` / `weight` (`Float64`) when
    /// `label` / `weight` name them: the batches' own buffers, nothing copied or checked
    /// beyond the types and nulls. `None` when a batch is not of that form.
    pub fn over_batches(
        partitions: &[Vec<RecordBatch>],
        label: Option<&str>,
        weight: Option<&str>,
    ) -> Option<Self> {
        let mut chunks = Vec::new();
        let mut dim = None;
        let mut first_row = 0u64;
        for batch in partitions.iter().flatten() {
            let features = batch.column_by_name("features")?.as_fixed_size_list_opt()?;
            let values = features.values().as_primitive_opt::<Float64Type>()?;
            let d = features.value_length() as usize;
            if features.null_count() > 0 || values.null_count() > 0 || *dim.get_or_insert(d) != d {
                return None;
            }
            let role = |name: Option<&str>| -> Option<Option<ScalarBuffer<f64>>> {
                let Some(name) = name else {
                    return Some(None);
                };
                let v = batch
                    .column_by_name(name)?
                    .as_primitive_opt::<Float64Type>()?;
                (v.null_count() == 0).then(|| Some(v.values().clone()))
            };
            chunks.push(LocalChunk {
                features: features.clone(),
                label: role(label)?,
                weight: role(weight)?,
                first_row,
            });
            first_row += batch.num_rows() as u64;
        }
        let dim = dim?;
        Some(LocalFrame {
            chunks,
            dim,
            feature_names: (0..dim).map(|j| format!("features[{j}]")).collect(),
            label: label.map(str::to_string),
            weight: weight.map(str::to_string),
        })
    }

    pub fn chunks(&self) -> &[LocalChunk] {
        &self.chunks
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn n_rows(&self) -> u64 {
        self.chunks.iter().map(|c| c.n_rows() as u64).sum()
    }

    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Bytes of feature data held (8 per value).
    pub fn feature_bytes(&self) -> u64 {
        self.n_rows() * self.dim as u64 * 8
    }

    /// The cached batches (columns `features`, and `label`/`weight` when present).
    pub fn record_batches(&self) -> Result<Vec<RecordBatch>> {
        self.chunks.iter().map(LocalChunk::record_batch).collect()
    }

    pub(crate) fn check_inputs(&self, label: bool, weight: bool) -> Result<()> {
        if label && self.label.is_none() {
            return Err(QuiverError::InvalidParam {
                param: "label".to_string(),
                reason: "the statistic needs a label column; the data has none".to_string(),
            });
        }
        if weight && self.weight.is_none() {
            return Err(QuiverError::InvalidParam {
                param: "weight".to_string(),
                reason: "the statistic needs a weight column; the data has none".to_string(),
            });
        }
        Ok(())
    }
}

/// DataFusion's own physical planning, in this process (a cluster session's state plans for
/// the cluster instead); cache nodes plan as their input.
#[derive(Debug)]
struct InProcessPlanner;

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for InProcessPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &datafusion::logical_expr::LogicalPlan,
        session_state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::physical_planner::PhysicalPlanner;
        datafusion::physical_planner::DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(crate::cluster::cache::CachePlanner { pass_through: true }),
        ])
        .create_physical_plan(logical_plan, session_state)
        .await
    }
}

/// One batch's rows of each part of a split: the rows whose draw (column `at`) lies in the
/// part's bounds, with the columns `others`.
fn split_batch(
    batch: &RecordBatch,
    at: usize,
    others: &[usize],
    bounds: &[(f64, f64)],
) -> Result<Vec<RecordBatch>> {
    split_rows(
        &batch.project(others)?,
        batch.column(at).as_primitive::<Float64Type>(),
        bounds,
    )
}

/// The rows of `rows` in each part of a split by their `draws` (one per row): per part
/// `[lo, hi)` of `bounds` (see [`split_bounds`]), the rows whose draw lies in it, in order; a
/// null draw keeps its row in no part. Feature vectors are copied a row's slice at a time.
pub fn split_rows(
    rows: &RecordBatch,
    draws: &arrow::array::Float64Array,
    bounds: &[(f64, f64)],
) -> Result<Vec<RecordBatch>> {
    bounds
        .iter()
        .map(|(lo, hi)| {
            let keep: arrow::array::BooleanArray = draws
                .iter()
                .map(|v| Some(v.is_some_and(|v| v >= *lo && v < *hi)))
                .collect();
            filter_rows(rows, &keep)
        })
        .collect()
}

/// `filter_record_batch` (`keep` without nulls) with a fast path for feature vectors: a
/// fixed-size list of Float64 without nulls copies each kept row's values as one slice, where
/// arrow's generic filter of a list extends its output row by row (a random split keeps short
/// runs of rows, so that was most of the split's time).
fn filter_rows(batch: &RecordBatch, keep: &arrow::array::BooleanArray) -> Result<RecordBatch> {
    debug_assert_eq!(keep.null_count(), 0);
    let kept = keep.true_count();
    let columns = batch
        .columns()
        .iter()
        .map(|c| match vector_rows(c, keep, kept) {
            Some(v) => v,
            None => Ok(arrow::compute::filter(c, keep)?),
        })
        .collect::<Result<Vec<_>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(kept));
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &options,
    )?)
}

/// The kept rows of a Float64 vector column without nulls (`None`: another kind of column).
fn vector_rows(
    c: &ArrayRef,
    keep: &arrow::array::BooleanArray,
    kept: usize,
) -> Option<Result<ArrayRef>> {
    let DataType::FixedSizeList(field, w) = c.data_type() else {
        return None;
    };
    let l = c.as_fixed_size_list_opt()?;
    let values = l.values().as_primitive_opt::<Float64Type>()?;
    if *w <= 0 || l.logical_null_count() > 0 || values.null_count() > 0 {
        return None;
    }
    let w = *w as usize;
    let values = values.values();
    let mut out = Vec::with_capacity(kept * w);
    for r in keep.values().set_indices() {
        out.extend_from_slice(&values[r * w..(r + 1) * w]);
    }
    let values = Arc::new(arrow::array::Float64Array::from(out));
    Some(
        FixedSizeListArray::try_new(Arc::clone(field), w as i32, values, None)
            .map(|a| Arc::new(a) as ArrayRef)
            .map_err(QuiverError::from),
    )
}

/// The column a row's split draw is kept in ([`Dataset::with_split_draw`], and while
/// [`Dataset::random_split_collect`] splits).
pub const SPLIT_DRAW: &str = "__quiver_split_draw";

/// The [lo, hi) range of draws of each part of a split into parts of relative sizes `weights`
/// (a row whose draw `u` has `lo <= u < hi` is in the part).
pub fn split_bounds(weights: &[f64]) -> Result<Vec<(f64, f64)>> {
    let total: f64 = weights.iter().sum();
    if weights.is_empty() || weights.iter().any(|w| w.is_nan() || *w < 0.0) || total <= 0.0 {
        return Err(QuiverError::InvalidParam {
            param: "weights".to_string(),
            reason: format!("{weights:?}: need non-negative weights with a positive sum"),
        });
    }
    let mut lo = 0.0;
    Ok(weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let hi = if i + 1 == weights.len() {
                1.0
            } else {
                lo + w / total
            };
            let bounds = (lo, hi);
            lo = hi;
            bounds
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Float64Array};
    use arrow::datatypes::Field;

    fn vectors(values: Vec<f64>, w: i32, nulls: Option<Vec<bool>>) -> ArrayRef {
        let item = Arc::new(Field::new("item", DataType::Float64, true));
        Arc::new(
            FixedSizeListArray::try_new(
                item,
                w,
                Arc::new(Float64Array::from(values)),
                nulls.map(arrow::buffer::NullBuffer::from),
            )
            .unwrap(),
        )
    }

    /// The fast path keeps exactly the rows arrow's filter keeps: vectors (also of a sliced
    /// batch, whose vectors start mid-buffer), vectors with a null row or a null element (the
    /// generic path), other columns beside them, no row and every row kept.
    #[test]
    fn filter_rows_equals_arrow_filter() {
        let n: usize = 37;
        let w: usize = 3;
        let values: Vec<f64> = (0..n * w).map(|i| i as f64 * 0.5 - 7.0).collect();
        let mut with_null_element = values.clone();
        with_null_element[5] = f64::NAN;
        let element_nulls = Float64Array::from(
            (0..n * w)
                .map(|i| (i != 7).then_some(i as f64))
                .collect::<Vec<_>>(),
        );
        let item = Arc::new(Field::new("item", DataType::Float64, true));
        let null_element: ArrayRef = Arc::new(
            FixedSizeListArray::try_new(item, w as i32, Arc::new(element_nulls), None).unwrap(),
        );
        let columns: Vec<ArrayRef> = vec![
            vectors(values.clone(), w as i32, None),
            vectors(
                with_null_element,
                w as i32,
                Some((0..n).map(|r| r % 5 != 3).collect()),
            ),
            null_element,
            Arc::new(Float64Array::from(
                (0..n)
                    .map(|r| (r % 4 != 0).then_some(r as f64))
                    .collect::<Vec<_>>(),
            )),
        ];
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema, columns).unwrap();
        for batch in [batch.clone(), batch.slice(4, 29)] {
            let rows = batch.num_rows();
            let masks: Vec<Vec<bool>> = vec![
                (0..rows).map(|r| r * 7 % 5 < 3).collect(),
                vec![false; rows],
                vec![true; rows],
            ];
            for mask in masks {
                let keep = BooleanArray::from(mask);
                let got = filter_rows(&batch, &keep).unwrap();
                let want = arrow::compute::filter_record_batch(&batch, &keep).unwrap();
                assert_eq!(got, want);
            }
        }
    }
}
