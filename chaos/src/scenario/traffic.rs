//! Order traffic through the ensemble's routers, and what came of it as the
//! invariant checker's requests.

use ezone_orders::workload::{self, History, Workload, WorkloadSpec};

use super::ScenarioError;
use crate::check;
use crate::ensemble::Ensemble;

/// Order traffic for every city, spread over every site's router, at `rate`
/// orders a second; order ids start with `prefix`.
pub fn traffic(ens: &Ensemble, prefix: &str, rate: u32) -> Result<Workload, ScenarioError> {
    traffic_with(ens, prefix, rate, |_| {})
}

/// As [`traffic`], with the workload's spec adjusted by `tweak` first
/// (e.g. status PATCHes of the orders acknowledged).
pub fn traffic_with(
    ens: &Ensemble,
    prefix: &str,
    rate: u32,
    tweak: impl FnOnce(&mut WorkloadSpec),
) -> Result<Workload, ScenarioError> {
    let mut targets = Vec::new();
    for s in ens.sites() {
        targets.push(ens.router_http(&s)?);
    }
    let mut spec = WorkloadSpec {
        targets,
        cities: ens.cities().into_iter().map(|(c, _)| c).collect(),
        rate_per_sec: rate,
        id_prefix: prefix.into(),
        ..WorkloadSpec::default()
    };
    tweak(&mut spec);
    Ok(Workload::start(spec)?)
}

/// The whole history (creates and PATCHes, their times and what came of
/// them) as the checker's requests: what `verify` needs to judge
/// unexpected rows and final statuses too.
pub fn ops(h: &History) -> Vec<check::Op> {
    h.outcomes.iter().map(op).collect()
}

/// One outcome as the checker's request: acknowledged (and whether an
/// attempt of unknown fate may still land), in doubt, or refused for good.
fn op(o: &workload::Outcome) -> check::Op {
    let kind = match &o.op {
        workload::Op::Create {
            user,
            item,
            amount_cents,
        } => check::OpKind::Create {
            user: user.clone(),
            item: item.clone(),
            amount_cents: *amount_cents,
        },
        workload::Op::Patch { status } => check::OpKind::Patch {
            status: status.clone(),
        },
    };
    let result = if o.acked {
        check::OpResult::Acked {
            may_land_later: o.unanswered > 0,
        }
    } else if o.in_doubt() {
        check::OpResult::InDoubt
    } else {
        check::OpResult::Refused
    };
    check::Op {
        id: o.id.clone(),
        city: o.city.clone(),
        kind,
        invoke: o.started,
        complete: o.finished(),
        result,
    }
}
