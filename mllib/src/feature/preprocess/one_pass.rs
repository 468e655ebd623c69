//! Fitting the automatic preprocessing and encoding the rows in the same read of them.
//!
//! `CREATE MODEL` without a split fits the preprocessing on exactly the rows the model trains
//! on. Done stage by stage that is three reads of the query's result and two copies of it in
//! memory: the rows kept as read, the statistics query over them, then the encoded vectors
//! written beside them. A column read as a number (numbers, booleans, dates and timestamps)
//! needs no statistic to be encoded but the mean its nulls become, so here each batch's column moments are added as the batch arrives and, when it has
//! no null, it is encoded at once and the batch as read is let go (its memory taken by the next
//! batch read): one read, one copy. A batch with nulls is kept as read and encoded once the
//! means are known. The statistics are the moments the statistics query computes (merged in
//! the order of the partitions), and the encoding is the fitted [`Encoder`]'s, so the stage and
//! the vectors equal what [`Estimator::fit`](crate::api::Estimator::fit) and `transform` give.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quiver_engine::QuiverError;
use quiver_engine::moments::Moments;
use quiver_engine::vector::{vector_array, vector_type};

use super::{ColumnInfo, ColumnKind, Encoder, Preprocessor, PreprocessorModel, numbers};
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
    /// Encodes a batch without nulls: it needs no statistic.
    interim: Encoder,
    /// What an encoded batch holds: the feature vector, then the label.
    schema: SchemaRef,
    /// What a batch kept as read holds: the input columns, then the label.
    read_schema: SchemaRef,
}

/// One partition's share of the read: its columns' moments and its rows, each batch encoded
/// or (holding a null) kept as read, in the order read.
pub struct OnePassPart {
    moments: Vec<Moments>,
    rows: u64,
    batches: Vec<Kept>,
}

/// What [`OnePassFit::finish`] gives: the fitted stage, each partition's encoded batches in
/// the order read, and the number of rows.
pub type OnePassRows = (PreprocessorModel, Vec<Vec<RecordBatch>>, u64);

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
    /// The one-pass fit over rows of `schema`, when every input column is read as a number
    /// (numbers, booleans, dates and timestamps: not strings, whose categories need the whole
    /// read first) and the label (if any) is a number; `None` otherwise, and for parameters
    /// [`Preprocessor::check`] refuses (then fit and transform as usual, which say what is
    /// wrong).
    pub fn one_pass(&self, schema: &Schema) -> Option<OnePassFit> {
        self.check().ok()?;
        let column = |name: &str, kinds: &[ColumnKind]| {
            let (i, f) = schema.column_with_name(name)?;
            let kind = ColumnKind::of(f.data_type()).filter(|k| kinds.contains(k))?;
            Some((i, f, kind))
        };
        use ColumnKind::{Boolean, Numeric, Temporal};
        let mut inputs = Vec::with_capacity(self.input_cols.len());
        let mut columns = Vec::with_capacity(self.input_cols.len());
        let mut read_fields = Vec::with_capacity(self.input_cols.len() + 1);
        for name in &self.input_cols {
            let (i, f, kind) = column(name, &[Numeric, Boolean, Temporal])?;
            inputs.push((i, f.data_type().clone(), kind));
            columns.push(ColumnInfo::unread(name, f.data_type(), kind, 0));
            read_fields.push(f.clone());
        }
        let label = match &self.label_col {
            Some(l) => Some(column(l, &[Numeric])?),
            None => None,
        };
        let interim = Encoder::new(columns, self.encoding, self.missing, None);
        let mut fields = vec![Field::new(
            &self.output_col,
            vector_type(interim.derived.dim),
            false,
        )];
        fields.extend(label.map(|(_, f, _)| f.clone()));
        read_fields.extend(label.map(|(_, f, _)| f.clone()));
        Some(OnePassFit {
            params: self.clone(),
            inputs,
            label: label.map(|(i, _, _)| i),
            interim,
            schema: Arc::new(Schema::new(fields)),
            read_schema: Arc::new(Schema::new(read_fields)),
        })
    }
}

impl OnePassFit {
    /// What the encoded batches hold: the feature vector (the stage's output column), then
    /// the label.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// A partition's empty share.
    pub fn part(&self) -> OnePassPart {
        OnePassPart {
            moments: vec![Moments::default(); self.inputs.len()],
            rows: 0,
            batches: Vec::new(),
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
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.inputs.len() + 1);
        let mut nulls = false;
        for (((i, _, _), name), m) in self
            .inputs
            .iter()
            .zip(&self.params.input_cols)
            .zip(&mut part.moments)
        {
            let a = batch.column(*i);
            m.add(&numbers(a, name)?);
            nulls |= a.null_count() > 0;
            arrays.push(Arc::clone(a));
        }
        part.rows += rows as u64;
        let label = self.label.map(|i| Arc::clone(batch.column(i)));
        let kept = if nulls {
            arrays.extend(label);
            RecordBatch::try_new(Arc::clone(&self.read_schema), arrays)
                .map(Kept::Read)
                .map_err(QuiverError::from)?
        } else {
            match self.encoded(&self.interim, &arrays, label, rows) {
                Ok(b) => Kept::Encoded(b),
                Err(e) if refused(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let bytes = match &kept {
            Kept::Encoded(b) | Kept::Read(b) => b.get_array_memory_size(),
        };
        part.batches.push(kept);
        Ok(Some(bytes))
    }

    /// The batch of `arrays` (the input columns) encoded by `encoder`, beside the label.
    fn encoded(
        &self,
        encoder: &Encoder,
        arrays: &[ArrayRef],
        label: Option<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        let values = encoder.encode(arrays, rows)?;
        let mut columns: Vec<ArrayRef> = vec![Arc::new(vector_array(values, encoder.derived.dim)?)];
        columns.extend(label);
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(QuiverError::from)?)
    }

    /// The fitted stage, the encoded batches of each partition (in the order read) and the
    /// number of rows, from the partitions' shares in partition order; `None` when a batch
    /// kept as read (it held a null) holds a value the encoding refuses, as in
    /// [`OnePassFit::push`]. No rows is an error, as for
    /// [`Estimator::fit`](crate::api::Estimator::fit).
    pub fn finish(&self, parts: Vec<OnePassPart>) -> Result<Option<OnePassRows>> {
        let rows: u64 = parts.iter().map(|p| p.rows).sum();
        if rows == 0 {
            return Err(QuiverError::EmptyDataset {
                context: "automatic preprocessing".to_string(),
            }
            .into());
        }
        let mut moments = vec![Moments::default(); self.inputs.len()];
        for p in &parts {
            moments
                .iter_mut()
                .zip(&p.moments)
                .for_each(|(m, o)| m.merge(o));
        }
        let columns = self
            .inputs
            .iter()
            .zip(&self.params.input_cols)
            .zip(&moments)
            .map(|(((_, t, kind), name), m)| {
                let mut info = ColumnInfo::unread(name, t, *kind, rows);
                let some = |v: f64| (m.finite > 0).then_some(v);
                info.set_moments(
                    m.count,
                    m.finite,
                    [some(m.mean), m.stddev(), some(m.min), some(m.max)],
                );
                info
            })
            .collect();
        let model = self.params.model(columns, None)?;
        let n = self.inputs.len();
        let mut out = Vec::with_capacity(parts.len());
        for p in parts {
            let mut batches = Vec::with_capacity(p.batches.len());
            for kept in p.batches {
                batches.push(match kept {
                    Kept::Encoded(b) => b,
                    Kept::Read(b) => {
                        let label = b.columns().get(n).cloned();
                        match self.encoded(&model.encoder, &b.columns()[..n], label, b.num_rows()) {
                            Ok(b) => b,
                            Err(e) if refused(&e) => return Ok(None),
                            Err(e) => return Err(e),
                        }
                    }
                });
            }
            out.push(batches);
        }
        Ok(Some((model, out, rows)))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        AsArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int64Array, StringArray,
    };
    use arrow::datatypes::Float64Type;
    use quiver_engine::{Dataset, QuiverConfig, QuiverSession};

    use super::*;
    use crate::api::{Estimator, Transformer};
    use crate::feature::MissingNumbers;

    /// Rows of an Int64 column (nulls in the first partition's second batch), a Float32
    /// column, a string, a Float64 column (nulls in the second partition's third batch), a
    /// boolean (nulls in the first partition's second batch), a date and a number label, in
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
        let mut shares = Vec::new();
        for batches in parts {
            let mut share = fit.part();
            for b in batches {
                if fit.push(&mut share, b)?.is_none() {
                    return Err(given_up());
                }
            }
            shares.push(share);
        }
        fit.finish(shares)?.ok_or_else(given_up)
    }

    /// The stage fitted and the rows encoded in one read equal the stage [`Estimator::fit`]
    /// fits and the rows its `transform` writes: the counts, nulls and moments of every
    /// column (to rounding: the moments merge in another order), the imputed nulls of a batch
    /// that held some, and every encoded value (exactly).
    #[tokio::test]
    async fn one_read_equals_fit_then_transform() {
        let parts = partitions(3, None);
        let session = QuiverSession::embedded_with(QuiverConfig::default()).unwrap();
        let table =
            datafusion::datasource::MemTable::try_new(parts[0][0].schema(), parts.clone()).unwrap();
        let data = Dataset::new(session.context().read_table(Arc::new(table)).unwrap());
        for missing in [MissingNumbers::Impute, MissingNumbers::Keep] {
            let prep = Preprocessor::new(["a", "b", "c", "t", "d"])
                .label("y", true)
                .missing(missing)
                .output_col("v");
            let staged = prep.fit(&session, &data).await.unwrap();
            let (model, batches, rows) = one_pass(&prep, &parts).unwrap();
            assert_eq!(rows, 63);
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
                for (u, v) in [
                    (x.mean, e.mean),
                    (x.stddev, e.stddev),
                    (x.min, e.min),
                    (x.max, e.max),
                ] {
                    let (u, v) = (u.unwrap(), v.unwrap());
                    assert!(
                        (u - v).abs() <= 1e-12 * v.abs().max(1.0),
                        "{}: {u} vs {v}",
                        x.name
                    );
                }
            }
            assert_eq!(model.encoder().columns()[0].nulls, 2);
            assert_eq!(model.encoder().columns()[2].nulls, 3);
            assert_eq!(model.encoder().columns()[3].nulls, 2);
            assert_eq!(model.encoder().columns()[3].kind, ColumnKind::Boolean);
            assert_eq!(model.encoder().columns()[4].kind, ColumnKind::Temporal);
            let want = staged
                .transform(&data)
                .unwrap()
                .dataframe()
                .clone()
                .collect()
                .await
                .unwrap();
            let want = arrow::compute::concat_batches(&want[0].schema(), &want).unwrap();
            let got: Vec<RecordBatch> = batches.into_iter().flatten().collect();
            let got = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
            assert_eq!(got.schema().field(0).name(), "v");
            // Each row's vector and label, as bits (NaN, a kept null, equals NaN), in the
            // order read; the staged rows come in their partitions' order of arrival, so they
            // are sorted by the vector (`b` is distinct in every row).
            let rows = |b: &RecordBatch| -> Vec<Vec<u64>> {
                let list = b.column_by_name("v").unwrap().as_fixed_size_list();
                let values = list.values().as_primitive::<Float64Type>().values();
                let y = b.column_by_name("y").unwrap().as_primitive::<Float64Type>();
                values
                    .chunks(5)
                    .zip(y.values())
                    .map(|(v, y)| v.iter().chain([y]).map(|x| x.to_bits()).collect())
                    .collect()
            };
            let (g, mut w) = (rows(&got), rows(&want));
            assert_eq!((g.len(), g[0].len()), (63, 6));
            let mut sorted = g.clone();
            sorted.sort_by(|a, b| f64::from_bits(a[1]).total_cmp(&f64::from_bits(b[1])));
            w.sort_by(|a, b| f64::from_bits(a[1]).total_cmp(&f64::from_bits(b[1])));
            assert_eq!(sorted, w, "{missing:?}");
            if missing == MissingNumbers::Impute {
                // Row 9's `a` is null: the mean of the column.
                let mean = model.encoder().columns()[0].mean.unwrap();
                assert_eq!(f64::from_bits(g[9][0]), mean);
            }
        }
    }

    /// What the one read does not take (a string feature, a string label, a missing column)
    /// gives `None`; an infinite value gives the read up (the usual path reports it with its
    /// row in the dataset), whether its batch is encoded as read or (holding a null) at the
    /// end.
    #[tokio::test]
    async fn other_columns_go_the_usual_way_and_bad_values_are_named() {
        let parts = partitions(2, None);
        let schema = parts[0][0].schema();
        assert!(Preprocessor::new(["a", "name"]).one_pass(&schema).is_none());
        assert!(
            Preprocessor::new(["a"])
                .label("name", true)
                .one_pass(&schema)
                .is_none()
        );
        assert!(Preprocessor::new(["a", "zzz"]).one_pass(&schema).is_none());
        assert!(
            Preprocessor::new(["a", "b"])
                .label("y", true)
                .one_pass(&schema)
                .is_some()
        );
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
