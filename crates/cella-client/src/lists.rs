//! Lists in pages: every list of the API answers one page (`limit` items at most, 100 unless
//! asked otherwise, 1,000 at most) and a `next_cursor` while more follow. The `*_page` calls
//! fetch one page; the plain calls (`functions`, `tenants`, ...) follow the cursors to the end.

use cella_core::{FunctionRecord, FunctionVersion, Plugin};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::{Client, ClientError, TenantInfo, TenantKey, segment};

/// The most items one page may hold.
pub const MAX_PAGE: usize = 1000;

/// Which page to fetch: after `cursor` (the `next_cursor` of the page before; none: the first),
/// at most `limit` items (none: the server's default, 100).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paging {
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// One page of a list, and the cursor of the next (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl Client {
    /// A page of the tenants (admin token).
    pub async fn tenants_page(&self, paging: &Paging) -> Result<Page<TenantInfo>, ClientError> {
        self.page_of("/v1/tenants", "tenants", paging).await
    }

    /// Every tenant (admin token).
    pub async fn tenants(&self) -> Result<Vec<TenantInfo>, ClientError> {
        self.all_of("/v1/tenants", "tenants").await
    }

    /// A page of the functions this tenant owns (current versions).
    pub async fn functions_page(
        &self,
        paging: &Paging,
    ) -> Result<Page<FunctionRecord>, ClientError> {
        self.page_of("/v1/functions", "functions", paging).await
    }

    /// Every function this tenant owns (current versions).
    pub async fn functions(&self) -> Result<Vec<FunctionRecord>, ClientError> {
        self.all_of("/v1/functions", "functions").await
    }

    /// A page of the kept versions of function `name`.
    pub async fn versions_page(
        &self,
        name: &str,
        paging: &Paging,
    ) -> Result<Page<FunctionVersion>, ClientError> {
        let path = format!("/v1/functions/{}/versions", segment(name));
        self.page_of(&path, "versions", paging).await
    }

    /// A page of this tenant's keys, revoked ones included.
    pub async fn keys_page(&self, paging: &Paging) -> Result<Page<TenantKey>, ClientError> {
        self.page_of("/v1/keys", "keys", paging).await
    }

    /// Every key of this tenant, revoked ones included.
    pub async fn keys(&self) -> Result<Vec<TenantKey>, ClientError> {
        self.all_of("/v1/keys", "keys").await
    }

    /// A page of the registered plug-ins.
    pub async fn plugins_page(&self, paging: &Paging) -> Result<Page<Plugin>, ClientError> {
        self.page_of("/v1/plugins", "plugins", paging).await
    }

    /// Every registered plug-in.
    pub async fn plugins(&self) -> Result<Vec<Plugin>, ClientError> {
        self.all_of("/v1/plugins", "plugins").await
    }

    /// A page of function `name`'s triggers.
    pub async fn triggers_page(
        &self,
        name: &str,
        paging: &Paging,
    ) -> Result<Page<serde_json::Value>, ClientError> {
        let path = format!("/v1/functions/{}/triggers", segment(name));
        self.page_of(&path, "triggers", paging).await
    }

    /// Every trigger of function `name`.
    pub async fn triggers(&self, name: &str) -> Result<Vec<serde_json::Value>, ClientError> {
        let path = format!("/v1/functions/{}/triggers", segment(name));
        self.all_of(&path, "triggers").await
    }

    /// One page of the list at `path`, whose items the answer holds under `key`.
    async fn page_of<T: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
        paging: &Paging,
    ) -> Result<Page<T>, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(cursor) = &paging.cursor {
            query.push(("cursor", cursor.clone()));
        }
        if let Some(limit) = paging.limit {
            query.push(("limit", limit.to_string()));
        }
        let mut answer: serde_json::Map<String, serde_json::Value> = self
            .json(self.request(Method::GET, path).query(&query))
            .await?;
        let protocol = |detail: String| ClientError::Protocol {
            url: self.base.clone(),
            detail,
        };
        let items = answer
            .remove(key)
            .ok_or_else(|| protocol(format!("the answer to GET {path} has no `{key}`")))?;
        let items = serde_json::from_value(items)
            .map_err(|e| protocol(format!("the `{key}` of GET {path}: {e}")))?;
        let next_cursor = match answer.remove("next_cursor") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(next)) => Some(next),
            Some(other) => return Err(protocol(format!("`next_cursor` is not a string: {other}"))),
        };
        Ok(Page { items, next_cursor })
    }

    /// Every item of the list at `path`, page after page.
    async fn all_of<T: DeserializeOwned>(
        &self,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, ClientError> {
        every_page(async |paging: &Paging| self.page_of(path, key, paging).await).await
    }
}

/// Every item of a list, fetching page after page with `page` (the largest pages there are)
/// until no cursor comes back.
pub async fn every_page<T>(
    page: impl AsyncFn(&Paging) -> Result<Page<T>, ClientError>,
) -> Result<Vec<T>, ClientError> {
    let mut all = Vec::new();
    let mut paging = Paging {
        cursor: None,
        limit: Some(MAX_PAGE),
    };
    loop {
        let next = page(&paging).await?;
        all.extend(next.items);
        match next.next_cursor {
            // A server handing out the same cursor again would make this loop forever.
            Some(cursor) if paging.cursor.as_ref() == Some(&cursor) => {
                return Err(ClientError::Protocol {
                    url: String::new(),
                    detail: "the server handed out the same list cursor twice".into(),
                });
            }
            Some(cursor) => paging.cursor = Some(cursor),
            None => return Ok(all),
        }
    }
}
