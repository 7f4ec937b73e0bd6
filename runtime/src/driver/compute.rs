//! Compute drivers: where instances of a revision run. [`instances::InstanceDriver`]
//! supervises them (start, probe, restart, drain, stop) as local processes ([`process`]) or
//! as containers ([`container`]).

pub mod container;
pub mod instances;
pub mod output;
pub mod process;
