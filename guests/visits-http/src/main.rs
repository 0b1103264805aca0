//! Example function: counts its visits in the function's sealed key-value state, through the
//! `cella:state/store` interface cella offers to components granted `kv = true`. Any path
//! answers `visit N`.

wit_bindgen::generate!({
    path: "../../crates/cella-sandbox/wit/state.wit",
    world: "cella:state/stateful",
});

use cella::state::store;
use wstd::http::body::Body;
use wstd::http::{Error, Request, Response, StatusCode};

fn unavailable(what: &str, e: store::Error) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .body(format!("{what} failed: {e:?}\n").into())?)
}

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    let visits = match store::get(b"visits") {
        Ok(Some(value)) => String::from_utf8_lossy(&value).parse::<u64>().unwrap_or(0),
        Ok(None) => 0,
        Err(e) => return unavailable("reading the state", e),
    };
    let visits = visits + 1;
    if let Err(e) = store::set(b"visits", visits.to_string().as_bytes()) {
        return unavailable("writing the state", e);
    }
    Ok(Response::new(format!("visit {visits}\n").into()))
}
