//! `ezone bench` (being written).

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Not built yet.
    Todo,
}

pub async fn run(_c: BenchCommand) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
