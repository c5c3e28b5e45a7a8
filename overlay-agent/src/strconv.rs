//! Go's `strconv` parsing, for values flanneld reads with it: its flags
//! (`--ip-masq=T`, `--iptables-resync=0x10`) and `FLANNEL_IPMASQ` in
//! `subnet.env`. Kept apart from the command line so that readers of
//! `subnet.env` do not depend on the CLI.

/// A value Go's `strconv` would reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoParseError {
    #[error("'{0}' is not a boolean (use true or false)")]
    NotBool(String),
    #[error("'{0}' is not an integer")]
    NotInt(String),
    #[error("'{0}' is out of range")]
    OutOfRange(String),
}

/// Go's strconv.ParseBool.
pub fn parse_go_bool(s: &str) -> Result<bool, GoParseError> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(GoParseError::NotBool(s.to_owned())),
    }
}

/// Go's strconv.ParseInt(s, 0, 64): optional sign, 0x / 0o / 0b prefixes,
/// a leading 0 meaning octal, underscores allowed only after a prefix.
pub fn parse_go_int(s: &str) -> Result<i64, GoParseError> {
    let err = || GoParseError::NotInt(s.to_owned());
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() {
        return Err(err());
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_owned(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_owned(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_owned(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_owned(), true)
    } else {
        (10, lower.clone(), false)
    };
    if digits.contains('_') && !prefixed {
        return Err(err());
    }
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err(err());
    }
    let v = i128::from_str_radix(&digits, radix).map_err(|_| err())?;
    let v = if neg { -v } else { v };
    i64::try_from(v).map_err(|_| GoParseError::OutOfRange(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_ints() {
        assert_eq!(parse_go_int("0x10"), Ok(16));
        assert_eq!(parse_go_int("010"), Ok(8));
        assert_eq!(parse_go_int("-3"), Ok(-3));
        assert!(parse_go_int("1_0").is_err());
        assert_eq!(parse_go_int("0x1_0"), Ok(16));
        assert!(parse_go_int("").is_err());
    }

    #[test]
    fn go_error_messages() {
        assert_eq!(
            parse_go_bool("yes").unwrap_err().to_string(),
            "'yes' is not a boolean (use true or false)"
        );
        assert_eq!(
            parse_go_int("x").unwrap_err().to_string(),
            "'x' is not an integer"
        );
        assert_eq!(
            parse_go_int("0x8000000000000000").unwrap_err().to_string(),
            "'0x8000000000000000' is out of range"
        );
    }
}
