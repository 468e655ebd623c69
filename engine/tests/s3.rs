//! Data and models on a real S3-compatible server (moto, started here on a free loopback
//! port). `.ci/run` installs it and sets `QUIVER_REQUIRE_S3=1`, which turns a missing server
//! into a failure; elsewhere the test says it was skipped.

use bytes::Bytes;
use quiver_engine::testing::S3Server;
use quiver_engine::{Dataset, ModelDraft, QuiverConfig, QuiverError, QuiverSession, Runner};

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.parquet");

fn session(port: u16) -> QuiverSession {
    let config = QuiverConfig::default()
        .with_pairs([
            (
                "quiver.s3.endpoint",
                format!("http://127.0.0.1:{port}").as_str(),
            ),
            ("quiver.s3.region", "us-east-1"),
            ("quiver.s3.access_key_id", "testing"),
            ("quiver.s3.secret_access_key", "testing"),
        ])
        .unwrap()
        .with_model_store("s3://quiver-test/models/");
    QuiverSession::embedded_with(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_models_on_s3() {
    let Some(server) = S3Server::start() else {
        return;
    };
    server.create_bucket("quiver-test");
    let s = session(server.port);

    // Data: write Parquet and Arrow IPC to S3, read back, same summary as the local file.
    let local = s.read(DIGITS).await.unwrap();
    assert_eq!(
        s.write_parquet(local.clone(), "s3://quiver-test/data/digits.parquet")
            .await
            .unwrap(),
        1797
    );
    assert_eq!(
        s.write_ipc(local.clone(), "s3://quiver-test/data/digits.arrow")
            .await
            .unwrap(),
        1797
    );
    for i in 0..2 {
        let loc = format!("s3://quiver-test/parts/part-{i}.parquet");
        s.write_parquet(local.clone(), &loc).await.unwrap();
    }
    let features = |df| {
        Dataset::new(df)
            .with_label("label")
            .unwrap()
            .with_numeric_features_except(&[])
            .unwrap()
    };
    let want = s.summarize(&features(local), Runner::Local).await.unwrap();
    for loc in [
        "s3://quiver-test/data/digits.parquet",
        "s3://quiver-test/data/digits.arrow",
        "s3://quiver-test/parts/",
    ] {
        let ds = features(s.read(loc).await.unwrap());
        for runner in [Runner::Local, Runner::Embedded] {
            let got = s.summarize(&ds, runner).await.unwrap();
            assert_eq!(
                got.count,
                if loc.ends_with('/') { 2 * 1797 } else { 1797 },
                "{loc}"
            );
            for j in 0..64 {
                assert!(
                    (got.mean[j] - want.mean[j]).abs() <= 1e-12 * want.mean[j].abs().max(1.0),
                    "{loc}"
                );
            }
        }
    }
    let err = s
        .read("s3://quiver-test/data/missing.parquet")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "file not found: s3://quiver-test/data/missing.parquet"
    );

    // Models: versions, load, a failed save that publishes nothing.
    let store = s.model_store().unwrap();
    let draft = || ModelDraft {
        kind: "k".into(),
        format_version: 1,
        ..Default::default()
    };
    store
        .save(
            "m",
            draft(),
            vec![Ok(("w".to_string(), Bytes::from_static(b"one")))],
        )
        .await
        .unwrap();
    let failing = vec![
        Ok(("w".to_string(), Bytes::from_static(b"two"))),
        Err(QuiverError::Internal("boom".to_string())),
    ];
    assert!(store.save("m", draft(), failing).await.is_err());
    assert_eq!(store.versions("m").await.unwrap(), vec![1]);
    let m = store.load("m", None).await.unwrap();
    assert_eq!(m.part("w").await.unwrap(), Bytes::from_static(b"one"));
    let v = store.save("m", draft(), Vec::new()).await.unwrap().version;
    assert_eq!(store.load("m", None).await.unwrap().metadata.version, v);
    assert_eq!(store.list().await.unwrap().len(), 1);
    store.delete("m", None).await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
}
