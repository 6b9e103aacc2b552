//! CQL types: names, wire encodings of literals, ordering of clustering values,
//! and the Murmur3 token of partition keys.

use cassandra_protocol::frame::message_result::{ColType, ColTypeOption, ColTypeOptionValue};

use super::parse::Literal;

/// A CQL column type the test server stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqlType {
    /// `ascii`
    Ascii,
    /// `text` / `varchar`
    Text,
    /// `bigint`
    BigInt,
    /// `counter` (stored like bigint; no counter semantics)
    Counter,
    /// `int`
    Int,
    /// `smallint`
    SmallInt,
    /// `tinyint`
    TinyInt,
    /// `boolean`
    Boolean,
    /// `double`
    Double,
    /// `float`
    Float,
    /// `timestamp` (ms since the epoch)
    Timestamp,
    /// `date` (days since the epoch + 2^31, unsigned)
    Date,
    /// `blob`
    Blob,
    /// `uuid`
    Uuid,
    /// `timeuuid`
    TimeUuid,
    /// `inet`
    Inet,
    /// `list<T>`
    List(Box<CqlType>),
    /// `set<T>`
    Set(Box<CqlType>),
    /// `map<K, V>`
    Map(Box<CqlType>, Box<CqlType>),
}

impl CqlType {
    /// Parses a type as written in CQL (`text`, `frozen<list<int>>`, `map<text, text>`).
    pub fn parse(text: &str) -> Result<CqlType, String> {
        let t = text.trim();
        let lower = t.to_ascii_lowercase();
        if let Some(inner) = generic(&lower, "frozen") {
            return CqlType::parse(inner);
        }
        if let Some(inner) = generic(&lower, "list") {
            return Ok(CqlType::List(Box::new(CqlType::parse(inner)?)));
        }
        if let Some(inner) = generic(&lower, "set") {
            return Ok(CqlType::Set(Box::new(CqlType::parse(inner)?)));
        }
        if let Some(inner) = generic(&lower, "map") {
            let split = split_top_level_comma(inner)
                .ok_or_else(|| format!("map type '{t}' needs a key and a value type"))?;
            return Ok(CqlType::Map(
                Box::new(CqlType::parse(split.0)?),
                Box::new(CqlType::parse(split.1)?),
            ));
        }
        Ok(match lower.as_str() {
            "ascii" => CqlType::Ascii,
            "text" | "varchar" => CqlType::Text,
            "bigint" => CqlType::BigInt,
            "counter" => CqlType::Counter,
            "int" => CqlType::Int,
            "smallint" => CqlType::SmallInt,
            "tinyint" => CqlType::TinyInt,
            "boolean" => CqlType::Boolean,
            "double" => CqlType::Double,
            "float" => CqlType::Float,
            "timestamp" => CqlType::Timestamp,
            "date" => CqlType::Date,
            "blob" => CqlType::Blob,
            "uuid" => CqlType::Uuid,
            "timeuuid" => CqlType::TimeUuid,
            "inet" => CqlType::Inet,
            other => return Err(format!("unsupported CQL type '{other}'")),
        })
    }

    /// The type's CQL name, as `system_schema.columns.type` shows it.
    pub fn name(&self) -> String {
        match self {
            CqlType::Ascii => "ascii".into(),
            CqlType::Text => "text".into(),
            CqlType::BigInt => "bigint".into(),
            CqlType::Counter => "counter".into(),
            CqlType::Int => "int".into(),
            CqlType::SmallInt => "smallint".into(),
            CqlType::TinyInt => "tinyint".into(),
            CqlType::Boolean => "boolean".into(),
            CqlType::Double => "double".into(),
            CqlType::Float => "float".into(),
            CqlType::Timestamp => "timestamp".into(),
            CqlType::Date => "date".into(),
            CqlType::Blob => "blob".into(),
            CqlType::Uuid => "uuid".into(),
            CqlType::TimeUuid => "timeuuid".into(),
            CqlType::Inet => "inet".into(),
            CqlType::List(t) => format!("list<{}>", t.name()),
            CqlType::Set(t) => format!("set<{}>", t.name()),
            CqlType::Map(k, v) => format!("map<{}, {}>", k.name(), v.name()),
        }
    }

    /// The type as the protocol's result metadata describes it.
    pub fn col_type(&self) -> ColTypeOption {
        let simple = |id| ColTypeOption { id, value: None };
        let nested = |t: &CqlType| Box::new(t.col_type());
        match self {
            CqlType::Ascii => simple(ColType::Ascii),
            CqlType::Text => simple(ColType::Varchar),
            CqlType::BigInt => simple(ColType::Bigint),
            CqlType::Counter => simple(ColType::Counter),
            CqlType::Int => simple(ColType::Int),
            CqlType::SmallInt => simple(ColType::Smallint),
            CqlType::TinyInt => simple(ColType::Tinyint),
            CqlType::Boolean => simple(ColType::Boolean),
            CqlType::Double => simple(ColType::Double),
            CqlType::Float => simple(ColType::Float),
            CqlType::Timestamp => simple(ColType::Timestamp),
            CqlType::Date => simple(ColType::Date),
            CqlType::Blob => simple(ColType::Blob),
            CqlType::Uuid => simple(ColType::Uuid),
            CqlType::TimeUuid => simple(ColType::Timeuuid),
            CqlType::Inet => simple(ColType::Inet),
            CqlType::List(t) => ColTypeOption {
                id: ColType::List,
                value: Some(ColTypeOptionValue::CList(nested(t))),
            },
            CqlType::Set(t) => ColTypeOption {
                id: ColType::Set,
                value: Some(ColTypeOptionValue::CSet(nested(t))),
            },
            CqlType::Map(k, v) => ColTypeOption {
                id: ColType::Map,
                value: Some(ColTypeOptionValue::CMap(nested(k), nested(v))),
            },
        }
    }

    /// Checks that `bytes` is a valid value of this type.
    pub fn validate(&self, bytes: &[u8]) -> Result<(), String> {
        let fixed = |n: usize| {
            if bytes.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "a {} value has {n} bytes, not {}",
                    self.name(),
                    bytes.len()
                ))
            }
        };
        match self {
            CqlType::BigInt | CqlType::Counter | CqlType::Timestamp | CqlType::Double => fixed(8),
            CqlType::Int | CqlType::Float | CqlType::Date => fixed(4),
            CqlType::SmallInt => fixed(2),
            CqlType::TinyInt | CqlType::Boolean => fixed(1),
            CqlType::Uuid | CqlType::TimeUuid => fixed(16),
            CqlType::Text | CqlType::Ascii => std::str::from_utf8(bytes)
                .map(|_| ())
                .map_err(|_| format!("a {} value is not UTF-8", self.name())),
            _ => Ok(()),
        }
    }

    /// Encodes a literal of a query string as a value of this type.
    pub fn encode(&self, literal: &Literal) -> Result<Option<Vec<u8>>, String> {
        let wrong = || format!("{literal:?} is not a valid {} literal", self.name());
        let int = || match literal {
            Literal::Number(n) => n.parse::<i64>().map_err(|_| wrong()),
            _ => Err(wrong()),
        };
        let float = || match literal {
            Literal::Number(n) => n.parse::<f64>().map_err(|_| wrong()),
            _ => Err(wrong()),
        };
        if matches!(literal, Literal::Null) {
            return Ok(None);
        }
        Ok(Some(match self {
            CqlType::Ascii | CqlType::Text => match literal {
                Literal::Str(s) => s.as_bytes().to_vec(),
                _ => return Err(wrong()),
            },
            CqlType::BigInt | CqlType::Counter | CqlType::Timestamp => {
                int()?.to_be_bytes().to_vec()
            }
            CqlType::Int => i32::try_from(int()?)
                .map_err(|_| wrong())?
                .to_be_bytes()
                .to_vec(),
            CqlType::SmallInt => i16::try_from(int()?)
                .map_err(|_| wrong())?
                .to_be_bytes()
                .to_vec(),
            CqlType::TinyInt => i8::try_from(int()?)
                .map_err(|_| wrong())?
                .to_be_bytes()
                .to_vec(),
            CqlType::Double => float()?.to_be_bytes().to_vec(),
            CqlType::Float => (float()? as f32).to_be_bytes().to_vec(),
            CqlType::Boolean => match literal {
                Literal::Bool(b) => vec![u8::from(*b)],
                _ => return Err(wrong()),
            },
            CqlType::Blob => match literal {
                Literal::Hex(bytes) => bytes.clone(),
                _ => return Err(wrong()),
            },
            CqlType::Uuid | CqlType::TimeUuid => match literal {
                Literal::Uuid(bytes) => bytes.to_vec(),
                _ => return Err(wrong()),
            },
            CqlType::List(t) | CqlType::Set(t) => match literal {
                Literal::Collection(items) => {
                    let encoded = items
                        .iter()
                        .map(|i| t.encode(i).map(Option::unwrap_or_default))
                        .collect::<Result<Vec<_>, _>>()?;
                    collection(&encoded)
                }
                _ => return Err(wrong()),
            },
            CqlType::Map(k, v) => match literal {
                Literal::Map(pairs) => {
                    let mut flat = Vec::new();
                    for (key, value) in pairs {
                        flat.push(k.encode(key)?.unwrap_or_default());
                        flat.push(v.encode(value)?.unwrap_or_default());
                    }
                    let mut out = ((flat.len() / 2) as i32).to_be_bytes().to_vec();
                    for item in flat {
                        out.extend((item.len() as i32).to_be_bytes());
                        out.extend(item);
                    }
                    out
                }
                _ => return Err(wrong()),
            },
            CqlType::Date | CqlType::Inet => {
                return Err(format!(
                    "{} literals are not supported; bind a value",
                    self.name()
                ))
            }
        }))
    }

    /// The ordering key of a value of this type (clustering order).
    pub fn sort_key(&self, bytes: &[u8]) -> SortKey {
        let signed = |b: &[u8]| {
            let mut buf = [0u8; 8];
            let n = b.len().min(8);
            // Sign-extend big-endian integers of 1, 2, 4 or 8 bytes.
            let fill = if b.first().is_some_and(|x| x & 0x80 != 0) {
                0xff
            } else {
                0
            };
            buf[..8 - n].fill(fill);
            buf[8 - n..].copy_from_slice(&b[..n]);
            i64::from_be_bytes(buf)
        };
        match self {
            CqlType::BigInt
            | CqlType::Counter
            | CqlType::Timestamp
            | CqlType::Int
            | CqlType::SmallInt
            | CqlType::TinyInt => SortKey::Int(signed(bytes)),
            CqlType::Double if bytes.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(bytes);
                SortKey::Float(ordered_f64(f64::from_be_bytes(b)))
            }
            CqlType::Float if bytes.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(bytes);
                SortKey::Float(ordered_f64(f64::from(f32::from_be_bytes(b))))
            }
            _ => SortKey::Bytes(bytes.to_vec()),
        }
    }
}

/// An orderable form of a clustering value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortKey {
    /// Integers and timestamps.
    Int(i64),
    /// Floating point numbers, as totally ordered bits.
    Float(i64),
    /// Everything else, bytewise.
    Bytes(Vec<u8>),
}

fn ordered_f64(v: f64) -> i64 {
    let bits = v.to_bits() as i64;
    bits ^ (((bits >> 63) as u64) >> 1) as i64
}

/// A CQL collection (list or set) of already encoded items.
pub fn collection(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = (items.len() as i32).to_be_bytes().to_vec();
    for item in items {
        out.extend((item.len() as i32).to_be_bytes());
        out.extend(item);
    }
    out
}

/// The items of an encoded CQL list or set.
pub fn collection_items(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let short = || "a collection value is truncated".to_string();
    let read_i32 = |at: usize| -> Result<i32, String> {
        let b = bytes.get(at..at + 4).ok_or_else(short)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let n = read_i32(0)?;
    let mut at = 4;
    let mut items = Vec::new();
    for _ in 0..n.max(0) {
        let len = read_i32(at)?;
        at += 4;
        let len = usize::try_from(len).map_err(|_| "a null item in a collection".to_string())?;
        items.push(bytes.get(at..at + len).ok_or_else(short)?.to_vec());
        at += len;
    }
    Ok(items)
}

fn generic<'a>(lower: &'a str, name: &str) -> Option<&'a str> {
    lower
        .strip_prefix(name)?
        .trim_start()
        .strip_prefix('<')?
        .strip_suffix('>')
}

fn split_top_level_comma(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// The Murmur3Partitioner token of a serialized partition key (Cassandra's
/// variant of MurmurHash3 x64 128, seed 0, signed tail bytes, first half).
pub fn murmur3_token(data: &[u8]) -> i64 {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let len = data.len();
    let (mut h1, mut h2) = (0u64, 0u64);
    let blocks = len / 16;
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[at..at + 8]);
        u64::from_le_bytes(b)
    };
    for i in 0..blocks {
        let mut k1 = word(i * 16);
        let mut k2 = word(i * 16 + 8);
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = &data[blocks * 16..];
    let signed = |b: u8| b as i8 as i64 as u64;
    let (mut k1, mut k2) = (0u64, 0u64);
    for i in (8..tail.len()).rev() {
        k2 ^= signed(tail[i]) << ((i - 8) * 8);
    }
    if tail.len() > 8 {
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
    }
    for i in (0..tail.len().min(8)).rev() {
        k1 ^= signed(tail[i]) << (i * 8);
    }
    if !tail.is_empty() {
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
    }
    h1 ^= len as u64;
    h2 ^= len as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    let token = h1 as i64;
    if token == i64::MIN {
        i64::MAX
    } else {
        token
    }
}

fn fmix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The bytes a partition key hashes as: the value itself for one column, else
/// each component as a 2-byte length, the bytes and a zero byte.
pub fn partition_key_bytes(components: &[Vec<u8>]) -> Vec<u8> {
    if let [single] = components {
        return single.clone();
    }
    let mut out = Vec::new();
    for c in components {
        out.extend((c.len() as u16).to_be_bytes());
        out.extend(c);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_print() {
        for t in [
            "text",
            "bigint",
            "timestamp",
            "list<text>",
            "set<text>",
            "map<text, text>",
        ] {
            assert_eq!(CqlType::parse(t).unwrap().name(), t);
        }
        assert_eq!(CqlType::parse("VARCHAR").unwrap(), CqlType::Text);
        assert_eq!(
            CqlType::parse("frozen<list<int>>").unwrap(),
            CqlType::List(Box::new(CqlType::Int))
        );
        assert!(CqlType::parse("varint").is_err());
    }

    #[test]
    fn clustering_order_follows_the_type() {
        let t = CqlType::BigInt;
        let key = |v: i64| t.sort_key(&v.to_be_bytes());
        assert!(key(-5) < key(3));
        let d = CqlType::Double;
        let f = |v: f64| d.sort_key(&v.to_be_bytes());
        assert!(f(-2.5) < f(-1.0) && f(-1.0) < f(0.0) && f(0.0) < f(7.25));
    }

    #[test]
    fn collections_round_trip() {
        let items = vec![b"a".to_vec(), b"bc".to_vec()];
        assert_eq!(collection_items(&collection(&items)).unwrap(), items);
    }
}
