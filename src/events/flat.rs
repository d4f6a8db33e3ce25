//! The common shape of an event, read in one pass: a top-level object of
//! keys without escapes holding strings without escapes, integers, `true`,
//! `false` and `null`. Anything else (an escape, a nested value, a control
//! character, a byte that is not UTF-8, a syntax error) is not read here:
//! the caller parses the payload with serde_json (see [`super::object`]),
//! which decides what is accepted and why a record is refused. So this pass
//! accepts only what serde_json accepts, with the values it gives; the
//! property tests in `tests.rs` hold it to that.

use std::borrow::Cow;

use super::object::{Scalar, Slots, Undeclared};

/// Reads `payload` into `values` (the declared `fields`' values, by slot,
/// each `None` to begin with) and returns `Some` with the first key given
/// twice, or `None`, leaving `values` as they were, if the payload is not of
/// the common shape.
pub(super) fn fields<'p>(
    payload: &'p [u8],
    fields: &Fields,
    values: &mut Slots<'p>,
) -> Option<Option<String>> {
    let text = std::str::from_utf8(payload).ok()?;
    let read = Reader {
        text,
        bytes: payload,
        at: 0,
    }
    .object(fields, values.as_mut_slice());
    if read.is_none() {
        values.iter_mut().for_each(|v| *v = None);
    }
    read
}

/// The names of the fields a declaration reads, each once, found by slot
/// through a small table on a key's length and end bytes.
#[derive(Debug, Clone)]
pub(super) struct Fields {
    names: Vec<Box<str>>,
    /// Per bucket: the one slot of the names in it, [`EMPTY`] or
    /// [`SEVERAL`].
    table: [u8; BUCKETS],
}

const BUCKETS: usize = 64;
const EMPTY: u8 = u8::MAX;
const SEVERAL: u8 = u8::MAX - 1;

impl Fields {
    pub(super) fn new(names: Vec<Box<str>>) -> Self {
        let mut table = [EMPTY; BUCKETS];
        for (slot, name) in names.iter().enumerate() {
            let b = &mut table[bucket(name.as_bytes())];
            *b = match (*b, u8::try_from(slot)) {
                (EMPTY, Ok(slot)) if slot < SEVERAL => slot,
                _ => SEVERAL,
            };
        }
        Self { names, table }
    }

    pub(super) fn len(&self) -> usize {
        self.names.len()
    }

    pub(super) fn name(&self, slot: usize) -> &str {
        &self.names[slot]
    }

    /// The slot of the field named `key`.
    #[inline(always)]
    pub(super) fn slot(&self, key: &str) -> Option<usize> {
        let key = key.as_bytes();
        match self.table[bucket(key)] {
            EMPTY => None,
            SEVERAL => self.names.iter().position(|n| same(n.as_bytes(), key)),
            slot => {
                same(self.names[usize::from(slot)].as_bytes(), key).then_some(usize::from(slot))
            }
        }
    }
}

/// Whether `a` and `b` are the same bytes: a key and a field's name are a
/// few bytes long, compared here in a few fixed-size loads rather than in a
/// call to the C library's `memcmp` (which costs more than the comparison).
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    // The first and the last four (or eight) bytes of each: they overlap
    // when the length is under eight (or sixteen), and cover it whole.
    match len {
        0 => true,
        // The first, middle and last bytes are every byte.
        1..=3 => a[0] == b[0] && a[len / 2] == b[len / 2] && a[len - 1] == b[len - 1],
        4..=7 => {
            a.first_chunk::<4>() == b.first_chunk::<4>()
                && a.last_chunk::<4>() == b.last_chunk::<4>()
        }
        8..=16 => {
            a.first_chunk::<8>() == b.first_chunk::<8>()
                && a.last_chunk::<8>() == b.last_chunk::<8>()
        }
        _ => a == b,
    }
}

/// A key's bucket: of its length, first and last bytes.
#[inline]
fn bucket(key: &[u8]) -> usize {
    match key {
        [] => 0,
        [first, .., last] | [first @ last] => {
            (usize::from(*first) ^ (usize::from(*last) << 1) ^ (key.len() << 3)) % BUCKETS
        }
    }
}

/// A cursor over the payload.
struct Reader<'p> {
    text: &'p str,
    bytes: &'p [u8],
    at: usize,
}

impl<'p> Reader<'p> {
    /// The next byte after JSON whitespace, consumed.
    #[inline]
    fn next_token(&mut self) -> Option<u8> {
        loop {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            // Every byte above a space is not whitespace.
            if b > b' ' || !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
        }
    }

    fn object(
        mut self,
        fields: &Fields,
        values: &mut [Option<Scalar<'p>>],
    ) -> Option<Option<String>> {
        if self.next_token()? != b'{' {
            return None;
        }
        let mut seen = Undeclared::default();
        let mut duplicate: Option<&'p str> = None;
        let mut first = true;
        loop {
            match self.next_token()? {
                b'"' => {}
                b'}' if first => break,
                _ => return None,
            }
            first = false;
            let key = self.string()?;
            if self.next_token()? != b':' {
                return None;
            }
            let value = self.scalar()?;
            if let Some(slot) = fields.slot(key) {
                let old = values[slot].replace(value);
                if old.is_some() && duplicate.is_none() {
                    duplicate = Some(key);
                }
            } else if duplicate.is_none() && seen.repeated(&key) {
                duplicate = Some(key);
            }
            match self.next_token()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        // Only whitespace may follow the object.
        if self.next_token().is_some() {
            return None;
        }
        Some(duplicate.map(str::to_string))
    }

    /// A string's text, after its opening quote, if it holds no escape and
    /// no control character.
    #[inline]
    fn string(&mut self) -> Option<&'p str> {
        let start = self.at;
        let end = start + special_at(self.bytes.get(start..)?)?;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // Quotes are ASCII, so the text between them is whole characters.
        self.text.get(start..end)
    }

    #[inline]
    fn scalar(&mut self) -> Option<Scalar<'p>> {
        Some(match self.next_token()? {
            b'"' => Scalar::Str(Cow::Borrowed(self.string()?)),
            b'-' | b'0'..=b'9' => Scalar::Number(self.number()?),
            b't' => self.literal(b"rue", Scalar::Bool(true))?,
            b'f' => self.literal(b"alse", Scalar::Bool(false))?,
            b'n' => self.literal(b"ull", Scalar::Null)?,
            _ => return None,
        })
    }

    fn literal(&mut self, rest: &[u8], value: Scalar<'p>) -> Option<Scalar<'p>> {
        let end = self.at + rest.len();
        (self.bytes.get(self.at..end)? == rest).then(|| {
            self.at = end;
            value
        })
    }

    /// A number whose first byte was just consumed. An integer without
    /// leading zeros that fits serde_json's integers (`u64` when not
    /// negative; `i64` when negative, `-0` excepted) is read here, with the
    /// value serde_json gives it; any other number's token goes to
    /// serde_json's own number parser.
    #[inline]
    fn number(&mut self) -> Option<serde_json::Number> {
        let start = self.at - 1;
        let negative = self.bytes[start] == b'-';
        let digits_at = if negative { self.at } else { start };
        let rest = self.bytes.get(digits_at..)?;
        // Up to 19 digits fit a u64 whatever they are.
        let mut magnitude = 0u64;
        let mut len = 0;
        for &b in rest.iter().take(19) {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            magnitude = magnitude * 10 + u64::from(d);
            len += 1;
        }
        let end = digits_at + len;
        let integer = len > 0
            && (rest[0] != b'0' || (len == 1 && !negative))
            && !matches!(
                self.bytes.get(end),
                Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
            );
        if integer {
            self.at = end;
            return if !negative {
                Some(serde_json::Number::from(magnitude))
            } else {
                // Under 10^19, so within a u64; as serde_json, one past
                // i64::MIN is not an i64.
                (magnitude <= 1 << 63)
                    .then(|| serde_json::Number::from((magnitude as i64).wrapping_neg()))
                    .or_else(|| self.fallback_number(start))
            };
        }
        self.fallback_number(start)
    }

    /// The number token at `start`, read by serde_json.
    fn fallback_number(&mut self, start: usize) -> Option<serde_json::Number> {
        let mut end = start + 1;
        while matches!(
            self.bytes.get(end),
            Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
        ) {
            end += 1;
        }
        self.at = end;
        self.text.get(start..end)?.parse().ok()
    }
}

/// Where the first quote, backslash or control character of `s` is: eight
/// bytes at a time, then one at a time.
fn special_at(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let mut at = 0;
    for chunk in s.chunks_exact(8) {
        let w = u64::from_le_bytes(chunk.try_into().ok()?);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set where it is zero (or below 0x20), and
        // maybe in bytes after the first such: the lowest bit set marks
        // the first.
        let found = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    s[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn same_is_byte_equality_at_every_length_and_position() {
        for len in 0..40 {
            let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same(&a, &a.clone()), "{len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same(&a, &b), "length {len}, byte {at}");
            }
            let longer = [a.as_slice(), b"x"].concat();
            assert!(!same(&a, &longer), "{len}");
            assert!(!same(&longer, &a), "{len}");
        }
    }
}
