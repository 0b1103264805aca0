//! Lists in pages: what a caller asks for (a cursor and a limit), and pages of the short lists
//! kept whole (a tenant's keys, a function's triggers, the plug-ins). Long lists — tenants, a
//! tenant's functions, a function's versions — are paged by the registry, reading one page.

pub use cella_store::{MAX_PAGE, Page};

use crate::RuntimeError;

/// Items in a page when the caller does not say.
pub const DEFAULT_PAGE: usize = 100;

/// Which page of a list: after `cursor` (from the previous page; none: the first page), at
/// most `limit` items (none: [`DEFAULT_PAGE`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

impl PageRequest {
    /// The first page, at the most items a page may hold.
    pub fn all_first() -> Self {
        PageRequest {
            cursor: None,
            limit: Some(MAX_PAGE),
        }
    }

    /// The limit asked for, checked.
    pub(crate) fn limit(&self) -> Result<usize, RuntimeError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(RuntimeError::Invalid(format!(
                "limit {n} is out of range: a page holds 1 to {MAX_PAGE} items (default \
                 {DEFAULT_PAGE}); follow `next_cursor` for more"
            ))),
        }
    }
}

/// A page of `items`, a list kept whole and ordered by `id` (unique), after the item the
/// request's cursor names.
pub(crate) fn page_of<T>(
    mut items: Vec<T>,
    id: impl Fn(&T) -> String,
    request: &PageRequest,
) -> Result<Page<T>, RuntimeError> {
    let limit = request.limit()?;
    items.sort_by_key(|item| id(item));
    let start = match &request.cursor {
        None => 0,
        Some(cursor) => {
            let after = hex::decode(cursor)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(cella_store::RegistryError::BadCursor)?;
            items.partition_point(|item| id(item) <= after)
        }
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let next = if rest.len() > limit {
        rest.truncate(limit);
        rest.last().map(|last| hex::encode(id(last)))
    } else {
        None
    };
    Ok(Page { items: rest, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_kept_whole_comes_in_pages_in_order() {
        let items: Vec<String> = (0..7).rev().map(|i| format!("k{i}")).collect();
        let request = |cursor: Option<String>| PageRequest {
            cursor,
            limit: Some(3),
        };
        let first = page_of(items.clone(), String::clone, &request(None)).unwrap();
        assert_eq!(first.items, ["k0", "k1", "k2"]);
        let second = page_of(items.clone(), String::clone, &request(first.next)).unwrap();
        assert_eq!(second.items, ["k3", "k4", "k5"]);
        let last = page_of(items.clone(), String::clone, &request(second.next)).unwrap();
        assert_eq!(last.items, ["k6"]);
        assert_eq!(last.next, None);
        for limit in [0, MAX_PAGE + 1] {
            let request = PageRequest {
                cursor: None,
                limit: Some(limit),
            };
            assert!(matches!(
                page_of(items.clone(), String::clone, &request),
                Err(RuntimeError::Invalid(_))
            ));
        }
        let bad = PageRequest {
            cursor: Some("not hex".into()),
            limit: None,
        };
        assert!(page_of(items, String::clone, &bad).is_err());
    }
}
