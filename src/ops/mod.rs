//! What the `xcache` command's verbs do. The CLI is a thin layer over these.

pub mod demo;
pub mod human;
pub mod list;
