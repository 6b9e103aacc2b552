//! Arrow columns -> CQL values of the table's column types.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit};
use scylla::value::{CqlTimestamp, CqlValue, MaybeUnset};

use crate::schema::CqlType;

/// One value to bind: unset (not written), null, or a value.
pub(crate) type Bind = MaybeUnset<Option<CqlValue>>;

/// The values of `array` as `cql`, one per row; nulls become unset unless
/// `write_nulls`.
pub(crate) fn column_values(
    array: &ArrayRef,
    cql: &CqlType,
    write_nulls: bool,
) -> Result<Vec<Bind>, String> {
    let values = cql_values(array, cql)?;
    Ok(values
        .into_iter()
        .map(|v| match v {
            Some(v) => MaybeUnset::Set(Some(v)),
            None if write_nulls => MaybeUnset::Set(None),
            None => MaybeUnset::Unset,
        })
        .collect())
}

fn cast_to(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    cast(array, to).map_err(|e| format!("cannot convert {} to {to}: {e}", array.data_type()))
}

/// The values of `array` as `cql` (`None` for nulls).
fn cql_values(array: &ArrayRef, cql: &CqlType) -> Result<Vec<Option<CqlValue>>, String> {
    let n = array.len();
    let each = |f: &dyn Fn(usize) -> CqlValue| -> Vec<Option<CqlValue>> {
        (0..n).map(|i| (!array.is_null(i)).then(|| f(i))).collect()
    };
    Ok(match cql {
        CqlType::Text | CqlType::Ascii => {
            let a = cast_to(array, &DataType::Utf8)?;
            let s = a.as_string::<i32>();
            let text = |i: usize| s.value(i).to_string();
            if *cql == CqlType::Ascii {
                each(&|i| CqlValue::Ascii(text(i)))
            } else {
                each(&|i| CqlValue::Text(text(i)))
            }
        }
        CqlType::BigInt => {
            let a = cast_to(array, &DataType::Int64)?;
            let v = a.as_primitive::<Int64Type>();
            each(&|i| CqlValue::BigInt(v.value(i)))
        }
        CqlType::Int => {
            let a = cast_to(array, &DataType::Int32)?;
            let v = a.as_primitive::<Int32Type>();
            each(&|i| CqlValue::Int(v.value(i)))
        }
        CqlType::SmallInt => {
            let a = cast_to(array, &DataType::Int16)?;
            let v = a.as_primitive::<Int16Type>();
            each(&|i| CqlValue::SmallInt(v.value(i)))
        }
        CqlType::TinyInt => {
            let a = cast_to(array, &DataType::Int8)?;
            let v = a.as_primitive::<Int8Type>();
            each(&|i| CqlValue::TinyInt(v.value(i)))
        }
        CqlType::Double => {
            let a = cast_to(array, &DataType::Float64)?;
            let v = a.as_primitive::<arrow::datatypes::Float64Type>();
            each(&|i| CqlValue::Double(v.value(i)))
        }
        CqlType::Float => {
            let a = cast_to(array, &DataType::Float32)?;
            let v = a.as_primitive::<arrow::datatypes::Float32Type>();
            each(&|i| CqlValue::Float(v.value(i)))
        }
        CqlType::Boolean => {
            let v = array.as_boolean_opt().ok_or("not a boolean column")?;
            each(&|i| CqlValue::Boolean(v.value(i)))
        }
        CqlType::Timestamp => {
            // Int64 columns are epoch milliseconds; Arrow timestamps are converted.
            let ms = match array.data_type() {
                DataType::Timestamp(..) => {
                    let t = cast_to(array, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
                    cast_to(&t, &DataType::Int64)?
                }
                _ => cast_to(array, &DataType::Int64)?,
            };
            let v = ms.as_primitive::<Int64Type>();
            each(&|i| CqlValue::Timestamp(CqlTimestamp(v.value(i))))
        }
        CqlType::Blob => {
            let a = cast_to(array, &DataType::Binary)?;
            let v = a.as_binary::<i32>();
            each(&|i| CqlValue::Blob(v.value(i).to_vec()))
        }
        CqlType::List(e) | CqlType::Set(e) => {
            let list = array.as_list_opt::<i32>().ok_or("not a list column")?;
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                if list.is_null(i) {
                    out.push(None);
                    continue;
                }
                let items: Vec<CqlValue> = cql_values(&list.value(i), e)?
                    .into_iter()
                    .flatten()
                    .collect();
                out.push(Some(if matches!(cql, CqlType::Set(_)) {
                    CqlValue::Set(items)
                } else {
                    CqlValue::List(items)
                }));
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use std::sync::Arc;

    /// `None` for unset, `Some(value or null)` otherwise.
    fn set(b: &Bind) -> Option<Option<CqlValue>> {
        match b {
            MaybeUnset::Set(v) => Some(v.clone()),
            MaybeUnset::Unset => None,
        }
    }

    #[test]
    fn values_follow_the_table_type_and_nulls_stay_unset() {
        let ms: ArrayRef = Arc::new(Int64Array::from(vec![Some(10_000), None]));
        let v = column_values(&ms, &CqlType::Timestamp, false).unwrap();
        assert_eq!(
            set(&v[0]),
            Some(Some(CqlValue::Timestamp(CqlTimestamp(10_000))))
        );
        assert_eq!(set(&v[1]), None, "a null stays unset: no tombstone");
        let v = column_values(&ms, &CqlType::BigInt, true).unwrap();
        assert_eq!(set(&v[1]), Some(None), "written as null when asked");
        let f: ArrayRef = Arc::new(Float64Array::from(vec![1.5]));
        assert_eq!(
            set(&column_values(&f, &CqlType::Double, false).unwrap()[0]),
            Some(Some(CqlValue::Double(1.5)))
        );
        let s: ArrayRef = Arc::new(StringArray::from(vec!["dev-1"]));
        assert_eq!(
            set(&column_values(&s, &CqlType::Text, false).unwrap()[0]),
            Some(Some(CqlValue::Text("dev-1".into())))
        );
    }
}
