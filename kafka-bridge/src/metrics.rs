//! Counters of the bridge, readable without locks and written out in the
//! Prometheus text format by the broker's `/metrics` endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Bridge counters. Replays of retained messages are counted by the broker,
/// which does the replaying.
#[derive(Debug, Default)]
pub struct BridgeMetrics {
    pub(crate) records_consumed: AtomicU64,
    pub(crate) routed: AtomicU64,
    pub(crate) unroutable: AtomicU64,
    pub(crate) sink_full: AtomicU64,
    pub(crate) paused_partitions: AtomicI64,
    pub(crate) produced: AtomicU64,
    pub(crate) produce_failures: AtomicU64,
    pub(crate) consumer_errors: AtomicU64,
    pub(crate) retained_rebuilt: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    /// (topic, partition) → lag in records, from librdkafka statistics.
    pub(crate) lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl BridgeMetrics {
    /// Records received from Kafka.
    pub fn records_consumed(&self) -> u64 {
        self.records_consumed.load(Ordering::Relaxed)
    }
    /// Messages accepted by the sink (one record may give several, one per route).
    pub fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }
    /// Record × route pairs that could not be mapped and were skipped.
    pub fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }
    /// Times the sink answered [`crate::NotAccepting`].
    pub fn sink_full(&self) -> u64 {
        self.sink_full.load(Ordering::Relaxed)
    }
    /// Partitions paused right now because the sink was full.
    pub fn paused_partitions(&self) -> i64 {
        self.paused_partitions.load(Ordering::Relaxed)
    }
    /// SENDs acknowledged by Kafka.
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }
    /// SENDs that failed (not an app destination, bad topic, Kafka error or timeout).
    pub fn produce_failures(&self) -> u64 {
        self.produce_failures.load(Ordering::Relaxed)
    }
    /// Errors reported by the consumer (connection, unknown topic, ...).
    pub fn consumer_errors(&self) -> u64 {
        self.consumer_errors.load(Ordering::Relaxed)
    }
    /// Last known lag of one assigned partition (records between the committed
    /// or consumed position and the high watermark).
    pub fn partition_lag(&self, topic: &str, partition: i32) -> Option<i64> {
        self.lag
            .lock()
            .ok()?
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// Last known lag of every assigned partition.
    pub fn lag_snapshot(&self) -> BTreeMap<(String, i32), i64> {
        self.lag.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub(crate) fn set_lag(&self, lag: BTreeMap<(String, i32), i64>) {
        if let Ok(mut l) = self.lag.lock() {
            *l = lag;
        }
    }

    /// Messages put back into the broker's retained store from Kafka after
    /// a restart or a new partition assignment (retain-only, not delivered).
    pub fn retained_rebuilt(&self) -> u64 {
        self.retained_rebuilt.load(Ordering::Relaxed)
    }

    /// Records over the broker's message limit produced to the dead-letter
    /// topic (they are counted as unroutable too).
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Appends the metrics in the Prometheus text exposition format.
    pub fn write_prometheus(&self, out: &mut String) {
        let counters: [(&str, &str, u64); 9] = [
            (
                "kafka_bridge_records_consumed_total",
                "Records received from Kafka.",
                self.records_consumed(),
            ),
            (
                "kafka_bridge_routed_total",
                "Messages accepted by the broker.",
                self.routed(),
            ),
            (
                "kafka_bridge_unroutable_total",
                "Record/route pairs skipped as unroutable (no destination, or over the broker's message limit).",
                self.unroutable(),
            ),
            (
                "kafka_bridge_sink_full_total",
                "Times the broker did not accept a message (partition paused, offset not stored).",
                self.sink_full(),
            ),
            (
                "kafka_bridge_produced_total",
                "SENDs acknowledged by Kafka.",
                self.produced(),
            ),
            (
                "kafka_bridge_produce_failures_total",
                "SENDs that failed.",
                self.produce_failures(),
            ),
            (
                "kafka_bridge_consumer_errors_total",
                "Errors reported by the Kafka consumer.",
                self.consumer_errors(),
            ),
            (
                "kafka_bridge_retained_rebuilt_total",
                "Messages re-read from Kafka into the retained store after a restart or assignment.",
                self.retained_rebuilt(),
            ),
            (
                "kafka_bridge_dead_lettered_total",
                "Records over the broker's message limit produced to the dead-letter topic.",
                self.dead_lettered(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP kafka_bridge_paused_partitions Partitions paused because the broker queue is full.\n\
             # TYPE kafka_bridge_paused_partitions gauge\nkafka_bridge_paused_partitions {}",
            self.paused_partitions()
        );
        let _ = writeln!(
            out,
            "# HELP kafka_bridge_consumer_lag Records behind the high watermark, per assigned partition.\n\
             # TYPE kafka_bridge_consumer_lag gauge"
        );
        if let Ok(lag) = self.lag.lock() {
            for ((topic, partition), v) in lag.iter() {
                let _ = writeln!(
                    out,
                    "kafka_bridge_consumer_lag{{topic=\"{}\",partition=\"{partition}\"}} {v}",
                    escape_label(topic)
                );
            }
        }
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_output_has_counters_and_lag_lines() {
        let m = BridgeMetrics::default();
        m.records_consumed.fetch_add(3, Ordering::Relaxed);
        m.set_lag(BTreeMap::from([(("orders".to_owned(), 1), 7)]));
        let mut out = String::new();
        m.write_prometheus(&mut out);
        assert!(
            out.contains("\nkafka_bridge_records_consumed_total 3\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE kafka_bridge_routed_total counter\n"));
        assert!(out.contains("kafka_bridge_consumer_lag{topic=\"orders\",partition=\"1\"} 7\n"));
        assert_eq!(m.partition_lag("orders", 1), Some(7));
        assert_eq!(m.partition_lag("orders", 0), None);
    }
}
