//! `overlay-agent cleanup`: removes what the agent installed on this node
//! (BPF programs and pins, the tunnel device with its cluster route and
//! address, the masquerade rules or nftables tables, the blackhole route)
//! and, with `--release-lease`, our lease in etcd. Pod bridges are not
//! ours (Docker's, the CNI plugin's): they stay.
use anyhow::{Context, Result};

use crate::{
    cli::CleanupArgs,
    datapath::{loader::uninstall, PinLayout},
    etcd::SubnetManager,
    host::{blackhole, leftovers, masq, netlink, nftables, tunnel_device},
    node::etcd_settings,
    subnet_env::SubnetEnv,
};

pub async fn run(args: CleanupArgs) -> Result<()> {
    let env = SubnetEnv::read(&args.subnet_file).ok();
    if env.is_none() {
        println!("no readable subnet file at {}: cluster route, address and masquerade rules are located by name only", args.subnet_file.display());
    }
    masq::remove_all().context("removing the masquerade rules")?;
    println!("removed the FLANNEL-POSTRTG / FLANNEL-FWD rules (if present)");
    // Dual stack's ip6tables rules; a host without ip6tables has none.
    match masq::remove_all_with(&["ip6tables"]) {
        Ok(()) => println!("removed the ip6tables FLANNEL-POSTRTG / FLANNEL-FWD rules (if present)"),
        Err(e) => println!("ip6tables rules not removed: {e:#}"),
    }
    match nftables::remove_all() {
        Ok(()) => println!("removed the nftables tables ip flannel-ipv4 / ip6 flannel-ipv6 (if present)"),
        // no nft binary: nothing can have made those tables through it
        Err(nftables::NftError::Spawn { .. }) => println!("no nft binary: no nftables tables to remove"),
        Err(e) => return Err(e).context("removing the nftables tables"),
    }
    let handle = netlink::connect()?;
    for subnet in blackhole::remove(&handle, None).await.context("removing the blackhole route")? {
        println!("removed the blackhole route for {subnet}");
    }
    if tunnel_device::remove(&handle).await.context("removing the tunnel device")? {
        println!("removed {} with its cluster route and address", tunnel_device::TUNNEL_DEVICE);
    }
    if let Some(name) = &args.bridge {
        leftovers::remove_bridge_setup(&handle, name, env.as_ref().map(|e| e.network))
            .await
            .with_context(|| format!("cleaning up bridge {name}"))?;
        println!("removed the cluster route and our address from {name} (the bridge itself is kept for its pods)");
    }
    let pins = PinLayout::new(&args.bpf_pin_dir);
    if uninstall(&pins)? {
        println!("detached the BPF programs and removed our pinned state under {}", pins.root().display());
    } else {
        println!("no BPF state at {}", pins.dir().display());
    }
    if args.release_lease {
        let env = env.context("--release-lease needs the subnet file to know which lease is ours")?;
        let subnet = env.lease_subnet();
        let mgr = SubnetManager::new(etcd_settings(&args.etcd)).await?;
        let (leases, _) = mgr.list_leases().await?;
        // Both subnets: every IPv6-only lease has the same (empty) IPv4 one.
        let ipv6_subnet = env.ipv6_lease_subnet();
        match leases.into_iter().find(|l| l.subnet == subnet && (ipv6_subnet.is_none() || l.ipv6_subnet == ipv6_subnet)) {
            Some(lease) => {
                mgr.release(&lease).await?;
                println!("released lease {subnet}");
            }
            None => println!("lease {subnet} is not in etcd (already expired or released)"),
        }
        std::fs::remove_file(&args.subnet_file)
            .with_context(|| format!("removing {}", args.subnet_file.display()))?;
        println!("removed {}", args.subnet_file.display());
    }
    Ok(())
}
