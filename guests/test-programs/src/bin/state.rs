//! Uses the function's key-value state and environment through cella's host functions
//! (`cella:state/v1`). One command per invocation, from the arguments; prints one line:
//!
//! - `incr KEY`: adds one to the decimal counter under KEY and prints the new value;
//! - `get KEY`: prints the value, or `(absent)`;
//! - `put KEY SIZE`: stores SIZE bytes under KEY and prints the host's result code;
//! - `delete KEY`: prints 1 if the key existed, else 0;
//! - `env`: prints the environment, `NAME=VALUE` separated by spaces;
//! - `wild-pointer`: passes a key outside its memory (the host must trap it, not read).

#[link(wasm_import_module = "cella:state/v1")]
unsafe extern "C" {
    #[link_name = "get"]
    fn state_get(key: *const u8, key_len: usize, buf: *mut u8, buf_len: usize) -> i64;
    #[link_name = "set"]
    fn state_set(key: *const u8, key_len: usize, value: *const u8, value_len: usize) -> i32;
    #[link_name = "delete"]
    fn state_delete(key: *const u8, key_len: usize) -> i32;
}

/// The value under `key`: `Ok(None)` if absent, `Err(code)` if the host refused.
fn get(key: &[u8]) -> Result<Option<Vec<u8>>, i64> {
    let mut buf = vec![0u8; 64];
    loop {
        // SAFETY: both pointers and lengths describe live buffers of this program.
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

fn set(key: &[u8], value: &[u8]) -> i32 {
    // SAFETY: both pointers and lengths describe live buffers of this program.
    unsafe { state_set(key.as_ptr(), key.len(), value.as_ptr(), value.len()) }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["incr", key] => {
            let now = match get(key.as_bytes()) {
                Ok(Some(v)) => String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0),
                Ok(None) => 0,
                Err(code) => return println!("error {code}"),
            };
            match set(key.as_bytes(), (now + 1).to_string().as_bytes()) {
                0 => println!("{}", now + 1),
                code => println!("error {code}"),
            }
        }
        ["get", key] => match get(key.as_bytes()) {
            Ok(Some(v)) => println!("{}", String::from_utf8_lossy(&v)),
            Ok(None) => println!("(absent)"),
            Err(code) => println!("error {code}"),
        },
        ["put", key, size] => {
            let value = vec![b'x'; size.parse().expect("SIZE is a number")];
            println!("{}", set(key.as_bytes(), &value));
        }
        ["delete", key] => {
            // SAFETY: the key is a live buffer of this program.
            println!("{}", unsafe { state_delete(key.as_ptr(), key.len()) });
        }
        ["env"] => {
            let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{}", vars.join(" "));
        }
        ["wild-pointer"] => {
            // SAFETY: deliberately not: the host must refuse a range outside this memory.
            let wild = (usize::MAX - 8) as *const u8;
            let n = unsafe { state_get(wild, 8, std::ptr::null_mut(), 0) };
            println!("the host read outside the guest's memory: {n}");
        }
        _ => eprintln!("usage: state incr|get|put|delete KEY [SIZE] | env | wild-pointer"),
    }
}
