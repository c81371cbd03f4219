use bytes::{BufMut, Bytes, BytesMut};

use crate::{Error, Version};

/// Unescapes a header name or value received in `version`.
///
/// Zero-copy (returns `raw` itself) when there is nothing to unescape, which
/// is the common case; allocates only when a backslash is present. STOMP 1.0
/// has no escaping at all, so the value is returned as it is.
pub fn unescape(raw: Bytes, version: Version) -> Result<Bytes, Error> {
    if version == Version::V1_0 || memchr::memchr(b'\\', &raw).is_none() {
        return Ok(raw);
    }
    let mut out = BytesMut::with_capacity(raw.len());
    let mut iter = raw.iter();
    while let Some(&b) = iter.next() {
        if b != b'\\' {
            out.put_u8(b);
            continue;
        }
        let decoded = match iter.next() {
            Some(b'\\') => b'\\',
            Some(b'n') => b'\n',
            Some(b'c') => b':',
            Some(b'r') if version == Version::V1_2 => b'\r',
            _ => return Err(Error::InvalidEscape),
        };
        out.put_u8(decoded);
    }
    Ok(out.freeze())
}

/// Appends `value` to `dst`, escaped for `version` (no escaping in 1.0; `\r`
/// only escaped from 1.2 on).
///
/// In 1.0, where escaping does not exist, LF and CR cannot be represented and
/// are replaced by a space so the frame stays well formed.
pub fn escape_into(value: &[u8], version: Version, dst: &mut BytesMut) {
    let needs = value
        .iter()
        .any(|&b| matches!(b, b'\\' | b'\n' | b'\r' | b':'));
    if !needs {
        dst.extend_from_slice(value);
        return;
    }
    dst.reserve(value.len() + 8);
    for &b in value {
        match (b, version) {
            (b'\n' | b'\r', Version::V1_0) => dst.put_u8(b' '),
            (_, Version::V1_0) => dst.put_u8(b),
            (b'\\', _) => dst.extend_from_slice(b"\\\\"),
            (b'\n', _) => dst.extend_from_slice(b"\\n"),
            (b':', _) => dst.extend_from_slice(b"\\c"),
            (b'\r', Version::V1_2) => dst.extend_from_slice(b"\\r"),
            // 1.1 cannot escape CR; a raw CR before LF would be read as CRLF
            // by lenient peers, so replace it.
            (b'\r', _) => dst.put_u8(b' '),
            (b, _) => dst.put_u8(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_is_zero_copy_without_backslash() {
        let raw = Bytes::from_static(b"plain value");
        let out = unescape(raw.clone(), Version::V1_2).unwrap();
        assert_eq!(out.as_ptr(), raw.as_ptr());
    }

    #[test]
    fn unescape_rejects_cr_escape_in_1_1() {
        assert_eq!(
            unescape(Bytes::from_static(b"a\\rb"), Version::V1_1),
            Err(Error::InvalidEscape)
        );
        assert_eq!(
            unescape(Bytes::from_static(b"a\\rb"), Version::V1_2).unwrap(),
            Bytes::from_static(b"a\rb")
        );
    }

    #[test]
    fn escape_round_trips_in_1_2() {
        let mut dst = BytesMut::new();
        escape_into(b"a:b\\c\nd\re", Version::V1_2, &mut dst);
        assert_eq!(&dst[..], b"a\\cb\\\\c\\nd\\re");
        assert_eq!(
            unescape(dst.freeze(), Version::V1_2).unwrap(),
            Bytes::from_static(b"a:b\\c\nd\re")
        );
    }
}
