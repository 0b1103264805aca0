//! Key-value state for WASI commands: the host functions a guest imports from
//! [`STATE_MODULE`] to read and write its function's sealed state, and the [`StateStore`]
//! the runtime hands each invocation (the sandbox knows nothing of how it is kept).
//!
//! The guest ABI, all integers `i32` unless said otherwise (negative results are errors, see
//! [`StateCode`]):
//!
//! - `get(key_ptr, key_len, buf_ptr, buf_len) -> i64`: the value's length, copied into the
//!   buffer when it fits (call again with a larger buffer when it did not); `-1` if absent.
//! - `set(key_ptr, key_len, value_ptr, value_len) -> i32`: `0` when stored.
//! - `delete(key_ptr, key_len) -> i32`: `1` if the key existed, `0` if not.
//!
//! Every pointer and length is bounds-checked against the guest's memory: a bad one traps
//! the guest. Refusals (a full quota, a key too long) are errors for the guest and denials in
//! the invocation's log.

use std::sync::Arc;

use wasmtime::{Caller, Extern, Linker};

use crate::command::CommandState;
use crate::error::HostUnavailable;
use crate::monitor::Monitor;

/// The import module of the state functions.
pub const STATE_MODULE: &str = "cella:state/v1";
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// A function's persistent state, as the runtime keeps it (sealed, versioned and bounded).
/// Called on a blocking thread: implementations may do I/O.
pub trait StateStore: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    fn delete(&self, key: &[u8]) -> Result<bool, StateError>;
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state would grow to {would_be} bytes, past the function's limit of {limit} bytes; \
         delete keys or store less"
    )]
    Full { would_be: u64, limit: u64 },
    #[error("the state is unavailable: {0}")]
    Unavailable(String),
}

/// Results a guest sees, as negative numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum StateCode {
    NotFound = -1,
    BadKey = -2,
    Full = -3,
    Unavailable = -4,
}

pub(crate) fn add_to_linker(linker: &mut Linker<CommandState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        STATE_MODULE,
        "get",
        |mut caller: Caller<'_, CommandState>,
         (key_ptr, key_len, buf_ptr, buf_len): (i32, i32, i32, i32)| {
            Box::new(async move {
                let (store, key) = match begin(&mut caller, key_ptr, key_len)? {
                    Ok(begun) => begun,
                    Err(code) => return Ok(code as i64),
                };
                match blocking(move || store.get(&key)).await {
                    Ok(None) => Ok(StateCode::NotFound as i64),
                    Ok(Some(value)) => {
                        if value.len() <= length(buf_len)? {
                            write(&mut caller, buf_ptr, &value)?;
                        }
                        Ok(value.len() as i64)
                    }
                    Err(e) => Ok(refused(&caller.data().monitor, e)? as i64),
                }
            })
        },
    )?;
    linker.func_wrap_async(
        STATE_MODULE,
        "set",
        |mut caller: Caller<'_, CommandState>,
         (key_ptr, key_len, value_ptr, value_len): (i32, i32, i32, i32)| {
            Box::new(async move {
                let (store, key) = match begin(&mut caller, key_ptr, key_len)? {
                    Ok(begun) => begun,
                    Err(code) => return Ok(code as i32),
                };
                let value = read(&mut caller, value_ptr, value_len)?;
                match blocking(move || store.set(&key, &value)).await {
                    Ok(()) => Ok(0),
                    Err(e) => Ok(refused(&caller.data().monitor, e)? as i32),
                }
            })
        },
    )?;
    linker.func_wrap_async(
        STATE_MODULE,
        "delete",
        |mut caller: Caller<'_, CommandState>, (key_ptr, key_len): (i32, i32)| {
            Box::new(async move {
                let (store, key) = match begin(&mut caller, key_ptr, key_len)? {
                    Ok(begun) => begun,
                    Err(code) => return Ok(code as i32),
                };
                match blocking(move || store.delete(&key)).await {
                    Ok(existed) => Ok(i32::from(existed)),
                    Err(e) => Ok(refused(&caller.data().monitor, e)? as i32),
                }
            })
        },
    )?;
    Ok(())
}

/// The invocation's state store and the key the guest passed.
type Begun = (Arc<dyn StateStore>, Vec<u8>);

/// The invocation's state store and the key the guest passed, or the code to return.
fn begin(
    caller: &mut Caller<'_, CommandState>,
    key_ptr: i32,
    key_len: i32,
) -> wasmtime::Result<Result<Begun, StateCode>> {
    let monitor = caller.data().monitor.clone();
    let store = match available(&monitor, caller.data().state.as_ref()) {
        Ok(store) => store,
        Err(code) => return Ok(Err(code)),
    };
    if let Err(code) = check_key(&monitor, length(key_len)?) {
        return Ok(Err(code));
    }
    let key = read(caller, key_ptr, key_len)?;
    Ok(Ok((store, key)))
}

/// The invocation's state, or a refusal recorded as a denial. Deployed functions that
/// import the state functions were granted `kv`; a pre-initialiser runs without state.
pub(crate) fn available(
    monitor: &Monitor,
    state: Option<&Arc<dyn StateStore>>,
) -> Result<Arc<dyn StateStore>, StateCode> {
    state.cloned().ok_or_else(|| {
        monitor.deny(
            "kv",
            "key-value state is not available here; grant it with `kv = true` under \
             [permissions]"
                .into(),
        );
        StateCode::Unavailable
    })
}

/// Refuses (and records) a key of no bytes or more than [`MAX_KEY_BYTES`].
pub(crate) fn check_key(monitor: &Monitor, len: usize) -> Result<(), StateCode> {
    if len == 0 || len > MAX_KEY_BYTES {
        monitor.deny(
            "kv",
            format!("a key of {len} bytes; keys have 1 to {MAX_KEY_BYTES} bytes"),
        );
        return Err(StateCode::BadKey);
    }
    Ok(())
}

/// Records a store's refusal as a denial and gives the guest's code for it; a store the
/// platform could not reach ends the guest instead ([`HostUnavailable`]): an error code the
/// guest might ignore would let it finish as if its write had been made.
pub(crate) fn refused(monitor: &Monitor, e: StateError) -> Result<StateCode, HostUnavailable> {
    match e {
        StateError::Full { .. } => {
            monitor.deny("kv-quota", e.to_string());
            Ok(StateCode::Full)
        }
        StateError::Unavailable(reason) => Err(HostUnavailable {
            what: "key-value state",
            reason,
        }),
    }
}

/// Runs a state operation on a blocking thread (stores may do I/O).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StateError::Unavailable(format!("the state task failed: {e}")))?
}

/// A guest-supplied length; a negative one is the guest's bug and traps it.
fn length(len: i32) -> wasmtime::Result<usize> {
    usize::try_from(len)
        .map_err(|_| wasmtime::format_err!("negative length {len} passed to {STATE_MODULE}"))
}

fn memory(caller: &mut Caller<'_, CommandState>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => wasmtime::bail!("{STATE_MODULE} needs the guest to export its `memory`"),
    }
}

/// Copies `len` bytes at `ptr` out of the guest's memory (bounds-checked: out of range traps).
fn read(caller: &mut Caller<'_, CommandState>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller)?;
    let start = ptr as u32 as usize;
    // Sliced before anything is allocated: a huge length cannot make the host allocate.
    match memory
        .data(&*caller)
        .get(start..start.saturating_add(length(len)?))
    {
        Some(bytes) => Ok(bytes.to_vec()),
        None => {
            wasmtime::bail!("{STATE_MODULE}: {len} bytes at {start} are outside the guest's memory")
        }
    }
}

fn write(caller: &mut Caller<'_, CommandState>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let memory = memory(caller)?;
    memory.write(&mut *caller, ptr as u32 as usize, bytes)?;
    Ok(())
}
