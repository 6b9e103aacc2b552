//! Explains why arrow-json rejected a record, in terms of the declared schema.
//! Only runs on the slow path (a batch that holds a bad record).

use arrow::datatypes::{DataType, Schema};
use serde_json::Value;

use super::BadInputKind;

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn snippet(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 40 {
        let mut cut = 40;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn fits(data_type: &DataType, value: &Value) -> bool {
    use DataType as D;
    match (data_type, value) {
        (_, Value::Null) => true,
        (D::Boolean, Value::Bool(_)) => true,
        (D::Int8 | D::Int16 | D::Int32 | D::Int64, Value::Number(n)) => n.is_i64(),
        (D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64, Value::Number(n)) => n.is_u64(),
        (
            D::Float16 | D::Float32 | D::Float64 | D::Decimal128(..) | D::Decimal256(..),
            Value::Number(_),
        ) => true,
        (D::Timestamp(..) | D::Date32 | D::Date64, Value::Number(_) | Value::String(_)) => true,
        (D::Utf8 | D::LargeUtf8 | D::Utf8View, Value::String(_)) => true,
        (D::Binary | D::LargeBinary | D::BinaryView, Value::String(_)) => true,
        (D::List(_) | D::LargeList(_) | D::FixedSizeList(..), Value::Array(_)) => true,
        (D::Struct(_) | D::Map(..), Value::Object(_)) => true,
        _ => false,
    }
}

/// Explains a rejected JSON value: the kind of problem and a reason naming the field.
pub(crate) fn explain(schema: &Schema, bytes: &[u8], arrow_error: &str) -> (BadInputKind, String) {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return (BadInputKind::MalformedJson, format!("malformed JSON: {e}")),
    };
    let Value::Object(object) = &value else {
        return (
            BadInputKind::WrongType,
            format!(
                "expected a JSON object, found {} {}",
                kind_of(&value),
                snippet(&value)
            ),
        );
    };
    for field in schema.fields() {
        match object.get(field.name()) {
            None | Some(Value::Null) if !field.is_nullable() => {
                return (
                    BadInputKind::MissingField,
                    format!(
                        "missing required field '{}' ({})",
                        field.name(),
                        field.data_type()
                    ),
                )
            }
            Some(v) if !fits(field.data_type(), v) => {
                return (
                    BadInputKind::WrongType,
                    format!(
                        "field '{}': expected {}, found {} {}",
                        field.name(),
                        field.data_type(),
                        kind_of(v),
                        snippet(v)
                    ),
                )
            }
            _ => {}
        }
    }
    (
        BadInputKind::WrongType,
        format!("cannot decode: {arrow_error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("device", DataType::Utf8, false),
            Field::new("temp", DataType::Float64, true),
        ])
    }

    #[test]
    fn names_the_problem() {
        let s = schema();
        assert_eq!(
            explain(&s, b"{\"device\":", "x").0,
            BadInputKind::MalformedJson
        );
        let (kind, reason) = explain(&s, br#"{"temp":1.0}"#, "x");
        assert_eq!(kind, BadInputKind::MissingField);
        assert!(reason.contains("'device'"), "{reason}");
        let (kind, reason) = explain(&s, br#"{"device":"a","temp":"hot"}"#, "x");
        assert_eq!(kind, BadInputKind::WrongType);
        assert!(
            reason.contains("field 'temp': expected Float64, found string \"hot\""),
            "{reason}"
        );
        assert_eq!(explain(&s, b"[1]", "x").0, BadInputKind::WrongType);
    }
}
