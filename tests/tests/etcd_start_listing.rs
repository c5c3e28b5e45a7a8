//! The agent's start lists `<prefix>/subnets/` once: finding our lease,
//! acquiring it and the lease watch's first Snapshot share one listing.
//! Counted by etcd itself (its `grpc_server_started_total`), against a real
//! etcd. Needs root (a network namespace, BPF). How the watch goes on from a
//! handed-over listing: etcd_watch.rs; acquiring from one: etcd_lease.rs.

use std::time::Duration;

use anyhow::bail;
use overlay_tests::agent::{Agent, AgentOptions};
use overlay_tests::control_plane::{
    count_subnets, grpc_started, open_subnets, requests_between, write_leases, CONTROL_CONFIG,
};
use overlay_tests::etcd::Etcd;
use overlay_tests::netns::Testbed;
use overlay_tests::poll_until;

/// Leases present when the agent starts.
const LEASES: usize = 2_500;
/// Keys per range request of a listing (the agent's page size).
const PAGE: usize = 10_000;
/// The Range requests of a start besides the listing: the connection probes
/// of the lease manager and of the lease watch, the network config, the
/// lease keeper's read of our own key, and the network config watch's own
/// connection probe and read of the config.
const SINGLE_KEY_READS: u64 = 6;

/// The real agent with 2,500 leases in etcd: all of them reach its maps, and
/// etcd served one listing (one range request) plus the few single-key
/// reads, not the three listings a start used to make.
#[test]
fn agent_start_lists_the_leases_once() {
    let etcd = Etcd::start().unwrap();
    let tb = Testbed::new(1).unwrap();
    let prefix = format!("/start-listing-{}/network", tb.id());
    etcd.put(&format!("{prefix}/config"), CONTROL_CONFIG).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
        let lease_id = client.lease_grant(3_600, None).await?.id();
        write_leases(&mut client, &prefix, 0..LEASES, lease_id).await
    })
    .unwrap();

    // Nothing else talks to this etcd from here on.
    let before = grpc_started(&etcd).unwrap();
    let agent = Agent::start_forwarded(
        tb.host(0),
        AgentOptions { etcd_endpoints: &etcd.endpoint(), prefix: &prefix, dir: tb.dir(), extra: vec![] },
    )
    .unwrap();
    agent.wait_ready(Duration::from_secs(60)).unwrap();
    poll_until(Duration::from_secs(60), &format!("all {LEASES} leases in SUBNETS"), || {
        let n = count_subnets(&open_subnets(&agent.pin_dir())?);
        if n < LEASES {
            bail!("{n} of {LEASES} in SUBNETS");
        }
        Ok(())
    })
    .unwrap();
    // Counted when the request starts: anything still in flight is counted.
    let during = requests_between(&before, &grpc_started(&etcd).unwrap());

    eprintln!("etcd requests during the start: {during:?}");
    let ranges = during.get("Range").copied().unwrap_or(0);
    let pages = LEASES.div_ceil(PAGE) as u64;
    assert!(ranges >= pages, "etcd counted {ranges} Range requests, fewer than one listing ({pages}): {during:?}");
    assert!(
        ranges <= pages + SINGLE_KEY_READS,
        "the agent's start made {ranges} Range requests; one listing of {LEASES} leases is {pages} (pages of \
         {PAGE} keys) and the other reads are {SINGLE_KEY_READS} (three connection probes, the config twice, our \
         own key). Each further listing costs {pages}: this start looks like {} listings. All requests: {during:?}",
        (ranges - SINGLE_KEY_READS.min(ranges)).div_ceil(pages)
    );
}
