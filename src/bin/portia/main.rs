//! `portia`: plan, run, answer and inspect workflows from the command line.
//!
//! Exit codes: 0 the workflow is COMPLETE (or the command succeeded), 1 it FAILED or
//! the command could not be carried out, 2 a usage error, 3 the workflow waits for a
//! clarification, 130 a run stopped by ctrl-c or SIGTERM (resumable with `portia
//! resume`). A failure prints one line on stderr naming its cause.

#![forbid(unsafe_code)]

mod cli;
mod commands;
mod graph;
mod live;
mod prompt;
mod setup;
mod table;

use std::process::ExitCode;

use clap::Parser;

/// The allocator of the command line's processes (`serve`, `worker`, `run`): under
/// many workflows in flight the system's malloc spends about a third of the CPU
/// (see the performance guide).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a command ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: done, or the workflow is COMPLETE.
    Ok = 0,
    /// 1: the workflow FAILED, or the command could not be carried out.
    Failed = 1,
    /// 2: the command was given wrongly (clap exits so for what it checks itself).
    Usage = 2,
    /// 3: the workflow waits for a human.
    Waiting = 3,
    /// 130 (128 + SIGINT, as shells report ctrl-c): the run was stopped and can be resumed.
    Interrupted = 130,
}

/// A command that could not be carried out: one line saying why, and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) line: String,
    exit: Exit,
}

impl<E: std::error::Error> From<E> for Failure {
    /// The error and each of its causes, as `error: cause: cause`.
    fn from(error: E) -> Self {
        let mut line = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            line.push_str(": ");
            line.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::new(line)
    }
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&Failure::new(format!("could not start the async runtime: {e}"))),
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(failure) => fail(&failure),
    }
}

impl Failure {
    /// A command that could not be carried out, for the reason `line` gives (exit 1).
    pub(crate) fn new(line: impl Into<String>) -> Self {
        Self { line: line.into(), exit: Exit::Failed }
    }

    /// A command given wrongly, as `line` says (exit 2, as for what clap refuses).
    pub(crate) fn usage(line: impl Into<String>) -> Self {
        Self { line: line.into(), exit: Exit::Usage }
    }

    /// A failure already said, or that is not worth saying: its command just ends.
    fn silent() -> Self {
        Self::new(String::new())
    }

    /// This failure to write the output, saying that workflow `id` is stored all the
    /// same (even where a closed pipe would end the command quietly): a script that
    /// could not read the id must not submit or run the workflow twice.
    pub(crate) fn naming(self, id: portia::WorkflowId) -> Self {
        let said = if self.line.is_empty() { "standard output was closed".to_owned() } else { self.line };
        Self { line: format!("{said}; workflow {id} is stored all the same"), exit: self.exit }
    }
}

/// Writes `text` to standard output. A reader that went away (`portia list | head`)
/// ends the command quietly, as Unix tools do; any other failure to write (a full
/// disk) ends it with one line saying so. Never a panic, as `print!` would be.
pub(crate) fn emit(text: impl std::fmt::Display) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match write!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::silent()),
        Err(e) => Err(Failure::new(format!("cannot write to standard output: {e}"))),
    }
}

fn fail(failure: &Failure) -> ExitCode {
    // One line: the cause, with no secrets (errors of this crate never carry keys).
    if !failure.line.is_empty() {
        eprintln!("portia: {}", failure.line.replace('\n', " "));
    }
    ExitCode::from(failure.exit as u8)
}
