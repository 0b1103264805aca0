//! A `wasi:http/proxy` component: answers every request with a greeting that echoes the method
//! and path, echoes the request body back under `/echo`, and under `/fetch?URL` (an outgoing
//! HTTP request) and `/connect?ADDR` (a TCP connection) tries to reach the network and reports
//! what happened. The same .wasm runs under `wasmtime serve` and
//! under cella's HTTP pass-through.

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
