//! Topics and configs for the Kafka tests.

// Each test binary uses part of this module.
#![allow(dead_code)]

use std::time::Duration;

use causeway_kafka::{ConsumerConfig, KafkaConfig, ProducerConfig, StartFrom};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

pub fn config(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.to_owned(),
        security: Default::default(),
        producer: ProducerConfig::default(),
        consumer: None,
        librdkafka: Default::default(),
        max_message_bytes: 900_000,
    }
}

pub fn consumer(group: &str, topic: &str, dead_letter: bool) -> ConsumerConfig {
    ConsumerConfig {
        group: group.to_owned(),
        topics: vec![topic.to_owned()],
        dead_letter_topic: dead_letter.then(|| format!("{topic}.dlq")),
        commit_interval: Duration::from_millis(200),
        start: StartFrom::Earliest,
        max_held_back: 1_000,
    }
}

/// Creates `topics` with `partitions` each through the admin API.
pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|(t, e)| format!("{t}: {e}"))?;
    }
    Ok(())
}
