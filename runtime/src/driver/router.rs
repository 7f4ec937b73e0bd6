//! Router drivers: how requests reach the ready instances of each revision.

pub mod builtin;
pub mod local;
