//! Byte encoding of window state for the state store: keys order windows by
//! start, then key; values hold the partial state of every aggregation.

use super::aggregate::AggState;

/// Prefix of window entries.
pub(crate) const WINDOW_PREFIX: u8 = b'w';
/// Key of the stream time (max event time seen).
pub(crate) const STREAM_TIME_KEY: &[u8] = b"t";
/// Key of the aggregations the stored states belong to (kinds and inputs, in
/// order): a restore by a pipeline with other aggregations is refused.
pub(crate) const SIGNATURE_KEY: &[u8] = b"s";

/// Why stored window state could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CorruptState(pub(crate) String);

/// `w` + start (big endian, sign bit flipped so negative starts sort first) + key.
pub(crate) fn window_key(start: i64, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.push(WINDOW_PREFIX);
    out.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The (start, key) of a window entry key.
pub(crate) fn decode_window_key(bytes: &[u8]) -> Result<(i64, String), CorruptState> {
    let corrupt = || CorruptState(format!("window key {bytes:?} is malformed"));
    let (prefix, rest) = bytes.split_first().ok_or_else(corrupt)?;
    if *prefix != WINDOW_PREFIX || rest.len() < 8 {
        return Err(corrupt());
    }
    let (start, key) = rest.split_at(8);
    let start = u64::from_be_bytes(start.try_into().map_err(|_| corrupt())?) ^ (1 << 63);
    let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt())?;
    Ok((start as i64, key))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], CorruptState> {
        if self.bytes.len() < N {
            return Err(CorruptState("window state is truncated".into()));
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        head.try_into()
            .map_err(|_| CorruptState("window state is truncated".into()))
    }
    fn u8(&mut self) -> Result<u8, CorruptState> {
        Ok(self.take::<1>()?[0])
    }
    fn i64(&mut self) -> Result<i64, CorruptState> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    fn f64(&mut self) -> Result<f64, CorruptState> {
        Ok(f64::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, CorruptState> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, CorruptState> {
        let n = self.u32()? as usize;
        if self.bytes.len() < n {
            return Err(CorruptState("window state is truncated".into()));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head.to_vec())
    }
    fn opt_f64(&mut self) -> Result<Option<f64>, CorruptState> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(self.f64()?),
        })
    }
    fn triple(&mut self) -> Result<(i64, i64, f64), CorruptState> {
        Ok((self.i64()?, self.i64()?, self.f64()?))
    }
    fn opt_triple(&mut self) -> Result<Option<(i64, i64, f64)>, CorruptState> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(self.triple()?),
        })
    }
}

fn put_opt_f64(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn put_triple(out: &mut Vec<u8>, (t, o, v): (i64, i64, f64)) {
    out.extend_from_slice(&t.to_le_bytes());
    out.extend_from_slice(&o.to_le_bytes());
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_opt_triple(out: &mut Vec<u8>, v: Option<(i64, i64, f64)>) {
    match v {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_triple(out, t);
        }
    }
}

/// Encodes the partial states of one window.
pub(crate) fn encode_states(states: &[AggState]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * states.len());
    for state in states {
        match state {
            AggState::Count(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_le_bytes());
            }
            AggState::Sum { sum, comp, n } => {
                out.push(1);
                out.extend_from_slice(&sum.to_le_bytes());
                out.extend_from_slice(&comp.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
            AggState::Min(m) => {
                out.push(2);
                put_opt_f64(&mut out, *m);
            }
            AggState::Max(m) => {
                out.push(3);
                put_opt_f64(&mut out, *m);
            }
            AggState::First(f) => {
                out.push(4);
                put_opt_triple(&mut out, *f);
            }
            AggState::Last(l) => {
                out.push(5);
                put_opt_triple(&mut out, *l);
            }
            AggState::Collect(values) => {
                out.push(6);
                out.extend_from_slice(&(values.len() as u32).to_le_bytes());
                for v in values {
                    put_triple(&mut out, *v);
                }
            }
            AggState::Custom(custom) => {
                out.push(7);
                let bytes = custom.encode();
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
        }
    }
    out
}

/// Decodes the stored state of the user-defined aggregation at an index.
pub(crate) type CustomDecoder<'a> = &'a dyn Fn(usize, &[u8]) -> Result<AggState, CorruptState>;

/// Decodes the partial states of one window; `custom` decodes the state of the
/// user-defined aggregation at an index.
pub(crate) fn decode_states(
    bytes: &[u8],
    custom: CustomDecoder<'_>,
) -> Result<Vec<AggState>, CorruptState> {
    let mut r = Reader { bytes };
    let mut states = Vec::new();
    while !r.bytes.is_empty() {
        let index = states.len();
        states.push(match r.u8()? {
            0 => AggState::Count(r.i64()?),
            1 => AggState::Sum {
                sum: r.f64()?,
                comp: r.f64()?,
                n: r.i64()?,
            },
            2 => AggState::Min(r.opt_f64()?),
            3 => AggState::Max(r.opt_f64()?),
            4 => AggState::First(r.opt_triple()?),
            5 => AggState::Last(r.opt_triple()?),
            6 => {
                let n = r.u32()? as usize;
                let mut values = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    values.push(r.triple()?);
                }
                AggState::Collect(values)
            }
            7 => custom(index, &r.bytes()?)?,
            tag => return Err(CorruptState(format!("unknown aggregation tag {tag}"))),
        });
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_start_then_key_and_round_trip() {
        let mut keys = [
            window_key(10, "b"),
            window_key(-20, "z"),
            window_key(10, "a"),
            window_key(0, ""),
        ];
        keys.sort();
        let decoded: Vec<_> = keys
            .iter()
            .map(|k| decode_window_key(k).ok().unwrap())
            .collect();
        assert_eq!(
            decoded,
            vec![
                (-20, "z".to_string()),
                (0, String::new()),
                (10, "a".to_string()),
                (10, "b".to_string())
            ]
        );
        assert!(decode_window_key(b"w123").is_err());
    }

    #[test]
    fn states_round_trip() {
        let states = vec![
            AggState::Count(7),
            AggState::Sum {
                sum: 1.5,
                comp: 1e-17,
                n: 2,
            },
            AggState::Min(None),
            AggState::Max(Some(-3.25)),
            AggState::First(Some((1, 2, 3.0))),
            AggState::Last(None),
            AggState::Collect(vec![(1, 1, 1.0), (2, 2, f64::NAN.copysign(1.0))]),
        ];
        let bytes = encode_states(&states);
        let none = |_: usize, _: &[u8]| -> Result<AggState, CorruptState> {
            Err(CorruptState("no custom".into()))
        };
        let back = decode_states(&bytes, &none).ok().unwrap();
        assert_eq!(format!("{back:?}"), format!("{states:?}"));
        assert!(decode_states(&bytes[..bytes.len() - 1], &none).is_err());
    }
}
