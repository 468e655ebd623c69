//! PCA against numpy (scripts/make_naive_bayes_pca_reference.py → data/pca_reference.json):
//! components up to sign, explained variance and the projection to 1e-9 on every runner,
//! through the store; options out of range are named.

mod common;
use common::{reference, session};

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_engine::vector::vector_values;
use quiver_engine::{Dataset, QuiverSession};
use quiver_mllib::{Estimator, ExplainedVarianceEvaluator, PCA, PCAModel, Transformer, load, save};
use serde_json::Value;

/// The file's columns but `label`, as Float64 features.
async fn features(s: &QuiverSession, file: &str) -> Dataset {
    let path = format!("{}/../data/{file}", env!("CARGO_MANIFEST_DIR"));
    let batches = s.read(&path).await.unwrap().collect().await.unwrap();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let (mut fields, mut cols) = (Vec::new(), Vec::<ArrayRef>::new());
    for (f, c) in all.schema().fields().iter().zip(all.columns()) {
        if f.name() != "label" {
            fields.push(Field::new(f.name(), DataType::Float64, false));
            cols.push(arrow::compute::cast(c, &DataType::Float64).unwrap());
        }
    }
    let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    Dataset::new(s.from_batches(vec![b], 1).unwrap())
        .with_numeric_features_except(&[])
        .unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

async fn projection(scored: &Dataset) -> Vec<Vec<f64>> {
    let batches = scored
        .dataframe()
        .clone()
        .select_columns(&["pca_features"])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in batches {
        let (values, dim) = vector_values(b.column(0).as_ref(), "pca_features").unwrap();
        out.extend(values.chunks_exact(dim).map(<[f64]>::to_vec));
    }
    out
}

async fn check(key: &str, file: &str, pca: PCA) -> PCAModel {
    let r = reference("pca_reference.json", key);
    let k = r["k"].as_u64().unwrap() as usize;
    let mut fitted: Vec<PCAModel> = Vec::new();
    for runner in ["local", "embedded"] {
        let s = session(runner);
        let ds = features(&s, file).await;
        let m = pca.fit(&s, &ds).await.unwrap();
        let what = format!("{key} on the {runner} runner");
        assert_eq!(m.summary().k, k, "{what}");
        let mut signs = Vec::new();
        for (i, (ours, want)) in m
            .components()
            .iter()
            .zip(r["components"].as_array().unwrap())
            .enumerate()
        {
            let want = floats(want);
            let dot: f64 = ours.iter().zip(&want).map(|(a, b)| a * b).sum();
            let sign = dot.signum();
            signs.push(sign);
            for (a, b) in ours.iter().zip(&want) {
                assert!(
                    (a * sign - b).abs() <= 1e-9,
                    "{what}: component {i}: {a} vs {b}"
                );
            }
        }
        for (name, ours, want) in [
            (
                "explained variance",
                &m.summary().eigenvalues,
                floats(&r["explained_variance"]),
            ),
            (
                "explained variance ratio",
                &m.summary().explained_variance_ratio,
                floats(&r["explained_variance_ratio"]),
            ),
        ] {
            for (a, b) in ours.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-9 * b.abs(), "{what}: {name} {a} vs {b}");
            }
        }
        let total = r["total_variance"].as_f64().unwrap();
        assert!((m.summary().total_variance - total).abs() <= 1e-9 * total);
        let scored = m.transform(&ds).unwrap();
        let proj = projection(&scored).await;
        for (i, r_i) in r["rows"].as_array().unwrap().iter().enumerate() {
            let row = r_i.as_u64().unwrap() as usize;
            let want = floats(&r["projection"][i]);
            for (j, b) in want.iter().enumerate() {
                let a = proj[row][j] * signs[j];
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "{what}: row {row} component {j}: {a} vs {b}"
                );
            }
        }
        // On the training rows the evaluator's ratio is the model's.
        let e = ExplainedVarianceEvaluator::new()
            .evaluate(&s, &scored)
            .await
            .unwrap();
        let kept: f64 = m.summary().explained_variance_ratio.iter().sum();
        assert!(
            (e.total_explained_variance_ratio - kept).abs() <= 1e-9,
            "{what}: {} vs {kept}",
            e.total_explained_variance_ratio
        );
        fitted.push(m);
    }
    for (a, b) in fitted[0].components().iter().zip(fitted[1].components()) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-9, "{key}: the runners agree");
        }
    }
    fitted.pop().unwrap()
}

#[tokio::test]
async fn components_and_variance_equal_numpys_svd() {
    check("digits_k10", "digits.parquet", PCA::new().k(10)).await;
    check("breast_cancer_k3", "breast_cancer.parquet", PCA::new().k(3)).await;
    check(
        "digits_ratio_0_8",
        "digits.parquet",
        PCA::new().explained_variance_ratio(0.8),
    )
    .await;
}

#[tokio::test]
async fn a_stored_model_projects_the_same() {
    let m = check("breast_cancer_k3", "breast_cancer.parquet", PCA::new().k(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = session("local")
        .model_store_at(dir.path().to_str().unwrap())
        .unwrap();
    save(&store, "pca", &m).await.unwrap();
    let back: PCAModel = load(&store, "pca", None).await.unwrap();
    assert_eq!(back, m);
}

#[tokio::test]
async fn more_components_than_features_is_named() {
    let s = session("local");
    let ds = features(&s, "breast_cancer.parquet").await;
    let e = PCA::new().k(31).fit(&s, &ds).await.unwrap_err().to_string();
    assert!(
        e.contains("k = 31") && e.contains("num_principal_components") && e.contains("30 features"),
        "{e}"
    );
    let e = PCA::new()
        .explained_variance_ratio(0.0)
        .fit(&s, &ds)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("explained_variance_ratio") && e.contains("(0, 1]"),
        "{e}"
    );
}
