//! A lab cluster's System V shared memory segment, released when the
//! cluster goes.
//!
//! Beside its mmap'd shared memory a postmaster keeps one small System V
//! segment (56 bytes: a header), so that a later postmaster on the same data
//! directory can tell from the segment's attach count whether old backends
//! still run. Postgres removes the segment when it shuts down. A postmaster
//! killed with SIGKILL cannot; the next postmaster on the same data directory
//! removes it at its start. A lab cluster killed at teardown has no next
//! postmaster (its directory is deleted), so each such segment stayed until
//! the machine rebooted. After some four thousand lab clusters (a day of test
//! runs on one machine) `shmget` failed with ENOSPC (the kernel's SHMMNI) and
//! no Postgres could start on the machine any more, initdb included.
//!
//! So [`release`] removes the segment of a data directory's last postmaster
//! once it is gone (the key and id are on line 7 of `postmaster.pid`), and
//! [`sweep_orphans`] removes, once a process, what Postgres itself would
//! remove at a start: segments nobody is attached to, whose creator is gone,
//! owned by the user the lab runs Postgres as (left by labs killed before
//! their teardown ran). A segment is only ever a liveness marker: removing an
//! unattached one loses nothing, and a postmaster that later finds its old
//! segment gone starts as usual.

use std::path::Path;
use std::sync::Once;

/// The kernel's table of System V shared memory segments.
const SHM_TABLE: &str = "/proc/sysvipc/shm";

/// One row of [`SHM_TABLE`], the columns we use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    key: i64,
    id: i32,
    creator_pid: u32,
    attached: u64,
    uid: u32,
}

/// Parse [`SHM_TABLE`]'s text (a header line, then whitespace-separated
/// columns: key shmid perms size cpid lpid nattch uid ...). Rows that do not
/// parse are skipped: this is best-effort cleanup.
fn parse_table(text: &str) -> Vec<Segment> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            Some(Segment {
                key: f[0].parse().ok()?,
                id: f[1].parse().ok()?,
                creator_pid: f[4].parse().ok()?,
                attached: f[6].parse().ok()?,
                uid: f[7].parse().ok()?,
            })
        })
        .collect()
}

/// The segment's key and id from a `postmaster.pid` (line 7: `key id`);
/// `None` if the file has no such line (a postmaster that died before it
/// made the segment, or a clean shutdown, which removes the file).
fn key_and_id(pid_file: &str) -> Option<(i64, i32)> {
    let line = pid_file.lines().nth(6)?;
    let mut f = line.split_whitespace();
    let key = f.next()?.parse().ok()?;
    let id = f.next()?.parse().ok()?;
    Some((key, id))
}

/// The segments a sweep removes: unattached, owned by `uid`, and created by
/// a process that no longer exists.
fn orphans(table: &[Segment], uid: u32, alive: impl Fn(u32) -> bool) -> Vec<i32> {
    table
        .iter()
        .filter(|s| s.attached == 0 && s.uid == uid && !alive(s.creator_pid))
        .map(|s| s.id)
        .collect()
}

fn read_table() -> Vec<Segment> {
    std::fs::read_to_string(SHM_TABLE)
        .map(|t| parse_table(&t))
        .unwrap_or_default()
}

fn process_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Mark segment `id` for removal (it goes when the last process detaches).
#[allow(unsafe_code)]
fn remove(id: i32) -> std::io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer (a null pointer is what the man page
    // prescribes) and touches no memory of ours; a stale id only fails.
    let r = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Remove the segment named by `data_dir/postmaster.pid`, if it still exists
/// with that key. Call it once the cluster's postmaster is gone for good
/// (not before a restart: the next postmaster does it then). Best effort:
/// failures are logged.
pub fn release(data_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let Some((key, id)) = key_and_id(&text) else {
        return;
    };
    // Only ours: the id could have been removed and given to another
    // cluster's segment since (each key is the cluster's own).
    if !read_table().iter().any(|s| s.id == id && s.key == key) {
        return;
    }
    if let Err(e) = remove(id) {
        tracing::warn!(data_dir = %data_dir.display(), id, error = %e, "Cannot remove the postmaster's shared memory segment.");
    }
}

/// Remove, once a process, the segments of lab clusters that were killed
/// without a teardown (see the module docs). `uid` is the user Postgres
/// runs as.
pub fn sweep_orphans(uid: u32) {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let gone = orphans(&read_table(), uid, process_exists);
        let mut removed = 0;
        for id in &gone {
            if remove(*id).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                uid,
                "Removed shared memory segments left by Postgres servers killed earlier."
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
  10010836         10   600                    56  5283  5283      0   101   104   101   104 1796413973 1796413973 1796413973                  4096                     0
  10010856         11   600                    56  5286  5293      3   101   104   101   104 1796413975 1796413975 1796413973                  4096                     0
         0         12   600                 4096  7000  7000      0     0     0     0     0 1796413975 1796413975 1796413973                  4096                     0
  garbage row
";

    #[test]
    fn the_kernel_table_parses() {
        let t = parse_table(TABLE);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[0],
            Segment {
                key: 10010836,
                id: 10,
                creator_pid: 5283,
                attached: 0,
                uid: 101
            }
        );
        assert_eq!(t[1].attached, 3);
    }

    #[test]
    fn only_unattached_segments_of_the_user_whose_creator_is_gone_are_orphans() {
        let t = parse_table(TABLE);
        // 11 is attached, 12 belongs to root.
        assert_eq!(orphans(&t, 101, |_| false), vec![10]);
        // The creator still runs: not an orphan.
        assert_eq!(orphans(&t, 101, |pid| pid == 5283), Vec::<i32>::new());
        assert_eq!(orphans(&t, 0, |_| false), vec![12]);
    }

    #[test]
    fn the_segment_is_on_line_seven_of_postmaster_pid() {
        let pid_file = "5283\n/tmp/x/data\n1796413973\n5432\n/tmp/x\n127.0.0.1\n  10010836        10\nready   \n";
        assert_eq!(key_and_id(pid_file), Some((10010836, 10)));
        // A postmaster that died before making its segment.
        assert_eq!(key_and_id("5283\n/tmp/x/data\n1796413973\n5432\n"), None);
    }
}
