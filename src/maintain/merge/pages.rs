//! The pages of a Parquet file held in memory, for Parquet's Arrow reader,
//! with zstd pages decompressed through one context per thread. Parquet's
//! own page reader makes a zstd compression and a decompression context for
//! every column chunk it opens (about 15 µs each): a compaction of 1,440
//! minute files opens some 13,000 column chunks, and making contexts was a
//! quarter of its time. Here a zstd column chunk is read as uncompressed
//! (Parquet then only splits it into pages) and each page's values are
//! decompressed with the thread's context; a chunk of any other codec is read
//! by Parquet as it stands.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReader};
use parquet::arrow::{ProjectionMask, parquet_to_arrow_field_levels};
use parquet::basic::Compression;
use parquet::column::page::{Page, PageIterator, PageMetadata, PageReader};
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ColumnChunkMetaData, ParquetMetaData, RowGroupMetaData};
use parquet::file::serialized_reader::SerializedPageReader;
use zstd::zstd_safe::{DCtx, InBuffer, OutBuffer};

/// Bytes a page may decompress to, whatever its chunk's metadata says.
const MIN_BOUND: usize = 8 << 20;

thread_local! {
    /// This thread's zstd decompression context, made on first use.
    static CONTEXT: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// A whole file's bytes and its metadata, as Parquet's [`RowGroups`]
/// (every row group of the file).
///
/// [`RowGroups`]: parquet::arrow::arrow_reader::RowGroups
pub(super) struct InMemory {
    bytes: Arc<Bytes>,
    metadata: Arc<ParquetMetaData>,
}

impl InMemory {
    pub(super) fn new(bytes: Bytes, metadata: Arc<ParquetMetaData>) -> Self {
        Self {
            bytes: Arc::new(bytes),
            metadata,
        }
    }
}

/// A reader of the columns `mask` of the file `bytes` (whose metadata,
/// with the Arrow types to read it as, is `found`), `batch_rows` rows at a
/// time.
pub(super) fn reader(
    bytes: Bytes,
    found: &ArrowReaderMetadata,
    mask: ProjectionMask,
    batch_rows: usize,
) -> Result<ParquetRecordBatchReader> {
    let levels =
        parquet_to_arrow_field_levels(found.parquet_schema(), mask, Some(found.schema().fields()))?;
    let rows = found.metadata().file_metadata().num_rows();
    let pages = InMemory::new(bytes, found.metadata().clone());
    ParquetRecordBatchReader::try_new_with_row_groups(
        &levels,
        &pages,
        batch_rows.min(usize::try_from(rows).unwrap_or(0).max(1)),
        None,
    )
}

impl parquet::arrow::arrow_reader::RowGroups for InMemory {
    fn num_rows(&self) -> usize {
        self.metadata
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as usize)
            .sum()
    }

    fn column_chunks(&self, i: usize) -> Result<Box<dyn PageIterator>> {
        Ok(Box::new(Chunks {
            bytes: self.bytes.clone(),
            metadata: self.metadata.clone(),
            column: i,
            next: 0,
        }))
    }

    fn row_groups(&self) -> Box<dyn Iterator<Item = &RowGroupMetaData> + '_> {
        Box::new(self.metadata.row_groups().iter())
    }

    fn metadata(&self) -> &ParquetMetaData {
        &self.metadata
    }
}

/// One column's chunks, row group by row group.
struct Chunks {
    bytes: Arc<Bytes>,
    metadata: Arc<ParquetMetaData>,
    column: usize,
    next: usize,
}

impl Chunks {
    fn open(&self, group: usize) -> Result<Box<dyn PageReader>> {
        let rg = self.metadata.row_group(group);
        let chunk = rg.column(self.column);
        let locations = self
            .metadata
            .offset_index()
            .and_then(|i| i.get(group))
            .filter(|i| !i.is_empty())
            .map(|i| i[self.column].page_locations.clone());
        let rows = rg.num_rows() as usize;
        if !matches!(chunk.compression(), Compression::ZSTD(_)) {
            return Ok(Box::new(SerializedPageReader::new(
                self.bytes.clone(),
                chunk,
                rows,
                locations,
            )?));
        }
        // A page is no larger than its chunk, as the chunk's metadata says
        // (or a few MiB, should a writer have put too small a size there).
        let bound = usize::try_from(chunk.uncompressed_size())
            .unwrap_or(0)
            .max(MIN_BOUND);
        let stored = uncompressed(chunk)?;
        Ok(Box::new(Unzstd {
            pages: SerializedPageReader::new(self.bytes.clone(), &stored, rows, locations)?,
            bound,
        }))
    }
}

impl Iterator for Chunks {
    type Item = Result<Box<dyn PageReader>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.metadata.num_row_groups() {
            return None;
        }
        self.next += 1;
        Some(self.open(self.next - 1))
    }
}

impl PageIterator for Chunks {}

/// `chunk`'s metadata, marked uncompressed.
fn uncompressed(chunk: &ColumnChunkMetaData) -> Result<ColumnChunkMetaData> {
    chunk
        .clone()
        .into_builder()
        .set_compression(Compression::UNCOMPRESSED)
        .build()
}

/// The pages of a zstd column chunk, decompressed.
struct Unzstd {
    pages: SerializedPageReader<Bytes>,
    /// The chunk's uncompressed size: no page is larger.
    bound: usize,
}

impl Unzstd {
    fn decompressed(&self, mut page: Page) -> Result<Page> {
        match &mut page {
            Page::DataPage { buf, .. } | Page::DictionaryPage { buf, .. } => {
                *buf = decompress(buf, 0, self.bound)?;
            }
            Page::DataPageV2 {
                buf,
                def_levels_byte_len,
                rep_levels_byte_len,
                is_compressed,
                ..
            } => {
                // The levels are stored uncompressed before the values.
                let levels = *def_levels_byte_len as usize + *rep_levels_byte_len as usize;
                if levels > buf.len() {
                    return Err(ParquetError::General(format!(
                        "a data page's levels ({levels} bytes) are longer than the page ({} \
                         bytes)",
                        buf.len()
                    )));
                }
                if *is_compressed {
                    *buf = decompress(buf, levels, self.bound)?;
                }
            }
        }
        Ok(page)
    }
}

impl Iterator for Unzstd {
    type Item = Result<Page>;

    fn next(&mut self) -> Option<Self::Item> {
        self.get_next_page().transpose()
    }
}

impl PageReader for Unzstd {
    fn get_next_page(&mut self) -> Result<Option<Page>> {
        match self.pages.get_next_page()? {
            Some(page) => self.decompressed(page).map(Some),
            None => Ok(None),
        }
    }

    fn peek_next_page(&mut self) -> Result<Option<PageMetadata>> {
        self.pages.peek_next_page()
    }

    fn skip_next_page(&mut self) -> Result<()> {
        self.pages.skip_next_page()
    }

    fn at_record_boundary(&mut self) -> Result<bool> {
        self.pages.at_record_boundary()
    }
}

fn zstd_error(what: &str, code: usize) -> ParquetError {
    ParquetError::General(format!(
        "zstd: {what}: {}",
        zstd::zstd_safe::get_error_name(code)
    ))
}

/// `page` with the bytes after its first `keep` decompressed, at most
/// `bound` bytes in all. A frame that states its size is decompressed in one
/// call; otherwise (or when more frames follow) the page is streamed.
fn decompress(page: &Bytes, keep: usize, bound: usize) -> Result<Bytes> {
    let (head, frames) = page.split_at(keep);
    if frames.is_empty() {
        return Ok(page.clone());
    }
    CONTEXT.with_borrow_mut(|context| {
        let context = context.get_or_insert_with(DCtx::create);
        let mut out = Vec::new();
        if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(frames)
            && let Ok(size) = usize::try_from(size)
            && keep + size <= bound
        {
            // Into the Vec's spare room when nothing is kept (a one-shot
            // decompression writes from the start of its buffer), else after
            // the kept bytes.
            let done = if keep == 0 {
                out.reserve_exact(size);
                context.decompress(&mut out, frames)
            } else {
                out.resize(keep + size, 0);
                out[..keep].copy_from_slice(head);
                context.decompress(&mut out[keep..], frames)
            };
            if done == Ok(size) {
                return Ok(Bytes::from(out));
            }
            out.clear();
        }
        context
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(|c| zstd_error("resetting the context", c))?;
        out.reserve((keep + 4 * frames.len()).min(bound.max(keep)));
        out.extend_from_slice(head);
        let mut input = InBuffer::around(frames);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= bound {
                    return Err(ParquetError::General(format!(
                        "zstd: a page decompresses to more than its column chunk's \
                         {bound} bytes"
                    )));
                }
                out.reserve(out.len().max(4096).min(bound - out.len()));
            }
            let (at, read) = (out.len(), input.pos());
            let mut output = OutBuffer::around_pos(&mut out, at);
            let hint = context
                .decompress_stream(&mut output, &mut input)
                .map_err(|c| zstd_error("decompressing a page", c))?;
            let moved = output.pos() > at || input.pos() > read;
            let consumed = input.pos() == frames.len();
            // Done when the last frame ends with the input; stuck when a
            // call with room to write neither reads nor writes.
            if consumed && hint == 0 {
                break;
            }
            if !moved {
                return Err(ParquetError::General(
                    "zstd: a page ends inside a frame".to_string(),
                ));
            }
        }
        Ok(Bytes::from(out))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::{WriterProperties, WriterVersion};
    use proptest::prelude::*;

    use super::*;

    /// A file of `rows` (a long column with nulls, a string column of few
    /// values, and a plain long column) written with `compression` and
    /// pages of `page_rows` rows.
    fn file(
        rows: &[(Option<i64>, Option<String>, i64)],
        compression: Compression,
        v2: bool,
        dictionary: bool,
        page_rows: usize,
    ) -> Bytes {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.1.clone()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| Some(r.2)).collect::<Int64Array>()),
        ];
        let batch = RecordBatch::try_from_iter(["a", "s", "b"].into_iter().zip(columns)).unwrap();
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_writer_version(if v2 {
                WriterVersion::PARQUET_2_0
            } else {
                WriterVersion::PARQUET_1_0
            })
            .set_dictionary_enabled(dictionary)
            .set_data_page_row_count_limit(page_rows)
            .set_write_batch_size(page_rows)
            .set_max_row_group_row_count(Some(rows.len().div_ceil(2).max(1)))
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(out)
    }

    /// Every batch of `bytes` read through [`InMemory`], with `columns`.
    fn read_here(bytes: &Bytes, columns: &[usize]) -> Result<Vec<RecordBatch>> {
        let found = ArrowReaderMetadata::load(bytes, ArrowReaderOptions::new())?;
        let mask = ProjectionMask::roots(found.parquet_schema(), columns.iter().copied());
        reader(bytes.clone(), &found, mask, 100)?
            .map(|b| b.map_err(|e| ParquetError::External(Box::new(e))))
            .collect()
    }

    /// Every batch of `bytes` read by Parquet's own reader.
    fn read_there(bytes: &Bytes, columns: &[usize]) -> Vec<RecordBatch> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).unwrap();
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
        builder
            .with_projection(mask)
            .with_batch_size(100)
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    fn rows() -> impl Strategy<Value = Vec<(Option<i64>, Option<String>, i64)>> {
        prop::collection::vec(
            (
                prop::option::of(-5i64..5),
                prop::option::of(prop::sample::select(vec!["AMS", "FRA", "東京-1", ""]))
                    .prop_map(|s| s.map(str::to_string)),
                any::<i64>(),
            ),
            1..700,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Whatever the codec, page version, encoding, page size and
        /// columns read, the pages read here decode to what Parquet's own
        /// reader decodes.
        #[test]
        fn files_read_here_read_as_parquet_reads_them(
            rows in rows(),
            codec in prop::sample::select(vec![0u8, 1, 2]),
            v2 in any::<bool>(),
            dictionary in any::<bool>(),
            page_rows in 1usize..300,
            columns in prop::sample::subsequence(vec![0usize, 1, 2], 1..=3),
        ) {
            let compression = match codec {
                0 => Compression::ZSTD(ZstdLevel::default()),
                1 => Compression::ZSTD(ZstdLevel::try_new(19).unwrap()),
                _ => Compression::UNCOMPRESSED,
            };
            let bytes = file(&rows, compression, v2, dictionary, page_rows);
            let here = read_here(&bytes, &columns).unwrap();
            prop_assert_eq!(here, read_there(&bytes, &columns));
        }
    }

    fn frame(data: &[u8], with_size: bool) -> Vec<u8> {
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        encoder.include_contentsize(with_size).unwrap();
        if with_size {
            encoder
                .set_pledged_src_size(Some(data.len() as u64))
                .unwrap();
        }
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn frames_with_and_without_their_size_and_several_in_a_row_decompress() {
        let (one, two) = (data(100_000), data(3_000));
        for with_size in [true, false] {
            let page = Bytes::from(frame(&one, with_size));
            assert_eq!(decompress(&page, 0, MIN_BOUND).unwrap(), one);
        }
        // Levels kept as they are, two frames after them.
        let mut page = b"LEVELS".to_vec();
        page.extend(frame(&one, true));
        page.extend(frame(&two, false));
        let out = decompress(&Bytes::from(page), 6, MIN_BOUND).unwrap();
        assert_eq!(&out[..6], b"LEVELS");
        assert_eq!(out[6..], [one.as_slice(), two.as_slice()].concat());
        // Nothing after the levels: the page as it is.
        let page = Bytes::from_static(b"LEVELS");
        assert_eq!(decompress(&page, 6, MIN_BOUND).unwrap(), page);
    }

    #[test]
    fn a_cut_frame_garbage_and_a_page_past_the_bound_are_errors() {
        let whole = frame(&data(50_000), false);
        let cut = Bytes::copy_from_slice(&whole[..whole.len() / 2]);
        let e = decompress(&cut, 0, MIN_BOUND).unwrap_err().to_string();
        assert!(e.contains("ends inside a frame"), "{e}");
        let garbage = Bytes::from_static(b"not a zstd frame at all");
        let e = decompress(&garbage, 0, MIN_BOUND).unwrap_err().to_string();
        assert!(e.contains("zstd: decompressing a page"), "{e}");
        for with_size in [true, false] {
            let page = Bytes::from(frame(&data(50_000), with_size));
            let e = decompress(&page, 0, 10_000).unwrap_err().to_string();
            assert!(
                e.contains("more than its column chunk's 10000 bytes"),
                "{e}"
            );
        }
    }
}
