//! `cargo xtask bench` (being written).
use std::path::Path;

use anyhow::{bail, Result};

pub fn run(_root: &Path, _args: &[String]) -> Result<()> {
    bail!("`cargo xtask bench` is not implemented yet (it is being written).")
}
