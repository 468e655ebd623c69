//! Fitting the automatic preprocessing and encoding the rows in the same read of them.
//!
//! `CREATE MODEL` fits the preprocessing on exactly the rows the model trains on. Done stage
//! by stage that is three reads of the query's result and two copies of it in memory: the
//! rows kept as read, the statistics query over the training rows, then the encoded vectors
//! written beside them (and the held-out rows encoded as the evaluation reads them). A column
//! read as a number (numbers, booleans, dates and timestamps) needs no statistic to be
//! encoded but the mean its nulls become, so here each batch is split into its training and
//! held-out rows by the rows' split draws (when the statement splits), the training rows'
//! column moments (and string columns' and a class label's value counts) are added as the
//! batch arrives, and each side that has no null, no string column and no class label is
//! encoded at once; the batch as read is let go (its memory taken by the next batch read): one
//! read, one copy. A side that needs what the whole read learns (a null's mean, the categories,
//! the classes) is kept as read (only the model's columns) and encoded at the end. The
//! statistics are the moments and value counts the statistics queries compute (merged in the
//! order of the partitions), the sides are
//! [`Dataset::random_split_on`](quiver_engine::Dataset)'s, and the encoding is the fitted
//! [`Encoder`]'s, so the stage and the vectors equal what
//! [`Estimator::fit`](crate::api::Estimator::fit) on the training rows and `transform` give.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use quiver_engine::moments::Moments;
use quiver_engine::vector::{vector_array, vector_type};
use quiver_engine::{FeatureMoments, QuiverError};
use rayon::prelude::*;

use super::{
    ColumnInfo, ColumnKind, Encoder, LABEL_INDEX, LabelClasses, Preprocessor, PreprocessorModel,
    TextMap, for_each_text, label_classes_of, numbers,
};
use crate::api::ColumnEncoder;
use crate::error::{MllibError, Result};

/// A [`Preprocessor`] fitted while its rows are read ([`Preprocessor::one_pass`]): each
/// partition's batches go to [`OnePassFit::push`] with that partition's [`OnePassPart`], then
/// [`OnePassFit::finish`] takes the parts in partition order.
pub struct OnePassFit {
    params: Preprocessor,
    /// The input columns' positions in the rows read, their types and kinds.
    inputs: Vec<(usize, DataType, ColumnKind)>,
    /// The label's position in the rows read.
    label: Option<usize>,
    /// Whether the label is a classifier's string or boolean label: its classes are learnt in
    /// the read and its values encoded as class indices ([`LABEL_INDEX`]).
    class_label: bool,
    /// Whether a batch without nulls is encoded as read: no string column (its categories
    /// need the whole read) and no class label.
    encode_as_read: bool,
    /// The split ([`OnePassFit::split_on`]), if the rows are split.
    split: Option<Split>,
    /// Encodes a batch without nulls (when `encode_as_read`): it needs no statistic.
    interim: Encoder,
    /// What a batch encoded by `interim` holds: the feature vector, then the label (its class
    /// index for a class label).
    schema: SchemaRef,
    /// What a batch kept as read holds: the input columns, then the label.
    read_schema: SchemaRef,
}

/// The training and held-out rows: those whose draw (a `Float64` column) is in `train`,
/// respectively `held_out` (each `[lo, hi)`).
struct Split {
    draw: usize,
    train: (f64, f64),
    held_out: (f64, f64),
}

/// One partition's share of the read: its training rows' column moments (number columns) and
/// value counts (string columns, a class label), the rows read, and each side's rows
/// (training, held out), each batch encoded or kept as read, in the order read.
pub struct OnePassPart {
    moments: Vec<Moments>,
    counts: Vec<Counts>,
    label_counts: Counts,
    rows: u64,
    train_rows: u64,
    sides: [Vec<Kept>; 2],
}

/// A string column's value counts, nulls apart.
#[derive(Default)]
struct Counts {
    values: TextMap<u64>,
    nulls: u64,
}

impl Counts {
    /// Counts the values of a column read as text (strings, booleans as `true` / `false`).
    fn add(&mut self, array: &ArrayRef) -> Result<()> {
        for_each_text(array, |_, v| match v {
            None => self.nulls += 1,
            Some(v) => match self.values.get_mut(v) {
                Some(n) => *n += 1,
                None => {
                    self.values.insert(v.to_string(), 1);
                }
            },
        })?;
        Ok(())
    }

    fn merge(&mut self, other: Counts) {
        self.nulls += other.nulls;
        for (v, n) in other.values {
            *self.values.entry(v).or_default() += n;
        }
    }

    /// The counts as the statistics query returns them: `None` counting the nulls.
    fn into_vec(self) -> Vec<(Option<String>, u64)> {
        let nulls = (self.nulls > 0).then_some((None, self.nulls));
        self.values
            .into_iter()
            .map(|(v, n)| (Some(v), n))
            .chain(nulls)
            .collect()
    }
}

/// What [`OnePassFit::finish`] gives: the fitted stage, the encoded rows of each partition
/// in the order read, and the number of rows read.
pub struct OnePassRows {
    pub model: PreprocessorModel,
    /// What the encoded batches hold: the feature vector, then the label (its class index for
    /// a class label).
    pub schema: SchemaRef,
    /// The training rows' batches, partition by partition.
    pub train: Vec<Vec<RecordBatch>>,
    /// The held-out rows' batches, partition by partition, when the rows are split.
    pub held_out: Option<Vec<Vec<RecordBatch>>>,
    /// The rows read (both sides).
    pub rows: u64,
    /// The training rows' feature moments when every feature is a number column with a finite
    /// value in every training row (the encoding copies the values, so they are the columns'
    /// moments): for [`Dataset::with_feature_moments`](quiver_engine::Dataset).
    pub moments: Option<FeatureMoments>,
}

/// Whether the encoding refused a value (the usual path then reports it with its row).
fn refused(e: &MllibError) -> bool {
    matches!(
        e,
        MllibError::Engine(QuiverError::InvalidValueInBatch { .. })
    )
}

enum Kept {
    Encoded(RecordBatch),
    Read(RecordBatch),
}

impl Preprocessor {
    /// The one-pass fit over rows of `schema`, when every input column is one the
    /// preprocessing takes (numbers, booleans, dates, timestamps, strings) and the label (if
    /// any) is a number, or a classifier's string or boolean label; `None` otherwise, and for
    /// parameters [`Preprocessor::check`] refuses (then fit and transform as usual, which say
    /// what is wrong).
    pub fn one_pass(&self, schema: &Schema) -> Option<OnePassFit> {
        self.check().ok()?;
        let column = |name: &str, kinds: &[ColumnKind]| {
            let (i, f) = schema.column_with_name(name)?;
            let kind = ColumnKind::of(f.data_type()).filter(|k| kinds.contains(k))?;
            Some((i, f, kind))
        };
        use ColumnKind::{Boolean, Categorical, Numeric, Temporal};
        let mut inputs = Vec::with_capacity(self.input_cols.len());
        let mut columns = Vec::with_capacity(self.input_cols.len());
        let mut read_fields = Vec::with_capacity(self.input_cols.len() + 1);
        for name in &self.input_cols {
            let (i, f, kind) = column(name, &[Numeric, Boolean, Temporal, Categorical])?;
            inputs.push((i, f.data_type().clone(), kind));
            columns.push(ColumnInfo::unread(name, f.data_type(), kind, 0));
            read_fields.push(f.clone());
        }
        let label = match &self.label_col {
            Some(l) if self.classify => Some(column(l, &[Numeric, Boolean, Categorical])?),
            Some(l) => Some(column(l, &[Numeric])?),
            None => None,
        };
        let class_label = label.is_some_and(|(_, _, kind)| kind != Numeric);
        let strings = inputs.iter().any(|(_, _, kind)| *kind == Categorical);
        let interim = Encoder::new(columns, self.encoding, self.missing, None);
        // A class label is encoded as its class index.
        let encoded_label = label.map(|(_, f, _)| match class_label {
            true => Field::new(LABEL_INDEX, DataType::Float64, true),
            false => f.clone(),
        });
        let schema = encoded_schema(
            &self.output_col,
            interim.derived.dim,
            encoded_label.as_ref(),
        );
        read_fields.extend(label.map(|(_, f, _)| f.clone()));
        Some(OnePassFit {
            params: self.clone(),
            inputs,
            label: label.map(|(i, _, _)| i),
            class_label,
            encode_as_read: !strings && !class_label,
            split: None,
            interim,
            schema,
            read_schema: Arc::new(Schema::new(read_fields)),
        })
    }
}

impl OnePassFit {
    /// Splits the rows read (of `schema`, as given to [`Preprocessor::one_pass`]) by their
    /// draw in the `Float64` column `draw`: a row trains when `train.0 <= draw < train.1` and
    /// is held out when `held_out.0 <= draw < held_out.1` (the bounds of
    /// [`split_bounds`](quiver_engine::dataset::split_bounds)), as
    /// [`Dataset::random_split_on`](quiver_engine::Dataset::random_split_on) splits them. The
    /// preprocessing is fitted on the training rows. `None` when `draw` is not a `Float64`
    /// column of `schema`.
    pub fn split_on(
        mut self,
        schema: &Schema,
        draw: &str,
        train: (f64, f64),
        held_out: (f64, f64),
    ) -> Option<Self> {
        let (i, f) = schema.column_with_name(draw)?;
        if f.data_type() != &DataType::Float64 {
            return None;
        }
        self.split = Some(Split {
            draw: i,
            train,
            held_out,
        });
        Some(self)
    }

    /// The encoded batches' label column: the label's, or its class index ([`LABEL_INDEX`])
    /// for a string or boolean class label.
    pub fn encoded_label(&self) -> Option<&str> {
        match &self.params.label_col {
            Some(_) if self.class_label => Some(LABEL_INDEX),
            l => l.as_deref(),
        }
    }

    /// A partition's empty share.
    pub fn part(&self) -> OnePassPart {
        OnePassPart {
            moments: vec![Moments::default(); self.inputs.len()],
            counts: self.inputs.iter().map(|_| Counts::default()).collect(),
            label_counts: Counts::default(),
            rows: 0,
            train_rows: 0,
            sides: [Vec::new(), Vec::new()],
        }
    }

    /// Adds a batch read to its partition's share; returns the bytes kept for it, or `None`
    /// when the batch holds a value the encoding refuses (±∞, NaN unless kept): the usual
    /// path then reads the rows and reports the value with its row in the dataset.
    pub fn push(&self, part: &mut OnePassPart, batch: &RecordBatch) -> Result<Option<usize>> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(Some(0));
        }
        part.rows += rows as u64;
        let mut arrays: Vec<ArrayRef> = self
            .inputs
            .iter()
            .map(|(i, _, _)| Arc::clone(batch.column(*i)))
            .collect();
        arrays.extend(self.label.map(|i| Arc::clone(batch.column(i))));
        let read = RecordBatch::try_new(Arc::clone(&self.read_schema), arrays)
            .map_err(QuiverError::from)?;
        let Some(split) = &self.split else {
            return self.add(part, 0, read);
        };
        let draws = batch.column(split.draw).as_primitive::<Float64Type>();
        let sides =
            quiver_engine::dataset::split_rows(&read, draws, &[split.train, split.held_out])?;
        let mut bytes = 0;
        for (side, rows) in sides.into_iter().enumerate() {
            match self.add(part, side, rows)? {
                Some(b) => bytes += b,
                None => return Ok(None),
            }
        }
        Ok(Some(bytes))
    }

    /// Adds the rows of one side (0: training, 1: held out) of a batch, of the read schema:
    /// the training rows' moments and value counts, the rows encoded when they can be
    /// ([`OnePassFit::encode_as_read`]) and hold no null, else kept as read.
    fn add(&self, part: &mut OnePassPart, side: usize, read: RecordBatch) -> Result<Option<usize>> {
        let rows = read.num_rows();
        if rows == 0 {
            return Ok(Some(0));
        }
        let n = self.inputs.len();
        let mut nulls = false;
        for (j, ((_, _, kind), name)) in self.inputs.iter().zip(&self.params.input_cols).enumerate()
        {
            let a = read.column(j);
            if side == 0 {
                match kind {
                    ColumnKind::Categorical => part.counts[j].add(a)?,
                    _ => part.moments[j].add(&numbers(a, name)?),
                }
            }
            nulls |= a.null_count() > 0;
        }
        if side == 0 {
            part.train_rows += rows as u64;
            if self.class_label {
                part.label_counts.add(read.column(n))?;
            }
        }
        let kept = if nulls || !self.encode_as_read {
            Kept::Read(read)
        } else {
            let label = read.columns().get(n).cloned();
            match self.encoded(
                &self.interim,
                &self.schema,
                &read.columns()[..n],
                label,
                rows,
            ) {
                Ok(b) => Kept::Encoded(b),
                Err(e) if refused(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let bytes = match &kept {
            Kept::Encoded(b) | Kept::Read(b) => b.get_array_memory_size(),
        };
        part.sides[side].push(kept);
        Ok(Some(bytes))
    }

    /// The batch of `arrays` (the input columns) encoded by `encoder`, beside the label, of
    /// `schema`.
    fn encoded(
        &self,
        encoder: &Encoder,
        schema: &SchemaRef,
        arrays: &[ArrayRef],
        label: Option<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        let values = encoder.encode(arrays, rows)?;
        let mut columns: Vec<ArrayRef> = vec![Arc::new(vector_array(values, encoder.derived.dim)?)];
        columns.extend(label);
        Ok(RecordBatch::try_new(Arc::clone(schema), columns).map_err(QuiverError::from)?)
    }

    /// The fitted stage, the encoded batches of each partition (in the order read) and the
    /// number of rows, from the partitions' shares in partition order; `None` when a batch
    /// kept as read holds a value the encoding refuses, as in [`OnePassFit::push`], or when
    /// the rows are split and none trains (the usual path says so). The batches kept as read
    /// are encoded in parallel on the current rayon pool (run it inside
    /// `QuiverSession::run_compute`). No rows is an error, as
    /// for [`Estimator::fit`](crate::api::Estimator::fit), and so is a class label the fit
    /// refuses (nulls, too many classes), with the fit's message.
    pub fn finish(&self, mut parts: Vec<OnePassPart>) -> Result<Option<OnePassRows>> {
        let rows: u64 = parts.iter().map(|p| p.rows).sum();
        let train_rows: u64 = parts.iter().map(|p| p.train_rows).sum();
        if rows == 0 {
            return Err(QuiverError::EmptyDataset {
                context: "automatic preprocessing".to_string(),
            }
            .into());
        }
        if train_rows == 0 {
            return Ok(None);
        }
        let n = self.inputs.len();
        let mut moments = vec![Moments::default(); n];
        let mut counts: Vec<Counts> = (0..n).map(|_| Counts::default()).collect();
        let mut label_counts = Counts::default();
        for p in &mut parts {
            for (m, o) in moments.iter_mut().zip(&p.moments) {
                m.merge(o);
            }
            for (c, o) in counts.iter_mut().zip(std::mem::take(&mut p.counts)) {
                c.merge(o);
            }
            label_counts.merge(std::mem::take(&mut p.label_counts));
        }
        let columns = self
            .inputs
            .iter()
            .zip(&self.params.input_cols)
            .zip(moments.iter().zip(counts))
            .map(|(((_, t, kind), name), (m, c))| {
                let mut info = ColumnInfo::unread(name, t, *kind, train_rows);
                if *kind == ColumnKind::Categorical {
                    info.set_categories(c.into_vec(), self.params.max_categories);
                } else {
                    let some = |v: f64| (m.finite > 0).then_some(v);
                    info.set_moments(
                        m.count,
                        m.finite,
                        [some(m.mean), m.stddev(), some(m.min), some(m.max)],
                    );
                }
                info
            })
            .collect();
        let classes = match (&self.params.label_col, self.label) {
            (Some(l), Some(_)) if self.class_label => {
                let boolean = self.read_schema.field(n).data_type() == &DataType::Boolean;
                Some(label_classes_of(l, boolean, label_counts.into_vec())?)
            }
            _ => None,
        };
        let model = self.params.model(columns, classes)?;
        let dim = model.encoder.derived.dim;
        let copied =
            |(_, _, kind): &(usize, DataType, ColumnKind)| *kind != ColumnKind::Categorical;
        let moments = (dim == n
            && self.inputs.iter().all(copied)
            && moments.iter().all(|m| m.finite == train_rows))
        .then(|| {
            FeatureMoments::new(
                train_rows,
                moments.iter().map(|m| m.mean).collect(),
                moments.iter().map(|m| m.stddev().unwrap_or(0.0)).collect(),
            )
        });
        let label = self.schema.fields().get(1).map(|f| f.as_ref());
        let schema = encoded_schema(&self.params.output_col, dim, label);
        let mut sides: [Vec<Vec<RecordBatch>>; 2] = [
            Vec::with_capacity(parts.len()),
            Vec::with_capacity(parts.len()),
        ];
        for p in parts {
            for (out, kept) in sides.iter_mut().zip(p.sides) {
                // In parallel on the current rayon pool, in the order read.
                let batches: Option<Vec<RecordBatch>> = kept
                    .into_par_iter()
                    .map(|k| self.encode_kept(&model, &schema, k))
                    .collect::<Result<_>>()?;
                let Some(batches) = batches else {
                    return Ok(None);
                };
                out.push(batches);
            }
        }
        let [train, held_out] = sides;
        Ok(Some(OnePassRows {
            model,
            schema,
            train,
            held_out: self.split.is_some().then_some(held_out),
            rows,
            moments,
        }))
    }
}

impl OnePassFit {
    /// A batch as [`OnePassFit::finish`] gives it: encoded as read, or encoded now by the
    /// fitted stage (its class label as class indices); `None` for a value the encoding
    /// refuses.
    fn encode_kept(
        &self,
        model: &PreprocessorModel,
        schema: &SchemaRef,
        kept: Kept,
    ) -> Result<Option<RecordBatch>> {
        let b = match kept {
            Kept::Encoded(b) => return Ok(Some(b)),
            Kept::Read(b) => b,
        };
        let n = self.inputs.len();
        let label = match (b.columns().get(n), &model.encoder.label) {
            (Some(l), Some(classes)) => Some(class_indices(l, classes)?),
            (l, _) => l.cloned(),
        };
        match self.encoded(
            &model.encoder,
            schema,
            &b.columns()[..n],
            label,
            b.num_rows(),
        ) {
            Ok(b) => Ok(Some(b)),
            Err(e) if refused(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What an encoded batch holds: the feature vector of `dim` values (`output`), then the label.
fn encoded_schema(output: &str, dim: usize, label: Option<&Field>) -> SchemaRef {
    let mut fields = vec![Field::new(output, vector_type(dim), false)];
    fields.extend(label.cloned());
    Arc::new(Schema::new(fields))
}

/// A class label's values as their class indices (`transform`'s [`LABEL_INDEX`]): an unseen
/// value (a held-out row's class no training row has) or a null is null.
fn class_indices(label: &ArrayRef, classes: &LabelClasses) -> Result<ArrayRef> {
    let mut index = arrow::array::Float64Builder::with_capacity(label.len());
    for_each_text(label, |_, v| {
        let i = v.and_then(|v| classes.classes.binary_search_by(|c| c.as_str().cmp(v)).ok());
        index.append_option(i.map(|i| i as f64));
    })?;
    Ok(Arc::new(index.finish()))
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        AsArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int64Array, StringArray,
    };
    use arrow::datatypes::Float64Type;
    use datafusion::prelude::col;
    use quiver_engine::{Dataset, QuiverConfig, QuiverSession, SPLIT_DRAW};

    use super::*;
    use crate::api::{Estimator, Transformer};
    use crate::feature::MissingNumbers;

    /// Rows of an Int64 column (nulls in the first partition's second batch), a Float32
    /// column, a string, a Float64 column (nulls in the second partition's third batch), a
    /// boolean (nulls in the first partition's second batch), a date, a number label, a string
    /// of four categories (nulls in the first partition's third batch) and a string label, in
    /// `parts` partitions of three batches of 7 rows.
    fn partitions(parts: usize, bad: Option<(usize, f64)>) -> Vec<Vec<RecordBatch>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Float32, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("c", DataType::Float64, true),
            Field::new("t", DataType::Boolean, true),
            Field::new("d", DataType::Date32, false),
            Field::new("y", DataType::Float64, false),
            Field::new("g", DataType::Utf8, true),
            Field::new("lab", DataType::Utf8, false),
        ]));
        let mut row = 0;
        (0..parts)
            .map(|p| {
                (0..3)
                    .map(|k| {
                        let rows: Vec<usize> = (row..row + 7).collect();
                        row += 7;
                        let a: Int64Array = rows
                            .iter()
                            .map(|&r| {
                                ((p, k) != (0, 1) || r % 3 != 0).then_some((r * 37 % 11) as i64)
                            })
                            .collect();
                        let b: Float32Array =
                            rows.iter().map(|&r| (r as f32) * 0.25 - 3.0).collect();
                        let names: StringArray =
                            rows.iter().map(|&r| Some(format!("n{r}"))).collect();
                        let t: BooleanArray = rows
                            .iter()
                            .map(|&r| ((p, k) != (0, 1) || r % 4 != 1).then_some(r % 3 == 1))
                            .collect();
                        let d =
                            Date32Array::from_iter_values(rows.iter().map(|&r| 19_000 + r as i32));
                        let c: Float64Array = rows
                            .iter()
                            .map(|&r| {
                                if (p, k) == (1, 2) && r % 2 == 0 {
                                    return None;
                                }
                                match bad {
                                    Some((at, v)) if at == r => Some(v),
                                    _ => Some(((r * 7919) % 101) as f64 / 7.0),
                                }
                            })
                            .collect();
                        let y: Float64Array =
                            rows.iter().map(|&r| (r % 3 == 0) as u8 as f64).collect();
                        let g: StringArray = rows
                            .iter()
                            .map(|&r| {
                                let v = ["w", "x", "y", "z"][r * 5 % 7 % 4];
                                ((p, k) != (0, 2) || r % 3 != 2).then_some(v)
                            })
                            .collect();
                        let lab: StringArray = rows
                            .iter()
                            .map(|&r| Some(if r % 3 == 0 { "yes" } else { "no" }))
                            .collect();
                        RecordBatch::try_new(
                            Arc::clone(&schema),
                            vec![
                                Arc::new(a),
                                Arc::new(b),
                                Arc::new(names),
                                Arc::new(c),
                                Arc::new(t),
                                Arc::new(d),
                                Arc::new(y),
                                Arc::new(g),
                                Arc::new(lab),
                            ],
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    /// The one read over `parts`, a give-up as an error saying so.
    fn one_pass(prep: &Preprocessor, parts: &[Vec<RecordBatch>]) -> Result<OnePassRows> {
        let given_up = || MllibError::InvalidParam {
            param: "rows".to_string(),
            reason: "given up".to_string(),
        };
        let fit = prep.one_pass(&parts[0][0].schema()).unwrap();
        read_all(&fit, parts)?.ok_or_else(given_up)
    }

    /// Every partition's batches pushed into a share of `fit`, then finished; `None` when a
    /// batch or the finish gives the read up.
    fn read_all(fit: &OnePassFit, parts: &[Vec<RecordBatch>]) -> Result<Option<OnePassRows>> {
        let mut shares = Vec::new();
        for batches in parts {
            let mut share = fit.part();
            for b in batches {
                if fit.push(&mut share, b)?.is_none() {
                    return Ok(None);
                }
            }
            shares.push(share);
        }
        fit.finish(shares)
    }

    /// The one-pass stage equals the staged one: the counts, nulls and moments of every
    /// column (to rounding: the moments merge in another order).
    fn same_stage(model: &PreprocessorModel, staged: &PreprocessorModel) {
        assert_eq!(model.feature_names(), staged.feature_names());
        for (x, e) in model
            .encoder()
            .columns()
            .iter()
            .zip(staged.encoder().columns())
        {
            assert_eq!(
                (&x.name, &x.data_type, x.kind, x.rows, x.nulls, x.non_finite),
                (&e.name, &e.data_type, e.kind, e.rows, e.nulls, e.non_finite)
            );
            assert_eq!((&x.categories, x.distinct), (&e.categories, e.distinct));
            for (u, v) in [
                (x.mean, e.mean),
                (x.stddev, e.stddev),
                (x.min, e.min),
                (x.max, e.max),
            ] {
                assert_eq!(u.is_some(), v.is_some(), "{}", x.name);
                let (Some(u), Some(v)) = (u, v) else {
                    continue;
                };
                assert!(
                    (u - v).abs() <= 1e-12 * v.abs().max(1.0),
                    "{}: {u} vs {v}",
                    x.name
                );
            }
        }
    }

    /// Each row's vector `v` and label (`label`), as bits (NaN, a kept null, equals NaN), in
    /// the order of `batches`.
    fn vectors(batches: &[RecordBatch], label: &str) -> Vec<Vec<u64>> {
        let b = arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap();
        let list = b.column_by_name("v").unwrap().as_fixed_size_list();
        let values = list.values().as_primitive::<Float64Type>().values();
        let y = b
            .column_by_name(label)
            .unwrap()
            .as_primitive::<Float64Type>();
        values
            .chunks(list.value_length() as usize)
            .zip(y.values())
            .map(|(v, y)| v.iter().chain([y]).map(|x| x.to_bits()).collect())
            .collect()
    }

    /// [`vectors`] sorted by the second value (`b`, distinct in every row): the staged rows
    /// come in their partitions' order of arrival.
    fn sorted(mut rows: Vec<Vec<u64>>) -> Vec<Vec<u64>> {
        rows.sort_by(|a, b| f64::from_bits(a[1]).total_cmp(&f64::from_bits(b[1])));
        rows
    }

    /// The same rows: every value bit-equal (NaN, a kept null, equals NaN), but an imputed
    /// mean, which may differ by rounding (the moments merge in another order).
    fn same_rows(got: Vec<Vec<u64>>, want: Vec<Vec<u64>>) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            let close = g.iter().zip(w).all(|(&x, &y)| {
                let (u, v) = (f64::from_bits(x), f64::from_bits(y));
                x == y || (u - v).abs() <= 1e-12 * v.abs().max(1.0)
            });
            assert!(close, "{g:?} vs {w:?}");
        }
    }

    /// `transform`'s rows of `data` by `staged`, in the order read.
    async fn transformed(staged: &PreprocessorModel, data: &Dataset) -> Vec<RecordBatch> {
        let df = staged.transform(data).unwrap().dataframe().clone();
        df.collect().await.unwrap()
    }

    /// The rows of [`partitions`] as one dataset.
    fn dataset(session: &QuiverSession, parts: &[Vec<RecordBatch>]) -> Dataset {
        let table = datafusion::datasource::MemTable::try_new(parts[0][0].schema(), parts.to_vec())
            .unwrap();
        Dataset::new(session.context().read_table(Arc::new(table)).unwrap())
    }

    /// The preprocessings the tests fit in one read: number, boolean and date columns with a
    /// number label; numbers and a string column with a string label (no row encoded as read:
    /// the categories and classes need the whole read). Each with `missing`, and the label
    /// column the encoded rows hold.
    fn preprocessors(missing: MissingNumbers) -> [(Preprocessor, &'static str); 2] {
        let numbers = Preprocessor::new(["a", "b", "c", "t", "d"]).label("y", true);
        let strings = Preprocessor::new(["a", "b", "g", "c"]).label("lab", true);
        [(numbers, "y"), (strings, LABEL_INDEX)]
            .map(|(p, label)| (p.missing(missing).output_col("v"), label))
    }

    /// The stage fitted and the rows encoded in one read equal the stage [`Estimator::fit`]
    /// fits and the rows its `transform` writes: the stage ([`same_stage`]: moments,
    /// categories), the imputed nulls of a batch that held some, the class indices, and every
    /// encoded value.
    #[tokio::test]
    async fn one_read_equals_fit_then_transform() {
        let parts = partitions(3, None);
        let session = QuiverSession::embedded_with(QuiverConfig::default()).unwrap();
        let data = dataset(&session, &parts);
        for missing in [MissingNumbers::Impute, MissingNumbers::Keep] {
            for (prep, label) in preprocessors(missing) {
                let staged = prep.fit(&session, &data).await.unwrap();
                let OnePassRows {
                    model,
                    schema,
                    train: batches,
                    held_out,
                    rows,
                    moments,
                } = one_pass(&prep, &parts).unwrap();
                assert_eq!(rows, 63);
                assert!(held_out.is_none());
                // Nulls and a string column: the features' moments are not the columns'.
                assert!(moments.is_none());
                same_stage(&model, &staged);
                let columns = model.encoder().columns();
                assert_eq!(columns[0].nulls, 2);
                let got: Vec<RecordBatch> = batches.into_iter().flatten().collect();
                assert_eq!(got[0].schema(), schema);
                assert_eq!(schema.field(0).name(), "v");
                let g = vectors(&got, label);
                assert_eq!(g.len(), 63);
                let want = vectors(&transformed(&staged, &data).await, label);
                same_rows(sorted(g.clone()), sorted(want));
                if missing == MissingNumbers::Impute {
                    // Row 9's `a` is null: the mean of the column.
                    assert_eq!(f64::from_bits(g[9][0]), columns[0].mean.unwrap());
                }
                if label == "y" {
                    assert_eq!(g[0].len(), 6);
                    assert_eq!(columns[2].nulls, 3);
                    assert_eq!(columns[3].nulls, 2);
                    assert_eq!(columns[3].kind, ColumnKind::Boolean);
                    assert_eq!(columns[4].kind, ColumnKind::Temporal);
                } else {
                    assert_eq!(columns[2].kind, ColumnKind::Categorical);
                    assert_eq!(columns[2].categories, ["w", "x", "y", "z"]);
                    assert_eq!(columns[2].nulls, 3);
                    let classes = &model.label_classes().unwrap().classes;
                    assert_eq!(classes, &["no", "yes"]);
                    // Row 0's label is "yes": class 1.
                    assert_eq!(*g[0].last().unwrap(), 1f64.to_bits());
                }
            }
        }
    }

    /// Three [`partitions`] with each row's split draw (`seed`) added, as a dataset of a new
    /// session and as the batches read from it.
    async fn drawn_partitions(seed: u64) -> (QuiverSession, Dataset, Vec<Vec<RecordBatch>>) {
        let parts = partitions(3, None);
        let session = QuiverSession::embedded_with(QuiverConfig::default()).unwrap();
        let data = dataset(&session, &parts);
        let drawn = data.with_split_draw(&data.columns(), seed).unwrap();
        let read = drawn
            .dataframe()
            .clone()
            .collect_partitioned()
            .await
            .unwrap();
        (session, drawn, read)
    }

    /// Split by the rows' draws, the one read fits the stage on the training rows only and
    /// encodes each side as [`Dataset::random_split_on`] over the same draws followed by
    /// [`Estimator::fit`] on the training side and `transform` of each side: the same rows on
    /// each side, the same stage, the held-out nulls imputed with the training means.
    #[tokio::test]
    async fn split_read_equals_split_then_fit_then_transform() {
        let seed = 11;
        let (session, drawn, read) = drawn_partitions(seed).await;
        let weights = [0.6, 0.4];
        let bounds = quiver_engine::dataset::split_bounds(&weights).unwrap();
        let sides = drawn
            .random_split_on(&[SPLIT_DRAW.to_string()], &weights, seed)
            .unwrap();
        // Nulls on both sides: the held-out ones are imputed with the training means.
        for side in &sides {
            let null = col("a")
                .is_null()
                .or(col("c").is_null())
                .or(col("t").is_null());
            let nulls = side.dataframe().clone().filter(null).unwrap();
            assert!(nulls.count().await.unwrap() > 0);
        }
        let train_rows = sides[0].count().await.unwrap() as u64;
        for missing in [MissingNumbers::Impute, MissingNumbers::Keep] {
            for (prep, label) in preprocessors(missing) {
                let staged = prep.fit(&session, &sides[0]).await.unwrap();
                let fit = prep
                    .one_pass(&read[0][0].schema())
                    .unwrap()
                    .split_on(&read[0][0].schema(), SPLIT_DRAW, bounds[0], bounds[1])
                    .unwrap();
                let got = read_all(&fit, &read).unwrap().expect("every batch taken");
                assert_eq!(got.rows, 63);
                same_stage(&got.model, &staged);
                assert_eq!(got.model.encoder().columns()[0].rows, train_rows);
                let held_out = got.held_out.unwrap();
                for (side, batches) in [(0, got.train), (1, held_out)] {
                    let batches: Vec<RecordBatch> = batches.into_iter().flatten().collect();
                    let want = vectors(&transformed(&staged, &sides[side]).await, label);
                    same_rows(sorted(vectors(&batches, label)), sorted(want));
                }
            }
        }
        // A draw column that is not a number is not split on.
        let fit = Preprocessor::new(["a"])
            .one_pass(&read[0][0].schema())
            .unwrap();
        assert!(
            fit.split_on(&read[0][0].schema(), "d", bounds[0], bounds[1])
                .is_none()
        );
    }

    /// With number columns only and no null among the training rows (`b`, a Float32, and `d`,
    /// a date), the read's moments are those of the encoded training vectors: their means and
    /// sample deviations element by element, over the training rows only when split. A column
    /// with a null (`a`) among them gives none.
    #[tokio::test]
    async fn null_free_numbers_give_the_encoded_features_moments() {
        let (_, _, read) = drawn_partitions(5).await;
        let schema = read[0][0].schema();
        let bounds = quiver_engine::dataset::split_bounds(&[0.7, 0.3]).unwrap();
        let prep = Preprocessor::new(["b", "d"])
            .label("y", false)
            .output_col("v");
        for split in [false, true] {
            let fit = prep.one_pass(&schema).unwrap();
            let fit = match split {
                true => fit
                    .split_on(&schema, SPLIT_DRAW, bounds[0], bounds[1])
                    .unwrap(),
                false => fit,
            };
            let got = read_all(&fit, &read).unwrap().expect("every batch taken");
            let train: Vec<RecordBatch> = got.train.into_iter().flatten().collect();
            let rows: Vec<Vec<f64>> = vectors(&train, "y")
                .iter()
                .map(|r| r[..2].iter().map(|&x| f64::from_bits(x)).collect())
                .collect();
            assert!(rows.len() < 63 || !split, "some rows held out");
            assert!(rows.len() == 63 || split, "every row trains");
            let m = got.moments.expect("null-free number columns");
            assert_eq!(m.rows, rows.len() as u64);
            let n = rows.len() as f64;
            for j in 0..2 {
                let mean = rows.iter().map(|r| r[j]).sum::<f64>() / n;
                let var = rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / (n - 1.0);
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
                assert!(
                    close(m.mean[j], mean),
                    "{split} {j}: {} vs {mean}",
                    m.mean[j]
                );
                assert!(close(m.std[j], var.sqrt()), "{split} {j}");
            }
        }
        let with_nulls = Preprocessor::new(["a", "b"])
            .label("y", false)
            .output_col("v");
        let fit = with_nulls.one_pass(&schema).unwrap();
        assert!(read_all(&fit, &read).unwrap().unwrap().moments.is_none());
    }

    /// What the one read does not take (a string label for a regression, a column of a type
    /// the preprocessing refuses, a missing column) gives `None`; a class label the fit refuses
    /// is refused with its message; an infinite value gives the read up (the usual path
    /// reports it with its row in the dataset), whether its batch is encoded as read or
    /// (holding a null) at the end.
    #[tokio::test]
    async fn other_columns_go_the_usual_way_and_bad_values_are_named() {
        let parts = partitions(2, None);
        let schema = parts[0][0].schema();
        assert!(
            Preprocessor::new(["a", "name"])
                .label("lab", true)
                .one_pass(&schema)
                .is_some()
        );
        assert!(
            Preprocessor::new(["a"])
                .label("lab", false)
                .one_pass(&schema)
                .is_none()
        );
        let mut fields = schema.fields().to_vec();
        fields.push(Arc::new(Field::new("bytes", DataType::Binary, true)));
        let with_bytes = Schema::new(fields);
        assert!(
            Preprocessor::new(["a", "bytes"])
                .one_pass(&with_bytes)
                .is_none()
        );
        assert!(Preprocessor::new(["a", "zzz"]).one_pass(&schema).is_none());
        // `g` has nulls: refused as a label, as the staged fit refuses it.
        let err = one_pass(&Preprocessor::new(["a"]).label("g", true), &parts)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("'g' has 3 null values"), "{err}");
        let parts = partitions(2, Some((23, f64::INFINITY)));
        let err = one_pass(&Preprocessor::new(["a", "c"]), &parts)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("given up"), "{err}");
        // Row 37 is in partition 1's third batch, which holds nulls: kept as read, encoded at
        // the end.
        let parts = partitions(2, Some((37, f64::INFINITY)));
        let fit = Preprocessor::new(["a", "c"])
            .one_pass(&parts[0][0].schema())
            .unwrap();
        let mut shares = Vec::new();
        for batches in &parts {
            let mut share = fit.part();
            for b in batches {
                assert!(fit.push(&mut share, b).unwrap().is_some());
            }
            shares.push(share);
        }
        assert!(fit.finish(shares).unwrap().is_none());
        let empty: Vec<Vec<RecordBatch>> = vec![vec![parts[0][0].slice(0, 0)]];
        let err = one_pass(&Preprocessor::new(["a"]), &empty)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("automatic preprocessing"), "{err}");
    }
}
