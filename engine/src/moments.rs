//! `column_moments(x)`: one pass over a numeric column for what automatic preprocessing needs —
//! the non-null count, the finite count, and the mean, sample standard deviation, minimum and
//! maximum of the finite values — as one struct. It replaces six aggregates and a `CASE` that
//! masked non-finite values: one read of the column, cache-sized chunks each summed and then
//! centred (two passes over the chunk while it is in cache, so the variance does not cancel),
//! merged with Chan et al.'s update.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StructArray, UInt64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

/// Running moments of the finite values (and the counts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Non-null values.
    pub count: u64,
    /// Finite values (not NaN, not ±∞).
    pub finite: u64,
    pub mean: f64,
    /// Σ (x − mean)² over the finite values.
    pub m2: f64,
    pub min: f64,
    pub max: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            count: 0,
            finite: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

/// Values per chunk (32 KB).
const CHUNK: usize = 4096;

impl Moments {
    /// Adds the valid values of a chunk: `valid(i)` says whether value `i` is not null.
    fn add_chunk(&mut self, values: &[f64], valid: impl Fn(usize) -> bool) {
        let ok = |i: usize, v: f64| valid(i) && v.is_finite();
        let (mut n, mut sum) = (0u64, 0.0f64);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, &v) in values.iter().enumerate() {
            let take = ok(i, v);
            n += take as u64;
            sum += if take { v } else { 0.0 };
            lo = if take && v < lo { v } else { lo };
            hi = if take && v > hi { v } else { hi };
        }
        if n == 0 {
            return;
        }
        let mean = sum / n as f64;
        let mut m2 = 0.0;
        for (i, &v) in values.iter().enumerate() {
            let c = if ok(i, v) { v - mean } else { 0.0 };
            m2 += c * c;
        }
        self.merge(&Moments {
            count: 0,
            finite: n,
            mean,
            m2,
            min: lo,
            max: hi,
        });
    }

    /// Adds every non-null value of `array`.
    pub fn add(&mut self, array: &Float64Array) {
        self.count += (array.len() - array.null_count()) as u64;
        let values = array.values();
        match array.nulls().filter(|n| n.null_count() > 0) {
            None => {
                for chunk in values.chunks(CHUNK) {
                    self.add_chunk(chunk, |_| true);
                }
            }
            Some(nulls) => {
                for (c, chunk) in values.chunks(CHUNK).enumerate() {
                    self.add_chunk(chunk, |i| nulls.is_valid(c * CHUNK + i));
                }
            }
        }
    }

    /// Chan et al.'s pairwise merge.
    pub fn merge(&mut self, o: &Moments) {
        self.count += o.count;
        if o.finite == 0 {
            return;
        }
        let (na, nb) = (self.finite as f64, o.finite as f64);
        let n = na + nb;
        let delta = o.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += o.m2 + delta * delta * na * nb / n;
        self.finite += o.finite;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// The sample standard deviation of the finite values (`None` below two of them).
    pub fn stddev(&self) -> Option<f64> {
        (self.finite >= 2).then(|| (self.m2 / (self.finite - 1) as f64).max(0.0).sqrt())
    }
}

/// The struct `column_moments` returns.
pub fn moments_fields() -> Fields {
    Fields::from(vec![
        Field::new("count", DataType::UInt64, false),
        Field::new("finite", DataType::UInt64, false),
        Field::new("mean", DataType::Float64, true),
        Field::new("stddev", DataType::Float64, true),
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
    ])
}

/// `column_moments(x)` over a numeric column (cast to DOUBLE).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MomentsUdaf {
    signature: Signature,
}

impl Default for MomentsUdaf {
    fn default() -> Self {
        MomentsUdaf {
            signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

const STATE: [&str; 6] = ["count", "finite", "mean", "m2", "min", "max"];

impl AggregateUDFImpl for MomentsUdaf {
    fn name(&self) -> &str {
        "column_moments"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Struct(moments_fields()))
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> DFResult<Box<dyn Accumulator>> {
        Ok(Box::new(MomentsAccumulator(Moments::default())))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DFResult<Vec<FieldRef>> {
        Ok(STATE
            .iter()
            .map(|s| {
                Arc::new(Field::new(
                    format!("{}[{s}]", args.name),
                    DataType::Float64,
                    true,
                ))
            })
            .collect())
    }
}

#[derive(Debug)]
struct MomentsAccumulator(Moments);

impl Accumulator for MomentsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DFResult<()> {
        self.0.add(values[0].as_primitive::<Float64Type>());
        Ok(())
    }

    fn evaluate(&mut self) -> DFResult<ScalarValue> {
        let m = &self.0;
        let some = |v: f64| (m.finite > 0).then_some(v);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(vec![m.count])),
            Arc::new(UInt64Array::from(vec![m.finite])),
            Arc::new(Float64Array::from(vec![some(m.mean)])),
            Arc::new(Float64Array::from(vec![m.stddev()])),
            Arc::new(Float64Array::from(vec![some(m.min)])),
            Arc::new(Float64Array::from(vec![some(m.max)])),
        ];
        Ok(ScalarValue::Struct(Arc::new(StructArray::try_new(
            moments_fields(),
            cols,
            None,
        )?)))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
    }

    fn state(&mut self) -> DFResult<Vec<ScalarValue>> {
        let m = &self.0;
        Ok(
            [m.count as f64, m.finite as f64, m.mean, m.m2, m.min, m.max]
                .into_iter()
                .map(|v| ScalarValue::Float64(Some(v)))
                .collect(),
        )
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DFResult<()> {
        let cols: Vec<&Float64Array> = states.iter().map(|a| a.as_primitive()).collect();
        for r in 0..cols[0].len() {
            if cols[0].is_null(r) {
                continue;
            }
            let v = |i: usize| cols[i].value(r);
            self.0.merge(&Moments {
                count: v(0) as u64,
                finite: v(1) as u64,
                mean: v(2),
                m2: v(3),
                min: v(4),
                max: v(5),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunked moments equal the textbook two-pass values; nulls, NaN and ±∞ are counted apart;
    /// a large offset does not cancel the variance; merging any split gives the same.
    #[test]
    fn moments_match_two_pass_values() {
        let n = 10_000;
        let raw: Vec<Option<f64>> = (0..n)
            .map(|i| match i % 97 {
                3 => None,
                5 => Some(f64::NAN),
                7 => Some(f64::INFINITY),
                _ => Some(1e9 + ((i * 7919) % 1013) as f64 / 7.0),
            })
            .collect();
        let finite: Vec<f64> = raw
            .iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let var =
            finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (finite.len() - 1) as f64;
        let array = Float64Array::from(raw.clone());
        let mut whole = Moments::default();
        whole.add(&array);
        assert_eq!(whole.count, raw.iter().flatten().count() as u64);
        assert_eq!(whole.finite, finite.len() as u64);
        assert!((whole.mean - mean).abs() <= 1e-15 * mean);
        assert!((whole.stddev().unwrap() - var.sqrt()).abs() <= 1e-9 * var.sqrt());
        assert_eq!(
            whole.min,
            finite.iter().copied().fold(f64::INFINITY, f64::min)
        );
        assert_eq!(
            whole.max,
            finite.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
        let mut parts = Moments::default();
        for cut in [(0, 17), (17, 5000), (5000, n)] {
            let mut m = Moments::default();
            m.add(&Float64Array::from(raw[cut.0..cut.1].to_vec()));
            parts.merge(&m);
        }
        assert_eq!(
            (parts.count, parts.finite, parts.min, parts.max),
            (whole.count, whole.finite, whole.min, whole.max)
        );
        assert!((parts.stddev().unwrap() - whole.stddev().unwrap()).abs() <= 1e-9 * var.sqrt());
        let empty = Moments::default();
        assert_eq!(empty.stddev(), None);
    }
}
