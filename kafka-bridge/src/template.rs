//! Destination templates such as `/topic/order.{key}`, compiled once at start.

/// One piece of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Copied as is.
    Literal(String),
    /// `{key}`: the record key as UTF-8.
    Key,
    /// `{topic}`: the record's topic.
    Topic,
    /// `{partition}`: the record's partition number.
    Partition,
    /// `{header:NAME}`: the first Kafka header named NAME, as UTF-8.
    Header(String),
    /// `{json:/pointer}`: RFC 6901 pointer into the record value parsed as JSON.
    Json(String),
}

/// A destination template compiled from its text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationTemplate {
    pub(crate) parts: Vec<Part>,
    source: String,
}

/// Why a destination template does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is empty.
    #[error("destination template is empty")]
    Empty,
    /// A `{` without its `}`.
    #[error("unclosed `{{` in destination template {0:?}")]
    Unclosed(String),
    /// A `}` without its `{`.
    #[error("unmatched `}}` in destination template {0:?}")]
    Unmatched(String),
    /// A placeholder the bridge does not know.
    #[error(
        "unknown placeholder {{{0}}}: use key, topic, partition, header:NAME or json:/pointer"
    )]
    UnknownPlaceholder(String),
    /// `{json:...}` whose pointer does not start with `/`.
    #[error("JSON pointer {0:?} must start with '/'")]
    BadJsonPointer(String),
    /// `{header:}` without a name.
    #[error("header placeholder needs a name: {{header:NAME}}")]
    EmptyHeaderName,
}

impl DestinationTemplate {
    /// Compiles `text`; literal text is taken as is, placeholders are
    /// `{key}`, `{topic}`, `{partition}`, `{header:NAME}`, `{json:/pointer}`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                Some(i) => {
                    if rest[i..].starts_with('}') {
                        return Err(TemplateError::Unmatched(text.to_owned()));
                    }
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
                    let name = &after[..end];
                    if name.contains('{') {
                        return Err(TemplateError::Unclosed(text.to_owned()));
                    }
                    parts.push(parse_placeholder(name)?);
                    rest = &after[end + 1..];
                }
            }
        }
        Ok(Self {
            parts,
            source: text.to_owned(),
        })
    }

    /// The template's text form.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

fn parse_placeholder(name: &str) -> Result<Part, TemplateError> {
    Ok(match name {
        "key" => Part::Key,
        "topic" => Part::Topic,
        "partition" => Part::Partition,
        _ => {
            if let Some(h) = name.strip_prefix("header:") {
                if h.is_empty() {
                    return Err(TemplateError::EmptyHeaderName);
                }
                Part::Header(h.to_owned())
            } else if let Some(p) = name.strip_prefix("json:") {
                if !p.starts_with('/') {
                    return Err(TemplateError::BadJsonPointer(p.to_owned()));
                }
                Part::Json(p.to_owned())
            } else {
                return Err(TemplateError::UnknownPlaceholder(name.to_owned()));
            }
        }
    })
}

/// Longest value a placeholder may insert, in bytes.
pub const MAX_SEGMENT_LEN: usize = 200;

/// Why a placeholder value may not become part of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentProblem {
    /// Nothing to insert.
    Empty,
    /// Longer than [`MAX_SEGMENT_LEN`].
    TooLong,
    /// A byte outside `[A-Za-z0-9._~@+=-]` (so no `/`, `*`, `#`, `>`, `:`,
    /// whitespace, control characters or NUL).
    ForbiddenChar,
    /// Starts or ends with `.`, or contains `..` (an empty dot-separated level).
    BadDots,
}

/// Checks that `value` can be inserted into a destination as (part of) one
/// segment. Strict on purpose: a record must never be able to address a
/// wildcard, another hierarchy level, or a different destination kind.
pub fn check_segment(value: &str) -> Result<(), SegmentProblem> {
    if value.is_empty() {
        return Err(SegmentProblem::Empty);
    }
    if value.len() > MAX_SEGMENT_LEN {
        return Err(SegmentProblem::TooLong);
    }
    if !value.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'@' | b'+' | b'=' | b'-')
    }) {
        return Err(SegmentProblem::ForbiddenChar);
    }
    if value.starts_with('.') || value.ends_with('.') || value.contains("..") {
        return Err(SegmentProblem::BadDots);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_and_every_placeholder() {
        let t = DestinationTemplate::parse(
            "/topic/{topic}.{partition}.{key}.{header:trace-id}.{json:/a/0/b}",
        )
        .unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("/topic/".into()),
                Part::Topic,
                Part::Literal(".".into()),
                Part::Partition,
                Part::Literal(".".into()),
                Part::Key,
                Part::Literal(".".into()),
                Part::Header("trace-id".into()),
                Part::Literal(".".into()),
                Part::Json("/a/0/b".into()),
            ]
        );
        assert_eq!(
            t.as_str(),
            "/topic/{topic}.{partition}.{key}.{header:trace-id}.{json:/a/0/b}"
        );
    }

    #[test]
    fn literal_only_template() {
        let t = DestinationTemplate::parse("/topic/all").unwrap();
        assert_eq!(t.parts, vec![Part::Literal("/topic/all".into())]);
    }

    #[test]
    fn rejects_malformed_templates() {
        use TemplateError::*;
        assert_eq!(DestinationTemplate::parse(""), Err(Empty));
        assert!(matches!(
            DestinationTemplate::parse("/t/{key"),
            Err(Unclosed(_))
        ));
        assert!(matches!(
            DestinationTemplate::parse("/t/{a{key}"),
            Err(Unclosed(_))
        ));
        assert!(matches!(
            DestinationTemplate::parse("/t/key}"),
            Err(Unmatched(_))
        ));
        assert_eq!(
            DestinationTemplate::parse("/t/{value}"),
            Err(UnknownPlaceholder("value".into()))
        );
        assert_eq!(
            DestinationTemplate::parse("/t/{}"),
            Err(UnknownPlaceholder(String::new()))
        );
        assert_eq!(
            DestinationTemplate::parse("/t/{json:orderId}"),
            Err(BadJsonPointer("orderId".into()))
        );
        assert_eq!(
            DestinationTemplate::parse("/t/{header:}"),
            Err(EmptyHeaderName)
        );
    }

    #[test]
    fn segment_rules() {
        assert_eq!(check_segment("order-42_A.b~c@d+e=f"), Ok(()));
        assert_eq!(check_segment(""), Err(SegmentProblem::Empty));
        assert_eq!(
            check_segment(&"a".repeat(201)),
            Err(SegmentProblem::TooLong)
        );
        for bad in [
            "a/b", "a*", "#", ">", "a:b", "a b", "a\tb", "a\nb", "a\0b", "é", "a,b",
        ] {
            assert_eq!(
                check_segment(bad),
                Err(SegmentProblem::ForbiddenChar),
                "{bad:?}"
            );
        }
        for bad in [".", "..", ".a", "a.", "a..b"] {
            assert_eq!(check_segment(bad), Err(SegmentProblem::BadDots), "{bad:?}");
        }
    }
}
