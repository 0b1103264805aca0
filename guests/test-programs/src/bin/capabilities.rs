//! Tries what a function gets nothing of by default and reports each attempt, one line each:
//! `<probe>: denied (<reason>)` or `<probe>: GRANTED <detail>`.
fn main() {
    let files = ["/etc/passwd", "/", ".", "../", "/proc/self/environ"];
    for path in files {
        match std::fs::read(path) {
            Ok(bytes) => println!("read {path}: GRANTED {} bytes", bytes.len()),
            Err(e) => println!("read {path}: denied ({e})"),
        }
    }
    match std::fs::write("/tmp/cella-probe", b"x") {
        Ok(()) => println!("write /tmp/cella-probe: GRANTED"),
        Err(e) => println!("write /tmp/cella-probe: denied ({e})"),
    }
    let vars: Vec<(String, String)> = std::env::vars().collect();
    if vars.is_empty() {
        println!("env: denied (no variables)");
    } else {
        println!("env: GRANTED {vars:?}");
    }
    match std::env::var("HOME") {
        Ok(v) => println!("env HOME: GRANTED {v}"),
        Err(e) => println!("env HOME: denied ({e})"),
    }
    match std::net::TcpStream::connect("127.0.0.1:7070") {
        Ok(_) => println!("connect 127.0.0.1:7070: GRANTED"),
        Err(e) => println!("connect 127.0.0.1:7070: denied ({e})"),
    }
}
