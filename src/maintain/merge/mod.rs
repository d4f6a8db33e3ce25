//! The streaming k-way merge behind compaction and rollup, column by column.
//! Every input file is sorted by dimensions then `ts`, and truncating `ts` to
//! a coarser grain keeps that order, so the output is a sorted merge of the
//! inputs with equal keys folded: no hash table and no sort, one batch per
//! input in memory. Each input batch is first collapsed into runs of equal
//! keys ([`runs`]); the runs' heads are merged across inputs by their keys
//! in arrow's row format (byte order is key order), as DataFusion's
//! `SortPreservingMergeExec` merges cursors, in a loser tree whose heads
//! carry offset-value codes ([`tree`]); output batches are gathered
//! with arrow's `interleave`. A merge of more files than [`spill::FAN_IN`]
//! merges them a group at a time into runs (held in memory or in temporary
//! files, see [`spill`]), then the runs; a group holds the files of one
//! bucket of the grain (rows of two buckets never fold), or several small
//! buckets ([`spill::group_sizes`]). A file whose manifest entry does not
//! say it is in the table's key order (another engine's) is sorted first
//! ([`sort`]); one that says so and is not stops the merge with an
//! [`OutOfOrder`] error, before anything is committed.

mod files;
mod layout;
mod pages;
mod runs;
mod sort;
mod spill;
#[cfg(test)]
mod tests;
mod tree;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow_schema::DataType;
use futures::StreamExt;
use futures::stream::BoxStream;

pub use self::files::{field_ids, read as read_columns, read_file};
pub use self::layout::Layout;
use self::layout::Source;
use self::runs::{RunBatch, Values};
use self::tree::LoserTree;
use super::state::LiveFile;
use crate::catalog::TableHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::faults::{self, Decision, Fault, Faults, Op};
use crate::schema::decl::TableDecl;
use crate::schema::layout::Grain;
use crate::totals::{DayTotals, Total};

/// Rows read per batch from each input, at most.
const READ_BATCH: usize = 8192;

/// Rows held in read batches over all inputs, at most (a merge of many
/// inputs reads smaller batches), so memory is bounded whatever the
/// number of inputs.
const READ_ROWS: usize = 1 << 19;

/// Inputs whose first batches are read at once when a merge opens.
const OPEN_AT_ONCE: usize = 32;

/// Rows per merged batch.
const OUT_BATCH: usize = 64 * 1024;

/// Rows read into one merged batch, at most (many fold into one row when
/// a compaction merges the same keys from many files).
const PICKS: usize = 4 * OUT_BATCH;

/// One input's batches, in key order.
pub type BatchStream = BoxStream<'static, Result<RecordBatch>>;

/// One input: its batches, the current one as runs, and the run at the
/// head of the merge.
struct Input {
    stream: BatchStream,
    name: String,
    batch: Option<Arc<RunBatch>>,
    pos: usize,
}

impl Input {
    /// Make row `pos` of the current batch the head.
    fn seek(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// The encoded key of the head, if there is one.
    fn head(&self) -> Option<&[u8]> {
        self.batch.as_ref().map(|b| b.rows.value(self.pos))
    }
}

/// The merged rows of one output batch, gathered before it is built: where
/// each row read comes from and where each key starts. Measures are folded
/// column by column when the batch is built, not row by row here.
struct Chunk {
    /// The run batches the rows come from.
    batches: Vec<Arc<RunBatch>>,
    /// Per input, the index in `batches` of its current batch.
    slot: Vec<Option<usize>>,
    /// Per row read, in merge order, the (batch, row) it comes from.
    picks: Vec<(usize, usize)>,
    /// The index in `picks` of each key's first row.
    starts: Vec<u32>,
}

impl Chunk {
    fn new(inputs: usize) -> Self {
        Self {
            batches: Vec::new(),
            slot: vec![None; inputs],
            picks: Vec::with_capacity(OUT_BATCH),
            starts: Vec::with_capacity(OUT_BATCH),
        }
    }

    /// Key column `k` of the rows `heads` of the batches, in the output's
    /// type `ty`. A dictionary is gathered as one (its values merged
    /// when the batches' differ) and hydrated for the rows kept only.
    fn key_column(&self, k: usize, ty: &DataType, heads: &[(usize, usize)]) -> Result<ArrayRef> {
        let arrays: Vec<&dyn Array> = self.batches.iter().map(|b| b.keys[k].as_ref()).collect();
        let same = arrays
            .windows(2)
            .all(|w| w[0].data_type() == w[1].data_type());
        let key = if same {
            arrow_select::interleave::interleave(&arrays, heads)?
        } else {
            let cast = arrays
                .iter()
                .map(|a| arrow_cast::cast(*a, ty))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let arrays: Vec<&dyn Array> = cast.iter().map(|a| a.as_ref()).collect();
            arrow_select::interleave::interleave(&arrays, heads)?
        };
        Ok(match key.data_type() == ty {
            true => key,
            false => arrow_cast::cast(&key, ty)?,
        })
    }
}

/// What stopped [`MergeReader::fill`].
enum Step {
    /// The chunk is full.
    Full,
    /// Input `.0` ran out of its batch and must read its next.
    Refill(usize),
    /// Input `.0`'s next row sorts before its last.
    OutOfOrder(usize),
    /// Every input is exhausted.
    Done,
}

/// The cause of a merge's error when an input was not in key order though
/// it was merged as sorted: the input's name (a data file's path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfOrder {
    /// The input found out of order.
    pub input: String,
}

impl std::fmt::Display for OutOfOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is out of key order", self.input)
    }
}

impl std::error::Error for OutOfOrder {}

impl OutOfOrder {
    /// The input `error` found out of order, if that is what stopped a merge.
    pub fn of(error: &Error) -> Option<&Self> {
        std::error::Error::source(error)?.downcast_ref::<Self>()
    }
}

/// Merges sorted inputs into rows of one grain, in output batches.
pub struct MergeReader {
    inputs: Vec<Input>,
    /// The inputs' heads in a loser tree: equal keys come out in input
    /// order, so rows fold in the order the inputs were given.
    tree: LoserTree,
    layout: Layout,
    converters: runs::Converters,
    /// Rows read from the inputs so far.
    rows_read: u64,
    /// For a merge of merged runs: per file the runs were merged from, the
    /// totals of its rows (which conservation is checked against), and the
    /// number of rows.
    upstream: Option<(Vec<DayTotals>, u64)>,
    /// Per input, the totals of the rows read from it so far, as stored.
    read: Vec<DayTotals>,
    /// When the inputs were merged in another order than they were given:
    /// per input merged, its place among those given.
    order: Option<Vec<usize>>,
    /// Totals of the rows merged so far.
    written: DayTotals,
    /// Injected faults (the gauntlet's `drop_row`), and the table location
    /// rules match.
    faults: Option<(Arc<Faults>, String)>,
}

impl std::fmt::Debug for MergeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeReader")
            .field(
                "inputs",
                &self.inputs.iter().map(|i| &i.name).collect::<Vec<_>>(),
            )
            .field("grain", &self.layout.grain)
            .finish_non_exhaustive()
    }
}

impl MergeReader {
    /// Open `files` of `table` for a merge into rows of `grain`; a merge of
    /// more files than [`spill::FAN_IN`] merges up to `parallel` groups at
    /// once (see [`MergeReader::from_streams`]).
    pub async fn open(
        table: &TableHandle,
        decl: &TableDecl,
        files: &[LiveFile],
        grain: Grain,
        parallel: usize,
    ) -> Result<Self> {
        let layout = Layout::new(arrow_schema(table)?, decl, grain)?;
        let field_ids = field_ids(table, layout.read_columns())?;
        let batch_rows = batch_rows(files.len().min(spill::FAN_IN));
        let key_orders = crate::schema::layout::key_orders(&table.metadata, decl);
        let mut inputs = Vec::with_capacity(files.len());
        let mut unsorted = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let stream = files::read(table, f, field_ids.clone(), batch_rows)?;
            if !f
                .sort_order
                .is_some_and(|id| key_orders.contains(&i64::from(id)))
            {
                unsorted.push((i, f.path.clone(), stream));
                inputs.push((f.path.clone(), futures::stream::empty().boxed()));
            } else {
                inputs.push((f.path.clone(), stream));
            }
        }
        // Files not in key order are sorted first, a few at once, each on
        // a task of its own.
        let mut work = Vec::with_capacity(unsorted.len());
        for (i, name, stream) in unsorted {
            let layout = layout.clone();
            let what = format!("sorting data file {name}");
            work.push(crate::error::on_task(what, async move {
                let sorted = sort::sorted(&layout, &name, stream, batch_rows, sort::SORT_ROWS);
                Ok((i, name.clone(), sorted.await?))
            }));
        }
        let mut sorting = futures::stream::iter(work).buffer_unordered(parallel.max(1));
        while let Some(done) = sorting.next().await {
            let (i, name, sorted) = done?;
            inputs[i] = (name, sorted);
        }
        drop(sorting);
        let buckets = files
            .iter()
            .map(|f| {
                f.ts_bounds
                    .map(|(lo, hi)| (grain.truncate(lo), grain.truncate(hi)))
            })
            .collect();
        let budget = spill::Budget::shared();
        Self::merge_by_bucket(layout, inputs, buckets, spill::FAN_IN, parallel, budget).await
    }

    /// Merge `inputs`, input `i`'s rows all in bucket `buckets[i]` of the
    /// grain (if known), `fan_in` at a time. Rows of two inputs fold only if
    /// they share a bucket, so the inputs are merged in order of bucket, in
    /// groups that keep a bucket whole ([`spill::group_sizes`]); the totals
    /// read are still given by input in the order of `inputs`.
    async fn merge_by_bucket<B: Ord + Copy>(
        layout: Layout,
        inputs: Vec<(String, BatchStream)>,
        buckets: Vec<B>,
        fan_in: usize,
        parallel: usize,
        budget: spill::Budget,
    ) -> Result<Self> {
        // A stable sort: inputs of one bucket keep their order.
        let mut keyed: Vec<_> = inputs.into_iter().zip(buckets).enumerate().collect();
        keyed.sort_by_key(|(_, (_, bucket))| *bucket);
        let buckets: Vec<B> = keyed.iter().map(|(_, (_, bucket))| *bucket).collect();
        let sizes = spill::group_sizes(&buckets, fan_in);
        let (order, inputs): (Vec<usize>, Vec<_>) =
            keyed.into_iter().map(|(i, (input, _))| (i, input)).unzip();
        let mut merge =
            Self::merge_in_groups(layout, inputs, fan_in, parallel, budget, sizes).await?;
        merge.order = Some(order);
        Ok(merge)
    }

    /// Merge `inputs` (each named, for errors), every one sorted by key.
    /// More inputs than [`spill::FAN_IN`] are merged a group at a time into
    /// runs in temporary files, and the runs then merged (see [`spill`]):
    /// the inputs' streams are only read when their group is merged.
    pub async fn from_streams(layout: Layout, inputs: Vec<(String, BatchStream)>) -> Result<Self> {
        Self::merge_with_fan_in(layout, inputs, spill::FAN_IN, 1).await
    }

    /// Merge `inputs`, `fan_in` at a time: more are merged a group at a
    /// time into spilled runs, up to `parallel` groups at once (each on a
    /// task of its own), and the runs merged in turn.
    async fn merge_with_fan_in(
        layout: Layout,
        inputs: Vec<(String, BatchStream)>,
        fan_in: usize,
        parallel: usize,
    ) -> Result<Self> {
        let budget = spill::Budget::shared();
        Self::merge_in_groups(layout, inputs, fan_in, parallel, budget, Vec::new()).await
    }

    /// [`MergeReader::merge_with_fan_in`], the runs held in memory while
    /// they take less than `budget` allows, in groups of `sizes` inputs (as
    /// [`spill::group_sizes`] makes them; none given: `fan_in` at a time).
    async fn merge_in_groups(
        layout: Layout,
        mut inputs: Vec<(String, BatchStream)>,
        fan_in: usize,
        parallel: usize,
        budget: spill::Budget,
        mut sizes: Vec<usize>,
    ) -> Result<Self> {
        let fan_in = fan_in.max(2);
        if inputs.len() <= fan_in {
            return Self::merge_at_once(layout, inputs).await;
        }
        let total = inputs.len();
        if sizes.is_empty() {
            // No buckets known: one, split at the fan-in.
            sizes = spill::group_sizes(&vec![(); total], fan_in);
        }
        let groups = sizes.len();
        let run_rows = batch_rows(groups.min(fan_in));
        let mut work = Vec::with_capacity(groups);
        let mut first = 0;
        for (g, size) in sizes.into_iter().enumerate() {
            let group: Vec<_> = inputs.drain(..size).collect();
            let name = format!(
                "merged run {} of {groups} (inputs {} to {} of {total}, from {})",
                g + 1,
                first + 1,
                first + group.len(),
                group[0].0
            );
            first += group.len();
            let layout = layout.clone();
            let what = format!("merging {name}");
            let budget = budget.clone();
            work.push(crate::error::on_task(what, async move {
                let schema = layout.schema.clone();
                let mut merge = Self::merge_at_once(layout, group).await?;
                let mut run = spill::RunWriter::new(&schema, run_rows, Some(budget));
                while let Some(batch) = merge.next_batch().await? {
                    run.write(&batch)?;
                }
                Ok((name, run.finish()?, merge.read, merge.rows_read))
            }));
        }
        let mut upstream = (Vec::with_capacity(total), 0);
        let mut runs = Vec::with_capacity(groups);
        let mut done = futures::stream::iter(work).buffered(parallel.max(1));
        while let Some(group) = done.next().await {
            let (name, run, mut read, rows) = group?;
            upstream.0.append(&mut read);
            upstream.1 += rows;
            runs.push((name, run));
        }
        let mut merge = Box::pin(Self::merge_in_groups(
            layout,
            runs,
            fan_in,
            parallel,
            budget,
            Vec::new(),
        ))
        .await?;
        merge.upstream = Some(upstream);
        Ok(merge)
    }

    /// Merge `inputs` in one loser tree.
    async fn merge_at_once(layout: Layout, inputs: Vec<(String, BatchStream)>) -> Result<Self> {
        let totals = DayTotals::new(&layout.totals);
        let read = vec![totals.clone(); inputs.len()];
        let mut merge = Self {
            inputs: inputs
                .into_iter()
                .map(|(name, stream)| Input {
                    stream,
                    name,
                    batch: None,
                    pos: 0,
                })
                .collect(),
            tree: LoserTree::default(),
            converters: runs::Converters::default(),
            layout,
            rows_read: 0,
            upstream: None,
            read,
            order: None,
            written: totals,
            faults: None,
        };
        // The first batches are read a few inputs at a time (a compaction
        // of a thousand small files waits on I/O, not on the merge).
        let mut firsts = Vec::with_capacity(merge.inputs.len());
        for some in merge.inputs.chunks_mut(OPEN_AT_ONCE) {
            let mut reads = Vec::with_capacity(some.len());
            for input in some.iter_mut() {
                reads.push(next_batch(&mut input.stream));
            }
            firsts.extend(futures::future::join_all(reads).await);
        }
        for (i, first) in firsts.into_iter().enumerate() {
            if let Some(batch) = first? {
                merge.runs_of(i, &batch)?;
            }
        }
        let inputs = &merge.inputs;
        merge.tree = LoserTree::new(inputs.len(), |i| inputs[i].head());
        Ok(merge)
    }

    /// Meet `faults` (a `merge` rule's `drop_row`) for the table at
    /// `location`.
    pub fn with_faults(mut self, faults: Option<Arc<Faults>>, location: &str) -> Self {
        self.faults = faults.map(|f| (f, location.to_string()));
        self
    }

    /// Read input `i`'s next non-empty batch, the winner's, whose last
    /// head was the last key put out, and play its new head up the tree.
    async fn load(&mut self, i: usize) -> Result<()> {
        let input = &mut self.inputs[i];
        let last = input.batch.take();
        input.seek(0);
        if let Some(batch) = next_batch(&mut input.stream).await? {
            self.runs_of(i, &batch)?;
        }
        let next = match (self.inputs[i].head(), last) {
            (Some(head), Some(last)) => Some(
                tree::code(last.rows.value(last.len() - 1), head)
                    .ok_or_else(|| self.out_of_order(i))?,
            ),
            _ => None,
        };
        let inputs = &self.inputs;
        self.tree.advance(next, |j| inputs[j].head());
        Ok(())
    }

    /// The error of input `i` found out of key order.
    fn out_of_order(&self, i: usize) -> Error {
        let input = self.inputs[i].name.clone();
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{input} is not in the table's key order (dimensions, then `ts`): a row \
                 sorts before the one ahead of it, though the file's manifest entry says \
                 its rows are sorted; nothing was committed"
            ),
        )
        .with_source(OutOfOrder { input })
    }

    /// Make `batch` input `i`'s current one, as runs.
    fn runs_of(&mut self, i: usize, batch: &RecordBatch) -> Result<()> {
        let input = &mut self.inputs[i];
        self.rows_read += batch.num_rows() as u64;
        let runs = runs::collapse(
            batch,
            &self.layout,
            &mut self.converters,
            &input.name,
            &mut self.read[i],
        )?;
        input.batch = Some(Arc::new(runs));
        input.seek(0);
        Ok(())
    }

    /// Merge rows into `chunk` until it is full, an input needs its next
    /// batch, or every input is done. A full chunk ends only between keys,
    /// so rows of one key always fold into one output row.
    fn fill(&mut self, chunk: &mut Chunk) -> Step {
        let max_batches = 2 * self.inputs.len().max(8);
        loop {
            let (i, some) = self.tree.winner();
            if !some {
                return Step::Done;
            }
            let input = &mut self.inputs[i];
            let batch = input.batch.as_ref().expect("the winner has a batch");
            // The last key put out is the chunk's last, if it has one.
            let same = !chunk.starts.is_empty() && self.tree.winner_repeats();
            // Full at a batch's worth of keys or of rows read, or once the
            // chunk holds two batches per input (memory stays bounded by
            // the inputs).
            if !same
                && (chunk.starts.len() >= OUT_BATCH
                    || chunk.picks.len() >= PICKS
                    || chunk.batches.len() >= max_batches)
            {
                return Step::Full;
            }
            let slot = *chunk.slot[i].get_or_insert_with(|| {
                chunk.batches.push(batch.clone());
                chunk.batches.len() - 1
            });
            if !same {
                chunk.starts.push(chunk.picks.len() as u32);
            }
            chunk.picks.push((slot, input.pos));
            if input.pos + 1 == batch.len() {
                chunk.slot[i] = None;
                return Step::Refill(i);
            }
            let next = batch.next[input.pos];
            if next == tree::OUT_OF_ORDER {
                return Step::OutOfOrder(i);
            }
            input.seek(input.pos + 1);
            let inputs = &self.inputs;
            self.tree.advance(Some(next), |j| inputs[j].head());
        }
    }

    /// The next batch of merged rows (in the table's current schema), or
    /// `None` when every input is done.
    pub async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let mut chunk = Chunk::new(self.inputs.len());
        loop {
            match self.fill(&mut chunk) {
                Step::Refill(i) => self.load(i).await?,
                Step::OutOfOrder(i) => return Err(self.out_of_order(i)),
                Step::Full | Step::Done => break,
            }
        }
        if let Some((faults, location)) = &self.faults
            && let Decision::Inject(Fault::DropRow, _) =
                faults.decide(Op::Merge, faults::Step::Data, location)
            && let Some(start) = chunk.starts.pop()
        {
            chunk.picks.truncate(start as usize);
        }
        if chunk.picks.is_empty() {
            return Ok(None);
        }
        self.build(&chunk).map(Some)
    }

    /// Whether the rows merged so far hold the totals of the rows read,
    /// day by day: the first day and measure that differ, with what was
    /// read and what was merged. Checked before a merge's output is
    /// committed, so that no bug in the merge (or a file read wrong) can
    /// change a total.
    pub fn unconserved(&self) -> Option<(i32, String, Total, Total)> {
        let mut read = self.written.emptied();
        for t in self.read_by_input() {
            read.absorb(t);
        }
        read.differs(&self.written)
    }

    /// Per input as given (each file of a merge that spilled runs), the
    /// totals of the rows read from it so far.
    pub fn read_by_input(&self) -> Vec<&DayTotals> {
        let merged = self.upstream.as_ref().map_or(&self.read, |(t, _)| t);
        let Some(order) = &self.order else {
            return merged.iter().collect();
        };
        let mut given = vec![None; merged.len()];
        for (read, &i) in merged.iter().zip(order) {
            given[i] = Some(read);
        }
        given.into_iter().flatten().collect()
    }

    /// The totals of the rows merged so far.
    pub fn written(&self) -> &DayTotals {
        &self.written
    }

    /// Rows read from the files merged, so far.
    pub fn rows_read(&self) -> u64 {
        self.upstream.as_ref().map_or(self.rows_read, |(_, n)| *n)
    }

    fn build(&mut self, chunk: &Chunk) -> Result<RecordBatch> {
        let layout = &self.layout;
        let gathered = |j: usize| -> Result<Values> {
            let arrays: Vec<&dyn Array> = chunk
                .batches
                .iter()
                .map(|b| b.measures[j].as_array())
                .collect();
            Ok(Values::of(&arrow_select::interleave::interleave(
                &arrays,
                &chunk.picks,
            )?))
        };
        let measures = 0..layout.measures.len();
        // Every key one row read (nothing folds): the rows read are the
        // output's. Otherwise each key's rows are folded straight from the
        // batches, or, should a fold leave the exact range, gathered in
        // merge order and folded row by row, splitting the row.
        let direct = || -> Option<Vec<Values>> {
            let (batches, picks, starts) = (&chunk.batches, &chunk.picks, &chunk.starts);
            measures
                .clone()
                .map(|j| runs::fold_picks(batches, j, picks, starts, layout.aggs[j]))
                .collect()
        };
        let (heads, measures): (Vec<(usize, usize)>, Vec<Values>) =
            if chunk.starts.len() == chunk.picks.len() {
                (
                    chunk.picks.clone(),
                    measures.map(gathered).collect::<Result<_>>()?,
                )
            } else if let Some(folded) = direct() {
                let heads = chunk.starts.iter().map(|&h| chunk.picks[h as usize]);
                (heads.collect(), folded)
            } else {
                let read: Vec<Values> = measures.map(gathered).collect::<Result<_>>()?;
                let (heads, folded) = runs::fold_runs(
                    &chunk.starts,
                    chunk.picks.len(),
                    &read,
                    &layout.aggs,
                    &layout.spec,
                );
                let heads = heads.iter().map(|&h| chunk.picks[h as usize]);
                (heads.collect(), folded)
            };
        let n = heads.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(layout.sources.len());
        let mut ts = None;
        for (field, source) in layout.schema.fields().iter().zip(&layout.sources) {
            columns.push(match *source {
                Source::Key(k) => {
                    let key = chunk.key_column(k, layout.key_type(k), &heads)?;
                    if k == layout.dims.len() {
                        ts = Some(key.clone());
                    }
                    key
                }
                Source::Measure(j) => measures[j].array(),
                Source::Grain => {
                    let grain: ArrayRef =
                        Arc::new(StringArray::from(vec![layout.grain.as_str(); n]));
                    arrow_cast::cast(&grain, field.data_type())?
                }
                Source::Null => new_null_array(field.data_type(), n),
            });
        }
        let ts = ts.expect("the layout writes `ts`");
        let measures: Vec<ArrayRef> = measures.iter().map(Values::array).collect();
        self.written.add_batch(
            ts.as_primitive::<arrow_array::types::TimestampMicrosecondType>()
                .values(),
            &measures,
        );
        Ok(RecordBatch::try_new(layout.schema.clone(), columns)?)
    }
}

/// Rows per read batch of each of `inputs` inputs.
fn batch_rows(inputs: usize) -> usize {
    (READ_ROWS / inputs.max(1)).clamp(256, READ_BATCH)
}

/// The next non-empty batch of `stream`.
async fn next_batch(stream: &mut BatchStream) -> Result<Option<RecordBatch>> {
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() > 0 {
            return Ok(Some(batch));
        }
    }
    Ok(None)
}

/// An arrow schema handle for writers of merged rows.
pub fn arrow_schema(table: &TableHandle) -> Result<arrow_schema::SchemaRef> {
    Ok(Arc::new(
        iceberg::arrow::schema_to_arrow_schema(table.metadata.current_schema())
            .map_err(|e| Error::iceberg(format!("arrow schema of {}", table.ident), e))?,
    ))
}
