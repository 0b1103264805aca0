//! Key-value state for `wasi:http` components: the host side of the `cella:state/store`
//! interface (`wit/state.wit`), over the same [`StateStore`](crate::StateStore) as the
//! preview 1 functions. Refusals are errors for the guest and denials in the log; a store
//! the platform could not reach ends the guest ([`HostUnavailable`]).

use crate::error::HostUnavailable;
use crate::http::HttpState;
use crate::state::{self, StateCode, StateError, blocking};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/state.wit",
        world: "cella:state/stateful",
        // Trappable: a store the platform cannot reach ends the guest, never an error value.
        imports: { default: async | trappable },
    });
}

pub(crate) use bindings::cella::state::store::{Error, Host, add_to_linker};

/// The import name of the interface, as components name it.
pub const STATE_INTERFACE: &str = "cella:state/store";

impl HttpState {
    /// The state store, or the refusal for the guest (a component without `kv` is refused
    /// at deploy, so this is reached only where no state exists, such as pre-initialisation).
    fn state(&self, key: &[u8]) -> Result<std::sync::Arc<dyn crate::StateStore>, Error> {
        let store = state::available(&self.monitor, self.state.as_ref()).map_err(error)?;
        state::check_key(&self.monitor, key.len()).map_err(error)?;
        Ok(store)
    }

    fn refused(&self, e: StateError) -> Result<Error, HostUnavailable> {
        state::refused(&self.monitor, e).map(error)
    }

    /// The guest's answer: a value, a refusal, or (platform unavailable) the end of the guest.
    fn answer<T>(&self, result: Result<T, StateError>) -> wasmtime::Result<Result<T, Error>> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(e) => Ok(Err(self.refused(e)?)),
        }
    }
}

/// The interface's error for a refusal's code.
fn error(code: StateCode) -> Error {
    match code {
        StateCode::BadKey => Error::BadKey,
        StateCode::Full => Error::Full,
        StateCode::NotFound | StateCode::Unavailable => Error::Unavailable,
    }
}

impl Host for HttpState {
    async fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let store = match self.state(&key) {
            Ok(store) => store,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let result = blocking(move || store.get(&key)).await;
        self.answer(result)
    }

    async fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        let store = match self.state(&key) {
            Ok(store) => store,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let result = blocking(move || store.set(&key, &value)).await;
        self.answer(result)
    }

    async fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<Result<bool, Error>> {
        let store = match self.state(&key) {
            Ok(store) => store,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let result = blocking(move || store.delete(&key)).await;
        self.answer(result)
    }
}
