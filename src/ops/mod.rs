//! What the `xcache` command's verbs do, one module per verb (or family of verbs). The
//! CLI is a thin layer over these; they return data, the CLI prints it.

pub mod clean;
pub mod demo;
pub mod doctor;

pub mod list;
pub mod size;
pub mod stats;
pub mod unlock;
pub mod verify;
pub mod warm;
