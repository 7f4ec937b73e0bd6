//! Loading strategy and hook components: validation, digests, compilation off the async
//! threads, and the precompiled-artifact cache.
//!
//! **Invariant:** precompiled bytes are only ever produced here, from a component we compiled
//! ourselves, and read back from our own cache directory; they are never accepted from users.
//!
//! **Invariant:** each digest is compiled at most once per process, however many deploys ask
//! for it at the same moment (single flight), and one component compiles at a time: compiling
//! already uses every core, and a second would only double the memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, ComponentExportIndex};

use crate::bindings::{self, API_PACKAGE, API_VERSION};
use crate::engine::WasmEngine;
use crate::guest::{GuestState, Linkers};

/// Largest component accepted (Python and JavaScript guests are ~20 MB).
pub const MAX_MODULE_BYTES: usize = 64 << 20;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
}

/// Which world a component targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Strategy,
    Hook,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Strategy => "strategy",
            World::Hook => "hook",
        })
    }
}

/// Why a module could not be loaded. Every message says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Larger than [`MAX_MODULE_BYTES`].
    #[error("the module is {size} bytes, over the {limit}-byte limit; strip debug info or build with opt-level \"s\"")]
    TooLarge { size: usize, limit: usize },
    /// Not a WebAssembly binary at all.
    #[error(
        "the module is not WebAssembly (it does not start with the \\0asm magic); upload the .wasm component your build produced"
    )]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "the module is a core WebAssembly module, not a component; build for the wasm32-wasip2 target (or run `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component failed to compile.
    #[error("the component is invalid: {0}")]
    Invalid(String),
    /// The component exports neither world, or not the expected one.
    #[error("{0}")]
    WrongWorld(String),
    /// The component targets a newer host API than this runner implements.
    #[error("the module targets {package}@{version}, but this runner implements {API_PACKAGE}@{}.{}.{} at most; upgrade the runner", API_VERSION.0, API_VERSION.1, API_VERSION.2)]
    TooNew { package: String, version: String },
    /// The component imports something the host does not provide.
    #[error("the component needs imports this runner does not provide: {0}")]
    Unlinkable(String),
    /// No built-in strategy by that name.
    #[error("there is no built-in strategy {0:?}; the built-ins are {names}", names = builtin_names().join(", "))]
    UnknownBuiltin(String),
    /// The module file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// A compiled component, ready to instantiate many times.
#[derive(Clone)]
pub struct LoadedModule {
    /// What the user calls it: `builtin:rolling`, a file name, or an uploaded name.
    pub name: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub world: World,
    /// The host API version the module was built against, e.g. `0.1.0`.
    pub api_version: String,
    pub(crate) pre: Arc<ModulePre>,
}

impl LoadedModule {
    /// Whether the module checks its parameters when a spec is submitted (it exports
    /// `params-check`, from host API 0.2.0 on).
    pub fn checks_params(&self) -> bool {
        matches!(
            self.pre.as_ref(),
            ModulePre::Strategy {
                params_check: Some(_),
                ..
            }
        )
    }
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("world", &self.world)
            .field("api_version", &self.api_version)
            .finish()
    }
}

/// Type-checked, import-resolved instantiation recipes, one per world and minor version of
/// the host API.
pub(crate) enum ModulePre {
    Strategy {
        pre: bindings::strategy::StrategyPre<GuestState>,
        /// `params-check.validate`, when the module exports it.
        params_check: Option<ComponentExportIndex>,
    },
    Hook(bindings::hook::HookPre<GuestState>),
    StrategyV0_1(bindings::v0_1::strategy::StrategyPre<GuestState>),
    HookV0_1(bindings::v0_1::hook::HookPre<GuestState>),
}

impl ModulePre {
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        match self {
            ModulePre::Strategy { pre, .. } => pre.engine(),
            ModulePre::Hook(pre) => pre.engine(),
            ModulePre::StrategyV0_1(pre) => pre.engine(),
            ModulePre::HookV0_1(pre) => pre.engine(),
        }
    }
}

/// Loads components and keeps their precompiled artifacts in a cache directory.
#[derive(Clone)]
pub struct ModuleLoader {
    engine: WasmEngine,
    linkers: Arc<Linkers>,
    cache_dir: Option<PathBuf>,
    /// The most the cache directory may hold; the least recently used artifacts go first.
    cache_limit: u64,
    /// Every module loaded, by digest; a cell being filled makes later askers wait for it.
    loaded: Arc<Mutex<HashMap<String, Arc<tokio::sync::OnceCell<LoadedModule>>>>>,
    compiling: Arc<tokio::sync::Semaphore>,
    /// Uploads are validated one at a time too: each holds its whole component in memory.
    validating: Arc<tokio::sync::Semaphore>,
    stats: Arc<LoadStats>,
}

/// How modules were loaded since the process started.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Compiled from the component (`Component::new`).
    pub compiled: AtomicU64,
    /// Read back from the precompiled cache.
    pub from_cache: AtomicU64,
}

impl ModuleLoader {
    /// `cache_dir` holds precompiled artifacts keyed by digest and engine; `None` compiles
    /// every time.
    pub fn new(engine: WasmEngine, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let linkers = crate::guest::linkers(engine.engine())?;
        if let Some(dir) = &cache_dir {
            use std::os::unix::fs::DirBuilderExt;
            // Precompiled code is as sensitive as the modules it came from: owner only.
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        Ok(ModuleLoader {
            engine,
            linkers: Arc::new(linkers),
            cache_dir,
            cache_limit: DEFAULT_CACHE_LIMIT,
            loaded: Arc::default(),
            compiling: Arc::new(tokio::sync::Semaphore::new(1)),
            validating: Arc::new(tokio::sync::Semaphore::new(1)),
            stats: Arc::default(),
        })
    }

    /// Bounds the cache directory to `bytes` (default [`DEFAULT_CACHE_LIMIT`]).
    pub fn with_cache_limit(mut self, bytes: u64) -> Self {
        self.cache_limit = bytes;
        self
    }

    /// [`inspect`] of the component in the file at `path`, one file at a time.
    pub async fn inspect_file(&self, path: PathBuf) -> Result<(World, String), LoadError> {
        let _one_at_a_time = self.validating.acquire().await.expect("the semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|source| LoadError::Read { path, source })?;
            inspect(&bytes)
        })
        .await
        .map_err(|e| LoadError::Invalid(format!("the validating thread failed: {e}")))?
    }

    /// Whether the component `digest` is compiled and loaded in this process.
    pub fn is_loaded(&self, digest: &str) -> bool {
        self.loaded
            .lock()
            .unwrap()
            .get(digest)
            .is_some_and(|cell| cell.initialized())
    }

    /// How many modules were compiled and how many read from the cache.
    pub fn stats(&self) -> &LoadStats {
        &self.stats
    }

    pub fn engine(&self) -> &WasmEngine {
        &self.engine
    }

    /// The default cache directory: `$XDG_CACHE_HOME/slipway/modules` or `~/.cache/…`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("slipway").join("modules"))
    }

    /// Resolves `builtin:NAME` or a path to a `.wasm` file.
    pub async fn load_reference(&self, reference: &str) -> Result<LoadedModule, LoadError> {
        if let Some(name) = reference.strip_prefix("builtin:") {
            return self.load_builtin(name).await;
        }
        let path = Path::new(reference);
        let bytes = tokio::fs::read(path).await.map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load(reference, bytes).await
    }

    /// Loads one of the strategies embedded in this binary.
    pub async fn load_builtin(&self, name: &str) -> Result<LoadedModule, LoadError> {
        let bytes = builtin::BUILTINS
            .iter()
            .find(|(builtin, _)| *builtin == name)
            .map(|(_, bytes)| *bytes)
            .ok_or_else(|| LoadError::UnknownBuiltin(name.to_string()))?;
        self.load(&format!("builtin:{name}"), bytes.to_vec()).await
    }

    /// Validates, compiles (or loads from the cache) and links a component.
    pub async fn load(&self, name: &str, bytes: Vec<u8>) -> Result<LoadedModule, LoadError> {
        check_header(&bytes)?;
        let digest = digest(&bytes);
        self.load_once(name, digest, move || Ok(bytes)).await
    }

    /// Like [`ModuleLoader::load`] for a component in a file whose digest is already known
    /// (an upload, a stored module): the file is read only if that digest is not loaded yet.
    pub async fn load_file(&self, name: &str, digest: &str, path: PathBuf) -> Result<LoadedModule, LoadError> {
        self.load_once(name, digest.to_string(), move || {
            let bytes = std::fs::read(&path).map_err(|source| LoadError::Read { path, source })?;
            check_header(&bytes)?;
            Ok(bytes)
        })
        .await
    }

    /// Loads `digest` once: the first caller reads and compiles it, callers meanwhile wait
    /// for that, later ones get it at once. A failure is not kept; the next caller tries again.
    async fn load_once(
        &self,
        name: &str,
        digest: String,
        bytes: impl FnOnce() -> Result<Vec<u8>, LoadError> + Send + 'static,
    ) -> Result<LoadedModule, LoadError> {
        let cell = self.loaded.lock().unwrap().entry(digest.clone()).or_default().clone();
        let module = cell
            .get_or_try_init(|| async {
                let _one_at_a_time = self.compiling.acquire().await.expect("the semaphore is never closed");
                let this = self.clone();
                tokio::task::spawn_blocking(move || {
                    let bytes = bytes()?;
                    if self::digest(&bytes) != digest {
                        return Err(LoadError::Invalid(format!(
                            "the stored module does not match its digest {digest}; upload it again"
                        )));
                    }
                    this.load_blocking(digest, bytes)
                })
                .await
                .map_err(|e| LoadError::Invalid(format!("the compiler thread failed: {e}")))?
            })
            .await?;
        let mut module = module.clone();
        module.name = name.to_string();
        Ok(module)
    }

    fn load_blocking(&self, digest: String, bytes: Vec<u8>) -> Result<LoadedModule, LoadError> {
        let component = self.compile_cached(&digest, &bytes)?;
        let (world, api_version) = world_of(&component, self.engine.engine())?;
        let linker = match world {
            World::Strategy => &self.linkers.strategy,
            World::Hook => &self.linkers.hook,
        };
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Unlinkable(format!("{e:#}")))?;
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld(format!("{e:#}"));
        let pre = match (world, api_version.starts_with("0.1.")) {
            (World::Strategy, false) => ModulePre::Strategy {
                params_check: params_check(&component),
                pre: bindings::strategy::StrategyPre::new(pre).map_err(wrong)?,
            },
            (World::Hook, false) => ModulePre::Hook(bindings::hook::HookPre::new(pre).map_err(wrong)?),
            (World::Strategy, true) => {
                ModulePre::StrategyV0_1(bindings::v0_1::strategy::StrategyPre::new(pre).map_err(wrong)?)
            }
            (World::Hook, true) => ModulePre::HookV0_1(bindings::v0_1::hook::HookPre::new(pre).map_err(wrong)?),
        };
        Ok(LoadedModule {
            name: String::new(),
            digest,
            world,
            api_version,
            pre: Arc::new(pre),
        })
    }

    fn compile_cached(&self, digest: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        let engine = self.engine.engine();
        let cached = self.cache_dir.as_ref().map(|dir| {
            let hex = digest.trim_start_matches("sha256:");
            dir.join(format!("{hex}-{}.cwasm", self.engine.compatibility_key()))
        });
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the file is in our own cache directory, named by the digest of the
            // source component and the engine's compatibility key, and was written by
            // `Component::serialize` below. Users can never place bytes there. A stale or
            // damaged file fails to deserialize and is recompiled.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(component) => {
                    self.stats.from_cache.fetch_add(1, Ordering::Relaxed);
                    // Used now: the last to be evicted.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    return Ok(component);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "discarding unusable precompiled module")
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        if let Some(path) = &cached {
            match write_atomically(path, &component) {
                Ok(()) => evict(path, self.cache_limit),
                Err(error) => tracing::warn!(path = %path.display(), %error, "could not cache the precompiled module"),
            }
        }
        Ok(component)
    }
}

/// The default bound of the precompiled-module cache: room for about a hundred Python or
/// JavaScript components (≈ 35 MB each precompiled) or thousands of Rust ones.
pub const DEFAULT_CACHE_LIMIT: u64 = 4 << 30;

/// Removes the least recently used artifacts of `kept`'s cache directory until it holds at
/// most `limit` bytes; `kept`, just written, stays whatever its size.
fn evict(kept: &Path, limit: u64) {
    let Some(dir) = kept.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut artifacts: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = artifacts.iter().map(|(_, size, _)| size).sum();
    artifacts.sort();
    for (_, size, path) in artifacts {
        if total <= limit {
            break;
        }
        if path == kept {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= size;
                tracing::debug!(path = %path.display(), "evicted from the module cache");
            }
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot evict from the module cache"),
        }
    }
}

fn write_atomically(path: &Path, component: &Component) -> anyhow::Result<()> {
    crate::files::replace_private(path, &component.serialize()?)?;
    Ok(())
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The names the built-in strategies answer to under `builtin:`.
pub fn builtin_names() -> Vec<&'static str> {
    builtin::BUILTINS.iter().map(|(name, _)| *name).collect()
}

/// Cheap checks before compiling: size, magic, component layer.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(LoadError::TooLarge {
            size: bytes.len(),
            limit: MAX_MODULE_BYTES,
        });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    // Bytes 4..8 are the version and layer: core modules are layer 0, components layer 1.
    if bytes[6..8] == [0, 0] {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// `params-check.validate`, if the component exports it.
fn params_check(component: &Component) -> Option<ComponentExportIndex> {
    let interface = component.get_export_index(None, bindings::PARAMS_CHECK)?;
    component.get_export_index(Some(&interface), "validate")
}

/// Finds which of our worlds the component exports and the API version it was built
/// against, and refuses ones built for a newer API.
fn world_of(component: &Component, engine: &wasmtime::Engine) -> Result<(World, String), LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    world_from_exports(&exports)
}

/// Validates a component without compiling it and says what it is: its world and host API
/// version, from its exports (as [`ModuleLoader::load`] will find them). An upload answers
/// once this holds; compiling (and linking) follows.
pub fn inspect(bytes: &[u8]) -> Result<(World, String), LoadError> {
    check_header(bytes)?;
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Invalid(e.to_string());
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .map_err(invalid)?;
    let mut exports = Vec::new();
    // Nested modules and components have exports of their own: only the outer ones count.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.map_err(invalid)?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    world_from_exports(&exports)
}

fn world_from_exports(exports: &[String]) -> Result<(World, String), LoadError> {
    let mut found = None;
    for export in exports {
        let Some((package_interface, version)) = export.split_once('@') else {
            continue;
        };
        let Some((package, interface)) = package_interface.split_once('/') else {
            continue;
        };
        if package != API_PACKAGE {
            continue;
        }
        let world = match interface {
            "strategy-handler" => World::Strategy,
            "hook-handler" => World::Hook,
            _ => continue,
        };
        if is_newer(version) {
            return Err(LoadError::TooNew {
                package: package.to_string(),
                version: version.to_string(),
            });
        }
        if !is_served(version) {
            return Err(LoadError::Unlinkable(format!(
                "the module targets {package}@{version}, which no released runner served; build it against a released version in sdk/wit/released"
            )));
        }
        found = Some((world, version.to_string()));
    }
    found.ok_or_else(|| {
        let shown = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        LoadError::WrongWorld(format!(
            "the component exports {shown}, but a Slipway module must export \
             {API_PACKAGE}/strategy-handler (world `strategy`) or {API_PACKAGE}/hook-handler \
             (world `hook`); build it against sdk/wit with one of those worlds"
        ))
    })
}

/// Whether `version` (of our package) is newer than the API this runner implements: such a
/// module may import functions this runner does not have.
fn is_newer(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(u64::MAX));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next()) > API_VERSION
}

/// Whether this runner serves `version`: the current minor version or 0.1, whose frozen
/// bindings it keeps.
fn is_served(version: &str) -> bool {
    version.starts_with("0.1.") || version.starts_with(&format!("{}.{}.", API_VERSION.0, API_VERSION.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_say_what_the_bytes_are() {
        assert!(matches!(check_header(b"hello world"), Err(LoadError::NotWasm)));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule)));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
        let big = vec![0u8; MAX_MODULE_BYTES + 1];
        assert!(matches!(check_header(&big), Err(LoadError::TooLarge { .. })));
    }

    fn scratch(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("slipway-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used_down_to_its_bound() {
        let dir = scratch("evict");
        let ago = |seconds| std::time::SystemTime::now() - std::time::Duration::from_secs(seconds);
        for (name, used) in [("a", 30), ("b", 10), ("c", 20), ("new", 40)] {
            let path = dir.join(format!("{name}.cwasm"));
            std::fs::write(&path, [0u8; 100]).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(ago(used))
                .unwrap();
        }
        std::fs::write(dir.join("notes.txt"), [0u8; 1000]).unwrap();
        // 400 bytes of artifacts, room for 250: a (oldest but for the one just written) and
        // c go; the one just written stays however old its time says it is.
        evict(&dir.join("new.cwasm"), 250);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b.cwasm", "new.cwasm", "notes.txt"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_cache_hit_marks_the_artifact_used() {
        let dir = scratch("cache-hit");
        let fresh = || ModuleLoader::new(WasmEngine::new().unwrap(), Some(dir.clone())).unwrap();
        fresh().load_builtin("rolling").await.unwrap();
        let artifact = std::fs::read_dir(&dir).unwrap().flatten().next().unwrap().path();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&artifact)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let loader = fresh();
        loader.load_builtin("rolling").await.unwrap();
        assert_eq!(loader.stats().from_cache.load(Ordering::Relaxed), 1);
        let used = std::fs::metadata(&artifact).unwrap().modified().unwrap();
        assert!(used > old + std::time::Duration::from_secs(3000));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn newer_versions_are_refused() {
        assert!(!is_newer("0.1.0"));
        assert!(!is_newer("0.1.1"));
        assert!(!is_newer("0.2.0"));
        assert!(is_newer("0.2.1"));
        assert!(is_newer("0.3.0"));
        assert!(is_newer("1.0.0"));
        assert!(is_served("0.1.0") && is_served("0.1.1") && is_served("0.2.0"));
        assert!(!is_served("0.0.9"));
    }
}
