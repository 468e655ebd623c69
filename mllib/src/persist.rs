//! Payload helpers: named `f64` vectors as one Arrow IPC part (the model store's array format).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use bytes::Bytes;

use crate::error::{MllibError, Result};

/// A model's parameters as JSON for its metadata.
pub fn params_json<P: serde::Serialize>(params: &P) -> Result<serde_json::Value> {
    serde_json::to_value(params).map_err(|e| MllibError::InvalidParam {
        param: "params".to_string(),
        reason: e.to_string(),
    })
}

/// Encodes equally long named vectors as one Arrow IPC file (one column each).
pub fn vectors_to_ipc(columns: &[(&str, &[f64])]) -> Result<Bytes> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, _)| Field::new(*n, DataType::Float64, false))
        .collect();
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|(_, v)| Arc::new(Float64Array::from(v.to_vec())) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
    let mut w = arrow::ipc::writer::FileWriter::try_new(Vec::new(), &batch.schema())?;
    w.write(&batch)?;
    w.finish()?;
    Ok(Bytes::from(w.into_inner()?))
}

/// Decodes what [`vectors_to_ipc`] wrote; `model` names the model in errors.
pub fn vectors_from_ipc(bytes: &Bytes, model: &str) -> Result<BTreeMap<String, Vec<f64>>> {
    let corrupt = |reason: String| MllibError::CorruptModel {
        name: model.to_string(),
        reason,
    };
    // The Arrow IPC reader panics on some damaged schemas (an unknown type id): a damaged part
    // is an error naming the model, not a crash.
    std::panic::catch_unwind(|| decode_vectors(bytes, &corrupt)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(corrupt(format!("unreadable Arrow payload: {why}")))
    })
}

/// Checks that every block an Arrow IPC file's footer lists lies inside the file: the reader
/// allocates what a block claims before reading it, so a damaged footer could ask for
/// exabytes.
fn check_ipc_blocks(bytes: &[u8]) -> std::result::Result<(), String> {
    let len = bytes.len();
    let trailer: [u8; 10] = bytes
        .get(len.saturating_sub(10)..)
        .and_then(|t| t.try_into().ok())
        .ok_or("too short for an Arrow file")?;
    let footer_len = arrow::ipc::reader::read_footer_length(trailer).map_err(|e| e.to_string())?;
    let start = len
        .checked_sub(10 + footer_len)
        .ok_or("its footer is longer than the file")?;
    let footer = arrow::ipc::root_as_footer(&bytes[start..len - 10]).map_err(|e| e.to_string())?;
    let blocks = footer
        .recordBatches()
        .into_iter()
        .chain(footer.dictionaries())
        .flat_map(|b| b.iter());
    for b in blocks {
        let end = b.offset() as i128 + b.metaDataLength() as i128 + b.bodyLength() as i128;
        if b.offset() < 0 || b.metaDataLength() < 0 || b.bodyLength() < 0 || end > start as i128 {
            return Err(format!(
                "a block at {} of {} bytes lies outside the file",
                b.offset(),
                b.metaDataLength() as i128 + b.bodyLength() as i128
            ));
        }
    }
    Ok(())
}

fn decode_vectors(
    bytes: &Bytes,
    corrupt: &dyn Fn(String) -> MllibError,
) -> Result<BTreeMap<String, Vec<f64>>> {
    check_ipc_blocks(bytes).map_err(|e| corrupt(format!("unreadable Arrow payload: {e}")))?;
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes.clone()), None)
        .map_err(|e| corrupt(format!("unreadable Arrow payload: {e}")))?;
    let schema = reader.schema();
    let mut out: BTreeMap<String, Vec<f64>> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), Vec::new()))
        .collect();
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(format!("unreadable Arrow payload: {e}")))?;
        for (f, col) in schema.fields().iter().zip(batch.columns()) {
            let values = col
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| corrupt(format!("payload column '{}' is not Float64", f.name())))?;
            if let Some(v) = out.get_mut(f.name()) {
                v.extend_from_slice(values.values());
            }
        }
    }
    Ok(out)
}

/// `rows × cols` values a stored model's metadata claims, or an error when the product
/// overflows or is beyond any model (2³² values) or a factor is 0: checked before anything is
/// sized by it.
pub fn claimed_len(rows: usize, cols: usize, what: &str, model: &str) -> Result<usize> {
    rows.checked_mul(cols)
        .filter(|n| rows > 0 && cols > 0 && *n <= 1 << 32)
        .ok_or_else(|| MllibError::CorruptModel {
            name: model.to_string(),
            reason: format!("{what} claims {rows} × {cols} values"),
        })
}

/// Takes column `name` out of a decoded payload, checking its length.
pub fn take_vector(
    columns: &mut BTreeMap<String, Vec<f64>>,
    name: &str,
    len: usize,
    model: &str,
) -> Result<Vec<f64>> {
    let v = columns
        .remove(name)
        .ok_or_else(|| MllibError::CorruptModel {
            name: model.to_string(),
            reason: format!("payload has no column '{name}'"),
        })?;
    if v.len() != len {
        return Err(MllibError::CorruptModel {
            name: model.to_string(),
            reason: format!(
                "payload column '{name}' has {} values, expected {len}",
                v.len()
            ),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_exactly() {
        let a = [1.0, f64::MIN_POSITIVE, -0.0, 1e300];
        let b = [0.1, 0.2, 0.3, 0.4];
        let bytes = vectors_to_ipc(&[("a", &a), ("b", &b)]).unwrap();
        let mut back = vectors_from_ipc(&bytes, "m").unwrap();
        assert_eq!(take_vector(&mut back, "a", 4, "m").unwrap(), a);
        assert_eq!(take_vector(&mut back, "b", 4, "m").unwrap(), b);
        assert!(take_vector(&mut back, "c", 4, "m").is_err());
        let err = vectors_from_ipc(&Bytes::from_static(b"junk"), "m").unwrap_err();
        assert!(err.to_string().starts_with("model 'm' is corrupt"), "{err}");
    }
}
