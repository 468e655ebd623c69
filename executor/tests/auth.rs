//! A cluster with an auth token, with real processes: clients, executors and the shuffle
//! between executors work with the token; a client without it or with another, an executor
//! with another, a bare Flight call to an executor and a physical plan sent to the scheduler
//! are all refused.

mod common;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::{LocalCluster, write_synthetic};
use quiver_engine::cluster::auth::AuthToken;
use quiver_engine::{QuiverConfig, QuiverSession};
use quiver_sql_udfs::SqlSession;

const TOKEN: &str = "a-test-token-of-this-cluster-0123456789";

fn config(store: &std::path::Path, token: Option<&str>) -> QuiverConfig {
    let mut c = QuiverConfig::default()
        .with_pairs([("quiver.target_partitions", "4")])
        .unwrap()
        .with_model_store(store.to_string_lossy().to_string());
    c.auth_token = token.map(|t| AuthToken::new(t).unwrap());
    c
}

/// Per group of a shuffled aggregation (a hash repartition between the two executors): the
/// group key and its count, in key order.
async fn grouped(session: QuiverSession, data: &str) -> quiver_engine::Result<Vec<(i64, i64)>> {
    let sql = SqlSession::new(session)?;
    sql.execute(&format!(
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{data}'"
    ))
    .await?;
    let out = sql
        .execute(
            "SELECT CAST(floor(f4) AS BIGINT) AS k, count(*) AS n FROM t GROUP BY 1 ORDER BY 1",
        )
        .await?
        .pop()
        .unwrap();
    Ok(out
        .batches
        .iter()
        .flat_map(|b| {
            let k = b.column(0).as_primitive::<Int64Type>();
            let n = b.column(1).as_primitive::<Int64Type>();
            (0..b.num_rows())
                .map(|i| (k.value(i), n.value(i)))
                .collect::<Vec<_>>()
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_a_token_serves_its_clients_and_refuses_everyone_else() {
    use quiver_engine::Runner;
    use quiver_mllib::tuning::{Algo, Search, Space, hp};
    quiver_executor::install().unwrap();
    let env = [("QUIVER_AUTH_TOKEN", TOKEN)];
    let mut cluster = LocalCluster::start_with_args(2, false, &env, &env, &[]);
    let data = write_synthetic(&cluster.dir.path().join("data"), 4, 2000);
    let store = cluster.dir.path().join("models");

    // With the token: a shuffled query (executors fetch each other's shuffle data, the
    // client fetches the results) gives the embedded answer; trials run on the executors.
    let remote = QuiverSession::remote_with(&cluster.url(), config(&store, Some(TOKEN)))
        .await
        .unwrap();
    let embedded = QuiverSession::embedded_with(config(&store, None)).unwrap();
    let on_cluster = grouped(remote.clone(), &data).await.unwrap();
    assert_eq!(on_cluster, grouped(embedded, &data).await.unwrap());
    assert!(on_cluster.len() > 3, "{on_cluster:?}");
    let space = Space::new(vec![hp::uniform("x", -1.0, 1.0)]).unwrap();
    let sphere = Search::task(space, "quiver.sphere")
        .algo(Algo::Random)
        .max_evals(4)
        .parallelism(2)
        .runner(Runner::Embedded)
        .run(&remote)
        .await
        .unwrap();
    assert!(
        sphere.trials.iter().all(|t| t.worker.starts_with("exec-")),
        "{:?}",
        sphere.trials
    );

    // Without it, or with another: refused, saying which.
    let none = QuiverSession::remote_with(&cluster.url(), config(&store, None))
        .await
        .unwrap();
    let err = grouped(none, &data).await.unwrap_err().to_string();
    assert!(err.contains("requires an auth token"), "{err}");
    let other = QuiverSession::remote_with(
        &cluster.url(),
        config(&store, Some("another-token-0123456789")),
    )
    .await
    .unwrap();
    let err = grouped(other, &data).await.unwrap_err().to_string();
    assert!(err.contains("refused the auth token"), "{err}");

    // A bare Flight call to an executor (shuffle files are read this way): refused.
    let port = cluster.executors[0].flight_port;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    let status = flight
        .do_get(arrow_flight::Ticket::new(Vec::<u8>::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");

    // A physical plan sent straight to the scheduler, with the token: refused (it would
    // bypass the checks of the scheduler's planner).
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", cluster.port))
            .unwrap();
    let endpoint = (AuthToken::new(TOKEN).unwrap().endpoint_override())(endpoint).unwrap();
    let mut scheduler =
        ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient::new(
            endpoint.connect().await.unwrap(),
        );
    let status = scheduler
        .execute_query(ballista_core::serde::protobuf::ExecuteQueryParams {
            query: Some(
                ballista_core::serde::protobuf::execute_query_params::Query::PhysicalPlan(
                    Vec::new(),
                ),
            ),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(status.message().contains("logical plans only"), "{status}");

    // An executor with another token never joins: its polls are refused.
    let intruder_env = [("QUIVER_AUTH_TOKEN", "not-this-clusters-token-0123")];
    cluster.add_executor_with("intruder", false, &intruder_env, &[]);
    let start = std::time::Instant::now();
    while !cluster.executor_log(2).contains("refused the auth token") {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the intruder's log:\n{}",
            cluster.executor_log(2)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let scheduler_log = std::fs::read_to_string(&cluster.scheduler_log).unwrap();
    assert!(!scheduler_log.contains("\"intruder\""), "{scheduler_log}");
}

/// TLS with the token, as `quiver cluster up --tls` starts it: a client with the CA gets the
/// embedded answer of a shuffled query (every connection encrypted: client to scheduler and
/// executors, executor to scheduler and to each other); a client without the CA is told to
/// give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tls_encrypts_every_connection() {
    use quiver_engine::cluster::tls::{ClientTls, generate};
    quiver_executor::install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = generate(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
    let (cert, key, ca) = (
        files.cert.to_str().unwrap(),
        files.key.to_str().unwrap(),
        files.ca.to_str().unwrap(),
    );
    let env = [("QUIVER_AUTH_TOKEN", TOKEN)];
    let server = ["--tls-cert", cert, "--tls-key", key];
    let executor = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca];
    let cluster = LocalCluster::start_in(dir, 2, false, &env, &env, &server, &executor);
    let data = write_synthetic(&cluster.dir.path().join("data"), 4, 2000);
    let store = cluster.dir.path().join("models");
    let mut secured = config(&store, Some(TOKEN));
    secured.tls = Some(ClientTls::from_ca_file(&files.ca).unwrap());
    let remote = QuiverSession::remote_with(&cluster.url(), secured)
        .await
        .unwrap();
    let embedded = QuiverSession::embedded_with(config(&store, None)).unwrap();
    let on_cluster = grouped(remote, &data).await.unwrap();
    assert_eq!(on_cluster, grouped(embedded, &data).await.unwrap());
    // Plain text to a TLS port: refused, with the way out.
    let plain = QuiverSession::remote_with(&cluster.url(), config(&store, Some(TOKEN)))
        .await
        .unwrap();
    let err = grouped(plain, &data).await.unwrap_err().to_string();
    assert!(err.contains("--tls-ca-file"), "{err}");
    // (The executors registered with a scheduler that speaks only TLS, and fetched each
    // other's shuffle data from Flight services that speak only TLS: the query above.)
}

/// An executor of a guarded cluster started without `--work-dir` keeps its shuffle files in a
/// temporary directory of its own; stopped with SIGTERM, it says so to the scheduler, exits
/// cleanly and leaves that directory behind no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_executor_says_goodbye_and_removes_its_temporary_work_dir() {
    quiver_executor::install().unwrap();
    let env = [("QUIVER_AUTH_TOKEN", TOKEN)];
    let cluster = LocalCluster::start_with_args(1, false, &env, &env, &[]);
    let data = write_synthetic(&cluster.dir.path().join("data"), 4, 2000);
    let tmp = cluster.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let log = cluster.dir.path().join("temp.log");
    let (mut cmd, flight) = cluster.executor_command("temp", false, None);
    let mut child = cmd
        .envs(env)
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_port(flight, "temp", &log);
    let work_dirs = || {
        std::fs::read_dir(&tmp)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("quiver-executor-")
            })
            .count()
    };
    assert_eq!(work_dirs(), 1);

    // Both executors run tasks of a shuffled query: the new one writes shuffle files.
    let store = cluster.dir.path().join("models");
    let remote = QuiverSession::remote_with(&cluster.url(), config(&store, Some(TOKEN)))
        .await
        .unwrap();
    let embedded = QuiverSession::embedded_with(config(&store, None)).unwrap();
    assert_eq!(
        grouped(remote, &data).await.unwrap(),
        grouped(embedded, &data).await.unwrap()
    );
    let scheduler_log = std::fs::read_to_string(&cluster.scheduler_log).unwrap();
    assert!(scheduler_log.contains("\"temp\""), "{scheduler_log}");

    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "still running after SIGTERM; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let executor_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}; its log:\n{executor_log}");
    assert!(executor_log.contains("SIGTERM"), "{executor_log}");
    assert_eq!(work_dirs(), 0, "{executor_log}");
}

/// An executor of a guarded cluster whose Flight port is taken stops with an error naming its
/// Flight service (a non-zero exit), not a process that runs on without serving its results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_whose_flight_port_is_taken_exits_with_an_error() {
    let env = [("QUIVER_AUTH_TOKEN", TOKEN)];
    let cluster = LocalCluster::start_with_args(1, false, &env, &env, &[]);
    let log = cluster.dir.path().join("taken.log");
    let work_dir = cluster.dir.path().join("taken");
    let (mut cmd, flight) = cluster.executor_command("taken", false, Some(&work_dir));
    let _holder = std::net::TcpListener::bind(("127.0.0.1", flight)).unwrap();
    let mut child = cmd
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "still running with its Flight port taken; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let executor_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{status}; its log:\n{executor_log}");
    assert!(
        executor_log.contains("Flight service ended"),
        "{executor_log}"
    );
}
