//! `firn produce`: a seeded load generator for a declared table. It writes
//! realistic events (and, on request, malformed ones) to the table's topic and
//! returns the exact totals of what it produced, so a person or a test can
//! compare them with the table.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::kafka;
use crate::rows::{MeasureSpec, MeasureValue, Measures};
use crate::schema::decl::{Agg, DimType, MeasureType, TableDecl};

/// What to produce.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Topic (defaults to the declaration's).
    pub topic: Option<String>,
    /// Events to send.
    pub count: u64,
    /// Events per second (`None`: as fast as the broker takes them).
    pub rate: Option<u64>,
    /// RNG seed: the same seed gives the same events (times are relative to now).
    pub seed: u64,
    /// Share of malformed records, 0..1.
    pub bad_ratio: f64,
    /// Event times are spread over this window before now.
    pub spread: Duration,
    /// Distinct values of the first long dimension (accounts).
    pub accounts: i64,
    /// Extra librdkafka properties.
    pub kafka: BTreeMap<String, String>,
}

impl Default for ProduceOptions {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: None,
            count: 10_000,
            rate: None,
            seed: 1,
            bad_ratio: 0.0,
            spread: Duration::from_secs(2 * 3600),
            accounts: 1000,
            kafka: BTreeMap::new(),
        }
    }
}

/// Exact totals of what was produced.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProduceReport {
    /// Topic written.
    pub topic: String,
    /// Records sent (valid and malformed).
    pub sent: u64,
    /// Valid events.
    pub valid: u64,
    /// Malformed records, which the table must reject.
    pub malformed: u64,
    /// Malformed records by the reject reason they must get.
    pub malformed_by_reason: BTreeMap<String, u64>,
    /// Per-measure totals of the valid events.
    pub totals: BTreeMap<String, Value>,
    /// Seconds spent producing.
    pub seconds: f64,
}

#[derive(Debug, Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

const COLOS: [&str; 8] = [
    "AMS",
    "FRA",
    "LHR",
    "SJC",
    "NRT",
    "ZRH",
    "Zürich-2",
    "東京-1",
];
const PRODUCTS: [&str; 5] = ["cdn", "waf", "workers", "r2", "dns"];

/// Create `topic` with `partitions` partitions unless it exists.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        kafka::client_config(brokers, &[], &BTreeMap::new()).create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(Error::new(
                    ErrorKind::Kafka,
                    format!("creating topic {t}: {code}"),
                ));
            }
        }
    }
    Ok(())
}

/// Generates events for one declaration.
#[derive(Debug)]
pub struct EventGenerator {
    decl: TableDecl,
    spec: MeasureSpec,
    rng: StdRng,
    accounts: i64,
    spread_ms: i64,
    bad_ratio: f64,
    /// Totals of the valid events generated so far.
    pub totals: Measures,
    /// Valid events so far.
    pub valid: u64,
    /// Malformed records by expected reason.
    pub malformed: BTreeMap<String, u64>,
}

impl EventGenerator {
    /// A generator seeded with `seed`.
    pub fn new(decl: &TableDecl, opts: &ProduceOptions) -> Self {
        let spec = MeasureSpec::new(decl);
        Self {
            totals: spec.empty(),
            spec,
            decl: decl.clone(),
            rng: StdRng::seed_from_u64(opts.seed),
            accounts: opts.accounts.max(1),
            spread_ms: opts.spread.as_millis().max(1) as i64,
            bad_ratio: opts.bad_ratio,
            valid: 0,
            malformed: BTreeMap::new(),
        }
    }

    /// The next record: its key and JSON payload.
    pub fn next(&mut self, now_ms: i64) -> (String, Vec<u8>) {
        let mut obj = Map::new();
        let ts = now_ms - self.rng.random_range(0..self.spread_ms);
        if self.rng.random_bool(0.5) {
            obj.insert(self.decl.event_time.clone(), json!(ts));
        } else {
            let t = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default();
            obj.insert(
                self.decl.event_time.clone(),
                json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
        }
        let mut key = String::new();
        for (i, d) in self.decl.dimensions.iter().enumerate() {
            if d.optional && self.rng.random_bool(0.1) {
                continue;
            }
            let v = match d.ty {
                DimType::Long if i == 0 => json!(self.rng.random_range(1..=self.accounts)),
                DimType::Long => json!(self.rng.random_range(1..=50i64)),
                DimType::String if i % 2 == 0 => {
                    json!(PRODUCTS[self.rng.random_range(0..PRODUCTS.len())])
                }
                DimType::String => json!(COLOS[self.rng.random_range(0..COLOS.len())]),
                DimType::Boolean => json!(self.rng.random_bool(0.5)),
            };
            if key.is_empty() {
                key = v.to_string();
            }
            obj.insert(d.field.clone(), v);
        }
        let mut values = Vec::with_capacity(self.decl.measures.len());
        for m in &self.decl.measures {
            let Some(field) = m.field.as_deref().filter(|_| m.agg != Agg::Count) else {
                values.push(None);
                continue;
            };
            if m.optional && self.rng.random_bool(0.1) {
                values.push(None);
                continue;
            }
            let (json, value) = match (m.ty, m.agg) {
                (MeasureType::Long, Agg::Sum) => {
                    let v = self.rng.random_range(0..100_000i64);
                    (json!(v), MeasureValue::Long(Some(v)))
                }
                (MeasureType::Long, _) => {
                    let v = self.rng.random_range(1..5_000i64);
                    (json!(v), MeasureValue::Long(Some(v)))
                }
                (MeasureType::Double, _) => {
                    // Quarter units: exactly representable, so sums stay exact.
                    let v = self.rng.random_range(0..4_000i64) as f64 / 4.0;
                    (json!(v), MeasureValue::Double(Some(v)))
                }
            };
            obj.insert(field.to_string(), json);
            values.push(Some(value));
        }
        obj.insert("request_id".into(), json!(self.rng.random::<u64>()));

        if self.bad_ratio > 0.0 && self.rng.random_bool(self.bad_ratio.min(1.0)) {
            let (reason, payload) = self.spoil(obj, now_ms);
            *self.malformed.entry(reason.to_string()).or_default() += 1;
            return (key, payload);
        }
        self.spec.add_event_saturating(&mut self.totals, &values);
        self.valid += 1;
        (key, Value::Object(obj).to_string().into_bytes())
    }

    /// Turn a good event into a malformed one, and say which reason it must get.
    fn spoil(&mut self, mut obj: Map<String, Value>, now_ms: i64) -> (&'static str, Vec<u8>) {
        let required_dim = self.decl.dimensions.iter().find(|d| !d.optional).cloned();
        match self.rng.random_range(0..4) {
            0 => {
                let s = Value::Object(obj).to_string();
                ("not_json", s.as_bytes()[..s.len() / 2].to_vec())
            }
            1 if required_dim.is_some() => {
                let d = required_dim.unwrap_or_else(|| unreachable!());
                let wrong = match d.ty {
                    DimType::String => json!(12345),
                    _ => json!("not-a-number"),
                };
                obj.insert(d.field.clone(), wrong);
                ("wrong_type", Value::Object(obj).to_string().into_bytes())
            }
            2 => {
                obj.remove(&self.decl.event_time);
                ("missing_field", Value::Object(obj).to_string().into_bytes())
            }
            _ => {
                obj.insert(self.decl.event_time.clone(), json!(now_ms + 7 * 86_400_000));
                (
                    "too_far_in_future",
                    Value::Object(obj).to_string().into_bytes(),
                )
            }
        }
    }

    /// The report of `sent` events generated since `started`, sent to
    /// `topic` (or written to that file).
    fn report(&self, topic: String, sent: u64, started: Instant) -> ProduceReport {
        ProduceReport {
            topic,
            sent,
            valid: self.valid,
            malformed: self.malformed.values().sum(),
            malformed_by_reason: self.malformed.clone(),
            totals: self.totals_by_name(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Totals by measure name.
    pub fn totals_by_name(&self) -> BTreeMap<String, Value> {
        self.totals.by_name(&self.decl)
    }
}

/// Write `opts.count` generated events for `decl` to `path` as NDJSON, one
/// per line (gzip- or zstd-compressed when the name ends in `.gz` or
/// `.zst`): a backfill input with the same events and totals `produce`
/// would send.
pub fn produce_to_file(
    decl: &TableDecl,
    opts: &ProduceOptions,
    clock: Arc<dyn Clock>,
    path: &std::path::Path,
) -> Result<ProduceReport> {
    use std::io::Write;
    let io = |e: std::io::Error| {
        Error::new(ErrorKind::Io, format!("writing {}", path.display())).with_source(e)
    };
    let file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let name = path.to_string_lossy();
    let mut out: Box<dyn Write> = if name.ends_with(".gz") {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else if name.ends_with(".zst") {
        Box::new(zstd::Encoder::new(file, 3).map_err(io)?.auto_finish())
    } else {
        Box::new(file)
    };
    let mut generator = EventGenerator::new(decl, opts);
    let started = Instant::now();
    for _ in 0..opts.count {
        let (_, payload) = generator.next(clock.now().timestamp_millis());
        out.write_all(&payload).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)?;
    drop(out);
    Ok(generator.report(name.into_owned(), opts.count, started))
}

/// Produce `opts.count` events for `decl` and report their exact totals.
pub fn produce(
    decl: &TableDecl,
    opts: &ProduceOptions,
    clock: Arc<dyn Clock>,
) -> Result<ProduceReport> {
    let topic = opts.topic.clone().unwrap_or_else(|| decl.topic.clone());
    let settings = [
        ("linger.ms", "20"),
        ("batch.num.messages", "10000"),
        ("compression.type", "lz4"),
        ("enable.idempotence", "false"),
        ("acks", "all"),
    ];
    let producer: BaseProducer<DeliveryCounter> =
        kafka::client_config(&opts.brokers, &settings, &opts.kafka)
            .create_with_context(DeliveryCounter::default())?;
    let mut generator = EventGenerator::new(decl, opts);
    let started = Instant::now();
    let mut last_log = Instant::now();
    for i in 0..opts.count {
        if let Some(rate) = opts.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let (key, payload) = generator.next(clock.now().timestamp_millis());
        let mut record = BaseRecord::to(&topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        producer.poll(Duration::ZERO);
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::info!(sent = i + 1, of = opts.count, "producing");
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(Error::new(
            ErrorKind::Kafka,
            format!(
                "{failed} of {} records to {topic} were not delivered; totals would not match",
                opts.count
            ),
        ));
    }
    Ok(generator.report(topic, opts.count, started))
}
