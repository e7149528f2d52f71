//! Destination names and what they mean: `/topic/...` broadcast, `/queue/...` competing
//! consumers, and Spring's `/user/...` user destinations.

/// Where a SUBSCRIBE listens or a SEND goes, once the `/user` prefix is resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `/topic/...`: every subscriber gets a copy.
    Topic(String),
    /// `/queue/...`: each message goes to one subscriber.
    Queue(String),
    /// A user destination: every session of `user` subscribed to `/user` + `dest` gets a copy.
    User {
        /// The user the destination belongs to.
        user: String,
        /// The destination without the `/user` prefix, e.g. `/queue/notice`.
        dest: String,
    },
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Neither `/topic/`, `/queue/` nor `/user/`.
    #[error("unknown destination '{0}': destinations start with /topic/, /queue/ or /user/")]
    UnknownPrefix(String),
    /// A `/user/...` subscription from a session that has no user.
    #[error("'{0}' is a user destination, and this session has no user (send a userid or login header on CONNECT)")]
    NoUser(String),
    /// A subscription to `/user/{name}/...` naming another user.
    #[error(
        "'{0}' belongs to another user: subscribe to /user/queue/... to receive your own messages"
    )]
    OtherUser(String),
    /// Longer than [`MAX_DESTINATION_BYTES`].
    #[error("a destination is {0} bytes; at most {MAX_DESTINATION_BYTES} are allowed")]
    TooLong(usize),
    /// `/user/{name}/...` sent without a name or a destination after it.
    #[error("'{0}' is not a user destination: send to /user/{{name}}/queue/... or /user/{{name}}/topic/...")]
    BadUserDestination(String),
}

const USER: &str = "/user/";

/// The longest destination name, in bytes. Names are kept per subscription and per cached
/// authorization verdict, so their size is bounded like everything else a client can make
/// the node hold.
pub const MAX_DESTINATION_BYTES: usize = 1024;

/// Refuses a destination name longer than [`MAX_DESTINATION_BYTES`].
pub fn check_length(dest: &str) -> Result<(), DestinationError> {
    if dest.len() > MAX_DESTINATION_BYTES {
        return Err(DestinationError::TooLong(dest.len()));
    }
    Ok(())
}

fn plain(dest: &str) -> Option<Target> {
    if let Some(rest) = dest.strip_prefix("/topic/") {
        (!rest.is_empty()).then(|| Target::Topic(dest.to_string()))
    } else if let Some(rest) = dest.strip_prefix("/queue/") {
        (!rest.is_empty()).then(|| Target::Queue(dest.to_string()))
    } else {
        None
    }
}

/// What a subscription to `dest` listens to, for a session acting as `user`.
/// `/user/queue/x` means "my own `/queue/x`", as in Spring; `/user/{me}/queue/x` is accepted
/// as the same, and naming another user is refused.
pub fn for_subscribe(dest: &str, user: Option<&str>) -> Result<Target, DestinationError> {
    if let Some(rest) = dest.strip_prefix(USER) {
        let mut inner = format!("/{rest}");
        if plain(&inner).is_none() {
            match (for_send(dest), user) {
                (
                    Ok(Target::User {
                        user: named,
                        dest: own,
                    }),
                    Some(me),
                ) if named == me => {
                    inner = own;
                }
                (Ok(Target::User { .. }), _) => {
                    return Err(DestinationError::OtherUser(dest.to_string()))
                }
                _ => return Err(DestinationError::UnknownPrefix(dest.to_string())),
            }
        }
        let Some(user) = user else {
            return Err(DestinationError::NoUser(dest.to_string()));
        };
        return Ok(Target::User {
            user: user.to_string(),
            dest: inner,
        });
    }
    plain(dest).ok_or_else(|| DestinationError::UnknownPrefix(dest.to_string()))
}

/// Where a message sent to `dest` goes: `/user/{name}/queue/x` reaches user `name`'s
/// subscriptions to `/user/queue/x`.
pub fn for_send(dest: &str) -> Result<Target, DestinationError> {
    check_length(dest)?;
    if let Some(rest) = dest.strip_prefix(USER) {
        let bad = || DestinationError::BadUserDestination(dest.to_string());
        let (user, inner) = rest.split_once('/').ok_or_else(bad)?;
        if user.is_empty() {
            return Err(bad());
        }
        let inner = format!("/{inner}");
        if plain(&inner).is_none() {
            return Err(bad());
        }
        return Ok(Target::User {
            user: user.to_string(),
            dest: inner,
        });
    }
    plain(dest).ok_or_else(|| DestinationError::UnknownPrefix(dest.to_string()))
}

/// The destination a user message carries in its MESSAGE frames: the one its subscribers used.
pub fn user_facing(dest: &str) -> String {
    format!("/user{dest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_queues() {
        assert_eq!(for_send("/topic/a"), Ok(Target::Topic("/topic/a".into())));
        assert_eq!(
            for_send("/queue/a/b"),
            Ok(Target::Queue("/queue/a/b".into()))
        );
        assert!(matches!(
            for_send("/topic/"),
            Err(DestinationError::UnknownPrefix(_))
        ));
        assert!(matches!(
            for_send("/app/x"),
            Err(DestinationError::UnknownPrefix(_))
        ));
        assert!(for_subscribe("", None).is_err());
    }

    #[test]
    fn user_subscription_is_the_sessions_own() {
        assert_eq!(
            for_subscribe("/user/queue/notice", Some("alice")),
            Ok(Target::User {
                user: "alice".into(),
                dest: "/queue/notice".into()
            })
        );
        assert!(matches!(
            for_subscribe("/user/queue/notice", None),
            Err(DestinationError::NoUser(_))
        ));
        assert!(for_subscribe("/user/elsewhere", Some("a")).is_err());
        assert_eq!(
            for_subscribe("/user/alice/queue/notice", Some("alice")),
            for_subscribe("/user/queue/notice", Some("alice"))
        );
        assert!(matches!(
            for_subscribe("/user/bob/queue/notice", Some("alice")),
            Err(DestinationError::OtherUser(_))
        ));
    }

    #[test]
    fn send_names_the_user() {
        assert_eq!(
            for_send("/user/bob/queue/notice"),
            Ok(Target::User {
                user: "bob".into(),
                dest: "/queue/notice".into()
            })
        );
        assert!(for_send("/user//queue/x").is_err());
        assert!(for_send("/user/bob").is_err());
        assert!(for_send("/user/bob/other/x").is_err());
        assert_eq!(user_facing("/queue/notice"), "/user/queue/notice");
    }
}
