//! Kafka bridge
