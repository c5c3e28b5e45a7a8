//! `overlay-agent docker-opts`: what flannel's `mk-docker-opts.sh` does,
//! with byte-identical output.
//!
//! `docker-opts [-f ENV-FILE] [-d OUT-FILE] [-i] [-c] [-m] [-k KEY]`
//!
//! Behaviour reproduced from the script (flannel's POSIX-sh version):
//! - the env file (default `/run/flannel/subnet.env`) is sourced if it is a
//!   regular file, on top of the process environment (so FLANNEL_* and
//!   DOCKER_OPT_* variables from the environment count too); a missing file
//!   is not an error;
//! - `DOCKER_OPT_BIP="--bip=$FLANNEL_SUBNET"` and `DOCKER_OPT_MTU="--mtu=$FLANNEL_MTU"`
//!   when those are non-empty; `DOCKER_OPT_IPMASQ` is `--ip-masq=false` for
//!   `FLANNEL_IPMASQ=true` and `--ip-masq=true` for `false` unless `-m`; any
//!   other non-empty value is an error ("Invalid value of FLANNEL_IPMASQ: ..."),
//!   reported before the output file is touched;
//! - every variable whose name contains `DOCKER_OPT_`, sorted by name, is
//!   written as `NAME="value"` (with `-i`) and appended, after a space, to the
//!   combined value, which starts from the current value of the combined key's
//!   variable (plus a space) if that is set; the combined line `KEY="..."`
//!   comes last (with `-c`); neither `-i` nor `-c` means both;
//! - the output file (default `/run/docker_opts.env`) is replaced, even when
//!   it is the env file itself (seed 003's `-d /run/flannel/subnet.env`: the
//!   FLANNEL_* lines are read first, then the file holds only the docker lines);
//! - FLANNEL_IPV6_NETWORK / FLANNEL_IPV6_SUBNET (dual stack) give no
//!   option: the script reads neither, so Docker's `--ipv6
//!   --fixed-cidr-v6=<the IPv6 lease>` is the user's to add;
//! - finally, if the routing table already has a `via` route for the node's
//!   own subnet, it fails with "Your routing table already contains the
//!   subnet: ..." (the file has been written by then, as with the script).
//!
//! Differences: the output file is replaced atomically (temp file + rename,
//! mode 0644) rather than truncated and appended to; a `DOCKER_OPT_*` value
//! containing whitespace (which the script's `for opt in $(set | grep ...)`
//! splits into bogus extra lines) is written whole, its whitespace collapsed;
//! values are not subject to glob expansion or `echo` escape processing.
//! For everything flanneld or this agent writes the output is byte-identical
//! (checked against the script run by dash over flag and input variations).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::cli::DockerOptsArgs;
use crate::subnet_env::{parse_vars, write_file_atomic};

/// What to emit, resolved from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `-i`: one `DOCKER_OPT_*="..."` line per option.
    pub individual: bool,
    /// `-c`: the combined `KEY="..."` line.
    pub combined: bool,
    /// not `-m`: emit the --ip-masq option.
    pub ip_masq: bool,
    /// `-k`: name of the combined variable.
    pub key: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            individual: true,
            combined: true,
            ip_masq: true,
            key: "DOCKER_OPTS".to_owned(),
        }
    }
}

impl Options {
    /// Neither `-i` nor `-c` means both.
    pub fn from_args(args: &DockerOptsArgs) -> Options {
        let (individual, combined) = if !args.individual && !args.combined {
            (true, true)
        } else {
            (args.individual, args.combined)
        };
        Options {
            individual,
            combined,
            ip_masq: !args.no_ip_masq,
            key: args.key.clone(),
        }
    }
}

/// The variables the script sees: `base` (the process environment)
/// overlaid with the assignments of the env file's text.
pub fn merge_vars<I>(base: I, env_file_text: Option<&str>) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: BTreeMap<String, String> = base.into_iter().collect();
    if let Some(text) = env_file_text {
        for (k, v) in parse_vars(text) {
            vars.insert(k, v);
        }
    }
    vars
}

fn nonempty<'a>(vars: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    vars.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

/// The script's one validation: FLANNEL_IPMASQ, when set and -m is not
/// given, must be `true` or `false`.
pub fn check(vars: &BTreeMap<String, String>, opts: &Options) -> Result<(), String> {
    if !opts.ip_masq {
        return Ok(());
    }
    match nonempty(vars, "FLANNEL_IPMASQ") {
        None | Some("true") | Some("false") => Ok(()),
        Some(v) => Err(format!("Invalid value of FLANNEL_IPMASQ: {v}")),
    }
}

/// The output file's text, as mk-docker-opts.sh writes it. (An invalid
/// FLANNEL_IPMASQ, which [`check`] rejects, yields no ip-masq option.)
pub fn render(vars: &BTreeMap<String, String>, opts: &Options) -> String {
    let mut v = vars.clone();
    if let Some(s) = nonempty(vars, "FLANNEL_SUBNET") {
        v.insert("DOCKER_OPT_BIP".to_owned(), format!("--bip={s}"));
    }
    if let Some(m) = nonempty(vars, "FLANNEL_MTU") {
        v.insert("DOCKER_OPT_MTU".to_owned(), format!("--mtu={m}"));
    }
    if opts.ip_masq {
        match nonempty(vars, "FLANNEL_IPMASQ") {
            Some("true") => {
                v.insert("DOCKER_OPT_IPMASQ".to_owned(), "--ip-masq=false".to_owned());
            }
            Some("false") => {
                v.insert("DOCKER_OPT_IPMASQ".to_owned(), "--ip-masq=true".to_owned());
            }
            _ => {}
        }
    }

    let mut combined = v.get(&opts.key).cloned().unwrap_or_default();
    if !combined.is_empty() {
        combined.push(' ');
    }
    let mut out = String::new();
    // BTreeMap iterates sorted by name, like `set`.
    for (name, value) in v.iter().filter(|(n, _)| n.contains("DOCKER_OPT_")) {
        // `$(eval echo "\$$NAME")`: unquoted, so whitespace collapses.
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        if opts.individual {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
        combined.push(' ');
        combined.push_str(&value);
    }
    if opts.combined {
        out.push_str(&format!("{}=\"{combined}\"\n", opts.key));
    }
    out
}

/// The script's final sanity check: given FLANNEL_SUBNET (`10.1.74.1/24`)
/// and `ip route show` output, the offending lines if a `via` route for
/// `10.1.74.0/24` exists.
pub fn route_conflict(flannel_subnet: &str, routes: &str) -> Option<String> {
    let (addr, len) = flannel_subnet.split_once('/')?;
    let octets: Vec<&str> = addr.split('.').collect();
    if octets.len() < 4 {
        return None;
    }
    let last: i64 = octets[3].parse().ok()?;
    let net = format!(
        "{}.{}.{}.{}/{}",
        octets[0],
        octets[1],
        octets[2],
        last - 1,
        len
    );
    let hits: Vec<&str> = routes
        .lines()
        .filter(|l| l.contains(&net) && l.contains("via"))
        .collect();
    if hits.is_empty() {
        None
    } else {
        Some(hits.join("\n"))
    }
}

/// Do what `mk-docker-opts.sh` does with these flags.
pub fn run(args: &DockerOptsArgs) -> anyhow::Result<()> {
    let opts = Options::from_args(args);
    let text = if args.env_file.is_file() {
        Some(
            std::fs::read_to_string(&args.env_file)
                .with_context(|| format!("reading {}", args.env_file.display()))?,
        )
    } else {
        None
    };
    let vars = merge_vars(std::env::vars(), text.as_deref());
    if let Err(msg) = check(&vars, &opts) {
        bail!(msg);
    }
    write_output(&args.out_file, &render(&vars, &opts))?;

    if let Some(subnet) = nonempty(&vars, "FLANNEL_SUBNET") {
        if let Ok(out) = Command::new("ip").args(["route", "show"]).output() {
            let routes = String::from_utf8_lossy(&out.stdout);
            if let Some(lines) = route_conflict(subnet, &routes) {
                bail!("Your routing table already contains the subnet: {lines}");
            }
        }
    }
    Ok(())
}

fn write_output(path: &Path, text: &str) -> anyhow::Result<()> {
    write_file_atomic(path, text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> BTreeMap<String, String> {
        merge_vars(std::iter::empty(), Some(text))
    }

    #[test]
    fn flannel_vector() {
        let v = vars("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n");
        assert_eq!(
            render(&v, &Options::default()),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
    }

    #[test]
    fn route_check() {
        let r = "default via 10.0.0.1 dev eth0\n10.1.74.0/24 via 10.0.0.9 dev eth0\n";
        assert!(route_conflict("10.1.74.1/24", r).is_some());
        assert!(route_conflict("10.1.75.1/24", r).is_none());
    }
}
