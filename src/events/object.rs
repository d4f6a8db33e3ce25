//! The payload's top-level object, read field by field: the declared
//! fields' values are kept (strings borrowed from the payload), every other
//! field is parsed as strictly as a full parse would and dropped, and the
//! first key given twice is noted.

use std::borrow::Cow;
use std::fmt;

use smallvec::SmallVec;

use super::Decoder;

/// A declared field's value, borrowed from the payload where it can be.
#[derive(Debug)]
pub(super) enum Scalar<'p> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Cow<'p, str>),
    Array,
    Object,
}

/// The declared fields' values, by slot.
pub(super) type Slots<'p> = SmallVec<[Option<Scalar<'p>>; 16]>;

/// Reads the top-level object into `values` (the declared fields' values,
/// by slot, each `None` to begin with, in place: the event's values are not
/// moved on the way out); its value is the first field given twice.
pub(super) struct ObjectSeed<'a, 'p> {
    pub(super) decoder: &'a Decoder,
    pub(super) values: &'a mut Slots<'p>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ObjectSeed<'_, 'de> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ObjectSeed<'_, 'de> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<Option<String>, A::Error> {
        let fields = &self.decoder.fields;
        let values = self.values;
        let mut seen = Undeclared::default();
        let mut duplicate = None;
        while let Some(Key(key)) = map.next_key()? {
            if let Some(slot) = fields.slot(&key) {
                // A declared field given twice is the slot filled before.
                if values[slot].is_some() && duplicate.is_none() {
                    duplicate = Some(key.into_owned());
                }
                values[slot] = Some(map.next_value()?);
                continue;
            }
            map.next_value::<Skip>()?;
            if duplicate.is_none() && seen.repeated(&key) {
                duplicate = Some(key.into_owned());
            }
        }
        Ok(duplicate)
    }
}

/// The undeclared keys of an object seen so far: a few are searched in a
/// list, many in a set (an event of a million keys must not take a million
/// squared comparisons).
pub(super) struct Undeclared<K> {
    few: SmallVec<[K; 16]>,
    many: Option<std::collections::HashSet<K>>,
}

impl<K> Default for Undeclared<K> {
    fn default() -> Self {
        Self {
            few: SmallVec::new(),
            many: None,
        }
    }
}

impl<K: Clone + Eq + std::hash::Hash> Undeclared<K> {
    /// Note `key`; whether it was seen before.
    pub(super) fn repeated(&mut self, key: &K) -> bool {
        match &mut self.many {
            Some(set) => !set.insert(key.clone()),
            None if self.few.contains(key) => true,
            None => {
                self.few.push(key.clone());
                if self.few.len() > 32 {
                    self.many = Some(self.few.drain(..).collect());
                }
                false
            }
        }
    }
}

/// An object key, borrowed from the payload unless it holds escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar<'de>, E> {
                // As serde_json's own values hold it (it never parses a
                // number that is not finite).
                Ok(serde_json::Number::from_f64(v).map_or(Scalar::Null, Scalar::Number))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                a: A,
            ) -> Result<Scalar<'de>, A::Error> {
                Skip::seq(a).map(|_| Scalar::Array)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<Scalar<'de>, A::Error> {
                Skip::map(a).map(|_| Scalar::Object)
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value, parsed as a full parse would (so the same values are
/// refused) and dropped. Unlike serde's `IgnoredAny`, which serde_json
/// skips without a depth limit or a number range check.
struct Skip;

impl Skip {
    fn seq<'de, A: serde::de::SeqAccess<'de>>(mut a: A) -> Result<Skip, A::Error> {
        while a.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn map<'de, A: serde::de::MapAccess<'de>>(mut a: A) -> Result<Skip, A::Error> {
        while a.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
}

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_none<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<Skip, A::Error> {
                Skip::seq(a)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Skip, A::Error> {
                Skip::map(a)
            }
        }
        d.deserialize_any(V)
    }
}
