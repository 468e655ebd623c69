//! `quiver models list|show|drop`: the model store from the command line.

use std::io::Write;

use crate::{QuiverSession, Result};

pub async fn list(session: &QuiverSession, out: &mut dyn Write) -> Result<()> {
    let store = session.model_store()?;
    let models = store.list_entries().await?;
    if models.is_empty() {
        writeln!(out, "no models in {}", store.url()).ok();
    }
    // A model that cannot be read is listed with its error, not hiding the others.
    for e in models {
        match e.model {
            Ok(m) => writeln!(
                out,
                "{:<24} v{:<4} {:<24} {}",
                m.name, m.version, m.kind, m.created_at
            ),
            Err(why) => writeln!(out, "{:<24} unreadable: {why}", e.name),
        }
        .ok();
    }
    Ok(())
}

pub async fn show(
    session: &QuiverSession,
    name: &str,
    version: Option<u64>,
    out: &mut dyn Write,
) -> Result<()> {
    let store = session.model_store()?;
    let model = store.load(name, version).await?;
    let versions = store.versions(name).await?;
    let text = serde_json::to_string_pretty(&model.metadata).unwrap_or_default();
    writeln!(out, "{text}").ok();
    writeln!(
        out,
        "versions: {}",
        versions
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
    .ok();
    Ok(())
}

pub async fn drop(
    session: &QuiverSession,
    name: &str,
    version: Option<u64>,
    out: &mut dyn Write,
) -> Result<()> {
    let store = session.model_store()?;
    store.delete(name, version).await?;
    match version {
        Some(v) => writeln!(out, "dropped {name} version {v}").ok(),
        None => writeln!(out, "dropped {name} (all versions)").ok(),
    };
    Ok(())
}
