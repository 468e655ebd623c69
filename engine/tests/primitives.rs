//! The map and fan-out primitives, embedded and local.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use datafusion::prelude::col;
use quiver_engine::fanout::TaskRegistry;
use quiver_engine::{
    BatchFunction, Dataset, FanOutOptions, FeatureBatch, FunctionRegistry, MapUdf, QuiverConfig,
    QuiverError, QuiverSession, Result, Runner, Task, TaskOutcome, TaskRunner, TaskStatus,
    map_dataset,
};

/// `w · x + b` per row: the shape of a linear model's predict.
#[derive(Debug)]
struct Dot {
    w: Vec<f64>,
    b: f64,
}

impl BatchFunction for Dot {
    fn name(&self) -> &str {
        "dot_test"
    }
    fn params(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(&(&self.w, self.b)).unwrap())
    }
    fn input_dim(&self) -> usize {
        self.w.len()
    }
    fn return_type(&self) -> DataType {
        DataType::Float64
    }
    fn apply(&self, batch: &FeatureBatch<'_>) -> Result<ArrayRef> {
        let out: Float64Array = batch
            .values
            .chunks_exact(batch.dim)
            .map(|row| row.iter().zip(&self.w).map(|(x, w)| x * w).sum::<f64>() + self.b)
            .collect();
        Ok(Arc::new(out))
    }
}

fn table() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int32, false),
        Field::new("b", DataType::Float32, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(arrow::array::Int32Array::from_iter_values(0..50)),
            Arc::new(arrow::array::Float32Array::from_iter_values(
                (0..50).map(|i| i as f32 * 0.25),
            )),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn map_over_columns_and_over_vectors_matches_direct_computation() {
    let s = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(
        s.from_batches(vec![table().slice(0, 20), table().slice(20, 30)], 2)
            .unwrap(),
    )
    .with_features(["a", "b"])
    .unwrap();
    let f: Arc<dyn BatchFunction> = Arc::new(Dot {
        w: vec![2.0, -4.0],
        b: 1.0,
    });
    for input in [ds.clone(), ds.clone().assemble("features").unwrap()] {
        let out = map_dataset(input, Arc::clone(&f), "prediction").unwrap();
        let batches = out
            .dataframe()
            .clone()
            .sort(vec![col("a").sort(true, false)])
            .unwrap()
            .select_columns(&["a", "prediction"])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut n = 0;
        for b in &batches {
            let a = b.column(0).as_primitive::<arrow::datatypes::Int32Type>();
            let p = b.column(1).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                let x = a.value(i) as f64;
                assert_eq!(p.value(i), 2.0 * x - 4.0 * (x * 0.25) + 1.0);
                n += 1;
            }
        }
        assert_eq!(n, 50);
    }
}

#[tokio::test]
async fn assembled_reusable_rows_stay_reusable_under_their_inputs() {
    let s = QuiverSession::embedded().unwrap();
    let ds = Dataset::new(s.from_batches(vec![table()], 1).unwrap());
    let key = |d: Dataset| d.reuse_key("frame");
    let plain = ds.clone().with_features(["a", "b"]).unwrap();
    assert_eq!(key(plain.assemble("features").unwrap()), None);
    let kept = ds.reusable("rows");
    let ab = key(kept
        .clone()
        .with_features(["a", "b"])
        .unwrap()
        .assemble("features")
        .unwrap())
    .expect("still reusable");
    let a = key(kept
        .clone()
        .with_features(["a"])
        .unwrap()
        .assemble("features")
        .unwrap())
    .expect("still reusable");
    // Same output column, other inputs: other vectors, another key.
    assert_ne!(ab, a);
}

#[tokio::test]
async fn map_in_sql_checks_the_feature_count() {
    let s = QuiverSession::embedded().unwrap();
    s.context().register_batch("t", table()).unwrap();
    let udf = MapUdf::new(Arc::new(Dot {
        w: vec![1.0, 1.0],
        b: 0.0,
    }))
    .unwrap()
    .into_udf();
    s.context().register_udf(udf);
    let rows = s
        .sql("SELECT sum(dot_test(a, b)) AS s FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let got = rows[0].column(0).as_primitive::<Float64Type>().value(0);
    let want: f64 = (0..50).map(|i| i as f64 * 1.25).sum();
    assert!((got - want).abs() < 1e-9);
    let err = s
        .sql("SELECT dot_test(a) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    let err = QuiverError::from(err);
    assert_eq!(
        err.to_string(),
        "dot_test expects 2 features per row, got 1"
    );
    // Assembling in SQL works too.
    let rows = s
        .sql("SELECT dot_test(vector_assemble(a, b)) AS p FROM t ORDER BY a LIMIT 3")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let p = rows[0].column(0).as_primitive::<Float64Type>();
    assert_eq!((p.value(0), p.value(1), p.value(2)), (0.0, 1.25, 2.5));
}

/// A task kind for the tests: loss = (x − 3)², fails for x < 0, panics for x = 13.
#[derive(Debug, Default)]
struct Quadratic {
    runs: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl TaskRunner for Quadratic {
    fn kind(&self) -> &str {
        "quadratic"
    }
    fn run(&self, params: &str) -> Result<TaskOutcome> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let result = self.compute(params);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl Quadratic {
    fn compute(&self, params: &str) -> Result<TaskOutcome> {
        let v: serde_json::Value =
            serde_json::from_str(params).map_err(|e| QuiverError::InvalidParam {
                param: "params".into(),
                reason: e.to_string(),
            })?;
        let x = v["x"].as_f64().ok_or_else(|| QuiverError::InvalidParam {
            param: "x".into(),
            reason: "missing".into(),
        })?;
        if x < 0.0 {
            return Err(QuiverError::InvalidParam {
                param: "x".into(),
                reason: format!("{x} is negative"),
            });
        }
        if x == 13.0 {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            panic!("unlucky trial");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        Ok(TaskOutcome {
            loss: Some((x - 3.0).powi(2)),
            metrics: serde_json::json!({"x": x}),
        })
    }
}

fn tasks() -> Vec<Task> {
    (0..40u64)
        .map(|i| {
            let x = i as f64 - 5.0;
            Task {
                id: i,
                kind: "quadratic".into(),
                params: format!("{{\"x\": {x}}}"),
            }
        })
        .collect()
}

fn session_with_quadratic() -> (QuiverSession, Arc<Quadratic>) {
    let runner = Arc::new(Quadratic::default());
    let mut reg = FunctionRegistry::with_engine_functions();
    reg.add_task(runner.clone()).unwrap();
    let s = QuiverSession::embedded_with_functions(
        QuiverConfig::default().with_compute_threads(4),
        reg,
    )
    .unwrap();
    (s, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_local_and_embedded_give_the_same_results() {
    let (s, runner) = session_with_quadratic();
    let mut per_runner = Vec::new();
    for r in [Runner::Local, Runner::Embedded] {
        let streamed = Mutex::new(Vec::new());
        let results = s
            .fan_out(&tasks(), 4, r, |res| streamed.lock().unwrap().push(res.id))
            .await
            .unwrap();
        assert_eq!(results.len(), 40, "{r:?}");
        assert_eq!(
            streamed.lock().unwrap().len(),
            40,
            "{r:?}: every result is streamed once"
        );
        for res in &results {
            let x = res.id as f64 - 5.0;
            match x {
                x if x < 0.0 => {
                    assert_eq!(res.status, TaskStatus::Failed);
                    assert!(res.message.as_deref().unwrap().contains("is negative"));
                }
                13.0 => {
                    assert_eq!(res.status, TaskStatus::Failed);
                    assert!(
                        res.message
                            .as_deref()
                            .unwrap()
                            .contains("panicked: unlucky trial"),
                        "{res:?}"
                    );
                }
                x => {
                    assert_eq!(res.status, TaskStatus::Ok);
                    assert_eq!(res.loss, Some((x - 3.0).powi(2)));
                }
            }
            assert!(res.finished_ms >= res.started_ms);
            assert!(!res.worker.is_empty());
        }
        let best = results
            .iter()
            .filter(|r| r.status == TaskStatus::Ok)
            .min_by(|a, b| a.loss.partial_cmp(&b.loss).unwrap())
            .unwrap();
        assert_eq!(best.id, 8);
        per_runner.push(
            results
                .into_iter()
                .map(|r| (r.id, r.status, r.loss, r.metrics))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(per_runner[0], per_runner[1]);
    assert_eq!(
        runner.runs.load(Ordering::SeqCst),
        80,
        "each task ran exactly once per fan-out"
    );
}

/// Tasks run concurrently, up to the requested parallelism and never beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_runs_tasks_in_parallel_up_to_the_limit() {
    for r in [Runner::Local, Runner::Embedded] {
        let (s, runner) = session_with_quadratic();
        let ok: Vec<Task> = tasks()
            .into_iter()
            .filter(|t| t.id >= 5 && t.id != 18)
            .collect();
        s.fan_out(&ok, 2, r, |_| {}).await.unwrap();
        assert_eq!(runner.max_in_flight.load(Ordering::SeqCst), 2, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_unknown_kind_is_a_failed_task_not_a_failed_fan_out() {
    let (s, _) = session_with_quadratic();
    let t = vec![Task {
        id: 1,
        kind: "nope".into(),
        params: "{}".into(),
    }];
    for r in [Runner::Local, Runner::Embedded] {
        let res = s.fan_out(&t, 1, r, |_| {}).await.unwrap();
        assert_eq!(res[0].status, TaskStatus::Failed);
        // The kind, what this process has, and how to register one of your own.
        let m = res[0].message.as_deref().unwrap();
        assert!(
            m.starts_with(
                "unknown task kind 'nope' in this process (registered: quadratic, quiver.probe, quiver.sphere, quiver.unpersist)"
            ) && m.contains("quiver_executor::install_with"),
            "{m}"
        );
    }
}

#[test]
fn task_kinds_are_unique() {
    let mut reg = TaskRegistry::new();
    reg.register(Arc::new(Quadratic::default())).unwrap();
    let err = reg.register(Arc::new(Quadratic::default())).unwrap_err();
    assert!(
        err.to_string()
            .contains("'quadratic' is already registered")
    );
}

#[test]
fn map_output_length_is_checked() {
    #[derive(Debug)]
    struct Short;
    impl BatchFunction for Short {
        fn name(&self) -> &str {
            "short"
        }
        fn params(&self) -> Result<Vec<u8>> {
            Ok(vec![])
        }
        fn input_dim(&self) -> usize {
            1
        }
        fn return_type(&self) -> DataType {
            DataType::Float64
        }
        fn apply(&self, _b: &FeatureBatch<'_>) -> Result<ArrayRef> {
            Ok(Arc::new(Float64Array::from(vec![1.0])))
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = QuiverSession::embedded().unwrap();
        s.context().register_batch("t", table()).unwrap();
        s.context()
            .register_udf(MapUdf::new(Arc::new(Short)).unwrap().into_udf());
        let err = s
            .sql("SELECT short(a) FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(
            QuiverError::from(err)
                .to_string()
                .contains("short returned 1 values for 50 rows")
        );
        let _ = Array::len(&Float64Array::from(vec![0.0]));
    });
}

/// A least-squares loss and gradient for a weight vector carried in the statistic, reading
/// label and weight columns: the shape the linear models' aggregate takes.
#[derive(Debug)]
struct LeastSquares {
    coef: Vec<f64>,
}

impl quiver_engine::Statistic for LeastSquares {
    type State = Vec<f64>; // [weight_sum, loss, grad...]
    type Output = Vec<f64>;
    const NAME: &'static str = "least_squares_test";
    fn params(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        quiver_engine::aggregate::encode_f64s(&self.coef, &mut out);
        Ok(out)
    }
    fn dim(&self) -> usize {
        self.coef.len()
    }
    fn inputs(&self) -> quiver_engine::StatInputs {
        quiver_engine::StatInputs {
            label: true,
            weight: true,
        }
    }
    fn init(&self) -> Vec<f64> {
        vec![0.0; 2 + self.coef.len()]
    }
    fn update(&self, s: &mut Vec<f64>, b: &FeatureBatch<'_>) -> Result<()> {
        let (y, w) = (b.label.unwrap(), b.weight.unwrap());
        for r in 0..b.n_rows {
            let x = b.row(r);
            let err = x.iter().zip(&self.coef).map(|(a, c)| a * c).sum::<f64>() - y[r];
            s[0] += w[r];
            s[1] += 0.5 * w[r] * err * err;
            for j in 0..x.len() {
                s[2 + j] += w[r] * err * x[j];
            }
        }
        Ok(())
    }
    fn merge(&self, s: &mut Vec<f64>, o: &Vec<f64>) -> Result<()> {
        s.iter_mut().zip(o).for_each(|(a, b)| *a += b);
        Ok(())
    }
    fn finish(&self, s: Vec<f64>) -> Result<Vec<f64>> {
        Ok(s)
    }
    fn encode_state(&self, s: &Vec<f64>, out: &mut Vec<u8>) {
        quiver_engine::aggregate::encode_f64s(s, out);
    }
    fn state_size(&self, s: &Vec<f64>) -> usize {
        quiver_engine::aggregate::vec_size(s)
    }
    fn decode_state(&self, bytes: &[u8]) -> Result<Vec<f64>> {
        Ok(quiver_engine::aggregate::decode_f64s(bytes, 2 + self.coef.len())?.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gradient_statistic_with_label_and_weight_runs_on_both_runners() {
    let n = 3000;
    let schema = Arc::new(Schema::new(vec![
        Field::new("x0", DataType::Float64, false),
        Field::new("x1", DataType::Int64, false),
        Field::new("y", DataType::Int32, false),
        Field::new("w", DataType::Float64, false),
    ]));
    let x0: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
    let x1: Vec<i64> = (0..n).map(|i| (i % 11) as i64 - 5).collect();
    let y: Vec<i32> = (0..n).map(|i| (i % 3) as i32).collect();
    let w: Vec<f64> = (0..n).map(|i| 0.5 + (i % 4) as f64).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(x0.clone())),
            Arc::new(arrow::array::Int64Array::from(x1.clone())),
            Arc::new(arrow::array::Int32Array::from(y.clone())),
            Arc::new(Float64Array::from(w.clone())),
        ],
    )
    .unwrap();
    let coef = vec![0.3, -0.2];
    // Direct computation, written out.
    let mut want = vec![0.0; 4];
    for i in 0..n {
        let err = coef[0] * x0[i] + coef[1] * x1[i] as f64 - y[i] as f64;
        want[0] += w[i];
        want[1] += 0.5 * w[i] * err * err;
        want[2] += w[i] * err * x0[i];
        want[3] += w[i] * err * x1[i] as f64;
    }
    let s = QuiverSession::embedded().unwrap();
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(700)
        .map(|o| batch.slice(o, 700.min(n - o)))
        .collect();
    let ds = Dataset::new(s.from_batches(batches, 3).unwrap())
        .with_features(["x0", "x1"])
        .unwrap()
        .with_label("y")
        .unwrap()
        .with_weight("w")
        .unwrap();
    let stat = Arc::new(LeastSquares { coef });
    let frame = ds.cache_local().await.unwrap();
    let local = s.aggregate_local(&frame, stat.as_ref()).unwrap();
    let embedded = s.aggregate(&ds, Arc::clone(&stat)).await.unwrap();
    for got in [&local, &embedded] {
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-10 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }
    // Without a label the statistic cannot run, and says so.
    let unlabeled = Dataset::new(ds.dataframe().clone())
        .with_features(["x0", "x1"])
        .unwrap();
    let err = s.aggregate(&unlabeled, stat).await.unwrap_err();
    assert!(err.to_string().contains("needs a label column"), "{err}");
}

/// A task that reports the size of the thread pool it computes on, sleeps when asked, and
/// with `"passes": true` runs feature summaries on the local runner until one fails (as an
/// iterative fit does), recording that a deadline stopped it.
#[derive(Debug, Default)]
struct Probe {
    stopped_by_deadline: std::sync::atomic::AtomicBool,
}

impl TaskRunner for Probe {
    fn kind(&self) -> &str {
        "probe"
    }
    fn run(&self, params: &str) -> Result<TaskOutcome> {
        let v: serde_json::Value = serde_json::from_str(params).unwrap();
        if let Some(ms) = v["sleep_ms"].as_u64() {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if v["passes"].as_bool() == Some(true) {
            let s = QuiverSession::embedded_with(QuiverConfig::default().with_compute_threads(1))?;
            let batch = RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)])),
                vec![Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef],
            )?;
            let ds = Dataset::new(s.from_batches(vec![batch], 1)?).with_features(["x"])?;
            for _ in 0..10_000 {
                let pass = quiver_engine::fanout::block_on(s.summarize(&ds, Runner::Local));
                if let Err(e) = pass {
                    if matches!(e, QuiverError::Cancelled { .. }) {
                        self.stopped_by_deadline.store(true, Ordering::SeqCst);
                    }
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        if v["split"].as_bool() == Some(true) {
            return split_in_a_task();
        }
        Ok(TaskOutcome {
            loss: Some(rayon::current_num_threads() as f64),
            metrics: serde_json::Value::Null,
        })
    }
}

/// Inside a task: a collected split of 12 batches (a number and a 3-vector per row, one
/// partition) against the lazy split; the loss is the number of rows kept.
fn split_in_a_task() -> Result<TaskOutcome> {
    let s = QuiverSession::embedded_with(QuiverConfig::default().with_compute_threads(1))?;
    let item = Arc::new(Field::new("item", DataType::Float64, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("v", DataType::FixedSizeList(Arc::clone(&item), 3), false),
    ]));
    let batches = (0..12)
        .map(|b| {
            let x: Vec<f64> = (0..100).map(|r| (b * 100 + r) as f64 * 0.7).collect();
            let v: Vec<f64> = (0..300).map(|i| (b * 300 + i) as f64 - 5.0).collect();
            let v = arrow::array::FixedSizeListArray::try_new(
                Arc::clone(&item),
                3,
                Arc::new(Float64Array::from(v)),
                None,
            )?;
            Ok(RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Float64Array::from(x)) as ArrayRef, Arc::new(v)],
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    let ds = Dataset::new(s.from_batches(batches, 1)?);
    let (columns, weights) = (vec!["x".to_string()], [0.75, 0.25]);
    let kept = quiver_engine::fanout::block_on(ds.random_split_collect(
        &columns,
        &weights,
        3,
        usize::MAX,
    ))?
    .expect("no limit");
    let lazy = ds.random_split_on(&columns, &weights, 3)?;
    let mut rows = 0;
    for (part, want) in kept.into_iter().zip(lazy) {
        let got: Vec<RecordBatch> = part.into_iter().flatten().collect();
        let got = arrow::compute::concat_batches(&schema, &got)?;
        let want = quiver_engine::fanout::block_on(want.dataframe().clone().collect())?;
        let want = arrow::compute::concat_batches(&schema, &want)?;
        if got != want {
            return Err(QuiverError::internal(
                "the collected split differs from the lazy one",
            ));
        }
        rows += got.num_rows();
    }
    Ok(TaskOutcome {
        loss: Some(rows as f64),
        metrics: serde_json::Value::Null,
    })
}

fn session_with_probe() -> (QuiverSession, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let mut reg = FunctionRegistry::with_engine_functions();
    reg.add_task(probe.clone()).unwrap();
    let s = QuiverSession::embedded_with_functions(
        QuiverConfig::default().with_compute_threads(2),
        reg,
    )
    .unwrap();
    (s, probe)
}

fn probe(id: u64, params: &str) -> Task {
    Task {
        id,
        kind: "probe".into(),
        params: params.into(),
    }
}

/// Each task computes on its own pool of exactly `threads_per_task` threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_tasks_run_on_pools_of_threads_per_task() {
    let (s, _) = session_with_probe();
    let tasks: Vec<Task> = (0..4).map(|i| probe(i, "{}")).collect();
    for r in [Runner::Local, Runner::Embedded] {
        for threads in [1, 3] {
            let opts = FanOutOptions::new(2).threads_per_task(threads);
            let res = s.fan_out(&tasks, opts, r, |_| {}).await.unwrap();
            for t in &res {
                assert_eq!(t.status, TaskStatus::Ok, "{r:?} {t:?}");
                assert_eq!(
                    t.loss,
                    Some(threads as f64),
                    "{r:?}: pool size seen by the task"
                );
            }
        }
    }
}

/// A split collected inside a task (its batches split a few at a time on the task's
/// threads) keeps the rows of the lazy split, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_collected_in_a_task_keeps_the_lazy_splits_rows() {
    let (s, _) = session_with_probe();
    for r in [Runner::Local, Runner::Embedded] {
        for threads in [1, 2] {
            let opts = FanOutOptions::new(1).threads_per_task(threads);
            let res = s
                .fan_out(&[probe(0, r#"{"split": true}"#)], opts, r, |_| {})
                .await
                .unwrap();
            assert_eq!(
                res[0].status,
                TaskStatus::Ok,
                "{r:?} {threads}: {:?}",
                res[0]
            );
            assert_eq!(res[0].loss, Some(1200.0));
        }
    }
}

/// At the deadline: finished tasks keep their results, running ones are reported cancelled
/// ("stopped"), queued ones are never started ("not started"), and a task doing statistic
/// passes is stopped by the deadline at its next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_deadline_cancels_running_and_queued_tasks() {
    for r in [Runner::Local, Runner::Embedded] {
        let (s, probe_runner) = session_with_probe();
        let tasks = vec![
            probe(0, r#"{"sleep_ms": 10}"#),
            probe(1, r#"{"sleep_ms": 10}"#),
            probe(2, r#"{"passes": true}"#),
            probe(3, r#"{"sleep_ms": 4000}"#),
            probe(4, r#"{"sleep_ms": 10}"#),
            probe(5, r#"{"sleep_ms": 10}"#),
        ];
        let opts = FanOutOptions::new(2).timeout(std::time::Duration::from_millis(1500));
        let streamed = Mutex::new(0);
        let res = s
            .fan_out(&tasks, opts, r, |_| *streamed.lock().unwrap() += 1)
            .await
            .unwrap();
        assert_eq!(res.len(), 6, "{r:?}");
        assert_eq!(
            *streamed.lock().unwrap(),
            6,
            "{r:?}: cancelled ones are streamed too"
        );
        let status: Vec<TaskStatus> = res.iter().map(|t| t.status).collect();
        use TaskStatus::{Cancelled, Ok};
        assert_eq!(
            status,
            vec![Ok, Ok, Cancelled, Cancelled, Cancelled, Cancelled],
            "{r:?}: {res:#?}"
        );
        for t in &res[4..] {
            assert!(
                t.message.as_deref().unwrap().starts_with("not started"),
                "{r:?}: {t:?}"
            );
        }
        if r == Runner::Local {
            // The local runner knows which tasks were running when it stopped waiting.
            for t in &res[2..4] {
                assert!(
                    t.message.as_deref().unwrap().starts_with("stopped"),
                    "{t:?}"
                );
            }
        }
        // The task doing passes saw the deadline's error at its next pass.
        let waited = std::time::Instant::now();
        while !probe_runner.stopped_by_deadline.load(Ordering::SeqCst) {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(20),
                "{r:?}: the passes went on past the deadline"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A board that keeps every report and stops a trial whose value exceeds 1; steps 1 and 3 are
/// due.
#[derive(Debug, Default)]
struct ThresholdBoard {
    seen: Mutex<Vec<(u64, u64, f64)>>,
}

impl quiver_engine::fanout::Pruning for ThresholdBoard {
    fn due(&self, _trial: u64, step: u64) -> bool {
        step == 1 || step == 3
    }

    fn report(&self, trial: u64, step: u64, value: f64) -> bool {
        self.seen.lock().unwrap().push((trial, step, value));
        value > 1.0
    }
}

/// Reports steps 1..=4 with the values of its parameters (a JSON list), skipping steps not
/// due.
#[derive(Debug)]
struct Reports;

impl quiver_engine::fanout::TaskRunner for Reports {
    fn kind(&self) -> &str {
        "test.reports"
    }

    fn run(&self, params: &str) -> quiver_engine::Result<quiver_engine::fanout::TaskOutcome> {
        let values: Vec<f64> = serde_json::from_str(params).unwrap();
        let reporter = quiver_engine::fanout::reporter().expect("a task's reporter");
        for (step, v) in (1..).zip(&values) {
            if reporter.due(step) {
                reporter.report(step, *v)?;
            }
        }
        Ok(quiver_engine::fanout::TaskOutcome {
            loss: values.last().copied(),
            metrics: serde_json::Value::Null,
        })
    }
}

/// A task in another process reaches its fan-out's board over TCP with the board's address
/// (what a cluster fan-out gives its tasks): reports arrive as they happen, the board stops the
/// trial, and a wrong secret is refused (the trial goes on unjudged).
#[test]
fn tasks_reach_their_board_over_tcp() {
    use quiver_engine::fanout::{PruningRegistration, TaskLimits, TaskStatus};
    let board = Arc::new(ThresholdBoard::default());
    let registration = PruningRegistration::new(board.clone());
    let address = registration.address("127.0.0.1", 1).unwrap();
    assert!(address.addr.ip().is_loopback());
    let mut registry = TaskRegistry::new();
    registry.register(Arc::new(Reports)).unwrap();
    // No local key: the task must go through the address, as on an executor.
    let limits = TaskLimits {
        board: Some(address),
        ..TaskLimits::default()
    };
    let kept = registry.execute(7, "test.reports", "[0.5, 0.9, 0.7, 0.6]", limits);
    assert_eq!(kept.status, TaskStatus::Ok, "{kept:?}");
    let pruned = registry.execute(8, "test.reports", "[0.5, 9.0, 3.0, 0.1]", limits);
    assert_eq!(pruned.status, TaskStatus::Pruned, "{pruned:?}");
    assert_eq!(pruned.loss, Some(3.0));
    assert_eq!(
        *board.seen.lock().unwrap(),
        vec![(7, 1, 0.5), (7, 3, 0.7), (8, 1, 0.5), (8, 3, 3.0)]
    );
    // A stranger's secret: nothing is judged, nothing reaches the board.
    let mut stranger = address;
    stranger.secret[0] ^= 1;
    let unjudged = registry.execute(
        9,
        "test.reports",
        "[5.0, 5.0, 5.0]",
        TaskLimits {
            board: Some(stranger),
            ..TaskLimits::default()
        },
    );
    assert_eq!(unjudged.status, TaskStatus::Ok, "{unjudged:?}");
    assert_eq!(board.seen.lock().unwrap().len(), 4);
    // A finished search's board is gone: its tasks go on unjudged.
    drop(registration);
    let late = registry.execute(10, "test.reports", "[5.0, 5.0, 5.0]", limits);
    assert_eq!(late.status, TaskStatus::Ok, "{late:?}");
}
