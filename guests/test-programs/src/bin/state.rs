//! Uses the function's key-value state and environment through cella's host functions
//! (`cella:state/v1`). One command per invocation, from the arguments; prints one line:
//!
//! - `incr KEY`: adds one to the decimal counter under KEY and prints the new value;
//! - `get KEY`: prints the value, or `(absent)`;
//! - `put KEY SIZE`: stores SIZE bytes under KEY and prints the host's result code;
//! - `delete KEY`: prints 1 if the key existed, else 0;
//! - `env`: prints the environment, `NAME=VALUE` separated by spaces;
//! - `wild-pointer`: passes a key outside its memory (the host must trap it, not read).

use cella_state::{get, set};

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
                Ok(()) => println!("{}", now + 1),
                Err(code) => println!("error {code}"),
            }
        }
        ["get", key] => match get(key.as_bytes()) {
            Ok(Some(v)) => println!("{}", String::from_utf8_lossy(&v)),
            Ok(None) => println!("(absent)"),
            Err(code) => println!("error {code}"),
        },
        ["put", key, size] => {
            let value = vec![b'x'; size.parse().expect("SIZE is a number")];
            println!("{}", set(key.as_bytes(), &value).err().unwrap_or(0));
        }
        ["delete", key] => match cella_state::delete(key.as_bytes()) {
            Ok(existed) => println!("{}", i32::from(existed)),
            Err(code) => println!("error {code}"),
        },
        ["env"] => {
            let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{}", vars.join(" "));
        }
        ["wild-pointer"] => {
            let n = cella_state::get_outside_memory();
            println!("the host read outside the guest's memory: {n}");
        }
        _ => eprintln!("usage: state incr|get|put|delete KEY [SIZE] | env | wild-pointer"),
    }
}
