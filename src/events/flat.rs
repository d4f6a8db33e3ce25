//! The common shape of an event, read in one pass: a top-level object of
//! keys without escapes holding strings without escapes, integers, `true`,
//! `false` and `null`. Anything else (an escape, a nested value, a control
//! character, a byte that is not UTF-8, a syntax error) is not read here:
//! the caller parses the payload with serde_json (see [`super::object`]),
//! which decides what is accepted and why a record is refused. So this pass
//! accepts only what serde_json accepts, with the values it gives; the
//! property tests in `tests.rs` hold it to that.

use std::borrow::Cow;

use smallvec::SmallVec;

use super::object::{Scalar, Slots};

/// Reads `payload` into `values` (the declared `fields`' values, by slot,
/// each `None` to begin with) and returns `Some` with the first key given
/// twice, or `None`, leaving `values` as they were, if the payload is not of
/// the common shape.
pub(super) fn fields<'p>(
    payload: &'p [u8],
    fields: &[Box<str>],
    values: &mut Slots<'p>,
) -> Option<Option<String>> {
    let read = Reader {
        text: std::str::from_utf8(payload).ok()?,
        at: 0,
    }
    .object(fields, values);
    if read.is_none() {
        values.iter_mut().for_each(|v| *v = None);
    }
    read
}

struct Reader<'p> {
    text: &'p str,
    at: usize,
}

impl<'p> Reader<'p> {
    fn bytes(&self) -> &'p [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// The next byte after JSON whitespace, consumed.
    fn next_token(&mut self) -> Option<u8> {
        while let Some(b) = self.peek() {
            self.at += 1;
            if !matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(b);
            }
        }
        None
    }

    fn object(mut self, fields: &[Box<str>], values: &mut Slots<'p>) -> Option<Option<String>> {
        if self.next_token()? != b'{' {
            return None;
        }
        // Undeclared keys seen, for a key given twice: a few in a list,
        // many in a set.
        let mut seen: SmallVec<[&'p str; 16]> = SmallVec::new();
        let mut many: Option<std::collections::HashSet<&'p str>> = None;
        let mut duplicate: Option<&'p str> = None;
        let mut first = true;
        loop {
            match self.next_token()? {
                b'}' if first => break,
                b'"' => {}
                _ => return None,
            }
            first = false;
            let key = self.string()?;
            if self.next_token()? != b':' {
                return None;
            }
            let value = self.scalar()?;
            if let Some(slot) = fields.iter().position(|f| **f == *key) {
                if values[slot].is_some() && duplicate.is_none() {
                    duplicate = Some(key);
                }
                values[slot] = Some(value);
            } else if duplicate.is_none() {
                let repeated = match &mut many {
                    Some(set) => !set.insert(key),
                    None if seen.contains(&key) => true,
                    None => {
                        seen.push(key);
                        if seen.len() > 32 {
                            many = Some(seen.drain(..).collect());
                        }
                        false
                    }
                };
                if repeated {
                    duplicate = Some(key);
                }
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
    fn string(&mut self) -> Option<&'p str> {
        let start = self.at;
        let rest = &self.bytes()[start..];
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        // Quotes are ASCII, so the text between them is whole characters.
        self.text.get(start..start + len)
    }

    fn scalar(&mut self) -> Option<Scalar<'p>> {
        Some(match self.next_token()? {
            b'"' => Scalar::Str(Cow::Borrowed(self.string()?)),
            b't' => self.literal("rue", Scalar::Bool(true))?,
            b'f' => self.literal("alse", Scalar::Bool(false))?,
            b'n' => self.literal("ull", Scalar::Null)?,
            b'-' | b'0'..=b'9' => Scalar::Number(self.number()?),
            _ => return None,
        })
    }

    fn literal(&mut self, rest: &str, value: Scalar<'p>) -> Option<Scalar<'p>> {
        let end = self.at + rest.len();
        (self.bytes().get(self.at..end)? == rest.as_bytes()).then(|| {
            self.at = end;
            value
        })
    }

    /// A number whose first byte was just consumed. An integer of up to 18
    /// digits is read here (as serde_json reads it: a non-negative one as
    /// unsigned, `-0` excepted); any other number's token goes to
    /// serde_json's own number parser, which gives the value its
    /// deserializer would.
    fn number(&mut self) -> Option<serde_json::Number> {
        let start = self.at - 1;
        let bytes = self.bytes();
        let mut end = self.at;
        while end < bytes.len()
            && matches!(bytes[end], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
        {
            end += 1;
        }
        self.at = end;
        let token = &bytes[start..end];
        let (negative, digits) = match token {
            [b'-', digits @ ..] => (true, digits),
            digits => (false, digits),
        };
        let plain = matches!(digits, [b'1'..=b'9', rest @ ..] if rest.len() < 18 && rest.iter().all(u8::is_ascii_digit))
            || (digits == b"0" && !negative);
        if !plain {
            return self.text[start..end].parse().ok();
        }
        let magnitude = digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        Some(if negative {
            // Under 10^18, so it fits.
            serde_json::Number::from(-(magnitude as i64))
        } else {
            serde_json::Number::from(magnitude)
        })
    }
}
