//! The `xcache` command as a library, so that programs embedding xcache run the very
//! same command in-process: `python -m xcache …` calls [`main_with_args`]. The command
//! itself is `main.rs` (the binary's root), compiled here as a module.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

// `main` and the items only it uses are the binary's.
#[allow(dead_code)]
#[path = "main.rs"]
mod command;

pub use command::init_logging;

/// Runs the command line `args` (the first is the program's name) and returns the exit
/// status: 0 success, 1 failure, 2 bad usage. Standard output is flushed.
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    let code = command::run_command_line(args);
    let _ = std::io::stdout().flush();
    if code == ExitCode::SUCCESS {
        0
    } else if code == ExitCode::from(2) {
        2
    } else {
        1
    }
}
