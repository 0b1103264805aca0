//! Chains: `a | b | c` inside the trusted process. Each step's output becomes the next step's
//! input in memory — no trip through the gateway, no re-encryption, nothing written anywhere —
//! and each step runs in its own fresh instance. Every step is authorized before the first one
//! runs, so a chain the caller may not run in full does nothing; a failing step fails the
//! whole chain and no intermediate result leaves the node. One receipt covers the chain.

use std::time::Instant;

use bytes::Bytes;
use cella_core::FunctionKind;
use cella_sandbox::CommandInput;
use cella_store::Principal;

use crate::RuntimeError;
use crate::platform::{InvokeOptions, InvokeOutput, Platform, Receipted};

/// The most steps one chain may have.
pub const MAX_CHAIN_STEPS: usize = 16;

impl Platform {
    /// Runs `steps` (each `name` or `name@version`, WASI command or JavaScript functions) as
    /// a chain on `input`: the last step's output is returned with a receipt naming every step.
    pub async fn invoke_chain(
        &self,
        caller: &Principal,
        steps: &[String],
        options: &InvokeOptions,
        input: Bytes,
    ) -> Result<InvokeOutput, RuntimeError> {
        if steps.is_empty() || steps.len() > MAX_CHAIN_STEPS {
            return Err(RuntimeError::Invalid(format!(
                "a chain has 1 to {MAX_CHAIN_STEPS} steps, not {}; name them in order \
                 (`?step=a&step=b`, or `cella chain a b`)",
                steps.len()
            )));
        }
        if options.expect.is_some() {
            return Err(RuntimeError::Invalid(
                "expect-hash names one function; pin each step of a chain with `name@version` \
                 instead"
                    .into(),
            ));
        }
        crate::platform::check_nonce(options)?;
        // All or nothing: a step the caller may not invoke, or that a chain cannot run, stops
        // the chain before anything runs. (Each step is authorized again when it runs: access
        // may change in between.)
        for (index, step) in steps.iter().enumerate() {
            let record = self
                .authorize_invoke(caller, step)
                .map_err(|e| in_step(index, steps.len(), step, e))?;
            if record.kind == FunctionKind::WasiHttp {
                return Err(RuntimeError::WrongKind {
                    name: record.name,
                    kind: record.kind,
                    hint: "a chain runs command and JavaScript functions, which read their input \
                           and write their output; call a `wasi-http` function on its own",
                });
            }
        }
        let started = Instant::now();
        let started_at = self.now_rfc3339();
        let input_hash = cella_receipt::sha256(&input);
        let mut data = input;
        let mut ran = Vec::with_capacity(steps.len());
        let mut last = None;
        for (index, step) in steps.iter().enumerate() {
            let stdin = std::mem::take(&mut data);
            let input = CommandInput {
                stdin,
                ..CommandInput::default()
            };
            let (function, output, invocation_id) = self
                .invoke_step(caller, step, None, input)
                .await
                .map_err(|e| in_step(index, steps.len(), step, e))?;
            data = output.stdout.clone();
            ran.push(function);
            last = Some((output, invocation_id));
        }
        let (output, invocation_id) = last.expect("a chain has at least one step");
        Ok(self.answer(
            ran,
            invocation_id,
            output,
            Receipted {
                args_hash: cella_receipt::args_hash(&[]),
                input_hash,
                started,
                started_at,
                nonce: options.nonce.as_deref(),
            },
        ))
    }
}

/// Says which step failed; the error keeps its code (a 403 stays a 403).
fn in_step(index: usize, count: usize, step: &str, error: RuntimeError) -> RuntimeError {
    tracing::debug!(step, index, "chain step failed: {error}");
    match error {
        RuntimeError::Forbidden(message) => RuntimeError::Forbidden(format!(
            "step {} of {count} (`{step}`): {message}",
            index + 1
        )),
        other => other,
    }
}
