//! The host side of `wasi:filesystem/types` and `wasi:filesystem/preopens` over the scratch
//! tree. Descriptors and directory listings are resources in the store's table; file contents
//! are read and written through `wasi:io` streams like any other.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, InputStream, IoError, OutputStream, Pollable, StreamError,
    StreamResult,
};

use super::MOUNT;
use super::tree::{self, Dir, FsError, Node};
use crate::monitor::Monitor;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/scratch",
        world: "cella:scratch/scratch",
        require_store_data_send: true,
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:filesystem/types.descriptor": super::Descriptor,
            "wasi:filesystem/types.directory-entry-stream": super::DirectoryEntries,
        },
    });
}

use bindings::wasi::filesystem::{preopens, types};
use types::{
    Advice, DescriptorFlags, DescriptorStat, DescriptorType, DirectoryEntry, ErrorCode, Filesize,
    MetadataHashValue, NewTimestamp, OpenFlags, PathFlags,
};

/// Most bytes one `read` returns; a guest reads a larger file in several calls.
const MAX_READ: u64 = 1 << 20;

/// One invocation's scratch file system.
#[derive(Debug)]
pub(crate) struct Scratch {
    root: Arc<Dir>,
}

impl Scratch {
    /// An empty file system of at most `capacity` bytes.
    pub(crate) fn new(capacity: u64) -> Self {
        Scratch {
            root: Dir::root(capacity),
        }
    }
}

/// What the file system host functions work on (the `Data` of [`ScratchFs`]).
pub(crate) struct ScratchView<'a> {
    /// `None` when the function was not granted a scratch file system.
    pub(crate) scratch: Option<&'a Scratch>,
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) monitor: &'a Arc<Monitor>,
}

/// Names [`ScratchView`] for the generated `add_to_linker` functions.
pub(crate) struct ScratchFs;

impl HasData for ScratchFs {
    type Data<'a> = ScratchView<'a>;
}

/// Links cella's file system in place of wasmtime-wasi's (which `linker` may already hold).
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> ScratchView<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    types::add_to_linker::<T, ScratchFs>(linker, view)?;
    preopens::add_to_linker::<T, ScratchFs>(linker, view)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// An open file or directory, with what it was opened for.
pub struct Descriptor {
    node: Node,
    read: bool,
    write: bool,
}

/// A listing of a directory, read one entry at a time (a copy of a large directory per
/// `read-directory` call would cost the host memory the budget does not see). Entries added
/// or removed meanwhile may or may not appear, as POSIX allows.
pub struct DirectoryEntries {
    dir: Arc<Dir>,
    after: Option<String>,
}

/// A refused operation on a stream, for `filesystem-error-code`.
#[derive(Debug, thiserror::Error)]
#[error("scratch file system: {0:?}")]
struct StreamFailure(ErrorCode);

impl ScratchView<'_> {
    fn descriptor(&self, fd: &Resource<Descriptor>) -> Result<&Descriptor, ErrorCode> {
        self.table.get(fd).map_err(|_| ErrorCode::BadDescriptor)
    }

    fn dir(&self, fd: &Resource<Descriptor>) -> Result<Arc<Dir>, ErrorCode> {
        match &self.descriptor(fd)?.node {
            Node::Dir(dir) => Ok(dir.clone()),
            Node::File(_) => Err(ErrorCode::NotDirectory),
        }
    }

    fn file(&self, fd: &Resource<Descriptor>, write: bool) -> Result<Arc<tree::File>, ErrorCode> {
        let descriptor = self.descriptor(fd)?;
        let allowed = if write {
            descriptor.write
        } else {
            descriptor.read
        };
        match &descriptor.node {
            Node::File(file) if allowed => Ok(file.clone()),
            Node::File(_) => Err(ErrorCode::BadDescriptor),
            Node::Dir(_) => Err(ErrorCode::IsDirectory),
        }
    }

    /// Resolves `path` from the directory `fd`.
    fn walk(&self, fd: &Resource<Descriptor>, path: &str) -> Result<tree::Walk, ErrorCode> {
        let dir = self.dir(fd)?;
        dir.walk(path).map_err(|e| self.refused(e, path))
    }

    fn node_at(&self, fd: &Resource<Descriptor>, path: &str) -> Result<Node, ErrorCode> {
        self.walk(fd, path)?.node().ok_or(ErrorCode::NoEntry)
    }

    /// The guest's error for `e`; paths that leave the tree and a full file system are
    /// denials the monitor records.
    fn refused(&self, e: FsError, path: &str) -> ErrorCode {
        refused(self.monitor, self.capacity(), e, path)
    }

    fn capacity(&self) -> u64 {
        self.scratch.map_or(0, |s| s.root.budget().capacity())
    }

    /// Puts `value` in the store's table; a full table is the guest's error, not a trap.
    fn push<T: Send + 'static>(&mut self, value: T) -> Result<Resource<T>, ErrorCode> {
        self.table
            .push(value)
            .map_err(|_| ErrorCode::InsufficientMemory)
    }
}

fn refused(monitor: &Monitor, capacity: u64, e: FsError, path: &str) -> ErrorCode {
    match e {
        FsError::Escapes => monitor.deny(
            "scratch",
            format!(
                "the path {path:?} leaves the directory it is resolved from; \
                 only relative paths inside {MOUNT} are open to a function"
            ),
        ),
        FsError::Full => monitor.deny(
            "scratch-quota",
            format!(
                "the scratch file system is full ({} KiB); raise `scratch_mib` in the \
                 manifest's [permissions]",
                capacity / 1024
            ),
        ),
        _ => {}
    }
    code(e)
}

fn code(e: FsError) -> ErrorCode {
    match e {
        FsError::NoEntry => ErrorCode::NoEntry,
        FsError::Exists => ErrorCode::Exist,
        FsError::NotDirectory => ErrorCode::NotDirectory,
        FsError::IsDirectory => ErrorCode::IsDirectory,
        FsError::NotEmpty => ErrorCode::NotEmpty,
        FsError::Escapes => ErrorCode::NotPermitted,
        FsError::Full => ErrorCode::InsufficientSpace,
        FsError::NameTooLong => ErrorCode::NameTooLong,
        FsError::Invalid => ErrorCode::Invalid,
        FsError::Busy => ErrorCode::Busy,
    }
}

fn stat(node: &Node) -> DescriptorStat {
    let (kind, size) = match node {
        Node::File(f) => (DescriptorType::RegularFile, f.len()),
        Node::Dir(_) => (DescriptorType::Directory, 0),
    };
    DescriptorStat {
        type_: kind,
        link_count: 1,
        size,
        data_access_timestamp: None,
        data_modification_timestamp: None,
        status_change_timestamp: None,
    }
}

fn kind(is_dir: bool) -> DescriptorType {
    match is_dir {
        true => DescriptorType::Directory,
        false => DescriptorType::RegularFile,
    }
}

impl types::Host for ScratchView<'_> {
    fn filesystem_error_code(&mut self, err: Resource<IoError>) -> Option<ErrorCode> {
        let err = self.table.get(&err).ok()?;
        err.downcast_ref::<StreamFailure>().map(|f| f.0)
    }
}

impl types::HostDescriptor for ScratchView<'_> {
    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: Filesize,
    ) -> Result<Resource<DynInputStream>, ErrorCode> {
        let file = self.file(&fd, false)?;
        let stream: DynInputStream = Box::new(Reader { file, offset });
        self.push(stream)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: Filesize,
    ) -> Result<Resource<DynOutputStream>, ErrorCode> {
        self.writer(&fd, Some(offset))
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> Result<Resource<DynOutputStream>, ErrorCode> {
        self.writer(&fd, None)
    }

    fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        _offset: Filesize,
        _length: Filesize,
        _advice: Advice,
    ) -> Result<(), ErrorCode> {
        self.descriptor(&fd).map(drop)
    }

    fn sync_data(&mut self, fd: Resource<Descriptor>) -> Result<(), ErrorCode> {
        self.descriptor(&fd).map(drop)
    }

    fn get_flags(&mut self, fd: Resource<Descriptor>) -> Result<DescriptorFlags, ErrorCode> {
        let descriptor = self.descriptor(&fd)?;
        let mut flags = DescriptorFlags::empty();
        if descriptor.read {
            flags |= DescriptorFlags::READ;
        }
        if descriptor.write {
            flags |= DescriptorFlags::WRITE;
        }
        if descriptor.node.is_dir() {
            flags |= DescriptorFlags::MUTATE_DIRECTORY;
        }
        Ok(flags)
    }

    fn get_type(&mut self, fd: Resource<Descriptor>) -> Result<DescriptorType, ErrorCode> {
        Ok(kind(self.descriptor(&fd)?.node.is_dir()))
    }

    fn set_size(&mut self, fd: Resource<Descriptor>, size: Filesize) -> Result<(), ErrorCode> {
        let file = self.file(&fd, true)?;
        file.set_len(size).map_err(|e| self.refused(e, ""))
    }

    fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        _atime: NewTimestamp,
        _mtime: NewTimestamp,
    ) -> Result<(), ErrorCode> {
        // Times are not kept (they would tell the time); setting them succeeds, as on a file
        // system mounted without them, so that unpacking an archive works.
        self.descriptor(&fd).map(drop)
    }

    fn read(
        &mut self,
        fd: Resource<Descriptor>,
        length: Filesize,
        offset: Filesize,
    ) -> Result<(Vec<u8>, bool), ErrorCode> {
        let file = self.file(&fd, false)?;
        let bytes = file.read_at(offset, length.min(MAX_READ));
        let end = offset.saturating_add(bytes.len() as u64) >= file.len();
        Ok((bytes, end))
    }

    fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buffer: Vec<u8>,
        offset: Filesize,
    ) -> Result<Filesize, ErrorCode> {
        let file = self.file(&fd, true)?;
        file.write_at(Some(offset), &buffer)
            .map_err(|e| self.refused(e, ""))?;
        Ok(buffer.len() as u64)
    }

    fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> Result<Resource<DirectoryEntries>, ErrorCode> {
        let dir = self.dir(&fd)?;
        self.push(DirectoryEntries { dir, after: None })
    }

    fn sync(&mut self, fd: Resource<Descriptor>) -> Result<(), ErrorCode> {
        self.descriptor(&fd).map(drop)
    }

    fn create_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> Result<(), ErrorCode> {
        let walk = self.walk(&fd, &path)?;
        let name = walk.name.ok_or(ErrorCode::Exist)?;
        walk.parent
            .create_dir(&name)
            .map_err(|e| self.refused(e, &path))
    }

    fn stat(&mut self, fd: Resource<Descriptor>) -> Result<DescriptorStat, ErrorCode> {
        Ok(stat(&self.descriptor(&fd)?.node))
    }

    fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        _flags: PathFlags,
        path: String,
    ) -> Result<DescriptorStat, ErrorCode> {
        Ok(stat(&self.node_at(&fd, &path)?))
    }

    fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        _flags: PathFlags,
        path: String,
        _atime: NewTimestamp,
        _mtime: NewTimestamp,
    ) -> Result<(), ErrorCode> {
        self.node_at(&fd, &path).map(drop)
    }

    fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        _old_flags: PathFlags,
        old_path: String,
        _new_fd: Resource<Descriptor>,
        _new_path: String,
    ) -> Result<(), ErrorCode> {
        self.node_at(&fd, &old_path)?;
        Err(ErrorCode::Unsupported)
    }

    fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        _path_flags: PathFlags,
        path: String,
        open: OpenFlags,
        flags: DescriptorFlags,
    ) -> Result<Resource<Descriptor>, ErrorCode> {
        let walk = self.walk(&fd, &path)?;
        let write = flags.contains(DescriptorFlags::WRITE);
        let node = match walk.node() {
            Some(_) if open.contains(OpenFlags::CREATE | OpenFlags::EXCLUSIVE) => {
                return Err(ErrorCode::Exist);
            }
            Some(Node::File(_)) if open.contains(OpenFlags::DIRECTORY) => {
                return Err(ErrorCode::NotDirectory);
            }
            Some(Node::Dir(_))
                if write || open.intersects(OpenFlags::TRUNCATE | OpenFlags::CREATE) =>
            {
                return Err(ErrorCode::IsDirectory);
            }
            Some(Node::File(file)) if open.contains(OpenFlags::TRUNCATE) => {
                if !write {
                    return Err(ErrorCode::NotPermitted);
                }
                file.set_len(0).map_err(|e| self.refused(e, &path))?;
                Node::File(file)
            }
            Some(node) => node,
            None if open.contains(OpenFlags::CREATE) => {
                if open.contains(OpenFlags::DIRECTORY) {
                    return Err(ErrorCode::Invalid);
                }
                if walk.dir_only {
                    return Err(ErrorCode::IsDirectory);
                }
                let name = walk.name.as_deref().ok_or(ErrorCode::IsDirectory)?;
                let file = walk
                    .parent
                    .create_file(name)
                    .map_err(|e| self.refused(e, &path))?;
                Node::File(file)
            }
            None => return Err(ErrorCode::NoEntry),
        };
        self.push(Descriptor {
            node,
            read: flags.contains(DescriptorFlags::READ),
            write,
        })
    }

    fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> Result<String, ErrorCode> {
        // There are no symbolic links: whatever the path names is not one.
        self.node_at(&fd, &path)?;
        Err(ErrorCode::Invalid)
    }

    fn remove_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> Result<(), ErrorCode> {
        let walk = self.walk(&fd, &path)?;
        let name = walk.name.ok_or(ErrorCode::Busy)?;
        walk.parent
            .remove_dir(&name)
            .map_err(|e| self.refused(e, &path))
    }

    fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> Result<(), ErrorCode> {
        let from = self.walk(&fd, &old_path)?;
        let to = self.walk(&new_fd, &new_path)?;
        tree::rename(from, to).map_err(|e| self.refused(e, &new_path))
    }

    fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        _old_path: String,
        _new_path: String,
    ) -> Result<(), ErrorCode> {
        self.dir(&fd)?;
        Err(ErrorCode::Unsupported)
    }

    fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> Result<(), ErrorCode> {
        let walk = self.walk(&fd, &path)?;
        let name = walk.name.ok_or(ErrorCode::IsDirectory)?;
        walk.parent
            .unlink(&name)
            .map_err(|e| self.refused(e, &path))
    }

    fn is_same_object(&mut self, fd: Resource<Descriptor>, other: Resource<Descriptor>) -> bool {
        match (self.descriptor(&fd), self.descriptor(&other)) {
            (Ok(a), Ok(b)) => a.node.same(&b.node),
            _ => false,
        }
    }

    fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> Result<MetadataHashValue, ErrorCode> {
        Ok(hash(&self.descriptor(&fd)?.node))
    }

    fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        _flags: PathFlags,
        path: String,
    ) -> Result<MetadataHashValue, ErrorCode> {
        Ok(hash(&self.node_at(&fd, &path)?))
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.table.delete(fd)?;
        Ok(())
    }
}

/// A node's identity for the guest: its number in this file system (never an address of
/// the host's memory).
fn hash(node: &Node) -> MetadataHashValue {
    MetadataHashValue {
        lower: node.id(),
        upper: 0,
    }
}

impl ScratchView<'_> {
    fn writer(
        &mut self,
        fd: &Resource<Descriptor>,
        offset: Option<u64>,
    ) -> Result<Resource<DynOutputStream>, ErrorCode> {
        let file = self.file(fd, true)?;
        let stream: DynOutputStream = Box::new(Writer {
            file,
            offset,
            capacity: self.capacity(),
            monitor: self.monitor.clone(),
        });
        self.push(stream)
    }
}

impl types::HostDirectoryEntryStream for ScratchView<'_> {
    fn read_directory_entry(
        &mut self,
        entries: Resource<DirectoryEntries>,
    ) -> Result<Option<DirectoryEntry>, ErrorCode> {
        let entries = self
            .table
            .get_mut(&entries)
            .map_err(|_| ErrorCode::BadDescriptor)?;
        let Some((name, is_dir)) = entries.dir.next_entry(entries.after.as_deref()) else {
            return Ok(None);
        };
        entries.after = Some(name.clone());
        Ok(Some(DirectoryEntry {
            type_: kind(is_dir),
            name,
        }))
    }

    fn drop(&mut self, entries: Resource<DirectoryEntries>) -> wasmtime::Result<()> {
        self.table.delete(entries)?;
        Ok(())
    }
}

impl preopens::Host for ScratchView<'_> {
    fn get_directories(&mut self) -> Vec<(Resource<Descriptor>, String)> {
        let Some(scratch) = self.scratch else {
            return Vec::new();
        };
        let root = Descriptor {
            node: Node::Dir(scratch.root.clone()),
            read: true,
            write: false,
        };
        match self.push(root) {
            Ok(fd) => vec![(fd, MOUNT.to_owned())],
            Err(_) => Vec::new(),
        }
    }
}

/// Reads a file from an offset, as `read-via-stream` does.
struct Reader {
    file: Arc<tree::File>,
    offset: u64,
}

impl InputStream for Reader {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let bytes = self.file.read_at(self.offset, (size as u64).min(MAX_READ));
        if bytes.is_empty() && size > 0 {
            return Err(StreamError::Closed);
        }
        self.offset += bytes.len() as u64;
        Ok(Bytes::from(bytes))
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Reader {
    async fn ready(&mut self) {}
}

/// Writes a file from an offset (`None`: at its end), as `write-via-stream` and
/// `append-via-stream` do.
struct Writer {
    file: Arc<tree::File>,
    offset: Option<u64>,
    capacity: u64,
    monitor: Arc<Monitor>,
}

impl OutputStream for Writer {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        match self.file.write_at(self.offset, &bytes) {
            Ok(end) => {
                if self.offset.is_some() {
                    self.offset = Some(end);
                }
                Ok(())
            }
            Err(e) => {
                let code = refused(&self.monitor, self.capacity, e, "");
                Err(StreamError::LastOperationFailed(wasmtime::Error::new(
                    StreamFailure(code),
                )))
            }
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_READ as usize)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Writer {
    async fn ready(&mut self) {}
}
