//! flanneld's command line → clap's: Go's flag syntax and the `FLANNELD_*`
//! environment turned into clap's canonical `--name=value` arguments.
//!
//! Go's `flag` package accepts `-flag=v`, `--flag=v`, `-flag v`, bare
//! `--bool-flag` (true) and `--bool-flag=false`, but never takes the next
//! word as a bool's value; clap has none of these rules. So the argument
//! list is rewritten first (a Go value flag swallowing the next word as Go
//! does), then `--name=value` is appended for every flag absent from the
//! command line but set in the environment (so the command line always
//! wins), and only then does clap parse. Which flags exist and which are
//! bools is read from the clap command itself, so a new flag needs no entry
//! here.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::strconv::parse_go_bool;

/// Prefix of the environment variables that stand in for flags.
pub const ENV_PREFIX: &str = "FLANNELD_";
/// Flags never read from the environment.
pub(super) const NO_ENV: &[&str] = &["help", "version", "print-config"];

/// `FLANNELD_<NAME>` for a flag name.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// Rewrite a clap error about a value that came from the environment so it
/// names the variable.
pub(super) fn explain_env_error(
    e: clap::Error,
    from_env: &BTreeMap<String, (String, String)>,
    cmd: &mut clap::Command,
) -> clap::Error {
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return e;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let name = arg
        .trim_start_matches('-')
        .split([' ', '=', '['])
        .next()
        .unwrap_or("")
        .to_owned();
    let Some((key, value)) = from_env.get(&name) else {
        return e;
    };
    let reason = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "invalid value".to_owned());
    clap::Error::raw(
        e.kind(),
        format!("invalid value '{value}' in environment variable {key} (for --{name}): {reason}"),
    )
    .format(cmd)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagKind {
    /// takes no value (help, version)
    NoValue,
    /// Go bool: optional `=value`, never the next word
    Bool,
    /// takes a value: `=value` or the next word
    Value,
}

pub(super) struct Prepared {
    pub(super) args: Vec<OsString>,
    /// long name → (env var, value) for flags filled from the environment
    pub(super) from_env: BTreeMap<String, (String, String)>,
}

/// Go flag syntax → clap canonical syntax, plus environment fallback.
pub(super) fn prepare<F: Fn(&str) -> Option<String>>(
    cmd: &clap::Command,
    args: Vec<OsString>,
    env: &F,
) -> Result<Prepared, clap::Error> {
    let mut it = args.into_iter();
    let mut out: Vec<OsString> = Vec::new();
    if let Some(argv0) = it.next() {
        out.push(argv0);
    }
    let rest: Vec<OsString> = it.collect();

    // Which (sub)command's flags apply.
    let (ctx, start) = match rest.first().and_then(|a| a.to_str()) {
        Some(s) if cmd.find_subcommand(s).is_some() || s == "help" => (Some(s.to_owned()), 1),
        _ => (None, 0),
    };
    out.extend(rest[..start].iter().cloned());
    let ctx_cmd = match &ctx {
        None => cmd,
        Some(name) => match cmd.find_subcommand(name) {
            Some(c) => c,
            None => cmd,
        },
    };
    // docker-opts keeps getopts syntax; help has no flags of interest.
    if matches!(ctx.as_deref(), Some("docker-opts") | Some("help")) {
        out.extend(rest[start..].iter().cloned());
        return Ok(Prepared {
            args: out,
            from_env: BTreeMap::new(),
        });
    }

    // long name (and aliases) → (primary long, kind)
    let mut known: BTreeMap<String, (String, FlagKind)> = BTreeMap::new();
    // value flags whose default is "unset": Go treats `--flag=` as unset
    let mut empty_means_unset: BTreeSet<String> = BTreeSet::new();
    for a in ctx_cmd.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        let kind = if !a.get_action().takes_values() {
            FlagKind::NoValue
        } else if a.is_require_equals_set() {
            FlagKind::Bool
        } else {
            FlagKind::Value
        };
        if kind == FlagKind::Value && a.get_default_values().is_empty() {
            empty_means_unset.insert(long.to_owned());
        }
        known.insert(long.to_owned(), (long.to_owned(), kind));
        for alias in a.get_all_aliases().unwrap_or_default() {
            known.insert(alias.to_owned(), (long.to_owned(), kind));
        }
    }
    // clap's own flags are not in get_arguments() before/after build in all cases
    known
        .entry("help".to_owned())
        .or_insert(("help".to_owned(), FlagKind::NoValue));
    if ctx.is_none() {
        known
            .entry("version".to_owned())
            .or_insert(("version".to_owned(), FlagKind::NoValue));
    }

    let mut present: BTreeSet<String> = BTreeSet::new();
    let rest: Vec<OsString> = rest[start..].to_vec();
    let mut i = 0;
    let mut terminator: Option<usize> = None;
    while i < rest.len() {
        let raw = &rest[i];
        let Some(tok) = raw.to_str() else {
            out.push(raw.clone());
            i += 1;
            continue;
        };
        if tok == "--" {
            terminator = Some(out.len());
            out.extend(rest[i..].iter().cloned());
            break;
        }
        let body = if let Some(b) = tok.strip_prefix("--") {
            Some((b, 2))
        } else if let Some(b) = tok.strip_prefix('-') {
            if b.is_empty() {
                None
            } else {
                Some((b, 1))
            }
        } else {
            None
        };
        let Some((body, dashes)) = body else {
            out.push(raw.clone());
            i += 1;
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        match known.get(name) {
            Some((primary, kind)) => {
                present.insert(primary.clone());
                match kind {
                    FlagKind::NoValue => {
                        if primary == "version" {
                            // Go: -version is a bool flag; --version=false is a no-op
                            match value.map(parse_go_bool) {
                                Some(Ok(false)) => {}
                                _ => out.push("--version".into()),
                            }
                        } else {
                            out.push(format!("--{name}").into());
                        }
                    }
                    FlagKind::Bool => match value {
                        Some(v) => out.push(format!("--{name}={v}").into()),
                        None => {
                            // Go never takes a separate word as a bool's value
                            // (it would silently stop parsing there): say so.
                            if let Some(next) = rest.get(i + 1).and_then(|n| n.to_str()) {
                                if parse_go_bool(next).is_ok() {
                                    return Err(clap::Error::raw(
                                        ErrorKind::InvalidValue,
                                        format!(
                                            "'{tok} {next}': a boolean flag takes its value \
                                             after '=', write --{name}={next}"
                                        ),
                                    ));
                                }
                            }
                            out.push(format!("--{name}").into());
                        }
                    },
                    FlagKind::Value => match value {
                        Some("") if empty_means_unset.contains(primary) => {}
                        Some(v) => out.push(format!("--{name}={v}").into()),
                        None => {
                            if rest.get(i + 1).is_some_and(|n| n.is_empty())
                                && empty_means_unset.contains(primary)
                            {
                                i += 1;
                            } else if let Some(next) = rest.get(i + 1) {
                                let mut s = OsString::from(format!("--{name}="));
                                s.push(next);
                                out.push(s);
                                i += 1;
                            } else {
                                out.push(format!("--{name}").into());
                            }
                        }
                    },
                }
            }
            None => {
                if dashes == 1 && name.chars().count() == 1 {
                    // a real short flag (-h)
                    out.push(raw.clone());
                } else {
                    // unknown: let clap report it in long form
                    out.push(format!("--{body}").into());
                }
            }
        }
        i += 1;
    }

    // Environment fallback for flags absent from the command line.
    let mut from_env = BTreeMap::new();
    let mut env_tokens: Vec<OsString> = Vec::new();
    for a in ctx_cmd.get_arguments() {
        let Some(long) = a.get_long() else { continue };
        if NO_ENV.contains(&long) || present.contains(long) {
            continue;
        }
        let key = env_name(long);
        if let Some(v) = env(&key) {
            if v.is_empty() {
                continue;
            }
            env_tokens.push(format!("--{long}={v}").into());
            from_env.insert(long.to_owned(), (key, v));
        }
    }
    match terminator {
        Some(pos) => {
            out.splice(pos..pos, env_tokens);
        }
        None => out.extend(env_tokens),
    }
    Ok(Prepared {
        args: out,
        from_env,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse_from_env, Command, RunArgs};

    fn run(args: &[&str]) -> RunArgs {
        let mut v = vec!["overlay-agent"];
        v.extend_from_slice(args);
        match parse_from_env(v, |_| None).unwrap().command {
            Command::Run(r) => r,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn go_bool_forms() {
        assert!(run(&["--ip-masq"]).ip_masq);
        assert!(run(&["-ip-masq"]).ip_masq);
        assert!(run(&["--ip-masq=true"]).ip_masq);
        assert!(run(&["-ip-masq=1"]).ip_masq);
        assert!(!run(&["--ip-masq=false"]).ip_masq);
        assert!(!run(&["--iptables-forward-rules=false"]).iptables_forward_rules);
        assert!(run(&[]).iptables_forward_rules);
    }

    #[test]
    fn value_takes_next_word() {
        let r = run(&["-etcd-prefix", "/x", "--iface", "eth0", "--v", "3"]);
        assert_eq!(r.etcd.prefix, "/x");
        assert_eq!(r.iface, vec!["eth0"]);
        assert_eq!(r.verbosity, 3);
        assert_eq!(run(&["-v=2"]).verbosity, 2);
        assert_eq!(run(&["-v", "4"]).verbosity, 4);
    }
}
