//! A `wasi:http/proxy` component: answers every request with a greeting that echoes the method
//! and path, echoes the request body back under `/echo`, and under `/fetch?URL` (an outgoing
//! HTTP request) and `/connect?ADDR` (a TCP connection) tries to reach the network and reports
//! what happened; `/scratch` exercises the private scratch directory (`/tmp`) a manifest may
//! grant. The same .wasm runs under `wasmtime serve` and under cella's HTTP pass-through.

use std::fmt::Write as _;
use std::fs;

/// Where cella mounts a function's private scratch directory (`scratch_mib`).
const SCRATCH: &str = "/tmp";

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/echo" => {
            let body = request.body_mut().contents().await?.to_vec();
            Ok(Response::new(body.into()))
        }
        "/fetch" => {
            let target = request
                .uri()
                .query()
                .unwrap_or("http://example.com/")
                .to_owned();
            let outgoing = Request::get(target.as_str()).body(Body::empty())?;
            let report = match wstd::http::Client::new().send(outgoing).await {
                Ok(mut response) => {
                    let status = response.status();
                    let body = response.body_mut().contents().await?.to_vec();
                    let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                    format!("fetch {target}: GRANTED {status} {body}\n")
                }
                Err(e) => format!("fetch {target}: denied ({e})\n"),
            };
            Ok(Response::new(report.into()))
        }
        "/connect" => {
            let target = request.uri().query().unwrap_or("127.0.0.1:80").to_owned();
            let report = match std::net::TcpStream::connect(target.as_str()) {
                Ok(_) => format!("connect {target}: GRANTED\n"),
                Err(e) => format!("connect {target}: denied ({e})\n"),
            };
            Ok(Response::new(report.into()))
        }
        "/scratch" => Ok(Response::new(scratch_report().into())),
        "/teapot" => Ok(Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .header("x-hello", "short and stout")
            // A function cannot pass itself off as the platform: cella drops this header.
            .header("cella-error", "forged")
            .body("I'm a teapot\n".into())?),
        _ => Ok(Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .body(
                format!(
                    "Hello from wasi:http/proxy! method={} path={path}\n",
                    request.method()
                )
                .into(),
            )?),
    }
}

/// Uses the scratch directory as a program would and reports each step: what an earlier
/// invocation left there, writing, reading back and renaming files, a path that tries to
/// leave the directory, and filling it until the platform refuses.
fn scratch_report() -> String {
    let at = |path: &str| format!("{SCRATCH}/{path}");
    let mut out = String::new();
    let entries = fs::read_dir(SCRATCH).map(|d| d.count());
    let _ = writeln!(out, "entries at start: {entries:?}");
    if entries.is_err() {
        return out;
    }
    let steps = || -> std::io::Result<String> {
        fs::create_dir_all(at("work/sub"))?;
        fs::write(at("work/sub/note.txt"), "private")?;
        fs::rename(at("work/sub/note.txt"), at("work/moved.txt"))?;
        let mut names: Vec<String> = fs::read_dir(at("work"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        let text = fs::read_to_string(at("work/moved.txt"))?;
        let size = fs::metadata(at("work/moved.txt"))?.len();
        Ok(format!("{text} ({size} bytes) in {names:?}"))
    };
    let _ = writeln!(out, "read back: {:?}", steps().map_err(|e| e.to_string()));
    let escape = fs::read(at("../etc/passwd")).map(|b| b.len());
    let _ = writeln!(out, "escape: {:?}", escape.map_err(|e| e.kind()));
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0usize;
    let full = {
        use std::io::Write as _;
        match fs::File::create(at("fill")) {
            Ok(mut file) => loop {
                if let Err(e) = file.write_all(&chunk) {
                    break e.to_string();
                }
                written += chunk.len();
            },
            Err(e) => e.to_string(),
        }
    };
    let _ = writeln!(out, "filled {} KiB, then: {full}", written / 1024);
    let freed = fs::remove_file(at("fill")).and_then(|()| fs::write(at("again"), "ok"));
    let _ = writeln!(out, "after removing it: {freed:?}");
    out
}
