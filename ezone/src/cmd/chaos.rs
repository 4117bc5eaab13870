//! `ezone chaos` (being written).

#[derive(Debug, clap::Subcommand)]
pub enum ChaosCommand {
    /// Not built yet.
    Todo,
}

pub async fn run(_c: ChaosCommand) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
