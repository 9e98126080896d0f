use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use super::*;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 2, i), 80))
}

fn backend(i: u8, weight: u32) -> Backend {
    Backend {
        addr: addr(i),
        weight,
        cookie_id: format!("s{i}"),
        maxconn: 0,
    }
}

/// Backends 1..=n, weight 1.
fn backends(n: u8) -> Vec<Backend> {
    (1..=n).map(|i| backend(i, 1)).collect()
}

fn selector(backends: Vec<Backend>, balance: &PoolBalance) -> PoolSelector {
    PoolSelector::new(BackendSet::new(backends, balance))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn request<'a>(headers: &'a HeaderMap, uri: &'a str) -> RequestKey<'a> {
    RequestKey {
        client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        path_and_query: uri,
        headers,
    }
}

/// Picks `n` times without holding the guards; how often each backend came.
fn tally(s: &PoolSelector, n: usize) -> HashMap<SocketAddr, usize> {
    let h = HeaderMap::new();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let pick = s.pick(&request(&h, "/"), &[]).unwrap();
        *counts.entry(pick.addr).or_default() += 1;
    }
    counts
}

fn least_conn() -> PoolBalance {
    PoolBalance {
        algorithm: Algorithm::LeastConn,
        cookie: None,
    }
}

fn hashing(key: HashKey) -> PoolBalance {
    PoolBalance {
        algorithm: Algorithm::Hash(key),
        cookie: None,
    }
}

fn persistence(insert: bool, nocache: bool, indirect: bool) -> PoolBalance {
    PoolBalance {
        algorithm: Algorithm::RoundRobin,
        cookie: Some(CookiePersistence {
            name: "SERVERID".into(),
            insert,
            nocache,
            indirect,
        }),
    }
}

#[test]
fn selector_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<PoolSelector>();
    check::<Pick>();
}

#[test]
fn round_robin_respects_weights_smoothly() {
    let s = selector(
        vec![backend(1, 5), backend(2, 1), backend(3, 1), backend(4, 0)],
        &PoolBalance::default(),
    );
    let counts = tally(&s, 7000);
    assert_eq!(counts[&addr(1)], 5000);
    assert_eq!(counts[&addr(2)], 1000);
    assert_eq!(counts[&addr(3)], 1000);
    assert!(!counts.contains_key(&addr(4)), "drained backend picked");
    // Smooth, as nginx's (7000 picks so far: a new cycle starts).
    let h = HeaderMap::new();
    let seq: Vec<SocketAddr> = (0..7)
        .map(|_| s.pick(&request(&h, "/"), &[]).unwrap().addr)
        .collect();
    let expected = [1, 1, 2, 1, 3, 1, 1].map(addr);
    assert_eq!(seq, expected);
}

#[test]
fn empty_or_all_drained_gives_none() {
    let h = HeaderMap::new();
    for balance in [
        PoolBalance::default(),
        least_conn(),
        hashing(HashKey::Source),
    ] {
        let s = selector(Vec::new(), &balance);
        assert!(s.pick(&request(&h, "/"), &[]).is_none(), "{balance:?}");
        let s = selector(vec![backend(1, 0)], &balance);
        assert!(s.pick(&request(&h, "/"), &[]).is_none(), "{balance:?}");
    }
}

#[test]
fn exclude_skips_tried_backends() {
    let h = HeaderMap::new();
    for balance in [
        PoolBalance::default(),
        least_conn(),
        hashing(HashKey::Uri),
        persistence(true, false, false),
    ] {
        let s = selector(backends(3), &balance);
        for _ in 0..20 {
            let pick = s.pick(&request(&h, "/x"), &[addr(1), addr(3)]).unwrap();
            assert_eq!(pick.addr, addr(2), "{balance:?}");
        }
        assert!(
            s.pick(&request(&h, "/x"), &[addr(1), addr(2), addr(3)])
                .is_none(),
            "{balance:?}"
        );
    }
}

#[test]
fn leastconn_prefers_idle_backends() {
    let balance = least_conn();
    let s = selector(backends(3), &balance);
    let h = HeaderMap::new();
    let req = request(&h, "/");
    // Three picks spread over the three (ties go round-robin), holding their guards.
    let held: Vec<Pick> = (0..3).map(|_| s.pick(&req, &[]).unwrap()).collect();
    let mut addrs: Vec<_> = held.iter().map(|p| p.addr).collect();
    addrs.sort_unstable();
    assert_eq!(addrs, [addr(1), addr(2), addr(3)]);
    // Backend 2's request ends: it is the idle one now, every time.
    let (two, others): (Vec<Pick>, Vec<Pick>) = held.into_iter().partition(|p| p.addr == addr(2));
    drop(two);
    assert_eq!(s.active(addr(2)), 0);
    for _ in 0..5 {
        assert_eq!(s.pick(&req, &[]).unwrap().addr, addr(2));
    }
    assert_eq!(s.active(addr(1)), 1);
    drop(others);
    assert_eq!(s.active(addr(1)), 0);
}

#[test]
fn leastconn_weighs_active_requests() {
    // Weight 3 takes three concurrent requests for every one of weight 1.
    let balance = least_conn();
    let s = selector(vec![backend(1, 3), backend(2, 1)], &balance);
    let h = HeaderMap::new();
    let held: Vec<Pick> = (0..8)
        .map(|_| s.pick(&request(&h, "/"), &[]).unwrap())
        .collect();
    assert_eq!(held.iter().filter(|p| p.addr == addr(1)).count(), 6);
    assert_eq!(s.active(addr(2)), 2);
}

#[test]
fn counters_survive_update() {
    let balance = least_conn();
    let s = selector(backends(2), &balance);
    let h = HeaderMap::new();
    let req = request(&h, "/");
    let first = s.pick(&req, &[]).unwrap();
    let busy = first.addr;
    let idle = if busy == addr(1) { addr(2) } else { addr(1) };
    // A new set with the same backends (and one more), then one without `busy`, then
    // with it again: its in-flight request still counts.
    s.set_backends(backends(3), &balance);
    assert_eq!(s.active(busy), 1);
    s.set_backends(backends(3).into_iter().filter(|b| b.addr != busy), &balance);
    assert_eq!(s.active(busy), 1, "count of a backend that left");
    s.update(BackendSet::new(backends(2), &balance));
    assert_eq!(s.active(busy), 1);
    // So least-conn sends the next request to the other one.
    let next = s.pick(&req, &[]).unwrap();
    assert_eq!(next.addr, idle);
    drop(first);
    assert_eq!(s.active(busy), 0);
    assert_eq!(s.active(idle), 1);
}

/// Which backend each of `keys` URIs hashes to.
fn uri_owners(s: &PoolSelector, keys: usize) -> Vec<SocketAddr> {
    let h = HeaderMap::new();
    (0..keys)
        .map(|k| {
            s.pick(&request(&h, &format!("/item/{k}")), &[])
                .unwrap()
                .addr
        })
        .collect()
}

#[test]
fn hash_is_stable_and_spread() {
    let s = selector(backends(4), &hashing(HashKey::Uri));
    let owners = uri_owners(&s, 4000);
    assert_eq!(owners, uri_owners(&s, 4000), "same key, same backend");
    // A fresh selector over the same backends (a restarted agent) agrees.
    assert_eq!(
        owners,
        uri_owners(&selector(backends(4), &hashing(HashKey::Uri)), 4000)
    );
    for i in 1..=4 {
        let n = owners.iter().filter(|&&a| a == addr(i)).count();
        assert!((800..1200).contains(&n), "backend {i}: {n} of 4000 keys");
    }
}

#[test]
fn hash_removing_a_backend_moves_only_its_keys() {
    let balance = hashing(HashKey::Uri);
    let s = selector(backends(5), &balance);
    let before = uri_owners(&s, 5000);
    s.set_backends(
        backends(5).into_iter().filter(|b| b.addr != addr(3)),
        &balance,
    );
    let after = uri_owners(&s, 5000);
    for (b, a) in before.iter().zip(&after) {
        if *b == addr(3) {
            assert_ne!(*a, addr(3));
        } else {
            assert_eq!(a, b, "a key of a surviving backend moved");
        }
    }
    // And it coming back takes back about its share, moving nothing else.
    s.set_backends(backends(5), &balance);
    let back = uri_owners(&s, 5000);
    for (a, k) in after.iter().zip(&back) {
        assert!(k == a || *k == addr(3));
    }
    let regained = back.iter().filter(|&&a| a == addr(3)).count();
    assert!((800..1200).contains(&regained), "{regained}");
}

#[test]
fn hash_keys_from_source_header_and_cookie() {
    let sources = |s: &PoolSelector, client: IpAddr| {
        let h = HeaderMap::new();
        let req = RequestKey {
            client,
            path_and_query: "/",
            headers: &h,
        };
        s.pick(&req, &[]).unwrap().addr
    };
    let s = selector(backends(8), &hashing(HashKey::Source));
    let v4 = Ipv4Addr::new(198, 51, 100, 7);
    let owner = sources(&s, IpAddr::V4(v4));
    for _ in 0..10 {
        assert_eq!(sources(&s, IpAddr::V4(v4)), owner);
    }
    // The same client on a dual-stack socket.
    assert_eq!(sources(&s, IpAddr::V6(v4.to_ipv6_mapped())), owner);
    let spread: std::collections::HashSet<_> = (0..64u8)
        .map(|i| {
            sources(
                &s,
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i))),
            )
        })
        .collect();
    assert!(spread.len() > 4, "{spread:?}");

    for (balance, name) in [
        (hashing("header:X-User".parse().unwrap()), "x-user"),
        (hashing("cookie:uid".parse().unwrap()), "cookie"),
    ] {
        let s = selector(backends(8), &balance);
        let pick = |value: &str| {
            let value = if name == "cookie" {
                format!("a=b; uid={value}")
            } else {
                value.to_owned()
            };
            let h = headers(&[(name, &value)]);
            s.pick(&request(&h, "/"), &[]).unwrap().addr
        };
        let owners: Vec<_> = (0..64).map(|k| pick(&format!("user{k}"))).collect();
        for (k, owner) in owners.iter().enumerate() {
            assert_eq!(pick(&format!("user{k}")), *owner, "{balance:?}");
        }
        let distinct: std::collections::HashSet<_> = owners.iter().collect();
        assert!(distinct.len() > 4, "{balance:?}: {distinct:?}");
    }
}

#[test]
fn hash_without_the_key_goes_round_robin() {
    let s = selector(backends(3), &hashing("header:X-User".parse().unwrap()));
    let counts = tally(&s, 300);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [100; 3]);
}

#[test]
fn hash_key_words() {
    assert_eq!("source".parse(), Ok(HashKey::Source));
    assert_eq!("URI".parse(), Ok(HashKey::Uri));
    let header: HashKey = "header:X-Forwarded-User".parse().unwrap();
    assert_eq!(header.to_string(), "header:x-forwarded-user");
    let cookie: HashKey = "cookie:JSESSIONID".parse().unwrap();
    assert_eq!(cookie, HashKey::Cookie("JSESSIONID".into()));
    assert_eq!(cookie.to_string(), "cookie:JSESSIONID");
    for bad in [
        "",
        "src",
        "header:",
        "header:a b",
        "cookie:",
        "cookie:a;b",
        "uri:x",
    ] {
        let err = bad.parse::<HashKey>().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid hash_key {bad:?}: expected")),
            "{err}"
        );
    }
    assert_eq!("round-robin".parse(), Ok(BalanceKind::RoundRobin));
    assert_eq!("leastconn".parse(), Ok(BalanceKind::LeastConn));
    assert_eq!(Algorithm::Hash(HashKey::Uri).kind().to_string(), "hash");
}

#[test]
fn cookie_valid_id_is_honoured_and_not_set_again() {
    let s = selector(backends(3), &persistence(true, false, false));
    let h = headers(&[("cookie", "lang=en; SERVERID=s2")]);
    for _ in 0..10 {
        let pick = s.pick(&request(&h, "/"), &[]).unwrap();
        assert_eq!(pick.addr, addr(2));
        assert_eq!(pick.cookie, None, "inserted once only");
        assert_eq!(pick.request_cookie, CookieHeader::Unchanged, "not indirect");
    }
    // Quoted values are read too.
    let h = headers(&[("cookie", "SERVERID=\"s3\"")]);
    assert_eq!(s.pick(&request(&h, "/"), &[]).unwrap().addr, addr(3));
}

#[test]
fn cookie_inserted_when_missing_or_invalid() {
    let s = selector(backends(3), &persistence(true, true, false));
    for cookie in [None, Some("SERVERID=nope"), Some("SERVERID=")] {
        let h = cookie.map_or_else(HeaderMap::new, |c| headers(&[("cookie", c)]));
        let pick = s.pick(&request(&h, "/"), &[]).unwrap();
        let id = backends(3)
            .into_iter()
            .find(|b| b.addr == pick.addr)
            .unwrap()
            .cookie_id;
        let set = pick.cookie.expect("a cookie to insert");
        assert_eq!(set.set_cookie(), &format!("SERVERID={id}; Path=/"));
        let mut response = HeaderMap::new();
        response.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        set.apply(&mut response);
        assert_eq!(
            response.get(SET_COOKIE).unwrap(),
            &format!("SERVERID={id}; Path=/")
        );
        let cache: Vec<_> = response.get_all(CACHE_CONTROL).iter().collect();
        assert_eq!(cache, ["max-age=60", "no-cache=\"set-cookie\""]);
    }
    // Without nocache only Set-Cookie; without insert nothing (the cookie is only read).
    let h = HeaderMap::new();
    let s = selector(backends(3), &persistence(true, false, false));
    let set = s.pick(&request(&h, "/"), &[]).unwrap().cookie.unwrap();
    assert_eq!(set.headers().len(), 1);
    let s = selector(backends(3), &persistence(false, true, false));
    assert_eq!(s.pick(&request(&h, "/"), &[]).unwrap().cookie, None);
    let h = headers(&[("cookie", "SERVERID=s1")]);
    assert_eq!(s.pick(&request(&h, "/"), &[]).unwrap().addr, addr(1));
}

#[test]
fn cookie_of_a_down_or_tried_backend_is_redispatched() {
    let balance = persistence(true, false, false);
    let s = selector(backends(3), &balance);
    let h = headers(&[("cookie", "SERVERID=s2")]);
    // Backend 2 went down: the agent's next set lacks it.
    s.set_backends(
        backends(3).into_iter().filter(|b| b.addr != addr(2)),
        &balance,
    );
    let pick = s.pick(&request(&h, "/"), &[]).unwrap();
    assert_ne!(pick.addr, addr(2));
    let id = if pick.addr == addr(1) { "s1" } else { "s3" };
    assert_eq!(
        pick.cookie.unwrap().set_cookie(),
        &format!("SERVERID={id}; Path=/")
    );
    // Back up: honoured again. A retry after it failed goes elsewhere, with a new cookie.
    s.set_backends(backends(3), &balance);
    assert_eq!(s.pick(&request(&h, "/"), &[]).unwrap().addr, addr(2));
    let retry = s.pick(&request(&h, "/"), &[addr(2)]).unwrap();
    assert_ne!(retry.addr, addr(2));
    assert!(retry.cookie.is_some());
}

#[test]
fn cookie_persists_to_a_drained_backend() {
    let balance = persistence(true, false, false);
    let s = selector(vec![backend(1, 1), backend(2, 0)], &balance);
    let h = headers(&[("cookie", "SERVERID=s2")]);
    assert_eq!(s.pick(&request(&h, "/"), &[]).unwrap().addr, addr(2));
    let h = HeaderMap::new();
    assert_eq!(tally(&s, 10)[&addr(1)], 10);
    assert!(s.pick(&request(&h, "/"), &[addr(1)]).is_none());
}

#[test]
fn indirect_removes_the_cookie_before_forwarding() {
    let s = selector(backends(2), &persistence(true, false, true));
    let cases: [(&[&str], CookieHeader); 4] = [
        (&[], CookieHeader::Unchanged),
        (&["SERVERID=s1"], CookieHeader::Remove),
        (
            &["a=1; SERVERID=s1; b=2"],
            CookieHeader::Replace(HeaderValue::from_static("a=1; b=2")),
        ),
        // Several fields (HTTP/2 splits them) become one; an unknown id is removed too.
        (
            &["a=1", "SERVERID=zz;c=3"],
            CookieHeader::Replace(HeaderValue::from_static("a=1; c=3")),
        ),
    ];
    for (fields, expected) in cases {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|f| ("cookie", *f)).collect();
        let h = headers(&pairs);
        let pick = s.pick(&request(&h, "/"), &[]).unwrap();
        assert_eq!(pick.request_cookie, expected, "{fields:?}");
        let mut forwarded = h.clone();
        pick.request_cookie.apply(&mut forwarded);
        let sent: Vec<_> = forwarded.get_all(COOKIE).iter().collect();
        match &expected {
            CookieHeader::Unchanged => assert_eq!(forwarded, h),
            CookieHeader::Remove => assert!(sent.is_empty()),
            CookieHeader::Replace(v) => assert_eq!(sent, [v]),
        }
    }
}

#[test]
fn cookie_ids() {
    let a = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 80));
    assert_eq!(
        default_cookie_id(a),
        format!("{:016x}", backend_key(a.ip(), 80))
    );
    assert_eq!(default_cookie_id(a).len(), 16);
    assert_ne!(default_cookie_id(a), default_cookie_id(addr(1)));
    assert_eq!(cookie_id_problem("s1"), None);
    assert_eq!(cookie_id_problem("app-1.eu_west~2"), None);
    for bad in ["", "a b", "a;b", "a=b", "é", &"x".repeat(65)] {
        assert!(cookie_id_problem(bad).is_some(), "{bad:?}");
    }
    assert_eq!(cookie_name_problem("SERVERID"), None);
    assert!(cookie_name_problem("a=b").is_some());
    // A set given a malformed id falls back to the derived one.
    let bad = Backend {
        cookie_id: "a b".into(),
        maxconn: 0,
        ..backend(1, 1)
    };
    let set = BackendSet::new([bad, backend(1, 2)], &PoolBalance::default());
    assert_eq!(
        set.backends().len(),
        1,
        "repeated address keeps its first entry"
    );
    assert_eq!(set.backends()[0].cookie_id, default_cookie_id(addr(1)));
}

#[test]
fn concurrent_picks_and_updates_keep_counts_exact() {
    let balance = least_conn();
    let s = selector(backends(4), &balance);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let h = HeaderMap::new();
                for k in 0..2000 {
                    let held: Vec<Pick> = (0..=k % 3)
                        .filter_map(|_| s.pick(&request(&h, "/"), &[]))
                        .collect();
                    assert!(!held.is_empty());
                }
            });
        }
        scope.spawn(|| {
            for k in 0..200u8 {
                // Backend 1 leaves and comes back; the others stay.
                s.set_backends(
                    backends(4)
                        .into_iter()
                        .filter(|b| k % 2 == 0 || b.addr != addr(1)),
                    &balance,
                );
            }
        });
    });
    for i in 1..=4 {
        assert_eq!(s.active(addr(i)), 0, "backend {i}");
    }
}

#[test]
fn a_full_backend_is_passed_over_and_a_full_pool_is_saturated() {
    let limited = |i: u8, maxconn: u32| Backend {
        maxconn,
        ..backend(i, 1)
    };
    let selector = PoolSelector::new(BackendSet::new(
        [limited(1, 1), limited(2, 1)],
        &PoolBalance::default(),
    ));
    let headers = http::HeaderMap::new();
    let key = RequestKey {
        client: "10.0.1.2".parse().unwrap(),
        path_and_query: "/",
        headers: &headers,
    };
    let first = selector.pick(&key, &[]).expect("room on both");
    let second = selector.pick(&key, &[]).expect("room on the other");
    assert_ne!(first.addr, second.addr, "the full one is passed over");
    assert!(selector.pick(&key, &[]).is_none());
    assert!(selector.saturated(&[]));
    drop(first);
    assert!(!selector.saturated(&[]));
    assert!(selector.pick(&key, &[]).is_some());
}
