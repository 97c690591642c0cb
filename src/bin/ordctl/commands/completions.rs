//! `ordctl completions SHELL`

use clap::CommandFactory;
use clap_complete::Shell;

/// Print a shell completion script for ordctl on stdout.
///
/// Examples: `source <(ordctl completions bash)`,
/// `ordctl completions zsh > ~/.zfunc/_ordctl`,
/// `ordctl completions fish > ~/.config/fish/completions/ordctl.fish`
#[derive(clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

impl Args {
    pub fn run(self) -> anyhow::Result<()> {
        let mut command = crate::Cli::command();
        let mut stdout = std::io::stdout().lock();
        clap_complete::generate(self.shell, &mut command, "ordctl", &mut stdout);
        Ok(())
    }
}
