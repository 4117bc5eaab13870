//! `ezone topo` (being written).

#[derive(Debug, clap::Subcommand)]
pub enum TopoCommand {
    /// Not built yet.
    Todo,
}

pub async fn run(_c: TopoCommand) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
