//! NaiveBayes against scikit-learn (scripts/make_naive_bayes_pca_reference.py →
//! data/naive_bayes_reference.json): MultinomialNB, ComplementNB and BernoulliNB on digits,
//! GaussianNB on breast cancer; class probabilities and joint log-likelihoods to 1e-9 on every
//! runner, through the store, and bad input named by column and row.

mod common;
use common::{reference, session};

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::vector::vector_values;
use quiver_engine::{Dataset, QuiverSession};
use quiver_mllib::{
    Estimator, NaiveBayes, NaiveBayesModel, NaiveBayesType, Transformer, load, load_dyn, save,
};
use serde_json::Value;

/// Every column of a shipped file as Float64 (the label `y`), features binarised (> 0 → 1)
/// when asked.
async fn data(s: &QuiverSession, file: &str, label: &str, binarise: bool) -> Dataset {
    let rows = common::float_rows(s, file, label).await;
    let cols: Vec<ArrayRef> = rows
        .schema()
        .fields()
        .iter()
        .zip(rows.columns())
        .map(|(f, v)| -> ArrayRef {
            if binarise && f.name() != "y" {
                let v = v.as_any().downcast_ref::<Float64Array>().unwrap();
                Arc::new(Float64Array::from_iter_values(
                    v.values().iter().map(|x| if *x > 0.0 { 1.0 } else { 0.0 }),
                ))
            } else {
                Arc::clone(v)
            }
        })
        .collect();
    let b = RecordBatch::try_new(rows.schema(), cols).unwrap();
    Dataset::new(s.from_batches(vec![b], 1).unwrap())
        .with_label("y")
        .unwrap()
        .with_numeric_features_except(&["y"])
        .unwrap()
}

/// The vector column `col` of the scored rows, one Vec per row.
async fn vectors(scored: &Dataset, col: &str) -> Vec<Vec<f64>> {
    let batches = scored
        .dataframe()
        .clone()
        .select_columns(&[col])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in batches {
        let (values, dim) = vector_values(b.column(0).as_ref(), col).unwrap();
        out.extend(values.chunks_exact(dim).map(<[f64]>::to_vec));
    }
    out
}

fn assert_close(ours: &[Vec<f64>], want: &Value, rows: &[usize], relative: bool, what: &str) {
    for (i, &r) in rows.iter().enumerate() {
        for (j, w) in want[i].as_array().unwrap().iter().enumerate() {
            let (a, b) = (ours[r][j], w.as_f64().unwrap());
            let tol = if relative {
                1e-9 * b.abs().max(1.0)
            } else {
                1e-9
            };
            assert!(
                (a - b).abs() <= tol,
                "{what}: row {r} class {j}: {a} vs scikit-learn's {b}"
            );
        }
    }
}

async fn check(key: &str, file: &str, model: NaiveBayes, binarise: bool) {
    let r = reference("naive_bayes_reference.json", key);
    let rows: Vec<usize> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut fitted = Vec::new();
    for runner in ["local", "embedded"] {
        let s = session(runner);
        let ds = data(&s, file, "label", binarise).await;
        let m = model.fit(&s, &ds).await.unwrap();
        let scored = m.transform(&ds).unwrap();
        let what = format!("{key} on the {runner} runner");
        let p = vectors(&scored, "probability").await;
        assert_close(&p, &r["probability"], &rows, false, &what);
        let jll = vectors(&scored, "raw_prediction").await;
        assert_close(&jll, &r["joint_log_likelihood"], &rows, true, &what);
        fitted.push(m);
    }
    for ((n1, a), (n2, b)) in fitted[0]
        .weight_vectors()
        .iter()
        .zip(&fitted[1].weight_vectors())
    {
        assert_eq!(n1, n2);
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                "{key} {n1}: the runners agree"
            );
        }
    }
}

#[tokio::test]
async fn multinomial_equals_scikit_learn() {
    check("multinomial", "digits.parquet", NaiveBayes::new(), false).await;
    check(
        "multinomial_alpha_0_5",
        "digits.parquet",
        NaiveBayes::new().smoothing(0.5),
        false,
    )
    .await;
}

#[tokio::test]
async fn complement_equals_scikit_learn() {
    let nb = NaiveBayes::new().model_type(NaiveBayesType::Complement);
    check("complement", "digits.parquet", nb, false).await;
}

#[tokio::test]
async fn bernoulli_equals_scikit_learn() {
    let nb = NaiveBayes::new().model_type(NaiveBayesType::Bernoulli);
    check("bernoulli", "digits.parquet", nb, true).await;
}

#[tokio::test]
async fn gaussian_equals_scikit_learn() {
    let nb = NaiveBayes::new().model_type(NaiveBayesType::Gaussian);
    check("gaussian", "breast_cancer.parquet", nb, false).await;
}

#[tokio::test]
async fn a_stored_model_predicts_the_same() {
    let s = session("local");
    let ds = data(&s, "breast_cancer.parquet", "label", false).await;
    let m = NaiveBayes::new()
        .model_type(NaiveBayesType::Gaussian)
        .fit(&s, &ds)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = s.model_store_at(dir.path().to_str().unwrap()).unwrap();
    save(&store, "nb", &m).await.unwrap();
    let back: NaiveBayesModel = load(&store, "nb", None).await.unwrap();
    assert_eq!(back, m);
    let (meta, dynamic) = load_dyn(&store, "nb", None).await.unwrap();
    assert_eq!(meta.kind, "naive_bayes");
    let p1 = vectors(&m.transform(&ds).unwrap(), "probability").await;
    let p2 = vectors(&dynamic.transform(&ds).unwrap(), "probability").await;
    assert_eq!(p1, p2);
}

/// A dataset whose feature `b` is `bad` at row 3.
fn with_bad_value(s: &QuiverSession, bad: f64) -> Dataset {
    let a = Float64Array::from(vec![1.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
    let b = Float64Array::from(vec![0.0, 1.0, 1.0, bad, 0.0, 1.0]);
    let y = Float64Array::from(vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Float64, false),
        Field::new("b", DataType::Float64, false),
        Field::new("y", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(a), Arc::new(b), Arc::new(y)]).unwrap();
    Dataset::new(s.from_batches(vec![batch], 1).unwrap())
        .with_features(["a", "b"])
        .unwrap()
        .with_label("y")
        .unwrap()
}

#[tokio::test]
async fn values_the_event_model_refuses_are_named_by_column_and_row() {
    for runner in ["local", "embedded"] {
        let s = session(runner);
        for t in [NaiveBayesType::Multinomial, NaiveBayesType::Complement] {
            let e = NaiveBayes::new()
                .model_type(t)
                .fit(&s, &with_bad_value(&s, -2.0))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("negative") && e.contains("column 'b'") && e.contains("row 3"),
                "{runner} {t:?}: {e}"
            );
        }
        let e = NaiveBayes::new()
            .model_type(NaiveBayesType::Bernoulli)
            .fit(&s, &with_bad_value(&s, 2.0))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other than 0 or 1") && e.contains("column 'b'") && e.contains("row 3"),
            "{runner}: {e}"
        );
        // Gaussian takes any finite value.
        NaiveBayes::new()
            .model_type(NaiveBayesType::Gaussian)
            .fit(&s, &with_bad_value(&s, -2.0))
            .await
            .unwrap();
    }
}
