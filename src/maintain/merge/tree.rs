//! The loser tree that merges the inputs' heads, with offset-value codes
//! (Graefe, "Offset-value coding in database query processing"). Every
//! head carries a code of how it differs from the last key the merge put
//! out: the offset of the first byte at which it differs, and that byte.
//! Two heads coded against the same key compare by their codes alone
//! unless both differ from it at the same byte with the same value, and a
//! head equal to the last key is known so without reading a byte. A
//! compaction merging the same keys from many files compares equal keys
//! most of the time: with codes those compares cost an integer compare
//! instead of a scan of the whole key.
//!
//! Keys are byte strings in which byte order is key order and none is a
//! proper prefix of another (arrow's row format).

/// A head's offset-value code against a base key that sorts at or before
/// it: smaller codes are smaller keys.
type Code = u64;

/// The code of a key equal to its base.
const EQUAL: Code = 0;

/// The code of an input with no head: after every key.
const EXHAUSTED: Code = Code::MAX;

/// Offsets are counted down from this, so that a longer shared prefix
/// makes a smaller code.
const MAX_OFFSET: u64 = 1 << 40;

/// The code of `key` where it first differs from its base, at `offset`.
fn code_at(key: &[u8], offset: usize) -> Code {
    match key.get(offset) {
        None => EQUAL,
        Some(&byte) => ((MAX_OFFSET - offset as u64) << 8) | byte as u64,
    }
}

/// The offset a code was made at (not of [`EQUAL`] or [`EXHAUSTED`]).
fn offset_of(code: Code) -> usize {
    (MAX_OFFSET - (code >> 8)) as usize
}

/// The first offset at which `a` and `b` differ (the shorter's length when
/// one is a prefix of the other).
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (mut x, mut y) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let mut at = 0;
    for (p, q) in (&mut x).zip(&mut y) {
        let (p, q) = (
            u64::from_le_bytes(p.try_into().expect("8 bytes")),
            u64::from_le_bytes(q.try_into().expect("8 bytes")),
        );
        if p != q {
            return at + (p ^ q).trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    at + x
        .remainder()
        .iter()
        .zip(y.remainder())
        .take_while(|(p, q)| p == q)
        .count()
}

/// The code of `key` against `base`, or `None` when `key` sorts before
/// `base` (an input out of order: codes are only made going forward).
pub(super) fn code(base: &[u8], key: &[u8]) -> Option<Code> {
    let at = first_difference(base, key);
    match (base.get(at), key.get(at)) {
        (Some(b), Some(k)) if k < b => None,
        (Some(_), None) => None,
        _ => Some(code_at(key, at)),
    }
}

/// What [`successors`] gives a row that sorts before the one ahead of it
/// (no code is this large).
pub(super) const OUT_OF_ORDER: Code = Code::MAX - 1;

/// Per key of `rows` but the last, the next key's code against it, or
/// [`OUT_OF_ORDER`]: the codes a merge plays as it takes the keys in turn,
/// made in one pass over the batch.
pub(super) fn successors(rows: &arrow_array::BinaryArray) -> Vec<Code> {
    use arrow_array::Array;
    (1..rows.len())
        .map(|r| code(rows.value(r - 1), rows.value(r)).unwrap_or(OUT_OF_ORDER))
        .collect()
}

/// The code of `key` against a key before every key (a merge's first).
fn code_first(key: &[u8]) -> Code {
    code_at(key, 0)
}

/// A loser tree over `n` inputs: `nodes[0]` is the input with the smallest
/// head, `nodes[k]` the loser of the match at node `k`; input `i` is the
/// leaf `n + i`. Equal heads come out in input order. Replacing the
/// winner's head costs one code comparison per level.
#[derive(Debug, Default)]
pub(super) struct LoserTree {
    nodes: Vec<usize>,
    /// Per input, its head's code against the key of the match it lost
    /// (the winner's: against the last key put out).
    codes: Vec<Code>,
}

impl LoserTree {
    /// The tree over the heads `key(i)` (`None`: input `i` has none).
    pub(super) fn new<'a>(n: usize, key: impl Fn(usize) -> Option<&'a [u8]>) -> Self {
        let codes = (0..n)
            .map(|i| key(i).map_or(EXHAUSTED, code_first))
            .collect();
        let mut tree = Self {
            nodes: vec![0; n.max(1)],
            codes,
        };
        if n > 0 {
            tree.nodes[0] = tree.play(1, &key);
        }
        tree
    }

    /// The input with the smallest head, and whether it has one.
    pub(super) fn winner(&self) -> (usize, bool) {
        let i = self.nodes[0];
        (i, self.codes.get(i).is_some_and(|&c| c != EXHAUSTED))
    }

    /// Whether the winner's head equals the last key put out (the head
    /// that won before it).
    pub(super) fn winner_repeats(&self) -> bool {
        self.codes.get(self.nodes[0]) == Some(&EQUAL)
    }

    /// The winner's input has a new head: `next`, coded against its last
    /// (`None` when it has no more). Plays it up the tree.
    pub(super) fn advance<'a>(
        &mut self,
        next: Option<Code>,
        key: impl Fn(usize) -> Option<&'a [u8]>,
    ) {
        let mut winner = self.nodes[0];
        self.codes[winner] = next.unwrap_or(EXHAUSTED);
        let mut node = (self.codes.len() + winner) / 2;
        while node > 0 {
            let other = self.nodes[node];
            if self.beats(other, winner, &key) {
                self.nodes[node] = winner;
                winner = other;
            }
            node /= 2;
        }
        self.nodes[0] = winner;
    }

    /// The winner of the matches below `node`, recording each match's
    /// loser (building the tree).
    fn play<'a>(&mut self, node: usize, key: &impl Fn(usize) -> Option<&'a [u8]>) -> usize {
        let n = self.codes.len();
        if node >= n {
            return node - n;
        }
        let (a, b) = (self.play(2 * node, key), self.play(2 * node + 1, key));
        let (winner, loser) = if self.beats(a, b, key) {
            (a, b)
        } else {
            (b, a)
        };
        self.nodes[node] = loser;
        winner
    }

    /// Whether input `a`'s head sorts before `b`'s (both coded against the
    /// same key; equal heads by input order). The loser's code is left
    /// against the winner's head.
    fn beats<'a>(&mut self, a: usize, b: usize, key: &impl Fn(usize) -> Option<&'a [u8]>) -> bool {
        let (ca, cb) = (self.codes[a], self.codes[b]);
        if ca != cb {
            // Against the same base, a differing code decides, and the
            // loser differs from the winner where it differed from the
            // base: its code stands.
            return ca < cb;
        }
        if ca == EQUAL || ca == EXHAUSTED {
            return a < b;
        }
        // Both differ from the base first at the same byte, with the same
        // value: the keys decide from the next byte on.
        let (Some(ka), Some(kb)) = (key(a), key(b)) else {
            unreachable!("an input with a code has a head")
        };
        let from = offset_of(ca) + 1;
        let at = from + first_difference(&ka[from.min(ka.len())..], &kb[from.min(kb.len())..]);
        let a_first = match (ka.get(at), kb.get(at)) {
            (Some(x), Some(y)) if x != y => x < y,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            _ => a < b,
        };
        let loser = if a_first { b } else { a };
        self.codes[loser] = code_at(key(loser).expect("a head"), at);
        a_first
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Byte strings none of which is a proper prefix of another: a length
    /// byte then the bytes, as arrow's row format delimits its values.
    fn keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let key = prop::collection::vec(prop::sample::select(vec![0u8, 1, 7, 200, 255]), 0..20)
            .prop_map(|b| {
                let mut k = vec![b.len() as u8];
                k.extend(b);
                k
            });
        prop::collection::vec(key, 0..40)
    }

    #[test]
    fn first_difference_across_words() {
        let a: Vec<u8> = (0..40).collect();
        for at in 0..40 {
            let mut b = a.clone();
            b[at] ^= 0x10;
            assert_eq!(first_difference(&a, &b), at);
        }
        assert_eq!(first_difference(&a, &a), 40);
        assert_eq!(first_difference(&a[..13], &a), 13);
    }

    #[test]
    fn codes_order_as_keys_against_one_base() {
        let base = b"\x03abc\x02zz";
        let keys: [&[u8]; 4] = [
            b"\x03abc\x02zz",
            b"\x03abc\x03aaa",
            b"\x03abd\x01a",
            b"\x04aaaa",
        ];
        let codes: Vec<u64> = keys.iter().map(|k| code(base, k).unwrap()).collect();
        assert_eq!(codes[0], EQUAL);
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
    }

    #[test]
    fn a_key_before_its_base_has_no_code() {
        assert_eq!(code(b"\x03abd", b"\x03abc"), None);
        assert_eq!(code(b"\x03abc\x01", b"\x03abc"), None);
        assert_eq!(code(b"\x03abc", b"\x03abc"), Some(EQUAL));
        assert!(code(b"\x03abc", b"\x03abc\x01").is_some());
    }

    proptest! {
        /// Merging sorted inputs through the tree puts out every key in
        /// order, equal keys in input order, and says which repeat the key
        /// before them.
        #[test]
        fn merges_sorted_inputs_in_order(inputs in prop::collection::vec(keys(), 0..9)) {
            let inputs: Vec<Vec<Vec<u8>>> = inputs
                .into_iter()
                .map(|mut k| {
                    k.sort();
                    k
                })
                .collect();
            let mut pos = vec![0usize; inputs.len()];
            let head = |pos: &[usize], i: usize| inputs[i].get(pos[i]).map(Vec::as_slice);
            let mut tree = LoserTree::new(inputs.len(), |i| head(&pos, i));
            let mut out: Vec<(&[u8], usize, bool)> = Vec::new();
            loop {
                let (i, some) = tree.winner();
                if !some {
                    break;
                }
                let key = inputs[i][pos[i]].as_slice();
                out.push((key, i, tree.winner_repeats()));
                pos[i] += 1;
                let next = inputs[i].get(pos[i]).map(|n| code(key, n).expect("in order"));
                tree.advance(next, |j| head(&pos, j));
            }
            let mut expected: Vec<(&[u8], usize)> = inputs
                .iter()
                .enumerate()
                .flat_map(|(i, k)| k.iter().map(move |k| (k.as_slice(), i)))
                .collect();
            expected.sort();
            let got: Vec<(&[u8], usize)> = out.iter().map(|&(k, i, _)| (k, i)).collect();
            prop_assert_eq!(&got, &expected);
            for (n, &(key, _, repeats)) in out.iter().enumerate() {
                prop_assert_eq!(repeats, n > 0 && out[n - 1].0 == key);
            }
        }
    }
}
