//! Compute drivers: where instances of a revision run.

pub mod output;
pub mod process;
