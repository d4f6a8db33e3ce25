//! The rejects table beside each table (`<name>_rejects`): every record that
//! could not be ingested, with its raw payload, Kafka position and reason.
//! Records are never dropped silently.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};

use crate::error::{Error, Result};
use crate::events::{Origin, RejectReason};

/// One rejected record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectRecord {
    /// Source topic (or input file, for backfills).
    pub topic: String,
    /// Kafka partition (-1 for files).
    pub partition: i32,
    /// Kafka offset (line number for files).
    pub offset: i64,
    /// When firn rejected it, microseconds since the epoch.
    pub rejected_at_micros: i64,
    /// Bounded reason code (`not_json`, `missing_field`, ...).
    pub reason_code: String,
    /// Human-readable reason naming the field at fault.
    pub reason: String,
    /// The raw record payload.
    pub payload: Vec<u8>,
}

impl RejectRecord {
    /// `payload`, read at `origin`, rejected for `reason` at `rejected_at_micros`.
    /// A file line is recorded as topic = the file, partition -1, offset = the line.
    pub fn new(
        origin: Origin<'_>,
        payload: &[u8],
        reason: &RejectReason,
        rejected_at_micros: i64,
    ) -> Self {
        let (topic, partition, offset) = match origin {
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => (topic, partition, offset),
            Origin::Line { file, line } => (file, -1, line),
        };
        Self {
            topic: topic.to_string(),
            partition,
            offset,
            rejected_at_micros,
            reason_code: reason.as_label().to_string(),
            reason: reason.to_string(),
            payload: payload.to_vec(),
        }
    }
}

/// Schema of every rejects table.
pub fn schema() -> Result<Schema> {
    let p = |t| Type::Primitive(t);
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            NestedField::required(1, "topic", p(PrimitiveType::String)).into(),
            NestedField::required(2, "partition", p(PrimitiveType::Int)).into(),
            NestedField::required(3, "offset", p(PrimitiveType::Long)).into(),
            NestedField::required(4, "rejected_at", p(PrimitiveType::Timestamptz)).into(),
            NestedField::required(5, "reason_code", p(PrimitiveType::String)).into(),
            NestedField::required(6, "reason", p(PrimitiveType::String)).into(),
            NestedField::optional(7, "payload", p(PrimitiveType::Binary)).into(),
        ])
        .build()
        .map_err(|e| Error::iceberg("rejects schema", e))
}

/// Rejects as one Arrow batch in the rejects table's schema.
pub fn to_batch(
    arrow_schema: arrow_schema::SchemaRef,
    rejects: &[RejectRecord],
) -> Result<RecordBatch> {
    let tz = match arrow_schema.field(3).data_type() {
        arrow_schema::DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rejects.iter().map(|r| r.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            rejects.iter().map(|r| r.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            rejects.iter().map(|r| r.offset),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rejects.iter().map(|r| r.rejected_at_micros),
            )
            .with_timezone_opt(tz),
        ),
        Arc::new(StringArray::from_iter_values(
            rejects.iter().map(|r| r.reason_code.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rejects.iter().map(|r| r.reason.as_str()),
        )),
        Arc::new(LargeBinaryArray::from_iter_values(
            rejects.iter().map(|r| r.payload.as_slice()),
        )),
    ];
    Ok(RecordBatch::try_new(arrow_schema, columns)?)
}
