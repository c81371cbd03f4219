//! The pure record → message mapping. No Kafka client in here: the adapter in
//! `consumer.rs` builds a [`RecordView`] from a librdkafka message and calls
//! [`map_record`] once per matching route.

use std::cell::OnceCell;
use std::fmt::Write as _;

use bytes::Bytes;

use crate::config::RouteConfig;
use crate::template::{check_segment, DestinationTemplate, Part, SegmentProblem, TemplateError};
use crate::{BridgeMessage, Retain};

/// STOMP headers the bridge sets itself; a route may not copy Kafka headers
/// over them.
const RESERVED_HEADERS: &[&str] = &[
    "destination",
    "message-id",
    "subscription",
    "ack",
    "content-length",
    "content-type",
    "receipt",
    "transaction",
];

/// A route ready for use: template compiled, options resolved.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// Topics the route reads.
    pub topics: Vec<String>,
    template: DestinationTemplate,
    content_type: Option<String>,
    copy_headers: Vec<String>,
    retain: Option<Retain>,
}

/// Why a [`RouteConfig`] cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Bad topic list or template.
    #[error(transparent)]
    Parse(#[from] crate::config::RouteParseError),
    /// `copy_headers` names a header the bridge sets itself.
    #[error("copy_headers may not contain {0:?}: the bridge sets it")]
    ReservedHeader(String),
}

impl From<TemplateError> for RouteError {
    fn from(e: TemplateError) -> Self {
        RouteError::Parse(e.into())
    }
}

impl CompiledRoute {
    /// Validates and compiles a route.
    pub fn compile(cfg: &RouteConfig) -> Result<Self, RouteError> {
        cfg.validate()?;
        for h in &cfg.copy_headers {
            let lower = h.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("kafka-") {
                return Err(RouteError::ReservedHeader(h.clone()));
            }
        }
        Ok(Self {
            topics: cfg.topics.clone(),
            template: DestinationTemplate::parse(&cfg.destination)?,
            content_type: cfg.content_type.clone(),
            copy_headers: cfg.copy_headers.clone(),
            retain: (cfg.retain_last > 0).then_some(Retain {
                last_n: cfg.retain_last,
                ttl: cfg.retain_ttl,
            }),
        })
    }

    /// The destination template.
    pub fn template(&self) -> &DestinationTemplate {
        &self.template
    }

    /// The route's replay policy; `None` when it retains nothing.
    pub fn retain(&self) -> Option<&Retain> {
        self.retain.as_ref()
    }
}

/// A read-only view of one Kafka record, borrowed from the client's buffer.
/// The record value is parsed as JSON at most once, however many routes and
/// placeholders need it.
#[derive(Debug)]
pub struct RecordView<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Partition number.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record timestamp in ms since the epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
    /// Record key; `None` for a keyless record.
    pub key: Option<&'a [u8]>,
    /// Kafka headers in record order; a header value may be null.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    /// Record value; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    json: OnceCell<Option<serde_json::Value>>,
}

impl<'a> RecordView<'a> {
    /// A view over the given record parts.
    pub fn new(
        topic: &'a str,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&'a [u8]>,
        headers: Vec<(&'a str, Option<&'a [u8]>)>,
        payload: Option<&'a [u8]>,
    ) -> Self {
        Self {
            topic,
            partition,
            offset,
            timestamp_ms,
            key,
            headers,
            payload,
            json: OnceCell::new(),
        }
    }

    /// The value parsed as JSON, or `None` when absent or not JSON.
    fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| self.payload.and_then(|p| serde_json::from_slice(p).ok()))
            .as_ref()
    }

    fn header(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Why a record could not be turned into a message. The record is skipped
/// (counted and logged), never retried: retrying cannot fix its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unroutable {
    /// `{key}` used but the record has no key.
    #[error("record has no key")]
    MissingKey,
    /// `{key}` used but the key is not UTF-8.
    #[error("record key is not UTF-8")]
    KeyNotUtf8,
    /// `{header:NAME}` used but the header is absent or null.
    #[error("record has no header {0:?}")]
    MissingHeader(String),
    /// `{header:NAME}` used but its value is not UTF-8.
    #[error("header {0:?} is not UTF-8")]
    HeaderNotUtf8(String),
    /// `{json:...}` used but the value is absent or not valid JSON.
    #[error("record value is not valid JSON")]
    InvalidJson,
    /// The JSON pointer matches nothing.
    #[error("JSON pointer {0:?} matches nothing")]
    JsonPointerMissing(String),
    /// The JSON pointer matches null, an array or an object.
    #[error("JSON pointer {0:?} is not a string, number or boolean")]
    JsonNotScalar(String),
    /// The inserted value is not a valid destination segment.
    #[error(
        "placeholder {placeholder} gives an invalid destination segment {value:?}: {problem:?}"
    )]
    InvalidSegment {
        /// The placeholder, e.g. `{key}`.
        placeholder: String,
        /// The value (cut to 64 characters).
        value: String,
        /// What is wrong with it.
        problem: SegmentProblem,
    },
    /// The record header names were not readable (not UTF-8).
    #[error("record headers are not readable")]
    BadHeaders,
}

/// Maps one record through one route into the message handed to the broker.
///
/// Headers of the message, in order: `content-type` (the record's
/// `content-type` header, else the route's `content_type`, else
/// `application/json` when the value parses as JSON, else
/// `application/octet-stream`), the route's `copy_headers` that are present
/// (values that are not UTF-8 or contain CR, LF or NUL are left out),
/// `kafka-topic`, `kafka-partition`, `kafka-offset`, `kafka-timestamp` (when
/// the record has one) and `message-id` = `<topic>-<partition>-<offset>`.
/// A tombstone (null value) becomes an empty body.
pub fn map_record(
    route: &CompiledRoute,
    record: &RecordView<'_>,
) -> Result<BridgeMessage, Unroutable> {
    let destination = render(&route.template, record)?;

    let mut headers = Vec::with_capacity(6 + route.copy_headers.len());
    let content_type = match record.header("content-type") {
        Some(Some(v)) if valid_header_value(v) => String::from_utf8_lossy(v).into_owned(),
        _ => match &route.content_type {
            Some(ct) => ct.clone(),
            None if record.json().is_some() => "application/json".to_owned(),
            None => "application/octet-stream".to_owned(),
        },
    };
    headers.push(("content-type".to_owned(), content_type));
    for name in &route.copy_headers {
        if let Some(Some(v)) = record.header(name) {
            if valid_header_value(v) {
                headers.push((name.clone(), String::from_utf8_lossy(v).into_owned()));
            }
        }
    }
    headers.push(("kafka-topic".to_owned(), record.topic.to_owned()));
    headers.push(("kafka-partition".to_owned(), record.partition.to_string()));
    headers.push(("kafka-offset".to_owned(), record.offset.to_string()));
    if let Some(ts) = record.timestamp_ms {
        headers.push(("kafka-timestamp".to_owned(), ts.to_string()));
    }
    headers.push((
        "message-id".to_owned(),
        format!("{}-{}-{}", record.topic, record.partition, record.offset),
    ));

    Ok(BridgeMessage {
        destination,
        headers,
        body: record
            .payload
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
        retain: route.retain.clone(),
    })
}

fn valid_header_value(v: &[u8]) -> bool {
    std::str::from_utf8(v).is_ok() && !v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

fn render(template: &DestinationTemplate, record: &RecordView<'_>) -> Result<String, Unroutable> {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            Part::Literal(s) => out.push_str(s),
            Part::Topic => push_segment(&mut out, "{topic}", record.topic)?,
            Part::Partition => {
                let _ = write!(out, "{}", record.partition);
            }
            Part::Key => {
                let key = record.key.ok_or(Unroutable::MissingKey)?;
                let key = std::str::from_utf8(key).map_err(|_| Unroutable::KeyNotUtf8)?;
                push_segment(&mut out, "{key}", key)?;
            }
            Part::Header(name) => {
                let v = record
                    .header(name)
                    .flatten()
                    .ok_or_else(|| Unroutable::MissingHeader(name.clone()))?;
                let v =
                    std::str::from_utf8(v).map_err(|_| Unroutable::HeaderNotUtf8(name.clone()))?;
                push_segment(&mut out, &format!("{{header:{name}}}"), v)?;
            }
            Part::Json(ptr) => {
                let json = record.json().ok_or(Unroutable::InvalidJson)?;
                let v = json
                    .pointer(ptr)
                    .ok_or_else(|| Unroutable::JsonPointerMissing(ptr.clone()))?;
                let placeholder = format!("{{json:{ptr}}}");
                match v {
                    serde_json::Value::String(s) => push_segment(&mut out, &placeholder, s)?,
                    serde_json::Value::Number(n) => {
                        push_segment(&mut out, &placeholder, &n.to_string())?
                    }
                    serde_json::Value::Bool(b) => {
                        push_segment(&mut out, &placeholder, if *b { "true" } else { "false" })?
                    }
                    _ => return Err(Unroutable::JsonNotScalar(ptr.clone())),
                }
            }
        }
    }
    Ok(out)
}

fn push_segment(out: &mut String, placeholder: &str, value: &str) -> Result<(), Unroutable> {
    check_segment(value).map_err(|problem| Unroutable::InvalidSegment {
        placeholder: placeholder.to_owned(),
        value: value.chars().take(64).collect(),
        problem,
    })?;
    out.push_str(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn route(dest: &str) -> CompiledRoute {
        CompiledRoute::compile(&RouteConfig::new(vec!["orders".into()], dest)).unwrap()
    }

    fn view<'a>(
        key: Option<&'a [u8]>,
        headers: Vec<(&'a str, Option<&'a [u8]>)>,
        payload: Option<&'a [u8]>,
    ) -> RecordView<'a> {
        RecordView::new(
            "orders",
            2,
            41,
            Some(1_700_000_000_123),
            key,
            headers,
            payload,
        )
    }

    fn header<'m>(m: &'m BridgeMessage, name: &str) -> Option<&'m str> {
        m.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn key_placeholder_routes_by_key() {
        let m = map_record(
            &route("/topic/order.{key}"),
            &view(Some(b"A-17"), vec![], Some(b"x")),
        )
        .unwrap();
        assert_eq!(m.destination, "/topic/order.A-17");
        assert_eq!(m.body, Bytes::from_static(b"x"));
    }

    #[test]
    fn topic_and_partition_placeholders() {
        let m = map_record(
            &route("/topic/{topic}.p{partition}"),
            &view(None, vec![], None),
        )
        .unwrap();
        assert_eq!(m.destination, "/topic/orders.p2");
    }

    #[test]
    fn header_placeholder_uses_named_header() {
        let h = vec![("tenant", Some(&b"acme"[..]))];
        let m = map_record(
            &route("/topic/{header:tenant}.orders"),
            &view(None, h, None),
        )
        .unwrap();
        assert_eq!(m.destination, "/topic/acme.orders");
    }

    #[test]
    fn json_placeholder_inserts_strings_raw_and_numbers_as_text() {
        let body = br#"{"orderId":"o-9","n":{"id":42},"f":1.5,"ok":true}"#;
        let m = map_record(
            &route("/topic/x.{json:/orderId}"),
            &view(None, vec![], Some(body)),
        )
        .unwrap();
        assert_eq!(m.destination, "/topic/x.o-9");
        let m = map_record(
            &route("/topic/x.{json:/n/id}"),
            &view(None, vec![], Some(body)),
        )
        .unwrap();
        assert_eq!(m.destination, "/topic/x.42");
        let m = map_record(
            &route("/topic/x.{json:/f}"),
            &view(None, vec![], Some(body)),
        )
        .unwrap();
        assert_eq!(m.destination, "/topic/x.1.5");
        let m = map_record(
            &route("/topic/x.{json:/ok}"),
            &view(None, vec![], Some(body)),
        )
        .unwrap();
        assert_eq!(m.destination, "/topic/x.true");
    }

    #[test]
    fn json_pointer_escapes_and_array_index() {
        let body = br#"{"a/b":[{"c":"z"}]}"#;
        let m = map_record(
            &route("/topic/{json:/a~1b/0/c}"),
            &view(None, vec![], Some(body)),
        )
        .unwrap();
        assert_eq!(m.destination, "/topic/z");
    }

    #[test]
    fn unroutable_when_key_missing_or_not_utf8() {
        let r = route("/topic/order.{key}");
        assert_eq!(
            map_record(&r, &view(None, vec![], None)),
            Err(Unroutable::MissingKey)
        );
        assert_eq!(
            map_record(&r, &view(Some(&[0xff, 0xfe]), vec![], None)),
            Err(Unroutable::KeyNotUtf8)
        );
    }

    #[test]
    fn unroutable_when_header_missing_null_or_not_utf8() {
        let r = route("/topic/{header:tenant}");
        assert_eq!(
            map_record(&r, &view(None, vec![], None)),
            Err(Unroutable::MissingHeader("tenant".into()))
        );
        assert_eq!(
            map_record(&r, &view(None, vec![("tenant", None)], None)),
            Err(Unroutable::MissingHeader("tenant".into()))
        );
        assert_eq!(
            map_record(&r, &view(None, vec![("tenant", Some(&[0xc3][..]))], None)),
            Err(Unroutable::HeaderNotUtf8("tenant".into()))
        );
    }

    #[test]
    fn unroutable_when_json_bad_missing_or_not_scalar() {
        let r = route("/topic/{json:/id}");
        assert_eq!(
            map_record(&r, &view(None, vec![], Some(b"{not json"))),
            Err(Unroutable::InvalidJson)
        );
        assert_eq!(
            map_record(&r, &view(None, vec![], None)),
            Err(Unroutable::InvalidJson)
        );
        assert_eq!(
            map_record(&r, &view(None, vec![], Some(br#"{"other":1}"#))),
            Err(Unroutable::JsonPointerMissing("/id".into()))
        );
        for v in [
            &br#"{"id":null}"#[..],
            br#"{"id":[1]}"#,
            br#"{"id":{"a":1}}"#,
        ] {
            assert_eq!(
                map_record(&r, &view(None, vec![], Some(v))),
                Err(Unroutable::JsonNotScalar("/id".into()))
            );
        }
    }

    #[test]
    fn unroutable_when_value_is_not_a_valid_segment() {
        let r = route("/topic/order.{key}");
        for (key, problem) in [
            (&b""[..], SegmentProblem::Empty),
            (b"a/b", SegmentProblem::ForbiddenChar),
            (b"*", SegmentProblem::ForbiddenChar),
            (b"#", SegmentProblem::ForbiddenChar),
            (b">", SegmentProblem::ForbiddenChar),
            (b"a b", SegmentProblem::ForbiddenChar),
            (b"a:b", SegmentProblem::ForbiddenChar),
            (b"a\0b", SegmentProblem::ForbiddenChar),
            (b"a\nb", SegmentProblem::ForbiddenChar),
            (b"..", SegmentProblem::BadDots),
        ] {
            match map_record(&r, &view(Some(key), vec![], None)) {
                Err(Unroutable::InvalidSegment {
                    placeholder,
                    problem: p,
                    ..
                }) => {
                    assert_eq!(placeholder, "{key}");
                    assert_eq!(p, problem, "{key:?}");
                }
                other => panic!("{key:?}: {other:?}"),
            }
        }
        let long = vec![b'a'; 300];
        assert!(matches!(
            map_record(&r, &view(Some(&long), vec![], None)),
            Err(Unroutable::InvalidSegment {
                problem: SegmentProblem::TooLong,
                ..
            })
        ));
        let r = route("/topic/{json:/id}");
        assert!(matches!(
            map_record(&r, &view(None, vec![], Some(br#"{"id":"a/../b"}"#))),
            Err(Unroutable::InvalidSegment {
                problem: SegmentProblem::ForbiddenChar,
                ..
            })
        ));
    }

    #[test]
    fn content_type_prefers_kafka_header() {
        let h = vec![("content-type", Some(&b"text/csv"[..]))];
        let mut cfg = RouteConfig::new(vec!["orders".into()], "/topic/x");
        cfg.content_type = Some("text/plain".into());
        let r = CompiledRoute::compile(&cfg).unwrap();
        let m = map_record(&r, &view(None, h, Some(b"{}"))).unwrap();
        assert_eq!(header(&m, "content-type"), Some("text/csv"));
    }

    #[test]
    fn content_type_falls_back_to_route_then_json_detection_then_octet_stream() {
        let mut cfg = RouteConfig::new(vec!["orders".into()], "/topic/x");
        cfg.content_type = Some("text/plain".into());
        let with_ct = CompiledRoute::compile(&cfg).unwrap();
        let m = map_record(&with_ct, &view(None, vec![], Some(b"{}"))).unwrap();
        assert_eq!(header(&m, "content-type"), Some("text/plain"));

        let plain = route("/topic/x");
        let m = map_record(&plain, &view(None, vec![], Some(br#"{"a":1}"#))).unwrap();
        assert_eq!(header(&m, "content-type"), Some("application/json"));
        let m = map_record(&plain, &view(None, vec![], Some(b"hello"))).unwrap();
        assert_eq!(header(&m, "content-type"), Some("application/octet-stream"));
        let m = map_record(&plain, &view(None, vec![], None)).unwrap();
        assert_eq!(header(&m, "content-type"), Some("application/octet-stream"));
        assert!(m.body.is_empty());
    }

    #[test]
    fn kafka_content_type_with_newline_is_ignored() {
        let h = vec![("content-type", Some(&b"text/plain\nx: y"[..]))];
        let m = map_record(&route("/topic/x"), &view(None, h, Some(b"hi"))).unwrap();
        assert_eq!(header(&m, "content-type"), Some("application/octet-stream"));
    }

    #[test]
    fn message_id_and_kafka_headers_are_set() {
        let m = map_record(&route("/topic/x"), &view(Some(b"k"), vec![], Some(b"1"))).unwrap();
        assert_eq!(header(&m, "message-id"), Some("orders-2-41"));
        assert_eq!(header(&m, "kafka-topic"), Some("orders"));
        assert_eq!(header(&m, "kafka-partition"), Some("2"));
        assert_eq!(header(&m, "kafka-offset"), Some("41"));
        assert_eq!(header(&m, "kafka-timestamp"), Some("1700000000123"));
        assert_eq!(
            m.headers.first().map(|(n, _)| n.as_str()),
            Some("content-type")
        );
    }

    #[test]
    fn no_timestamp_header_without_timestamp() {
        let v = RecordView::new("t", 0, 0, None, None, vec![], None);
        let m = map_record(&route("/topic/x"), &v).unwrap();
        assert_eq!(header(&m, "kafka-timestamp"), None);
    }

    #[test]
    fn copy_headers_copies_present_valid_values_only() {
        let mut cfg = RouteConfig::new(vec!["orders".into()], "/topic/x");
        cfg.copy_headers = vec![
            "trace-id".into(),
            "absent".into(),
            "binary".into(),
            "nl".into(),
        ];
        let r = CompiledRoute::compile(&cfg).unwrap();
        let h = vec![
            ("trace-id", Some(&b"t-1"[..])),
            ("binary", Some(&[0xff][..])),
            ("nl", Some(&b"a\nb"[..])),
            ("not-copied", Some(&b"z"[..])),
        ];
        let m = map_record(&r, &view(None, h, None)).unwrap();
        assert_eq!(header(&m, "trace-id"), Some("t-1"));
        assert_eq!(header(&m, "absent"), None);
        assert_eq!(header(&m, "binary"), None);
        assert_eq!(header(&m, "nl"), None);
        assert_eq!(header(&m, "not-copied"), None);
    }

    #[test]
    fn copy_headers_may_not_override_bridge_headers() {
        for name in ["message-id", "Destination", "content-type", "kafka-offset"] {
            let mut cfg = RouteConfig::new(vec!["orders".into()], "/topic/x");
            cfg.copy_headers = vec![name.into()];
            assert_eq!(
                CompiledRoute::compile(&cfg).err(),
                Some(RouteError::ReservedHeader(name.into()))
            );
        }
    }

    #[test]
    fn retain_policy_follows_route() {
        let mut cfg = RouteConfig::new(vec!["orders".into()], "/topic/x");
        cfg.retain_last = 3;
        cfg.retain_ttl = Duration::from_secs(9);
        let m = map_record(
            &CompiledRoute::compile(&cfg).unwrap(),
            &view(None, vec![], None),
        )
        .unwrap();
        assert_eq!(
            m.retain,
            Some(Retain {
                last_n: 3,
                ttl: Duration::from_secs(9)
            })
        );
        cfg.retain_last = 0;
        let m = map_record(
            &CompiledRoute::compile(&cfg).unwrap(),
            &view(None, vec![], None),
        )
        .unwrap();
        assert_eq!(m.retain, None);
    }

    #[test]
    fn json_is_parsed_once_for_many_placeholders() {
        let body = br#"{"a":"x","b":"y"}"#;
        let v = view(None, vec![], Some(body));
        let m = map_record(&route("/topic/{json:/a}.{json:/b}"), &v).unwrap();
        assert_eq!(m.destination, "/topic/x.y");
        assert!(v.json.get().is_some());
    }
}
