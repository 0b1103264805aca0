//! Each tenant's share of the node's compiler: one deploy compiling at a time, and at most a
//! budget of compile time per window. The compiler itself runs one compilation at a time at
//! low priority (`cella_sandbox::Sandbox::compile_queued`); this keeps one tenant from
//! filling its queue or keeping it busy for everyone else.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cella_core::TenantName;

use crate::RuntimeError;

/// Tenants remembered at most; accounts whose window has passed are forgotten first.
const MAX_ACCOUNTS: usize = 100_000;

pub(crate) struct CompileBudget {
    /// Compile time one tenant may use per window.
    per_window: Duration,
    window: Duration,
    accounts: Mutex<HashMap<TenantName, Account>>,
}

#[derive(Clone, Copy)]
struct Account {
    since: Instant,
    used: Duration,
    compiling: bool,
}

/// A tenant's turn at the compiler: held while its deploy compiles; what it used is charged.
pub(crate) struct CompileTurn<'a> {
    budget: &'a CompileBudget,
    tenant: TenantName,
}

impl CompileBudget {
    pub(crate) fn new(per_window: Duration, window: Duration) -> Self {
        CompileBudget {
            per_window,
            window,
            accounts: Mutex::default(),
        }
    }

    /// A turn for `tenant`, or a refusal that says when to come back.
    pub(crate) fn admit(&self, tenant: &TenantName) -> Result<CompileTurn<'_>, RuntimeError> {
        let mut accounts = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        if accounts.len() >= MAX_ACCOUNTS && !accounts.contains_key(tenant) {
            accounts.retain(|_, a| a.compiling || a.since.elapsed() < self.window);
        }
        let account = accounts.entry(tenant.clone()).or_insert(Account {
            since: Instant::now(),
            used: Duration::ZERO,
            compiling: false,
        });
        if account.since.elapsed() >= self.window {
            account.since = Instant::now();
            account.used = Duration::ZERO;
        }
        if account.compiling {
            return Err(RuntimeError::CompileRefused(format!(
                "a deploy of tenant `{tenant}` is already compiling; deploy again when it has \
                 finished (one compiles at a time per tenant)"
            )));
        }
        if account.used >= self.per_window {
            let wait = self.window.saturating_sub(account.since.elapsed());
            return Err(RuntimeError::CompileRefused(format!(
                "tenant `{tenant}` has used its compile time on this node ({} s per {} s); \
                 deploy again in {} s (the operator sets `compile_seconds` in cella.toml)",
                self.per_window.as_secs(),
                self.window.as_secs(),
                wait.as_secs() + 1
            )));
        }
        account.compiling = true;
        Ok(CompileTurn {
            budget: self,
            tenant: tenant.clone(),
        })
    }
}

impl CompileTurn<'_> {
    /// Adds `took` to the tenant's use in this window.
    pub(crate) fn charge(&self, took: Duration) {
        self.account(|account| account.used += took);
    }

    fn account(&self, change: impl FnOnce(&mut Account)) {
        let mut accounts = self
            .budget
            .accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(account) = accounts.get_mut(&self.tenant) {
            change(account);
        }
    }
}

impl Drop for CompileTurn<'_> {
    fn drop(&mut self) {
        self.account(|account| account.compiling = false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> TenantName {
        TenantName::new("acme").unwrap()
    }

    #[test]
    fn one_compile_at_a_time_per_tenant_within_its_budget() {
        let budget = CompileBudget::new(Duration::from_secs(10), Duration::from_secs(600));
        let turn = budget.admit(&acme()).unwrap();
        let again = budget.admit(&acme()).err().unwrap();
        assert!(again.to_string().contains("already compiling"), "{again}");
        let other = budget.admit(&TenantName::new("beta").unwrap());
        assert!(other.is_ok(), "other tenants are not held up");
        turn.charge(Duration::from_secs(11));
        drop(turn);
        let spent = budget.admit(&acme()).err().unwrap();
        assert!(spent.to_string().contains("deploy again in"), "{spent}");
    }

    #[test]
    fn the_budget_comes_back_with_a_new_window() {
        let budget = CompileBudget::new(Duration::from_millis(1), Duration::from_millis(30));
        budget
            .admit(&acme())
            .unwrap()
            .charge(Duration::from_millis(5));
        assert!(budget.admit(&acme()).is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(budget.admit(&acme()).is_ok());
    }
}
