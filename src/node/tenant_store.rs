//! Where the tenants an operator created, changed or deleted through the admin API are kept,
//! so that the change reaches every node and outlives restarts: in the cluster's Redis when
//! the node is clustered (hash `sb:tenants`, every node told on `sb:tenant-changed`), else in
//! a state file beside the config (`server.state_file`), else, with neither, in memory until
//! the node stops.
//!
//! A single node keeps a plugin uploaded for a tenant that has no plugin file beside its state
//! file too (`NAME.state.plugins/TENANT.wasm`), and installs it again when it starts; a
//! cluster keeps it in Redis (see the backplane).
//!
//! A stored document wins over the config file: the TOML is the bootstrap, what the operator
//! did afterwards is the truth. A deleted tenant stays deleted (a `{"deleted": true}`
//! document) even though the config file still names it, until it is created again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cluster::Backplane;
use crate::config::TenantConfig;

/// A tenant's stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stored {
    /// Its settings.
    Tenant {
        /// The settings, as `PUT /admin/v1/tenants/{tenant}` took them.
        tenant: Box<TenantConfig>,
    },
    /// The operator deleted it.
    Deleted {
        /// Always true.
        deleted: bool,
    },
}

impl Stored {
    /// A document holding `config`.
    pub fn tenant(config: TenantConfig) -> Stored {
        Stored::Tenant {
            tenant: Box::new(config),
        }
    }

    /// The document of a deleted tenant.
    pub fn deleted() -> Stored {
        Stored::Deleted { deleted: true }
    }

    /// The document as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a tenant document serializes")
    }

    /// A document from JSON.
    pub fn from_json(text: &str) -> Result<Stored, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// The state file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    tenants: BTreeMap<String, Stored>,
}

/// Where this node keeps tenant documents.
#[derive(Debug)]
pub enum TenantStore {
    /// The cluster's Redis, shared by every node.
    Cluster(Arc<dyn Backplane>),
    /// A file of this node's; writes are serialized.
    File(PathBuf, tokio::sync::Mutex<()>),
    /// This process's memory.
    Memory(std::sync::Mutex<BTreeMap<String, Stored>>),
}

impl TenantStore {
    /// The store of a node on `cluster`, with `state_file` for a single node.
    pub fn new(cluster: &Arc<dyn Backplane>, state_file: Option<&PathBuf>) -> TenantStore {
        match state_file {
            _ if cluster.is_shared() => TenantStore::Cluster(cluster.clone()),
            Some(path) => TenantStore::File(path.clone(), tokio::sync::Mutex::new(())),
            None => TenantStore::Memory(Default::default()),
        }
    }

    /// Where documents go, for the admin API's answers.
    pub fn describe(&self) -> String {
        match self {
            TenantStore::Cluster(_) => "redis".into(),
            TenantStore::File(path, _) => format!("file {}", path.display()),
            TenantStore::Memory(_) => {
                "memory (this node only, until it stops: run it with a config file or set server.state_file)".into()
            }
        }
    }

    /// True when what is stored outlives this process.
    pub fn is_persistent(&self) -> bool {
        !matches!(self, TenantStore::Memory(_))
    }

    /// Where a single node keeps the plugin uploaded for `tenant` (no plugin file of its own).
    fn plugin_file(&self, tenant: &str) -> Option<PathBuf> {
        match self {
            TenantStore::File(path, _) => Some(
                path.with_extension("plugins")
                    .join(format!("{tenant}.wasm")),
            ),
            _ => None,
        }
    }

    /// Keeps the plugin uploaded for `tenant` (a single node with a state file); false when
    /// this store keeps no plugins.
    pub async fn save_plugin(&self, tenant: &str, wasm: &[u8]) -> Result<bool, String> {
        let Some(file) = self.plugin_file(tenant) else {
            return Ok(false);
        };
        let dir = file.parent().expect("a plugin file has a folder");
        let failed =
            |e: std::io::Error| format!("cannot keep the plugin at {}: {e}", file.display());
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(failed)?;
        let tmp = file.with_extension("wasm.writing");
        tokio::fs::write(&tmp, wasm).await.map_err(failed)?;
        tokio::fs::rename(&tmp, &file).await.map_err(failed)?;
        Ok(true)
    }

    /// Forgets the plugin kept for `tenant` (it was deleted).
    pub async fn forget_plugin(&self, tenant: &str) {
        if let Some(file) = self.plugin_file(tenant) {
            let _ = tokio::fs::remove_file(file).await;
        }
    }

    /// The plugins a single node keeps, by tenant.
    pub fn kept_plugins(&self) -> Vec<(String, PathBuf)> {
        let TenantStore::File(path, _) = self else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(path.with_extension("plugins")) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p.clone())))
            .collect()
    }

    /// Reads a state file at start; a single node applies it before it serves. A missing
    /// file is an empty one.
    pub fn load_file(&self) -> Result<BTreeMap<String, Stored>, String> {
        match self {
            TenantStore::File(path, _) => read_state(path).map(|s| s.tenants),
            _ => Ok(BTreeMap::new()),
        }
    }

    /// Every stored document, by tenant id.
    pub async fn load_all(&self) -> Result<BTreeMap<String, Stored>, String> {
        match self {
            TenantStore::Cluster(cluster) => {
                let mut all = BTreeMap::new();
                for (id, text) in cluster
                    .tenant_documents()
                    .await
                    .map_err(|e| e.to_string())?
                {
                    let stored = Stored::from_json(&text)
                        .map_err(|e| format!("the stored document of tenant '{id}': {e}"))?;
                    all.insert(id, stored);
                }
                Ok(all)
            }
            TenantStore::File(path, lock) => {
                let _held = lock.lock().await;
                read_state(path).map(|s| s.tenants)
            }
            TenantStore::Memory(all) => Ok(all.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        }
    }

    /// The stored document of tenant `id`, if there is one.
    pub async fn load(&self, id: &str) -> Result<Option<Stored>, String> {
        match self {
            TenantStore::Cluster(cluster) => match cluster
                .tenant_document(id)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(text) => Stored::from_json(&text)
                    .map(Some)
                    .map_err(|e| format!("the stored document of tenant '{id}': {e}")),
                None => Ok(None),
            },
            _ => Ok(self.load_all().await?.remove(id)),
        }
    }

    /// Stores the document of tenant `id` (in a cluster, every node is told).
    pub async fn save(&self, id: &str, stored: &Stored) -> Result<(), String> {
        match self {
            TenantStore::Cluster(cluster) => cluster
                .put_tenant_document(id, &stored.to_json())
                .await
                .map_err(|e| e.to_string()),
            TenantStore::File(path, lock) => {
                let _held = lock.lock().await;
                let mut state = read_state(path)?;
                state.tenants.insert(id.to_string(), stored.clone());
                write_state(path, &state).await
            }
            TenantStore::Memory(all) => {
                all.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.to_string(), stored.clone());
                Ok(())
            }
        }
    }
}

fn read_state(path: &std::path::Path) -> Result<StateFile, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| format!("the state file {} is not readable: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(format!(
            "cannot read the state file {}: {e}",
            path.display()
        )),
    }
}

/// Writes the state file whole, through a temporary file and a rename, so a crash leaves the
/// old file or the new one; only the node's user may read it (it holds API keys).
async fn write_state(path: &std::path::Path, state: &StateFile) -> Result<(), String> {
    let text = serde_json::to_string_pretty(state).expect("the state serializes");
    let tmp = path.with_extension("json.writing");
    let failed = |e: std::io::Error| format!("cannot write the state file {}: {e}", path.display());
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp).await.map_err(failed)?;
    tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes())
        .await
        .map_err(failed)?;
    file.sync_all().await.map_err(failed)?;
    drop(file);
    tokio::fs::rename(&tmp, path).await.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_read_back_as_written() {
        let mut config = TenantConfig::new("acme");
        config.api_keys = vec!["k".repeat(12)];
        for stored in [Stored::tenant(config), Stored::deleted()] {
            assert_eq!(Stored::from_json(&stored.to_json()).unwrap(), stored);
        }
        assert!(Stored::from_json(r#"{"deleted": true}"#).is_ok());
        assert!(Stored::from_json(r#"{"tenant": {"nope": 1}}"#).is_err());
    }

    #[tokio::test]
    async fn a_state_file_keeps_every_tenant_and_is_private() {
        let dir = std::env::temp_dir().join(format!("sb-state-{}", crate::util::random_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.state.json");
        let store = TenantStore::File(path.clone(), tokio::sync::Mutex::new(()));
        assert!(store.load_all().await.unwrap().is_empty());
        store
            .save("a", &Stored::tenant(TenantConfig::new("a")))
            .await
            .unwrap();
        store.save("b", &Stored::deleted()).await.unwrap();
        let all = store.load_file().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["b"], Stored::deleted());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        std::fs::write(&path, "{").unwrap();
        assert!(store.load_all().await.unwrap_err().contains("not readable"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
