//! Reading the tenant's settings (`[tenants.settings]`, strings only): lists and the channel
//! code table, in the formats every example plugin shares.

use crate::host;

/// The non-empty, trimmed items of a comma-separated value (`" a, b ,,c"` → `a`, `b`, `c`).
pub fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Setting `key` as a list ([`list`]); `default` when it is not set. An empty setting is an
/// empty list, not the default.
pub fn list_or(key: &str, default: &str) -> Vec<String> {
    let value = host::setting(key).unwrap_or_else(|| default.to_string());
    list(&value).map(str::to_string).collect()
}

/// Looks `code` up in a channel table, `"CODE=/destination,CODE2=/other"` (spaces around items,
/// codes and destinations are ignored; codes are case-sensitive; the first match wins). `None`
/// when the table or the code is missing, or the code maps to nothing.
pub fn channel(table: Option<&str>, code: &str) -> Option<String> {
    list(table?)
        .filter_map(|item| item.split_once('='))
        .find(|(c, _)| c.trim() == code)
        .map(|(_, dest)| dest.trim().to_string())
        .filter(|dest| !dest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(list(" a, b ,,c").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(list(" ").count(), 0);
    }

    #[test]
    fn channels() {
        let table = Some(" ORDER_STATUS = /queue/orders , NEWS=/topic/news,,BROKEN, EMPTY=");
        assert_eq!(
            channel(table, "ORDER_STATUS").as_deref(),
            Some("/queue/orders")
        );
        assert_eq!(channel(table, "NEWS").as_deref(), Some("/topic/news"));
        assert_eq!(channel(table, "news"), None);
        assert_eq!(channel(table, "BROKEN"), None);
        assert_eq!(channel(table, "EMPTY"), None);
        assert_eq!(channel(table, ""), None);
        assert_eq!(channel(None, "NEWS"), None);
        assert_eq!(
            channel(Some("A=/topic/1,A=/topic/2"), "A").as_deref(),
            Some("/topic/1")
        );
    }
}
