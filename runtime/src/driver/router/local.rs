//! The built-in router as a [`Router`] driver: it keeps each revision's endpoints (from the
//! compute driver, through [`Backends`]), the weights and the maintenance flag, and swaps the
//! proxy's whole table in one step whenever any of them changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::builtin::{Backend, BuiltinRouter, RouteTable, RoutedRevision};
use crate::driver::compute::instances::Backends;
use crate::driver::{DriverError, Endpoint, Router};

/// The built-in router of one app, driven.
pub struct LocalRouter {
    router: Mutex<Arc<BuiltinRouter>>,
    state: Mutex<RouteState>,
}

#[derive(Default)]
struct RouteState {
    weights: BTreeMap<u32, u32>,
    maintenance: bool,
    endpoints: BTreeMap<u32, Vec<Arc<Backend>>>,
    /// Backends taken out of the endpoints, kept until they are drained.
    leaving: HashMap<String, Arc<Backend>>,
}

impl LocalRouter {
    pub fn new(router: Arc<BuiltinRouter>) -> Arc<LocalRouter> {
        Arc::new(LocalRouter {
            router: Mutex::new(router),
            state: Mutex::new(RouteState::default()),
        })
    }

    /// The proxy itself (its address, its metrics).
    pub fn router(&self) -> Arc<BuiltinRouter> {
        self.router.lock().unwrap().clone()
    }

    /// Serves from `router` (bound to another address) from now on, with the same table;
    /// returns the one it replaces, for the caller to stop once it has drained.
    pub fn move_to(&self, router: Arc<BuiltinRouter>) -> Arc<BuiltinRouter> {
        let state = self.state.lock().unwrap();
        let old = std::mem::replace(&mut *self.router.lock().unwrap(), router);
        self.publish(&state);
        old
    }

    /// Rebuilds the proxy's table from the endpoints, weights and maintenance flag.
    fn publish(&self, state: &RouteState) {
        let table = RouteTable {
            maintenance: state.maintenance,
            revisions: state
                .weights
                .iter()
                .map(|(revision, weight)| RoutedRevision {
                    revision: *revision,
                    weight: *weight,
                    backends: state.endpoints.get(revision).cloned().unwrap_or_default(),
                })
                .collect(),
        };
        self.router.lock().unwrap().update(table);
    }
}

#[async_trait]
impl Backends for LocalRouter {
    fn set_endpoints(&self, revision: u32, endpoints: Vec<Endpoint>) {
        let mut state = self.state.lock().unwrap();
        let old = state.endpoints.remove(&revision).unwrap_or_default();
        // An instance that stays keeps its backend: its pooled connections and in-flight count.
        let backends: Vec<Arc<Backend>> = endpoints
            .iter()
            .map(|endpoint| {
                old.iter()
                    .find(|b| b.instance() == endpoint.instance && b.addr() == endpoint.addr)
                    .cloned()
                    .unwrap_or_else(|| Backend::new(endpoint.instance.clone(), endpoint.addr))
            })
            .collect();
        for backend in old {
            if !backends.iter().any(|b| Arc::ptr_eq(b, &backend)) {
                state.leaving.insert(backend.instance().to_string(), backend);
            }
        }
        state.endpoints.insert(revision, backends);
        self.publish(&state);
    }

    async fn drain(&self, instance: &str, timeout: Duration) -> bool {
        let backend = self.state.lock().unwrap().leaving.get(instance).cloned();
        let Some(backend) = backend else { return true };
        let router = self.router();
        let drained = router.drain(&backend, timeout).await;
        self.state.lock().unwrap().leaving.remove(instance);
        drained
    }
}

#[async_trait]
impl Router for LocalRouter {
    async fn set_weights(&self, weights: &[(u32, u32)]) -> Result<(), DriverError> {
        let mut state = self.state.lock().unwrap();
        state.weights = weights.iter().copied().filter(|(_, w)| *w > 0).collect();
        self.publish(&state);
        Ok(())
    }

    fn weights(&self) -> Vec<(u32, u32)> {
        let state = self.state.lock().unwrap();
        state.weights.iter().map(|(r, w)| (*r, *w)).collect()
    }

    async fn set_maintenance(&self, on: bool) -> Result<(), DriverError> {
        let mut state = self.state.lock().unwrap();
        state.maintenance = on;
        self.publish(&state);
        Ok(())
    }

    fn maintenance(&self) -> bool {
        self.state.lock().unwrap().maintenance
    }
}
