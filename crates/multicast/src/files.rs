//! Files at both ends of a session: the sender's [`FileSource`] and manifest, the
//! receiver's [`Sink`] ([`FileSink`] writes a temporary file, resumes from it, and renames
//! it once the whole-file hash matches), and the unicast [`Fetcher`] for blocks a session
//! did not deliver.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use crate::error::{MulticastError, Result};
use crate::manifest::{FileHasher, Manifest, ManifestBuilder};
use crate::sender::BlockSource;

/// Reads blocks of a file for the sender.
pub struct FileSource {
    file: File,
    path: PathBuf,
}

impl FileSource {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<FileSource> {
        let file = File::open(path)
            .map_err(|e| MulticastError::io(format!("open {}", path.display()), e))?;
        Ok(FileSource {
            file,
            path: path.to_owned(),
        })
    }
}

impl BlockSource for FileSource {
    fn read_block(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_at(&mut self.file, offset, buf).map_err(|e| {
            MulticastError::io(
                format!(
                    "read {} bytes at {offset} of {}",
                    buf.len(),
                    self.path.display()
                ),
                e,
            )
        })
    }
}

/// Hashes `path` into a manifest for a session: the block hashes and the whole-file
/// SHA-256 on two threads at once (each reads the file), so the manifest is ready in the
/// time of the slower of the two.
pub fn manifest_for_file(
    path: &Path,
    session_id: u64,
    name: &str,
    symbol_size: u16,
    block_symbols: u32,
) -> Result<Manifest> {
    let mut b = ManifestBuilder::new(session_id, name, symbol_size, block_symbols)?;
    let block_bytes = b.block_bytes();
    let open =
        || File::open(path).map_err(|e| MulticastError::io(format!("open {}", path.display()), e));
    let (mut blocks_file, mut whole_file) = (open()?, open()?);
    let (blocks, file_hash) = std::thread::scope(|s| {
        let whole = s.spawn(move || {
            let mut h = FileHasher::default();
            let mut buf = vec![0u8; 1 << 20];
            for_each_piece(&mut whole_file, path, &mut buf, |p| h.update(p))?;
            Ok::<_, MulticastError>(h.finish())
        });
        let mut buf = vec![0u8; block_bytes];
        let blocks = for_each_piece(&mut blocks_file, path, &mut buf, |block| {
            b.push_block_hash_only(block)
        });
        let whole = whole.join().unwrap_or_else(|_| {
            Err(MulticastError::io(
                format!("hash {}", path.display()),
                std::io::Error::other("the hashing thread panicked"),
            ))
        });
        (blocks, whole)
    });
    blocks?;
    b.finish_with(file_hash?)
}

/// Reads `file` to its end in pieces of `buf.len()` bytes (the last may be shorter), handing
/// each to `f`.
fn for_each_piece(
    file: &mut File,
    path: &Path,
    buf: &mut [u8],
    mut f: impl FnMut(&[u8]),
) -> Result<()> {
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(MulticastError::io(format!("read {}", path.display()), e)),
            }
        }
        if filled > 0 {
            f(&buf[..filled]);
        }
        if filled < buf.len() {
            return Ok(());
        }
    }
}

/// Where a receiver puts the file.
pub trait Sink: Send {
    /// Prepares storage for `manifest`.
    fn begin(&mut self, manifest: &Manifest) -> Result<()>;
    /// Bytes already stored for block `block` from an earlier run, if any (resume).
    fn stored_block(&mut self, manifest: &Manifest, block: u32) -> Result<Option<Vec<u8>>>;
    /// Stores a verified block.
    fn write_block(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// SHA-256 of the stored file, once it is on disk.
    fn file_hash(&mut self) -> Result<[u8; 32]>;
    /// Makes the stored file final (after its hash matched).
    fn commit(&mut self) -> Result<()>;
}

/// The name of the partial file [`FileSink`] writes for `name` with whole-file SHA-256
/// `file_hash`: `<name>.<first 8 bytes of the hash, hex>.part`.
pub fn part_file_name(name: &str, file_hash: &[u8]) -> String {
    let n = file_hash.len().min(8);
    format!("{name}.{}.part", crate::manifest::hex(&file_hash[..n]))
}

/// Writes `DIR/<name>.<hash>.part` (`<hash>`: the first 8 bytes of the whole-file SHA-256,
/// in hex), then renames it to `DIR/<name>` once the whole-file hash matches. A restart, or
/// a later session of the same file from another sender (a standby distribution point that
/// took over), resumes from the verified blocks in the `.part` file; a `.part` file it has just
/// created is not scanned.
///
/// The end of a session waits for little: the whole-file hash is taken as blocks are
/// written in order ([`PrefixHash`]), and a thread flushes the file to disk every
/// [`FileSink::WRITEBACK_EVERY`] bytes written, so the sync before the rename has only the
/// last blocks left to write.
pub struct FileSink {
    dir: PathBuf,
    open: Option<OpenPart>,
    part: PathBuf,
    done: PathBuf,
    /// The `.part` file was created by this `begin`: nothing on it to resume.
    fresh: bool,
}

/// The `.part` file being written, with its running hash and writeback.
struct OpenPart {
    file: File,
    size: u64,
    hash: PrefixHash,
    writeback: Writeback,
}

impl FileSink {
    /// Bytes written between two background flushes of the `.part` file.
    pub const WRITEBACK_EVERY: u64 = 16 << 20;

    /// A sink writing into directory `dir`.
    pub fn new(dir: &Path) -> Result<FileSink> {
        if !dir.is_dir() {
            return Err(MulticastError::BadPath(dir.to_owned()));
        }
        Ok(FileSink {
            dir: dir.to_owned(),
            open: None,
            part: PathBuf::new(),
            done: PathBuf::new(),
            fresh: false,
        })
    }

    /// Path of the final file (valid after [`Sink::begin`]).
    pub fn final_path(&self) -> &Path {
        &self.done
    }

    fn open(&mut self) -> Result<&mut OpenPart> {
        let p = self.part.clone();
        self.open.as_mut().ok_or(MulticastError::BadPath(p))
    }
}

impl Sink for FileSink {
    fn begin(&mut self, m: &Manifest) -> Result<()> {
        // The name was checked when the manifest was parsed: no separators, no leading dot.
        self.done = self.dir.join(&m.name);
        self.part = self.dir.join(part_file_name(&m.name, &m.file_hash));
        self.fresh = std::fs::metadata(&self.part).map_or(true, |md| md.len() != m.file_size);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.part)
            .map_err(|e| MulticastError::io(format!("open {}", self.part.display()), e))?;
        f.set_len(m.file_size).map_err(|e| {
            MulticastError::io(
                format!("size {} to {}", self.part.display(), m.file_size),
                e,
            )
        })?;
        let writeback = Writeback::start(&f, &self.part, Self::WRITEBACK_EVERY)?;
        self.open = Some(OpenPart {
            file: f,
            size: m.file_size,
            hash: PrefixHash::default(),
            writeback,
        });
        Ok(())
    }

    fn stored_block(&mut self, m: &Manifest, block: u32) -> Result<Option<Vec<u8>>> {
        if self.fresh {
            return Ok(None);
        }
        let mut buf = vec![0u8; m.block_len(block)];
        let off = m.block_offset(block);
        let part = self.part.clone();
        let f = &mut self.open()?.file;
        read_at(f, off, &mut buf).map_err(|e| {
            MulticastError::io(format!("read block {block} of {}", part.display()), e)
        })?;
        Ok(Some(buf))
    }

    fn write_block(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let part = self.part.clone();
        let o = self.open()?;
        o.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| o.file.write_all(data))
            .map_err(|e| {
                MulticastError::io(
                    format!(
                        "write {} bytes at {offset} of {}",
                        data.len(),
                        part.display()
                    ),
                    e,
                )
            })?;
        o.writeback.wrote(data.len() as u64);
        o.hash
            .wrote(&mut o.file, offset, data)
            .map_err(|e| MulticastError::io(format!("read back {}", part.display()), e))
    }

    fn file_hash(&mut self) -> Result<[u8; 32]> {
        let part = self.part.clone();
        let o = self.open()?;
        o.writeback.finish()?;
        o.file
            .sync_all()
            .map_err(|e| MulticastError::io(format!("sync {}", part.display()), e))?;
        let size = o.size;
        std::mem::take(&mut o.hash)
            .finish(&mut o.file, size)
            .map_err(|e| MulticastError::io(format!("read {}", part.display()), e))
    }

    fn commit(&mut self) -> Result<()> {
        self.open = None;
        std::fs::rename(&self.part, &self.done).map_err(|e| {
            MulticastError::io(
                format!("rename {} to {}", self.part.display(), self.done.display()),
                e,
            )
        })
    }
}

fn read_at(f: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// The whole-file SHA-256 of a file written in pieces, in any order: the prefix written so
/// far in order is hashed as it is written; a piece written ahead of it is noted and read
/// back once the prefix reaches it. Blocks mostly complete in order (the sender sends them
/// in order and repairs trail by a round trip), so little is read back; what never was
/// written through [`PrefixHash::wrote`] (blocks resumed from an earlier run) is read back
/// by [`PrefixHash::finish`].
#[derive(Default)]
pub struct PrefixHash {
    hasher: FileHasher,
    /// Bytes `0..upto` are hashed.
    upto: u64,
    /// Pieces written beyond `upto`: offset to length.
    ahead: BTreeMap<u64, u64>,
    buf: Vec<u8>,
}

impl PrefixHash {
    /// `data` was written at `offset` of `file`.
    pub fn wrote(&mut self, file: &mut File, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if offset > self.upto {
            self.ahead.insert(offset, data.len() as u64);
            return Ok(());
        }
        if offset < self.upto {
            // Written again (a block fetched and also repaired): hashed already, and a
            // verified block has one content.
            return Ok(());
        }
        self.hasher.update(data);
        self.upto += data.len() as u64;
        while let Some(len) = self.ahead.remove(&self.upto) {
            self.read(file, self.upto + len)?;
        }
        // Pieces the prefix has passed (shorter rewrites) are hashed already.
        while let Some((&off, _)) = self.ahead.first_key_value() {
            if off >= self.upto {
                break;
            }
            self.ahead.pop_first();
        }
        Ok(())
    }

    /// The hash of `file`'s first `size` bytes: the part not hashed yet is read back.
    pub fn finish(mut self, file: &mut File, size: u64) -> std::io::Result<[u8; 32]> {
        self.read(file, size)?;
        Ok(self.hasher.finish())
    }

    /// Reads `upto..end` back from `file` into the hash.
    fn read(&mut self, file: &mut File, end: u64) -> std::io::Result<()> {
        self.buf.resize(1 << 20, 0);
        while self.upto < end {
            let n = (end - self.upto).min(self.buf.len() as u64) as usize;
            read_at(file, self.upto, &mut self.buf[..n])?;
            self.hasher.update(&self.buf[..n]);
            self.upto += n as u64;
        }
        Ok(())
    }
}

/// Flushes a file to disk on a thread of its own after every `every` bytes written, so a
/// final sync does not wait for the whole file. A failed flush is reported by
/// [`Writeback::finish`].
struct Writeback {
    every: u64,
    unflushed: u64,
    kick: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    path: PathBuf,
}

impl Writeback {
    fn start(file: &File, path: &Path, every: u64) -> Result<Writeback> {
        let clone = file
            .try_clone()
            .map_err(|e| MulticastError::io(format!("open {} again", path.display()), e))?;
        let (kick, kicks) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("multicast-writeback".into())
            .spawn(move || {
                for () in kicks {
                    clone.sync_data()?;
                }
                Ok(())
            })
            .map_err(|e| MulticastError::io("start the writeback thread", e))?;
        Ok(Writeback {
            every,
            unflushed: 0,
            kick: Some(kick),
            thread: Some(thread),
            path: path.to_owned(),
        })
    }

    fn wrote(&mut self, n: u64) {
        self.unflushed += n;
        // A flush still pending or running takes these bytes too; the count goes on until
        // the next one is asked for.
        if self.unflushed >= self.every
            && self.kick.as_ref().is_some_and(|k| k.try_send(()).is_ok())
        {
            self.unflushed = 0;
        }
    }

    /// Waits for the flush under way; the error of any that failed.
    fn finish(&mut self) -> Result<()> {
        self.kick = None;
        match self.thread.take().map(|t| t.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(MulticastError::io(
                format!("sync {}", self.path.display()),
                e,
            )),
            Some(Err(_)) => Err(MulticastError::io(
                format!("sync {}", self.path.display()),
                std::io::Error::other("the writeback thread panicked"),
            )),
        }
    }
}

/// A sink that keeps nothing: blocks are verified against their hashes by the receiver
/// core, then dropped. The whole-file hash is taken as the manifest's (used for measuring
/// the protocol without a disk).
#[derive(Default)]
pub struct DiscardSink {
    file_hash: [u8; 32],
    /// Bytes of verified blocks handed over.
    pub bytes: u64,
}

impl Sink for DiscardSink {
    fn begin(&mut self, m: &Manifest) -> Result<()> {
        self.file_hash = m.file_hash;
        Ok(())
    }
    fn stored_block(&mut self, _: &Manifest, _: u32) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn write_block(&mut self, _: u64, data: &[u8]) -> Result<()> {
        self.bytes += data.len() as u64;
        Ok(())
    }
    fn file_hash(&mut self) -> Result<[u8; 32]> {
        Ok(self.file_hash)
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Boxed future returned by a [`Fetcher`].
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>>> + Send + 'a>>;

/// Fetches a block by unicast from the distribution point (late joiners, blocks the session
/// did not deliver). The agent supplies the real one.
pub trait Fetcher: Send {
    /// Fetches block `block` of `manifest`.
    fn fetch_block<'a>(&'a mut self, manifest: &'a Manifest, block: u32) -> FetchFuture<'a>;
}

/// A fetcher with no unicast source: every fetch fails with a clear error.
pub struct NoFetcher;

impl Fetcher for NoFetcher {
    fn fetch_block<'a>(&'a mut self, _: &'a Manifest, block: u32) -> FetchFuture<'a> {
        Box::pin(async move {
            Err(MulticastError::Fetch {
                block,
                reason: "no unicast source configured".into(),
            })
        })
    }
}

/// Serves blocks from a local copy of the file (for tests and for a distribution point
/// that fetches from itself).
pub struct LocalFileFetcher {
    source: FileSource,
}

impl LocalFileFetcher {
    /// Serves `path`.
    pub fn open(path: &Path) -> Result<LocalFileFetcher> {
        Ok(LocalFileFetcher {
            source: FileSource::open(path)?,
        })
    }
}

impl Fetcher for LocalFileFetcher {
    fn fetch_block<'a>(&'a mut self, m: &'a Manifest, block: u32) -> FetchFuture<'a> {
        Box::pin(async move {
            let mut buf = vec![0u8; m.block_len(block)];
            self.source.read_block(m.block_offset(block), &mut buf)?;
            Ok(buf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ManifestBuilder, sha256};
    use proptest::prelude::*;

    fn manifest_of(data: &[u8], block_symbols: u32) -> Manifest {
        let mut b = ManifestBuilder::new(1, "f.bin", 64, block_symbols).unwrap();
        for block in data.chunks(b.block_bytes()) {
            b.push_block(block);
        }
        b.finish().unwrap()
    }

    proptest! {
        /// Whatever order the blocks are written in, rewrites included, the sink's hash is
        /// the file's and the file is the data.
        #[test]
        fn the_file_hash_holds_for_any_write_order(
            len in 1usize..20_000,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
            seed in any::<u8>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
            let m = manifest_of(&data, 8);
            let blocks = m.block_count() as usize;
            // Every block once in a shuffled order, then some written again.
            let mut seq: Vec<usize> = (0..blocks).collect();
            for (i, ix) in order.iter().enumerate() {
                let j = ix.index(blocks);
                seq.swap(i % blocks, j);
            }
            seq.extend(order.iter().take(5).map(|ix| ix.index(blocks)));
            let dir = tempfile::tempdir().unwrap();
            let mut sink = FileSink::new(dir.path()).unwrap();
            sink.begin(&m).unwrap();
            for b in seq {
                let off = m.block_offset(b as u32);
                let end = off as usize + m.block_len(b as u32);
                sink.write_block(off, &data[off as usize..end]).unwrap();
            }
            prop_assert_eq!(sink.file_hash().unwrap(), sha256(&data));
            sink.commit().unwrap();
            prop_assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), data);
        }
    }

    /// Blocks already on disk from an earlier run are not written again: the hash reads
    /// them back, and so sees what the file holds, not what was handed over.
    #[test]
    fn blocks_not_written_through_the_sink_are_read_back() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let m = manifest_of(&data, 8);
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join(part_file_name("f.bin", &m.file_hash));
        let mut earlier = data.clone();
        earlier[4000] ^= 1;
        std::fs::write(&part, &earlier).unwrap();
        let mut sink = FileSink::new(dir.path()).unwrap();
        sink.begin(&m).unwrap();
        // Block 0 written afresh, the rest left from the earlier run (one byte differs).
        sink.write_block(0, &data[..m.block_len(0)]).unwrap();
        assert_eq!(sink.file_hash().unwrap(), sha256(&earlier));
        assert_ne!(sha256(&earlier), m.file_hash);
    }
}
