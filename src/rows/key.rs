//! Row keys as bytes: what a [`super::RowMap`] stores, hashes and sorts.
//!
//! Each dimension is a type tag (null, boolean, long, string, in the order
//! [`DimValue`] sorts them) and its value: a boolean as one byte, a long as
//! eight big-endian bytes with the sign bit flipped, a string as its bytes
//! with `0x00` written `0x00 0x01` and ending in `0x00 0x00`; then the bucket
//! start as a long. The encoding is one-to-one, each value delimits itself,
//! and comparing two keys' bytes orders them as their [`RowKey`]s (of the
//! same dimension count) order: sorting rows is sorting byte strings, and a
//! key is one allocation-free copy into an arena.

use std::borrow::Cow;

use super::{DimRef, DimValue, RowKey};

const NULL: u8 = 0;
const BOOL: u8 = 1;
const LONG: u8 = 2;
const STR: u8 = 3;

/// Append `d`'s encoding.
pub(super) fn push_dim(out: &mut Vec<u8>, d: &DimRef<'_>) {
    match d {
        DimRef::Null => out.push(NULL),
        DimRef::Bool(b) => out.extend_from_slice(&[BOOL, u8::from(*b)]),
        DimRef::Long(v) => {
            out.push(LONG);
            push_long(out, *v);
        }
        DimRef::Str(s) => {
            out.push(STR);
            let s = s.as_bytes();
            if s.contains(&0) {
                for &b in s {
                    out.push(b);
                    if b == 0 {
                        out.push(1);
                    }
                }
            } else {
                out.extend_from_slice(s);
            }
            out.extend_from_slice(&[0, 0]);
        }
    }
}

/// Append a long (a bucket start, or a long dimension's value).
pub(super) fn push_long(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

/// The encoding of an owned key.
pub(super) fn push_key(out: &mut Vec<u8>, key: &RowKey) {
    for d in &key.dims {
        push_dim(out, &DimRef::from(d));
    }
    push_long(out, key.ts_micros);
}

/// How many leading bytes every one of `keys` shares with `first`.
pub(super) fn shared_prefix<'k>(keys: impl Iterator<Item = &'k [u8]>, first: &[u8]) -> usize {
    keys.fold(first.len(), |shared, k| {
        first[..shared]
            .iter()
            .zip(k)
            .take_while(|(a, b)| a == b)
            .count()
    })
}

/// Bytes of a key held beside it for sorting ([`prefix_at`]).
pub(super) const PREFIX_BYTES: usize = 32;

/// The [`PREFIX_BYTES`] bytes of `key` from `at` (zeros past its end), as
/// words that order as the bytes do: two keys whose prefixes differ order
/// as their prefixes do.
pub(super) fn prefix_at(key: &[u8], at: usize) -> [u64; PREFIX_BYTES / 8] {
    let mut bytes = [0u8; PREFIX_BYTES];
    let rest = key.get(at..).unwrap_or_default();
    let n = rest.len().min(PREFIX_BYTES);
    bytes[..n].copy_from_slice(&rest[..n]);
    let mut words = [0u64; PREFIX_BYTES / 8];
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_be_bytes(b.try_into().expect("8 bytes"));
    }
    words
}

/// The bucket start of an encoded key (its last eight bytes).
pub(crate) fn bucket_start(key: &[u8]) -> i64 {
    let mut last = [0u8; 8];
    last.copy_from_slice(&key[key.len().saturating_sub(8)..]);
    (u64::from_be_bytes(last) ^ (1 << 63)) as i64
}

/// One dimension read back from an encoded key, a string borrowed unless
/// it held a `0x00`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeyDim<'k> {
    Null,
    Bool(bool),
    Long(i64),
    /// A string's bytes (valid UTF-8: they were a `str`'s).
    Str(Cow<'k, [u8]>),
}

/// Reads an encoded key's dimensions in order; the bucket start is what is
/// left ([`bucket_start`]).
#[derive(Debug, Clone)]
pub(crate) struct KeyReader<'k> {
    rest: &'k [u8],
}

impl<'k> KeyReader<'k> {
    pub(crate) fn new(key: &'k [u8]) -> Self {
        Self { rest: key }
    }

    /// The next dimension; `None` past the last one or on bytes this module
    /// did not write.
    pub(crate) fn next_dim(&mut self) -> Option<KeyDim<'k>> {
        if self.rest.len() <= 8 {
            return None;
        }
        let (&tag, rest) = self.rest.split_first()?;
        let (dim, rest) = match tag {
            NULL => (KeyDim::Null, rest),
            BOOL => {
                let (&b, rest) = rest.split_first()?;
                (KeyDim::Bool(b != 0), rest)
            }
            LONG => {
                let (bytes, rest) = rest.split_first_chunk::<8>()?;
                let v = (u64::from_be_bytes(*bytes) ^ (1 << 63)) as i64;
                (KeyDim::Long(v), rest)
            }
            STR => {
                // The string ends at the first `0x00` not escaping one.
                let (mut end, mut escaped) = (0, false);
                loop {
                    end += rest.get(end..)?.iter().position(|&b| b == 0)?;
                    match *rest.get(end + 1)? {
                        0 => break,
                        1 => {
                            escaped = true;
                            end += 2;
                        }
                        _ => return None,
                    }
                }
                let bytes = &rest[..end];
                let value = if escaped {
                    let mut owned = Vec::with_capacity(bytes.len());
                    let mut it = bytes.iter();
                    while let Some(&b) = it.next() {
                        owned.push(b);
                        if b == 0 {
                            it.next();
                        }
                    }
                    Cow::Owned(owned)
                } else {
                    Cow::Borrowed(bytes)
                };
                (KeyDim::Str(value), &rest[end + 2..])
            }
            _ => return None,
        };
        self.rest = rest;
        Some(dim)
    }
}

/// An encoded key as a [`RowKey`] (`None` on bytes this module did not
/// write).
pub(super) fn decode(key: &[u8]) -> Option<RowKey> {
    let mut reader = KeyReader::new(key);
    let mut dims = Vec::new();
    while let Some(d) = reader.next_dim() {
        dims.push(match d {
            KeyDim::Null => DimValue::Null,
            KeyDim::Bool(b) => DimValue::Bool(b),
            KeyDim::Long(v) => DimValue::Long(v),
            KeyDim::Str(s) => DimValue::Str(String::from_utf8(s.into_owned()).ok()?.into()),
        });
    }
    (reader.rest.len() == 8).then(|| RowKey {
        dims,
        ts_micros: bucket_start(key),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn dim() -> impl Strategy<Value = DimValue> {
        prop_oneof![
            Just(DimValue::Null),
            any::<bool>().prop_map(DimValue::Bool),
            any::<i64>().prop_map(DimValue::Long),
            prop_oneof![
                Just(-1i64),
                Just(0),
                Just(1),
                Just(i64::MIN),
                Just(i64::MAX)
            ]
            .prop_map(DimValue::Long),
            "[a\\x00\\x01b\u{e9}]{0,5}".prop_map(|s| DimValue::Str(s.into())),
        ]
    }

    fn key(n: usize) -> impl Strategy<Value = RowKey> {
        (proptest::collection::vec(dim(), n), any::<i64>())
            .prop_map(|(dims, ts_micros)| RowKey { dims, ts_micros })
    }

    fn encoded(k: &RowKey) -> Vec<u8> {
        let mut out = Vec::new();
        push_key(&mut out, k);
        out
    }

    proptest! {
        /// Bytes order keys as keys order, are equal exactly when the keys
        /// are, and read back to the key.
        #[test]
        fn bytes_order_and_round_trip_as_keys(a in key(3), b in key(3)) {
            let (ea, eb) = (encoded(&a), encoded(&b));
            prop_assert_eq!(ea.cmp(&eb), a.cmp(&b));
            prop_assert_eq!(decode(&ea), Some(a.clone()));
            prop_assert_eq!(bucket_start(&ea), a.ts_micros);
        }
    }

    #[test]
    fn strings_with_zero_bytes_keep_their_order() {
        let k = |s: &str| RowKey {
            dims: vec![DimValue::Str(s.into()), DimValue::Long(7)],
            ts_micros: -60,
        };
        let keys = [k(""), k("\0"), k("\0\0"), k("\0\x01"), k("\x01"), k("a")];
        for w in keys.windows(2) {
            assert!(encoded(&w[0]) < encoded(&w[1]), "{w:?}");
            assert_eq!(decode(&encoded(&w[1])).as_ref(), Some(&w[1]));
        }
        assert_eq!(decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
