//! Kafka metadata every front end needs: the partitions and watermarks of a
//! topic (lag in `firn status`, `--reset-offsets earliest|latest` in ingest).

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

/// `partition -> (low, high)` watermarks of `topic`.
pub async fn watermarks(source: &KafkaSource, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>> {
    let source = source.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || blocking(&source, &topic))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "reading watermarks").with_source(e))?
}

fn blocking(source: &KafkaSource, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &source.brokers)
        // Required by librdkafka for a consumer; this one never joins it.
        .set(
            "group.id",
            format!("firn-status-{}", uuid::Uuid::now_v7().simple()),
        )
        .set("enable.auto.commit", "false");
    for (k, v) in &source.properties {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create()?;
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
