//! The design's invariants, checked in the data (`docs/design.md`, "What
//! the chaos suite checks"), against what the clients did:
//!
//! - **No acknowledged write is lost**: every create a client got a 2xx
//!   for is present at every site, with its values ([`lost_writes`]).
//! - **No unexpected rows**: a row whose order was never acknowledged
//!   exists only if a create of it was in doubt, and then holds what that
//!   create sent (allowed, counted); a row no create was sent for, or whose
//!   every create was refused for good, is a violation ([`unexpected_rows`]).
//! - **Statuses the history allows**: per order and site, the final status
//!   is the last acknowledged PATCH in real time, or one that was in flight
//!   (a register check, [`register_violations`]).
//! - **Sites converge**: `public.orders` is identical at every site, compared
//!   by a checksum of the whole table in key order ([`site_checksums`],
//!   [`identical`]), and where not, the orders that differ ([`divergence`]).
//! - **No dual writes**: for every shard and fence epoch, the rows were
//!   accepted at one site only, and (given the topology's history) at the
//!   site that was the shard's home at that epoch ([`dual_writes`]).
//!
//! What the clients did comes as [`Writes`]: the whole history of requests
//! ([`Op`]: creates and PATCHes, their times and results), or, for a caller
//! that knows only what was acknowledged, the acknowledged creates
//! ([`AckedWrite`]; then only lost writes, convergence and dual writes are
//! checked). The checks are pure functions over rows ([`OrderRow`]),
//! unit-tested without I/O; [`read_rows`], [`site_checksums`],
//! [`wait_identical`] and [`verify`] read the rows from each site's
//! Postgres.

use std::collections::BTreeMap;
use std::fmt;

mod diverged;
mod dual;
mod history;
mod lost;
mod read;
mod register;
mod unexpected;

pub use diverged::{divergence, Divergence};
pub use dual::{dual_writes, homes_of, record_homes, DualWrite, HomeHistory};
pub use history::{acked_writes, HistoryCounts, Op, OpKind, OpResult, INITIAL_STATUS};
pub use lost::{lost_writes, AckedWrite, Lost, LostProblem};
pub use read::{checksum, read_all, read_rows, site_checksums, verify, wait_identical, CheckError};
pub use register::{allowed_statuses, register_violations, PatchSeen, RegisterViolation};
pub use unexpected::{unexpected_rows, Unexpected, UnexpectedWhy};

/// The replicated table the checks read.
pub const ORDERS_TABLE: &str = "public.orders";
/// How many examples a [`Report`] prints per kind of violation.
const REPORT_EXAMPLES: usize = 10;

/// One row of `public.orders`, as the checks see it (every column but the
/// key may be NULL in the table, so every column but the key is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderRow {
    pub id: String,
    pub city: Option<String>,
    pub user_id: Option<String>,
    pub item: Option<String>,
    pub amount_cents: Option<i64>,
    pub status: Option<String>,
    /// The shard the row was written for (the router's `X-Ezone-Shard`).
    pub shard: Option<u32>,
    /// The topology epoch the router routed the write at.
    pub epoch: Option<u64>,
    /// The site whose Postgres accepted the write.
    pub site: Option<String>,
    /// The epoch of the site's fence when the write was accepted.
    pub fence_epoch: Option<u64>,
}

/// Rows per site.
pub type RowsBySite = BTreeMap<String, Vec<OrderRow>>;

/// Whether every site has the same checksum (and there is at least one).
pub fn identical(checksums: &BTreeMap<String, String>) -> bool {
    let mut values = checksums.values();
    match values.next() {
        None => false,
        Some(first) => values.all(|v| v == first),
    }
}

/// What the clients did, as far as the caller knows it. Converts from a
/// slice (or `Vec`) of either, so `verify(dsns, &acked, homes)` works with
/// both.
#[derive(Debug, Clone, Copy)]
pub enum Writes<'a> {
    /// Only the acknowledged creates: lost writes are checked, unexpected
    /// rows and statuses are not (nothing says which rows may exist).
    Acked(&'a [AckedWrite]),
    /// Every request, with its times and result: everything is checked.
    History(&'a [Op]),
}

impl<'a> From<&'a [AckedWrite]> for Writes<'a> {
    fn from(w: &'a [AckedWrite]) -> Self {
        Writes::Acked(w)
    }
}

impl<'a> From<&'a Vec<AckedWrite>> for Writes<'a> {
    fn from(w: &'a Vec<AckedWrite>) -> Self {
        Writes::Acked(w)
    }
}

impl<'a> From<&'a [Op]> for Writes<'a> {
    fn from(ops: &'a [Op]) -> Self {
        Writes::History(ops)
    }
}

impl<'a> From<&'a Vec<Op>> for Writes<'a> {
    fn from(ops: &'a Vec<Op>) -> Self {
        Writes::History(ops)
    }
}

/// What the checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Acknowledged creates checked.
    pub acked: usize,
    /// The history checked; `None` when only acknowledged creates were
    /// given (unexpected rows and statuses were then not checked).
    pub history: Option<HistoryCounts>,
    /// Rows per site.
    pub rows: BTreeMap<String, usize>,
    /// Must be empty.
    pub lost: Vec<Lost>,
    /// Orders present though never acknowledged, allowed because a create
    /// of theirs was in doubt (each counted once, however many sites).
    pub unexpected_allowed: usize,
    /// Must be empty.
    pub unexpected: Vec<Unexpected>,
    /// Must be empty.
    pub register: Vec<RegisterViolation>,
    /// `public.orders` checksum per site: `"<rows>:<md5>"`.
    pub checksums: BTreeMap<String, String>,
    /// Orders whose rows differ between sites. Must be empty.
    pub diverged: Vec<Divergence>,
    /// Must be empty.
    pub dual_writes: Vec<DualWrite>,
}

impl Report {
    /// The report over rows already read (pure).
    pub fn from_rows<'a>(
        writes: impl Into<Writes<'a>>,
        rows_by_site: &RowsBySite,
        checksums: BTreeMap<String, String>,
        homes: Option<&HomeHistory>,
    ) -> Report {
        let all: Vec<OrderRow> = rows_by_site.values().flatten().cloned().collect();
        let (acked, history, unexpected_allowed, unexpected, register) = match writes.into() {
            Writes::Acked(acked) => (acked.to_vec(), None, 0, Vec::new(), Vec::new()),
            Writes::History(ops) => {
                let (allowed, unexpected) = unexpected_rows(ops, rows_by_site);
                (
                    acked_writes(ops),
                    Some(HistoryCounts::of(ops)),
                    allowed,
                    unexpected,
                    register_violations(ops, rows_by_site),
                )
            }
        };
        Report {
            acked: acked.len(),
            history,
            rows: rows_by_site
                .iter()
                .map(|(s, r)| (s.clone(), r.len()))
                .collect(),
            lost: lost_writes(&acked, rows_by_site),
            unexpected_allowed,
            unexpected,
            register,
            checksums,
            diverged: divergence(rows_by_site),
            dual_writes: dual_writes(&all, homes),
        }
    }

    /// Whether the sites' checksums agree.
    pub fn identical(&self) -> bool {
        identical(&self.checksums)
    }

    /// Nothing lost, no unexpected row, every status allowed, sites
    /// identical, no dual writes.
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.register.is_empty()
            && self.identical()
            && self.diverged.is_empty()
            && self.dual_writes.is_empty()
    }
}

/// Up to [`REPORT_EXAMPLES`] of `items`, one a line, and how many more.
fn examples<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for x in items.iter().take(REPORT_EXAMPLES) {
        writeln!(f, "  - {x}")?;
    }
    if items.len() > REPORT_EXAMPLES {
        writeln!(f, "  ... and {} more", items.len() - REPORT_EXAMPLES)?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "writes acked:  {}", self.acked)?;
        match &self.history {
            Some(h) => writeln!(
                f,
                "history:       {} creates, {} PATCHes; {} acked, {} refused, {} in doubt",
                h.creates, h.patches, h.acked, h.refused, h.in_doubt
            )?,
            None => writeln!(
                f,
                "history:       acknowledged creates only (unexpected rows and statuses not checked)"
            )?,
        }
        writeln!(f, "lost:          {} (must be 0)", self.lost.len())?;
        examples(f, &self.lost)?;
        if self.history.is_some() {
            writeln!(
                f,
                "unexpected:    {} (must be 0); {} allowed (never acknowledged, a create in doubt)",
                self.unexpected.len(),
                self.unexpected_allowed
            )?;
            examples(f, &self.unexpected)?;
            writeln!(
                f,
                "statuses:      {} not allowed by the history (must be 0)",
                self.register.len()
            )?;
            examples(f, &self.register)?;
        }
        let verdict = if self.identical() { "yes" } else { "NO" };
        writeln!(f, "sites identical: {verdict}")?;
        for (site, sum) in &self.checksums {
            let rows = self.rows.get(site).copied().unwrap_or_default();
            writeln!(f, "  {site}: {rows} rows, checksum {sum}")?;
        }
        if !self.diverged.is_empty() {
            writeln!(
                f,
                "  {} order(s) differ between sites:",
                self.diverged.len()
            )?;
            examples(f, &self.diverged)?;
        }
        writeln!(f, "dual writes:   {} (must be 0)", self.dual_writes.len())?;
        examples(f, &self.dual_writes)?;
        write!(
            f,
            "verdict:       {}",
            if self.is_ok() { "OK" } else { "FAILED" }
        )
    }
}

/// Rows and histories for the checks' unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::time::Duration;

    use super::*;

    /// Order `id` of `city` (user u1, tea, 100 cents, status placed), accepted
    /// at `site` for `shard` at `epoch`.
    pub fn row(id: &str, city: &str, shard: u32, epoch: u64, site: &str) -> OrderRow {
        OrderRow {
            id: id.to_string(),
            city: Some(city.to_string()),
            user_id: Some("u1".to_string()),
            item: Some("tea".to_string()),
            amount_cents: Some(100),
            status: Some(INITIAL_STATUS.to_string()),
            shard: Some(shard),
            epoch: Some(epoch),
            site: Some(site.to_string()),
            fence_epoch: Some(epoch),
        }
    }

    /// The acknowledged create of [`row`]'s values.
    pub fn acked(id: &str, city: &str) -> AckedWrite {
        AckedWrite {
            id: id.to_string(),
            city: city.to_string(),
            user_id: "u1".to_string(),
            item: "tea".to_string(),
            amount_cents: 100,
            status: None,
        }
    }

    /// A create of [`row`]'s values for city 010, from `invoke_ms` to
    /// `complete_ms`.
    pub fn create(id: &str, invoke_ms: u64, complete_ms: u64, result: OpResult) -> Op {
        Op {
            invoke: Duration::from_millis(invoke_ms),
            complete: Duration::from_millis(complete_ms),
            result,
            ..Op::acked_create(&acked(id, "010"))
        }
    }

    /// A PATCH setting `status`.
    pub fn patch(id: &str, status: &str, invoke_ms: u64, complete_ms: u64, result: OpResult) -> Op {
        Op {
            id: id.to_string(),
            city: "010".to_string(),
            kind: OpKind::Patch {
                status: status.to_string(),
            },
            invoke: Duration::from_millis(invoke_ms),
            complete: Duration::from_millis(complete_ms),
            result,
        }
    }

    pub fn both_sites(rows: Vec<OrderRow>) -> RowsBySite {
        [
            ("beijing".to_string(), rows.clone()),
            ("shanghai".to_string(), rows),
        ]
        .into_iter()
        .collect()
    }

    /// Orders a (010, beijing's) and b (021, shanghai's), at both sites.
    pub fn clean() -> (Vec<AckedWrite>, RowsBySite) {
        let rows = vec![
            row("a", "010", 1, 1, "beijing"),
            row("b", "021", 2, 1, "shanghai"),
        ];
        (vec![acked("a", "010"), acked("b", "021")], both_sites(rows))
    }

    /// Shard 1 at beijing and shard 2 at shanghai, at epoch 1.
    pub fn history() -> HomeHistory {
        let mut h = HomeHistory::new();
        h.entry(1).or_default().insert(1, "beijing".to_string());
        h.entry(2).or_default().insert(1, "shanghai".to_string());
        h
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{acked, both_sites, clean, create, history, patch, row};
    use super::*;

    fn sums(rows: &RowsBySite) -> BTreeMap<String, String> {
        rows.keys()
            .map(|s| (s.clone(), "2:abc".to_string()))
            .collect()
    }

    /// A clean history of [`clean`]'s orders: both created, "b" patched.
    fn clean_history() -> (Vec<Op>, RowsBySite) {
        let (_, mut rows) = clean();
        for rows in rows.values_mut() {
            rows[1].status = Some("cooking".to_string());
        }
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            Op {
                city: "021".to_string(),
                ..create("b", 5, 15, OpResult::ACKED)
            },
            patch("b", "cooking", 20, 30, OpResult::ACKED),
        ];
        (ops, rows)
    }

    #[test]
    fn clean_data_passes() {
        let (acked, rows) = clean();
        let report = Report::from_rows(&acked, &rows, sums(&rows), Some(&history()));
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.history, None);
        let text = report.to_string();
        assert!(text.contains("lost:          0"), "{text}");
        assert!(text.contains("sites identical: yes"), "{text}");
        assert!(text.contains("acknowledged creates only"), "{text}");
        assert!(text.contains("verdict:       OK"), "{text}");
    }

    #[test]
    fn a_clean_history_passes() {
        let (ops, rows) = clean_history();
        let report = Report::from_rows(&ops, &rows, sums(&rows), Some(&history()));
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.acked, 2);
        let text = report.to_string();
        assert!(
            text.contains("history:       2 creates, 1 PATCHes; 3 acked, 0 refused, 0 in doubt"),
            "{text}"
        );
        assert!(
            text.contains("unexpected:    0 (must be 0); 0 allowed"),
            "{text}"
        );
        assert!(text.contains("statuses:      0 not allowed"), "{text}");
        assert!(text.contains("verdict:       OK"), "{text}");
    }

    /// Each kind of violation fails the report, and the report names the
    /// order (or shard) and the site.
    #[test]
    fn every_violation_fails_the_report_naming_order_and_site() {
        type Break = fn(&mut Vec<Op>, &mut RowsBySite);
        let cases: Vec<(&str, Break, &str)> = vec![
            (
                "lost: missing",
                |_, rows| rows.get_mut("shanghai").expect("site").retain(|r| r.id != "a"),
                "order \"a\" is missing at shanghai",
            ),
            (
                "lost: changed",
                |_, rows| rows.get_mut("beijing").expect("site")[0].amount_cents = Some(7),
                "order \"a\" at beijing has amount_cents = 7, acknowledged as 100",
            ),
            (
                "unexpected: never sent",
                |_, rows| {
                    for r in rows.values_mut() {
                        r.push(row("ghost", "010", 1, 1, "beijing"));
                    }
                },
                "order \"ghost\" exists at beijing, but no create of it was ever sent",
            ),
            (
                "unexpected: refused",
                |ops, rows| {
                    ops.push(create("c", 40, 50, OpResult::Refused));
                    rows.get_mut("shanghai")
                        .expect("site")
                        .push(row("c", "010", 1, 1, "beijing"));
                },
                "order \"c\" exists at shanghai, but its 1 create(s) were all refused for good",
            ),
            (
                "register: older than an acknowledged PATCH",
                |ops, rows| {
                    ops.push(patch("b", "delivered", 40, 50, OpResult::ACKED));
                    for r in rows.values_mut() {
                        r[1].status = Some("delivered".to_string());
                    }
                    rows.get_mut("shanghai").expect("site")[1].status =
                        Some("cooking".to_string());
                },
                "order \"b\" at shanghai has status \"cooking\", but the history allows only \"delivered\"",
            ),
            (
                "register: still initial",
                |_, rows| {
                    rows.get_mut("beijing").expect("site")[1].status =
                        Some(INITIAL_STATUS.to_string());
                },
                "order \"b\" at beijing has status \"placed\", but the history allows only \"cooking\"",
            ),
            (
                "dual write",
                |_, rows| {
                    rows.get_mut("beijing").expect("site")[1].fence_epoch = Some(1);
                    rows.get_mut("beijing").expect("site")[1].shard = Some(1);
                    rows.get_mut("shanghai").expect("site")[1].shard = Some(1);
                },
                "shard 1 epoch 1 accepted writes at beijing (e.g. a), shanghai (e.g. b)",
            ),
            (
                "not home",
                |_, rows| {
                    for r in rows.values_mut() {
                        r[0].site = Some("shanghai".to_string());
                    }
                },
                "shard 1 epoch 1 accepted writes at shanghai, but its home then was beijing (e.g. a)",
            ),
            (
                "divergence",
                |_, rows| {
                    rows.get_mut("beijing").expect("site")[1].epoch = Some(9);
                },
                "order \"b\" differs in epoch: beijing 9, shanghai 1",
            ),
        ];
        for (name, breaks, message) in cases {
            let (mut ops, mut rows) = clean_history();
            breaks(&mut ops, &mut rows);
            let report = Report::from_rows(&ops, &rows, sums(&rows), Some(&history()));
            assert!(!report.is_ok(), "{name}: {report}");
            let text = report.to_string();
            assert!(text.contains(message), "{name}: {text}");
            assert!(text.contains("verdict:       FAILED"), "{name}: {text}");
        }
    }

    #[test]
    fn allowed_unexpected_rows_are_counted_not_failed() {
        let (mut ops, mut rows) = clean_history();
        ops.push(create("c", 40, 50, OpResult::InDoubt));
        for r in rows.values_mut() {
            r.push(row("c", "010", 1, 1, "beijing"));
        }
        let report = Report::from_rows(&ops, &rows, sums(&rows), Some(&history()));
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.unexpected_allowed, 1);
        assert!(
            report
                .to_string()
                .contains("unexpected:    0 (must be 0); 1 allowed"),
            "{report}"
        );
    }

    #[test]
    fn sites_that_disagree_fail() {
        let (acked, rows) = clean();
        let sums: BTreeMap<String, String> = [("s0", "2:x"), ("s1", "2:y")]
            .into_iter()
            .map(|(s, c)| (s.to_string(), c.to_string()))
            .collect();
        let report = Report::from_rows(&acked, &rows, sums, None);
        assert!(!report.is_ok());
        assert!(report.to_string().contains("sites identical: NO"));
    }

    #[test]
    fn identical_needs_agreement_and_a_site() {
        let sums = |v: &[&str]| -> BTreeMap<String, String> {
            v.iter()
                .enumerate()
                .map(|(i, s)| (format!("s{i}"), s.to_string()))
                .collect()
        };
        assert!(identical(&sums(&["1:x", "1:x"])));
        assert!(!identical(&sums(&["1:x", "1:y"])));
        assert!(!identical(&sums(&[])));
    }

    #[test]
    fn acked_creates_alone_check_only_lost_writes() {
        // A row nobody acknowledged: with acknowledged creates only, nothing
        // says it may not exist.
        let acked = vec![acked("a", "010")];
        let rows = both_sites(vec![
            row("a", "010", 1, 1, "beijing"),
            row("zz", "010", 1, 1, "beijing"),
        ]);
        let report = Report::from_rows(&acked, &rows, sums(&rows), None);
        assert!(report.is_ok(), "{report}");
        let ops: Vec<Op> = acked.iter().map(Op::acked_create).collect();
        let report = Report::from_rows(&ops, &rows, sums(&rows), None);
        assert!(!report.is_ok(), "{report}");
        assert_eq!(report.unexpected.len(), 2);
    }
}
