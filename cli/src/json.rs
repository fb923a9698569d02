//! JSON on the command line, msgpack on the wire: the two conversions modctl needs.

use bytes::Bytes;
use serde_json::Value as Json;

use crate::CliError;

/// Parse a JSON argument (absent = `{}`) into a msgpack payload.
pub fn payload(arg: Option<&str>) -> Result<Bytes, CliError> {
    let value: Json = match arg {
        None => Json::Object(Default::default()),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| CliError::Usage(format!("payload is not valid JSON: {e}")))?
        }
    };
    rmp_serde::to_vec_named(&value).map(Bytes::from).map_err(|e| CliError::Usage(format!("payload: {e}")))
}

/// Parse a JSON argument into a msgpack value (for `--config`).
pub fn value(text: &str) -> Result<rmpv::Value, CliError> {
    let json: Json = serde_json::from_str(text).map_err(|e| CliError::Usage(format!("not valid JSON: {e}")))?;
    let bytes = rmp_serde::to_vec_named(&json).map_err(|e| CliError::Usage(e.to_string()))?;
    rmpv::decode::read_value(&mut &bytes[..]).map_err(|e| CliError::Usage(e.to_string()))
}

/// Render a msgpack payload as JSON (an empty payload is `null`; bytes become an array).
pub fn render(payload: &[u8]) -> Json {
    if payload.is_empty() {
        return Json::Null;
    }
    match rmpv::decode::read_value(&mut &payload[..]) {
        Ok(v) => to_json(&v),
        Err(_) => Json::String(format!("<{} bytes, not msgpack>", payload.len())),
    }
}

fn to_json(v: &rmpv::Value) -> Json {
    use rmpv::Value as M;
    match v {
        M::Nil => Json::Null,
        M::Boolean(b) => Json::Bool(*b),
        M::Integer(i) => i.as_i64().map(Json::from).or_else(|| i.as_u64().map(Json::from)).unwrap_or(Json::Null),
        M::F32(f) => serde_json::Number::from_f64(*f as f64).map_or(Json::Null, Json::Number),
        M::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        M::String(s) => {
            Json::String(s.as_str().map_or_else(|| String::from_utf8_lossy(s.as_bytes()).into_owned(), str::to_owned))
        }
        M::Binary(b) => Json::Array(b.iter().map(|x| Json::from(*x)).collect()),
        M::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        M::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        M::String(s) => s.as_str().unwrap_or_default().to_string(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        M::Ext(t, b) => serde_json::json!({ "ext": t, "data": b }),
    }
}
