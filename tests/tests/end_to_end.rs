//! End-to-end flows through the driver: the quickstart, SQL with Quiver's functions, and the
//! summary example's path.

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use quiver_driver::commands::{quickstart, sql};
use quiver_driver::{QuiverConfig, Runner};

fn session_with_store(dir: &tempfile::TempDir) -> quiver_driver::QuiverSession {
    let config = QuiverConfig::default()
        .with_model_store(dir.path().join("models").to_string_lossy().to_string());
    quiver_driver::session_with(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_runs_end_to_end_on_the_shipped_data() {
    let dir = tempfile::tempdir().unwrap();
    let session = session_with_store(&dir);
    let mut out = Vec::new();
    let report = quickstart::quickstart(&session, None, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(report.rows, 1797);
    assert_eq!(report.summary.dim(), 64);
    assert!(
        report.runner_max_rel_diff <= 1e-12,
        "{}",
        report.runner_max_rel_diff
    );
    assert_eq!(report.saved_version, 1);
    for needle in [
        "1797 rows x 65 columns",
        "the 10 most variable",
        "Images per class",
        "pixel_42",
        "read it back intact",
    ] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
    // Train, evaluate, save, reload, predict.
    let c = report.classifier.as_ref().expect("digits have a label");
    assert_eq!(c.train_rows + c.test_rows, 1797);
    assert!(c.accuracy > 0.95, "accuracy {}", c.accuracy);
    assert!(c.reload_identical);
    assert_eq!(c.model_version, 1);
    for needle in ["Confusion matrix", "accuracy", "digits_classifier"] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
    // The class counts of the UCI test set.
    assert!(
        text.contains("178  182  177  183  181  182  181  179  174  180"),
        "{text}"
    );
    // A second run saves a second version.
    let again = quickstart::quickstart(&session, None, &mut Vec::new())
        .await
        .unwrap();
    assert_eq!(again.saved_version, 2);
    let store = session.model_store().unwrap();
    assert_eq!(store.versions("digits_summary").await.unwrap(), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_reads_other_data_and_reports_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let session = session_with_store(&dir);
    let csv = dir.path().join("small.csv");
    std::fs::write(&csv, "a,b,label\n1,2.5,0\n3,4.5,1\n5,6.5,1\n").unwrap();
    let report = quickstart::quickstart(&session, Some(csv.to_str().unwrap()), &mut Vec::new())
        .await
        .unwrap();
    assert_eq!(report.rows, 3);
    assert_eq!(report.summary.mean, vec![3.0, 4.5]);
    assert!(
        report.classifier.is_none(),
        "three rows are too few to train and test on"
    );
    let err = quickstart::quickstart(&session, Some("/nope/missing.parquet"), &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "file not found: /nope/missing.parquet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sees_quiver_functions_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let session = session_with_store(&dir);
    let digits = quiver_driver::shipped_digits().unwrap();
    let mut out = Vec::new();
    sql::run_sql(
        &session,
        &format!(
            "CREATE VIEW d AS SELECT * FROM '{digits}';
             SELECT count(*) AS n, sum(vector_assemble(pixel_1, pixel_2)[1]) AS s1 FROM d"
        ),
        &mut out,
    )
    .await
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("1797"), "{text}");
    // The same number through the Dataset API.
    let ds = quiver_driver::Dataset::new(session.read(&digits).await.unwrap())
        .with_features(["pixel_1"])
        .unwrap();
    let s = session.summarize(&ds, Runner::Embedded).await.unwrap();
    assert!(text.contains(&format!("{}", s.sum[0] as i64)), "{text}");

    let err = sql::run_sql(&session, "SELECT 1; SELECT nope FROM d", &mut Vec::new())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("statement 2 of 2") && msg.contains("nope"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_parquet_reads_back_with_the_same_summary() {
    let dir = tempfile::tempdir().unwrap();
    let session = session_with_store(&dir);
    let digits = quiver_driver::shipped_digits().unwrap();
    let df = session.read(&digits).await.unwrap();
    let out = dir.path().join("copy.arrow");
    session
        .write_ipc(df.clone(), out.to_str().unwrap())
        .await
        .unwrap();
    let a = quiver_driver::Dataset::new(df)
        .with_label("label")
        .unwrap()
        .with_numeric_features_except(&[])
        .unwrap();
    let b = quiver_driver::Dataset::new(session.read(out.to_str().unwrap()).await.unwrap())
        .with_label("label")
        .unwrap()
        .with_numeric_features_except(&[])
        .unwrap();
    let sa = session.summarize(&a, Runner::Local).await.unwrap();
    let sb = session.summarize(&b, Runner::Local).await.unwrap();
    assert_eq!(sa, sb);
    let got = session
        .sql(&format!("SELECT avg(pixel_10) FROM '{}'", out.display()))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let v = got[0].column(0).as_primitive::<Float64Type>().value(0);
    assert!((v - sa.mean[10]).abs() < 1e-12);
}

/// A tuned CREATE MODEL keeps the best trial's values as the model's options (the final fit
/// used them), scores trials on the model's own held-out rows, records every trial, and
/// leaves no training snapshot behind in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuned_create_model_keeps_the_best_trials_options() {
    let dir = tempfile::tempdir().unwrap();
    let session = session_with_store(&dir);
    let sql = quiver_sql_udfs::SqlSession::new(session.clone()).unwrap();
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/diabetes.parquet")
        .canonicalize()
        .unwrap();
    sql.execute(&format!(
        "CREATE MODEL dia OPTIONS (model_type = 'linear_reg', input_label_cols = ['target'], \
         num_trials = 6, max_parallel_trials = 2, hparam_tuning_algorithm = 'random_search', \
         hparam_tuning_objectives = ['mean_squared_error'], l1_reg = HPARAM_RANGE(0, 5), \
         l2_reg = HPARAM_CANDIDATES([0.0, 0.5, 2.0]), fit_intercept = TRUE, \
         data_split_method = 'random', data_split_eval_fraction = 0.25, seed = 9) \
         AS SELECT * FROM '{}'",
        data.display()
    ))
    .await
    .unwrap();
    let store = session.model_store().unwrap();
    let meta = store.load("dia", None).await.unwrap().metadata;
    let tuning = &meta.training_summary["tuning"];
    let trials = tuning["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    assert_eq!(tuning["objective"], "mse");
    let best = trials
        .iter()
        .filter(|t| t["status"] == "ok")
        .min_by(|a, b| {
            a["loss"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["loss"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(tuning["best_trial"], best["id"]);
    let options = &meta.training_summary["options"];
    for k in ["l1_reg", "l2_reg"] {
        assert_eq!(
            options[k].as_f64().unwrap(),
            best["params"][k].as_f64().unwrap(),
            "{k}: the stored model was fitted with the best trial's value"
        );
    }
    assert_eq!(options["fit_intercept"], true, "fixed options stay");
    assert_eq!(tuning["tuned"]["l1_reg"], "HPARAM_RANGE(0, 5)");
    // Trials and the stored model use the same held-out rows (a row's side depends only on
    // its values and the seed): the best trial's score is the model's evaluation.
    assert_eq!(meta.metrics["evaluated_on"], "held-out rows");
    let (trial_mse, model_mse) = (
        best["metrics"]["mse"].as_f64().unwrap(),
        meta.metrics["values"]["mse"].as_f64().unwrap(),
    );
    assert!(
        (trial_mse - model_mse).abs() <= 1e-9 * model_mse,
        "{trial_mse} vs {model_mse}"
    );
    assert_eq!(tuning["stored_fit"], "best trial");
    // The stored model is the best trial's fit, not a refit: the same statement with the
    // best values fixed (same rows, no trials) fits a model that scores the same.
    sql.execute(&format!(
        "CREATE MODEL dia_fixed OPTIONS (model_type = 'linear_reg', input_label_cols = ['target'], \
         l1_reg = {}, l2_reg = {}, fit_intercept = TRUE, \
         data_split_method = 'random', data_split_eval_fraction = 0.25, seed = 9) \
         AS SELECT * FROM '{}'",
        options["l1_reg"],
        options["l2_reg"],
        data.display()
    ))
    .await
    .unwrap();
    let fixed = store.load("dia_fixed", None).await.unwrap().metadata;
    let fixed_mse = fixed.metrics["values"]["mse"].as_f64().unwrap();
    assert!(
        (fixed_mse - model_mse).abs() <= 1e-6 * model_mse,
        "refit {fixed_mse} vs kept {model_mse}"
    );
    assert_eq!(
        fixed.training_summary["rows_train"],
        meta.training_summary["rows_train"]
    );
    let left: Vec<String> = std::fs::read_dir(dir.path().join("models/dia"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|f| !f.contains("tuning")),
        "the training snapshot is removed: {left:?}"
    );
}

fn count(batches: &[arrow::array::RecordBatch], col: usize) -> i64 {
    batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            b.column(col)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        })
        .sum()
}

/// A query resolves each unpinned model name once, when it is planned: a version another
/// session (another process) publishes while it runs does not mix in; a dropped pinned
/// version is noticed within the catalogue's freshness window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_uses_one_version_of_each_model() {
    let dir = tempfile::tempdir().unwrap();
    let a = quiver_sql_udfs::SqlSession::new(session_with_store(&dir)).unwrap();
    let b = quiver_sql_udfs::SqlSession::new(session_with_store(&dir)).unwrap();
    let model = |sign: &str| {
        format!(
            "CREATE OR REPLACE MODEL m OPTIONS (model_type = 'linear_reg', input_label_cols = ['y'], \
             data_split_method = 'no_split') AS SELECT CAST(value AS DOUBLE) AS x, {sign} CAST(value AS DOUBLE) AS y \
             FROM generate_series(1, 200)"
        )
    };
    a.execute(&model("")).await.unwrap();
    let plan = a
        .execute("EXPLAIN SELECT ml_predict('m', CAST(value AS DOUBLE)) FROM generate_series(1, 3)")
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&plan[0].batches)
        .unwrap()
        .to_string();
    assert!(text.contains("m@1"), "the plan pins the version:\n{text}");
    // v2 (y = -x) is published while a long query of `a` runs: every row of that query is
    // predicted by the same version (all positive, or all negative).
    let query = "SELECT count(*) FILTER (WHERE ml_predict('m', CAST(value AS DOUBLE)) > 0) AS pos, \
                 count(*) FILTER (WHERE ml_predict('m', CAST(value AS DOUBLE)) < 0) AS neg \
                 FROM generate_series(1, 1000000)";
    let running = tokio::spawn({
        let a = a.clone();
        async move { a.execute(query).await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    b.execute(&model("-")).await.unwrap();
    let out = running.await.unwrap();
    let (pos, neg) = (count(&out[0].batches, 0), count(&out[0].batches, 1));
    assert_eq!(pos + neg, 1_000_000);
    assert!(
        pos == 0 || neg == 0,
        "two versions in one query: {pos} / {neg}"
    );
    // A pinned version dropped by the other session is refused once the window passes.
    a.execute("SELECT ml_predict('m@2', 1.0)").await.unwrap();
    b.execute("DROP MODEL m").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let err = a
        .execute("SELECT ml_predict('m@2', 1.0)")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("'m'"), "{err}");
}

/// CREATE MODEL reads its query once when the result fits `quiver.training_cache` (the
/// default) and per pass otherwise: the same split, the same model, the same metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_training_cache_changes_nothing_but_speed() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/patients.csv")
        .canonicalize()
        .unwrap();
    let mut results = Vec::new();
    for cache in ["2GB", "0", "4KB"] {
        let dir = tempfile::tempdir().unwrap();
        let config = QuiverConfig::default()
            .with_model_store(dir.path().join("models").to_string_lossy().to_string())
            .with_pairs([("quiver.training_cache", cache)])
            .unwrap();
        let sql =
            quiver_sql_udfs::SqlSession::new(quiver_driver::session_with(config).unwrap()).unwrap();
        let out = sql
            .execute(&format!(
                "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true'); \
                 CREATE MODEL m OPTIONS (model_type = 'logistic_reg', input_label_cols = ['progression'], \
                 data_split_method = 'random', data_split_eval_fraction = 0.3, seed = 4) \
                 AS SELECT age, sex, bmi, bp, s5, bmi_band, high_s6, progression FROM p; \
                 SELECT feature, weight FROM ml_weights('m') ORDER BY vector, feature; \
                 CREATE MODEL g OPTIONS (model_type = 'logistic_reg', input_label_cols = ['progression'], \
                 num_trials = 3, hparam_tuning_algorithm = 'grid_search', \
                 l2_reg = HPARAM_CANDIDATES([0.001, 0.1, 3.0]), \
                 data_split_method = 'random', data_split_eval_fraction = 0.3, seed = 4) \
                 AS SELECT age, sex, bmi, bp, s5, bmi_band, high_s6, progression FROM p; \
                 SELECT trial_id, hyperparameters, objective_value, is_optimal, metrics FROM ml_trial_info('g') ORDER BY trial_id; \
                 SELECT feature, weight FROM ml_weights('g') ORDER BY vector, feature",
                data.display()
            ))
            .await
            .unwrap();
        let printed = |i: usize| {
            arrow::util::pretty::pretty_format_batches(&out[i].batches)
                .unwrap()
                .to_string()
        };
        // Tuned: with the cache the trials take the statement's two sides as read in its one
        // pass, without it they split the encoded rows by the same draws; the same trials,
        // the same chosen fit.
        let tuned = format!("{}\n{}", printed(4), printed(5));
        let created = arrow::util::pretty::pretty_format_batches(&out[1].batches)
            .unwrap()
            .to_string();
        let weights = arrow::util::pretty::pretty_format_batches(&out[2].batches)
            .unwrap()
            .to_string();
        results.push((
            cache,
            created.lines().nth(3).unwrap_or_default().to_string(),
            weights,
            tuned,
        ));
    }
    assert!(results[0].3.contains("true"), "{}", results[0].3);
    for (cache, created, weights, tuned) in &results[1..] {
        // Same rows on each side, same fit: the summary row (without the model version) and
        // every weight print alike.
        assert_eq!(created, &results[0].1, "training_cache = {cache}");
        assert_eq!(weights, &results[0].2, "training_cache = {cache}");
        assert_eq!(tuned, &results[0].3, "training_cache = {cache}");
    }
}

/// CREATE MODEL with `auto_split` (the default) on fewer rows than it splits (the 442 patients)
/// runs its query once: the rows as read are kept while they are few, so the statement's usual
/// path does not run the query again. A function counting the rows it sees shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_split_under_its_threshold_runs_the_query_once() {
    use datafusion::arrow::array::ArrayRef;
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/patients.csv")
        .canonicalize()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql = quiver_sql_udfs::SqlSession::new(session_with_store(&dir)).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let counted = create_udf(
        "counted",
        vec![arrow::datatypes::DataType::Float64],
        arrow::datatypes::DataType::Float64,
        Volatility::Volatile,
        Arc::new(move |args: &[ColumnarValue]| {
            let values: ArrayRef = match &args[0] {
                ColumnarValue::Array(a) => Arc::clone(a),
                ColumnarValue::Scalar(s) => s.to_array()?,
            };
            counter.fetch_add(values.len(), Ordering::Relaxed);
            Ok(ColumnarValue::Array(values))
        }),
    );
    sql.session().context().register_udf(counted);
    let create = |name: &str, options: &str| {
        format!(
            "CREATE MODEL {name} OPTIONS (model_type = 'linear_reg', input_label_cols = ['target']{options}) \
             AS SELECT counted(CAST(age AS DOUBLE)) AS age, bmi, bp, s5, target FROM p"
        )
    };
    sql.execute(&format!(
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
        data.display()
    ))
    .await
    .unwrap();
    sql.execute(&create("once", "")).await.unwrap();
    assert_eq!(seen.swap(0, Ordering::Relaxed), 442);
    // The same model as the statement that does not plan a split at all.
    sql.execute(&create("unsplit", ", data_split_method = 'no_split'"))
        .await
        .unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), 442);
    let weights =
        |m: &str| format!("SELECT feature, weight FROM ml_weights('{m}') ORDER BY feature");
    let printed = |b: &[arrow::array::RecordBatch]| {
        arrow::util::pretty::pretty_format_batches(b)
            .unwrap()
            .to_string()
    };
    let once = sql.execute(&weights("once")).await.unwrap();
    let unsplit = sql.execute(&weights("unsplit")).await.unwrap();
    assert_eq!(printed(&once[0].batches), printed(&unsplit[0].batches));
    // From 500 rows up auto_split holds 20% out, still in one read of the query.
    let cancer = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/breast_cancer.parquet")
        .canonicalize()
        .unwrap();
    seen.store(0, Ordering::Relaxed);
    let out = sql
        .execute(&format!(
            "CREATE EXTERNAL TABLE c STORED AS PARQUET LOCATION '{}'; \
             CREATE MODEL split OPTIONS (model_type = 'logistic_reg', input_label_cols = ['label']) \
             AS SELECT counted(f0) AS f0, f1, f2, f3, label FROM c",
            cancer.display()
        ))
        .await
        .unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), 569);
    let rows = |name: &str| -> i64 {
        let b = &out[1].batches[0];
        let c = b.column(b.schema().index_of(name).unwrap());
        c.as_primitive::<arrow::datatypes::Int64Type>().value(0)
    };
    let (train, eval) = (rows("rows_train"), rows("rows_eval"));
    assert_eq!(train + eval, 569);
    assert!((90..=140).contains(&eval), "{eval} rows held out of 569");
}
