//! The persistence cookie on the wire: reading it from a request's `Cookie` headers,
//! taking it out of them (`indirect`), and the response headers that set it.

use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

/// Longest cookie name or backend cookie id.
pub const MAX_COOKIE_LEN: usize = 64;

/// Why `name` cannot be a cookie's name (an HTTP token, RFC 6265 and 9110), if it cannot.
pub fn cookie_name_problem(name: &str) -> Option<String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    problem(name, token, "letters, digits and !#$%&'*+-.^_`|~")
}

/// Why `id` cannot be a backend's cookie id, if it cannot: it must be safe as a cookie
/// value everywhere, unquoted.
pub fn cookie_id_problem(id: &str) -> Option<String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    problem(id, safe, "letters, digits and -._~")
}

fn problem(s: &str, allowed: impl Fn(char) -> bool, spelled: &str) -> Option<String> {
    if s.is_empty() || s.len() > MAX_COOKIE_LEN || !s.chars().all(allowed) {
        Some(format!(
            "must be 1 to {MAX_COOKIE_LEN} characters of {spelled}"
        ))
    } else {
        None
    }
}

/// The `name=value` pairs of every `Cookie` header, in order, as raw bytes (a header need
/// not be UTF-8). Lenient like browsers: pairs split at `;`, blanks around them trimmed.
fn pairs(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// Whether `pair` is cookie `name`'s; then its value.
fn value_of<'a>(pair: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    let (key, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
    if key != name.as_bytes() {
        return None;
    }
    // A value may be sent in double quotes (RFC 6265's cookie-value).
    Some(match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    })
}

/// The value of the first cookie called `name` in `headers`.
pub(super) fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    pairs(headers).find_map(|p| value_of(p, name))
}

/// The `Cookie` header to forward once every cookie called `name` is taken out.
pub(super) fn without(headers: &HeaderMap, name: &str) -> CookieHeader {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut removed = false;
    for pair in pairs(headers) {
        if value_of(pair, name).is_some() {
            removed = true;
        } else {
            kept.push(pair);
        }
    }
    if !removed {
        return CookieHeader::Unchanged;
    }
    if kept.is_empty() {
        return CookieHeader::Remove;
    }
    // Pairs of valid header values joined by "; " form a valid one (several `Cookie`
    // fields become one, as RFC 9113 prescribes towards HTTP/1.1).
    HeaderValue::from_bytes(&kept.join(&b"; "[..]))
        .map_or(CookieHeader::Remove, CookieHeader::Replace)
}

/// What becomes of a request's `Cookie` header before it is forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CookieHeader {
    /// Forward it as received.
    Unchanged,
    /// Replace every `Cookie` field by this one.
    Replace(HeaderValue),
    /// Remove it: the persistence cookie was the only cookie.
    Remove,
}

impl CookieHeader {
    /// Applies this to the headers of the request to forward.
    pub fn apply(&self, headers: &mut HeaderMap) {
        match self {
            CookieHeader::Unchanged => {}
            CookieHeader::Replace(value) => {
                headers.insert(COOKIE, value.clone());
            }
            CookieHeader::Remove => {
                headers.remove(COOKIE);
            }
        }
    }
}

/// The response headers that persist a client to the backend that served it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetCookie {
    value: HeaderValue,
    nocache: bool,
}

/// `Cache-Control` directive that keeps shared caches from storing (and replaying to
/// other clients) the `Set-Cookie` field, while the rest of the response stays cacheable.
const NO_CACHE_SET_COOKIE: &str = "no-cache=\"set-cookie\"";

impl SetCookie {
    pub(super) fn new(value: HeaderValue, nocache: bool) -> Self {
        SetCookie { value, nocache }
    }

    /// `NAME=ID; Path=/`, or `None` if that is not a valid header value (the validator
    /// and [`super::BackendSet::new`] make sure it is).
    pub(super) fn header_value(name: &str, id: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!("{name}={id}; Path=/")).ok()
    }

    /// The `Set-Cookie` value.
    pub fn set_cookie(&self) -> &HeaderValue {
        &self.value
    }

    /// The headers to add to the response, in order.
    pub fn headers(&self) -> Vec<(http::HeaderName, HeaderValue)> {
        let mut headers = vec![(SET_COOKIE, self.value.clone())];
        if self.nocache {
            headers.push((CACHE_CONTROL, HeaderValue::from_static(NO_CACHE_SET_COOKIE)));
        }
        headers
    }

    /// Adds [`SetCookie::headers`] to a response's headers, beside those it has (a second
    /// `Cache-Control` field adds its directives to the first's).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in self.headers() {
            headers.append(name, value);
        }
    }
}
