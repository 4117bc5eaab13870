//! `ezone lab` (being written).

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Not built yet.
    Todo,
}

pub async fn run(_c: LabCommand) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
