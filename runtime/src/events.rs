//! The rollout timeline: every scale and weight change, probe, hook, log line and outcome,
//! in order, stamped by the cluster's clock.
//!
//! Two streams feed it: what the host does (recorded as it happens) and what the compute
//! driver reports on its event channel. A timeline attached to a cluster takes the driver's
//! pending events, under its one lock, before each event of its own and whenever it is
//! pumped, so the order is the order things happened and no event is taken twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::driver::{Cluster, DriverEvent, Happened, Router};
use crate::failure::GuestFailure;

/// What the host observed about one revision at the time of an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevisionSnapshot {
    pub desired: u32,
    pub current: u32,
    pub ready: u32,
    pub weight: u32,
}

/// One line of the timeline.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Milliseconds since the rollout started.
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
    /// Every revision's instances and weight right after the event, when the driver knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<BTreeMap<u32, RevisionSnapshot>>,
}

/// What happened.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    RolloutStarted {
        app: String,
        rollout: String,
        strategy: String,
        digest: String,
        from: Option<u32>,
        to: u32,
        replicas: u32,
        resumed: bool,
    },
    Scaled {
        revision: u32,
        from: u32,
        to: u32,
    },
    InstanceStarted {
        revision: u32,
        instance: String,
    },
    InstanceReady {
        revision: u32,
        instance: String,
    },
    InstanceCrashed {
        revision: u32,
        instance: String,
        restart_in_ms: u64,
    },
    InstanceStopped {
        revision: u32,
        instance: String,
    },
    WeightsChanged {
        /// Revision → weight. JSON object keys are strings; they are read back as numbers.
        #[serde(with = "revision_keys")]
        weights: BTreeMap<u32, u32>,
    },
    Waited {
        revision: u32,
        wanted: u32,
        ready: u32,
        timed_out: bool,
    },
    WaitedStopped {
        revision: u32,
        at_most: u32,
        current: u32,
        timed_out: bool,
    },
    Probed {
        revision: u32,
        probed: u32,
        ready: u32,
    },
    HttpChecked {
        revision: u32,
        path: String,
        checked: u32,
        passed: u32,
    },
    Hook {
        point: String,
        outcome: HookOutcome,
        /// The failure, when it failed.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
    },
    Maintenance {
        on: bool,
    },
    Progress {
        percent: u8,
        message: String,
    },
    Log {
        level: String,
        message: String,
    },
    StrategyFailed {
        failure: GuestFailure,
    },
    RollbackStarted {
        to: Option<u32>,
    },
    RollbackFinished {
        to: Option<u32>,
        ok: bool,
        message: String,
    },
    RolloutFinished {
        outcome: RolloutOutcome,
        summary: String,
    },
}

/// How a lifecycle hook ended. Crash recovery reads it to skip hooks that already succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HookOutcome {
    /// No hook is configured at that point.
    NotConfigured,
    Succeeded,
    /// It failed and its policy is `ignore`.
    FailureIgnored,
    /// It failed and the rollout fails with it.
    Failed,
}

/// How a rollout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutOutcome {
    /// The target serves; it is the app's running revision.
    Succeeded,
    /// The strategy failed and the previous revision was restored.
    RolledBack,
    /// The strategy failed and the state was left as it was (rollback off, or it failed too).
    Failed,
}

impl RolloutOutcome {
    pub fn is_success(self) -> bool {
        self == RolloutOutcome::Succeeded
    }
}

/// Receives every event as it is appended, with its sequence number (from 0).
pub type EventSink = Arc<dyn Fn(u64, &Event) + Send + Sync>;

/// An append-only, shareable event log for one rollout.
#[derive(Clone, Default)]
pub struct Timeline {
    inner: Arc<Mutex<TimelineInner>>,
}

#[derive(Default)]
struct TimelineInner {
    started_at_ms: u64,
    events: Vec<Event>,
    sink: Option<EventSink>,
    source: Option<Source>,
}

/// A compute driver's events, and the router whose weights complete each event's picture.
struct Source {
    events: broadcast::Receiver<DriverEvent>,
    router: Arc<dyn Router>,
}

impl Timeline {
    /// A timeline whose times are measured from `started_at_ms` on the cluster's clock.
    pub fn new(started_at_ms: u64) -> Self {
        Timeline {
            inner: Arc::new(Mutex::new(TimelineInner {
                started_at_ms,
                events: Vec::new(),
                sink: None,
                source: None,
            })),
        }
    }

    /// A timeline that also hands every event to `sink` (to persist and broadcast it), in
    /// order: the sink is called under the timeline's lock.
    pub fn with_sink(started_at_ms: u64, sink: EventSink) -> Self {
        Timeline {
            inner: Arc::new(Mutex::new(TimelineInner {
                started_at_ms,
                events: Vec::new(),
                sink: Some(sink),
                source: None,
            })),
        }
    }

    /// From now on, takes in what `cluster`'s compute driver reports.
    pub fn attach(&self, cluster: &Cluster) {
        self.inner.lock().unwrap().source = Some(Source {
            events: cluster.compute.events(),
            router: cluster.router.clone(),
        });
    }

    /// Takes in the driver's pending events, then stops listening to it.
    pub fn detach(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.take_pending();
        inner.source = None;
    }

    /// Takes in the driver's pending events (so followers see them as they happen).
    pub fn pump(&self) {
        self.inner.lock().unwrap().take_pending();
    }

    pub fn push(&self, now_ms: u64, kind: EventKind, state: Option<BTreeMap<u32, RevisionSnapshot>>) {
        let mut inner = self.inner.lock().unwrap();
        inner.take_pending();
        inner.append(now_ms, kind, state);
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().unwrap().events.clone()
    }
}

impl TimelineInner {
    fn append(&mut self, now_ms: u64, kind: EventKind, state: Option<BTreeMap<u32, RevisionSnapshot>>) {
        let at_ms = now_ms.saturating_sub(self.started_at_ms);
        let event = Event { at_ms, kind, state };
        if let Some(sink) = &self.sink {
            sink(self.events.len() as u64, &event);
        }
        self.events.push(event);
    }

    /// Appends the driver events waiting on the source, in the order they happened.
    fn take_pending(&mut self) {
        let Some(source) = self.source.as_mut() else { return };
        let mut taken = Vec::new();
        let mut missed = 0;
        loop {
            match source.events.try_recv() {
                Ok(event) => taken.push(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => missed += n,
                Err(_) => break,
            }
        }
        let weights = source.router.weights();
        if missed > 0 {
            self.append(
                taken.first().map_or(0, |e| e.at_ms),
                EventKind::Log {
                    level: "warn".into(),
                    message: format!("{missed} driver events came too fast to record"),
                },
                None,
            );
        }
        for event in taken {
            let state = Some(crate::driver::snapshot(&event.counts, &weights));
            for kind in kinds_of(&event) {
                self.append(event.at_ms, kind, state.clone());
            }
        }
    }
}

/// The timeline's words for a driver event.
fn kinds_of(event: &DriverEvent) -> Vec<EventKind> {
    let revision = event.revision;
    match &event.what {
        Happened::Scaled { from, to } => vec![EventKind::Scaled {
            revision,
            from: *from,
            to: *to,
        }],
        Happened::Started { instance } => vec![EventKind::InstanceStarted {
            revision,
            instance: instance.clone(),
        }],
        Happened::Ready { instance } => vec![EventKind::InstanceReady {
            revision,
            instance: instance.clone(),
        }],
        Happened::NotReady { instance } => vec![EventKind::Log {
            level: "warn".into(),
            message: format!("{instance} stopped passing its readiness probe"),
        }],
        Happened::Crashed {
            instance,
            status,
            restart_in_ms,
            last_output,
        } => {
            let mut kinds = vec![EventKind::InstanceCrashed {
                revision,
                instance: instance.clone(),
                restart_in_ms: *restart_in_ms,
            }];
            if !last_output.is_empty() {
                kinds.push(EventKind::Log {
                    level: "warn".into(),
                    message: format!("{instance} exited ({status}); last output: {}", last_output.join(" | ")),
                });
            }
            kinds
        }
        // Shown when it has stopped.
        Happened::Draining { .. } => Vec::new(),
        Happened::Stopped { instance } => vec![EventKind::InstanceStopped {
            revision,
            instance: instance.clone(),
        }],
        Happened::StartFailed { message } => vec![EventKind::Log {
            level: "error".into(),
            message: format!("revision {revision}: cannot start {message}"),
        }],
    }
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("events", &self.inner.lock().unwrap().events.len())
            .finish()
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.at_ms as f64 / 1000.0;
        write!(f, "{secs:>8.3}s  ")?;
        match &self.kind {
            EventKind::RolloutStarted {
                app,
                strategy,
                from,
                to,
                replicas,
                resumed,
                ..
            } => {
                let from = from.map_or("nothing".to_string(), |r| format!("revision {r}"));
                let again = if *resumed { " (resumed)" } else { "" };
                write!(
                    f,
                    "rollout   {app}: {from} → revision {to}, {replicas} replicas, strategy {strategy}{again}"
                )?
            }
            EventKind::Scaled { revision, from, to } => write!(f, "scale     revision {revision}: {from} → {to}")?,
            EventKind::InstanceStarted { revision, instance } => {
                write!(f, "start     revision {revision}: {instance}")?
            }
            EventKind::InstanceReady { revision, instance } => write!(f, "ready     revision {revision}: {instance}")?,
            EventKind::InstanceCrashed {
                revision,
                instance,
                restart_in_ms,
            } => write!(
                f,
                "crash     revision {revision}: {instance}, restart in {restart_in_ms} ms"
            )?,
            EventKind::InstanceStopped { revision, instance } => {
                write!(f, "stop      revision {revision}: {instance}")?
            }
            EventKind::WeightsChanged { weights } => {
                let list: Vec<String> = weights.iter().map(|(r, w)| format!("r{r}={w}")).collect();
                let shown = if list.is_empty() {
                    "none (503)".to_string()
                } else {
                    list.join(" ")
                };
                write!(f, "route     {shown}")?
            }
            EventKind::Waited {
                revision,
                wanted,
                ready,
                timed_out,
            } => {
                let how = if *timed_out { "timed out" } else { "done" };
                write!(f, "wait      revision {revision}: {ready}/{wanted} ready, {how}")?
            }
            EventKind::WaitedStopped {
                revision,
                at_most,
                current,
                timed_out,
            } => {
                let how = if *timed_out { "timed out" } else { "done" };
                write!(
                    f,
                    "wait      revision {revision}: {current} left (at most {at_most} wanted), {how}"
                )?
            }
            EventKind::Probed {
                revision,
                probed,
                ready,
            } => write!(f, "probe     revision {revision}: {ready}/{probed} ready")?,
            EventKind::HttpChecked {
                revision,
                path,
                checked,
                passed,
            } => write!(
                f,
                "check     revision {revision}: GET {path} passed on {passed}/{checked}"
            )?,
            EventKind::Hook {
                point,
                outcome,
                message,
            } => {
                let word = match outcome {
                    HookOutcome::NotConfigured => "not configured",
                    HookOutcome::Succeeded => "succeeded",
                    HookOutcome::FailureIgnored => "failed (ignored by policy)",
                    HookOutcome::Failed => "failed",
                };
                if message.is_empty() {
                    write!(f, "hook      {point}: {word}")?
                } else {
                    write!(f, "hook      {point}: {word}: {message}")?
                }
            }
            EventKind::Maintenance { on } => write!(f, "maint     {}", if *on { "on" } else { "off" })?,
            EventKind::Progress { percent, message } => write!(f, "progress  {percent:>3}% {message}")?,
            EventKind::Log { level, message } => write!(f, "log       [{level}] {message}")?,
            EventKind::StrategyFailed { failure } => write!(f, "FAILED    {failure}")?,
            EventKind::RollbackStarted { to } => match to {
                Some(r) => write!(f, "rollback  restoring revision {r}")?,
                None => write!(f, "rollback  removing the failed first revision")?,
            },
            EventKind::RollbackFinished { message, .. } => write!(f, "rollback  {message}")?,
            EventKind::RolloutFinished { outcome, summary } => {
                let word = match outcome {
                    RolloutOutcome::Succeeded => "SUCCEEDED",
                    RolloutOutcome::RolledBack => "ROLLED BACK",
                    RolloutOutcome::Failed => "FAILED",
                };
                write!(f, "{word:<9} {summary}")?
            }
        }
        if let Some(state) = &self.state {
            let parts: Vec<String> = state
                .iter()
                .map(|(r, s)| format!("r{r} {}/{} ready w{}", s.ready, s.current, s.weight))
                .collect();
            write!(f, "   [{}]", parts.join(" · "))?;
        }
        Ok(())
    }
}

/// Maps keyed by revision number, written as JSON objects (whose keys are strings) and read
/// back by parsing the keys: serde cannot read number keys inside a flattened enum, which is
/// how events are stored.
mod revision_keys {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<u32, u32>, serializer: S) -> Result<S::Ok, S::Error> {
        map.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<u32, u32>, D::Error> {
        BTreeMap::<String, u32>::deserialize(deserializer)?
            .into_iter()
            .map(|(key, weight)| {
                let revision = key
                    .parse()
                    .map_err(|_| D::Error::custom(format!("{key:?} is not a revision number")))?;
                Ok((revision, weight))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_events_read_back_as_they_were_written() {
        let event = Event {
            at_ms: 5,
            kind: EventKind::WeightsChanged {
                weights: BTreeMap::from([(1, 128), (2, 128)]),
            },
            state: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back.to_string(), event.to_string());
        assert!(back.to_string().contains("r1=128 r2=128"), "{back}");
    }

    #[test]
    fn hook_events_say_how_they_ended() {
        let json = r#"{"at_ms":1,"event":"hook","point":"pre","outcome":"failed","message":"boom"}"#;
        let event: Event = serde_json::from_str(json).unwrap();
        assert!(event.to_string().ends_with("hook      pre: failed: boom"), "{event}");
    }
}
