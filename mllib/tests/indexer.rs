//! StringIndexer: frequency order, unseen labels and nulls under error/skip/keep, persistence,
//! and use inside a pipeline.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use quiver_engine::{Dataset, QuiverSession};
use quiver_mllib::{
    Estimator, HandleInvalid, Pipeline, PipelineModel, StringIndexer, StringIndexerModel,
    StringOrderType, Transformer, VectorAssembler, load, save,
};

fn csv(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().to_string()
}

async fn column(ds: &Dataset, name: &str) -> Vec<Option<f64>> {
    let batches = ds
        .dataframe()
        .clone()
        .sort(vec![datafusion::prelude::col("id").sort(true, false)])
        .unwrap()
        .select_columns(&[name])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in &batches {
        let c = b.column(0).as_primitive::<Float64Type>();
        out.extend((0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i))));
    }
    out
}

const TRAIN: &str =
    "id,color,x\n0,red,1\n1,blue,2\n2,red,3\n3,green,4\n4,blue,5\n5,red,6\n6,amber,7\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_ordered_by_frequency_then_alphabetically() {
    let dir = tempfile::tempdir().unwrap();
    let s = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(s.read(&csv(&dir, "train.csv", TRAIN)).await.unwrap());
    let m = StringIndexer::new("color").fit(&s, &ds).await.unwrap();
    assert_eq!(m.labels(), &["red", "blue", "amber", "green"]);
    let out = m.transform(&ds).unwrap();
    let idx = column(&out, "color_index").await;
    assert_eq!(idx, [0.0, 1.0, 0.0, 3.0, 1.0, 0.0, 2.0].map(Some).to_vec());
    let alpha = StringIndexer::new("color")
        .string_order_type(StringOrderType::AlphabetAsc)
        .fit(&s, &ds)
        .await
        .unwrap();
    assert_eq!(alpha.labels(), &["amber", "blue", "green", "red"]);
    // Numbers are indexed as strings, like Spark.
    let nums = StringIndexer::new("x").fit(&s, &ds).await.unwrap();
    assert_eq!(nums.labels().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unseen_labels_and_nulls_follow_handle_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let s = QuiverSession::embedded().unwrap();
    let train = Dataset::new(s.read(&csv(&dir, "train.csv", TRAIN)).await.unwrap());
    let test = Dataset::new(
        s.read(&csv(
            &dir,
            "test.csv",
            "id,color,x\n0,red,1\n1,purple,2\n2,,3\n3,blue,4\n",
        ))
        .await
        .unwrap(),
    );
    let indexers = [
        HandleInvalid::Error,
        HandleInvalid::Keep,
        HandleInvalid::Skip,
    ]
    .map(|h| StringIndexer::new("color").handle_invalid(h));

    let err = indexers[0]
        .fit(&s, &train)
        .await
        .unwrap()
        .transform(&test)
        .unwrap()
        .dataframe()
        .clone()
        .collect()
        .await
        .unwrap_err();
    let msg = quiver_engine::QuiverError::from(err).to_string();
    assert!(
        msg.contains("unseen label 'purple' in column 'color'") && msg.contains("skip or keep"),
        "{msg}"
    );

    let keep = indexers[1]
        .fit(&s, &train)
        .await
        .unwrap()
        .transform(&test)
        .unwrap();
    assert_eq!(
        column(&keep, "color_index").await,
        vec![Some(0.0), Some(4.0), Some(4.0), Some(1.0)]
    );

    let skip = indexers[2]
        .fit(&s, &train)
        .await
        .unwrap()
        .transform(&test)
        .unwrap();
    assert_eq!(
        column(&skip, "color_index").await,
        vec![Some(0.0), Some(1.0)]
    );

    // Nulls at fit time are an error unless skipped or kept.
    let with_null = Dataset::new(
        s.read(&csv(&dir, "n.csv", "id,color\n0,red\n1,\n"))
            .await
            .unwrap(),
    );
    let err = StringIndexer::new("color")
        .fit(&s, &with_null)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("column 'color' has 1 null values"),
        "{err}"
    );
    let m = StringIndexer::new("color")
        .handle_invalid(HandleInvalid::Keep)
        .fit(&s, &with_null)
        .await
        .unwrap();
    assert_eq!(m.labels(), &["red"]);
    let err = StringIndexer::new("colour")
        .fit(&s, &with_null)
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("column 'colour' not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_persists_alone_and_in_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let s = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(s.read(&csv(&dir, "train.csv", TRAIN)).await.unwrap());
    let store = s
        .model_store_at(dir.path().join("models").to_str().unwrap())
        .unwrap();

    let m = StringIndexer::new("color")
        .handle_invalid(HandleInvalid::Keep)
        .fit(&s, &ds)
        .await
        .unwrap();
    save(&store, "colors", &m).await.unwrap();
    let back: StringIndexerModel = load(&store, "colors", None).await.unwrap();
    assert_eq!(back, m);

    let pipeline = Pipeline::new()
        .estimator(StringIndexer::new("color"))
        .transformer(VectorAssembler::new(["x", "color_index"]));
    let model = pipeline.fit(&s, &ds).await.unwrap();
    let out = model.transform(&ds).unwrap();
    assert_eq!(out.features(), &["features".to_string()]);
    let summary = s
        .summarize(&out, quiver_engine::Runner::Embedded)
        .await
        .unwrap();
    assert_eq!(summary.max, vec![7.0, 3.0]);
    save(&store, "p", &model).await.unwrap();
    let back: PipelineModel = load(&store, "p", None).await.unwrap();
    let again = s
        .summarize(
            &back.transform(&ds).unwrap(),
            quiver_engine::Runner::Embedded,
        )
        .await
        .unwrap();
    assert_eq!(again, summary);
}
