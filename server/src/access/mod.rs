//! Access control: who may connect, from where, and what each connection may do.
//!
//! - **Tokens** ([`token`]): a client authenticates with a JWT (`{"op":"auth","token":…}`); the
//!   token names the user and may grant ops on channel patterns.
//! - **Channel rules** ([`policy`]): the config file's `[[channels]]` entries say what anonymous
//!   and authenticated connections may do on which channels, and each channel's trim.
//! - **Protected mode**: a server with neither tokens nor rules runs *open* (every op allowed),
//!   like a fresh Redis, but only for loopback peers unless `--open` says otherwise.
//! - **Origins**: browsers' WebSocket requests whose `Origin` does not match the `Host` they are
//!   sent to are refused unless listed with `--allowed-origin`.
//!
//! Checks here run before the application's [`crate::Hooks`], which can refuse more.

pub mod glob;
pub mod policy;
pub mod token;

pub use self::glob::{Glob, GlobError};
pub use self::policy::{ChannelRule, Grant, Op, Ops, Policy, Verdict};
pub use self::token::{Identity, TokenError, TokenVerifier};

use std::net::IpAddr;

/// The access settings of a server.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Verifies connection tokens; `None`: the server accepts none.
    pub tokens: Option<TokenVerifier>,
    /// The `[[channels]]` rules; empty with tokens configured means "the tokens' grants decide".
    pub rules: Vec<ChannelRule>,
    /// With neither tokens nor rules: serve non-loopback peers too (`--open`).
    pub open: bool,
    /// Origins allowed besides the request's own host (`*`: any).
    pub allowed_origins: Vec<String>,
}

/// What the access settings decide, per connection and request.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    tokens: Option<TokenVerifier>,
    /// `None`: open mode, every op allowed.
    policy: Option<Policy>,
    open_to_all: bool,
    allowed_origins: Vec<String>,
}

impl Access {
    pub(crate) fn new(config: &AccessConfig) -> Access {
        let guarded = config.tokens.is_some() || !config.rules.is_empty();
        let policy = guarded.then(|| {
            if config.rules.is_empty() {
                // Tokens only: nothing for anonymous connections, the grants decide the rest.
                let everything = Glob::new("*").expect("a valid pattern");
                Policy::new(vec![ChannelRule {
                    pattern: everything,
                    anonymous: Ops::NONE,
                    authenticated: Ops::NONE,
                    maxlen: None,
                    client_maxlen: true,
                    publish_rate: None,
                }])
            } else {
                Policy::new(config.rules.clone())
            }
        });
        Access {
            tokens: config.tokens.clone(),
            policy,
            open_to_all: config.open,
            allowed_origins: config.allowed_origins.clone(),
        }
    }

    /// Why a WebSocket from `peer` is refused, if it is: open mode serves loopback only.
    pub(crate) fn refuse_peer(&self, peer: IpAddr) -> Option<String> {
        if self.policy.is_some() || self.open_to_all || peer.to_canonical().is_loopback() {
            return None;
        }
        Some(format!(
            "this server runs open (no --token-secret, --token-public-key or --config channel rules), \
             so it serves loopback clients only and refused {peer}; secure it with tokens or channel \
             rules, or pass --open to serve everyone with every permission"
        ))
    }

    /// Why a request with this `Origin` sent to this `Host` is refused, if it is. Requests
    /// without `Origin` (not from a browser) pass.
    pub(crate) fn refuse_origin(&self, origin: Option<&str>, host: Option<&str>) -> Option<String> {
        let origin = origin?;
        if self.allowed_origins.iter().any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin)) {
            return None;
        }
        if host.is_some_and(|host| same_host(origin, host)) {
            return None;
        }
        Some(format!("origin {origin} is not allowed: add it with --allowed-origin"))
    }

    /// Verifies a token.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        match &self.tokens {
            Some(verifier) => verifier.verify(token),
            None => {
                Err(TokenError("this server accepts no tokens (it has no --token-secret or --token-public-key)".into()))
            }
        }
    }

    /// The name consumer `consumer` of a connection with `identity` has in storage. Under access
    /// control it is scoped to the user (`<len>:<user>:<consumer>`, or `anon:<consumer>`), so two
    /// users' `w1` are different consumers and nobody can name another user's; an open server
    /// keeps names as they are.
    pub(crate) fn consumer_name(&self, identity: Option<&Identity>, consumer: &str) -> String {
        match (&self.policy, identity) {
            (None, _) => consumer.to_owned(),
            (Some(_), Some(identity)) => format!("{}:{}:{consumer}", identity.user.len(), identity.user),
            (Some(_), None) => format!("anon:{consumer}"),
        }
    }

    /// What a connection with `identity` may do on `channel`.
    pub(crate) fn verdict(&self, channel: &str, identity: Option<&Identity>) -> Verdict {
        match &self.policy {
            None => Verdict { ops: Ops::ALL, maxlen: None, client_maxlen: true, publish_rate: None },
            Some(policy) => policy.verdict(channel, identity.map(|i| i.grants.as_slice())),
        }
    }
}

/// Whether the origin `scheme://host[:port]` names `host` (the `Host` header), default ports
/// included.
fn same_host(origin: &str, host: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    with_port(rest, default_port) == with_port(host, default_port)
}

/// `host[:port]` lower-cased, with the default port added when none is given.
fn with_port(authority: &str, default_port: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    if has_port { authority } else { format!("{authority}:{default_port}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_match_the_host_unless_listed() {
        let access = Access::new(&AccessConfig::default());
        assert_eq!(access.refuse_origin(None, Some("a:1")), None, "not a browser");
        assert_eq!(access.refuse_origin(Some("http://chat.example"), Some("chat.example")), None);
        assert_eq!(access.refuse_origin(Some("http://chat.example"), Some("chat.example:80")), None);
        assert_eq!(access.refuse_origin(Some("https://chat.example"), Some("chat.example:443")), None);
        assert_eq!(access.refuse_origin(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")), None);
        assert_eq!(access.refuse_origin(Some("http://[::1]:8080"), Some("[::1]:8080")), None);
        assert!(access.refuse_origin(Some("https://evil.example"), Some("chat.example")).is_some());
        assert!(access.refuse_origin(Some("http://127.0.0.1:9999"), Some("127.0.0.1:8080")).is_some());
        assert!(access.refuse_origin(Some("null"), Some("chat.example")).is_some());
        assert!(access.refuse_origin(Some("http://chat.example"), None).is_some());
        let listed =
            Access::new(&AccessConfig { allowed_origins: vec!["https://app.example".into()], ..Default::default() });
        assert_eq!(listed.refuse_origin(Some("https://app.example"), Some("api.example")), None);
        let any = Access::new(&AccessConfig { allowed_origins: vec!["*".into()], ..Default::default() });
        assert_eq!(any.refuse_origin(Some("https://evil.example"), Some("api.example")), None);
    }

    #[test]
    fn open_mode_serves_loopback_only_unless_told() {
        let access = Access::new(&AccessConfig::default());
        assert_eq!(access.verdict("any", None).ops, Ops::ALL, "open: everything");
        assert_eq!(access.refuse_peer("127.0.0.1".parse().unwrap()), None);
        assert_eq!(access.refuse_peer("::1".parse().unwrap()), None);
        assert_eq!(access.refuse_peer("::ffff:127.0.0.1".parse().unwrap()), None);
        assert!(access.refuse_peer("10.1.2.3".parse().unwrap()).unwrap().contains("--open"));
        let open = Access::new(&AccessConfig { open: true, ..Default::default() });
        assert_eq!(open.refuse_peer("10.1.2.3".parse().unwrap()), None);
        let secret = TokenVerifier::from_secret(&[7; 32]).unwrap();
        let guarded = Access::new(&AccessConfig { tokens: Some(secret), ..Default::default() });
        assert_eq!(guarded.refuse_peer("10.1.2.3".parse().unwrap()), None, "guarded servers serve everyone");
        assert_eq!(guarded.verdict("any", None).ops, Ops::NONE);
    }
}
