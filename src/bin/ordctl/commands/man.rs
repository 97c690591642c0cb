//! `ordctl man`

use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

use crate::output;

/// Print ordctl's man page (roff) on stdout, or write one page per
/// subcommand into a directory.
///
/// Examples: `ordctl man | man -l -`,
/// `ordctl man --dir /usr/local/share/man/man1`
#[derive(clap::Args)]
pub struct Args {
    /// Write ordctl.1 and ordctl-SUBCOMMAND.1 pages into this directory
    /// (created if missing) instead of printing ordctl.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl Args {
    pub fn run(self) -> anyhow::Result<()> {
        let command = crate::Cli::command();
        let Some(dir) = self.dir else {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            return output::line(String::from_utf8_lossy(&page).trim_end());
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        clap_mangen::generate_to(command, &dir)
            .with_context(|| format!("writing man pages into {}", dir.display()))?;
        output::line(format!("wrote man pages into {}", dir.display()))
    }
}
