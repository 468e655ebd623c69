//! Batch prediction on a CUDA device against the CPU, model by model: linear regression,
//! binomial and multinomial logistic regression, k-means and multinomial naive Bayes — f64
//! to 1e-12 relative, f32 to 1e-4 — and tree ensembles (boosted, forests: exactly, with
//! missing values routed), batches that span several transfer chunks. Runs where a
//! device is usable and says it was skipped elsewhere (every CI machine), as the S3 tests do
//! without their server.
//!
//! The device policy is process-wide, so this file holds one test: nothing else in this
//! binary runs while it switches between the CPU and the device.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, FixedSizeListArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Schema};
use quiver_engine::device::{self, DeviceChoice, DevicePolicy, Placement, Precision};
use quiver_engine::{BatchFunction, Dataset, FeatureBatch, QuiverConfig, QuiverSession};
use quiver_mllib::api::RowStage;
use quiver_mllib::{
    Estimator, GBTClassifier, GBTRegressor, KMeans, LinearRegression, LogisticRegression,
    NaiveBayes, NaiveBayesType, RandomForestClassifier, Transformer,
};

const DIM: usize = 7;

/// Seeded rows: non-negative counts-like features (naive Bayes takes them too), a linear
/// target, a binary and a three-class label.
fn rows(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n * DIM)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 1000) as f64 / 100.0
        })
        .collect()
}

fn dataset(s: &QuiverSession, x: &[f64]) -> Dataset {
    let n = x.len() / DIM;
    let signal: Vec<f64> = x
        .chunks_exact(DIM)
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, v)| (j as f64 - 3.0) * v)
                .sum()
        })
        .collect();
    let binary: Vec<f64> = signal.iter().map(|v| (*v > 0.0) as u8 as f64).collect();
    let three: Vec<f64> = signal
        .iter()
        .map(|v| {
            if *v < -5.0 {
                0.0
            } else if *v < 5.0 {
                1.0
            } else {
                2.0
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("features", quiver_engine::vector::vector_type(DIM), false),
        Field::new("y", DataType::Float64, false),
        Field::new("binary", DataType::Float64, false),
        Field::new("three", DataType::Float64, false),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(quiver_engine::vector::vector_array(x.to_vec(), DIM).unwrap()) as ArrayRef,
            Arc::new(arrow::array::Float64Array::from(signal)),
            Arc::new(arrow::array::Float64Array::from(binary)),
            Arc::new(arrow::array::Float64Array::from(three)),
        ],
    )
    .unwrap();
    assert_eq!(b.num_rows(), n);
    Dataset::new(s.from_batches(vec![b], 1).unwrap())
        .with_features(["features"])
        .unwrap()
        .with_label("y")
        .unwrap()
}

/// The prediction and (where there is one) probability functions of a fitted model.
fn outputs(stage: RowStage) -> Vec<Arc<dyn BatchFunction>> {
    match stage {
        RowStage::Predict {
            prediction,
            probability,
        } => std::iter::once(prediction).chain(probability).collect(),
        _ => panic!("not a predictor"),
    }
}

fn values(a: &ArrayRef) -> Vec<f64> {
    if let Some(l) = a.as_any().downcast_ref::<FixedSizeListArray>() {
        return l.values().as_primitive::<Float64Type>().values().to_vec();
    }
    if let Some(p) = a.as_primitive_opt::<Int32Type>() {
        return p.values().iter().map(|v| *v as f64).collect();
    }
    a.as_primitive::<Float64Type>().values().to_vec()
}

fn policy(choice: DeviceChoice, precision: Precision) -> DevicePolicy {
    DevicePolicy {
        choice,
        min_rows: 1,
        precision,
    }
}

#[tokio::test]
async fn device_predictions_equal_the_cpu() {
    let ordinal = match device::probe(0) {
        Ok(Placement::Cuda { ordinal, name }) => {
            eprintln!("device checks on cuda:{ordinal} ({name})");
            ordinal
        }
        Ok(Placement::Cpu) => unreachable!("probe finds a device or says why not"),
        Err(why) => {
            eprintln!("skipped: no usable CUDA device here ({why})");
            return;
        }
    };
    let s = QuiverSession::embedded_with(QuiverConfig::default()).unwrap();
    device::set_policy(policy(DeviceChoice::Cpu, Precision::F64));
    let train = dataset(&s, &rows(4000, 1));
    let err = |e: quiver_mllib::MllibError| e.to_string();
    let mut models: Vec<(&str, Vec<Arc<dyn BatchFunction>>)> = Vec::new();
    let m = LinearRegression::new().fit(&s, &train).await.map_err(err);
    models.push(("linear", outputs(m.unwrap().row_stage())));
    let binary = train.clone().with_label("binary").unwrap();
    let m = LogisticRegression::new()
        .max_iter(20)
        .fit(&s, &binary)
        .await;
    models.push((
        "binomial logistic",
        outputs(m.map_err(err).unwrap().row_stage()),
    ));
    let three = train.clone().with_label("three").unwrap();
    let m = LogisticRegression::new().max_iter(20).fit(&s, &three).await;
    models.push((
        "multinomial logistic",
        outputs(m.map_err(err).unwrap().row_stage()),
    ));
    let m = KMeans::new().k(5).seed(3).fit(&s, &train).await;
    models.push(("k-means", outputs(m.map_err(err).unwrap().row_stage())));
    let m = NaiveBayes::new()
        .model_type(NaiveBayesType::Multinomial)
        .fit(&s, &three)
        .await;
    models.push((
        "multinomial naive Bayes",
        outputs(m.map_err(err).unwrap().row_stage()),
    ));
    // Trees: outputs equal bit for bit (only additions, in the CPU's order).
    let m = GBTClassifier::new()
        .max_iter(30)
        .max_depth(4)
        .fit(&s, &binary)
        .await;
    models.push((
        "trees: boosted binary",
        outputs(m.map_err(err).unwrap().row_stage()),
    ));
    let m = GBTClassifier::new()
        .max_iter(10)
        .max_depth(3)
        .fit(&s, &three)
        .await;
    models.push((
        "trees: boosted 3-class",
        outputs(m.map_err(err).unwrap().row_stage()),
    ));
    let m = RandomForestClassifier::new()
        .num_trees(20)
        .max_depth(6)
        .fit(&s, &three)
        .await;
    models.push((
        "trees: forest",
        outputs(m.map_err(err).unwrap().row_stage()),
    ));
    let m = GBTRegressor::new()
        .max_iter(20)
        .max_depth(5)
        .fit(&s, &train)
        .await;
    models.push((
        "trees: boosted regression",
        outputs(m.map_err(err).unwrap().row_stage()),
    ));

    // A small batch, and one of 1.3M rows: three transfer chunks of 4 Mi values (both slots,
    // a short last chunk).
    for n in [1000usize, 1_300_000] {
        let x = rows(n, 7 + n as u64);
        // Trees take missing values (NaN): every 97th value.
        let mut with_missing = x.clone();
        with_missing
            .iter_mut()
            .step_by(97)
            .for_each(|v| *v = f64::NAN);
        for (name, funcs) in &models {
            let batch = if name.starts_with("trees") {
                FeatureBatch::new(&with_missing, DIM).unwrap()
            } else {
                FeatureBatch::new(&x, DIM).unwrap()
            };
            for f in funcs {
                device::set_policy(policy(DeviceChoice::Cpu, Precision::F64));
                let cpu = values(&f.apply(&batch).unwrap());
                let trees = name.starts_with("trees");
                for (precision, tol) in [(Precision::F64, 1e-12), (Precision::F32, 1e-4)] {
                    // Trees score in f64 whatever the precision, exactly.
                    let tol = if trees { 0.0 } else { tol };
                    device::set_policy(policy(DeviceChoice::Cuda(ordinal), precision));
                    let dev = values(&f.apply(&batch).unwrap());
                    assert_eq!(cpu.len(), dev.len(), "{name} {}", f.name());
                    let classes = !matches!(*name, "linear" | "trees: boosted regression")
                        && !matches!(f.return_type(), DataType::FixedSizeList(..));
                    if classes {
                        // Classes and clusters: equal but where the scores nearly tie.
                        let differ = cpu.iter().zip(&dev).filter(|(a, b)| a != b).count();
                        let allowed = match precision {
                            _ if trees => 0,
                            Precision::F64 => n / 100_000 + 1,
                            Precision::F32 => n / 1000 + 1,
                        };
                        assert!(
                            differ <= allowed,
                            "{name} {} at {precision}: {differ} of {n} rows differ",
                            f.name()
                        );
                    } else {
                        for (i, (a, b)) in cpu.iter().zip(&dev).enumerate() {
                            let scale = a.abs().max(b.abs()).max(1.0);
                            assert!(
                                (a - b).abs() <= tol * scale,
                                "{name} {} at {precision}, value {i}: cpu {a} device {b}",
                                f.name()
                            );
                        }
                    }
                }
            }
        }
    }
    // `auto` keeps batches below min_rows on the CPU and sends larger ones to the device;
    // both give the CPU's values.
    let x = rows(64, 99);
    let batch = FeatureBatch::new(&x, DIM).unwrap();
    let f = &models[0].1[0];
    device::set_policy(policy(DeviceChoice::Cpu, Precision::F64));
    let cpu = values(&f.apply(&batch).unwrap());
    device::set_policy(DevicePolicy {
        choice: DeviceChoice::Auto,
        min_rows: 1_000_000,
        precision: Precision::F64,
    });
    assert_eq!(values(&f.apply(&batch).unwrap()), cpu);
    device::set_policy(DevicePolicy::default());
}
