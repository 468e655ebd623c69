//! The cluster path with real processes: a quiver-scheduler and two quiver-executors on
//! loopback. Fits on the cluster equal the embedded fits; a model fitted there predicts the
//! same in cluster SQL and in an embedded session; faults give clear errors, not hangs.

mod common;

use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use common::{LocalCluster, write_synthetic};
use quiver_engine::{Dataset, QuiverConfig, QuiverSession};
use quiver_mllib::{
    Estimator, KMeans, LinearRegression, LogisticRegression, Pipeline, StandardScaler, Transformer,
    VectorAssembler,
};
use quiver_sql_udfs::SqlSession;

const FEATURES: [&str; 5] = ["f0", "f1", "f2", "f3", "f4"];

fn config(store: &std::path::Path) -> QuiverConfig {
    // One partition per file: the four files become four tasks per scan.
    QuiverConfig::default()
        .with_pairs([("quiver.target_partitions", "4")])
        .unwrap()
        .with_model_store(store.to_string_lossy().to_string())
}

fn assert_close(what: &str, a: &[f64], b: &[f64]) {
    assert_near(what, a, b, 1e-9)
}

fn assert_near(what: &str, a: &[f64], b: &[f64], rel: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let tol = rel * x.abs().max(y.abs()).max(1.0);
        assert!(
            (x - y).abs() <= tol,
            "{what}[{i}]: cluster {x} vs embedded {y}"
        );
    }
}

fn weights(model: &dyn Transformer) -> Vec<f64> {
    model
        .weight_vectors()
        .into_iter()
        .flat_map(|(_, w)| w)
        .collect()
}

/// Every fit the issue names, on one session; returns the weights of each.
async fn fit_all(s: &QuiverSession, data: &str) -> Vec<(&'static str, Vec<f64>)> {
    let df = s.read(data).await.unwrap();
    let raw = Dataset::new(df.clone()).with_label("class").unwrap();
    let pipeline = Pipeline::new()
        .transformer(VectorAssembler::new(FEATURES))
        .estimator(StandardScaler::new().with_mean(true).output_col("std"))
        .estimator(LogisticRegression::new().reg_param(0.01).max_iter(30));
    let model = pipeline.fit(s, &raw).await.unwrap();
    let mut out = Vec::new();
    for stage in model.stages() {
        out.push(("pipeline stage", weights(stage.as_ref())));
    }
    let reg = Dataset::new(df.clone())
        .with_features(FEATURES)
        .unwrap()
        .with_label("target")
        .unwrap();
    let lin = LinearRegression::new()
        .reg_param(0.1)
        .fit(s, &reg)
        .await
        .unwrap();
    let mut w = lin.coefficients().to_vec();
    w.push(lin.intercept());
    out.push(("linear regression", w));
    let km = KMeans::new()
        .k(3)
        .seed(7)
        .max_iter(10)
        .fit(s, &Dataset::new(df).with_features(FEATURES).unwrap())
        .await
        .unwrap();
    out.push(("k-means", km.centers().concat()));
    out
}

async fn collect(s: &SqlSession, sql: &str) -> Vec<RecordBatch> {
    s.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .pop()
        .unwrap()
        .batches
}

/// A SQL session on `session` with the Parquet files at `data` registered as table `t`.
async fn sql_over(session: QuiverSession, data: &str) -> SqlSession {
    let sql = SqlSession::new(session).unwrap();
    collect(
        &sql,
        &format!("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{data}'"),
    )
    .await;
    sql
}

fn f64_column(batches: &[RecordBatch], i: usize) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| b.column(i).as_primitive::<Float64Type>().values().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_fits_equal_embedded_fits_and_predictions_agree() {
    quiver_executor::install().unwrap();
    let cluster = LocalCluster::start(2);
    let data = write_synthetic(&cluster.dir.path().join("data"), 4, 2500);
    let store = cluster.dir.path().join("models");

    let embedded = QuiverSession::embedded_with(config(&store)).unwrap();
    let remote = QuiverSession::remote_with(&cluster.url(), config(&store))
        .await
        .unwrap();
    assert!(remote.is_cluster());

    let on_cluster = fit_all(&remote, &data).await;
    let in_process = fit_all(&embedded, &data).await;
    for ((what, c), (_, e)) in on_cluster.iter().zip(&in_process) {
        assert!(!c.is_empty() || what == &"pipeline stage");
        assert_close(what, c, e);
    }

    // Both executors did work: rows of the four files were read in both processes…
    let sql = sql_over(remote.clone(), &data).await;
    let per_process = collect(
        &sql,
        "SELECT quiver_process() AS p, count(*) AS n FROM t GROUP BY 1 ORDER BY 1",
    )
    .await;
    let names: Vec<String> = per_process
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let c = c.as_string::<i32>();
            (0..c.len())
                .map(|i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(names, ["exec-1", "exec-2"], "{per_process:?}");
    // …and both ran tasks of the fits (each executor logs the tasks it runs).
    for i in 0..2 {
        let log = cluster.executor_log(i);
        let tasks = log.matches("task").count();
        assert!(tasks > 10, "exec-{} ran {tasks} task lines:\n{log}", i + 1);
    }

    // A model fitted on the cluster through SQL, used by cluster SQL and by an embedded
    // session on the same store: identical predictions.
    let columns = FEATURES.join(", ");
    collect(
        &sql,
        &format!(
            "CREATE MODEL clf OPTIONS (model_type = 'logistic_reg', input_label_cols = ['class'], \
             data_split_method = 'no_split') AS SELECT {columns}, class FROM t"
        ),
    )
    .await;
    let query = format!(
        "SELECT f0, ml_predict_proba('clf', {columns})[2] AS p, ml_predict('clf', {columns}) AS c \
         FROM t ORDER BY f0"
    );
    let remote_rows = collect(&sql, &query).await;
    let local = sql_over(embedded.clone(), &data).await;
    let local_rows = collect(&local, &query).await;
    assert_eq!(f64_column(&remote_rows, 0).len(), 10_000);
    for col in 0..3 {
        assert_eq!(
            f64_column(&remote_rows, col),
            f64_column(&local_rows, col),
            "column {col} differs between the cluster and the embedded session"
        );
    }
}

/// How many partitions each executor computed and kept (it logs each one once).
fn kept_per_executor(cluster: &LocalCluster) -> Vec<usize> {
    (0..2)
        .map(|i| cluster.executor_log(i).matches("kept partition").count())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterative_fits_read_each_partition_once_where_it_is_kept() {
    quiver_executor::install().unwrap();
    let cluster = LocalCluster::start(2);
    let dir = cluster.dir.path().join("data");
    let data = write_synthetic(&dir, 4, 2500);
    let store = cluster.dir.path().join("models");
    let remote = QuiverSession::remote_with(&cluster.url(), config(&store))
        .await
        .unwrap();
    let embedded = QuiverSession::embedded_with(config(&store)).unwrap();
    let fit = |s: QuiverSession, reg: f64| {
        let data = data.clone();
        async move {
            let ds = Dataset::new(s.read(&data).await.unwrap())
                .with_features(FEATURES)
                .unwrap()
                .with_label("class")
                .unwrap();
            let m = LogisticRegression::new()
                .reg_param(reg)
                .max_iter(8)
                .tol(0.0)
                .fit(&s, &ds)
                .await
                .unwrap();
            (weights(&m), m.summary().data_passes)
        }
    };
    // Partial sums merge in arrival order on a cluster, and with tol 0 the last line searches
    // run on noise: equal to 1e-6 (rows read from a stale cache would be far off).
    let same = |what: &str, a: &[f64], b: &[f64]| assert_near(what, a, b, 1e-6);
    let (on_cluster, passes) = fit(remote.clone(), 0.01).await;
    assert!(passes >= 8, "{passes} passes");
    // Each of the four partitions was read and prepared once, on its home executor (two
    // each), though the fit passed over the data {passes} times.
    assert_eq!(kept_per_executor(&cluster), [2, 2], "after {passes} passes");
    same(
        "cached fit",
        &on_cluster,
        &fit(embedded.clone(), 0.01).await.0,
    );
    // A second fit over the same files reads none of them.
    let (other, _) = fit(remote.clone(), 0.1).await;
    assert_eq!(kept_per_executor(&cluster), [2, 2]);
    same("second fit", &other, &fit(embedded.clone(), 0.1).await.0);
    // With the cache off the executors read the files on every pass and keep nothing: the
    // same model.
    let uncached = QuiverSession::remote_with(
        &cluster.url(),
        config(&store)
            .with_pairs([("quiver.cluster.cache", "false")])
            .unwrap(),
    )
    .await
    .unwrap();
    same("uncached fit", &fit(uncached, 0.01).await.0, &on_cluster);
    assert_eq!(kept_per_executor(&cluster), [2, 2]);
    // Rewritten files are new data: read again, never the old rows from memory. (New
    // sessions: a DataFusion session keeps the metadata of files it has read.)
    write_synthetic(&dir, 4, 2000);
    let remote = QuiverSession::remote_with(&cluster.url(), config(&store))
        .await
        .unwrap();
    let (rewritten, _) = fit(remote.clone(), 0.01).await;
    assert_eq!(kept_per_executor(&cluster), [4, 4]);
    let embedded = QuiverSession::embedded_with(config(&store)).unwrap();
    same("rewritten data", &rewritten, &fit(embedded, 0.01).await.0);
    // Dataset::persist keeps the rows where the first query reads them; unpersist makes every
    // executor drop them, so the next query reads (and keeps) them again.
    let ds = Dataset::new(remote.read(&data).await.unwrap())
        .with_features(FEATURES)
        .unwrap();
    let persisted = ds.persist(&remote).await.unwrap();
    let rows = |d: &Dataset| {
        let df = d.dataframe().clone();
        async move {
            let batches = df.collect().await.unwrap();
            batches.iter().map(|b| b.num_rows()).sum::<usize>()
        }
    };
    assert_eq!(rows(&persisted).await, 8000);
    assert_eq!(kept_per_executor(&cluster), [6, 6]);
    assert_eq!(rows(&persisted).await, 8000);
    assert_eq!(kept_per_executor(&cluster), [6, 6], "read from memory");
    assert_eq!(persisted.unpersist(&remote).await.unwrap(), 4);
    assert_eq!(rows(&persisted).await, 8000);
    assert_eq!(
        kept_per_executor(&cluster),
        [8, 8],
        "read again after unpersist"
    );
    assert_eq!(persisted.unpersist(&remote).await.unwrap(), 4);
    assert_eq!(
        persisted.unpersist(&remote).await.unwrap(),
        0,
        "nothing left"
    );
}

/// The same on a cluster with a token, where executors pull their tasks (their polls are
/// their heartbeats, which carry no status): each partition is still read once, on its home
/// executor, however the polls come in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulling_executors_also_read_each_partition_once_where_it_is_kept() {
    quiver_executor::install().unwrap();
    let token = "a-token-of-the-locality-test-0123456789";
    let env = [("QUIVER_AUTH_TOKEN", token)];
    let cluster = LocalCluster::start_with_args(2, false, &env, &env, &[]);
    let data = write_synthetic(&cluster.dir.path().join("data"), 4, 2500);
    let store = cluster.dir.path().join("models");
    let mut settings = config(&store);
    settings.auth_token = Some(quiver_engine::cluster::auth::AuthToken::new(token).unwrap());
    let remote = QuiverSession::remote_with(&cluster.url(), settings)
        .await
        .unwrap();
    let ds = Dataset::new(remote.read(&data).await.unwrap())
        .with_features(FEATURES)
        .unwrap()
        .with_label("class")
        .unwrap();
    let m = LogisticRegression::new()
        .max_iter(8)
        .tol(0.0)
        .fit(&remote, &ds)
        .await
        .unwrap();
    let passes = m.summary().data_passes;
    assert!(passes >= 8, "{passes} passes");
    assert_eq!(kept_per_executor(&cluster), [2, 2], "after {passes} passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_scheduler_and_wrong_scheme_fail_fast() {
    quiver_executor::install().unwrap();
    let port = common::free_port();
    let start = std::time::Instant::now();
    let err = QuiverSession::remote(&format!("df://127.0.0.1:{port}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unreachable") && err.contains(&port.to_string()),
        "{err}"
    );
    let err = QuiverSession::remote("http://127.0.0.1:50050")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("scheme is 'http'"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

fn models_in(store: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(store)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_mid_fit_either_recovers_or_fails_clearly_and_publishes_nothing_partial() {
    killed_mid_fit(None).await;
}

/// The same with a token: the executors pull their tasks (Quiver's own pull loop), and the
/// lost one is noticed by its missing polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulling_executor_killed_mid_fit_is_recovered_from_or_named() {
    killed_mid_fit(Some("a-token-of-the-kill-test-0123456789")).await;
}

async fn killed_mid_fit(token: Option<&str>) {
    quiver_executor::install().unwrap();
    let env: Vec<(&str, &str)> = token
        .map(|t| ("QUIVER_AUTH_TOKEN", t))
        .into_iter()
        .collect();
    let mut cluster = LocalCluster::start_with_args(2, false, &env, &env, &[]);
    let data = write_synthetic(&cluster.dir.path().join("data"), 4, 50_000);
    let store = cluster.dir.path().join("models");
    // A pass takes well under a second here: give up on a stuck job after 10 s.
    let mut settings = config(&store)
        .with_pairs([("quiver.cluster.job_timeout_secs", "10")])
        .unwrap();
    settings.auth_token = token.map(|t| quiver_engine::cluster::auth::AuthToken::new(t).unwrap());
    let remote = QuiverSession::remote_with(&cluster.url(), settings)
        .await
        .unwrap();
    let sql = sql_over(remote, &data).await;
    let columns = FEATURES.join(", ");
    let create = format!(
        "CREATE MODEL clf OPTIONS (model_type = 'logistic_reg', input_label_cols = ['class'], \
         data_split_method = 'no_split', max_iterations = 60, min_rel_progress = 0) \
         AS SELECT {columns}, class FROM t"
    );
    let statement = create.clone();
    let fit = tokio::spawn(async move {
        let r = sql.execute(&statement).await;
        (sql, r)
    });
    // Kill the second executor once the fit is under way (it has run tasks).
    let start = std::time::Instant::now();
    while cluster.executor_log(1).matches("task").count() < 20 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the fit never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill_executor(1);
    let (sql, result) = match tokio::time::timeout(Duration::from_secs(120), fit).await {
        Ok(r) => r.unwrap(),
        Err(_) => {
            let tail = |t: String| t.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            panic!(
                "the fit hung after an executor was lost\nscheduler (last lines first):\n{}\nexec-1:\n{}",
                tail(std::fs::read_to_string(&cluster.scheduler_log).unwrap_or_default()),
                tail(cluster.executor_log(0))
            );
        }
    };
    match result {
        Ok(_) => {
            // Ballista reran the lost tasks on exec-1: one complete version, and it is the model
            // an embedded fit gives.
            assert_eq!(models_in(&store), ["clf"]);
            let embedded =
                QuiverSession::embedded_with(config(&cluster.dir.path().join("m2"))).unwrap();
            let local = sql_over(embedded, &data).await;
            let q = "SELECT weight FROM ml_weights('clf') ORDER BY vector, feature";
            // ml_weights' table is built in the client and shipped inside the plan.
            let remote_w = f64_column(&collect(&sql, q).await, 0);
            collect(&local, &create).await;
            let local_w = f64_column(&collect(&local, q).await, 0);
            assert_eq!(remote_w.len(), local_w.len());
            for (a, b) in remote_w.iter().zip(&local_w) {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
            }
            eprintln!("outcome: the fit recovered on the remaining executor");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("exec-2") || msg.contains("executor"), "{msg}");
            assert!(
                models_in(&store).is_empty(),
                "a failed fit left {:?}",
                models_in(&store)
            );
            eprintln!("outcome: the fit failed clearly: {msg}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_without_quivers_functions_gives_a_clear_error_not_a_hang() {
    quiver_executor::install().unwrap();
    let cluster = LocalCluster::start_with(1, true, &[]);
    let data = write_synthetic(&cluster.dir.path().join("data"), 2, 100);
    let remote = QuiverSession::remote_with(&cluster.url(), config(&cluster.dir.path().join("m")))
        .await
        .unwrap();
    let df = remote.read(&data).await.unwrap();
    let ds = Dataset::new(df)
        .with_features(FEATURES)
        .unwrap()
        .with_label("target")
        .unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        LinearRegression::new().fit(&remote, &ds),
    )
    .await
    .expect("a fit on an executor without Quiver's functions hung");
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("quiver-executor") && msg.contains("same Quiver version"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_session_runs_the_cluster_path_in_process() {
    quiver_executor::install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = write_synthetic(&dir.path().join("data"), 2, 1000);
    let s = QuiverSession::standalone_with(config(&dir.path().join("m")))
        .await
        .unwrap();
    assert!(s.is_cluster());
    let ds = Dataset::new(s.read(&data).await.unwrap())
        .with_features(FEATURES)
        .unwrap()
        .with_label("target")
        .unwrap();
    let m = LinearRegression::new().fit(&s, &ds).await.unwrap();
    let e = QuiverSession::embedded_with(config(&dir.path().join("m"))).unwrap();
    let de = Dataset::new(e.read(&data).await.unwrap())
        .with_features(FEATURES)
        .unwrap()
        .with_label("target")
        .unwrap();
    let me = LinearRegression::new().fit(&e, &de).await.unwrap();
    assert_close("standalone", m.coefficients(), me.coefficients());
}

/// A search whose trials (the built-in train-and-evaluate task) are fanned out to the
/// executors gives the same trials as the local and embedded runners for the same seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_trials_fan_out_to_executors_with_the_same_results() {
    use quiver_engine::Runner;
    use quiver_mllib::tuning::{Algo, Search, Space, Tpe, TrainEval, hp};
    quiver_executor::install().unwrap();
    let cluster = LocalCluster::start(2);
    let store = cluster.dir.path().join("m");
    let search = |runner: Runner| {
        let space = Space::new(vec![
            hp::loguniform("reg_param", 1e-4, 1.0),
            hp::choice("max_iter", [serde_json::json!(20)]),
        ])
        .unwrap();
        let spec = TrainEval::new(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../data/breast_cancer.parquet"),
            "logistic_regression",
        )
        .label("label")
        .metric("log_loss")
        .eval_fraction(0.25)
        .split_seed(7);
        Search::train_eval(space, spec)
            .algo(Algo::Tpe(Tpe {
                n_startup_trials: 4,
                ..Tpe::default()
            }))
            .max_evals(8)
            .parallelism(2)
            .seed(3)
            .runner(runner)
    };
    let local_session = QuiverSession::embedded_with(config(&store)).unwrap();
    let local = search(Runner::Local).run(&local_session).await.unwrap();
    let remote = QuiverSession::remote_with(&cluster.url(), config(&store))
        .await
        .unwrap();
    let on_cluster = search(Runner::Embedded).run(&remote).await.unwrap();
    let key = |r: &quiver_mllib::tuning::SearchResult| {
        r.trials
            .iter()
            .map(|t| (t.id, t.params.clone(), t.status, t.loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&local), key(&on_cluster));
    let workers: std::collections::BTreeSet<&str> = on_cluster
        .trials
        .iter()
        .map(|t| t.worker.as_str())
        .collect();
    assert_eq!(
        workers.into_iter().collect::<Vec<_>>(),
        ["exec-1", "exec-2"],
        "trials ran on both executors"
    );
    // A registered task runs there too; a Rust closure cannot, and says so.
    let space = Space::new(vec![hp::uniform("x", -1.0, 1.0)]).unwrap();
    let sphere = Search::task(space.clone(), "quiver.sphere")
        .algo(Algo::Random)
        .max_evals(6)
        .parallelism(2)
        .runner(Runner::Embedded)
        .run(&remote)
        .await
        .unwrap();
    for t in &sphere.trials {
        let x = t.params["x"].as_f64().unwrap();
        assert_eq!(t.loss, Some(x * x));
    }
    // Asynchronously: one job per trial, two at a time.
    let asynchronous = Search::task(space.clone(), "quiver.sphere")
        .algo(Algo::Random)
        .max_evals(6)
        .parallelism(2)
        .asynchronous(true)
        .runner(Runner::Embedded)
        .run(&remote)
        .await
        .unwrap();
    assert_eq!(asynchronous.trials.len(), 6);
    for t in &asynchronous.trials {
        let x = t.params["x"].as_f64().unwrap();
        assert_eq!(t.loss, Some(x * x));
        assert!(t.worker.starts_with("exec-"), "{t:?}");
    }
    let err = Search::new(space, |_| Ok(0.0))
        .max_evals(2)
        .runner(Runner::Embedded)
        .run(&remote)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("closure objective runs only in this process"),
        "{err}"
    );
}

/// A NaN in the data: the cluster's error names the column and the row in the whole dataset
/// (not in the executor's batch), exactly as the embedded error does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_on_the_cluster_is_named_by_its_dataset_row() {
    use arrow::array::{ArrayRef, Float64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    quiver_executor::install().unwrap();
    let cluster = LocalCluster::start(2);
    let dir = cluster.dir.path().join("nan");
    std::fs::create_dir_all(&dir).unwrap();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("a", DataType::Float64, false),
        Field::new("b", DataType::Float64, false),
    ]));
    for file in 0..2 {
        let a: Vec<f64> = (0..50).map(|i| (file * 50 + i) as f64).collect();
        let mut b: Vec<f64> = a.iter().map(|x| x * 0.5).collect();
        if file == 1 {
            b[7] = f64::NAN;
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(Float64Array::from(a)) as ArrayRef,
                std::sync::Arc::new(Float64Array::from(b)) as ArrayRef,
            ],
        )
        .unwrap();
        let f = std::fs::File::create(dir.join(format!("part-{file}.parquet"))).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let data = dir.to_string_lossy().to_string();
    let store = cluster.dir.path().join("m");
    let mut messages = Vec::new();
    for s in [
        QuiverSession::embedded_with(config(&store)).unwrap(),
        QuiverSession::remote_with(&cluster.url(), config(&store))
            .await
            .unwrap(),
    ] {
        let ds = Dataset::new(s.read(&data).await.unwrap())
            .with_features(["a", "b"])
            .unwrap();
        let err = s
            .summarize(&ds, quiver_engine::Runner::Embedded)
            .await
            .unwrap_err();
        messages.push(err.to_string());
    }
    assert_eq!(messages[0], "NaN in column 'b' at row 57", "embedded");
    assert_eq!(messages[1], messages[0], "cluster");
}

/// An executor SIGKILLed while trials run on it: the search still finishes, every trial is
/// there once, and the lost trials were run again elsewhere (same results as a local run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_mid_search_its_trials_run_again_elsewhere() {
    use quiver_engine::Runner;
    use quiver_mllib::tuning::{Algo, Search, Space, TrainEval, hp};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    quiver_executor::install().unwrap();
    let mut cluster = LocalCluster::start(2);
    let store = cluster.dir.path().join("m");
    let batches = Arc::new(AtomicUsize::new(0));
    let search = |runner: Runner, batches: Arc<AtomicUsize>| {
        let space = Space::new(vec![
            hp::loguniform("reg_param", 1e-4, 1.0),
            hp::choice("max_iter", [serde_json::json!(100)]),
            hp::choice("tol", [serde_json::json!(0.0)]),
        ])
        .unwrap();
        // Five folds of 100 iterations: trials long enough to be cut by the kill.
        let mut spec = TrainEval::new(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../data/breast_cancer.parquet"),
            "logistic_regression",
        )
        .label("label")
        .metric("log_loss");
        spec.folds = Some(5);
        Search::train_eval(space, spec)
            .algo(Algo::Random)
            .max_evals(10)
            .parallelism(2)
            .seed(11)
            .runner(runner)
            .on_batch(move |_| {
                batches.fetch_add(1, Ordering::SeqCst);
            })
    };
    let local_session = QuiverSession::embedded_with(config(&store)).unwrap();
    let local = search(Runner::Local, Arc::new(AtomicUsize::new(0)))
        .run(&local_session)
        .await
        .unwrap();
    let remote = QuiverSession::remote_with(
        &cluster.url(),
        config(&store)
            .with_pairs([("quiver.cluster.job_timeout_secs", "20")])
            .unwrap(),
    )
    .await
    .unwrap();
    let run = search(Runner::Embedded, Arc::clone(&batches));
    let job = tokio::spawn(async move { run.run(&remote).await });
    // Kill exec-2 while the second batch of trials runs.
    let start = std::time::Instant::now();
    while batches.load(Ordering::SeqCst) < 1 {
        assert!(start.elapsed() < Duration::from_secs(60), "no batch ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    cluster.kill_executor(1);
    let on_cluster = match tokio::time::timeout(Duration::from_secs(150), job).await {
        Ok(r) => r.unwrap().unwrap(),
        Err(_) => panic!("the search hung after an executor was lost"),
    };
    let key = |r: &quiver_mllib::tuning::SearchResult| {
        r.trials
            .iter()
            .map(|t| (t.id, t.params.clone(), t.status, t.loss))
            .collect::<Vec<_>>()
    };
    for t in &on_cluster.trials {
        eprintln!(
            "trial {} on {} from {} ms to {} ms",
            t.id,
            t.worker,
            t.started_ms - on_cluster.trials[0].started_ms,
            t.finished_ms - on_cluster.trials[0].started_ms
        );
    }
    assert_eq!(key(&local), key(&on_cluster), "{:#?}", on_cluster.trials);
    // After the kill, every trial ran on the executor left.
    let after: Vec<&str> = on_cluster.trials[4..]
        .iter()
        .map(|t| t.worker.as_str())
        .collect();
    assert!(after.iter().all(|w| *w == "exec-1"), "{after:?}");
}

/// Data and models on a real S3-compatible server shared by the client, the scheduler and the
/// executors: a fit from `s3://` data equals the embedded fit, and a model the cluster stored
/// on S3 predicts the same in cluster SQL and in an embedded session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_models_on_s3_are_shared_by_every_process() {
    use quiver_engine::testing::S3Server;
    quiver_executor::install().unwrap();
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket("quiver-cluster");
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The executors get the endpoint on their command line only: they must use it for data,
    // for the models ml_predict loads and for trial data, not just for their query runtime.
    let executor_env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "AWS_ENDPOINT_URL")
        .collect();
    let endpoint = server.endpoint();
    let cluster =
        LocalCluster::start_with_args(2, false, &env, &executor_env, &["--s3-endpoint", &endpoint]);
    let pairs = server.config_pairs();
    let s3_config = || {
        QuiverConfig::default()
            .with_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
            .unwrap()
            .with_pairs([("quiver.target_partitions", "4")])
            .unwrap()
            .with_model_store("s3://quiver-cluster/models/")
    };
    let embedded = QuiverSession::embedded_with(s3_config()).unwrap();
    let local_data = write_synthetic(&cluster.dir.path().join("data"), 4, 1000);
    for i in 0..4 {
        let part = embedded
            .read(&format!("{local_data}part-{i}.parquet"))
            .await
            .unwrap();
        embedded
            .write_parquet(part, &format!("s3://quiver-cluster/data/part-{i}.parquet"))
            .await
            .unwrap();
    }
    let data = "s3://quiver-cluster/data/";
    let remote = QuiverSession::remote_with(&cluster.url(), s3_config())
        .await
        .unwrap();
    let fit = |s: QuiverSession| async move {
        let ds = Dataset::new(s.read(data).await.unwrap())
            .with_features(FEATURES)
            .unwrap()
            .with_label("target")
            .unwrap();
        let m = LinearRegression::new().fit(&s, &ds).await.unwrap();
        let mut w = m.coefficients().to_vec();
        w.push(m.intercept());
        w
    };
    assert_close(
        "linear regression on s3",
        &fit(remote.clone()).await,
        &fit(embedded.clone()).await,
    );

    let columns = FEATURES.join(", ");
    let sql = sql_over(remote, data).await;
    collect(
        &sql,
        &format!(
            "CREATE MODEL lin OPTIONS (model_type = 'linear_reg', input_label_cols = ['target'], \
             data_split_method = 'no_split') AS SELECT {columns}, target FROM t"
        ),
    )
    .await;
    let query = format!("SELECT f0, ml_predict('lin', {columns}) AS p FROM t ORDER BY f0");
    let on_cluster = collect(&sql, &query).await;
    let local = sql_over(embedded, data).await;
    let in_process = collect(&local, &query).await;
    assert_eq!(f64_column(&on_cluster, 1).len(), 4000);
    assert_eq!(f64_column(&on_cluster, 1), f64_column(&in_process, 1));
}

/// Trials placed as distributed fits: a search over data in 8 files (8 trials; 16 with
/// QUIVER_DISTRIBUTED_TRIALS=16, which prints both wall times), each trial's
/// passes jobs of the cluster session, finds the same best trial as the executor-placed search
/// (the same points: random search; the same held-out rows: a row's side depends only on its
/// values); with a pruner, both prune.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_trials_find_what_executor_trials_find() {
    use quiver_engine::Runner;
    use quiver_engine::fanout::TaskStatus;
    use quiver_mllib::tuning::{Algo, Pruner, Search, Space, TrainEval, TrialPlacement, hp};
    quiver_executor::install().unwrap();
    let cluster = LocalCluster::start(2);
    let store = cluster.dir.path().join("m");
    // The breast-cancer rows in 8 files.
    let local = QuiverSession::embedded_with(config(&store)).unwrap();
    let bc = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/breast_cancer.parquet");
    let rows = local.read(bc).await.unwrap().collect().await.unwrap();
    let all = arrow::compute::concat_batches(&rows[0].schema(), &rows).unwrap();
    let dir = cluster.dir.path().join("bc8");
    std::fs::create_dir_all(&dir).unwrap();
    let per = all.num_rows().div_ceil(8);
    for i in 0..8 {
        let part = all.slice(i * per, per.min(all.num_rows() - i * per));
        local
            .write_parquet(
                local.from_batches(vec![part], 1).unwrap(),
                dir.join(format!("part-{i}.parquet")).to_str().unwrap(),
            )
            .await
            .unwrap();
    }
    let data = format!("{}/", dir.display());
    let trials: usize = std::env::var("QUIVER_DISTRIBUTED_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let search = |placement: TrialPlacement| {
        let space = Space::new(vec![
            hp::loguniform("reg_param", 1e-4, 1.0),
            hp::choice("max_iter", [serde_json::json!(9)]),
        ])
        .unwrap();
        let spec = TrainEval::new(data.clone(), "logistic_regression")
            .label("label")
            .metric("log_loss")
            .split_seed(5);
        Search::train_eval(space, spec)
            .algo(Algo::Random)
            .max_evals(trials)
            .parallelism(4)
            .seed(9)
            .runner(Runner::Embedded)
            .trial_placement(placement)
    };
    let remote = QuiverSession::remote_with(&cluster.url(), config(&store))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let on_executors = search(TrialPlacement::Executor).run(&remote).await.unwrap();
    let executor_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let distributed = search(TrialPlacement::Distributed)
        .run(&remote)
        .await
        .unwrap();
    let distributed_s = started.elapsed().as_secs_f64();
    eprintln!(
        "{trials} trials: executor-placed {executor_s:.1} s, distributed fits {distributed_s:.1} s"
    );
    let (a, b) = (
        on_executors.best.as_ref().unwrap(),
        distributed.best.as_ref().unwrap(),
    );
    assert_eq!(a.params, b.params);
    let (la, lb) = (a.loss.unwrap(), b.loss.unwrap());
    assert!((la - lb).abs() <= 1e-6 * la.abs(), "{la} vs {lb}");
    for (x, y) in on_executors.trials.iter().zip(&distributed.trials) {
        assert_eq!(x.params, y.params);
        assert!(x.worker.starts_with("exec-"), "{x:?}");
        // A distributed trial is driven from this process.
        assert!(!y.worker.starts_with("exec-"), "{y:?}");
    }
    // The search knows the executors (asked through a probe job: each has one task slot here)
    // and refuses trials whose threads would oversubscribe their cores.
    let workers = remote.workers().await.unwrap();
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(
        workers
            .iter()
            .all(|w| w.worker.starts_with("exec-") && w.slots == 1),
        "{workers:?}"
    );
    let most = workers.iter().map(|w| w.cores).max().unwrap();
    let err = search(TrialPlacement::Executor)
        .threads_per_trial(most + 1)
        .run(&remote)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("threads_per_trial") && err.contains("task slots") && err.contains("exec-"),
        "{err}"
    );
    // Both placements take a pruner: executor-placed trials reach this process's board over
    // TCP as they report, distributed ones report in this process.
    for placement in [TrialPlacement::Executor, TrialPlacement::Distributed] {
        // Rungs from step 1: the trials here run 9 iterations.
        let mut asha = Pruner::asha();
        asha.set("min_resource", 1).unwrap();
        let pruned = search(placement).pruner(asha).run(&remote).await.unwrap();
        assert!(
            pruned.trials.iter().any(|t| t.status == TaskStatus::Pruned),
            "{placement:?}: {:?}",
            pruned.trials
        );
        assert_eq!(pruned.best.as_ref().unwrap().status, TaskStatus::Ok);
        if placement == TrialPlacement::Executor {
            assert!(pruned.trials.iter().all(|t| t.worker.starts_with("exec-")));
        }
    }
}
