//! The model store under concurrent writers and crashes, with real `quiver` processes on one
//! store directory: every published version must load with every part intact, and every
//! failure must be a clean error.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/diabetes.parquet");

fn quiver(models: &Path, sql: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quiver"));
    c.args(["--models", models.to_str().unwrap(), "sql", "-e", sql]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn create(replace: bool, if_not_exists: bool, iterations: usize) -> String {
    format!(
        "CREATE EXTERNAL TABLE d STORED AS PARQUET LOCATION '{DATA}'; \
         CREATE {}MODEL {}m OPTIONS (model_type = 'logistic_reg', input_label_cols = ['label'], \
         max_iterations = {iterations}, data_split_method = 'no_split') \
         AS SELECT age, bmi, bp, s1, s2, CASE WHEN target > 140 THEN 1 ELSE 0 END AS label FROM d",
        if replace { "OR REPLACE " } else { "" },
        if if_not_exists { "IF NOT EXISTS " } else { "" },
    )
}

/// A finished process either succeeded or failed with an error message (no panic, no abort).
fn check_clean(what: &str, out: &Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return true;
    }
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: not a clean failure ({:?}):\n{err}",
        out.status
    );
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    false
}

/// Every published version of every model loads, and every part matches its checksum.
fn assert_store_healthy(models: &Path) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let session = quiver_driver::QuiverSession::embedded().unwrap();
        let store = session.model_store_at(models.to_str().unwrap()).unwrap();
        let mut count = 0;
        for entry in store.list_entries().await.unwrap() {
            entry.model.as_ref().unwrap_or_else(|e| panic!("{e}"));
            for v in store.versions(&entry.name).await.unwrap() {
                let stored = store.load(&entry.name, Some(v)).await.unwrap();
                assert!(!stored.metadata.parts.is_empty(), "v{v} has no parts");
                for (part, _) in &stored.metadata.parts {
                    stored
                        .part(part)
                        .await
                        .unwrap_or_else(|e| panic!("v{v} part {part}: {e}"));
                }
                // And it is a model: the library rebuilds it from the store.
                quiver_driver::mllib::load_dyn(&store, &entry.name, Some(v))
                    .await
                    .unwrap_or_else(|e| panic!("v{v} does not load: {e}"));
                count += 1;
            }
        }
        count
    })
}

#[test]
fn concurrent_writers_and_droppers_never_break_a_published_version() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let writers = 4;
    let rounds = 4;
    let mut published = 0;
    for round in 0..rounds {
        // Writers of every kind at once, and a DROP racing them.
        let mut children: Vec<(String, Child)> = Vec::new();
        for w in 0..writers {
            let (replace, ine) = match w % 3 {
                0 => (true, false),
                1 => (false, true),
                _ => (false, false),
            };
            let sql = create(replace, ine, 5 + w);
            children.push((
                format!("round {round} writer {w}"),
                quiver(&models, &sql).spawn().unwrap(),
            ));
        }
        if round % 2 == 1 {
            children.push((
                format!("round {round} drop"),
                quiver(&models, "DROP MODEL IF EXISTS m").spawn().unwrap(),
            ));
        }
        for (what, child) in children {
            let out = child.wait_with_output().unwrap();
            if check_clean(&what, &out) && what.contains("writer") {
                let text = String::from_utf8_lossy(&out.stdout);
                if !text.contains("nothing done") {
                    published += 1;
                }
            }
        }
        assert_store_healthy(&models);
    }
    assert!(published >= rounds, "only {published} saves succeeded");
}

#[test]
fn a_writer_killed_at_any_point_never_leaves_a_broken_version() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let first = quiver(&models, &create(true, false, 5)).output().unwrap();
    assert!(check_clean("first save", &first));
    // The process dies after writing 0, 1, 2 or all 3 parts (before the metadata): nothing is
    // published, version 1 stays the latest and loads.
    for parts in 0..4 {
        let out = quiver(&models, &create(true, false, 6))
            .env("QUIVER_FAULT_ABORT_SAVE_AFTER_PARTS", parts.to_string())
            .output()
            .unwrap();
        assert!(!out.status.success(), "the injected crash did not happen");
        assert_eq!(assert_store_healthy(&models), 1);
    }
    // Killed from outside after a spread of delays: before, during and after the save.
    for (i, ms) in [0u64, 10, 30, 50, 70, 90, 120, 200].into_iter().enumerate() {
        let mut child = quiver(&models, &create(true, false, 5 + i))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        assert!(assert_store_healthy(&models) >= 1);
    }
    // The store still takes new versions, with numbers never reused.
    let out = quiver(&models, &create(true, false, 5)).output().unwrap();
    assert!(check_clean("after the crashes", &out));
    assert!(assert_store_healthy(&models) >= 2);
    // A model whose only writer was killed on this machine: its claim is recognised as dead
    // (the process is gone), the number stays taken and a plain CREATE goes ahead.
    let fresh = create(false, false, 5).replace("MODEL m ", "MODEL n ");
    let out = quiver(&models, &fresh)
        .env("QUIVER_FAULT_ABORT_SAVE_AFTER_PARTS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = quiver(&models, &fresh).output().unwrap();
    assert!(check_clean("CREATE after a killed writer", &out));
    assert!(models.join("n/v000001/_deleted").exists());
    assert!(models.join("n/v000002/metadata.json").exists());
    // A claim whose writer still runs (this test process), or that was made on another
    // machine (nothing can be told about it), is "being written": CREATE says so and what to
    // do; OR REPLACE goes ahead.
    let me = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let start = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
    let host = read("/proc/sys/kernel/hostname");
    let boot = read("/proc/sys/kernel/random/boot_id");
    for (name, claim) in [
        (
            "live",
            serde_json::json!({"pid": me, "claimed_at": "now", "host": host, "boot_id": boot, "start_ticks": start}),
        ),
        (
            "remote",
            serde_json::json!({"pid": 1, "claimed_at": "now", "host": "elsewhere", "boot_id": "x", "start_ticks": "1"}),
        ),
    ] {
        let v1 = models.join(name).join("v000001");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("_claim"), claim.to_string()).unwrap();
        let sql = create(false, false, 5).replace("MODEL m ", &format!("MODEL {name} "));
        let out = quiver(&models, &sql).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("version 1 is being written")
                && err.contains("CREATE OR REPLACE"),
            "{name}: {err}"
        );
        let out = quiver(
            &models,
            &create(true, false, 5).replace("MODEL m ", &format!("MODEL {name} ")),
        )
        .output()
        .unwrap();
        assert!(check_clean("OR REPLACE after a claim", &out));
        assert!(models.join(name).join("v000002/metadata.json").exists());
    }
}
