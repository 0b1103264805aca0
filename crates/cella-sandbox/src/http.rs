//! Serving one HTTP request with a `wasi:http/proxy` component, exactly as `wasmtime serve`
//! would, but in a fresh store under the function's limits, with outgoing requests going
//! only where its permissions allow (`outgoing.rs`).

use std::sync::Arc;

use bytes::Bytes;
use cella_core::Limits;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tokio::sync::oneshot;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::command::Grants;
use crate::engine::Sandbox;
use crate::error::RunError;
use crate::limits::{GRACE, MemoryLimiter, Tripwires, arm, crossed_limit, guest_failure};
use crate::monitor::Monitor;
use crate::outgoing::Outgoing;
use crate::pipes::{LogPipe, LogTail};
use crate::scratch::{Scratch, ScratchView};

/// The per-request world of a `wasi:http` component (the `T` of its `Store<T>`).
pub struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outgoing,
    limiter: MemoryLimiter,
    pub(crate) monitor: Arc<Monitor>,
    pub(crate) state: Option<Arc<dyn crate::StateStore>>,
    /// The invocation's private files, when its manifest grants `scratch_mib`.
    scratch: Option<Scratch>,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outgoing HTTP goes through [`Outgoing`]: only to the hosts the manifest lists, over TLS
/// verified in the node; every refusal is counted (see [`Sandbox::outgoing_denied`]) and
/// logged.
impl WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        self.send(request)
    }
}

/// Removes every network capability from a WASI context (they are off by default in wasmtime;
/// cella says so explicitly so that a change of default cannot open them).
pub(crate) fn deny_network(builder: &mut WasiCtxBuilder) -> &mut WasiCtxBuilder {
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
}

/// Most handles (descriptors, streams, pollables, bodies) one invocation may hold at once:
/// wasmtime's default of a million would let a guest tie up about 100 MB of the node's memory.
const MAX_RESOURCES: usize = 65_536;

fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HttpState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // In place of wasmtime-wasi's file system, which would reach the host's directories.
    crate::scratch::add_to_linker(&mut linker, |state: &mut HttpState| ScratchView {
        scratch: state.scratch.as_ref(),
        table: &mut state.table,
        monitor: &state.monitor,
    })?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::state_component::add_to_linker::<HttpState, wasmtime::component::HasSelf<HttpState>>(
        &mut linker,
        |state| state,
    )?;
    Ok(linker)
}

/// A complete response from a component, and what it logged.
#[derive(Debug)]
pub struct HttpResponse {
    pub response: http::Response<Bytes>,
    pub log: LogTail,
}

/// Aborts the guest's task when the request is abandoned (deadline, client gone).
struct AbortOnDrop(tokio::task::JoinHandle<wasmtime::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Failure {
    Timeout,
    Guest(wasmtime::Error),
    NoResponse(String),
}

impl Sandbox {
    /// Serves `request` with a fresh instance of `pre` and returns the whole response (its body
    /// capped at the output limit). `grants` are what its permissions give (the environment
    /// and the hosts outgoing HTTPS may reach).
    pub async fn serve_http(
        &self,
        pre: &ProxyPre<HttpState>,
        request: http::Request<Bytes>,
        limits: &Limits,
        grants: Grants,
    ) -> Result<HttpResponse, RunError> {
        let trip = Arc::new(Tripwires::default());
        let monitor = Arc::new(Monitor::default());
        let share = grants.cpu_share.clone();
        let log = LogPipe::new(self.config.log_tail_bytes, monitor.clone());
        let wasi = self
            .guest_wasi()
            .stdout(log.clone())
            .stderr(log.clone())
            .envs(&grants.env)
            .build();
        let mut store = Store::new(
            &self.engine,
            HttpState {
                wasi,
                http: WasiHttpCtx::new(),
                table: resource_table(),
                hooks: Outgoing::new(
                    grants.http,
                    self.outgoing.clone(),
                    monitor.clone(),
                    self.outgoing_denied.clone(),
                ),
                limiter: MemoryLimiter::new(limits, trip.clone()),
                monitor: monitor.clone(),
                state: grants.state,
                scratch: grants.scratch_bytes.map(Scratch::new),
            },
        );
        store.limiter(|s| &mut s.limiter);
        let counted = self.config.count_host_calls.then_some(monitor);
        arm(&mut store, limits, trip.clone(), counted, self.turns(share));
        let (pre, limits) = (pre.clone(), *limits);
        self.guests
            .run(async move {
                let limits = &limits;

                let (sender, receiver) = oneshot::channel();
                let request = request.map(Full::new);
                let setup = (|| -> wasmtime::Result<_> {
                    let req = store
                        .data_mut()
                        .http()
                        .new_incoming_request(Scheme::Http, request)?;
                    let out = store.data_mut().http().new_response_outparam(sender)?;
                    Ok((req, out))
                })();
                let (req, out) = setup.map_err(|e| RunError::NoResponse {
                    message: format!("the request could not be passed to the function: {e}"),
                    log: LogTail::default(),
                })?;
                let pre = pre.clone();
                let mut task = AbortOnDrop(tokio::spawn(async move {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await
                }));

                let output_limit = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
                let exchange = async {
                    let response = match receiver.await {
                        Ok(Ok(response)) => response,
                        Ok(Err(code)) => {
                            return Err(Failure::NoResponse(format!(
                                "it responded with error {code:?}"
                            )));
                        }
                        // The guest ended without setting a response: its task says why.
                        Err(_) => {
                            return Err(match (&mut task.0).await {
                                Ok(Err(e)) => Failure::Guest(e),
                                _ => Failure::NoResponse("it returned without setting one".into()),
                            });
                        }
                    };
                    let (parts, body) = response.into_parts();
                    let body = match Limited::new(body, output_limit).collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(e) => {
                            if e.downcast_ref::<LengthLimitError>().is_some() {
                                trip.trip_output();
                            }
                            // A guest that failed while streaming its body: report the guest's failure.
                            return Err(match (&mut task.0).await {
                                Ok(Err(guest)) => Failure::Guest(guest),
                                _ => Failure::NoResponse(format!("its response body failed: {e}")),
                            });
                        }
                    };
                    match (&mut task.0).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(Failure::Guest(e)),
                        Err(e) => return Err(Failure::NoResponse(format!("its task failed: {e}"))),
                    }
                    Ok(http::Response::from_parts(parts, body))
                };
                let result = match tokio::time::timeout(limits.timeout() + GRACE, exchange).await {
                    Ok(result) => result,
                    Err(_elapsed) => Err(Failure::Timeout),
                };
                drop(task);
                let log = log.tail();
                match result {
                    Err(Failure::Timeout) => Err(RunError::Timeout {
                        limit_ms: limits.timeout_ms,
                        log,
                    }),
                    Ok(response) => {
                        let log = crossed_limit(&trip, limits, log)?;
                        Ok(HttpResponse { response, log })
                    }
                    Err(Failure::Guest(e)) => {
                        let log = crossed_limit(&trip, limits, log)?;
                        Err(guest_failure(e, log))
                    }
                    Err(Failure::NoResponse(message)) => {
                        let log = crossed_limit(&trip, limits, log)?;
                        Err(RunError::NoResponse { message, log })
                    }
                }
            })
            .await
    }
}
