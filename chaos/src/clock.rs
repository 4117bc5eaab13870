//! Clock skew for a site's processes, with libfaketime (Debian packages
//! `faketime` and `libfaketime`, 0.9.10): the `clock-skew` fault.
//!
//! A lab started with [`crate::lab::LabSpec::clock_skew`] gives each site an
//! offset file, `<lab dir>/clock-<site>`, holding a libfaketime time spec
//! (`+0` while there is no skew, `+0.400` for 400 ms ahead, `-0.400` for
//! 400 ms behind). The site's Postgres (the postmaster; its backends are
//! forked from it and inherit the library) and the ensemble's order service,
//! router and replicator at that site all run with [`SiteClock::env`]:
//!
//! - `LD_PRELOAD=<libfaketimeMT.so.1>`: the library, loaded into the
//!   process by the dynamic linker; it intercepts `clock_gettime`,
//!   `gettimeofday`, `time` and friends. The `MT` build serializes its own
//!   state with a mutex (our processes are multi-threaded); it is preferred
//!   over `libfaketime.so.1` when both are installed.
//! - `FAKETIME_TIMESTAMP_FILE=<the offset file>`: "the file given in the
//!   environment variable FAKETIME_TIMESTAMP_FILE", one line "with exactly
//!   the same content as the FAKETIME environment variable"; re-read at run
//!   time, so an offset changes without a restart (README 4a, 4e "Changing
//!   the 'x' modifier during run-time"). `FAKETIME` itself "always has
//!   priority over the files", so every inherited `FAKETIME*` variable is
//!   removed first.
//! - `FAKETIME_CACHE_DURATION=0`: how long the spec is cached ("cached for
//!   10 seconds" by default). It is a whole number of seconds (`atoi`), and
//!   the cache expires when the wall clock's *second* moves past the second
//!   of the last read, so `0` re-reads the file at most once a second per
//!   process: a change is seen within about a second ([`APPLY_WITHIN`]).
//!   `FAKETIME_NO_CACHE=1` would re-read it on every clock call instead.
//! - `FAKETIME_DONT_FAKE_MONOTONIC=1`: only the wall clock
//!   (`CLOCK_REALTIME`) moves. `CLOCK_MONOTONIC` (and `_RAW`, `_COARSE`,
//!   `BOOTTIME`) never jumps on a real host, and timers, timeouts and
//!   tokio's `Instant` run on it.
//! - `NO_FAKE_STAT=1`: file timestamps (`stat`) stay real; the fault is about
//!   clocks, not files.
//!
//! **Fractional offsets** are supported by 0.9.10 ("fractions can be used in
//! the specification of time offsets", README 4e, since 0.8): the offset is
//! read with `atof`, whose decimal point depends on the locale (`LC_NUMERIC`).
//! Our processes never change it (Rust does not call `setlocale`; Postgres
//! sets `LC_NUMERIC` to `C`), so `.` it is. [`offset_spec`] writes
//! milliseconds as `+S.mmm`/`-S.mmm`.
//!
//! **Shared memory:** each preloaded process that is `exec`ed creates
//! `/dev/shm/sem.faketime_sem_<pid>` and `/dev/shm/faketime_shm_<pid>` and
//! removes them at a normal exit. A SIGKILLed process leaves them behind;
//! [`forget_process`] removes them (the lab calls it after reaping a killed
//! child that ran with the library).
//!
//! Not covered: programs that bypass libc's clock functions (Go binaries
//! such as etcd; the lab does not skew etcd). libfaketime 0.9.10 also gets
//! `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ..)` wrong (it converts
//! the deadline with the wall-clock offset); neither Postgres 15 nor our Rust
//! processes sleep that way (they use `nanosleep`, `select`, `epoll_wait`).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::LabError;

/// An explicit path to the library (`libfaketimeMT.so.1` or
/// `libfaketime.so.1`), tried first.
pub const LIB_ENV: &str = "EZONE_LIBFAKETIME";
/// The Debian packages that hold the library and its documentation.
pub const PACKAGES: &str = "faketime libfaketime";
/// The file names tried in each directory, best first.
const LIB_NAMES: [&str; 2] = ["libfaketimeMT.so.1", "libfaketime.so.1"];
/// Directories where the library lives outside the multiarch ones
/// (`/usr/lib/<triplet>/faketime`, found by listing `/usr/lib`).
const LIB_DIRS: [&str; 2] = ["/usr/local/lib/faketime", "/usr/lib/faketime"];
/// `FAKETIME_CACHE_DURATION`: whole seconds; see the module docs.
pub const CACHE_DURATION_SECS: u32 = 0;
/// How long after [`SiteClock::set_offset`] every process of the site reads
/// the new offset (the spec is re-read on the first clock call in a new
/// wall-clock second, plus scheduling slack).
pub const APPLY_WITHIN: Duration = Duration::from_millis(1_500);
/// The offset file's name: `clock-<site>`.
const FILE_PREFIX: &str = "clock-";

/// The signed skew a `clock-skew` fault of `amount` ms applies: an odd
/// amount puts the site's clock behind (negative), an even one ahead.
pub fn signed_skew_ms(amount: u64) -> i64 {
    let ms = i64::try_from(amount).unwrap_or(i64::MAX);
    if amount % 2 == 1 {
        -ms
    } else {
        ms
    }
}

/// The libfaketime relative spec for `offset_ms`: `+0`, `+0.400`, `-1.250`,
/// `+5.000`.
pub fn offset_spec(offset_ms: i64) -> String {
    if offset_ms == 0 {
        return "+0".to_string();
    }
    let sign = if offset_ms < 0 { '-' } else { '+' };
    let abs = offset_ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// Read back a spec written by [`offset_spec`] (or any plain `+S[.fff]` /
/// `-S[.fff]` offset in seconds), in ms; `None` for anything else (absolute
/// times, `m`/`h`/`d`/`y` multipliers, rates).
pub fn parse_offset_spec(spec: &str) -> Option<i64> {
    let s = spec.trim();
    let (neg, rest) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => return None,
    };
    let (secs, frac) = match rest.split_once('.') {
        Some((a, b)) => (a, b),
        None => (rest, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    // Milliseconds: the first three fraction digits (rounded down).
    let mut ms: i64 = 0;
    for (i, b) in frac.bytes().take(3).enumerate() {
        ms += i64::from(b - b'0') * 10_i64.pow(2 - i as u32);
    }
    let total = secs.checked_mul(1000)?.checked_add(ms)?;
    Some(if neg { -total } else { total })
}

/// Where site `site`'s offset file lives in a lab directory.
pub fn offset_file(lab_dir: &Path, site: &str) -> PathBuf {
    lab_dir.join(format!("{FILE_PREFIX}{site}"))
}

/// The offset file's name (for the lab's list of what it created).
pub fn offset_file_name(site: &str) -> String {
    format!("{FILE_PREFIX}{site}")
}

/// Write `offset_ms` to `file` atomically (a temp file in the same
/// directory, renamed over it), readable by everyone (the site's Postgres
/// runs as the `postgres` user when the lab runs as root).
pub fn write_offset(file: &Path, offset_ms: i64) -> Result<(), LabError> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = file.with_file_name(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{}\n", offset_spec(offset_ms)).as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        Ok(())
    };
    write().map_err(|e| LabError::io("write clock offset file", &tmp, e))?;
    std::fs::rename(&tmp, file).map_err(|e| LabError::io("rename clock offset file to", file, e))
}

/// The offset `file` holds, in ms.
pub fn read_offset(file: &Path) -> Result<i64, LabError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| LabError::io("read clock offset file", file, e))?;
    parse_offset_spec(&text).ok_or_else(|| {
        LabError::io(
            "parse clock offset file",
            file,
            std::io::Error::other(format!("{:?} is not a relative offset", text.trim())),
        )
    })
}

/// The environment a process needs to run with libfaketime at `lib`,
/// reading its offset from `file` (see the module docs for each variable).
pub fn faketime_env(lib: &Path, file: &Path) -> Vec<(OsString, OsString)> {
    vec![
        ("LD_PRELOAD".into(), lib.as_os_str().to_owned()),
        (
            "FAKETIME_TIMESTAMP_FILE".into(),
            file.as_os_str().to_owned(),
        ),
        (
            "FAKETIME_CACHE_DURATION".into(),
            CACHE_DURATION_SECS.to_string().into(),
        ),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("NO_FAKE_STAT".into(), "1".into()),
    ]
}

/// Inherited variables to drop before [`faketime_env`] is added: any
/// `FAKETIME*` (`FAKETIME` itself would override the file).
pub const ENV_REMOVE_PREFIX: &str = "FAKETIME";

/// Whether a process's extra environment runs it under libfaketime.
pub fn is_faked(env: &[(OsString, OsString)]) -> bool {
    env.iter().any(|(k, _)| k == "FAKETIME_TIMESTAMP_FILE")
}

/// Remove what libfaketime left in `/dev/shm` for a process that was killed
/// (SIGKILL runs no destructor): its semaphore and shared memory, named
/// after its pid. Call it right after reaping the process. Best effort.
pub fn forget_process(pid: u32) {
    for name in [
        format!("sem.faketime_sem_{pid}"),
        format!("faketime_shm_{pid}"),
    ] {
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
    }
}

/// Find libfaketime: `$EZONE_LIBFAKETIME`, then `libfaketimeMT.so.1` (else
/// `libfaketime.so.1`) in `/usr/lib/<triplet>/faketime`,
/// `/usr/local/lib/faketime` and `/usr/lib/faketime`.
pub fn find_libfaketime() -> Result<PathBuf, LabError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(LIB_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(format!("{} (from {LIB_ENV})", p.display()));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        let mut multiarch: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("faketime"))
            .filter(|d| d.is_dir())
            .collect();
        multiarch.sort();
        dirs.extend(multiarch);
    }
    dirs.extend(LIB_DIRS.iter().map(PathBuf::from));
    for name in LIB_NAMES {
        for d in &dirs {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    tried.extend(
        LIB_DIRS
            .iter()
            .map(|d| d.to_string())
            .chain(["/usr/lib/*/faketime".to_string()])
            .map(|d| format!("{d}/{{{}}}", LIB_NAMES.join(","))),
    );
    Err(LabError::FaketimeNotFound {
        tried: tried.join(", "),
    })
}

/// One site's clock: its offset file and the library the site's processes
/// preload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteClock {
    site: String,
    lib: PathBuf,
    file: PathBuf,
}

impl SiteClock {
    /// Create `<lab_dir>/clock-<site>` holding `+0` (no skew).
    pub fn create(lab_dir: &Path, site: &str, lib: &Path) -> Result<SiteClock, LabError> {
        let clock = SiteClock {
            site: site.to_string(),
            lib: lib.to_path_buf(),
            file: offset_file(lab_dir, site),
        };
        clock.set_offset(0)?;
        Ok(clock)
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    /// The offset file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The preloaded library.
    pub fn lib(&self) -> &Path {
        &self.lib
    }

    /// The environment for the site's processes.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        faketime_env(&self.lib, &self.file)
    }

    /// Skew the site's wall clock by `offset_ms` (negative: behind); every
    /// process of the site reads it within [`APPLY_WITHIN`].
    pub fn set_offset(&self, offset_ms: i64) -> Result<(), LabError> {
        write_offset(&self.file, offset_ms)
    }

    /// Back to no skew.
    pub fn reset(&self) -> Result<(), LabError> {
        self.set_offset(0)
    }

    /// The offset the file holds now, in ms.
    pub fn offset(&self) -> Result<i64, LabError> {
        read_offset(&self.file)
    }

    /// Remove the offset file (the lab's teardown).
    pub(crate) fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_gives_the_sign() {
        assert_eq!(signed_skew_ms(101), -101);
        assert_eq!(signed_skew_ms(900), 900);
        assert_eq!(signed_skew_ms(0), 0);
    }

    #[test]
    fn specs_are_seconds_with_milliseconds() {
        assert_eq!(offset_spec(0), "+0");
        assert_eq!(offset_spec(400), "+0.400");
        assert_eq!(offset_spec(-400), "-0.400");
        assert_eq!(offset_spec(5_000), "+5.000");
        assert_eq!(offset_spec(-1_005), "-1.005");
        assert_eq!(offset_spec(i64::MIN), "-9223372036854775.808");
    }

    #[test]
    fn specs_read_back() {
        for ms in [0, 1, -1, 99, -900, 5_000, -123_456] {
            assert_eq!(parse_offset_spec(&offset_spec(ms)), Some(ms), "{ms}");
        }
        assert_eq!(parse_offset_spec("+0\n"), Some(0));
        assert_eq!(parse_offset_spec("-2.5"), Some(-2_500));
        assert_eq!(parse_offset_spec("+0.12345"), Some(123));
        for bad in [
            "",
            "0",
            "+",
            "+.5",
            "-10m",
            "+1 x2",
            "@2020-01-01 00:00:00",
            "+1,5",
        ] {
            assert_eq!(parse_offset_spec(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn env_names_the_library_and_the_file() {
        let env = faketime_env(Path::new("/lib/f.so"), Path::new("/lab/clock-x"));
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("LD_PRELOAD").as_deref(), Some("/lib/f.so"));
        assert_eq!(
            get("FAKETIME_TIMESTAMP_FILE").as_deref(),
            Some("/lab/clock-x")
        );
        assert_eq!(get("FAKETIME_CACHE_DURATION").as_deref(), Some("0"));
        assert_eq!(get("FAKETIME_DONT_FAKE_MONOTONIC").as_deref(), Some("1"));
        assert_eq!(get("FAKETIME"), None);
        assert!(is_faked(&env));
        assert!(!is_faked(&[("LD_PRELOAD".into(), "x".into())]));
    }

    #[test]
    fn offsets_are_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock =
            SiteClock::create(dir.path(), "beijing", Path::new("/lib/f.so")).expect("create");
        assert_eq!(clock.file(), dir.path().join("clock-beijing"));
        assert_eq!(clock.offset().expect("read"), 0);
        assert_eq!(std::fs::read_to_string(clock.file()).expect("read"), "+0\n");
        clock.set_offset(-700).expect("set");
        assert_eq!(clock.offset().expect("read"), -700);
        let mode = std::fs::metadata(clock.file())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        clock.reset().expect("reset");
        assert_eq!(clock.offset().expect("read"), 0);
        // Only the offset file is left: no temp file.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["clock-beijing".to_string()]);
    }

    #[test]
    fn apply_drops_inherited_faketime_and_sets_the_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = SiteClock::create(dir.path(), "x", Path::new("/lib/f.so")).expect("create");
        let spec = crate::process::ProcessSpec::new("p", "/bin/true", dir.path(), "p.log")
            .clock(Some(&clock));
        assert!(spec.env_remove_prefixes.iter().any(|p| p == "FAKETIME"));
        assert!(is_faked(&spec.env));
    }
}
