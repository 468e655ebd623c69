//! The `quiver` binary as a user runs it.

use std::process::Command;

fn quiver() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quiver"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = quiver().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["quickstart", "sql", "bench", "models", "config"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

#[test]
fn quickstart_exits_zero_and_writes_no_progress_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = quiver()
        .args([
            "--models",
            dir.path().join("m").to_str().unwrap(),
            "quickstart",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1797 rows"), "{stdout}");
    // Progress bars are hidden when stderr is not a terminal.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sql_errors_exit_non_zero_with_the_message() {
    let out = quiver()
        .args(["sql", "-e", "SELECT * FROM no_such_table"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("no_such_table"),
        "{err}"
    );
}

#[test]
fn unknown_config_key_is_named_on_the_command_line() {
    let out = quiver()
        .args(["-c", "quiver.nope=1", "sql", "-e", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown configuration key 'quiver.nope'"),
        "{err}"
    );
}

#[test]
fn sql_file_runs_every_statement() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.sql");
    std::fs::write(&file, "SELECT 1 + 1 AS two;\nSELECT 'a;b' AS s;\n").unwrap();
    let out = quiver()
        .args(["sql", "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("two") && text.contains("a;b"), "{text}");
}

#[test]
fn bench_summary_runs_small() {
    let out = quiver()
        .args([
            "bench",
            "summary",
            "--rows",
            "5000",
            "--features",
            "4",
            "--iters",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for case in [
        "baseline-plain-sum-4f-5000r",
        "summary-local-memory-4f-5000r",
        "summary-embedded-memory-4f-5000r",
        "summary-embedded-parquet-disk-4f-5000r",
        "summary-embedded-parquet-memory-store-4f-5000r",
        "load-parquet-disk-into-local-cache-4f-5000r",
    ] {
        assert!(text.contains(case), "missing {case}:\n{text}");
    }
}

#[test]
fn bench_algorithms_runs_small() {
    let out = quiver()
        .args([
            "bench",
            "algorithms",
            "--rows",
            "3000",
            "--features",
            "3",
            "--k",
            "3",
            "--iters",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for case in [
        "summary-3f-3000r-local",
        "linreg-3f-3000r-local",
        "logreg-3f-3000r-embedded",
        "kmeans-k3-3f-3000r-embedded",
        "predict-logreg-3f-3000r-local",
        "predict-kmeans-k3-3f-3000r-embedded",
    ] {
        assert!(text.contains(case), "missing {case}:\n{text}");
    }
    assert!(!text.contains("r2 below"), "{text}");
}

#[test]
fn bench_predict_runs_small_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = quiver()
        .args(["--models", models.to_str().unwrap()])
        .args([
            "bench",
            "predict",
            "--rows",
            "3000",
            "--features",
            "4",
            "--iters",
            "1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for case in [
        "scan-sum-of-features",
        "sum-of-ml_predict",
        "single-row ml_predict",
    ] {
        assert!(text.contains(case), "missing {case}:\n{text}");
    }
    // The benchmark's model is dropped again.
    let listed = quiver()
        .args(["--models", models.to_str().unwrap(), "models", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("no models"));
}

#[test]
fn sql_runs_ml_statements_and_names_errors() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/diabetes.parquet");
    let out = quiver()
        .args(["--models", models.to_str().unwrap(), "sql", "-e"])
        .arg(format!(
            "CREATE MODEL d OPTIONS (model_type = 'linear_reg', input_label_cols = ['target']) AS SELECT bmi, target FROM '{data}';
             SELECT round(ml_predict('d', 30.0), 3) AS p"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("linear_reg") && text.contains("p"), "{text}");
    let out = quiver()
        .args([
            "--models",
            models.to_str().unwrap(),
            "sql",
            "-e",
            "SELECT ml_predict('d', 1.0, 2.0)",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model 'd@1' expects 1 numeric features (bmi); got 2 arguments"),
        "{err}"
    );
    let out = quiver()
        .args(["sql", "--cluster", "df://127.0.0.1:1", "-e", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("df://127.0.0.1:1 is unreachable"), "{err}");
}

#[test]
fn cluster_up_status_sql_down_with_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let cd = cluster_dir.to_str().unwrap();
    let run = |args: &[&str]| quiver().args(args).output().unwrap();
    // A port in use is named, and nothing is left behind.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let refused = run(&["cluster", "up", "--dir", cd, "--port", &busy_port]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!("port {busy_port} is in use")),
        "{err}"
    );
    assert!(!cluster_dir.join("cluster.json").exists());
    let data_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../data");
    let up = run(&[
        "cluster",
        "up",
        "--executors",
        "2",
        "--dir",
        cd,
        "--port",
        &port,
        "--concurrent-tasks",
        "1",
        "--data-root",
        data_dir,
        "--tls",
    ]);
    let text = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(
        up.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(text.contains("2 executors registered"), "{text}");
    // A second `up` on the same directory refuses (the cluster is running).
    let again = run(&["cluster", "up", "--dir", cd, "--port", &port]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));
    let status = run(&["cluster", "status", "--dir", cd]);
    let st = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{st}");
    assert_eq!(st.matches("running").count(), 3, "{st}");
    // SQL on the cluster: the rows of the shipped digits were read on the executors. The
    // cluster has an auth token (only its owner may read the file); clients give it.
    let digits = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.parquet");
    let url = format!("df://127.0.0.1:{port}");
    let token = cluster_dir.join("auth-token");
    // Every connection uses TLS: clients verify the cluster with its CA.
    let ca = cluster_dir.join("tls-ca.pem");
    let ca = ca.to_str().unwrap();
    let client = |args: &[&str]| {
        let mut cmd = quiver();
        cmd.args(["--tls-ca-file", ca]).args(args);
        cmd
    };
    let plain = run(&["sql", "--cluster", &url, "-e", "SELECT 1"]);
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && err.contains("--tls-ca-file"),
        "{err}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let count = format!("SELECT count(*) AS n FROM '{digits}'");
    let refused = client(&["sql", "--cluster", &url, "-e", &count])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("requires an auth token"),
        "{err}"
    );
    let wrong = client(&["sql", "--cluster", &url, "-e", &count])
        .env("QUIVER_AUTH_TOKEN", "not-the-token-of-this-cluster")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && err.contains("refused the auth token"),
        "{err}"
    );
    let q = client(&[
        "--models",
        dir.path().join("m").to_str().unwrap(),
        "--auth-token-file",
        token.to_str().unwrap(),
        "sql",
        "--cluster",
        &url,
        "-e",
        &format!("SELECT count(*) AS n, max(quiver_process()) AS p FROM '{digits}'"),
    ])
    .output()
    .unwrap();
    let qt = String::from_utf8_lossy(&q.stdout).to_string();
    assert!(
        q.status.success(),
        "{qt}{}",
        String::from_utf8_lossy(&q.stderr)
    );
    assert!(qt.contains("1797") && qt.contains("exec-"), "{qt}");
    // Outside the data roots nothing is read, and nothing is written anywhere.
    let outside = dir.path().join("outside.csv");
    std::fs::write(&outside, "a\n1\n").unwrap();
    let token_arg = ["--auth-token-file", token.to_str().unwrap()];
    let sql_on_cluster = |statement: String| {
        let mut args = token_arg.to_vec();
        args.extend(["sql", "--cluster", &url, "-e", &statement]);
        client(&args).output().unwrap()
    };
    let refused = sql_on_cluster(format!("SELECT count(*) FROM '{}'", outside.display()));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("outside this cluster's data roots"),
        "{err}"
    );
    let copy_to = std::path::Path::new(data_dir).join("never-written.csv");
    let refused = sql_on_cluster(format!(
        "COPY (SELECT 1 AS a) TO '{}' STORED AS CSV",
        copy_to.display()
    ));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("--allow-writes"),
        "{err}"
    );
    assert!(!copy_to.exists());
    // A search whose trials run on the executors (`tune --cluster`).
    let spec = dir.path().join("spec.toml");
    let log = dir.path().join("trials.jsonl");
    let bc = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/breast_cancer.parquet");
    std::fs::write(
        &spec,
        format!(
            "[data]\ndataset = \"{bc}\"\nlabel = \"label\"\n[model]\nestimator = \"logistic_regression\"\n\
             [search]\nalgo = \"random\"\nmax_evals = 6\nparallelism = 2\ntrial_log = \"{}\"\n\
             [space]\nreg_param = {{ loguniform = [1e-4, 1.0] }}\nmax_iter = {{ choice = [20] }}\n",
            log.display()
        ),
    )
    .unwrap();
    let t = client(&[])
        .args([
            "--models",
            dir.path().join("m").to_str().unwrap(),
            "tune",
            spec.to_str().unwrap(),
            "--cluster",
            &url,
        ])
        .env(
            "QUIVER_AUTH_TOKEN",
            std::fs::read_to_string(&token).unwrap().trim(),
        )
        .output()
        .unwrap();
    let tt = String::from_utf8_lossy(&t.stdout).to_string();
    assert!(
        t.status.success() && tt.contains("6 trials (6 ok, 0 pruned, 0 failed, 0 cancelled)"),
        "{tt}{}",
        String::from_utf8_lossy(&t.stderr)
    );
    let log = std::fs::read_to_string(&log).unwrap();
    // After the search's own description, one line per trial.
    for line in log.lines().skip(1) {
        let trial: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            trial["worker"].as_str().unwrap().starts_with("exec-"),
            "{line}"
        );
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cluster_dir.join("cluster.json")).unwrap())
            .unwrap();
    let down = run(&["cluster", "down", "--dir", cd]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!cluster_dir.join("cluster.json").exists());
    // Every process is gone.
    for p in std::iter::once(&state["scheduler"]).chain(state["executors"].as_array().unwrap()) {
        let pid = p["pid"].as_u64().unwrap();
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                stat.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            },
            "pid {pid} still running"
        );
    }
    let status = run(&["cluster", "status", "--dir", cd]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("quiver cluster up"));
}

#[test]
fn the_prompt_keeps_going_after_an_error_and_joins_lines() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = quiver()
        .args(["--models", dir.path().to_str().unwrap(), "sql"])
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT 40 +\n 1 AS answer;\nSELECT nope;\nSELECT 'still here' AS s;\n\\q\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("41") && stdout.contains("still here"),
        "{stdout}"
    );
    assert!(stderr.contains("nope"), "{stderr}");
}

#[test]
fn tune_runs_a_spec_saves_the_best_model_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/breast_cancer.parquet");
    let spec = dir.path().join("spec.toml");
    let log = dir.path().join("trials.jsonl");
    let plot = dir.path().join("plot.svg");
    std::fs::write(
        &spec,
        format!(
            "[data]\ndataset = \"{data}\"\nlabel = \"label\"\n\n[model]\nestimator = \"logistic_regression\"\nname = \"bc\"\n\n\
             [search]\nalgo = \"tpe\"\nmax_evals = 8\nparallelism = 2\nseed = 3\ntrial_log = \"{}\"\nplot = \"{}\"\n\n\
             [space]\nreg_param = {{ loguniform = [1e-4, 1.0] }}\nmax_iter = {{ choice = [20] }}\n",
            log.display(),
            plot.display()
        ),
    )
    .unwrap();
    let models = dir.path().join("models");
    let run = || {
        quiver()
            .args([
                "--models",
                models.to_str().unwrap(),
                "tune",
                spec.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("8 trials (8 ok, 0 pruned, 0 failed, 0 cancelled)"),
        "{text}"
    );
    assert!(text.contains("saved as bc version 1"), "{text}");
    // The search's description, then the 8 trials.
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 9);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    // Run again: the log holds all 8, nothing is re-run, a second version is saved.
    let again = run();
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("8 trials") && text.contains("version 2"),
        "{text}"
    );
    // Bad specs name the problem.
    std::fs::write(&spec, "[data]\ndataset = \"x\"\n[model]\nestimator = \"logistic_regression\"\n[space]\nreg = { gamma = [1, 2] }\n").unwrap();
    let err = run();
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && msg.contains("'reg'") && msg.contains("gamma"),
        "{msg}"
    );
    std::fs::write(&spec, "[data]\ndataset = \"x\"\nlable = \"y\"\n[model]\nestimator = \"logistic_regression\"\n[space]\n").unwrap();
    let msg = String::from_utf8_lossy(&run().stderr).to_string();
    assert!(msg.contains("lable"), "{msg}");
    std::fs::write(&spec, format!("[data]\ndataset = \"{data}\"\nlabel = \"label\"\n[model]\nestimator = \"logistic_regression\"\n[space]\nlearning_rate = {{ uniform = [0, 1] }}\n")).unwrap();
    let msg = String::from_utf8_lossy(&run().stderr).to_string();
    assert!(msg.contains("unknown parameter 'learning_rate'"), "{msg}");
}

/// `quiver tune` as a careless user runs it: from another directory, with bad numbers, a
/// missing file, a grid too large, trials that all fail. Each is an error naming the problem
/// (exit 1, no panic), or, for relative paths, just works.
#[test]
fn tune_specs_resolve_beside_the_spec_and_bad_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/breast_cancer.parquet");
    std::fs::copy(data, dir.path().join("bc.parquet")).unwrap();
    let spec = dir.path().join("spec.toml");
    let elsewhere = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        std::fs::write(&spec, text).unwrap();
        quiver()
            .args([
                "--models",
                dir.path().join("models").to_str().unwrap(),
                "tune",
                spec.to_str().unwrap(),
            ])
            .current_dir(elsewhere.path())
            .output()
            .unwrap()
    };
    let spec_text = |data: &str, label: &str, search: &str, space: &str| {
        format!(
            "[data]\ndataset = \"{data}\"\nlabel = \"{label}\"\n[model]\nestimator = \"logistic_regression\"\n\
             [search]\n{search}\n[space]\n{space}\n"
        )
    };
    let ok_space = "reg_param = { loguniform = [1e-4, 1.0] }\nmax_iter = { choice = [10] }";
    // Relative dataset and log: beside the spec, not the working directory.
    let out = run(&spec_text(
        "bc.parquet",
        "label",
        "algo = \"random\"\nmax_evals = 2\ntrial_log = \"trials.jsonl\"",
        ok_space,
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("trials.jsonl").exists());
    let failing = |search: &str, space: &str, data: &str, label: &str, needle: &str| {
        let out = run(&spec_text(data, label, search, space));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{needle}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{needle}: {err}"
        );
    };
    failing(
        "max_evals = 2\ntimeout_s = -1",
        ok_space,
        "bc.parquet",
        "label",
        "timeout_s = -1",
    );
    failing(
        "max_evals = 2",
        "reg_param = { uniform = [-1e308, 1e308] }",
        "bc.parquet",
        "label",
        "finite width",
    );
    failing(
        "algo = \"grid\"\ngrid_points = 1000000000\nmax_evals = 1",
        "reg_param = { uniform = [0.0, 1.0] }",
        "bc.parquet",
        "label",
        "grid_points",
    );
    failing(
        "max_evals = 2",
        ok_space,
        "missing.parquet",
        "label",
        "cannot be read",
    );
    // A regression target as the class label: every trial fails, so the command does.
    failing(
        "algo = \"random\"\nmax_evals = 2",
        ok_space,
        "bc.parquet",
        "f0",
        "all 2 trials failed",
    );
    failing(
        "max_evals = 2\ntrial_timeout_s = 0",
        ok_space,
        "bc.parquet",
        "label",
        "trial_timeout_s = 0",
    );
    // max_failures stops the search early and the command fails, saving nothing.
    failing(
        "algo = \"random\"\nmax_evals = 20\nmax_failures = 3\nparallelism = 1",
        ok_space,
        "bc.parquet",
        "f0",
        "max_failures = 3 reached: 3 trials failed",
    );
    // The log of the first run belongs to that search: another seed cannot resume it.
    failing(
        "algo = \"random\"\nmax_evals = 3\nseed = 9\ntrial_log = \"trials.jsonl\"",
        ok_space,
        "bc.parquet",
        "label",
        "the seed (the log's: 0; this search's: 9)",
    );
    // Held-out rows kept apart (`[data] validation`), beside the spec too; not with folds.
    std::fs::copy(data, dir.path().join("held.parquet")).unwrap();
    let apart = |validation: &str, model: &str| {
        format!(
            "[data]\ndataset = \"bc.parquet\"\nlabel = \"label\"\nvalidation = \"{validation}\"\n\
             [model]\nestimator = \"logistic_regression\"\n{model}\n\
             [search]\nalgo = \"random\"\nmax_evals = 2\n[space]\n{ok_space}\n"
        )
    };
    let out = run(&apart("held.parquet", ""));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (validation, model, needle) in [
        (
            "held.parquet",
            "folds = 3",
            "[data] validation and [model] folds = 3",
        ),
        ("nowhere.parquet", "", "[data] validation = '"),
    ] {
        let out = run(&apart(validation, model));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{needle}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{needle}: {err}"
        );
    }
}

/// A script whose third statement fails still prints the first two statements' results
/// before the error (nothing computed is lost).
#[test]
fn a_failing_statement_keeps_the_earlier_results() {
    let out = quiver()
        .args([
            "sql",
            "-e",
            "SELECT 41 + 1 AS answer; SELECT 'second' AS s; SELECT nope; SELECT 'never' AS n",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stdout.contains("42") && stdout.contains("second") && !stdout.contains("never"),
        "{stdout}"
    );
    assert!(
        stderr.contains("statement 3 of 4") && stderr.contains("nope"),
        "{stderr}"
    );
}

/// `cluster up --memory-limit` bounds the executors: a join whose build side cannot spill
/// fails with an error naming the limit (a typo in the size fails before any process starts).
#[test]
fn cluster_executors_honour_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("big.parquet");
    let run = |args: &[&str]| quiver().args(args).output().unwrap();
    let made = run(&[
        "sql",
        "-e",
        &format!(
            "COPY (SELECT value FROM generate_series(1, 2000000)) TO '{}' STORED AS PARQUET",
            data.display()
        ),
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let cd = dir.path().join("cluster");
    let cd = cd.to_str().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let typo = run(&[
        "cluster",
        "up",
        "--dir",
        cd,
        "--port",
        &port,
        "--memory-limit",
        "1XB",
    ]);
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("unknown unit"));
    let up = run(&[
        "cluster",
        "up",
        "--executors",
        "1",
        "--dir",
        cd,
        "--port",
        &port,
        "--memory-limit",
        "1MB",
        // Without a token (executors then take pushed tasks): the open mode stays tested.
        "--no-auth",
        "--data-root",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let joined = run(&[
        "sql",
        "--cluster",
        &format!("df://127.0.0.1:{port}"),
        "-e",
        &format!(
            "SELECT count(*) FROM '{0}' a JOIN '{0}' b ON a.value = b.value",
            data.display()
        ),
    ]);
    let down = run(&["cluster", "down", "--dir", cd]);
    assert!(down.status.success());
    let err = String::from_utf8_lossy(&joined.stderr);
    assert!(
        !joined.status.success() && err.contains("--memory-limit"),
        "{err}"
    );
}

/// `quiver.device = cuda` on a machine without a usable CUDA device fails at once, naming the
/// key and what is missing; a bad value says what is expected. (Skipped where a device is.)
#[test]
fn cuda_device_without_one_is_a_named_error() {
    let bad = quiver()
        .args(["-c", "quiver.device=tpu", "sql", "-e", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("quiver.device") && err.contains("auto, cpu, cuda or cuda:N"),
        "{err}"
    );
    if let Ok(device) = quiver_engine::device::probe(0) {
        eprintln!("a CUDA device is present ({device:?}): the refusal is not tested here");
        return;
    }
    let out = quiver()
        .args(["-c", "quiver.device=cuda", "sql", "-e", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'cuda:0' for configuration key 'quiver.device'") && !err.contains("panicked"),
        "{err}"
    );
    // The CPU and auto run the same statement.
    for device in ["cpu", "auto"] {
        let out = quiver()
            .args([
                "-c",
                &format!("quiver.device={device}"),
                "sql",
                "-e",
                "SELECT 1",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
