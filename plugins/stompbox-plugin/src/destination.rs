//! Destination checks a policy needs: well-formed paths, prefixes with something after them,
//! patterns with wildcards, and whose a `/user/...` destination is.

/// `Err` with a message when `destination` does not start with `/` or has an empty, `.` or
/// `..` path segment (`/topic//x`, `/topic/../user/alice/queue/x`, `/topic/x/`): such paths
/// are how a client tries to slip past a prefix check, so a policy refuses them first.
pub fn check_clean(destination: &str) -> Result<(), String> {
    let bad_segment = destination
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if !destination.starts_with('/') || bad_segment {
        return Err(format!(
            "destination '{}' has an empty, '.' or '..' path segment",
            crate::printable(destination)
        ));
    }
    Ok(())
}

/// `destination` starts with `prefix` and has something after it (`/topic/` matches
/// `/topic/news`, not `/topic/`).
pub fn under(destination: &str, prefix: &str) -> bool {
    destination
        .strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty())
}

/// `destination` matches `pattern`, segment by segment: `*` stands for exactly one segment,
/// `**` (last only) for one or more, anything else for itself. `{user}` in a segment stands
/// for `user` (so `/user/{user}/**` is the user's own named destinations).
///
/// `matches("/topic/*/prices", "/topic/eu/prices", "")` is true;
/// `matches("/topic/**", "/topic", "")` is false.
pub fn matches(pattern: &str, destination: &str, user: &str) -> bool {
    let mut want = pattern.split('/');
    let mut have = destination.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some("**"), Some(seg)) => return !seg.is_empty() && want.next().is_none(),
            (Some("*"), Some(seg)) => {
                if seg.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(seg)) => {
                let expanded;
                let w = if w.contains("{user}") {
                    if user.is_empty() {
                        return false;
                    }
                    expanded = w.replace("{user}", user);
                    expanded.as_str()
                } else {
                    w
                };
                if w != seg {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Whose a user destination is, as a client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDestination<'a> {
    /// Spring's "mine": `/user/queue/...` or `/user/topic/...`; the node fills in the user.
    Own,
    /// `/user/{name}/...`: a named user's destination (the rest is `/queue/...` etc.).
    Named(&'a str),
    /// Not a user destination at all.
    NotUser,
}

/// Whose `destination` is: [`UserDestination::Own`] for `/user/queue/x`,
/// [`UserDestination::Named`] for `/user/alice/queue/x`, [`UserDestination::NotUser`] for
/// `/topic/x`.
///
/// A named user may contain `/` (`/user/a/b/queue/x` is user `a/b`), so `user_is` is the way
/// to ask "is this `alice`'s?".
pub fn user_destination(destination: &str) -> UserDestination<'_> {
    let Some(rest) = destination.strip_prefix("/user/") else {
        return UserDestination::NotUser;
    };
    if under(rest, "queue/") || under(rest, "topic/") {
        return UserDestination::Own;
    }
    match rest.split_once('/') {
        Some((name, _)) if !name.is_empty() => UserDestination::Named(name),
        _ => UserDestination::NotUser,
    }
}

/// `destination` is `user`'s own: `/user/queue/...`, `/user/topic/...`, or
/// `/user/{user}/...` naming `user` with something after it. Never for an anonymous `user`
/// (`""`) naming someone.
pub fn is_own(destination: &str, user: &str) -> bool {
    match user_destination(destination) {
        UserDestination::Own => true,
        UserDestination::NotUser => false,
        UserDestination::Named(_) => {
            !user.is_empty()
                && destination
                    .strip_prefix("/user/")
                    .is_some_and(|rest| under(rest, &format!("{user}/")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        for ok in ["/topic/a", "/user/queue/x", "/a"] {
            assert!(check_clean(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "topic/a",
            "/topic//a",
            "/topic/./a",
            "/topic/../user/x",
            "/topic/a/",
            "/",
        ] {
            assert!(
                check_clean(bad).unwrap_err().contains("path segment"),
                "{bad}"
            );
        }
    }

    #[test]
    fn prefixes_need_a_rest() {
        assert!(under("/topic/news", "/topic/"));
        assert!(!under("/topic/", "/topic/"));
        assert!(!under("/queue/x", "/topic/"));
    }

    #[test]
    fn patterns() {
        assert!(matches("/topic/*/prices", "/topic/eu/prices", ""));
        assert!(!matches("/topic/*/prices", "/topic/eu/x/prices", ""));
        assert!(!matches("/topic/*/prices", "/topic//prices", ""));
        assert!(matches("/topic/**", "/topic/a", ""));
        assert!(matches("/topic/**", "/topic/a/b/c", ""));
        assert!(!matches("/topic/**", "/topic", ""));
        assert!(!matches("/topic/**", "/topic/", ""));
        assert!(matches("/topic/news", "/topic/news", ""));
        assert!(!matches("/topic/news", "/topic/news/x", ""));
        assert!(matches("/user/{user}/**", "/user/alice/queue/x", "alice"));
        assert!(!matches("/user/{user}/**", "/user/alice/queue/x", "bob"));
        assert!(!matches("/user/{user}/**", "/user//queue/x", ""));
        assert!(matches("/topic/room-{user}", "/topic/room-bob", "bob"));
    }

    #[test]
    fn whose() {
        assert_eq!(user_destination("/user/queue/x"), UserDestination::Own);
        assert_eq!(user_destination("/user/topic/x"), UserDestination::Own);
        assert_eq!(
            user_destination("/user/alice/queue/x"),
            UserDestination::Named("alice")
        );
        assert_eq!(
            user_destination("/user/queue/"),
            UserDestination::Named("queue")
        );
        assert_eq!(user_destination("/topic/x"), UserDestination::NotUser);
        assert_eq!(user_destination("/user/"), UserDestination::NotUser);
        assert!(is_own("/user/queue/x", "bob"));
        assert!(is_own("/user/alice/queue/x", "alice"));
        assert!(!is_own("/user/alice/queue/x", "bob"));
        assert!(!is_own("/user/alice/queue/x", "ali"));
        assert!(!is_own("/user/ali/queue/x", "alice"));
        assert!(is_own("/user/a/b/queue/x", "a/b"));
        assert!(!is_own("/user/alice/queue/x", ""));
        assert!(!is_own("/topic/x", "alice"));
    }
}
