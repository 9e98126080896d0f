//! Packet fixtures: scheduling new flows. A VIP without backends drops them; a flow whose
//! backend id now names another backend keeps its own backend when that one goes down.

use std::net::Ipv4Addr;

use balancer_common::{map_names, stat, Conn};
use balancer_tests::fixtures::frames::{ack, client_key, parsed, syn};
use balancer_tests::fixtures::{
    act, check, from_client, Fixture, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use balancer_tests::frame::Spec;

#[test]
fn vip_without_backends_drops_new_flows() {
    Fixture::new().run_steps([
        from_client(
            "a SYN to the VIP without backends",
            Spec { dport: 81, ..syn() },
            XDP_DROP,
        ),
        check("counted", |fx| {
            assert_eq!(fx.global(stat::DROP_NO_BACKEND), 1);
        }),
    ]);
}

#[test]
fn a_flow_stays_when_the_backend_now_holding_its_id_goes_down() {
    let other = Ipv4Addr::new(10, 0, 2, 99);
    Fixture::new().run_steps([
        from_client("the SYN", syn(), XDP_REDIRECT),
        // As after the flow's backend was deleted and its id given to another backend (or
        // an agent that took the pinned tables over numbered the backends afresh): the id
        // now names another address than the flow's.
        act("the flow's backend id names another address", move |fx| {
            fx.edit::<Conn>(map_names::CONNS, &client_key(&syn()), |conn| {
                conn.backend_addr = u32::from_ne_bytes(other.octets());
            });
        }),
        act(
            "the backend with the id goes down",
            Fixture::web_backend_fails,
        ),
        from_client(
            "the flow keeps its own backend (passed: the fixture has no neighbour for it)",
            ack(),
            XDP_PASS,
        )
        .output(move |out, _| {
            assert_eq!(parsed(out).dst, other, "the flow's own backend");
        }),
        check("not rescheduled", |fx| {
            assert_eq!(fx.global(stat::CONN_RESCHEDULED), 0);
        }),
    ]);
}
