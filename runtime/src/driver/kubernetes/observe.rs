//! What the cluster shows of an app, kept current by two reflectors (its ReplicaSets and its
//! pods) and turned into [`Counts`] and [`DriverEvent`]s. Each change is diffed against the
//! view before it, so every pod that starts, becomes ready, drains, crashes or stops is
//! reported once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{broadcast, watch};

use super::{State, objects};
use crate::driver::{Counts, DriverEvent, Happened};

/// The app's ReplicaSets and pods, as far as counting goes.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Observed {
    /// Desired replicas, by revision, from the ReplicaSets.
    pub replica_sets: BTreeMap<u32, u32>,
    /// Revisions defined by this driver whose ReplicaSet the watch has not shown yet.
    pub defined: BTreeSet<u32>,
    /// Pods by uid.
    pub pods: BTreeMap<String, PodView>,
    /// Failures of pods that are gone, by revision, so the count never goes down.
    pub gone_failures: BTreeMap<u32, u32>,
}

/// One pod, as far as counting goes.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct PodView {
    pub name: String,
    pub revision: u32,
    pub ready: bool,
    /// Deleted and on its way out (it has left its endpoints).
    pub terminating: bool,
    /// Container restarts, plus one if the pod failed for good.
    pub restarts: u32,
    /// Why the scheduler cannot place it.
    pub unschedulable: Option<String>,
    /// Why a container waits or last terminated (`CrashLoopBackOff`, `Error`, `OOMKilled` …).
    pub reason: Option<String>,
    /// The `Ready` condition's message, when it is false.
    pub message: Option<String>,
}

impl PodView {
    fn failures(&self) -> u32 {
        self.restarts + u32::from(self.unschedulable.is_some())
    }

    pub fn not_ready_reason(&self) -> String {
        if let Some(why) = &self.unschedulable {
            return format!("cannot be scheduled: {why}");
        }
        match (&self.reason, &self.message) {
            (Some(reason), _) => format!("not ready ({reason})"),
            (None, Some(message)) => format!("not ready: {message}"),
            (None, None) => "not ready yet".into(),
        }
    }

    fn of(pod: &Pod) -> Option<(String, PodView)> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let revision = meta.labels.as_ref()?.get(objects::REVISION)?.parse().ok()?;
        let status = pod.status.clone().unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind);
        let ready = condition("Ready").is_some_and(|c| c.status == "True");
        let unschedulable = condition("PodScheduled")
            .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
            .map(|c| c.message.clone().unwrap_or_else(|| "no node fits it".into()));
        let containers = status.container_statuses.unwrap_or_default();
        let mut restarts: u32 = containers.iter().map(|c| c.restart_count.max(0) as u32).sum();
        if status.phase.as_deref() == Some("Failed") {
            restarts += 1;
        }
        let reason = containers.iter().find_map(|c| {
            let state = c.state.as_ref()?;
            if let Some(waiting) = &state.waiting
                && waiting.reason.as_deref() != Some("ContainerCreating")
            {
                return waiting.reason.clone();
            }
            c.last_state.as_ref()?.terminated.as_ref()?.reason.clone()
        });
        let message = condition("Ready")
            .filter(|c| c.status != "True")
            .and_then(|c| c.message.clone());
        Some((
            uid,
            PodView {
                name: meta.name.clone().unwrap_or_default(),
                revision,
                ready: ready && meta.deletion_timestamp.is_none(),
                terminating: meta.deletion_timestamp.is_some(),
                restarts,
                unschedulable,
                reason,
                message,
            },
        ))
    }
}

impl Observed {
    /// Every known revision's counts.
    pub fn counts(&self) -> BTreeMap<u32, Counts> {
        let mut counts: BTreeMap<u32, Counts> = self
            .replica_sets
            .iter()
            .map(|(revision, desired)| {
                (
                    *revision,
                    Counts {
                        desired: *desired,
                        ..Counts::default()
                    },
                )
            })
            .collect();
        for revision in &self.defined {
            counts.entry(*revision).or_default();
        }
        for (revision, failed) in &self.gone_failures {
            counts.entry(*revision).or_default().failed += failed;
        }
        for pod in self.pods.values() {
            let c = counts.entry(pod.revision).or_default();
            c.failed += pod.failures();
            if !pod.terminating {
                c.current += 1;
                c.ready += u32::from(pod.ready);
            }
        }
        counts
    }

    fn rebuild(&self, replica_sets: &Store<ReplicaSet>, pods: &Store<Pod>, app: &str) -> Observed {
        let mut next = Observed {
            defined: self.defined.clone(),
            gone_failures: self.gone_failures.clone(),
            ..Observed::default()
        };
        for rs in replica_sets.state() {
            let Some(revision) = rs.metadata.name.as_deref().and_then(|n| objects::revision_of(app, n)) else {
                continue;
            };
            let desired = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
            next.replica_sets.insert(revision, desired);
            next.defined.remove(&revision);
        }
        next.pods = pods.state().iter().filter_map(|pod| PodView::of(pod)).collect();
        for (uid, pod) in &self.pods {
            if !next.pods.contains_key(uid) {
                *next.gone_failures.entry(pod.revision).or_default() += pod.failures();
            }
        }
        next
    }

    /// What happened between `self` and `next`.
    fn changes(&self, next: &Observed) -> Vec<(u32, Happened)> {
        let mut out = Vec::new();
        for (uid, pod) in &next.pods {
            let instance = pod.name.clone();
            let before = self.pods.get(uid);
            if before.is_none() {
                out.push((
                    pod.revision,
                    Happened::Started {
                        instance: instance.clone(),
                    },
                ));
            }
            let was = before.cloned().unwrap_or_default();
            if pod.unschedulable.is_some() && was.unschedulable.is_none() {
                out.push((
                    pod.revision,
                    Happened::StartFailed {
                        message: format!("pod {instance} {}", pod.not_ready_reason()),
                    },
                ));
            }
            if pod.restarts > was.restarts && before.is_some() {
                let restarts = pod.restarts;
                // The kubelet's back-off: 10 s, doubling up to 5 minutes.
                let restart_in_ms = 10_000u64.saturating_mul(1 << (restarts.min(6) - 1)).min(300_000);
                out.push((
                    pod.revision,
                    Happened::Crashed {
                        instance: instance.clone(),
                        status: pod.reason.clone().unwrap_or_else(|| "restarted".into()),
                        restart_in_ms,
                        last_output: Vec::new(),
                    },
                ));
            }
            if pod.terminating && !was.terminating {
                out.push((
                    pod.revision,
                    Happened::Draining {
                        instance: instance.clone(),
                    },
                ));
            } else if pod.ready && !was.ready {
                out.push((
                    pod.revision,
                    Happened::Ready {
                        instance: instance.clone(),
                    },
                ));
            } else if !pod.ready && was.ready && !pod.terminating {
                out.push((
                    pod.revision,
                    Happened::NotReady {
                        instance: instance.clone(),
                    },
                ));
            }
        }
        for (uid, pod) in &self.pods {
            if !next.pods.contains_key(uid) {
                out.push((
                    pod.revision,
                    Happened::Stopped {
                        instance: pod.name.clone(),
                    },
                ));
            }
        }
        out
    }
}

/// Counts with what `scale` asked for in place of a ReplicaSet not yet showing it.
pub(super) fn with_asked(observed: &Observed, asked: &BTreeMap<u32, u32>) -> BTreeMap<u32, Counts> {
    let mut counts = observed.counts();
    for (revision, desired) in asked {
        counts.entry(*revision).or_default().desired = *desired;
    }
    counts
}

/// A reflector over the app's objects of one kind (by label), with the watcher's backoff.
fn reflect<K>(
    api: Api<K>,
    app: &str,
) -> (
    Store<K>,
    impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().labels(&objects::app_selector(app));
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff()).boxed();
    (reader, stream)
}

/// Watches the app's ReplicaSets and pods until the app is dropped, keeping `state` current
/// and reporting every change. `synced` turns true once both reflectors have listed.
pub(super) async fn run(
    client: kube::Client,
    namespace: String,
    app: String,
    state: Arc<Mutex<State>>,
    generation: watch::Sender<u64>,
    events: broadcast::Sender<DriverEvent>,
    synced: watch::Sender<bool>,
) {
    let (rs_store, rs_stream) = reflect(Api::<ReplicaSet>::namespaced(client.clone(), &namespace), &app);
    let (pod_store, pod_stream) = reflect(Api::<Pod>::namespaced(client, &namespace), &app);
    let mut listed = [false, false];
    let tagged = futures_util::stream::select(
        rs_stream.map(|item| (0usize, item.map(|event| matches!(event, watcher::Event::InitDone)))),
        pod_stream.map(|item| (1usize, item.map(|event| matches!(event, watcher::Event::InitDone)))),
    );
    let mut tagged = std::pin::pin!(tagged);
    while let Some((which, item)) = tagged.next().await {
        match item {
            Ok(init_done) => {
                if init_done {
                    listed[which] = true;
                }
            }
            Err(error) => {
                let message = match &error {
                    watcher::Error::InitialListFailed(kube::Error::Api(s))
                    | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
                        format!("{} ({} {})", s.message, s.code, s.reason)
                    }
                    other => other.to_string(),
                };
                tracing::warn!(%app, %namespace, error = %message, "watching the app's objects failed; retrying");
                state.lock().unwrap().watch_error = Some(message);
                continue;
            }
        }
        if !(listed[0] && listed[1]) {
            continue;
        }
        let (changes, counts) = {
            let mut state = state.lock().unwrap();
            state.watch_error = None;
            let next = state.observed.rebuild(&rs_store, &pod_store, &app);
            if next == state.observed {
                drop(state);
                synced.send_replace(true);
                continue;
            }
            let changes = state.observed.changes(&next);
            for (revision, desired) in &next.replica_sets {
                if state.asked.get(revision) == Some(desired) {
                    state.asked.remove(revision);
                }
            }
            state.observed = next;
            (changes, with_asked(&state.observed, &state.asked))
        };
        generation.send_modify(|g| *g += 1);
        let now = *generation.borrow();
        for (revision, what) in changes {
            let _ = events.send(DriverEvent {
                at_ms: crate::store::now_ms(),
                generation: now,
                revision,
                what,
                counts: counts.clone(),
            });
        }
        synced.send_replace(true);
    }
}
