//! The routing rules of an HTTP-mode VIP: which pool serves a request. Pure (no I/O): the
//! configuration builds the rules, checking every value once at load, and the proxy calls
//! [`Rules::route`] per request.
//!
//! The rules are tried in order and the first that matches wins; no match means the VIP's
//! default pool. A rule matches when all its conditions hold (AND, none: always); a
//! condition holds when any of its values matches (OR), and a negated condition when the
//! plain one does not. What each test compares is on [`Test`]; the README's "HTTP mode (L7)"
//! says the same for users.
//!
//! Routing allocates nothing: the request's host, path and client address are borrowed or
//! copied once, prefixes and names compare in place, regexes are compiled at load (one
//! [`regex::RegexSet`] per condition, so its values are tried in one pass).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use http::request::Parts;
use http::Method;

/// A VIP's rules in order, and the pool of requests none of them matches.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    rules: Vec<Rule>,
    default_pool: String,
}

/// Where [`Rules::route`] sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// The index of the rule that matched; `None`: the default pool.
    pub rule: Option<usize>,
    /// The pool that serves the request.
    pub pool: &'a str,
}

impl Rules {
    /// `rules` tried in order, then `default_pool`.
    pub fn new(rules: Vec<Rule>, default_pool: impl Into<String>) -> Self {
        Rules {
            rules,
            default_pool: default_pool.into(),
        }
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The pool of requests no rule matches.
    pub fn default_pool(&self) -> &str {
        &self.default_pool
    }

    /// The pool of `request` (its head) from `client`: the first rule that matches, else
    /// the default pool.
    pub fn route(&self, request: &Parts, client: IpAddr) -> Route<'_> {
        let request = Request::new(request, client);
        match self.rules.iter().position(|rule| rule.matches(&request)) {
            Some(i) => Route {
                rule: Some(i),
                pool: &self.rules[i].pool,
            },
            None => Route {
                rule: None,
                pool: &self.default_pool,
            },
        }
    }
}

/// One rule: when all `conditions` hold, `pool` serves the request.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// As written, or `rule N` (1-based); counters and logs name the rule by it.
    pub name: String,
    pub pool: String,
    /// All must hold (an empty list matches every request).
    pub conditions: Vec<Condition>,
}

impl Rule {
    /// Whether every condition holds for `request`.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        self.conditions.iter().all(|c| c.matches(request))
    }
}

/// A test, or (`negate`, the configuration's `not_` keys) its negation.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub negate: bool,
    pub test: Test,
}

impl Condition {
    /// Whether the condition holds for `request`.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        self.test.matches(request) != self.negate
    }
}

/// What the tests look at, taken from a request once per routing.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// See [`request_host`].
    pub host: Option<&'a str>,
    /// The path without the query string, as received (not percent-decoded).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The client's address, an IPv4-mapped IPv6 address as IPv4.
    pub client: IpAddr,
}

impl<'a> Request<'a> {
    /// The view of `parts`, from `client`.
    pub fn new(parts: &'a Parts, client: IpAddr) -> Self {
        Request {
            method: &parts.method,
            host: request_host(parts),
            path: parts.uri.path(),
            headers: &parts.headers,
            client: client.to_canonical(),
        }
    }
}

/// The host a request is for: the authority of an absolute-form target (which RFC 9112
/// says wins over `Host`), else the `Host` header; without user info, port and a trailing
/// dot. `None` without either (HTTP/1.0) or when it is not visible ASCII.
pub fn request_host(parts: &Parts) -> Option<&str> {
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or_default(),
        None => parts.headers.get(HOST)?.to_str().ok()?,
    };
    let host = if authority.starts_with('[') {
        // An IPv6 literal keeps its brackets; its colons are not a port.
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// A condition's test; each holds when any of its values matches.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// The request's host ([`request_host`]) is one of these, compared case-insensitively.
    Host(Vec<HostPattern>),
    /// The path starts with one of these, byte for byte (`/api` also matches `/apix`).
    PathPrefix(Vec<String>),
    /// The path ends with one of these.
    PathSuffix(Vec<String>),
    /// The path is one of these.
    PathExact(Vec<String>),
    /// One of these regexes matches somewhere in the path (anchors are the writer's).
    PathRegex(PathRegexes),
    /// The method is one of these (case-sensitive, as RFC 9110 says).
    Method(Vec<Method>),
    /// The request has one of these headers.
    HeaderPresent(Vec<HeaderName>),
    /// A value of the header (any, when it appears several times) is one of these, byte
    /// for byte.
    HeaderEquals(HeaderName, Vec<HeaderValue>),
    /// One of these regexes matches somewhere in a value of the header.
    HeaderRegex(HeaderName, HeaderRegexes),
    /// The client's address is in one of these networks.
    Source(Vec<Cidr>),
}

impl Test {
    /// Whether any of the test's values matches `request`.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        let path = request.path;
        match self {
            Test::Host(patterns) => request
                .host
                .is_some_and(|host| patterns.iter().any(|p| p.matches(host))),
            Test::PathPrefix(prefixes) => prefixes.iter().any(|p| path.starts_with(p.as_str())),
            Test::PathSuffix(suffixes) => suffixes.iter().any(|s| path.ends_with(s.as_str())),
            Test::PathExact(paths) => paths.iter().any(|p| p == path),
            Test::PathRegex(set) => set.0.is_match(path),
            Test::Method(methods) => methods.contains(request.method),
            Test::HeaderPresent(names) => names.iter().any(|n| request.headers.contains_key(n)),
            Test::HeaderEquals(name, values) => request
                .headers
                .get_all(name)
                .iter()
                .any(|v| values.contains(v)),
            Test::HeaderRegex(name, set) => request
                .headers
                .get_all(name)
                .iter()
                .any(|v| set.0.is_match(v.as_bytes())),
            Test::Source(networks) => networks.iter().any(|n| n.contains(request.client)),
        }
    }

    /// The test `kind` of `values` (as the configuration writes them), each checked.
    ///
    /// # Errors
    ///
    /// The first value that is not acceptable, and why; or an empty list.
    pub fn new(kind: Kind, values: &[&str]) -> Result<Test, BadValue> {
        if values.is_empty() {
            return Err(BadValue::empty());
        }
        Ok(match kind {
            Kind::Host => Test::Host(each(values, str::parse)?),
            Kind::PathPrefix => Test::PathPrefix(each(values, |v| path(v, true))?),
            Kind::PathSuffix => Test::PathSuffix(each(values, |v| path(v, false))?),
            Kind::PathExact => Test::PathExact(each(values, |v| path(v, true))?),
            Kind::PathRegex => {
                each(values, |v| {
                    regex::Regex::new(v).map_err(|e| regex_error(v, &e))
                })?;
                Test::PathRegex(PathRegexes(
                    regex::RegexSet::new(values).map_err(|e| BadValue::at(0, e.to_string()))?,
                ))
            }
            Kind::Method => Test::Method(each(values, method)?),
            Kind::HeaderPresent => Test::HeaderPresent(each(values, header_name)?),
            Kind::Source => Test::Source(each(values, str::parse)?),
        })
    }

    /// The header test `kind` of header `name` (see [`header_name`]) and its `values`.
    ///
    /// # Errors
    ///
    /// The first value that is not acceptable, and why; or an empty list.
    pub fn header(kind: HeaderKind, name: HeaderName, values: &[&str]) -> Result<Test, BadValue> {
        if values.is_empty() {
            return Err(BadValue::empty());
        }
        Ok(match kind {
            HeaderKind::Equals => Test::HeaderEquals(name, each(values, header_value)?),
            HeaderKind::Regex => {
                each(values, |v| {
                    regex::bytes::Regex::new(v).map_err(|e| regex_error(v, &e))
                })?;
                let set = regex::bytes::RegexSet::new(values)
                    .map_err(|e| BadValue::at(0, e.to_string()))?;
                Test::HeaderRegex(name, HeaderRegexes(set))
            }
        })
    }
}

/// The tests that take a list of values (the configuration's key of each is
/// [`Kind::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Host,
    PathPrefix,
    PathSuffix,
    PathExact,
    PathRegex,
    Method,
    HeaderPresent,
    Source,
}

impl Kind {
    /// The configuration's key.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::PathPrefix => "path_prefix",
            Kind::PathSuffix => "path_suffix",
            Kind::PathExact => "path_exact",
            Kind::PathRegex => "path_regex",
            Kind::Method => "method",
            Kind::HeaderPresent => "header_present",
            Kind::Source => "source",
        }
    }
}

/// The tests that take a header name and a list of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderKind {
    Equals,
    Regex,
}

impl HeaderKind {
    /// The configuration's key.
    pub const fn as_str(self) -> &'static str {
        match self {
            HeaderKind::Equals => "header_equals",
            HeaderKind::Regex => "header_regex",
        }
    }
}

/// A value of a test that is refused: which one (its index in the list) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct BadValue {
    /// `None`: the list itself (it is empty).
    pub index: Option<usize>,
    pub why: String,
}

impl BadValue {
    fn at(index: usize, why: String) -> Self {
        BadValue {
            index: Some(index),
            why,
        }
    }

    fn empty() -> Self {
        BadValue {
            index: None,
            why: "an empty list matches nothing: give at least one value or remove the condition"
                .to_owned(),
        }
    }
}

/// `parse` applied to each value; the first error, at its index.
fn each<T>(values: &[&str], parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, BadValue> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| parse(v).map_err(|why| BadValue::at(i, why)))
        .collect()
}

/// A path prefix or exact path (`rooted`: must start with `/`) or a path suffix.
fn path(value: &str, rooted: bool) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if rooted && !value.starts_with('/') && value != "*" {
        return Err(format!(
            "{value:?} does not start with '/': a request's path always does"
        ));
    }
    if let Some(c) = value.chars().find(|c| matches!(c, '?' | '#')) {
        return Err(format!(
            "{value:?} contains {c:?}: paths are matched without the query string (and a \
             request has no fragment), so this could never match"
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{value:?} contains {c:?}, which a request's path never holds (paths are matched \
             as received, not percent-decoded: write %20 for a space)"
        ));
    }
    Ok(value.to_owned())
}

/// A method, spelled as RFC 9110 (case-sensitive) wants it.
fn method(value: &str) -> Result<Method, String> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let upper = value.to_ascii_uppercase();
    if upper != value && STANDARD.contains(&upper.as_str()) {
        return Err(format!(
            "{value:?} is not the method {upper:?}: methods are case-sensitive (RFC 9110)"
        ));
    }
    Method::from_bytes(value.as_bytes())
        .map_err(|_| format!("invalid method {value:?}: a method is a token, e.g. \"GET\""))
}

/// A header name (a token; compared case-insensitively).
///
/// # Errors
///
/// Why `value` is not one.
pub fn header_name(value: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(value.as_bytes()).map_err(|_| {
        format!("invalid header name {value:?}: a header name is a token, e.g. \"X-Env\"")
    })
}

/// A header value as `header_equals` compares it.
fn header_value(value: &str) -> Result<HeaderValue, String> {
    if value.trim() != value {
        return Err(format!(
            "{value:?} has surrounding whitespace, which a received header value never has"
        ));
    }
    HeaderValue::from_str(value)
        .map_err(|_| format!("invalid header value {value:?}: only visible ASCII, spaces and tabs"))
}

/// The last line of a regex error (its syntax errors draw the pattern over several lines).
fn regex_error(value: &str, e: &regex::Error) -> String {
    let text = e.to_string();
    let why = text
        .rsplit_once("error: ")
        .map_or(text.as_str(), |(_, why)| why)
        .trim();
    format!("invalid regex {value:?}: {}", why.replace('\n', "; "))
}

/// The compiled path regexes of one condition (compared by their patterns).
#[derive(Clone, Debug)]
pub struct PathRegexes(regex::RegexSet);

impl PartialEq for PathRegexes {
    fn eq(&self, other: &Self) -> bool {
        self.0.patterns() == other.0.patterns()
    }
}

/// The compiled header-value regexes of one condition (on bytes: a header value need not
/// be UTF-8; compared by their patterns).
#[derive(Clone, Debug)]
pub struct HeaderRegexes(regex::bytes::RegexSet);

impl PartialEq for HeaderRegexes {
    fn eq(&self, other: &Self) -> bool {
        self.0.patterns() == other.0.patterns()
    }
}

/// A host name to compare the request's with: exactly, or (`*.suffix`) any name ending in
/// `.suffix` (not `suffix` itself). Kept lowercase, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// Whether `host` (a [`request_host`]) matches, ignoring ASCII case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Suffix(suffix) => {
                let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let lower = value.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        let (wildcard, name) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let literal = name.starts_with('[') && name.ends_with(']') && name.len() > 2;
        let problem = if name.is_empty() || name.starts_with('.') || name.contains("..") {
            Some("is not a host name".to_owned())
        } else if literal && wildcard {
            Some("a '*.' wildcard takes a domain, not an address".to_owned())
        } else if literal {
            name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .err()
                .map(|_| "is not an IPv6 address in brackets".to_owned())
        } else if name.contains(':') {
            Some(
                "has a port or is an IPv6 address without brackets: the request's port is \
                 removed before comparing, and an IPv6 address is written \"[2001:db8::1]\""
                    .to_owned(),
            )
        } else {
            name.chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
                .map(|c| {
                    format!(
                        "contains {c:?}: a host is letters, digits, '-', '_' and '.', \
                         optionally after \"*.\""
                    )
                })
        };
        match problem {
            Some(why) => Err(format!("invalid host {value:?}: {why}")),
            None if wildcard => Ok(HostPattern::Suffix(format!(".{name}"))),
            None => Ok(HostPattern::Exact(name.to_owned())),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// An IPv4 or IPv6 network: an address and a prefix length (a plain address is one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `addr` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        addr.is_ipv4() == self.network.is_ipv4() && masked(addr, self.prefix) == self.network
    }
}

/// `addr` with the bits past the first `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let (address, prefix) = match value.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (value, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!("invalid network {value:?}: expected an address or CIDR, e.g. \"10.0.0.0/8\" or \"2001:db8::/32\"")
        })?;
        let network = network.to_canonical();
        let bits: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| {
                format!("invalid network {value:?}: the prefix length must be 0..={bits}")
            })?,
        };
        let truncated = masked(network, prefix);
        if truncated != network {
            return Err(format!(
                "invalid network {value:?}: the address has bits set past the /{prefix} prefix \
                 (did you mean \"{truncated}/{prefix}\"?)"
            ));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests;
