//! Published update objects that survive a restart: the content in a content-addressed
//! directory (`objects/<first two hex digits>/<SHA-256 hex>`, written atomically), the
//! metadata in the database. An object's content is checked against its SHA-256 the first
//! time it is served after a start; content that does not match is never served.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use outpost_server::{DatabaseConfig, ObjectStore, Storage, StoredObjects};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let storage = Storage::open(&DatabaseConfig::sqlite_in(dir.path()), "server-1").unwrap();
//! let objects = StoredObjects::open(dir.path().join("objects"), storage.clone(), &[]).unwrap();
//! let a = objects.publish("agent-update", "Agent 2.1", 21, b"new agent").await.unwrap();
//! assert_eq!(a.size, 9);
//!
//! // After a restart: the metadata from the database, the content from the directory.
//! let snapshot = storage.load().unwrap();
//! let objects = StoredObjects::open(dir.path().join("objects"), storage, &snapshot.updates).unwrap();
//! assert_eq!(&objects.read("agent-update", 4, 100).unwrap().0[..], b"agent");
//! # }
//! ```

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use bytes::Bytes;
use outpost_wire::messages::UpdateAnnouncement;

use crate::registry::{hex, unix};
use crate::{ObjectStore, Op, ServerError, Storage, UpdateObject};

/// The announcement devices get for a stored object.
pub fn announcement(u: &UpdateObject) -> UpdateAnnouncement {
    let sha: Vec<u8> = (0..u.sha256.len() / 2)
        .filter_map(|i| u8::from_str_radix(u.sha256.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    UpdateAnnouncement {
        object_id: u.id.clone(),
        name: u.name.clone(),
        version: u.version,
        size: u.size,
        sha256: Bytes::from(sha),
    }
}

struct Entry {
    meta: UpdateObject,
    /// The content was hashed since the start and matched.
    verified: bool,
}

/// Update objects in a directory, their metadata in the database.
pub struct StoredObjects {
    dir: PathBuf,
    storage: Storage,
    index: RwLock<HashMap<String, Entry>>,
}

impl StoredObjects {
    /// The store in `dir` (made if missing), knowing the objects `stored` (the snapshot's
    /// [`updates`](crate::Snapshot::updates)).
    pub fn open(
        dir: impl Into<PathBuf>,
        storage: Storage,
        stored: &[UpdateObject],
    ) -> Result<Self, ServerError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(ServerError::io("create", &dir))?;
        let index = stored
            .iter()
            .map(|u| {
                (
                    u.id.clone(),
                    Entry {
                        meta: u.clone(),
                        verified: false,
                    },
                )
            })
            .collect();
        Ok(StoredObjects {
            dir,
            storage,
            index: RwLock::new(index),
        })
    }

    fn path_of(&self, sha256_hex: &str) -> PathBuf {
        self.dir
            .join(sha256_hex.get(..2).unwrap_or("00"))
            .join(sha256_hex)
    }

    /// Stores `data` as `object_id` (replacing an earlier version): the content is on disk
    /// and the metadata committed before this returns. Returns its announcement.
    pub async fn publish(
        &self,
        object_id: &str,
        name: &str,
        version: u64,
        data: &[u8],
    ) -> Result<UpdateAnnouncement, ServerError> {
        crate::check_id("update object id", object_id)?;
        let mut staged = self.stage()?;
        let bytes = data.to_vec();
        // File writes and their flushes are blocking: off the async threads.
        let staged = tokio::task::spawn_blocking(move || {
            staged.write(&bytes)?;
            Ok::<_, ServerError>(staged)
        })
        .await
        .map_err(|e| {
            ServerError::io("stage an upload in", &self.dir)(std::io::Error::other(e))
        })??;
        self.publish_staged(staged, object_id, name, version).await
    }

    /// A new file to write an object's content into as it arrives (an upload, a copy), hashed
    /// on the way; [`publish_staged`](Self::publish_staged) makes it an object. Dropped
    /// unpublished, the file is removed.
    pub fn stage(&self) -> Result<Staged, ServerError> {
        let dir = self.dir.join(".staging");
        std::fs::create_dir_all(&dir).map_err(ServerError::io("create", &dir))?;
        let path = dir.join(crate::accounts::random_hex(12)?);
        let file = std::fs::File::create_new(&path).map_err(ServerError::io("create", &path))?;
        Ok(Staged {
            path,
            file: Some(file),
            hash: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            len: 0,
        })
    }

    /// Makes `staged` object `object_id` (replacing an earlier version): the content is
    /// flushed and in place, and the metadata committed, before this returns.
    pub async fn publish_staged(
        &self,
        mut staged: Staged,
        object_id: &str,
        name: &str,
        version: u64,
    ) -> Result<UpdateAnnouncement, ServerError> {
        crate::check_id("update object id", object_id)?;
        let (sha, size) = (hex(staged.hash.clone().finish().as_ref()), staged.len);
        let path = self.path_of(&sha);
        let target = path.clone();
        // Flushes and renames are blocking: off the async threads.
        tokio::task::spawn_blocking(move || staged.persist(&target))
            .await
            .map_err(|e| ServerError::io("publish", &path)(std::io::Error::other(e)))??;
        let meta = UpdateObject {
            id: object_id.into(),
            name: name.into(),
            version,
            size,
            sha256: sha,
            published_at_unix: unix(SystemTime::now()),
        };
        self.storage
            .commit(vec![Op::PutUpdateObject(meta.clone())])
            .await?;
        let a = announcement(&meta);
        self.index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                object_id.into(),
                Entry {
                    meta,
                    verified: true,
                },
            );
        Ok(a)
    }

    /// The objects known, by id.
    pub fn list(&self) -> Vec<UpdateObject> {
        let mut v: Vec<UpdateObject> = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| e.meta.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Hashes the content of `meta` and compares it with its recorded SHA-256.
    fn verify(path: &Path, meta: &UpdateObject) -> Result<(), String> {
        let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            len += n as u64;
            ctx.update(&buf[..n]);
        }
        let sha = hex(ctx.finish().as_ref());
        if sha != meta.sha256 || len != meta.size {
            return Err(format!(
                "content is {len} bytes with SHA-256 {sha}, the database records {} bytes with {}",
                meta.size, meta.sha256
            ));
        }
        Ok(())
    }
}

/// An object's content being written (see [`StoredObjects::stage`]).
pub struct Staged {
    path: PathBuf,
    file: Option<std::fs::File>,
    hash: aws_lc_rs::digest::Context,
    len: u64,
}

impl Staged {
    /// Appends `chunk` (blocking).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ServerError> {
        use std::io::Write;
        let path = &self.path;
        self.file
            .as_mut()
            .ok_or_else(|| {
                ServerError::io("publish", &path)(std::io::Error::other("already published"))
            })?
            .write_all(chunk)
            .map_err(ServerError::io("publish", &path))?;
        self.hash.update(chunk);
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes the content and renames it to `target` (blocking).
    fn persist(&mut self, target: &Path) -> Result<(), ServerError> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(ServerError::io("sync", &self.path))?;
        }
        let parent = target.parent().unwrap_or(target);
        std::fs::create_dir_all(parent).map_err(ServerError::io("create", parent))?;
        std::fs::rename(&self.path, target).map_err(ServerError::io("rename to", target))?;
        // The rename is durable once the directory is.
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(ServerError::io("sync", parent))?;
        self.path = target.to_path_buf();
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ObjectStore for StoredObjects {
    fn read(&self, object_id: &str, offset: u64, len: u32) -> Option<(Bytes, u64)> {
        let (meta, verified) = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            let e = index.get(object_id)?;
            (e.meta.clone(), e.verified)
        };
        let path = self.path_of(&meta.sha256);
        if !verified {
            if let Err(why) = Self::verify(&path, &meta) {
                tracing::error!(
                    object = %object_id,
                    path = %path.display(),
                    "{why}; not served"
                );
                return None;
            }
            if let Some(e) = self
                .index
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(object_id)
            {
                e.verified = true;
            }
        }
        let total = meta.size;
        let start = offset.min(total);
        let end = start.saturating_add(u64::from(len)).min(total);
        let mut buf = vec![0u8; (end - start) as usize];
        let read = std::fs::File::open(&path).and_then(|mut f| {
            f.seek(SeekFrom::Start(start))?;
            f.read_exact(&mut buf)
        });
        match read {
            Ok(()) => Some((Bytes::from(buf), total)),
            Err(e) => {
                tracing::error!(object = %object_id, path = %path.display(), "{e}");
                None
            }
        }
    }
}
