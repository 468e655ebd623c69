//! OneHotEncoder: widths with and without drop_last, invalid indices, persistence in a pipeline.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use quiver_engine::{Dataset, QuiverSession};
use quiver_mllib::{
    Estimator, HandleInvalid, OneHotEncoder, OneHotEncoderModel, Pipeline, PipelineModel,
    StringIndexer, Transformer, VectorAssembler, load, save,
};

fn indices(s: &QuiverSession, values: &[f64]) -> Dataset {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Float64, false),
        Field::new("c", DataType::Float64, false),
    ]));
    let ids: Vec<f64> = (0..values.len()).map(|i| i as f64).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(ids)),
            Arc::new(Float64Array::from(values.to_vec())),
        ],
    )
    .unwrap();
    Dataset::new(s.from_batches(vec![batch], 1).unwrap())
}

async fn vectors(ds: &Dataset, name: &str) -> Vec<Vec<f64>> {
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
        let l = b.column(0).as_fixed_size_list();
        for i in 0..l.len() {
            out.push(l.value(i).as_primitive::<Float64Type>().values().to_vec());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodes_with_and_without_the_last_category() {
    let s = QuiverSession::embedded().unwrap();
    let ds = indices(&s, &[0.0, 2.0, 1.0, 2.0]);
    let m = OneHotEncoder::new(["c"]).fit(&s, &ds).await.unwrap();
    assert_eq!(m.categories(), &[3]);
    assert_eq!(
        vectors(&m.transform(&ds).unwrap(), "c_vec").await,
        vec![
            vec![1.0, 0.0],
            vec![0.0, 0.0],
            vec![0.0, 1.0],
            vec![0.0, 0.0]
        ]
    );
    let full = OneHotEncoder::new(["c"])
        .drop_last(false)
        .fit(&s, &ds)
        .await
        .unwrap();
    assert_eq!(
        vectors(&full.transform(&ds).unwrap(), "c_vec").await[1],
        vec![0.0, 0.0, 1.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_indices_are_errors_or_kept() {
    let s = QuiverSession::embedded().unwrap();
    let train = indices(&s, &[0.0, 1.0, 2.0]);
    let test = indices(&s, &[1.0, 5.0]);
    let m = OneHotEncoder::new(["c"]).fit(&s, &train).await.unwrap();
    let err = m
        .transform(&test)
        .unwrap()
        .dataframe()
        .clone()
        .collect()
        .await
        .unwrap_err();
    let msg = quiver_engine::QuiverError::from(err).to_string();
    assert!(
        msg.contains("column 'c' has category index 5, outside 0..3"),
        "{msg}"
    );
    let keep = OneHotEncoder::new(["c"])
        .handle_invalid(HandleInvalid::Keep)
        .drop_last(false);
    let m = keep.fit(&s, &train).await.unwrap();
    assert_eq!(
        vectors(&m.transform(&test).unwrap(), "c_vec").await,
        vec![vec![0.0, 1.0, 0.0, 0.0], vec![0.0, 0.0, 0.0, 1.0]]
    );
    let err = OneHotEncoder::new(["c"])
        .fit(&s, &indices(&s, &[0.0, -1.0]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("category index -1"), "{err}");
    let err = OneHotEncoder::new(["c"])
        .fit(&s, &indices(&s, &[0.0, 1.5]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("category index 1.5"), "{err}");
    let err = OneHotEncoder::new(["c"])
        .handle_invalid(HandleInvalid::Skip)
        .check()
        .unwrap_err();
    assert!(err.to_string().contains("error or keep"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_indexer_one_hot_assembler_pipeline_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    std::fs::write(&path, "id,color,x\n0,red,1\n1,blue,2\n2,red,3\n3,green,4\n").unwrap();
    let s = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(s.read(path.to_str().unwrap()).await.unwrap());
    let model = Pipeline::new()
        .estimator(StringIndexer::new("color"))
        .estimator(OneHotEncoder::new(["color_index"]))
        .transformer(VectorAssembler::new(["x", "color_index_vec"]))
        .fit(&s, &ds)
        .await
        .unwrap();
    let out = vectors(&model.transform(&ds).unwrap(), "features").await;
    // red = 0, blue = 1, green = 2; the last category (green) is dropped.
    assert_eq!(
        out,
        vec![
            vec![1.0, 1.0, 0.0],
            vec![2.0, 0.0, 1.0],
            vec![3.0, 1.0, 0.0],
            vec![4.0, 0.0, 0.0]
        ]
    );
    let store = s
        .model_store_at(dir.path().join("m").to_str().unwrap())
        .unwrap();
    save(&store, "p", &model).await.unwrap();
    let back: PipelineModel = load(&store, "p", None).await.unwrap();
    assert_eq!(
        vectors(&back.transform(&ds).unwrap(), "features").await,
        out
    );
    let enc = OneHotEncoder::new(["color_index"])
        .fit(&s, &model.stages()[0].transform(&ds).unwrap())
        .await
        .unwrap();
    save(&store, "enc", &enc).await.unwrap();
    let back: OneHotEncoderModel = load(&store, "enc", None).await.unwrap();
    assert_eq!(back, enc);
}
