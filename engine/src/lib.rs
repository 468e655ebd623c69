//! # quiver-engine
//!
//! The core every other Quiver crate builds on:
//! - [`QuiverSession`]: a DataFusion session with Quiver's functions, configuration
//!   ([`QuiverConfig`], `quiver.*` keys) and compute pool;
//! - data I/O on object-store URLs ([`io`]) and [`Dataset`] (a DataFrame with feature, label and
//!   weight roles), dense feature vectors ([`vector`]);
//! - the three primitives: aggregate ([`Statistic`], run by [`run_local`] and
//!   [`run_embedded`]), map ([`BatchFunction`], [`MapUdf`]) and fan-out ([`Task`],
//!   [`fan_out_local`], [`fan_out_embedded`]);
//! - the feature summary ([`Summarizer`]), the model store ([`ModelStore`]) and the registries
//!   upper crates fill ([`registry`]).

pub mod aggregate;
pub mod allocator;
pub mod board;
pub mod cluster;
pub mod config;
pub mod cpu;
pub mod dataset;
pub mod device;
pub mod error;
pub mod fanout;
pub mod functions;
pub mod io;
pub mod local_files;
pub mod map;
pub mod math;
pub mod moments;
pub mod registry;
pub mod reuse;
pub mod session;
pub mod store;
pub mod summary;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod vector;

pub use aggregate::{StatInputs, Statistic, StatisticUdaf, run_embedded, run_local};
pub use config::{CONFIG_KEYS, QuiverConfig};
pub use dataset::{Dataset, FeatureMoments, LocalFrame, SPLIT_DRAW};
pub use error::{QuiverError, Result};
pub use fanout::{
    FanOutOptions, Task, TaskOutcome, TaskResult, TaskRunner, TaskStatus, fan_out_embedded,
    fan_out_local,
};
pub use io::DataFormat;
pub use map::{BatchFunction, MapUdf, apply_to_columns, map_dataset};
pub use registry::FunctionRegistry;
pub use session::{Backend, Prepared, QuiverSession, Runner};
pub use store::{ListedModel, ModelDraft, ModelMetadata, ModelStore, SaveNew, StoredModel};
pub use summary::{FeatureSummary, Summarizer};
pub use vector::FeatureBatch;
