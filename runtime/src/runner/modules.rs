//! Module uploads, and resolving the module references in a spec.
//!
//! **Invariant:** an upload never sits in memory whole while it arrives. Its bytes go to a
//! private file in the data directory as they arrive, hashed on the way; the validator and
//! the compiler (one at a time each, see [`crate::modules::ModuleLoader`]) read it from
//! there. So any number of uploads in parallel cost a chunk each, and only the one being
//! validated and the one being compiled cost more.

use crate::driver::compute::instances::Workload;
use std::path::PathBuf;

use cap_std::fs::OpenOptionsExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::{DeployError, Runner};
use crate::hooks::{ExecEnv, Grants, Hook, WasmHooks};
use crate::modules::{LoadError, LoadedModule, MAX_MODULE_BYTES, World};
use crate::spec::{self, ModuleRef, Spec};
use crate::store::ModuleRow;

/// A module upload being received. Dropping it unfinished deletes what was written.
pub struct Upload {
    name: String,
    file: tokio::fs::File,
    temp: String,
    hasher: Sha256,
    size: usize,
    uploads_dir: cap_std::fs::Dir,
    done: bool,
}

impl Upload {
    /// Appends a chunk; refuses the upload once it passes the size limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), DeployError> {
        self.size += chunk.len();
        if self.size > MAX_MODULE_BYTES {
            return Err(DeployError::TooLarge(
                LoadError::TooLarge {
                    size: self.size,
                    limit: MAX_MODULE_BYTES,
                }
                .to_string(),
            ));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| anyhow::anyhow!("writing an upload: {e}"))?;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            // Nothing to do if it is gone already.
            let _ = self.uploads_dir.remove_file(&self.temp);
        }
    }
}

impl Runner {
    /// Starts receiving a module upload under `name` (checked first).
    pub async fn begin_upload(&self, name: &str) -> Result<Upload, DeployError> {
        spec::check_module_name(name).map_err(DeployError::BadModuleName)?;
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let temp = format!("{name}.{}.{n}.part", std::process::id());
        let mut options = cap_std::fs::OpenOptions::new();
        options.write(true).create_new(true).mode(0o600);
        let file = self
            .uploads_dir
            .open_with(&temp, &options)
            .map_err(|e| anyhow::anyhow!("creating an upload file: {e}"))?;
        Ok(Upload {
            name: name.to_string(),
            file: tokio::fs::File::from_std(file.into_std()),
            temp,
            hasher: Sha256::new(),
            size: 0,
            uploads_dir: self
                .uploads_dir
                .try_clone()
                .map_err(|e| anyhow::anyhow!("opening the uploads directory: {e}"))?,
            done: false,
        })
    }

    /// Validates a received upload, keeps it under its digest, records it and compiles it:
    /// the answer waits for the compiler only as long as [`UPLOAD_COMPILE_WAIT`] (a Rust
    /// component takes milliseconds, and one that cannot be linked is refused as before);
    /// a larger one goes on compiling in the background, its state in the module list, and
    /// a deploy that needs it waits for it.
    pub async fn finish_upload(&self, mut upload: Upload) -> Result<ModuleRow, DeployError> {
        upload
            .file
            .flush()
            .await
            .map_err(|e| anyhow::anyhow!("writing an upload: {e}"))?;
        let digest = format!("sha256:{}", hex::encode(upload.hasher.clone().finalize()));
        let path = self.data_dir.join("uploads").join(&upload.temp);
        let (world, api_version) = self
            .loader
            .inspect_file(path)
            .await
            .map_err(|e| DeployError::BadModule(e.to_string()))?;
        let file = module_file(&digest);
        self.uploads_dir
            .rename(&upload.temp, &self.modules_dir, &file)
            .map_err(|e| anyhow::anyhow!("keeping an upload: {e}"))?;
        upload.done = true;
        self.store.put_module(
            &upload.name,
            &digest,
            &world.to_string(),
            &api_version,
            upload.size as u64,
        )?;
        let row = self.store.module(&upload.name, Some(&digest))?.expect("just stored");

        let loader = self.loader.clone();
        let stored = self.data_dir.join("modules").join(&file);
        let (name, key) = (upload.name.clone(), digest.clone());
        let mut compiling = tokio::spawn(async move { loader.load_file(&name, &key, stored).await.map(|_| ()) });
        self.compiles.lock().unwrap().insert(digest.clone(), Compiling::Running);
        match tokio::time::timeout(UPLOAD_COMPILE_WAIT, &mut compiling).await {
            Ok(done) => {
                self.compiles.lock().unwrap().remove(&digest);
                let done = done.map_err(|e| anyhow::anyhow!("the compiler task failed: {e}"))?;
                if let Err(error) = done {
                    // Refused as a whole, as if it had never arrived.
                    if !self.store.delete_module(&row.name, &digest)? {
                        let _ = self.modules_dir.remove_file(&file);
                    }
                    return Err(DeployError::BadModule(error.to_string()));
                }
            }
            Err(_) => {
                let compiles = self.compiles.clone();
                tokio::spawn(async move {
                    let result = compiling.await;
                    let mut compiles = compiles.lock().unwrap();
                    match result {
                        Ok(Ok(())) => {
                            compiles.remove(&digest);
                        }
                        Ok(Err(error)) => {
                            compiles.insert(digest, Compiling::Failed(error.to_string()));
                        }
                        Err(error) => {
                            compiles.insert(digest, Compiling::Failed(format!("the compiler task failed: {error}")));
                        }
                    }
                });
            }
        }
        Ok(row)
    }

    /// Where compiling the component `digest` stands in this runner.
    pub fn compile_state(&self, digest: &str) -> (crate::protocol::CompileState, Option<String>) {
        use crate::protocol::CompileState;
        if self.loader.is_loaded(digest) {
            return (CompileState::Ready, None);
        }
        match self.compiles.lock().unwrap().get(digest) {
            Some(Compiling::Running) => (CompileState::Compiling, None),
            Some(Compiling::Failed(error)) => (CompileState::Failed, Some(error.clone())),
            None => (CompileState::OnDemand, None),
        }
    }

    /// The uploaded modules, each with the revisions that pin it and its compile state.
    pub fn list_modules(&self) -> Result<Vec<crate::protocol::ListedModule>, DeployError> {
        self.store.modules()?.into_iter().map(|m| self.listed(m)).collect()
    }

    /// `module` with the revisions that pin it and its compile state.
    pub fn listed(&self, module: ModuleRow) -> Result<crate::protocol::ListedModule, DeployError> {
        let pinned_by = self
            .store
            .module_pins(&module.name, &module.digest)?
            .into_iter()
            .map(|(app, revision)| crate::protocol::RevisionPin { app, revision })
            .collect();
        let (compile, compile_error) = self.compile_state(&module.digest);
        Ok(crate::protocol::ListedModule {
            module,
            pinned_by,
            compile,
            compile_error,
        })
    }

    /// Deletes the uploads of `name` (every one, or the one with `digest`) and their
    /// components, unless a revision an app keeps uses one: then nothing is deleted.
    pub async fn delete_module(&self, name: &str, digest: Option<&str>) -> Result<Vec<ModuleRow>, DeployError> {
        let shown = match digest {
            Some(digest) => format!("{name}@{digest}"),
            None => name.to_string(),
        };
        let _alone = self.module_use.write().await;
        let rows: Vec<ModuleRow> = self
            .store
            .modules()?
            .into_iter()
            .filter(|m| m.name == name && digest.is_none_or(|d| m.digest == d))
            .collect();
        if rows.is_empty() {
            return Err(DeployError::NoSuchModule(format!(
                "there is no uploaded module {shown}; `slipway module list` shows them"
            )));
        }
        let mut pins = Vec::new();
        for row in &rows {
            for (app, revision) in self.store.module_pins(&row.name, &row.digest)? {
                pins.push(format!(
                    "{app} revision {revision} ({}@{})",
                    row.name,
                    short(&row.digest)
                ));
            }
        }
        if !pins.is_empty() {
            return Err(DeployError::ModulePinned(format!(
                "module {shown} is in use by {}: a revision an app keeps can be rolled back to, so its module stays; deploy those apps with another module and let their history pass those revisions (or delete the apps) first",
                pins.join(", ")
            )));
        }
        for row in &rows {
            if !self.store.delete_module(&row.name, &row.digest)? {
                match self.modules_dir.remove_file(module_file(&row.digest)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(module = %row.name, digest = %row.digest, error = %e, "cannot remove a deleted module's file");
                    }
                    _ => {}
                }
            }
        }
        Ok(rows)
    }

    /// Removes uploads a previous runner left half-received.
    pub(super) fn clear_uploads(&self) {
        let Ok(entries) = self.uploads_dir.entries() else {
            return;
        };
        for entry in entries.flatten() {
            // A file that cannot be removed now is retried at the next start.
            let _ = self.uploads_dir.remove_file(entry.file_name());
        }
    }

    /// Finds a module by reference and checks it targets `world`.
    pub async fn resolve(&self, reference: &str, world: World) -> Result<LoadedModule, DeployError> {
        let parsed = spec::module_ref(reference).map_err(|e| DeployError::InvalidSpec(e.to_string()))?;
        let module = match parsed {
            ModuleRef::Builtin(name) => self.loader.load_builtin(&name).await.map_err(|e| match e {
                LoadError::UnknownBuiltin(_) => DeployError::UnknownModule(e.to_string()),
                other => DeployError::BadModule(other.to_string()),
            })?,
            ModuleRef::Named(name) => self.load_stored(&name, None).await?,
            ModuleRef::Pinned { name, digest } => self.load_stored(&name, Some(&digest)).await?,
        };
        if module.world != world {
            return Err(DeployError::BadModule(format!(
                "module {reference} is a {} component, but a {world} is needed here",
                module.world
            )));
        }
        Ok(module)
    }

    /// Loads `name` at exactly `digest`, as a revision recorded it.
    pub(super) async fn resolve_pinned(
        &self,
        name: &str,
        digest: &str,
        world: World,
    ) -> Result<LoadedModule, DeployError> {
        let module = match name.strip_prefix("builtin:") {
            Some(_) => self.resolve(name, world).await?,
            None => self.resolve(&format!("{name}@{digest}"), world).await?,
        };
        if module.digest != digest {
            return Err(DeployError::BadModule(format!(
                "{name} is now {} but the revision recorded {digest}: this runner's built-in changed since; deploy the spec again to use the current one",
                module.digest
            )));
        }
        Ok(module)
    }

    /// Resolves the spec's hooks; `pinned` holds the digests a revision recorded.
    pub(super) async fn resolve_hooks(
        &self,
        spec: &Spec,
        pinned: Option<&serde_json::Value>,
    ) -> Result<WasmHooks, DeployError> {
        let mut hooks = WasmHooks::default();
        for (point, hook) in spec.hooks.iter() {
            let module = match pinned.and_then(|p| p[point]["digest"].as_str()) {
                Some(digest) => self.resolve_pinned(&hook.module, digest, World::Hook).await?,
                None => self.resolve(&hook.module, World::Hook).await?,
            };
            let mut grants = Grants::default();
            for text in &hook.grants {
                match spec::grant(text).map_err(|e| DeployError::InvalidSpec(format!("hooks.{point}.grants: {e}")))? {
                    spec::Grant::Exec => {
                        let workload = super::workload(spec);
                        let (env, secret_env) = workload.env();
                        grants.exec = Some(ExecEnv {
                            env: env.clone(),
                            secret_env: secret_env.clone(),
                            workdir: match &workload {
                                Workload::Process(process) => process.workdir.clone(),
                                Workload::Container(_) => None,
                            },
                        })
                    }
                    spec::Grant::Http { host } => grants.http_hosts.push(host),
                }
            }
            let params = serde_json::Value::Object(hook.params.clone()).to_string();
            hooks.hooks.insert(
                point,
                Hook {
                    module,
                    params,
                    timeout: hook.timeout,
                    policy: hook.policy.into(),
                    grants,
                },
            );
        }
        Ok(hooks)
    }

    async fn load_stored(&self, name: &str, digest: Option<&str>) -> Result<LoadedModule, DeployError> {
        let row = self.store.module(name, digest)?.ok_or_else(|| {
            DeployError::UnknownModule(match digest {
                Some(d) => format!("no module {name}@{d} has been uploaded; upload it with `slipway module push FILE --name {name}`"),
                None => format!("no module named {name:?} has been uploaded; upload it with `slipway module push FILE --name {name}` or use builtin:rolling"),
            })
        })?;
        let path: PathBuf = self.data_dir.join("modules").join(module_file(&row.digest));
        self.loader
            .load_file(name, &row.digest, path)
            .await
            .map_err(|e| DeployError::BadModule(e.to_string()))
    }
}

/// Where a module with `digest` is kept in the modules directory.
/// How long an upload's answer waits for its compiling; longer, it goes on in the
/// background.
pub const UPLOAD_COMPILE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A background compile of an upload.
#[derive(Clone, Debug)]
pub enum Compiling {
    Running,
    Failed(String),
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

fn module_file(digest: &str) -> String {
    format!("{}.wasm", digest.trim_start_matches("sha256:"))
}

impl WasmHooks {
    /// `{ point: { module, digest } }` for the revision record.
    pub(super) fn digests(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .hooks
            .iter()
            .map(|(point, hook)| {
                (
                    (*point).to_string(),
                    serde_json::json!({ "module": hook.module.name, "digest": hook.module.digest }),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }
}
