//! Cross-crate integration tests of Quiver (see the files under `tests/`): the driver's
//! end-to-end flows over the engine, SQL with every crate's functions registered.
