//! The in-memory tree of one invocation's scratch file system and the budget it lives in.
//!
//! Every byte a file's buffer holds (its capacity, not only its length), and a fixed cost per
//! directory entry, is charged to one [`Budget`] (the manifest's `scratch_mib`) and refunded
//! when the node is dropped, so a file unlinked while still open is freed when its last
//! descriptor closes, as on POSIX, and everything is freed with the invocation's store.
//! Dropping a tree is iterative, however deep the guest nested it.
//!
//! Paths are resolved lexically from the directory they are given against, the way cap-std
//! resolves them for wasmtime-wasi: absolute paths and `..` past that directory are refused,
//! and there are no symbolic links to follow, so no path reaches outside the tree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// What each file or directory costs besides its content (its name of up to 255 bytes, its
/// place in the directory, its node), so that empty files cannot take memory without bound.
pub(crate) const ENTRY_COST: u64 = 512;
/// Longest name of one directory entry, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 255;
/// Longest path a guest may pass, in bytes.
pub(crate) const MAX_PATH_BYTES: usize = 4096;

/// Why a file system operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsError {
    NoEntry,
    Exists,
    NotDirectory,
    IsDirectory,
    NotEmpty,
    /// An absolute path, or `..` past the directory the path is resolved from.
    Escapes,
    /// The budget would be exceeded.
    Full,
    NameTooLong,
    /// A name with a NUL byte, or moving a directory into itself.
    Invalid,
    /// Removing or replacing the directory a path is resolved from.
    Busy,
}

/// The bytes one scratch file system may hold, and the inode numbers it hands out.
#[derive(Debug)]
pub(crate) struct Budget {
    capacity: u64,
    used: AtomicU64,
    next_id: AtomicU64,
}

impl Budget {
    pub(crate) fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Budget {
            capacity,
            used: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        })
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn remaining(&self) -> u64 {
        self.capacity
            .saturating_sub(self.used.load(Ordering::Relaxed))
    }

    fn charge(&self, bytes: u64) -> Result<(), FsError> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&u| u <= self.capacity)
            })
            .map(drop)
            .map_err(|_| FsError::Full)
    }

    fn refund(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A regular file: its bytes, charged to the budget.
#[derive(Debug)]
pub(crate) struct File {
    id: u64,
    data: Mutex<FileData>,
    budget: Arc<Budget>,
}

/// A file's bytes and what its buffer was charged (the capacity it was given).
#[derive(Debug, Default)]
struct FileData {
    bytes: Vec<u8>,
    charged: u64,
}

impl std::ops::Deref for FileData {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

impl File {
    pub(crate) fn len(&self) -> u64 {
        lock(&self.data).len() as u64
    }

    /// What the file's buffer is charged to the budget.
    #[cfg(test)]
    fn charged(&self) -> u64 {
        lock(&self.data).charged
    }

    /// Up to `max` bytes from `offset` (none at or past the end).
    pub(crate) fn read_at(&self, offset: u64, max: u64) -> Vec<u8> {
        let data = lock(&self.data);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(usize::try_from(max).unwrap_or(usize::MAX));
        data[start..end.min(data.len())].to_vec()
    }

    /// Writes `bytes` at `offset` (`None`: at the end), growing the file with zeros if the
    /// offset is past its end; returns the offset after the write.
    pub(crate) fn write_at(&self, offset: Option<u64>, bytes: &[u8]) -> Result<u64, FsError> {
        let mut data = lock(&self.data);
        let start = offset.unwrap_or(data.len() as u64);
        if bytes.is_empty() {
            // As `pwrite`: writing nothing never extends a file.
            return Ok(start);
        }
        let end = start.checked_add(bytes.len() as u64).ok_or(FsError::Full)?;
        self.grow(&mut data, end)?;
        // `grow` made the file at least `end` long, and `end` fits in memory.
        let start = start as usize;
        data.bytes[start..start + bytes.len()].copy_from_slice(bytes);
        Ok(end)
    }

    /// Truncates or extends (with zeros) the file to `len` bytes.
    pub(crate) fn set_len(&self, len: u64) -> Result<(), FsError> {
        let mut data = lock(&self.data);
        if len < data.len() as u64 {
            data.bytes.truncate(len as usize);
            data.bytes.shrink_to(len as usize);
            let freed = data.charged - len;
            data.charged = len;
            self.budget.refund(freed);
            return Ok(());
        }
        self.grow(&mut data, len)
    }

    /// Makes the file `len` bytes long (zeros after its end). The buffer doubles while the
    /// budget allows, so appending costs amortised constant time, and is sized exactly when
    /// it does not; either way what it holds is charged before it is allocated.
    fn grow(&self, data: &mut FileData, len: u64) -> Result<(), FsError> {
        if len <= data.len() as u64 {
            return Ok(());
        }
        if len > data.charged {
            let doubled = (data.charged * 2).max(len);
            let capacity = if doubled - data.charged <= self.budget.remaining() {
                doubled
            } else {
                len
            };
            self.budget.charge(capacity - data.charged)?;
            // Charged, so `capacity` is within the budget's, far below `usize::MAX`.
            let additional = capacity as usize - data.len();
            data.bytes.reserve_exact(additional);
            data.charged = capacity;
        }
        data.bytes.resize(len as usize, 0);
        Ok(())
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let charged = lock(&self.data).charged;
        self.budget.refund(charged + ENTRY_COST);
    }
}

/// A directory: its entries by name, and the directory it is in (for refusing to move a
/// directory into itself).
pub(crate) struct Dir {
    id: u64,
    entries: Mutex<BTreeMap<String, Node>>,
    parent: Mutex<Weak<Dir>>,
    budget: Arc<Budget>,
    /// What this directory was charged (nothing for the root).
    cost: u64,
}

impl Drop for Dir {
    /// Takes the subtree apart level by level: dropping it recursively would take one stack
    /// frame per level, and a guest may nest directories as deep as its budget allows.
    fn drop(&mut self) {
        self.budget.refund(self.cost);
        let mut orphans = std::mem::take(&mut *lock(&self.entries));
        let mut pending: Vec<BTreeMap<String, Node>> = Vec::new();
        loop {
            while let Some((_, node)) = orphans.pop_first() {
                if let Node::Dir(dir) = node
                    && let Some(dir) = Arc::into_inner(dir)
                {
                    // Its entries are dropped here, not by its own `drop`.
                    pending.push(std::mem::take(&mut *lock(&dir.entries)));
                }
            }
            match pending.pop() {
                Some(next) => orphans = next,
                None => break,
            }
        }
    }
}

/// Shallow: a directory's contents may nest deeper than a recursive print could go.
impl std::fmt::Debug for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dir")
            .field("id", &self.id)
            .field("entries", &lock(&self.entries).len())
            .finish()
    }
}

/// A file or a directory.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    File(Arc<File>),
    Dir(Arc<Dir>),
}

impl Node {
    pub(crate) fn id(&self) -> u64 {
        match self {
            Node::File(f) => f.id,
            Node::Dir(d) => d.id,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self, Node::Dir(_))
    }

    pub(crate) fn same(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::File(a), Node::File(b)) => Arc::ptr_eq(a, b),
            (Node::Dir(a), Node::Dir(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// What a path names: an entry `name` of `parent` (which may not exist yet), or, for paths
/// such as `.` or `a/..`, the directory `parent` itself.
pub(crate) struct Walk {
    pub(crate) parent: Arc<Dir>,
    pub(crate) name: Option<String>,
    /// The path ended in `/`: it may name only a directory.
    pub(crate) dir_only: bool,
}

impl Walk {
    /// The node the path names, if it exists.
    pub(crate) fn node(&self) -> Option<Node> {
        match &self.name {
            Some(name) => self.parent.get(name),
            None => Some(Node::Dir(self.parent.clone())),
        }
    }
}

impl Dir {
    /// The root of a new file system of `capacity` bytes.
    pub(crate) fn root(capacity: u64) -> Arc<Dir> {
        let budget = Budget::new(capacity);
        Arc::new(Dir {
            id: budget.id(),
            entries: Mutex::default(),
            parent: Mutex::default(),
            budget,
            cost: 0,
        })
    }

    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    pub(crate) fn get(&self, name: &str) -> Option<Node> {
        lock(&self.entries).get(name).cloned()
    }

    /// The name and kind (directory or not) of the first entry after `after`, in name order.
    pub(crate) fn next_entry(&self, after: Option<&str>) -> Option<(String, bool)> {
        use std::ops::Bound;
        let entries = lock(&self.entries);
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let (name, node) = entries.range::<str, _>((from, Bound::Unbounded)).next()?;
        Some((name.clone(), node.is_dir()))
    }

    /// Resolves `path` from this directory.
    pub(crate) fn walk(self: &Arc<Self>, path: &str) -> Result<Walk, FsError> {
        if path.is_empty() {
            return Err(FsError::NoEntry);
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(FsError::NameTooLong);
        }
        if path.starts_with('/') {
            return Err(FsError::Escapes);
        }
        let dir_only = path.ends_with('/');
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        let mut stack = vec![self.clone()];
        for (i, part) in parts.iter().enumerate() {
            if *part == ".." {
                if stack.len() == 1 {
                    return Err(FsError::Escapes);
                }
                stack.pop();
                continue;
            }
            check_name(part)?;
            let here = stack.last().expect("the stack keeps its base");
            if i + 1 == parts.len() {
                if dir_only && matches!(here.get(part), Some(Node::File(_))) {
                    return Err(FsError::NotDirectory);
                }
                return Ok(Walk {
                    parent: here.clone(),
                    name: Some((*part).to_owned()),
                    dir_only,
                });
            }
            match here.get(part) {
                Some(Node::Dir(dir)) => stack.push(dir),
                Some(Node::File(_)) => return Err(FsError::NotDirectory),
                None => return Err(FsError::NoEntry),
            }
        }
        Ok(Walk {
            parent: stack.pop().expect("the stack keeps its base"),
            name: None,
            dir_only,
        })
    }

    /// Creates an empty file `name`.
    pub(crate) fn create_file(&self, name: &str) -> Result<Arc<File>, FsError> {
        let mut entries = lock(&self.entries);
        if entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        self.budget.charge(ENTRY_COST)?;
        let file = Arc::new(File {
            id: self.budget.id(),
            data: Mutex::default(),
            budget: self.budget.clone(),
        });
        entries.insert(name.to_owned(), Node::File(file.clone()));
        Ok(file)
    }

    /// Creates an empty directory `name`.
    pub(crate) fn create_dir(self: &Arc<Self>, name: &str) -> Result<(), FsError> {
        let mut entries = lock(&self.entries);
        if entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        self.budget.charge(ENTRY_COST)?;
        let dir = Arc::new(Dir {
            id: self.budget.id(),
            entries: Mutex::default(),
            parent: Mutex::new(Arc::downgrade(self)),
            budget: self.budget.clone(),
            cost: ENTRY_COST,
        });
        entries.insert(name.to_owned(), Node::Dir(dir));
        Ok(())
    }

    /// Removes the file `name`.
    pub(crate) fn unlink(&self, name: &str) -> Result<(), FsError> {
        let mut entries = lock(&self.entries);
        match entries.get(name) {
            Some(Node::File(_)) => {
                entries.remove(name);
                Ok(())
            }
            Some(Node::Dir(_)) => Err(FsError::IsDirectory),
            None => Err(FsError::NoEntry),
        }
    }

    /// Removes the empty directory `name`.
    pub(crate) fn remove_dir(&self, name: &str) -> Result<(), FsError> {
        let mut entries = lock(&self.entries);
        match entries.get(name) {
            Some(Node::Dir(dir)) if !lock(&dir.entries).is_empty() => Err(FsError::NotEmpty),
            Some(Node::Dir(_)) => {
                entries.remove(name);
                Ok(())
            }
            Some(Node::File(_)) => Err(FsError::NotDirectory),
            None => Err(FsError::NoEntry),
        }
    }

    /// Whether this directory is `ancestor` or lies inside it.
    fn is_within(self: &Arc<Self>, ancestor: &Arc<Dir>) -> bool {
        let mut here = Some(self.clone());
        while let Some(dir) = here {
            if Arc::ptr_eq(&dir, ancestor) {
                return true;
            }
            here = lock(&dir.parent).upgrade();
        }
        false
    }
}

/// Moves `from` to `to`, replacing a file, or an empty directory, that is there (POSIX
/// `rename`).
pub(crate) fn rename(from: Walk, to: Walk) -> Result<(), FsError> {
    let (Some(old_name), Some(new_name)) = (&from.name, &to.name) else {
        return Err(FsError::Busy);
    };
    let node = from.parent.get(old_name).ok_or(FsError::NoEntry)?;
    if (from.dir_only || to.dir_only) && !node.is_dir() {
        return Err(FsError::NotDirectory);
    }
    let replaced = to.parent.get(new_name);
    if let Some(existing) = &replaced {
        if existing.same(&node) {
            return Ok(());
        }
        match (&node, existing) {
            (Node::File(_), Node::Dir(_)) => return Err(FsError::IsDirectory),
            (Node::Dir(_), Node::File(_)) => return Err(FsError::NotDirectory),
            (Node::Dir(_), Node::Dir(d)) if !lock(&d.entries).is_empty() => {
                return Err(FsError::NotEmpty);
            }
            _ => {}
        }
    }
    if let Node::Dir(dir) = &node
        && to.parent.is_within(dir)
    {
        return Err(FsError::Invalid);
    }
    lock(&from.parent.entries).remove(old_name);
    if let Node::Dir(dir) = &node {
        *lock(&dir.parent) = Arc::downgrade(&to.parent);
    }
    // A replaced entry is dropped here, and its bytes refunded once nothing holds it open.
    lock(&to.parent.entries).insert(new_name.clone(), node);
    Ok(())
}

fn check_name(name: &str) -> Result<(), FsError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(FsError::NameTooLong);
    }
    if name.contains('\0') {
        return Err(FsError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Arc<Dir>, path: &str) -> Arc<File> {
        let walk = dir.walk(path).unwrap();
        match walk.node() {
            Some(Node::File(f)) => f,
            Some(Node::Dir(_)) => panic!("{path} is a directory"),
            None => walk
                .parent
                .create_file(walk.name.as_deref().unwrap())
                .unwrap(),
        }
    }

    #[test]
    fn paths_never_leave_the_directory_they_start_from() {
        let root = Dir::root(1 << 20);
        root.create_dir("a").unwrap();
        assert_eq!(root.walk("/etc/passwd").err(), Some(FsError::Escapes));
        assert_eq!(root.walk("..").err(), Some(FsError::Escapes));
        assert_eq!(root.walk("a/../../x").err(), Some(FsError::Escapes));
        assert_eq!(root.walk("").err(), Some(FsError::NoEntry));
        let a = match root.get("a") {
            Some(Node::Dir(a)) => a,
            _ => panic!("a is a directory"),
        };
        // `..` from a subdirectory's own descriptor is refused even though the root is ours.
        assert_eq!(a.walk("../a").err(), Some(FsError::Escapes));
        let walk = root.walk("a/./../a/b").unwrap();
        assert!(Arc::ptr_eq(&walk.parent, &a));
        assert_eq!(walk.name.as_deref(), Some("b"));
        assert!(root.walk("a/..").unwrap().name.is_none());
        assert_eq!(
            root.walk(&"x".repeat(MAX_NAME_BYTES + 1)).err(),
            Some(FsError::NameTooLong)
        );
    }

    #[test]
    fn the_budget_caps_content_and_entries_and_is_refunded_when_files_go() {
        let root = Dir::root(8 * 1024);
        let f = file(&root, "f");
        assert_eq!(root.budget().used(), ENTRY_COST);
        f.write_at(None, &[7; 4096]).unwrap();
        assert_eq!(f.write_at(Some(8 * 1024), b"x"), Err(FsError::Full));
        assert_eq!(f.len(), 4096, "a refused write leaves the file as it was");
        assert_eq!(f.read_at(4090, 100), vec![7; 6]);
        assert!(f.read_at(1 << 40, 10).is_empty());
        assert_eq!(f.write_at(Some(u64::MAX), b"x"), Err(FsError::Full));

        // Entries cost memory too: empty files cannot be created without end.
        let mut created = 0;
        while root.create_file(&format!("e{created}")).is_ok() {
            created += 1;
        }
        assert!(created < 16, "{created} empty files fit in 4 KiB");

        // An unlinked file still open keeps its bytes charged until it is closed.
        root.unlink("f").unwrap();
        assert!(root.budget().used() > 4096);
        drop(f);
        assert_eq!(root.budget().used(), created as u64 * ENTRY_COST);
    }

    #[test]
    fn truncating_and_extending_refund_and_charge_the_difference() {
        let root = Dir::root(1 << 20);
        let f = file(&root, "t");
        f.write_at(Some(0), b"hello").unwrap();
        f.set_len(2).unwrap();
        assert_eq!(f.read_at(0, 10), b"he");
        assert_eq!(root.budget().used(), ENTRY_COST + 2);
        f.set_len(4).unwrap();
        assert_eq!(f.read_at(0, 10), b"he\0\0");
    }

    #[test]
    fn rename_follows_posix_and_refuses_to_move_a_directory_into_itself() {
        let root = Dir::root(1 << 20);
        root.create_dir("a").unwrap();
        let a = match root.get("a") {
            Some(Node::Dir(a)) => a,
            _ => unreachable!(),
        };
        a.create_dir("b").unwrap();
        file(&root, "f").write_at(None, b"one").unwrap();
        file(&root, "g").write_at(None, b"two").unwrap();

        assert_eq!(
            rename(root.walk("a").unwrap(), root.walk("a/b/c").unwrap()),
            Err(FsError::Invalid)
        );
        assert_eq!(
            rename(root.walk("f").unwrap(), root.walk("a").unwrap()),
            Err(FsError::IsDirectory)
        );
        assert_eq!(
            rename(root.walk("a").unwrap(), root.walk("f").unwrap()),
            Err(FsError::NotDirectory)
        );
        rename(root.walk("f").unwrap(), root.walk("g").unwrap()).unwrap();
        assert!(root.get("f").is_none());
        assert_eq!(file(&root, "g").read_at(0, 10), b"one");
        rename(root.walk("g").unwrap(), root.walk("a/b/g").unwrap()).unwrap();
        assert_eq!(file(&root, "a/b/g").read_at(0, 10), b"one");
        assert_eq!(root.remove_dir("a"), Err(FsError::NotEmpty));
        assert_eq!(
            rename(root.walk(".").unwrap(), root.walk("z").unwrap()),
            Err(FsError::Busy)
        );
        assert_eq!(root.budget().used(), 3 * ENTRY_COST + 3);
    }

    #[test]
    fn a_tree_nested_as_deep_as_the_budget_allows_is_dropped_without_recursion() {
        let root = Dir::root(64 << 20);
        let mut here = root.clone();
        let mut depth = 0;
        while here.create_dir("d").is_ok() {
            here = match here.get("d") {
                Some(Node::Dir(d)) => d,
                _ => unreachable!(),
            };
            depth += 1;
        }
        assert_eq!(depth, (64 << 20) / ENTRY_COST as usize);
        drop(here);
        // A recursive drop would need a frame per level: far more than this thread's stack.
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = format!("{root:?}");
                drop(root);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_trailing_slash_names_only_a_directory_and_listings_go_in_name_order() {
        let root = Dir::root(1 << 20);
        file(&root, "f");
        root.create_dir("d").unwrap();
        assert_eq!(root.walk("f/").err(), Some(FsError::NotDirectory));
        assert!(root.walk("d/").unwrap().dir_only);
        assert!(root.walk("new/").unwrap().dir_only);
        assert_eq!(
            rename(root.walk("f").unwrap(), root.walk("g/").unwrap()),
            Err(FsError::NotDirectory)
        );
        assert_eq!(root.next_entry(None), Some(("d".to_owned(), true)));
        assert_eq!(root.next_entry(Some("d")), Some(("f".to_owned(), false)));
        assert_eq!(root.next_entry(Some("f")), None);
    }

    #[test]
    fn appending_doubles_the_buffer_while_the_budget_allows_and_charges_it() {
        let root = Dir::root(1 << 20);
        let f = file(&root, "f");
        assert_eq!(f.write_at(Some(10), b""), Ok(10));
        assert_eq!(f.len(), 0, "an empty write extends nothing");
        for _ in 0..4 {
            f.write_at(None, &[1; 1000]).unwrap();
        }
        // 1000, 2000, 4000: three allocations for four appends, each charged in full.
        assert_eq!((f.len(), f.charged()), (4000, 4000));
        f.write_at(None, &[1; 1]).unwrap();
        assert_eq!(f.charged(), 8000);
        assert_eq!(root.budget().used(), ENTRY_COST + 8000);
        // Near the end of the budget the buffer is sized exactly.
        let big = file(&root, "big");
        big.set_len((1 << 20) - 3 * ENTRY_COST - 8000).unwrap();
        assert_eq!(root.budget().used(), (1 << 20) - ENTRY_COST);
    }

    mod random_operations {
        use std::collections::HashSet;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            CreateFile(String),
            CreateDir(String),
            /// Write `len` bytes at `offset` to an open file (by index), or append.
            Write(usize, Option<u64>, usize),
            SetLen(usize, u64),
            Open(String),
            Close(usize),
            Unlink(String),
            RemoveDir(String),
            Rename(String, String),
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "..", "."]), 1..4)
                .prop_map(|parts| parts.join("/"))
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                path().prop_map(Op::CreateFile),
                path().prop_map(Op::CreateDir),
                (0..4usize, prop::option::of(0..6000u64), 0..3000usize)
                    .prop_map(|(f, o, l)| Op::Write(f, o, l)),
                (0..4usize, 0..6000u64).prop_map(|(f, l)| Op::SetLen(f, l)),
                path().prop_map(Op::Open),
                (0..4usize).prop_map(Op::Close),
                path().prop_map(Op::Unlink),
                path().prop_map(Op::RemoveDir),
                (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
            ]
        }

        /// What the tree and the open files should have cost, walking it from the root; fails
        /// on a directory reached twice (a cycle, or one directory in two places).
        fn accounted(root: &Arc<Dir>, open: &[Arc<File>]) -> u64 {
            let cost = |f: &Arc<File>| {
                assert!(
                    f.charged() >= f.len(),
                    "a file holds more than it was charged"
                );
                f.charged() + ENTRY_COST
            };
            let mut seen_files = HashSet::new();
            let mut seen_dirs = HashSet::new();
            let mut total = 0;
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                assert!(
                    seen_dirs.insert(Arc::as_ptr(&dir)),
                    "a directory is reached twice"
                );
                total += dir.cost;
                for node in lock(&dir.entries).values() {
                    match node {
                        Node::Dir(d) => stack.push(d.clone()),
                        Node::File(f) => {
                            if seen_files.insert(Arc::as_ptr(f)) {
                                total += cost(f);
                            }
                        }
                    }
                }
            }
            for f in open {
                if seen_files.insert(Arc::as_ptr(f)) {
                    total += cost(f);
                }
            }
            total
        }

        proptest! {
            #[test]
            fn the_budget_always_matches_the_tree_and_is_never_exceeded(
                ops in prop::collection::vec(op(), 1..60)
            ) {
                let root = Dir::root(16 * 1024);
                let mut open: Vec<Arc<File>> = Vec::new();
                for op in ops {
                    match op {
                        Op::CreateFile(p) => {
                            if let Ok(Walk { parent, name: Some(name), .. }) = root.walk(&p)
                                && let Ok(f) = parent.create_file(&name)
                            {
                                open.push(f);
                            }
                        }
                        Op::CreateDir(p) => {
                            if let Ok(Walk { parent, name: Some(name), .. }) = root.walk(&p) {
                                let _ = parent.create_dir(&name);
                            }
                        }
                        Op::Write(i, offset, len) => {
                            if let Some(f) = open.get(i) {
                                let before = f.len();
                                match f.write_at(offset, &vec![1; len]) {
                                    // An empty write never extends the file (as `pwrite`).
                                    Ok(end) => prop_assert!(len == 0 || f.len() >= end),
                                    Err(e) => {
                                        prop_assert_eq!(e, FsError::Full);
                                        prop_assert_eq!(f.len(), before);
                                    }
                                }
                            }
                        }
                        Op::SetLen(i, len) => {
                            if let Some(f) = open.get(i)
                                && f.set_len(len).is_ok()
                            {
                                prop_assert_eq!(f.len(), len);
                            }
                        }
                        Op::Open(p) => {
                            if let Ok(walk) = root.walk(&p)
                                && let Some(Node::File(f)) = walk.node()
                            {
                                open.push(f);
                            }
                        }
                        Op::Close(i) => {
                            if i < open.len() {
                                open.remove(i);
                            }
                        }
                        Op::Unlink(p) => {
                            if let Ok(Walk { parent, name: Some(name), .. }) = root.walk(&p) {
                                let _ = parent.unlink(&name);
                            }
                        }
                        Op::RemoveDir(p) => {
                            if let Ok(Walk { parent, name: Some(name), .. }) = root.walk(&p) {
                                let _ = parent.remove_dir(&name);
                            }
                        }
                        Op::Rename(a, b) => {
                            if let (Ok(from), Ok(to)) = (root.walk(&a), root.walk(&b)) {
                                let _ = rename(from, to);
                            }
                        }
                    }
                    let used = root.budget().used();
                    prop_assert!(used <= root.budget().capacity());
                    prop_assert_eq!(used, accounted(&root, &open));
                }
                open.clear();
                prop_assert_eq!(root.budget().used(), accounted(&root, &open));
            }
        }
    }
}
