//! Printing: numbered steps, indented details, small tables, and colours
//! only when stdout is a terminal (and `NO_COLOR` is unset).
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

static COLOR: AtomicBool = AtomicBool::new(false);
static STEP: AtomicUsize = AtomicUsize::new(0);

/// Colours on when stdout is a terminal, unless `NO_COLOR` is set or the
/// caller said no.
pub fn init(allow_color: bool) {
    let tty = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    COLOR.store(allow_color && tty && !no_color, Ordering::Relaxed);
}

fn paint(code: &str, s: &str) -> String {
    if COLOR.load(Ordering::Relaxed) {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

pub fn bold(s: &str) -> String {
    paint("1", s)
}
pub fn dim(s: &str) -> String {
    paint("2", s)
}
pub fn green(s: &str) -> String {
    paint("32", s)
}
pub fn yellow(s: &str) -> String {
    paint("33", s)
}
pub fn red(s: &str) -> String {
    paint("1;31", s)
}
pub fn cyan(s: &str) -> String {
    paint("36", s)
}
pub fn blue(s: &str) -> String {
    paint("1;34", s)
}

/// A line on stdout. Errors (a closed pipe) are ignored: the demo must
/// still clean up when nobody reads it any more.
pub fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Text without a newline (a "waiting ..." that the next `line` completes).
pub fn part(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{s}");
    let _ = out.flush();
}

/// `[k/n] title`, after a blank line.
pub fn step(k: usize, n: usize, title: &str) {
    STEP.store(k, Ordering::Relaxed);
    line("");
    line(&format!("{} {}", blue(&format!("[{k}/{n}]")), bold(title)));
}

/// The step under way (0 before the first).
pub fn current_step() -> usize {
    STEP.load(Ordering::Relaxed)
}

/// A detail under a step.
pub fn info(s: &str) {
    line(&format!("      {s}"));
}

/// A command as a person would type it.
pub fn cmd(s: &str) {
    line(&format!("      {}", cyan(&format!("$ {s}"))));
}

/// Every line of `text`, indented under a step (and dimmed when `faint`).
pub fn block(text: &str, indent: usize, faint: bool) {
    let pad = " ".repeat(indent);
    for l in text.trim_end().lines() {
        if faint {
            line(&format!("{pad}{}", dim(l)));
        } else {
            line(&format!("{pad}{l}"));
        }
    }
}

/// A table with a header row: first column left-aligned, others as given
/// (`right[i]` for column i). Widths come from the plain text, so colour
/// codes added to cells afterwards must not be counted: pass plain cells
/// and a painter per cell.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[bool], paint_cell: impl Fn(usize, usize, &str) -> String) {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (c, cell) in row.iter().enumerate().take(cols) {
            widths[c] = widths[c].max(cell.chars().count());
        }
    }
    let fmt_row = |cells: Vec<String>, raw: &[String]| -> String {
        let mut s = String::from("      ");
        for c in 0..cols {
            let pad = widths[c] - raw[c].chars().count();
            if c > 0 {
                s.push_str("  ");
            }
            if right.get(c).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(&cells[c]);
            } else {
                s.push_str(&cells[c]);
                if c + 1 < cols {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    let raw_header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    line(&fmt_row(raw_header.iter().map(|h| dim(h)).collect(), &raw_header));
    for (r, row) in rows.iter().enumerate() {
        let painted = row.iter().enumerate().map(|(c, cell)| paint_cell(r, c, cell)).collect();
        line(&fmt_row(painted, row));
    }
}

pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn bytes(n: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", n as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(256 << 20), "256 MiB");
        assert_eq!(bytes(3 << 29), "1.50 GiB");
    }
}
