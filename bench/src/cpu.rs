//! CPU time of a process tree, from `/proc`, for the router bench's
//! "CPU seconds per 10k requests".
//!
//! A proxy is measured as a tree: nginx's work happens in its workers (the
//! master only supervises), so the root pid and all its live descendants are
//! summed. `/proc/PID/stat`'s utime and stime already cover every thread of a
//! process (the ezone router's tokio workers). The bench samples the tree
//! right before and right after the measured wrk run; the difference is the
//! CPU the proxy spent in that window. A descendant that exits inside the
//! window takes its time with it (nginx workers do not, in a run).
//!
//! The unit is the kernel's clock tick (`USER_HZ`, from `getconf CLK_TCK`,
//! 100 on Linux), so a short run resolves to 10 ms.

use std::process::Command;

use ezone_chaos::process::descendants;

/// `USER_HZ` when `getconf` cannot tell (it is 100 on every Linux ABI).
const DEFAULT_CLK_TCK: u64 = 100;

/// Clock ticks per second, as the kernel reports CPU times in `/proc`.
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(DEFAULT_CLK_TCK)
}

/// utime + stime (ticks) from a `/proc/PID/stat` line. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from the
/// last `)`: utime and stime are fields 14 and 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// utime + stime of one process; 0 if it is gone.
fn process_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_cpu_ticks(&s))
        .unwrap_or(0)
}

/// CPU ticks (user + system) used so far by `root` and its live descendants.
pub fn tree_ticks(root: u32) -> u64 {
    std::iter::once(root)
        .chain(descendants(root))
        .map(process_ticks)
        .sum()
}

/// Context switches (voluntary and not) of one process's threads so far:
/// each is a time it went to sleep or was put off the CPU, and a wake-up
/// after it. 0 if it is gone.
fn process_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| parse_switches(&status))
        .sum()
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of a
/// `/proc/.../status` text.
fn parse_switches(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches")
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// Context switches so far of `root`'s threads and its live descendants'.
pub fn tree_switches(root: u32) -> u64 {
    std::iter::once(root)
        .chain(descendants(root))
        .map(process_switches)
        .sum()
}

/// Seconds of CPU per 10 000 requests, from a tick difference.
pub fn seconds_per_10k(ticks: u64, ticks_per_second: u64, requests: u64) -> Option<f64> {
    if requests == 0 || ticks_per_second == 0 {
        return None;
    }
    Some(ticks as f64 / ticks_per_second as f64 / requests as f64 * 10_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_both_kinds_of_context_switch() {
        let status = "Name:\tezone\nvoluntary_ctxt_switches:\t120\n\
                      nonvoluntary_ctxt_switches:\t7\nThreads:\t3\n";
        assert_eq!(parse_switches(status), 127);
        assert_eq!(parse_switches("Name:\tx\n"), 0);
    }

    #[test]
    fn parses_utime_and_stime() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let line = "42 (nginx: worker (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_cpu_ticks(line), Some(267));
        assert_eq!(parse_cpu_ticks("42 (short) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn own_process_has_cpu_time_readable() {
        // Only that it reads: how much time it is, is not asserted.
        let me = std::process::id();
        assert!(std::fs::read_to_string(format!("/proc/{me}/stat"))
            .ok()
            .and_then(|s| parse_cpu_ticks(&s))
            .is_some());
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn per_10k() {
        assert_eq!(seconds_per_10k(100, 100, 10_000), Some(1.0));
        assert_eq!(seconds_per_10k(50, 100, 20_000), Some(0.25));
        assert_eq!(seconds_per_10k(5, 100, 0), None);
    }
}
