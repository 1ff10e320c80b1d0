//! A progress bar on stderr for verbs that walk many entries (`prune`, `verify`), shown
//! only when stderr is a terminal: scripts and pipes get the report alone, as from
//! `warm`'s bar.

use std::io::IsTerminal;

/// Drawn while alive; cleared when dropped.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// A bar saying `what` ("verifying"), or nothing when stderr is not a terminal.
    pub fn new(what: &'static str) -> Progress {
        Progress(std::io::stderr().is_terminal().then(|| {
            // Nothing is drawn before the first update: a bar of 0/0 says nothing.
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{what} {{bar:30}} {{pos}}/{{len}} entries {{elapsed}}"
                ))
                .expect("valid template"),
            );
            b
        }))
    }

    /// `done` of `total` entries handled.
    pub fn update(&self, done: u64, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
            b.set_position(done);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
