//! A module's `config` table as the module receives it: TOML values to msgpack (RFC 4 §2.2).

/// The msgpack bytes of a config table (an empty map when none). TOML dates and times
/// become strings in RFC 3339 form; tables are maps in byte-wise key order.
pub fn config_msgpack(table: Option<&toml::Table>) -> Vec<u8> {
    let value = table.map_or(rmpv::Value::Map(Vec::new()), table_value);
    let mut out = Vec::new();
    // Writing a value to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &value);
    out
}

fn table_value(t: &toml::Table) -> rmpv::Value {
    rmpv::Value::Map(t.iter().map(|(k, v)| (rmpv::Value::from(k.as_str()), toml_value(v))).collect())
}

fn toml_value(v: &toml::Value) -> rmpv::Value {
    match v {
        toml::Value::String(s) => rmpv::Value::from(s.as_str()),
        toml::Value::Integer(i) => rmpv::Value::from(*i),
        toml::Value::Float(f) => rmpv::Value::from(*f),
        toml::Value::Boolean(b) => rmpv::Value::from(*b),
        toml::Value::Datetime(d) => rmpv::Value::from(d.to_string()),
        toml::Value::Array(a) => rmpv::Value::Array(a.iter().map(toml_value).collect()),
        toml::Value::Table(t) => table_value(t),
    }
}
