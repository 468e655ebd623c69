//! Imputer: mean, median and mode over nulls and NaN, in place or to new columns, persisted.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use quiver_engine::{Dataset, QuiverSession, Runner};
use quiver_mllib::{Estimator, Imputer, ImputerModel, ImputerStrategy, Transformer, load, save};

// a: 1, null, 3, 4, NaN, 4  → valid 1, 3, 4, 4: mean 3, median 3.5, mode 4
// b: 10, 20, null, 20, 30, 10 (ints) → valid 10, 20, 20, 30, 10: mean 18, median 20, mode 10 (tie → smaller)
const DATA: &str = "id,a,b\n0,1,10\n1,,20\n2,3,\n3,4,20\n4,NaN,30\n5,4,10\n";

async fn setup() -> (tempfile::TempDir, QuiverSession, Dataset) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.csv");
    std::fs::write(&p, DATA).unwrap();
    let s = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(s.read(p.to_str().unwrap()).await.unwrap());
    (dir, s, ds)
}

async fn col(ds: &Dataset, name: &str) -> Vec<f64> {
    let b = ds
        .dataframe()
        .clone()
        .sort(vec![datafusion::prelude::col("id").sort(true, false)])
        .unwrap()
        .select_columns(&[name])
        .unwrap()
        .collect()
        .await
        .unwrap();
    b.iter()
        .flat_map(|b| {
            let c = b.column(0).as_primitive::<Float64Type>();
            assert_eq!(c.null_count(), 0);
            c.values().to_vec()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_strategy_fills_nulls_and_nan() {
    let (_d, s, ds) = setup().await;
    for (strategy, a, b) in [
        (ImputerStrategy::Mean, 3.0, 18.0),
        (ImputerStrategy::Median, 3.5, 20.0),
        (ImputerStrategy::Mode, 4.0, 10.0),
    ] {
        let m = Imputer::new(["a", "b"])
            .strategy(strategy)
            .fit(&s, &ds)
            .await
            .unwrap();
        assert_eq!(m.surrogates(), &[a, b], "{strategy:?}");
        let out = m.transform(&ds).unwrap();
        assert_eq!(
            col(&out, "a").await,
            vec![1.0, a, 3.0, 4.0, a, 4.0],
            "{strategy:?}"
        );
        assert_eq!(
            col(&out, "b").await,
            vec![10.0, 20.0, b, 20.0, 30.0, 10.0],
            "{strategy:?}"
        );
        // Filled columns feed the summary, which rejects nulls and NaN.
        let f = out.with_features(["a", "b"]).unwrap();
        assert_eq!(s.summarize(&f, Runner::Local).await.unwrap().count, 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_columns_persistence_and_errors() {
    let (dir, s, ds) = setup().await;
    let m = Imputer::new(["a"])
        .output_cols(["a_filled"])
        .fit(&s, &ds)
        .await
        .unwrap();
    let out = m.transform(&ds).unwrap();
    assert!(
        out.columns().contains(&"a".to_string()) && out.columns().contains(&"a_filled".to_string())
    );
    let store = s
        .model_store_at(dir.path().join("m").to_str().unwrap())
        .unwrap();
    save(&store, "imp", &m).await.unwrap();
    let back: ImputerModel = load(&store, "imp", None).await.unwrap();
    assert_eq!(back, m);
    assert_eq!(
        col(&back.transform(&ds).unwrap(), "a_filled").await,
        col(&out, "a_filled").await
    );

    let err = Imputer::new(["a"])
        .output_cols(["x", "y"])
        .fit(&s, &ds)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("2 output columns for 1 input columns"),
        "{err}"
    );
    let err = Imputer::new(["zzz"]).fit(&s, &ds).await.unwrap_err();
    assert!(
        err.to_string().starts_with("column 'zzz' not found"),
        "{err}"
    );
    let p = dir.path().join("allnull.csv");
    std::fs::write(&p, "id,a,name\n0,NaN,x\n1,NaN,y\n").unwrap();
    let empty = Dataset::new(s.read(p.to_str().unwrap()).await.unwrap());
    let err = Imputer::new(["a"]).fit(&s, &empty).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid parameter 'input_cols': column 'a' has no valid value to impute from"
    );
    let err = Imputer::new(["name"]).fit(&s, &empty).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("feature column 'name' has type Utf8"),
        "{err}"
    );
}
