//! The plan codec's Quiver payloads (a statistic's or a model function's parameters, a fan-out
//! task's settings) decoded from arbitrary bytes and arbitrary JSON: an error or a function,
//! never a panic — a scheduler or executor decodes whatever a plan carries.

use std::sync::Arc;

use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use proptest::prelude::*;
use quiver_engine::FunctionRegistry;
use quiver_engine::cluster::{QuiverLogicalCodec, QuiverPhysicalCodec, framed_payload};
use serde_json::Value;

fn registry() -> Arc<FunctionRegistry> {
    let mut r = FunctionRegistry::with_engine_functions();
    quiver_sql_udfs::register(&mut r).unwrap();
    Arc::new(r)
}

/// Keys the payloads use, so generated objects reach past the first field check.
const KEYS: &[&str] = &[
    "dim",
    "k",
    "d",
    "centers",
    "coef",
    "intercept",
    "pass",
    "classes",
    "num_classes",
    "store",
    "name",
    "version",
    "model",
    "features",
    "label",
    "weight",
    "params",
    "bins",
    "shift",
    "seed",
    "fraction",
    "columns",
    "kind",
    "stages",
    "threads",
    "deadline_ms",
    "timeout_ms",
    "Sums",
    "Sample",
    "n",
    "thresholds",
    "splits",
    "mean",
    "std",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(1 << 40)].prop_map(Value::from),
        "[a-z_]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var("PROPTEST_CASES").is_err() {
        c.cases = 384;
    }
    if std::env::var("PROPTEST_RNG_SEED").is_err() {
        c.rng_seed = proptest::test_runner::RngSeed::Fixed(0x00c0_dec0_ffee);
    }
    c.failure_persistence = None;
    c
}

/// Decodes `buf` as function `name` with both codecs; a decoded function must also name
/// itself and its signature without panicking.
fn decode_everywhere(functions: &Arc<FunctionRegistry>, scalar: bool, name: &str, buf: &[u8]) {
    let logical = QuiverLogicalCodec::new(Arc::clone(functions));
    let physical = QuiverPhysicalCodec::new(Arc::clone(functions));
    if scalar {
        for f in [
            LogicalExtensionCodec::try_decode_udf(&logical, name, buf),
            PhysicalExtensionCodec::try_decode_udf(&physical, name, buf),
        ]
        .into_iter()
        .flatten()
        {
            let _ = (f.name(), f.signature());
        }
    } else {
        for f in [
            LogicalExtensionCodec::try_decode_udaf(&logical, name, buf),
            PhysicalExtensionCodec::try_decode_udaf(&physical, name, buf),
        ]
        .into_iter()
        .flatten()
        {
            let _ = (f.name(), f.signature());
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn payloads_of_arbitrary_json_never_panic(
        which in any::<prop::sample::Index>(),
        value in json_value(),
    ) {
        static FUNCTIONS: std::sync::OnceLock<Arc<FunctionRegistry>> = std::sync::OnceLock::new();
        let functions = FUNCTIONS.get_or_init(registry);
        let names: Vec<(bool, String)> = functions
            .scalar_codec_names()
            .into_iter()
            .map(|n| (true, n))
            .chain(functions.aggregate_codec_names().into_iter().map(|n| (false, n)))
            .collect();
        let (scalar, name) = &names[which.index(names.len())];
        let buf = framed_payload(value.to_string().as_bytes());
        decode_everywhere(functions, *scalar, name, &buf);
    }

    #[test]
    fn payloads_of_arbitrary_bytes_never_panic(
        which in any::<prop::sample::Index>(),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        framed in any::<bool>(),
    ) {
        static FUNCTIONS: std::sync::OnceLock<Arc<FunctionRegistry>> = std::sync::OnceLock::new();
        let functions = FUNCTIONS.get_or_init(registry);
        let names: Vec<(bool, String)> = functions
            .scalar_codec_names()
            .into_iter()
            .map(|n| (true, n))
            .chain(functions.aggregate_codec_names().into_iter().map(|n| (false, n)))
            .collect();
        let (scalar, name) = &names[which.index(names.len())];
        let buf = if framed { framed_payload(&bytes) } else { bytes };
        decode_everywhere(functions, *scalar, name, &buf);
    }
}

/// Every parameterised function is covered (the test above is not vacuous).
#[test]
fn the_codecs_know_the_parameterised_functions() {
    let functions = registry();
    let scalars = functions.scalar_codec_names();
    let aggregates = functions.aggregate_codec_names();
    assert!(
        scalars.iter().any(|n| n == "quiver_run_task"),
        "{scalars:?}"
    );
    assert!(
        scalars.iter().any(|n| n.starts_with("ml_predict")),
        "{scalars:?}"
    );
    assert!(aggregates.len() >= 8, "{aggregates:?}");
}
