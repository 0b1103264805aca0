//! The function's sealed key-value state, for WASI commands running on cella: safe wrappers
//! of the `cella:state/v1` host functions. A module that uses them imports them, so it needs
//! `kv = true` under `[permissions]` in its manifest.
//!
//! Errors are the node's negative codes: `-2` a key of no bytes or more than 256, `-3` the
//! state would pass its limit (nothing was written), `-4` the state is unavailable (not
//! granted, or the node could not reach it).

#[link(wasm_import_module = "cella:state/v1")]
unsafe extern "C" {
    #[link_name = "get"]
    fn state_get(key: *const u8, key_len: usize, buf: *mut u8, buf_len: usize) -> i64;
    #[link_name = "set"]
    fn state_set(key: *const u8, key_len: usize, value: *const u8, value_len: usize) -> i32;
    #[link_name = "delete"]
    fn state_delete(key: *const u8, key_len: usize) -> i32;
}

/// What a negative result means, in a sentence.
pub fn describe(code: i64) -> String {
    match code {
        -2 => "keys have 1 to 256 bytes".into(),
        -3 => "the function's state is full (delete keys or store less)".into(),
        -4 => "state is unavailable (the function needs `kv = true` under [permissions])".into(),
        other => format!("error {other}"),
    }
}

/// The value under `key`: `Ok(None)` if absent.
pub fn get(key: &[u8]) -> Result<Option<Vec<u8>>, i64> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: both pointers and lengths describe live buffers of this module.
        let n = unsafe { state_get(key.as_ptr(), key.len(), buf.as_mut_ptr(), buf.len()) };
        match n {
            -1 => return Ok(None),
            n if n < 0 => return Err(n),
            n if n as usize <= buf.len() => {
                buf.truncate(n as usize);
                return Ok(Some(buf));
            }
            n => buf.resize(n as usize, 0),
        }
    }
}

/// Stores `value` under `key`.
pub fn set(key: &[u8], value: &[u8]) -> Result<(), i64> {
    // SAFETY: both pointers and lengths describe live buffers of this module.
    match unsafe { state_set(key.as_ptr(), key.len(), value.as_ptr(), value.len()) } {
        0 => Ok(()),
        code => Err(code.into()),
    }
}

/// Removes `key`; whether it existed.
pub fn delete(key: &[u8]) -> Result<bool, i64> {
    // SAFETY: the key is a live buffer of this module.
    match unsafe { state_delete(key.as_ptr(), key.len()) } {
        code if code < 0 => Err(code.into()),
        existed => Ok(existed == 1),
    }
}

/// Calls `get` with a key outside this module's memory: the node must trap the guest rather
/// than read (for the test suite's `wild-pointer` check).
pub fn get_outside_memory() -> i64 {
    let wild = (usize::MAX - 8) as *const u8;
    // SAFETY: deliberately not: the host must refuse a range outside this memory.
    unsafe { state_get(wild, 8, std::ptr::null_mut(), 0) }
}
