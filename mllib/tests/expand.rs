//! QuantileDiscretizer (fitted by a distributed sample aggregate), Bucketizer,
//! PolynomialExpansion and Interaction over real data, on both runners, and persistence.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use quiver_engine::{Dataset, QuiverConfig, QuiverSession};
use quiver_mllib::{
    Bucketizer, Estimator, Interaction, PolynomialExpansion, QuantileDiscretizer, Transformer,
    load, save,
};

const DIABETES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/diabetes.parquet");

fn session(runner: &str) -> QuiverSession {
    QuiverSession::embedded_with(
        QuiverConfig::default()
            .with_pairs([("quiver.runner", runner)])
            .unwrap(),
    )
    .unwrap()
}

async fn features(s: &QuiverSession, cols: &[&str]) -> Dataset {
    Dataset::new(s.read(DIABETES).await.unwrap())
        .with_features(cols)
        .unwrap()
}

/// Every value of the vector column `col`, row-major, and its width.
async fn output(ds: &Dataset, col: &str) -> (Vec<f64>, usize) {
    let batches = ds
        .dataframe()
        .clone()
        .select_columns(&[col])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let (mut out, mut width) = (Vec::new(), 0);
    for b in &batches {
        let l = b.column(0).as_fixed_size_list();
        width = l.value_length() as usize;
        out.extend_from_slice(
            &l.values().as_primitive::<Float64Type>().values()[..l.len() * width],
        );
    }
    (out, width)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantile_buckets_hold_equal_shares_on_both_runners() {
    let mut fitted = Vec::new();
    for runner in ["local", "embedded"] {
        let s = session(runner);
        let data = features(&s, &["bmi", "bp", "s5"]).await;
        let model = QuantileDiscretizer::new()
            .num_buckets(4)
            .fit(&s, &data)
            .await
            .unwrap();
        let (codes, d) = output(&model.transform(&data).unwrap(), "buckets").await;
        assert_eq!(d, 3);
        let n = codes.len() / d;
        assert_eq!(n, 442);
        for j in 0..d {
            let mut counts = [0usize; 4];
            for r in 0..n {
                counts[codes[r * d + j] as usize] += 1;
            }
            // 442 rows in quartiles: about 110 each (ties at the cut points move a few).
            assert!(
                counts.iter().all(|c| (95..=125).contains(c)),
                "feature {j}: {counts:?}"
            );
        }
        fitted.push(model);
    }
    // The sample is order-independent: both runners find the same splits.
    assert_eq!(fitted[0].splits(), fitted[1].splits());
    // Stored and loaded, it buckets alike.
    let dir = tempfile::tempdir().unwrap();
    let store = session("embedded")
        .model_store_at(dir.path().to_str().unwrap())
        .unwrap();
    save(&store, "q", &fitted[0]).await.unwrap();
    let back: Bucketizer = load(&store, "q", None).await.unwrap();
    assert_eq!(back.splits(), fitted[0].splits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expansions_and_interactions_map_real_rows() {
    let s = session("embedded");
    let data = features(&s, &["bmi", "bp"]).await;
    let (raw, _) = output(&data.clone().assemble("raw").unwrap(), "raw").await;
    let poly = PolynomialExpansion::new(2, 3);
    let (p, width) = output(&poly.transform(&data).unwrap(), "poly_features").await;
    assert_eq!(width, 9);
    let inter = Interaction::new(vec![1, 1]);
    let (i, iw) = output(&inter.transform(&data).unwrap(), "interacted").await;
    assert_eq!(iw, 1);
    for r in 0..raw.len() / 2 {
        let (x, y) = (raw[2 * r], raw[2 * r + 1]);
        let expected = [
            x,
            y,
            x * x,
            x * y,
            y * y,
            x * x * x,
            x * x * y,
            x * y * y,
            y * y * y,
        ];
        assert_eq!(&p[r * 9..(r + 1) * 9], &expected);
        assert_eq!(i[r], x * y);
    }
    // A wrong width is named.
    let failed = match PolynomialExpansion::new(3, 2).transform(&data) {
        Err(e) => e.to_string(),
        Ok(d) => d
            .dataframe()
            .clone()
            .collect()
            .await
            .unwrap_err()
            .to_string(),
    };
    assert!(failed.contains('3') && failed.contains('2'), "{failed}");
}
