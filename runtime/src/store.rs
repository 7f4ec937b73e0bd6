//! The runner's state in SQLite (WAL): apps, revisions, rollouts, their events, app events
//! and modules.
//!
//! **Invariant:** every state change that matters after a crash is written here before it is
//! acted on or acknowledged; nothing else persists state. A change the user sees as one
//! action (recording a deploy, ending a rollout) is one transaction.
//!
//! **Invariant:** states the code branches on are enums ([`RevisionState`], [`RolloutState`],
//! [`RolloutKind`]) stored as their kebab-case names; no display text is ever compared.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};

use crate::events::Event;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed a statement.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value could not be written as JSON (never expected: our types always serialize).
    #[error("cannot encode a {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    /// The database file could not be created or its permissions set.
    #[error("cannot prepare the database file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// A revision's place in its lifecycle (the Webscale states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RevisionState {
    /// Recorded; its instances are being created.
    Creating,
    /// Its instances are up and being checked.
    Verifying,
    /// The app's active revision, serving traffic.
    Running,
    /// Replaced, but its instances run on for the destroy delay: instant rollback target.
    Keeping,
    /// Its instances are being stopped after the destroy delay.
    Destroying,
    /// No instances; its config is kept for redeploy.
    Retained,
    /// Its rollout failed.
    Failed,
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    Running,
    Succeeded,
    /// Failed, and the previous revision was restored.
    RolledBack,
    /// Failed and left as it was (automatic rollback off, or the rollback failed too).
    Failed,
    /// Stopped by an operator and rolled back.
    Aborted,
}

/// What started a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutKind {
    /// A new spec.
    Deploy,
    /// An earlier revision's config as a new revision.
    Redeploy,
    /// The failed latest revision again.
    Retry,
    /// Traffic and capacity back to a kept revision, without a strategy.
    Rollback,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),* }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                match value.as_str()? {
                    $($name => Ok($ty::$variant),)*
                    other => Err(FromSqlError::Other(
                        format!("{other:?} is not a {}", stringify!($ty)).into(),
                    )),
                }
            }
        }
    };
}

text_enum!(RevisionState {
    Creating => "creating",
    Verifying => "verifying",
    Running => "running",
    Keeping => "keeping",
    Destroying => "destroying",
    Retained => "retained",
    Failed => "failed",
});

text_enum!(RolloutState {
    Running => "running",
    Succeeded => "succeeded",
    RolledBack => "rolled-back",
    Failed => "failed",
    Aborted => "aborted",
});

text_enum!(RolloutKind {
    Deploy => "deploy",
    Redeploy => "redeploy",
    Retry => "retry",
    Rollback => "rollback",
});

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AppRow {
    pub name: String,
    pub spec: serde_json::Value,
    pub active_revision: Option<u32>,
    pub maintenance: bool,
    /// Replicas set by hand for the running revision, until the next rollout.
    pub scale: Option<u32>,
    /// Route weights set by hand (revision → weight), until the next rollout.
    pub route: Option<serde_json::Value>,
    /// Something about the app an operator should know, such as state the runner could not
    /// restore after a restart; cleared by the next rollout that succeeds.
    pub notice: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    /// When the app was deleted; its history stays readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevisionRow {
    pub app: String,
    pub number: u32,
    pub state: RevisionState,
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    pub spec_digest: String,
    pub strategy: String,
    pub strategy_digest: String,
    #[schema(value_type = Object)]
    pub hooks: serde_json::Value,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutRow {
    pub id: String,
    pub app: String,
    pub target: u32,
    pub from: Option<u32>,
    pub kind: RolloutKind,
    pub state: RolloutState,
    pub summary: Option<String>,
    #[schema(value_type = Option<crate::failure::GuestFailure>)]
    pub failure: Option<serde_json::Value>,
    pub started_at: u64,
    pub finished_at: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleRow {
    pub name: String,
    pub digest: String,
    pub world: String,
    pub size: u64,
    pub uploaded_at: u64,
    /// The host API version it was built against (`0.2.0`); unknown for older uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// Something that happened to an app outside any rollout (a restart it could not fully
/// recover from, a deletion).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppEventRow {
    pub at: u64,
    pub level: String,
    pub message: String,
}

/// A new revision and its first rollout, recorded together by [`Store::record_revision`].
#[derive(Debug)]
pub struct NewRevision<'a> {
    pub app: &'a str,
    /// The app's whole spec (with its lifecycle settings).
    pub app_spec: &'a serde_json::Value,
    /// The revision's spec (without them).
    pub spec: &'a serde_json::Value,
    pub spec_digest: &'a str,
    pub strategy: &'a str,
    pub strategy_digest: &'a str,
    pub hooks: &'a serde_json::Value,
    /// Why it exists, when that is not a plain deploy ("redeploy of revision 2").
    pub reason: Option<&'a str>,
    pub kind: RolloutKind,
}

/// What [`Store::record_revision`] and [`Store::record_rollout`] recorded.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub number: u32,
    /// The app's active revision when the rollout was recorded.
    pub active: Option<u32>,
    pub rollout: String,
}

/// How a rollout ended, for [`Store::record_end`].
#[derive(Clone, Debug)]
pub struct RolloutEnd<'a> {
    pub app: &'a str,
    pub rollout: &'a str,
    pub kind: RolloutKind,
    pub target: u32,
    pub state: RolloutState,
    /// On success, the revision that served before and the state it moves to.
    pub previous: Option<(u32, RevisionState)>,
    pub summary: &'a str,
    pub failure: Option<&'a serde_json::Value>,
}

/// The schema, version by version; `PRAGMA user_version` says how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
CREATE TABLE IF NOT EXISTS apps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    active_revision INTEGER,
    maintenance INTEGER NOT NULL DEFAULT 0,
    scale INTEGER,
    route TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revisions (
    app TEXT NOT NULL REFERENCES apps(name),
    number INTEGER NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    spec_digest TEXT NOT NULL,
    strategy TEXT NOT NULL,
    strategy_digest TEXT NOT NULL,
    hooks TEXT NOT NULL DEFAULT '{}',
    reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app, number)
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL REFERENCES apps(name),
    target INTEGER NOT NULL,
    from_revision INTEGER,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    summary TEXT,
    failure TEXT,
    started_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS rollouts_by_app ON rollouts(app, started_at);
CREATE TABLE IF NOT EXISTS events (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (rollout, seq)
);
CREATE TABLE IF NOT EXISTS modules (
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    world TEXT NOT NULL,
    size INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL,
    PRIMARY KEY (name, digest)
);
",
    // 2: notices, deleted apps and app events.
    "
ALTER TABLE apps ADD COLUMN notice TEXT;
ALTER TABLE apps ADD COLUMN deleted_at INTEGER;
CREATE TABLE app_events (
    app TEXT NOT NULL,
    at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX app_events_by_app ON app_events(app, at);
",
    // 3: the host API version a module was built against (unknown for older uploads).
    "
ALTER TABLE modules ADD COLUMN api_version TEXT;
",
];

const APP_COLUMNS: &str =
    "name, spec, active_revision, maintenance, scale, route, notice, created_at, updated_at, deleted_at";
const REVISION_COLUMNS: &str =
    "app, number, state, spec, spec_digest, strategy, strategy_digest, hooks, created_at, updated_at, reason";
const ROLLOUT_COLUMNS: &str = "id, app, target, from_revision, kind, state, summary, failure, started_at, finished_at";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Result<T> = std::result::Result<T, StoreError>;

impl Store {
    /// Opens (or creates) the database at `path`, readable by its owner only, and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        private_file(path)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        // SQLite gives its -wal and -shm files the database file's mode; ones left by an
        // older runner are tightened here.
        for suffix in ["-wal", "-shm"] {
            let side = format!("{}{suffix}", path.display());
            if Path::new(&side).exists() {
                private_file(Path::new(&side))?;
            }
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&conn)?)
    }

    fn transaction<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Records or updates the app's spec (reviving it if it was deleted), without a revision.
    pub fn upsert_app(&self, name: &str, spec: &serde_json::Value) -> Result<()> {
        self.with(|c| upsert_app(c, name, spec))
    }

    /// Records a new revision, numbered one past the app's highest, as `creating`, together
    /// with the app's spec and the rollout that will deploy it: one transaction.
    pub fn record_revision(&self, new: &NewRevision<'_>, rollout_id: impl FnOnce(u32) -> String) -> Result<Recorded> {
        self.transaction(|tx| {
            upsert_app(tx, new.app, new.app_spec)?;
            let number: u32 = tx.query_row(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE app = ?1",
                [new.app],
                |r| r.get(0),
            )?;
            let now = now_ms() as i64;
            tx.execute(
                "INSERT INTO revisions (app, number, state, spec, spec_digest, strategy, strategy_digest, hooks, reason, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                params![
                    new.app,
                    number,
                    RevisionState::Creating,
                    new.spec.to_string(),
                    new.spec_digest,
                    new.strategy,
                    new.strategy_digest,
                    new.hooks.to_string(),
                    new.reason,
                    now
                ],
            )?;
            let rollout = rollout_id(number);
            let active = insert_rollout(tx, &rollout, new.app, number, new.kind)?;
            Ok(Recorded {
                number,
                active,
                rollout,
            })
        })
    }

    /// Records a rollout of an existing revision (retry, instant rollback).
    pub fn record_rollout(&self, app: &str, number: u32, kind: RolloutKind, id: &str) -> Result<Recorded> {
        self.transaction(|tx| {
            let active = insert_rollout(tx, id, app, number, kind)?;
            Ok(Recorded {
                number,
                active,
                rollout: id.to_string(),
            })
        })
    }

    /// Records how a rollout ended, in one transaction. A success makes the target the
    /// app's running revision, retires the previous one, and clears hand-set scale and route
    /// and any notice; a failure marks the target failed (unless it was an instant rollback to
    /// a kept revision, which stays as it was).
    pub fn record_end(&self, end: &RolloutEnd<'_>) -> Result<()> {
        let now = now_ms() as i64;
        let failure = end.failure.map(|f| f.to_string());
        self.transaction(|tx| {
            tx.execute(
                "UPDATE rollouts SET state = ?2, summary = ?3, failure = ?4, finished_at = ?5 WHERE id = ?1",
                params![end.rollout, end.state, end.summary, failure, now],
            )?;
            if end.state == RolloutState::Succeeded {
                set_revision_state(tx, end.app, end.target, RevisionState::Running, None)?;
                tx.execute(
                    "UPDATE apps SET active_revision = ?2, route = NULL, scale = NULL, notice = NULL, updated_at = ?3 WHERE name = ?1",
                    params![end.app, end.target, now],
                )?;
                if let Some((previous, state)) = end.previous {
                    set_revision_state(tx, end.app, previous, state, None)?;
                }
            } else if end.kind != RolloutKind::Rollback {
                set_revision_state(tx, end.app, end.target, RevisionState::Failed, Some(end.summary))?;
            }
            Ok(())
        })
    }

    pub fn set_maintenance(&self, app: &str, on: bool) -> Result<()> {
        self.with(|c| c.execute("UPDATE apps SET maintenance = ?2 WHERE name = ?1", params![app, on]))?;
        Ok(())
    }

    pub fn set_scale(&self, app: &str, replicas: Option<u32>) -> Result<()> {
        self.with(|c| c.execute("UPDATE apps SET scale = ?2 WHERE name = ?1", params![app, replicas]))?;
        Ok(())
    }

    pub fn set_route(&self, app: &str, route: Option<&serde_json::Value>) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE apps SET route = ?2 WHERE name = ?1",
                params![app, route.map(|r| r.to_string())],
            )
        })?;
        Ok(())
    }

    /// Sets (or clears) the app's notice and, when set, records it as an app event too.
    pub fn set_notice(&self, app: &str, notice: Option<&str>) -> Result<()> {
        self.transaction(|tx| {
            tx.execute("UPDATE apps SET notice = ?2 WHERE name = ?1", params![app, notice])?;
            if let Some(message) = notice {
                insert_app_event(tx, app, "warn", message)?;
            }
            Ok(())
        })
    }

    pub fn app_event(&self, app: &str, level: &str, message: &str) -> Result<()> {
        self.with(|c| insert_app_event(c, app, level, message))
    }

    /// The app's events, oldest first.
    pub fn app_events(&self, app: &str) -> Result<Vec<AppEventRow>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT at, level, message FROM app_events WHERE app = ?1 ORDER BY at, rowid")?;
            let rows = stmt.query_map([app], |r| {
                Ok(AppEventRow {
                    at: r.get::<_, i64>(0)? as u64,
                    level: r.get(1)?,
                    message: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Marks the app deleted: it no longer runs or lists, but its history stays readable.
    pub fn delete_app(&self, app: &str) -> Result<()> {
        let now = now_ms() as i64;
        self.transaction(|tx| {
            tx.execute(
                "UPDATE apps SET deleted_at = ?2, active_revision = NULL, route = NULL, scale = NULL, notice = NULL, maintenance = 0 WHERE name = ?1",
                params![app, now],
            )?;
            tx.execute(
                "UPDATE revisions SET state = ?3, updated_at = ?2 WHERE app = ?1 AND state IN ('running', 'keeping', 'destroying', 'creating', 'verifying')",
                params![app, now, RevisionState::Retained],
            )?;
            insert_app_event(tx, app, "info", "the app was deleted; its instances and route were stopped")?;
            Ok(())
        })
    }

    /// Deletes a revision's record (its rollouts and their events stay, as history).
    pub fn delete_revision(&self, app: &str, number: u32) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM revisions WHERE app = ?1 AND number = ?2",
                params![app, number],
            )
        })?;
        Ok(())
    }

    /// Apps that exist (not deleted), by name.
    pub fn apps(&self) -> Result<Vec<AppRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {APP_COLUMNS} FROM apps WHERE deleted_at IS NULL ORDER BY name"
            ))?;
            let rows = stmt.query_map([], app_row)?;
            rows.collect()
        })
    }

    /// The app, unless it was deleted.
    pub fn app(&self, name: &str) -> Result<Option<AppRow>> {
        Ok(self.app_including_deleted(name)?.filter(|a| a.deleted_at.is_none()))
    }

    /// The app, deleted or not (its history stays readable).
    pub fn app_including_deleted(&self, name: &str) -> Result<Option<AppRow>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE name = ?1"),
                [name],
                app_row,
            )
            .optional()
        })
    }

    pub fn set_revision_state(&self, app: &str, number: u32, state: RevisionState, reason: Option<&str>) -> Result<()> {
        self.with(|c| set_revision_state(c, app, number, state, reason))
    }

    pub fn revisions(&self, app: &str) -> Result<Vec<RevisionRow>> {
        self.revisions_in(app, 0..u32::MAX)
    }

    /// The revisions numbered within `numbers`, oldest first.
    pub fn revisions_in(&self, app: &str, numbers: std::ops::Range<u32>) -> Result<Vec<RevisionRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {REVISION_COLUMNS} FROM revisions WHERE app = ?1 AND number >= ?2 AND number < ?3 ORDER BY number"
            ))?;
            let rows = stmt.query_map(params![app, numbers.start, numbers.end], revision_row)?;
            rows.collect()
        })
    }

    pub fn revision(&self, app: &str, number: u32) -> Result<Option<RevisionRow>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE app = ?1 AND number = ?2"),
                params![app, number],
                revision_row,
            )
            .optional()
        })
    }

    pub fn latest_revision(&self, app: &str) -> Result<Option<RevisionRow>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {REVISION_COLUMNS} FROM revisions WHERE app = ?1 ORDER BY number DESC LIMIT 1"),
                [app],
                revision_row,
            )
            .optional()
        })
    }

    pub fn rollout(&self, id: &str) -> Result<Option<RolloutRow>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
                [id],
                rollout_row,
            )
            .optional()
        })
    }

    pub fn rollouts(&self, app: &str) -> Result<Vec<RolloutRow>> {
        self.rollouts_in(app, 0..u32::MAX)
    }

    /// The rollouts of revisions numbered within `targets`, in the order they started.
    pub fn rollouts_in(&self, app: &str, targets: std::ops::Range<u32>) -> Result<Vec<RolloutRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE app = ?1 AND target >= ?2 AND target < ?3 ORDER BY started_at, id"
            ))?;
            let rows = stmt.query_map(params![app, targets.start, targets.end], rollout_row)?;
            rows.collect()
        })
    }

    /// The highest revision number an app's rollouts reached (kept revision or not).
    pub fn latest_target(&self, app: &str) -> Result<Option<u32>> {
        self.with(|c| c.query_row("SELECT MAX(target) FROM rollouts WHERE app = ?1", [app], |r| r.get(0)))
    }

    /// Rollouts that were running when the runner stopped.
    pub fn unfinished_rollouts(&self) -> Result<Vec<RolloutRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE state = 'running' ORDER BY started_at"
            ))?;
            let rows = stmt.query_map([], rollout_row)?;
            rows.collect()
        })
    }

    /// Finished and running rollouts, counted by state.
    pub fn rollout_counts(&self) -> Result<Vec<(RolloutState, u64)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT state, COUNT(*) FROM rollouts GROUP BY state ORDER BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, RolloutState>(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }

    pub fn append_event(&self, rollout: &str, seq: u64, event: &Event) -> Result<()> {
        let json = serde_json::to_string(event).map_err(|source| StoreError::Encode { what: "event", source })?;
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO events (rollout, seq, event) VALUES (?1, ?2, ?3)",
                params![rollout, seq as i64, json],
            )
        })?;
        Ok(())
    }

    /// A rollout's events as stored, oldest first.
    pub fn events(&self, rollout: &str) -> Result<Vec<serde_json::Value>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT event FROM events WHERE rollout = ?1 ORDER BY seq")?;
            let rows = stmt.query_map([rollout], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map(|s| json_column(&s))).collect()
        })
    }

    pub fn put_module(&self, name: &str, digest: &str, world: &str, api_version: &str, size: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO modules (name, digest, world, size, uploaded_at, api_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(name, digest) DO UPDATE SET uploaded_at = excluded.uploaded_at, api_version = excluded.api_version",
                params![name, digest, world, size as i64, now_ms() as i64, api_version],
            )
        })?;
        Ok(())
    }

    pub fn modules(&self) -> Result<Vec<ModuleRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, digest, world, size, uploaded_at, api_version FROM modules ORDER BY name, uploaded_at",
            )?;
            let rows = stmt.query_map([], module_row)?;
            rows.collect()
        })
    }

    /// The revisions that use module `name` at `digest` (as their strategy or a hook), of
    /// apps not deleted: each may be rolled back to, so the module must stay.
    pub fn module_pins(&self, name: &str, digest: &str) -> Result<Vec<(String, u32)>> {
        let candidates: Vec<(String, u32, String, String, String)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT r.app, r.number, r.strategy, r.strategy_digest, r.hooks FROM revisions r
                 JOIN apps a ON a.name = r.app
                 WHERE a.deleted_at IS NULL AND (r.strategy_digest = ?1 OR instr(r.hooks, ?1) > 0)
                 ORDER BY r.app, r.number",
            )?;
            let rows = stmt.query_map([digest], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u32, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect()
        })?;
        Ok(candidates
            .into_iter()
            .filter(|(_, _, strategy, strategy_digest, hooks)| {
                let uses = |module: &serde_json::Value| module["module"] == name && module["digest"] == digest;
                (strategy == name && strategy_digest == digest)
                    || serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(hooks)
                        .is_ok_and(|hooks| hooks.values().any(uses))
            })
            .map(|(app, number, ..)| (app, number))
            .collect())
    }

    /// Forgets the upload of `digest` under `name`. Whether another name still has the same
    /// component.
    pub fn delete_module(&self, name: &str, digest: &str) -> Result<bool> {
        self.with(|c| {
            c.execute(
                "DELETE FROM modules WHERE name = ?1 AND digest = ?2",
                params![name, digest],
            )?;
            c.query_row("SELECT COUNT(*) FROM modules WHERE digest = ?1", [digest], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
        })
    }

    /// The newest upload under `name`, or the one with `digest` when given.
    pub fn module(&self, name: &str, digest: Option<&str>) -> Result<Option<ModuleRow>> {
        self.with(|c| match digest {
            Some(digest) => c
                .query_row("SELECT name, digest, world, size, uploaded_at, api_version FROM modules WHERE name = ?1 AND digest = ?2", params![name, digest], module_row)
                .optional(),
            None => c
                .query_row(
                    "SELECT name, digest, world, size, uploaded_at, api_version FROM modules WHERE name = ?1 ORDER BY uploaded_at DESC, rowid DESC LIMIT 1",
                    [name],
                    module_row,
                )
                .optional(),
        })
    }
}

/// Creates `path` readable and writable by its owner only, or narrows an existing file to that.
fn private_file(path: &Path) -> Result<()> {
    let failed = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(failed)?;
    }
    Ok(())
}

fn migrate(conn: &Connection) -> Result<()> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    // A database from before versioning has the first schema but user_version 0.
    let has_apps: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'apps'",
        [],
        |r| r.get(0),
    )?;
    let applied = if applied == 0 && has_apps { 1 } else { applied };
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        conn.execute_batch(&format!(
            "BEGIN; {migration} PRAGMA user_version = {}; COMMIT;",
            index + 1
        ))?;
    }
    Ok(())
}

fn upsert_app(c: &Connection, name: &str, spec: &serde_json::Value) -> rusqlite::Result<()> {
    let now = now_ms() as i64;
    c.execute(
        "INSERT INTO apps (name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at, deleted_at = NULL",
        params![name, spec.to_string(), now],
    )?;
    Ok(())
}

/// Inserts a running rollout; returns the app's active revision at that moment.
fn insert_rollout(c: &Connection, id: &str, app: &str, target: u32, kind: RolloutKind) -> Result<Option<u32>> {
    let active: Option<u32> = c
        .query_row("SELECT active_revision FROM apps WHERE name = ?1", [app], |r| r.get(0))
        .optional()?
        .flatten();
    c.execute(
        "INSERT INTO rollouts (id, app, target, from_revision, kind, state, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, app, target, active, kind, RolloutState::Running, now_ms() as i64],
    )?;
    Ok(active)
}

fn set_revision_state(
    c: &Connection,
    app: &str,
    number: u32,
    state: RevisionState,
    reason: Option<&str>,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE revisions SET state = ?3, reason = COALESCE(?4, reason), updated_at = ?5 WHERE app = ?1 AND number = ?2",
        params![app, number, state, reason, now_ms() as i64],
    )?;
    Ok(())
}

fn insert_app_event(c: &Connection, app: &str, level: &str, message: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO app_events (app, at, level, message) VALUES (?1, ?2, ?3, ?4)",
        params![app, now_ms() as i64, level, message],
    )?;
    Ok(())
}

fn json_column(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

fn app_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppRow> {
    Ok(AppRow {
        name: r.get(0)?,
        spec: json_column(&r.get::<_, String>(1)?),
        active_revision: r.get(2)?,
        maintenance: r.get(3)?,
        scale: r.get(4)?,
        route: r.get::<_, Option<String>>(5)?.as_deref().map(json_column),
        notice: r.get(6)?,
        created_at: r.get::<_, i64>(7)? as u64,
        updated_at: r.get::<_, i64>(8)? as u64,
        deleted_at: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
    })
}

fn revision_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RevisionRow> {
    Ok(RevisionRow {
        app: r.get(0)?,
        number: r.get(1)?,
        state: r.get(2)?,
        spec: json_column(&r.get::<_, String>(3)?),
        spec_digest: r.get(4)?,
        strategy: r.get(5)?,
        strategy_digest: r.get(6)?,
        hooks: json_column(&r.get::<_, String>(7)?),
        created_at: r.get::<_, i64>(8)? as u64,
        updated_at: r.get::<_, i64>(9)? as u64,
        reason: r.get(10)?,
    })
}

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RolloutRow> {
    Ok(RolloutRow {
        id: r.get(0)?,
        app: r.get(1)?,
        target: r.get(2)?,
        from: r.get(3)?,
        kind: r.get(4)?,
        state: r.get(5)?,
        summary: r.get(6)?,
        failure: r.get::<_, Option<String>>(7)?.as_deref().map(json_column),
        started_at: r.get::<_, i64>(8)? as u64,
        finished_at: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
    })
}

fn module_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModuleRow> {
    Ok(ModuleRow {
        name: r.get(0)?,
        digest: r.get(1)?,
        world: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        uploaded_at: r.get::<_, i64>(4)? as u64,
        api_version: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("slipway-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("test.db")
    }

    fn new_revision<'a>(app: &'a str, spec: &'a serde_json::Value, digest: &'a str) -> NewRevision<'a> {
        NewRevision {
            app,
            app_spec: spec,
            spec,
            spec_digest: digest,
            strategy: "builtin:rolling",
            strategy_digest: "s",
            hooks: spec,
            reason: None,
            kind: RolloutKind::Deploy,
        }
    }

    #[test]
    fn revisions_number_per_app_and_survive_reopening() {
        let path = temp_db("numbers");
        let spec = serde_json::json!({"name": "a"});
        {
            let store = Store::open(&path).unwrap();
            let first = store
                .record_revision(&new_revision("a", &spec, "d1"), |n| format!("a-{n}"))
                .unwrap();
            assert_eq!((first.number, first.active, first.rollout.as_str()), (1, None, "a-1"));
            store
                .record_end(&RolloutEnd {
                    app: "a",
                    rollout: "a-1",
                    kind: RolloutKind::Deploy,
                    target: 1,
                    state: RolloutState::Succeeded,
                    previous: None,
                    summary: "ok",
                    failure: None,
                })
                .unwrap();
            let second = store
                .record_revision(&new_revision("a", &spec, "d2"), |n| format!("a-{n}"))
                .unwrap();
            assert_eq!((second.number, second.active), (2, Some(1)));
            let other = store
                .record_revision(&new_revision("b", &spec, "d1"), |n| format!("b-{n}"))
                .unwrap();
            assert_eq!(other.number, 1);
        }
        let store = Store::open(&path).unwrap();
        let revisions = store.revisions("a").unwrap();
        assert_eq!(
            revisions.iter().map(|r| (r.number, r.state)).collect::<Vec<_>>(),
            vec![(1, RevisionState::Running), (2, RevisionState::Creating)]
        );
        assert_eq!(store.app("a").unwrap().unwrap().active_revision, Some(1));
        assert_eq!(store.unfinished_rollouts().unwrap().len(), 2);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the database is private to its owner");
    }

    #[test]
    fn a_failed_record_leaves_nothing_behind() {
        let path = temp_db("atomic");
        let store = Store::open(&path).unwrap();
        let spec = serde_json::json!({"name": "a"});
        store
            .record_revision(&new_revision("a", &spec, "d1"), |_| "same-id".into())
            .unwrap();
        // The second rollout id collides, so the whole deploy must be undone.
        let error = store.record_revision(&new_revision("a", &spec, "d2"), |_| "same-id".into());
        assert!(error.is_err());
        assert_eq!(
            store.revisions("a").unwrap().len(),
            1,
            "no revision without its rollout"
        );
    }

    #[test]
    fn states_are_stored_by_name() {
        for state in [RevisionState::Keeping, RevisionState::Failed] {
            let text = serde_json::to_value(state).unwrap();
            assert_eq!(text, state.as_str());
        }
        assert_eq!(RolloutState::RolledBack.as_str(), "rolled-back");
    }

    #[test]
    fn deleted_apps_keep_their_history() {
        let path = temp_db("deleted");
        let store = Store::open(&path).unwrap();
        let spec = serde_json::json!({"name": "a"});
        store
            .record_revision(&new_revision("a", &spec, "d1"), |n| format!("a-{n}"))
            .unwrap();
        store.delete_app("a").unwrap();
        assert!(store.app("a").unwrap().is_none());
        assert!(store.apps().unwrap().is_empty());
        assert!(store.app_including_deleted("a").unwrap().is_some());
        assert_eq!(store.rollouts("a").unwrap().len(), 1);
        assert_eq!(store.revisions("a").unwrap()[0].state, RevisionState::Retained);
        store.upsert_app("a", &spec).unwrap();
        assert!(store.app("a").unwrap().is_some(), "a new spec brings it back");
    }
}
