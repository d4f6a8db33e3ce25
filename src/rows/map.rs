//! [`RowMap`]: rows aggregated by key in one arena of encoded keys
//! ([`super::key`]) and one array of measure values, and [`SortedRows`], the
//! same rows in the table's sort order, as a flush writes them.
//!
//! An event neither allocates nor copies unless its key is new (then the
//! key's bytes are appended to the arena); sorting compares byte strings.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::key::{self, KeyReader};
use super::{DimRef, MeasureSpec, MeasureValue, Measures, RowKey};

/// Rows in insertion order: encoded keys end to end, and `width` measure
/// values per row.
#[derive(Debug, Default, Clone)]
struct Arena {
    keys: Vec<u8>,
    /// Each row's key, as a range of `keys`.
    spans: Vec<(usize, usize)>,
    values: Vec<MeasureValue>,
    width: usize,
}

impl Arena {
    fn len(&self) -> usize {
        self.spans.len()
    }

    fn key(&self, row: usize) -> &[u8] {
        let (start, end) = self.spans[row];
        &self.keys[start..end]
    }

    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|r| self.key(r))
    }

    fn measures(&self, row: usize) -> &[MeasureValue] {
        &self.values[row * self.width..(row + 1) * self.width]
    }

    fn measures_mut(&mut self, row: usize) -> &mut [MeasureValue] {
        &mut self.values[row * self.width..(row + 1) * self.width]
    }

    /// Hold no rows (keeping the memory).
    fn clear(&mut self) {
        self.keys.clear();
        self.spans.clear();
        self.values.clear();
    }

    /// Row `r`.
    fn row(&self, r: usize) -> SortedRow<'_> {
        SortedRow {
            key: self.key(r),
            measures: self.measures(r),
        }
    }

    /// A new row of `key` holding `measures`; its index.
    fn push(&mut self, key: &[u8], measures: &[MeasureValue]) -> usize {
        if self.spans.is_empty() {
            self.width = measures.len();
        }
        let start = self.keys.len();
        self.keys.extend_from_slice(key);
        self.spans.push((start, self.keys.len()));
        self.values.extend_from_slice(measures);
        self.spans.len() - 1
    }
}

/// An in-memory aggregation of rows by key: what a flush or a merge holds.
/// Events are looked up by their borrowed key ([`RowMap::add_event_ref`]):
/// only a key not seen before is copied, into the map's arena.
#[derive(Debug, Default)]
pub struct RowMap {
    rows: Arena,
    /// Rows taken whole from other maps ([`RowMap::append`]), in their own
    /// arenas: appending copies nothing.
    appended: Vec<Arena>,
    /// The row that takes each key's events, with its key's hash (a table
    /// that grows does not hash its keys again). Rows not indexed: those
    /// closed because adding to them would have overflowed a sum (a new row
    /// of the key took their place), and those appended from other maps
    /// ([`RowMap::append`]).
    index: HashTable<(u64, usize)>,
    hasher: hashbrown::DefaultHashBuilder,
    /// The key being looked up, encoded.
    scratch: Vec<u8>,
    /// A new row's measures, being built.
    fresh: Vec<MeasureValue>,
}

impl RowMap {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.arenas().map(Arena::len).sum()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.arenas().all(|a| a.len() == 0)
    }

    fn arenas(&self) -> impl Iterator<Item = &Arena> {
        std::iter::once(&self.rows).chain(&self.appended)
    }

    /// Add one event to the row for `key` (to a new row of that key when a
    /// sum of the current one would overflow).
    pub fn add_event(&mut self, spec: &MeasureSpec, key: RowKey, values: &[Option<MeasureValue>]) {
        let dims: Vec<DimRef<'_>> = key.dims.iter().map(DimRef::from).collect();
        self.add_event_ref(spec, &dims, key.ts_micros, values);
    }

    /// Add one event, keyed by `dims` (borrowed) and `ts_micros`, to its
    /// row: the common case, an existing row with room, neither copies nor
    /// allocates.
    pub fn add_event_ref(
        &mut self,
        spec: &MeasureSpec,
        dims: &[DimRef<'_>],
        ts_micros: i64,
        values: &[Option<MeasureValue>],
    ) {
        self.scratch.clear();
        for d in dims {
            key::push_dim(&mut self.scratch, d);
        }
        key::push_long(&mut self.scratch, ts_micros);
        self.upsert(
            |acc| spec.add_event_values(acc, values),
            |row| {
                spec.push_empty(row);
                // A single event fits an empty row: its values are in range.
                let _ = spec.add_event_values(row, values);
            },
        );
    }

    /// Fold into the row that takes the events of the key in `scratch`:
    /// `fold` its measures, or, when there is no such row or `fold` refuses
    /// (a sum would overflow), a new row with `init`'s measures takes the
    /// key's events from now on.
    fn upsert(
        &mut self,
        fold: impl FnOnce(&mut [MeasureValue]) -> bool,
        init: impl FnOnce(&mut Vec<MeasureValue>),
    ) {
        let hash = self.hasher.hash_one(&self.scratch[..]);
        let Self {
            rows,
            index,
            scratch,
            fresh,
            ..
        } = self;
        let push = |rows: &mut Arena| {
            fresh.clear();
            init(fresh);
            rows.push(scratch, fresh)
        };
        let entry = index.entry(
            hash,
            |&(h, r)| h == hash && rows.key(r) == &scratch[..],
            |&(h, _)| h,
        );
        match entry {
            Entry::Occupied(mut o) => {
                if !fold(rows.measures_mut(o.get().1)) {
                    o.get_mut().1 = push(rows);
                }
            }
            Entry::Vacant(v) => {
                v.insert((hash, push(rows)));
            }
        }
    }

    /// Merge a row's measures into the row of the key in `scratch` (kept
    /// apart when a sum would overflow).
    fn merge_scratch(&mut self, spec: &MeasureSpec, measures: &[MeasureValue]) {
        self.upsert(
            |acc| spec.merge_values(acc, measures),
            |row| row.extend_from_slice(measures),
        );
    }

    /// Merge a whole row (kept apart when a sum would overflow).
    pub fn add_row(&mut self, spec: &MeasureSpec, key: RowKey, measures: &Measures) {
        self.scratch.clear();
        key::push_key(&mut self.scratch, &key);
        self.merge_scratch(spec, &measures.0);
    }

    /// The bucket start of every row, in no particular order.
    pub fn bucket_starts(&self) -> impl Iterator<Item = i64> + '_ {
        self.arenas()
            .flat_map(|a| (0..a.len()).map(|r| key::bucket_start(a.key(r))))
    }

    /// Merge all of `other` into this map.
    pub fn absorb(&mut self, spec: &MeasureSpec, other: RowMap) {
        if self.is_empty() {
            *self = other;
            return;
        }
        for from in std::iter::once(other.rows).chain(other.appended) {
            for r in 0..from.len() {
                self.scratch.clear();
                self.scratch.extend_from_slice(from.key(r));
                self.merge_scratch(spec, from.measures(r));
            }
        }
    }

    /// Take all of `other`'s rows without looking them up: rows of the
    /// same key are merged when the map is sorted ([`RowMap::sorted`]),
    /// and until then count twice in [`RowMap::len`]. For a map taken whole
    /// to be written, as a flush takes the shards' maps.
    pub fn append(&mut self, other: RowMap) {
        if self.is_empty() {
            *self = other;
            return;
        }
        self.appended
            .extend(std::iter::once(other.rows).chain(other.appended));
    }

    /// The rows sorted as the table's sort order says: dimensions, then
    /// `ts`; rows of one key merged, unless a sum would overflow.
    pub fn sorted(self, spec: &MeasureSpec) -> SortedRows {
        let mut arenas: Vec<Arena> = std::iter::once(self.rows)
            .chain(self.appended)
            .filter(|a| a.len() > 0)
            .collect();
        // Keys are sorted by the 32 bytes after the prefix they all share,
        // held beside each row (most comparisons end there, without reading
        // the keys, which lie here and there in memory), then by the rest of
        // the key.
        let shared = arenas.first().map_or(0, |a| {
            key::shared_prefix(arenas.iter().flat_map(Arena::keys), a.key(0))
        });
        let mut order: Vec<([u64; key::PREFIX_BYTES / 8], Pos)> =
            Vec::with_capacity(arenas.iter().map(Arena::len).sum());
        for (i, a) in arenas.iter().enumerate() {
            order.extend((0..a.len()).map(|r| (key::prefix_at(a.key(r), shared), Pos::new(i, r))));
        }
        let key_of = |p: Pos| &arenas[p.arena()].key(p.row())[shared..];
        order.sort_unstable_by(|(wa, a), (wb, b)| {
            wa.cmp(wb).then_with(|| key_of(*a).cmp(key_of(*b)))
        });
        let mut merged: Vec<Pos> = Vec::with_capacity(order.len());
        let mut other: Vec<MeasureValue> = Vec::new();
        let mut last_prefix = None;
        for (prefix, p) in order {
            let same_prefix = last_prefix.replace(prefix) == Some(prefix);
            if same_prefix
                && let Some(&last) = merged.last()
                && arenas[last.arena()].key(last.row()) == arenas[p.arena()].key(p.row())
            {
                other.clear();
                other.extend_from_slice(arenas[p.arena()].measures(p.row()));
                if spec.merge_values(arenas[last.arena()].measures_mut(last.row()), &other) {
                    continue;
                }
            }
            merged.push(p);
        }
        SortedRows {
            arenas,
            order: merged,
        }
    }

    /// The rows sorted, as owned keys and measures (see
    /// [`RowMap::sorted`]).
    pub fn into_sorted(self, spec: &MeasureSpec) -> Vec<(RowKey, Measures)> {
        self.sorted(spec).to_rows()
    }
}

/// Rows in the table's sort order (dimensions, then `ts`), each key once
/// unless a sum would have overflowed: what a flush writes.
#[derive(Debug, Default, Clone)]
pub struct SortedRows {
    arenas: Vec<Arena>,
    order: Vec<Pos>,
}

/// A row's place: its arena and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos(u32, u32);

impl Pos {
    fn new(arena: usize, row: usize) -> Self {
        // A map holds far fewer than 2^32 rows (its buffer bounds it).
        Pos(arena as u32, row as u32)
    }

    fn arena(self) -> usize {
        self.0 as usize
    }

    fn row(self) -> usize {
        self.1 as usize
    }
}

/// Copies of some sorted rows, end to end in one arena, in order: read
/// again and again, they are read from one place instead of from wherever
/// the sort left each.
#[derive(Debug, Default)]
pub(crate) struct RowCopies(Arena);

impl RowCopies {
    /// Hold copies of `rows` (and nothing else), in order.
    pub(crate) fn fill(&mut self, rows: &[SortedRow<'_>]) {
        self.0.clear();
        for row in rows {
            self.0.push(row.key, row.measures);
        }
    }

    /// The rows held, in order.
    pub(crate) fn rows(&self) -> impl Iterator<Item = SortedRow<'_>> {
        (0..self.0.len()).map(|r| self.0.row(r))
    }
}

/// One row of [`SortedRows`]: its encoded key and measures.
#[derive(Debug, Clone, Copy)]
pub struct SortedRow<'a> {
    key: &'a [u8],
    /// Measure values, in declaration order.
    pub measures: &'a [MeasureValue],
}

impl<'a> SortedRow<'a> {
    /// The bucket start, microseconds since the epoch.
    pub fn ts_micros(&self) -> i64 {
        key::bucket_start(self.key)
    }

    /// The dimension values, in declaration order.
    pub(crate) fn dims(&self) -> KeyReader<'a> {
        KeyReader::new(self.key)
    }
}

impl SortedRows {
    /// Sorted rows of owned keys and measures, as given (already sorted by
    /// key).
    pub fn from_rows(rows: &[(RowKey, Measures)]) -> Self {
        let mut arena = Arena::default();
        let mut scratch = Vec::new();
        for (k, m) in rows {
            scratch.clear();
            key::push_key(&mut scratch, k);
            arena.push(&scratch, &m.0);
        }
        Self {
            order: (0..arena.len()).map(|r| Pos::new(0, r)).collect(),
            arenas: vec![arena],
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Row `i` of the order.
    pub fn get(&self, i: usize) -> SortedRow<'_> {
        let p = self.order[i];
        self.arenas[p.arena()].row(p.row())
    }

    /// The rows in order.
    pub fn iter(&self) -> impl Iterator<Item = SortedRow<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The rows in the order they are held, not sorted: for folds that
    /// take rows in any order (totals). Held memory is read in order, not
    /// a row here and a row there as the sort order reads it.
    pub fn each_unordered(&self) -> impl Iterator<Item = SortedRow<'_>> {
        let mut kept: Vec<Vec<bool>> = self.arenas.iter().map(|a| vec![false; a.len()]).collect();
        for p in &self.order {
            kept[p.arena()][p.row()] = true;
        }
        self.arenas.iter().zip(kept).flat_map(|(arena, kept)| {
            kept.into_iter()
                .enumerate()
                .filter(|&(_, k)| k)
                .map(move |(r, _)| arena.row(r))
        })
    }

    /// The rows grouped by `group` of their bucket start, each group in
    /// order. The groups are found in one pass over held memory in the
    /// order it is held (reading each row's key in sort order would jump
    /// about memory); only the rows' places are then read in sort order.
    pub fn grouped_by<K: Ord + Copy>(
        &self,
        group: impl Fn(i64) -> K,
    ) -> BTreeMap<K, Vec<SortedRow<'_>>> {
        let groups: Vec<Vec<K>> = self
            .arenas
            .iter()
            .map(|a| a.keys().map(|k| group(key::bucket_start(k))).collect())
            .collect();
        let mut grouped: BTreeMap<K, Vec<SortedRow<'_>>> = BTreeMap::new();
        for (i, &p) in self.order.iter().enumerate() {
            let k = groups[p.arena()][p.row()];
            grouped.entry(k).or_default().push(self.get(i));
        }
        grouped
    }

    /// The rows as owned keys and measures.
    pub fn to_rows(&self) -> Vec<(RowKey, Measures)> {
        self.iter()
            .filter_map(|r| Some((key::decode(r.key)?, Measures(r.measures.to_vec()))))
            .collect()
    }
}

#[cfg(test)]
mod tests;
