//! `quiver quickstart`: the shipped digits data end to end on the embedded default — load,
//! assemble, summarise on both runners, query with SQL, save the summary to the model store
//! and read it back, then train, evaluate, save, reload and predict with a classification
//! pipeline.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use bytes::Bytes;
use object_store::ObjectStoreExt;

use crate::output::{print_table, progress};
use crate::{Dataset, FeatureSummary, QuiverError, QuiverSession, Result, Runner};

/// The digits data compiled into the binary, used when the repository's copy is not at hand.
const EMBEDDED_DIGITS: &[u8] = include_bytes!("../../../data/digits.parquet");

/// What the quickstart found, for tests and for callers that want more than the printout.
#[derive(Debug, Clone)]
pub struct QuickstartReport {
    pub source: String,
    pub rows: usize,
    pub summary: FeatureSummary,
    /// Largest relative difference between the local and the embedded runner's summaries.
    pub runner_max_rel_diff: f64,
    pub saved_version: u64,
    /// The classification step, when the data has a label.
    pub classifier: Option<ClassifierReport>,
}

fn max_rel_diff(a: &FeatureSummary, b: &FeatureSummary) -> f64 {
    let pairs = [
        (&a.mean, &b.mean),
        (&a.variance, &b.variance),
        (&a.min, &b.min),
        (&a.max, &b.max),
        (&a.norm_l1, &b.norm_l1),
        (&a.norm_l2, &b.norm_l2),
    ];
    pairs
        .iter()
        .flat_map(|(x, y)| x.iter().zip(y.iter()))
        .map(|(x, y)| {
            let scale = x.abs().max(y.abs());
            if scale == 0.0 {
                0.0
            } else {
                (x - y).abs() / scale
            }
        })
        .fold(0.0, f64::max)
}

/// Runs the quickstart on `data` (a path or URL; the shipped digits when `None`).
pub async fn quickstart(
    session: &QuiverSession,
    data: Option<&str>,
    out: &mut dyn Write,
) -> Result<QuickstartReport> {
    let steps = progress(6, "quickstart");
    let cfg = session.config();
    writeln!(
        out,
        "Quiver quickstart: embedded DataFusion session, {} partitions, {} compute threads",
        cfg.target_partitions, cfg.compute_threads
    )
    .ok();

    // 1. Load.
    let source = match data.map(str::to_string).or_else(crate::shipped_digits) {
        Some(path) => path,
        None => {
            let loc = quiver_engine::io::resolve(
                session.context(),
                &cfg.s3,
                "memory:///quickstart/digits.parquet",
            )?;
            loc.store
                .put(&loc.path, Bytes::from_static(EMBEDDED_DIGITS).into())
                .await
                .map_err(|source| QuiverError::ObjectStore {
                    path: "memory:///quickstart/digits.parquet".to_string(),
                    source,
                })?;
            "memory:///quickstart/digits.parquet".to_string()
        }
    };
    let df = session.read(&source).await?;
    session.context().deregister_table("digits")?;
    session
        .context()
        .register_table("digits", df.clone().into_view())?;
    let rows = df.clone().count().await?;
    writeln!(
        out,
        "\nLoaded {source}: {rows} rows x {} columns",
        df.schema().fields().len()
    )
    .ok();
    steps.inc(1);

    // 2. Roles and assembly.
    let label = if df.schema().field_with_unqualified_name("label").is_ok() {
        Some("label")
    } else {
        None
    };
    let mut ds = Dataset::new(df);
    if let Some(l) = label {
        ds = ds.with_label(l)?;
    }
    let ds = ds.with_numeric_features_except(&[])?;
    let names = ds.feature_names()?;
    writeln!(
        out,
        "Features: {} numeric columns ({} .. {}) assembled into one vector; label: {}",
        names.len(),
        names.first().map(String::as_str).unwrap_or(""),
        names.last().map(String::as_str).unwrap_or(""),
        label.unwrap_or("(none)")
    )
    .ok();
    steps.inc(1);

    // 3. Summary on both runners.
    let t = Instant::now();
    let frame = ds.cache_local().await?;
    let cache_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let local = session.aggregate_local(&frame, &quiver_engine::Summarizer::new(frame.dim()))?;
    let local_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let embedded = session.summarize(&ds, Runner::Embedded).await?;
    let embedded_ms = t.elapsed().as_secs_f64() * 1e3;
    let diff = max_rel_diff(&local, &embedded);
    writeln!(
        out,
        "\nFeature summary: local runner {local_ms:.2} ms (after caching in {cache_ms:.1} ms), \
         embedded runner {embedded_ms:.1} ms (scan included); largest relative difference {diff:.1e}"
    )
    .ok();
    let constant = local.variance.iter().filter(|v| **v == 0.0).count();
    writeln!(
        out,
        "{} features, {constant} constant (zero variance); the 10 most variable:",
        names.len()
    )
    .ok();
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| {
        local.variance[b]
            .total_cmp(&local.variance[a])
            .then(a.cmp(&b))
    });
    let table = local.to_record_batch(&names)?;
    let top: Vec<u32> = order.iter().take(10).map(|&i| i as u32).collect();
    let top = arrow::compute::take_record_batch(&table, &arrow::array::UInt32Array::from(top))?;
    print_table(out, &[top])?;
    steps.inc(1);

    // 4. SQL over the same data.
    if let Some(l) = label {
        writeln!(out, "\nImages per class (SQL):").ok();
        let q = format!(
            "SELECT \"{l}\", count(*) AS images FROM digits GROUP BY \"{l}\" ORDER BY \"{l}\""
        );
        let batches = session.sql(&q).await?.collect().await?;
        let classes = transpose_counts(&batches)?;
        print_table(out, &[classes])?;
    }
    steps.inc(1);

    // 5. Model store: save the summary, read it back.
    let store = session.model_store()?;
    let draft = quiver_engine::ModelDraft {
        kind: "feature_summary".to_string(),
        format_version: 1,
        params: serde_json::json!({ "source": source }),
        features: names
            .iter()
            .map(|n| quiver_engine::store::FeatureField {
                name: n.clone(),
                data_type: "Float64".to_string(),
            })
            .collect(),
        label: label.map(str::to_string),
        metrics: serde_json::json!({ "rows": rows }),
        training_summary: serde_json::Value::Null,
    };
    let payload = serde_json::to_vec(&local).map_err(|source| QuiverError::Json {
        context: "feature summary".to_string(),
        source,
    })?;
    let saved = store
        .save(
            "digits_summary",
            draft,
            vec![Ok(("summary.json".to_string(), Bytes::from(payload)))],
        )
        .await?;
    let loaded = store.load("digits_summary", Some(saved.version)).await?;
    let back: FeatureSummary = serde_json::from_slice(&loaded.part("summary.json").await?)
        .map_err(|source| QuiverError::Json {
            context: "stored feature summary".to_string(),
            source,
        })?;
    if back != local {
        return Err(QuiverError::internal(
            "the summary read back differs from the one saved",
        ));
    }
    writeln!(
        out,
        "\nSaved the summary as model 'digits_summary' version {} in {} and read it back intact.",
        saved.version,
        store.url()
    )
    .ok();
    steps.inc(1);

    // 6. Train, evaluate, save, reload and predict with a pipeline (when there is a label).
    let classifier = match label {
        Some(l) => classify(session, &ds, l, &store, out).await?,
        None => None,
    };
    steps.finish_and_clear();
    if !source.contains("://") {
        writeln!(
            out,
            "Done. Next: quiver sql -e \"SELECT label, avg(pixel_42) FROM '{source}' GROUP BY label ORDER BY label\""
        )
        .ok();
    } else {
        writeln!(out, "Done.").ok();
    }
    Ok(QuickstartReport {
        source,
        rows,
        summary: local,
        runner_max_rel_diff: diff,
        saved_version: saved.version,
        classifier,
    })
}

/// What the classification step measured.
#[derive(Debug, Clone)]
pub struct ClassifierReport {
    pub train_rows: usize,
    pub test_rows: usize,
    pub accuracy: f64,
    pub f1: f64,
    pub model_version: u64,
    /// The reloaded model's predictions equal the fitted one's on the test rows.
    pub reload_identical: bool,
}

/// Splits 80/20, fits assembler → scaler → logistic regression, evaluates on the test part,
/// saves the pipeline, reloads it and predicts with the reloaded model.
async fn classify(
    session: &QuiverSession,
    ds: &Dataset,
    label: &str,
    store: &quiver_engine::ModelStore,
    out: &mut dyn Write,
) -> Result<Option<ClassifierReport>> {
    use quiver_mllib::{
        Estimator, LogisticRegression, MulticlassClassificationEvaluator, Pipeline, PipelineModel,
        StandardScaler, Transformer, VectorAssembler,
    };
    let ml = |e: quiver_mllib::MllibError| match e {
        quiver_mllib::MllibError::Engine(q) => q,
        other => QuiverError::internal(other.to_string()),
    };
    let parts = ds.random_split(&[0.8, 0.2], 42)?;
    let (train, test) = (&parts[0], &parts[1]);
    let (train_rows, test_rows) = (train.count().await?, test.count().await?);
    if train_rows < 10 || test_rows == 0 {
        writeln!(
            out,
            "\nSkipped the classifier: {train_rows} training and {test_rows} test rows are too few."
        )
        .ok();
        return Ok(None);
    }
    let t = Instant::now();
    let pipeline = Pipeline::new()
        .transformer(VectorAssembler::new(ds.features()))
        .estimator(StandardScaler::new().with_mean(true))
        .estimator(LogisticRegression::new().reg_param(1e-3));
    let model = pipeline.fit(session, train).await.map_err(ml)?;
    let fit_ms = t.elapsed().as_secs_f64() * 1e3;
    let scored = model.transform(test).map_err(ml)?;
    let metrics = MulticlassClassificationEvaluator::new()
        .evaluate(session, &scored)
        .await
        .map_err(ml)?;
    writeln!(
        out,
        "\nClassifier: VectorAssembler -> StandardScaler -> LogisticRegression (multinomial, reg_param 1e-3)\n\
         trained on {train_rows} rows in {fit_ms:.0} ms; on the {test_rows} held-out rows: accuracy {:.4}, F1 {:.4}",
        metrics.accuracy, metrics.f1
    )
    .ok();
    writeln!(out, "Confusion matrix (rows: label, columns: prediction):").ok();
    let header: Vec<String> = metrics.classes.iter().map(|c| format!("{c:>4}")).collect();
    writeln!(out, "         {}", header.join("")).ok();
    for (c, row) in metrics.classes.iter().zip(&metrics.confusion) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>4}")).collect();
        writeln!(out, "    {c:>4} {}", cells.join("")).ok();
    }
    let saved = quiver_mllib::save(store, "digits_classifier", &model)
        .await
        .map_err(ml)?;
    let reloaded: PipelineModel =
        quiver_mllib::load(store, "digits_classifier", Some(saved.version))
            .await
            .map_err(ml)?;
    let again = MulticlassClassificationEvaluator::new()
        .evaluate(session, &reloaded.transform(test).map_err(ml)?)
        .await
        .map_err(ml)?;
    let reload_identical = again == metrics;
    let sample = reloaded
        .transform(test)
        .map_err(ml)?
        .dataframe()
        .clone()
        .select_columns(&[label, "prediction"])?
        .limit(0, Some(8))?
        .collect()
        .await?;
    writeln!(
        out,
        "Saved as model 'digits_classifier' version {}; reloaded it ({}) and predicted:",
        saved.version,
        if reload_identical {
            "same metrics"
        } else {
            "METRICS DIFFER"
        }
    )
    .ok();
    print_table(out, &sample)?;
    Ok(Some(ClassifierReport {
        train_rows,
        test_rows,
        accuracy: metrics.accuracy,
        f1: metrics.f1,
        model_version: saved.version,
        reload_identical,
    }))
}

/// Turns (class, count) rows into one row with a column per class, for a compact printout.
fn transpose_counts(batches: &[RecordBatch]) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for b in batches {
        let class = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let class = arrow::array::AsArray::as_string::<i32>(&class);
        let count = arrow::compute::cast(b.column(1), &DataType::Int64)?;
        let count = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&count);
        for i in 0..b.num_rows() {
            let name = if class.is_valid(i) {
                class.value(i).to_string()
            } else {
                "NULL".to_string()
            };
            fields.push(Field::new(name, DataType::Int64, false));
            cols.push(Arc::new(Int64Array::from(vec![count.value(i)])));
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}
