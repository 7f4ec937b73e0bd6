//! `slipway:deploy/types`: declarations only.

use crate::bindings::strategy::slipway::deploy::types::Host;
use crate::guest::GuestState;

impl Host for GuestState {}
