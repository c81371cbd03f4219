//! Typed configuration of the bridge: one struct with serde defaults, filled by
//! a config file, the environment or the command line alike.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::template::{self, DestinationTemplate};

/// Configuration of the Kafka bridge.
///
/// Every field has a default (see [`BridgeConfig::default`]), so a TOML table
/// with only `brokers` and `routes` is a complete configuration.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BridgeConfig {
    /// Kafka bootstrap servers, comma separated (`bootstrap.servers`).
    /// Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Consumer group id. `None` (the default) means [`default_group_id`]:
    /// `stomp-broker-<hostname>`, one group **per broker node**, because every
    /// node must see every record to fan it out to its own subscribers.
    pub group_id: Option<String>,
    /// Where a fresh group (no committed offsets) starts reading. Default
    /// [`OffsetReset::Latest`]: a new node does not replay the topic's history.
    pub auto_offset_reset: OffsetReset,
    /// Kafka topic → STOMP destination routes. Several routes may read one topic.
    pub routes: Vec<RouteConfig>,
    /// STOMP destinations with this prefix are produced to Kafka: `/app/orders`
    /// goes to topic `orders`. Default `/app/`.
    pub app_prefix: String,
    /// SEND header whose value becomes the Kafka record key. Default `kafka-key`.
    pub key_header: String,
    /// Upper bound on one produce, from enqueue to broker acknowledgement
    /// (librdkafka `message.timeout.ms`). Default 10 s.
    #[serde(with = "duration")]
    pub produce_timeout: Duration,
    /// How often librdkafka reports statistics (consumer lag, broker states).
    /// Default 5 s.
    #[serde(with = "duration")]
    pub stats_interval: Duration,
    /// Upper bound on one rebuild of the broker's retained store: when the
    /// consumer is assigned partitions it did not have (at start, after a
    /// crash), it re-reads their records of the last `retain_ttl` up to the
    /// group's committed offset into the retained store, before consuming
    /// on. A rebuild still running after this long is cut short (logged);
    /// `0` disables it. Default 60 s.
    #[serde(with = "duration")]
    pub rebuild_timeout: Duration,
    /// Where records too large for the broker go: a record whose MESSAGE
    /// would exceed the broker's frame or body limit is never delivered;
    /// it is counted as unroutable, logged, and — when this is set —
    /// produced to this topic (original key, value and headers plus
    /// `dead-letter-*` headers) before its offset is stored. Default none
    /// (the record is skipped).
    pub dead_letter_topic: Option<String>,
    /// Records per second handed to the broker while the consumer is
    /// catching up (records older than 2 s: a backlog after an outage or a
    /// restart), so the recovery does not flood subscribers that keep up
    /// with the normal rate; set it above the normal peak rate. `0` =
    /// unlimited. Default 5000.
    pub catchup_rate: u32,
    /// Extra librdkafka properties applied to both the consumer and the
    /// producer, after the bridge's own settings (so they override them).
    pub client: BTreeMap<String, String>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            group_id: None,
            auto_offset_reset: OffsetReset::Latest,
            routes: Vec::new(),
            app_prefix: "/app/".to_owned(),
            key_header: "kafka-key".to_owned(),
            produce_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(5),
            rebuild_timeout: Duration::from_secs(60),
            dead_letter_topic: None,
            catchup_rate: 5000,
            client: BTreeMap::new(),
        }
    }
}

impl BridgeConfig {
    /// The group id in effect: the configured one, else [`default_group_id`].
    pub fn effective_group_id(&self) -> String {
        match &self.group_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => default_group_id(),
        }
    }
}

/// `stomp-broker-<hostname>`: stable across restarts of one node (so a restarted
/// node resumes from its committed offsets) and distinct between nodes (so each
/// node receives every record). Two broker processes on one host must set
/// `group_id` explicitly, or they would split the partitions between them.
pub fn default_group_id() -> String {
    format!("stomp-broker-{}", hostname())
}

/// This machine's hostname (`/proc/sys/kernel/hostname`, else `$HOSTNAME`,
/// else `localhost`): the stable part of default group and node ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Start position of a consumer group that has no committed offset yet.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// Only records produced after the group first joined.
    Latest,
    /// Everything still retained in the topic.
    Earliest,
}

impl OffsetReset {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Latest => "latest",
            OffsetReset::Earliest => "earliest",
        }
    }
}

/// One route: records of `topics` become messages on `destination`.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Kafka topics read by this route.
    pub topics: Vec<String>,
    /// Destination template, e.g. `/topic/order.{key}`; see the crate docs for
    /// placeholders.
    pub destination: String,
    /// `content-type` used when the record has no `content-type` Kafka header.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Kafka headers copied verbatim into the STOMP MESSAGE.
    #[serde(default)]
    pub copy_headers: Vec<String>,
    /// How many messages per destination the broker keeps for late subscribers
    /// (0 = none). Default 1.
    #[serde(default = "default_retain_last")]
    pub retain_last: usize,
    /// How long retained messages stay replayable. Default 300 s.
    #[serde(default = "default_retain_ttl", with = "duration")]
    pub retain_ttl: Duration,
}

fn default_retain_last() -> usize {
    1
}

fn default_retain_ttl() -> Duration {
    Duration::from_secs(300)
}

impl RouteConfig {
    /// A route with default options.
    pub fn new(topics: Vec<String>, destination: impl Into<String>) -> Self {
        Self {
            topics,
            destination: destination.into(),
            content_type: None,
            copy_headers: Vec::new(),
            retain_last: default_retain_last(),
            retain_ttl: default_retain_ttl(),
        }
    }
}

/// Why a route string or route table was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteParseError {
    /// The CLI form is `topic[,topic...]=destination`.
    #[error("route must look like `topic[,topic...]=/destination/template`, got {0:?}")]
    MissingEquals(String),
    /// No topic before `=`.
    #[error("route has no topic")]
    NoTopic,
    /// A topic name Kafka would refuse.
    #[error("invalid topic name {0:?}: use 1-249 characters of [A-Za-z0-9._-]")]
    InvalidTopic(String),
    /// The destination template does not compile.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
}

impl FromStr for RouteConfig {
    type Err = RouteParseError;

    /// Parses the command-line form `order-results=/topic/order.{key}` or
    /// `t1,t2=/topic/x.{json:/orderId}`. Other fields take their defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (topics, destination) = s
            .split_once('=')
            .ok_or_else(|| RouteParseError::MissingEquals(s.to_owned()))?;
        let topics: Vec<String> = topics
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        let route = RouteConfig::new(topics, destination.trim());
        route.validate()?;
        Ok(route)
    }
}

impl RouteConfig {
    /// Checks topics and compiles the template (without keeping it).
    pub fn validate(&self) -> Result<(), RouteParseError> {
        if self.topics.is_empty() {
            return Err(RouteParseError::NoTopic);
        }
        for t in &self.topics {
            if !is_valid_topic(t) {
                return Err(RouteParseError::InvalidTopic(t.clone()));
            }
        }
        DestinationTemplate::parse(&self.destination)?;
        Ok(())
    }
}

/// Kafka's topic name rule: 1-249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn is_valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl fmt::Display for RouteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.topics.join(","), self.destination)
    }
}

/// Serde adapter for durations: an integer or float number of seconds
/// (`300`, `0.5`) or a string: a bare number of seconds (`"7"`) or a
/// [`humantime`] duration (`"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"1h 30m"`).
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(f64),
        Text(String),
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Duration::try_from_secs_f64(s).map_err(serde::de::Error::custom),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }

    /// Parses a bare number of seconds or a `humantime` duration.
    pub(crate) fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        if let Ok(secs) = t.parse::<f64>() {
            return Duration::try_from_secs_f64(secs)
                .map_err(|e| format!("invalid duration {text:?}: {e}"));
        }
        humantime::parse_duration(t).map_err(|e| format!("invalid duration {text:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = BridgeConfig::default();
        assert_eq!(c.brokers, "127.0.0.1:9092");
        assert_eq!(c.app_prefix, "/app/");
        assert_eq!(c.key_header, "kafka-key");
        assert_eq!(c.produce_timeout, Duration::from_secs(10));
        assert_eq!(c.auto_offset_reset, OffsetReset::Latest);
        assert_eq!(c.rebuild_timeout, Duration::from_secs(60));
        assert_eq!(c.dead_letter_topic, None);
        assert_eq!(c.catchup_rate, 5000);
        assert!(c.group_id.is_none());
        assert!(c.effective_group_id().starts_with("stomp-broker-"));
    }

    #[test]
    fn rebuild_timeout_takes_a_duration_and_zero_disables() {
        let c: BridgeConfig = toml::from_str("rebuild_timeout = \"2m\"").unwrap();
        assert_eq!(c.rebuild_timeout, Duration::from_secs(120));
        let c: BridgeConfig = toml::from_str("rebuild_timeout = 0").unwrap();
        assert!(c.rebuild_timeout.is_zero());
    }

    #[test]
    fn empty_toml_table_gives_defaults() {
        let c: BridgeConfig = toml::from_str("").unwrap();
        assert_eq!(c, BridgeConfig::default());
    }

    #[test]
    fn toml_fills_routes_with_route_defaults() {
        let c: BridgeConfig = toml::from_str(
            r#"
            brokers = "k1:9092,k2:9092"
            group_id = "g"
            auto_offset_reset = "earliest"
            produce_timeout = "2500ms"
            client = { "socket.keepalive.enable" = "true" }
            [[routes]]
            topics = ["order-results"]
            destination = "/topic/order.{key}"
            [[routes]]
            topics = ["a", "b"]
            destination = "/topic/x"
            content_type = "text/plain"
            copy_headers = ["trace-id"]
            retain_last = 0
            retain_ttl = 60
            "#,
        )
        .unwrap();
        assert_eq!(c.brokers, "k1:9092,k2:9092");
        assert_eq!(c.effective_group_id(), "g");
        assert_eq!(c.auto_offset_reset, OffsetReset::Earliest);
        assert_eq!(c.produce_timeout, Duration::from_millis(2500));
        assert_eq!(c.client["socket.keepalive.enable"], "true");
        assert_eq!(c.routes[0].retain_last, 1);
        assert_eq!(c.routes[0].retain_ttl, Duration::from_secs(300));
        assert_eq!(c.routes[1].retain_last, 0);
        assert_eq!(c.routes[1].retain_ttl, Duration::from_secs(60));
        assert_eq!(c.routes[1].content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn unknown_config_key_is_rejected() {
        assert!(toml::from_str::<BridgeConfig>("brokerz = \"x\"").is_err());
    }

    #[test]
    fn empty_group_id_means_default() {
        let c = BridgeConfig {
            group_id: Some(String::new()),
            ..BridgeConfig::default()
        };
        assert_eq!(c.effective_group_id(), default_group_id());
    }

    #[test]
    fn route_from_str_single_topic() {
        let r: RouteConfig = "order-results=/topic/order.{key}".parse().unwrap();
        assert_eq!(r.topics, vec!["order-results"]);
        assert_eq!(r.destination, "/topic/order.{key}");
        assert_eq!(r.retain_last, 1);
        assert_eq!(r.retain_ttl, Duration::from_secs(300));
        assert_eq!(r.to_string(), "order-results=/topic/order.{key}");
    }

    #[test]
    fn route_from_str_several_topics_and_json_pointer() {
        let r: RouteConfig = "t1,t2=/topic/x.{json:/orderId}".parse().unwrap();
        assert_eq!(r.topics, vec!["t1", "t2"]);
        assert_eq!(r.destination, "/topic/x.{json:/orderId}");
    }

    #[test]
    fn route_from_str_rejects_bad_input() {
        assert!(matches!(
            "no-equals".parse::<RouteConfig>(),
            Err(RouteParseError::MissingEquals(_))
        ));
        assert_eq!(
            "=/topic/x".parse::<RouteConfig>(),
            Err(RouteParseError::NoTopic)
        );
        assert_eq!(
            "bad topic=/topic/x".parse::<RouteConfig>(),
            Err(RouteParseError::InvalidTopic("bad topic".into()))
        );
        assert!(matches!(
            "t=/topic/{nope}".parse::<RouteConfig>(),
            Err(RouteParseError::Template(_))
        ));
        assert!(matches!(
            "t=".parse::<RouteConfig>(),
            Err(RouteParseError::Template(_))
        ));
    }

    #[test]
    fn topic_name_rule() {
        assert!(is_valid_topic("orders.v1_x-y"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic("."));
        assert!(!is_valid_topic(".."));
        assert!(!is_valid_topic("a/b"));
        assert!(!is_valid_topic(&"a".repeat(250)));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(duration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration::parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration::parse("7"), Ok(Duration::from_secs(7)));
        assert_eq!(duration::parse("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(duration::parse("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(duration::parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(duration::parse("5 parsecs").is_err());
        assert!(duration::parse("-1").is_err());
        assert!(duration::parse("NaN").is_err());
        assert!(duration::parse("").is_err());
    }
}
