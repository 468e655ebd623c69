//! Property tests of `quiver tune`'s spec handling: whatever a spec file holds (arbitrary
//! bytes, or TOML with any value in any key: negative, huge, NaN and infinite numbers, wrong
//! types, odd strings, nested tables), the command returns an error or a result, never a panic
//! or an abort. The dataset never exists, so a spec that passes every check stops at the read,
//! before any trial. Fixed seed; PROPTEST_CASES / PROPTEST_RNG_SEED explore further.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use quiver_driver::commands::tune::tune;
use quiver_driver::{QuiverConfig, QuiverSession};

/// A TOML value likely to find edge cases.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e308".to_string()),
        Just("-1e308".to_string()),
        Just("5e-324".to_string()),
        Just("0.5".to_string()),
        Just("true".to_string()),
        Just("\"\"".to_string()),
        Just("\"tpe\"".to_string()),
        Just("\"grid\"".to_string()),
        Just("\"asha\"".to_string()),
        Just("\"../../etc/passwd\"".to_string()),
        Just("\"s3://no-bucket/x\"".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>()
            .prop_filter("TOML needs a finite literal here", |v| v.is_finite())
            .prop_map(|v| format!("{v:e}")),
        "[a-z_ ]{0,12}".prop_map(|s| format!("{s:?}")),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,10}", inner), 0..3).prop_map(|kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", body.join(", "))
            }),
        ]
    })
}

const DATA_KEYS: &[&str] = &["label", "features"];
const MODEL_KEYS: &[&str] = &[
    "estimator",
    "metric",
    "eval_fraction",
    "split_seed",
    "folds",
    "name",
    "stages",
];
const SEARCH_KEYS: &[&str] = &[
    "algo",
    "max_evals",
    "parallelism",
    "threads_per_trial",
    "asynchronous",
    "seed",
    "trial_log",
    "plot",
    "timeout_s",
    "trial_timeout_s",
    "max_failures",
    "early_stop",
    "grid_points",
    "loss_threshold",
    "pruner",
    "trial_placement",
];
const SPACE_KEYS: &[&str] = &[
    "reg_param",
    "elastic_net_param",
    "max_iter",
    "k",
    "max_depth",
    "bogus",
];

/// Some of `keys`, each with a value.
fn section(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((prop::sample::select(keys), value()), 0..6).prop_map(|kv| {
        let mut seen = std::collections::HashSet::new();
        kv.into_iter()
            .filter(|(k, _)| seen.insert(*k))
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    })
}

/// A space entry: a distribution name with a value, or any value.
fn space_entry() -> impl Strategy<Value = String> {
    let dist = prop::sample::select(
        &[
            "uniform",
            "loguniform",
            "quniform",
            "randint",
            "choice",
            "normal",
            "what",
        ][..],
    );
    prop_oneof![
        (dist, value()).prop_map(|(d, v)| format!("{{ {d} = {v} }}")),
        value(),
    ]
}

fn spec() -> impl Strategy<Value = String> {
    (
        section(DATA_KEYS),
        prop::option::of(prop::sample::select(
            &["logistic_regression", "kmeans", "gbt_classifier", "nope"][..],
        )),
        section(MODEL_KEYS),
        section(SEARCH_KEYS),
        prop::collection::vec((prop::sample::select(SPACE_KEYS), space_entry()), 0..4),
    )
        .prop_map(|(data, estimator, model, search, space)| {
            let mut text = String::from("[data]\ndataset = \"missing/never.parquet\"\n");
            for (k, v) in data {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text.push_str("[model]\n");
            if let Some(e) = estimator {
                text.push_str(&format!("estimator = \"{e}\"\n"));
            }
            for (k, v) in model.into_iter().filter(|(k, _)| k != "estimator") {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text.push_str("[search]\n");
            for (k, v) in search {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text.push_str("[space]\n");
            let mut seen = std::collections::HashSet::new();
            for (k, v) in space.into_iter().filter(|(k, _)| seen.insert(*k)) {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text
        })
}

/// 256 cases from a fixed seed (CI stays reproducible); `PROPTEST_CASES` and
/// `PROPTEST_RNG_SEED` explore further.
fn runner() -> TestRunner {
    let mut c = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var("PROPTEST_CASES").is_err() {
        c.cases = 256;
    }
    if std::env::var("PROPTEST_RNG_SEED").is_err() {
        c.rng_seed = RngSeed::Fixed(13);
    }
    TestRunner::new(c)
}

/// Runs the spec `text`; panics only if the command does.
fn run_spec(session: &QuiverSession, rt: &tokio::runtime::Runtime, text: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.toml");
    std::fs::write(&path, text).unwrap();
    let mut out = Vec::new();
    match rt.block_on(tune(session, &path, &mut out)) {
        // A spec can only succeed by reading the dataset, which does not exist.
        Ok(r) => panic!(
            "a spec over a missing dataset ran {} trials",
            r.trials.len()
        ),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

#[test]
fn any_tune_spec_is_an_error_or_a_result_never_a_panic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = QuiverSession::embedded_with(QuiverConfig::default()).unwrap();
    runner()
        .run(&spec(), |text| {
            run_spec(&session, &rt, text.as_bytes());
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_spec_bytes_are_an_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = QuiverSession::embedded_with(QuiverConfig::default()).unwrap();
    runner()
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            run_spec(&session, &rt, &bytes);
            Ok(())
        })
        .unwrap();
}
