//! Compute drivers: where instances of a revision run.

pub mod process;
