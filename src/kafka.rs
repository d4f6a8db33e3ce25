//! The Kafka client configuration every firn client is built from (ingest,
//! backfill replays, `firn produce`, `firn status`), and the metadata every
//! front end needs: the partitions and watermarks of a topic (lag in
//! `firn status`, `--reset-offsets earliest|latest` in ingest).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::error::{Error, ErrorKind, Result};

/// Where the topics are.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// Bootstrap servers.
    pub brokers: String,
    /// Extra librdkafka properties (security settings).
    pub properties: BTreeMap<String, String>,
    /// How long to wait for the broker.
    pub timeout: Duration,
}

/// The configuration of a client of `brokers`: the settings its role needs,
/// then the operator's librdkafka `properties` (security settings, tuning),
/// which win over firn's.
pub fn client_config(
    brokers: &str,
    settings: &[(&str, &str)],
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

/// The configuration of a consumer in `group` whose offsets the table owns:
/// librdkafka neither commits nor stores offsets, a partition without a
/// position starts at its beginning, and no end-of-partition events; then
/// the role's `settings` and the operator's `properties`, as
/// [`client_config`].
pub fn consumer_config(
    brokers: &str,
    group: &str,
    settings: &[(&str, &str)],
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let consumer = [
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
    ];
    client_config(brokers, &[&consumer[..], settings].concat(), properties)
}

/// A consumer group of its own for a client that never joins it (librdkafka
/// wants a group id to fetch): `firn-<role>-<unique>`.
pub fn unshared_group(role: &str) -> String {
    format!("firn-{role}-{}", uuid::Uuid::now_v7().simple())
}

/// `partition -> (low, high)` watermarks of `topic`.
pub async fn watermarks(source: &KafkaSource, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>> {
    let source = source.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || blocking(&source, &topic))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "reading watermarks").with_source(e))?
}

fn blocking(source: &KafkaSource, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>> {
    let group = unshared_group("status");
    let settings = [
        ("group.id", group.as_str()),
        ("enable.auto.commit", "false"),
    ];
    let consumer: BaseConsumer =
        client_config(&source.brokers, &settings, &source.properties).create()?;
    let meta = consumer.fetch_metadata(Some(topic), source.timeout)?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "topic {topic} has no partitions on {} (does it exist?)",
                source.brokers
            ),
        ));
    }
    partitions
        .into_iter()
        .map(|p| Ok((p, consumer.fetch_watermarks(topic, p, source.timeout)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;

    /// Managed Kafka services need TLS and SASL, and producers often
    /// compress with zstd: the client must be built with all three.
    #[test]
    fn the_kafka_client_speaks_tls_sasl_scram_and_zstd() {
        let consumer: Result<BaseConsumer, _> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "firn-test")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanisms", "SCRAM-SHA-512")
            .set("sasl.username", "firn")
            .set("sasl.password", "secret")
            .create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
        let producer: Result<BaseProducer, _> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("compression.codec", "zstd")
            .create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }
}
