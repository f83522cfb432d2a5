//! Resource use of a process, from /proc (Linux): resident memory and CPU
//! seconds, so the tool can report KiB per connection and deliveries per
//! CPU-second of the process under test.

use std::time::Duration;

/// CPU time and resident memory of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu: Duration,
    pub rss_kib: u64,
}

/// Reads `/proc/{pid}/stat` and `/proc/{pid}/status`; `pid` may be "self".
pub fn sample(pid: &str) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces: ") S ppid …".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ") ".
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(Sample {
        cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec()),
        rss_kib,
    })
}

/// USER_HZ: 100 on every Linux this runs on (getconf CLK_TCK); reading it
/// needs libc, so the known value is used.
fn clock_ticks_per_sec() -> f64 {
    100.0
}
