//! What kind of WebAssembly a function is. The kind is detected from the bytes at deploy time
//! and decides how an invocation is wired to the guest.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionKind {
    /// A WASI preview 1 command module: request body on stdin, response body from stdout.
    WasiCommand,
    /// A WASI 0.2 component exporting `wasi:http/incoming-handler` (the `wasi:http/proxy` world).
    WasiHttp,
    /// JavaScript run by a JavaScript plug-in: at deploy its code is evaluated into an image of
    /// the engine, which then runs like a WASI command.
    Js,
}

impl FunctionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionKind::WasiCommand => "wasi-command",
            FunctionKind::WasiHttp => "wasi-http",
            FunctionKind::Js => "js",
        }
    }
}

impl fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
