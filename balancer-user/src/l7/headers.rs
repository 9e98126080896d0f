//! What the proxy does to headers on the way through: hop-by-hop headers removed (RFC 9110
//! section 7.6.1), the client's address, protocol and host passed on (`X-Forwarded-*` or
//! RFC 7239's `Forwarded`), and an optional request id.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::spelling::config_words;

/// How the client is described to the backend (`forwarded_headers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedStyle {
    /// `X-Forwarded-For` (appended to), `X-Forwarded-Proto`, `X-Forwarded-Host`: what
    /// HAProxy's `option forwardfor` and most applications know.
    #[default]
    XForwarded,
    /// RFC 7239's `Forwarded: for=...;proto=...;host=...` (appended to).
    Forwarded,
    /// Nothing added.
    None,
}

config_words!(ForwardedStyle, "forwarded", "\"x-forwarded\", \"forwarded\" or \"none\"", { XForwarded => "x-forwarded", Forwarded => "forwarded", None => "none" });

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), which a
/// proxy must not forward; `Connection` may name more.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers and those `Connection` lists. `Upgrade` stays when
/// `upgrading` (the proxy passes the upgrade on, and sets `Connection: upgrade` again).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(upgrading && name == header::UPGRADE))
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Adds the client's description in `style`: its address, `http` (the proxy serves plain
/// HTTP), and the host it asked for.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    style: ForwardedStyle,
    client: IpAddr,
    host: Option<&str>,
) {
    match style {
        ForwardedStyle::None => {}
        ForwardedStyle::XForwarded => {
            append_list(headers, &X_FORWARDED_FOR, &client.to_string());
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
            if let Some(value) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
                headers.insert(X_FORWARDED_HOST.clone(), value);
            }
        }
        ForwardedStyle::Forwarded => {
            // RFC 7239 section 6: an IPv6 address is quoted and bracketed.
            let node = match client {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("\"[{v6}]\""),
            };
            let mut element = format!("for={node};proto=http");
            if let Some(host) =
                host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            {
                element = format!("{element};host=\"{host}\"");
            }
            append_list(headers, &header::FORWARDED, &element);
        }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends `item` to the comma-separated list in `name` (one header line).
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &str) {
    let joined = match headers.get(name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {item}"),
        _ => item.to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(name.clone(), value);
    }
}

/// The host the request asked for: its `Host` header, or an absolute URI's authority.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "www.example"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_says_connection_upgrade() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn the_client_is_described_in_the_chosen_style() {
        let client: IpAddr = "10.0.1.2".parse().unwrap();
        let mut xff = map(&[("x-forwarded-for", "192.0.2.1")]);
        add_forwarded(
            &mut xff,
            ForwardedStyle::XForwarded,
            client,
            Some("www.example"),
        );
        assert_eq!(xff["x-forwarded-for"], "192.0.2.1, 10.0.1.2");
        assert_eq!(xff["x-forwarded-proto"], "http");
        assert_eq!(xff["x-forwarded-host"], "www.example");

        let mut rfc = HeaderMap::new();
        add_forwarded(
            &mut rfc,
            ForwardedStyle::Forwarded,
            "fd00::2".parse().unwrap(),
            Some("a.example"),
        );
        assert_eq!(
            rfc["forwarded"],
            "for=\"[fd00::2]\";proto=http;host=\"a.example\""
        );

        let mut none = HeaderMap::new();
        add_forwarded(&mut none, ForwardedStyle::None, client, None);
        assert!(none.is_empty());
    }

    #[test]
    fn the_host_comes_from_an_absolute_uri_first() {
        let headers = map(&[("host", "h.example")]);
        let absolute: http::Uri = "http://a.example:8080/x".parse().unwrap();
        assert_eq!(request_host(&absolute, &headers), Some("a.example:8080"));
        let origin: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&origin, &headers), Some("h.example"));
    }
}
