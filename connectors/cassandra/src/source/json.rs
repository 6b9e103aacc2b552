//! CQL values as JSON: what a published record's value and key hold.
//!
//! | CQL | JSON |
//! |---|---|
//! | text, ascii, varchar | string |
//! | tinyint, smallint, int, bigint, counter | number |
//! | varint, decimal | string (exact digits; `"-12.50"`) |
//! | float, double | number (NaN and infinities: string) |
//! | boolean | true / false |
//! | timestamp | number: epoch milliseconds |
//! | date | string `YYYY-MM-DD` |
//! | time | number: nanoseconds since midnight |
//! | duration | string in CQL's form, `1mo2d3ns` |
//! | uuid, timeuuid, inet | string |
//! | blob | string, base64 (standard alphabet, padded) |
//! | list, set, vector | array |
//! | map | object (keys printed as strings) |
//! | tuple | array |
//! | user-defined type | object of its fields |

use base64::Engine as _;
use scylla::value::{CqlDuration, CqlValue};
use serde_json::{Map, Number, Value};

/// Days between -5877641-06-23 (CQL date 0) and 1970-01-01.
const CQL_DATE_EPOCH_OFFSET: i64 = 1 << 31;

/// `value` as JSON (`None`, a null, as `null`).
pub(crate) fn to_json(value: Option<&CqlValue>) -> Value {
    let Some(value) = value else {
        return Value::Null;
    };
    match value {
        CqlValue::Ascii(s) | CqlValue::Text(s) => Value::String(s.clone()),
        CqlValue::Boolean(b) => Value::Bool(*b),
        CqlValue::Blob(bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        CqlValue::Counter(c) => Value::from(c.0),
        CqlValue::Decimal(d) => {
            let (digits, scale) = d.as_signed_be_bytes_slice_and_exponent();
            Value::String(decimal_string(digits, scale))
        }
        CqlValue::Varint(v) => Value::String(decimal_string(v.as_signed_bytes_be_slice(), 0)),
        CqlValue::Date(d) => Value::String(date_string(d.0)),
        CqlValue::Double(f) => float(*f),
        CqlValue::Float(f) => float(f64::from(*f)),
        CqlValue::Duration(d) => Value::String(duration_string(d)),
        CqlValue::Empty => Value::Null,
        CqlValue::Int(i) => Value::from(*i),
        CqlValue::BigInt(i) => Value::from(*i),
        CqlValue::SmallInt(i) => Value::from(*i),
        CqlValue::TinyInt(i) => Value::from(*i),
        CqlValue::Timestamp(t) => Value::from(t.0),
        CqlValue::Time(t) => Value::from(t.0),
        CqlValue::Inet(ip) => Value::String(ip.to_string()),
        CqlValue::Uuid(u) => Value::String(u.to_string()),
        CqlValue::Timeuuid(u) => Value::String(u.to_string()),
        CqlValue::List(items) | CqlValue::Set(items) | CqlValue::Vector(items) => {
            Value::Array(items.iter().map(|v| to_json(Some(v))).collect())
        }
        CqlValue::Tuple(items) => Value::Array(items.iter().map(|v| to_json(v.as_ref())).collect()),
        CqlValue::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (key_string(k), to_json(Some(v))))
                .collect::<Map<_, _>>(),
        ),
        CqlValue::UserDefinedType { fields, .. } => Value::Object(
            fields
                .iter()
                .map(|(name, v)| (name.clone(), to_json(v.as_ref())))
                .collect::<Map<_, _>>(),
        ),
        // `CqlValue` is non-exhaustive; a type added by a later driver shows
        // as its debug form rather than stopping the source.
        #[allow(unreachable_patterns)]
        other => Value::String(format!("{other:?}")),
    }
}

/// Appends `value` as JSON to `out`, as [`to_json`] gives it, without
/// building a [`Value`] for the common scalar types (the source's hot path).
pub(crate) fn write_json(out: &mut Vec<u8>, value: Option<&CqlValue>) {
    let written = match value {
        None | Some(CqlValue::Empty) => {
            out.extend_from_slice(b"null");
            Ok(())
        }
        Some(CqlValue::Ascii(s) | CqlValue::Text(s)) => serde_json::to_writer(&mut *out, s),
        Some(CqlValue::Boolean(b)) => serde_json::to_writer(&mut *out, b),
        Some(CqlValue::Int(i)) => serde_json::to_writer(&mut *out, i),
        Some(CqlValue::BigInt(i)) => serde_json::to_writer(&mut *out, i),
        Some(CqlValue::SmallInt(i)) => serde_json::to_writer(&mut *out, i),
        Some(CqlValue::TinyInt(i)) => serde_json::to_writer(&mut *out, i),
        Some(CqlValue::Counter(c)) => serde_json::to_writer(&mut *out, &c.0),
        Some(CqlValue::Timestamp(t)) => serde_json::to_writer(&mut *out, &t.0),
        Some(CqlValue::Time(t)) => serde_json::to_writer(&mut *out, &t.0),
        Some(CqlValue::Double(f)) if f.is_finite() => serde_json::to_writer(&mut *out, f),
        Some(other) => serde_json::to_writer(&mut *out, &to_json(Some(other))),
    };
    // Writing to a Vec fails only on a non-string map key, which `to_json`
    // never makes; keep the output valid anyway.
    if written.is_err() {
        out.extend_from_slice(b"null");
    }
}

/// Appends `"name":` to `out`.
pub(crate) fn write_name(out: &mut Vec<u8>, name: &str) {
    // A string always serializes into a Vec.
    if serde_json::to_writer(&mut *out, name).is_err() {
        out.extend_from_slice(b"\"\"");
    }
    out.push(b':');
}

/// A map key or a single-column partition key as text: strings as they are,
/// everything else as its JSON.
pub(crate) fn key_string(value: &CqlValue) -> String {
    match to_json(Some(value)) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
}

/// A two's-complement big-endian integer scaled by 10^-scale, in decimal.
fn decimal_string(be_bytes: &[u8], scale: i32) -> String {
    let value = num_bigint::BigInt::from_signed_bytes_be(be_bytes);
    let digits = value.magnitude().to_string();
    let sign = if value.sign() == num_bigint::Sign::Minus {
        "-"
    } else {
        ""
    };
    if scale <= 0 {
        let zeros = "0".repeat(scale.unsigned_abs() as usize);
        return if digits == "0" {
            "0".into()
        } else {
            format!("{sign}{digits}{zeros}")
        };
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// A CQL date (days, 2^31 = 1970-01-01) as `YYYY-MM-DD`; out of chrono's
/// range, the day number.
fn date_string(days: u32) -> String {
    let since_epoch = i64::from(days) - CQL_DATE_EPOCH_OFFSET;
    chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| {
            let delta = chrono::TimeDelta::try_days(since_epoch)?;
            epoch.checked_add_signed(delta)
        })
        .map_or_else(
            || since_epoch.to_string(),
            |d| d.format("%Y-%m-%d").to_string(),
        )
}

/// A duration in CQL's literal form (`1mo2d3ns`; `0ns` when empty; a minus
/// sign in front when negative).
fn duration_string(d: &CqlDuration) -> String {
    let negative = d.months < 0 || d.days < 0 || d.nanoseconds < 0;
    let mut out = String::from(if negative { "-" } else { "" });
    let parts = [
        (i64::from(d.months).unsigned_abs(), "mo"),
        (i64::from(d.days).unsigned_abs(), "d"),
        (d.nanoseconds.unsigned_abs(), "ns"),
    ];
    for (amount, unit) in parts {
        if amount != 0 {
            out.push_str(&format!("{amount}{unit}"));
        }
    }
    if out.is_empty() || out == "-" {
        out = "0ns".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::value::{CqlDate, CqlDecimal, CqlTimestamp, CqlVarint};

    #[test]
    fn decimals_and_varints_keep_every_digit() {
        let d = CqlDecimal::from_signed_be_bytes_slice_and_exponent(&(-1250i64).to_be_bytes(), 2);
        assert_eq!(
            to_json(Some(&CqlValue::Decimal(d))),
            Value::String("-12.50".into())
        );
        let small = CqlDecimal::from_signed_be_bytes_slice_and_exponent(&[5], 3);
        assert_eq!(
            to_json(Some(&CqlValue::Decimal(small))),
            Value::String("0.005".into())
        );
        let big = CqlVarint::from_signed_bytes_be_slice(&[0x7f; 12]);
        let Value::String(text) = to_json(Some(&CqlValue::Varint(big))) else {
            panic!("a varint is a string")
        };
        assert_eq!(text, "39458731918868905389725810559");
    }

    #[test]
    fn dates_times_and_durations_read_as_people_write_them() {
        let epoch = CqlValue::Date(CqlDate(1 << 31));
        assert_eq!(to_json(Some(&epoch)), Value::String("1970-01-01".into()));
        let later = CqlValue::Date(CqlDate((1 << 31) + 19_723));
        assert_eq!(to_json(Some(&later)), Value::String("2024-01-01".into()));
        let ts = CqlValue::Timestamp(CqlTimestamp(1_700_000_000_123));
        assert_eq!(to_json(Some(&ts)), Value::from(1_700_000_000_123i64));
        let d = CqlDuration {
            months: 1,
            days: 2,
            nanoseconds: 3,
        };
        assert_eq!(
            to_json(Some(&CqlValue::Duration(d))),
            Value::String("1mo2d3ns".into())
        );
    }

    #[test]
    fn written_json_is_the_json_of_the_value() {
        let values = [
            None,
            Some(CqlValue::Empty),
            Some(CqlValue::Text("a \"quoted\"\nline \u{e9}".into())),
            Some(CqlValue::Ascii("plain".into())),
            Some(CqlValue::Boolean(true)),
            Some(CqlValue::Int(-7)),
            Some(CqlValue::BigInt(i64::MIN)),
            Some(CqlValue::SmallInt(3)),
            Some(CqlValue::TinyInt(-1)),
            Some(CqlValue::Timestamp(CqlTimestamp(1_700_000_000_123))),
            Some(CqlValue::Double(20.1)),
            Some(CqlValue::Double(1e300)),
            Some(CqlValue::Double(f64::NAN)),
            Some(CqlValue::Double(f64::NEG_INFINITY)),
            Some(CqlValue::Float(0.1)),
            Some(CqlValue::Blob(vec![0, 255])),
            Some(CqlValue::Date(CqlDate(1 << 31))),
            Some(CqlValue::List(vec![
                CqlValue::Int(1),
                CqlValue::Text("x".into()),
            ])),
        ];
        for value in &values {
            let mut out = Vec::new();
            write_json(&mut out, value.as_ref());
            let written: Value = serde_json::from_slice(&out).unwrap_or(Value::Bool(false));
            assert_eq!(written, to_json(value.as_ref()), "{value:?}");
            assert_eq!(
                out,
                to_json(value.as_ref()).to_string().into_bytes(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn collections_and_udts_nest() {
        let map = CqlValue::Map(vec![(CqlValue::Int(1), CqlValue::Blob(vec![0, 255]))]);
        assert_eq!(to_json(Some(&map)).to_string(), r#"{"1":"AP8="}"#);
        let udt = CqlValue::UserDefinedType {
            keyspace: "ks".into(),
            name: "address".into(),
            fields: vec![
                ("city".into(), Some(CqlValue::Text("Oslo".into()))),
                ("zip".into(), None),
            ],
        };
        assert_eq!(
            to_json(Some(&udt)).to_string(),
            r#"{"city":"Oslo","zip":null}"#
        );
        let tuple = CqlValue::Tuple(vec![Some(CqlValue::Int(1)), None]);
        assert_eq!(to_json(Some(&tuple)).to_string(), "[1,null]");
    }
}
