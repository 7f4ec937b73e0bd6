//! The runner's state in SQLite (WAL): apps, revisions, rollouts, their events, and modules.
//!
//! **Invariant:** every state change that matters after a crash is written here before it is
//! acted on or acknowledged; nothing else persists state.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::events::Event;

/// Revision states (the Webscale lifecycle).
pub mod state {
    pub const CREATING: &str = "creating";
    pub const VERIFYING: &str = "verifying";
    pub const RUNNING: &str = "running";
    pub const KEEPING: &str = "keeping";
    pub const DESTROYING: &str = "destroying";
    pub const RETAINED: &str = "retained";
    pub const FAILED: &str = "failed";
}

/// Rollout states.
pub mod rollout_state {
    pub const RUNNING: &str = "running";
    pub const SUCCEEDED: &str = "succeeded";
    pub const ROLLED_BACK: &str = "rolled-back";
    pub const FAILED: &str = "failed";
    pub const ABORTED: &str = "aborted";
}

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
    pub created_at: u64,
    pub updated_at: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RevisionRow {
    pub app: String,
    pub number: u32,
    pub state: String,
    pub spec: serde_json::Value,
    pub spec_digest: String,
    pub strategy: String,
    pub strategy_digest: String,
    pub hooks: serde_json::Value,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RolloutRow {
    pub id: String,
    pub app: String,
    pub target: u32,
    pub from: Option<u32>,
    pub kind: String,
    pub state: String,
    pub summary: Option<String>,
    pub failure: Option<serde_json::Value>,
    pub started_at: u64,
    pub finished_at: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModuleRow {
    pub name: String,
    pub digest: String,
    pub world: String,
    pub size: u64,
    pub uploaded_at: u64,
}

const SCHEMA: &str = "
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
";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> anyhow::Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&conn)?)
    }

    pub fn upsert_app(&self, name: &str, spec: &serde_json::Value) -> anyhow::Result<()> {
        let now = now_ms() as i64;
        self.with(|c| {
            c.execute(
                "INSERT INTO apps (name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                params![name, spec.to_string(), now],
            )
        })?;
        Ok(())
    }

    pub fn set_active(&self, app: &str, revision: Option<u32>) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE apps SET active_revision = ?2, updated_at = ?3 WHERE name = ?1",
                params![app, revision, now_ms() as i64],
            )
        })?;
        Ok(())
    }

    pub fn set_maintenance(&self, app: &str, on: bool) -> anyhow::Result<()> {
        self.with(|c| c.execute("UPDATE apps SET maintenance = ?2 WHERE name = ?1", params![app, on]))?;
        Ok(())
    }

    pub fn set_scale(&self, app: &str, replicas: Option<u32>) -> anyhow::Result<()> {
        self.with(|c| c.execute("UPDATE apps SET scale = ?2 WHERE name = ?1", params![app, replicas]))?;
        Ok(())
    }

    pub fn set_route(&self, app: &str, route: Option<&serde_json::Value>) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE apps SET route = ?2 WHERE name = ?1",
                params![app, route.map(|r| r.to_string())],
            )
        })?;
        Ok(())
    }

    /// Deletes a revision's record (its rollouts and their events stay, as history).
    pub fn delete_revision(&self, app: &str, number: u32) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM revisions WHERE app = ?1 AND number = ?2",
                params![app, number],
            )
        })?;
        Ok(())
    }

    pub fn apps(&self) -> anyhow::Result<Vec<AppRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, spec, active_revision, maintenance, scale, route, created_at, updated_at FROM apps ORDER BY name",
            )?;
            let rows = stmt.query_map([], app_row)?;
            rows.collect()
        })
    }

    pub fn app(&self, name: &str) -> anyhow::Result<Option<AppRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT name, spec, active_revision, maintenance, scale, route, created_at, updated_at FROM apps WHERE name = ?1",
                [name],
                app_row,
            )
            .optional()
        })
    }

    /// Records a new revision as `creating`, numbered one past the app's highest.
    pub fn create_revision(
        &self,
        app: &str,
        spec: &serde_json::Value,
        spec_digest: &str,
        strategy: &str,
        strategy_digest: &str,
        hooks: &serde_json::Value,
    ) -> anyhow::Result<u32> {
        let now = now_ms() as i64;
        self.with(|c| {
            let next: u32 = c.query_row("SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE app = ?1", [app], |r| r.get(0))?;
            c.execute(
                "INSERT INTO revisions (app, number, state, spec, spec_digest, strategy, strategy_digest, hooks, created_at, updated_at)
                 VALUES (?1, ?2, 'creating', ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![app, next, spec.to_string(), spec_digest, strategy, strategy_digest, hooks.to_string(), now],
            )?;
            Ok(next)
        })
    }

    pub fn set_revision_state(&self, app: &str, number: u32, state: &str, reason: Option<&str>) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE revisions SET state = ?3, reason = COALESCE(?4, reason), updated_at = ?5 WHERE app = ?1 AND number = ?2",
                params![app, number, state, reason, now_ms() as i64],
            )
        })?;
        Ok(())
    }

    pub fn revisions(&self, app: &str) -> anyhow::Result<Vec<RevisionRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT app, number, state, spec, spec_digest, strategy, strategy_digest, hooks, created_at, updated_at, reason
                 FROM revisions WHERE app = ?1 ORDER BY number",
            )?;
            let rows = stmt.query_map([app], revision_row)?;
            rows.collect()
        })
    }

    pub fn revision(&self, app: &str, number: u32) -> anyhow::Result<Option<RevisionRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT app, number, state, spec, spec_digest, strategy, strategy_digest, hooks, created_at, updated_at, reason
                 FROM revisions WHERE app = ?1 AND number = ?2",
                params![app, number],
                revision_row,
            )
            .optional()
        })
    }

    pub fn latest_revision(&self, app: &str) -> anyhow::Result<Option<RevisionRow>> {
        Ok(self.revisions(app)?.pop())
    }

    pub fn create_rollout(
        &self,
        id: &str,
        app: &str,
        target: u32,
        from: Option<u32>,
        kind: &str,
    ) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO rollouts (id, app, target, from_revision, kind, state, started_at) VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6)",
                params![id, app, target, from, kind, now_ms() as i64],
            )
        })?;
        Ok(())
    }

    pub fn finish_rollout(
        &self,
        id: &str,
        state: &str,
        summary: &str,
        failure: Option<&serde_json::Value>,
    ) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE rollouts SET state = ?2, summary = ?3, failure = ?4, finished_at = ?5 WHERE id = ?1",
                params![id, state, summary, failure.map(|f| f.to_string()), now_ms() as i64],
            )
        })?;
        Ok(())
    }

    pub fn rollout(&self, id: &str) -> anyhow::Result<Option<RolloutRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, app, target, from_revision, kind, state, summary, failure, started_at, finished_at FROM rollouts WHERE id = ?1",
                [id],
                rollout_row,
            )
            .optional()
        })
    }

    pub fn rollouts(&self, app: &str) -> anyhow::Result<Vec<RolloutRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, app, target, from_revision, kind, state, summary, failure, started_at, finished_at
                 FROM rollouts WHERE app = ?1 ORDER BY started_at, id",
            )?;
            let rows = stmt.query_map([app], rollout_row)?;
            rows.collect()
        })
    }

    /// Rollouts that were running when the runner stopped.
    pub fn unfinished_rollouts(&self) -> anyhow::Result<Vec<RolloutRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, app, target, from_revision, kind, state, summary, failure, started_at, finished_at
                 FROM rollouts WHERE state = 'running' ORDER BY started_at",
            )?;
            let rows = stmt.query_map([], rollout_row)?;
            rows.collect()
        })
    }

    /// Finished and running rollouts, counted by state.
    pub fn rollout_counts(&self) -> anyhow::Result<Vec<(String, u64)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT state, COUNT(*) FROM rollouts GROUP BY state ORDER BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect()
        })
    }

    pub fn append_event(&self, rollout: &str, seq: u64, event: &Event) -> anyhow::Result<()> {
        let json = serde_json::to_string(event)?;
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO events (rollout, seq, event) VALUES (?1, ?2, ?3)",
                params![rollout, seq as i64, json],
            )
        })?;
        Ok(())
    }

    pub fn events(&self, rollout: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT event FROM events WHERE rollout = ?1 ORDER BY seq")?;
            let rows = stmt.query_map([rollout], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map(|s| serde_json::from_str(&s).unwrap_or(serde_json::Value::Null)))
                .collect()
        })
    }

    pub fn put_module(&self, name: &str, digest: &str, world: &str, size: u64) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO modules (name, digest, world, size, uploaded_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(name, digest) DO UPDATE SET uploaded_at = excluded.uploaded_at",
                params![name, digest, world, size as i64, now_ms() as i64],
            )
        })?;
        Ok(())
    }

    pub fn modules(&self) -> anyhow::Result<Vec<ModuleRow>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT name, digest, world, size, uploaded_at FROM modules ORDER BY name, uploaded_at")?;
            let rows = stmt.query_map([], module_row)?;
            rows.collect()
        })
    }

    /// The newest upload under `name`, or the one with `digest` when given.
    pub fn module(&self, name: &str, digest: Option<&str>) -> anyhow::Result<Option<ModuleRow>> {
        self.with(|c| match digest {
            Some(digest) => c
                .query_row("SELECT name, digest, world, size, uploaded_at FROM modules WHERE name = ?1 AND digest = ?2", params![name, digest], module_row)
                .optional(),
            None => c
                .query_row(
                    "SELECT name, digest, world, size, uploaded_at FROM modules WHERE name = ?1 ORDER BY uploaded_at DESC, rowid DESC LIMIT 1",
                    [name],
                    module_row,
                )
                .optional(),
        })
    }
}

fn json_column(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

fn app_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppRow> {
    Ok(AppRow {
        name: r.get(0)?,
        spec: json_column(r.get(1)?),
        active_revision: r.get(2)?,
        maintenance: r.get(3)?,
        scale: r.get(4)?,
        route: r.get::<_, Option<String>>(5)?.map(json_column),
        created_at: r.get::<_, i64>(6)? as u64,
        updated_at: r.get::<_, i64>(7)? as u64,
    })
}

fn revision_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RevisionRow> {
    Ok(RevisionRow {
        app: r.get(0)?,
        number: r.get(1)?,
        state: r.get(2)?,
        spec: json_column(r.get(3)?),
        spec_digest: r.get(4)?,
        strategy: r.get(5)?,
        strategy_digest: r.get(6)?,
        hooks: json_column(r.get(7)?),
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
        failure: r.get::<_, Option<String>>(7)?.map(json_column),
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_number_per_app_and_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("slipway-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test.db");
        let _ = std::fs::remove_file(&path);
        {
            let store = Store::open(&path).unwrap();
            let spec = serde_json::json!({"name": "a"});
            store.upsert_app("a", &spec).unwrap();
            store.upsert_app("b", &spec).unwrap();
            assert_eq!(
                store
                    .create_revision("a", &spec, "d1", "builtin:rolling", "s", &serde_json::json!({}))
                    .unwrap(),
                1
            );
            assert_eq!(
                store
                    .create_revision("a", &spec, "d2", "builtin:rolling", "s", &serde_json::json!({}))
                    .unwrap(),
                2
            );
            assert_eq!(
                store
                    .create_revision("b", &spec, "d1", "builtin:rolling", "s", &serde_json::json!({}))
                    .unwrap(),
                1
            );
            store.set_revision_state("a", 1, state::RUNNING, None).unwrap();
            store.create_rollout("r1", "a", 2, Some(1), "deploy").unwrap();
        }
        let store = Store::open(&path).unwrap();
        let revisions = store.revisions("a").unwrap();
        assert_eq!(
            revisions
                .iter()
                .map(|r| (r.number, r.state.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "running"), (2, "creating")]
        );
        assert_eq!(store.unfinished_rollouts().unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
