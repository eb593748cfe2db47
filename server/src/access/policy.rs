//! Who may do what on which channel: the rules of the config file's `[[channels]]` entries and
//! the grants a token carries, decided without any I/O.
//!
//! The first rule whose pattern matches a channel applies. It lists the ops allowed to anyone
//! (`anonymous`), the ops any authenticated connection gets on top (`authenticated`), and the
//! channel's trim (`maxlen`, and whether a client may ask for its own) and publish rate. A token's own grants add
//! more, first matching grant wins. A channel that matches no rule allows nothing.

use super::glob::{Glob, GlobError};
use crate::rate::Rate;
use serde::Deserialize;
use std::fmt;

/// One operation a client may be allowed on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Follow the channel from now on (`$`).
    Subscribe,
    /// Subscribe from a past offset: read history (and resume after a reconnect).
    History,
    /// Append entries.
    Publish,
    /// Join the channel's consumer groups and acknowledge their deliveries.
    Consume,
}

impl Op {
    const ALL: [Op; 4] = [Op::Subscribe, Op::History, Op::Publish, Op::Consume];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The op's name in configs, tokens and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Subscribe => "subscribe",
            Op::History => "history",
            Op::Publish => "publish",
            Op::Consume => "consume",
        }
    }
}

impl std::str::FromStr for Op {
    type Err = String;

    fn from_str(name: &str) -> Result<Op, String> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == name)
            .ok_or_else(|| format!("unknown op {name:?}: expected one of subscribe, history, publish, consume"))
    }
}

/// A set of [`Op`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ops(u8);

impl Ops {
    /// Every op.
    pub const ALL: Ops = Ops(0b1111);
    /// No op.
    pub const NONE: Ops = Ops(0);

    /// Whether `op` is in the set.
    pub fn allows(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }

    /// Both sets together.
    pub fn union(self, other: Ops) -> Ops {
        Ops(self.0 | other.0)
    }
}

impl FromIterator<Op> for Ops {
    fn from_iter<I: IntoIterator<Item = Op>>(ops: I) -> Ops {
        Ops(ops.into_iter().fold(0, |bits, op| bits | op.bit()))
    }
}

impl<'de> Deserialize<'de> for Ops {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ops, D::Error> {
        Ok(Vec::<Op>::deserialize(deserializer)?.into_iter().collect())
    }
}

impl fmt::Display for Ops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Op::ALL.into_iter().filter(|op| self.allows(*op)).map(Op::as_str).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// One `[[channels]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRule {
    /// Which channels it applies to.
    pub pattern: Glob,
    /// Ops allowed without a token.
    pub anonymous: Ops,
    /// Ops any valid token gets on top of its own grants.
    pub authenticated: Ops,
    /// `MAXLEN ~` applied to every publish to these channels, whoever publishes.
    pub maxlen: Option<u64>,
    /// Whether a client's own `maxlen` is honoured (otherwise it is refused).
    pub client_maxlen: bool,
    /// Publishes per connection to these channels (all of them together), on top of the
    /// server-wide publish rate.
    pub publish_rate: Option<Rate>,
}

/// A token's grant: ops on the channels matching a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The channels, `{sub}` already replaced by the token's user.
    pub pattern: Glob,
    /// What is allowed on them.
    pub allow: Ops,
}

impl Grant {
    /// A grant from a token claim: `pattern` with `{sub}` replaced by `user`.
    ///
    /// # Errors
    /// When the pattern is empty, too long or has too many stars.
    pub fn new(pattern: &str, user: &str, allow: Ops) -> Result<Grant, GlobError> {
        Ok(Grant { pattern: Glob::new(&pattern.replace("{sub}", user))?, allow })
    }
}

/// What a rule lets one connection do on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The ops allowed.
    pub ops: Ops,
    /// The channel's enforced trim, if any.
    pub maxlen: Option<u64>,
    /// Whether a client's own `maxlen` is honoured.
    pub client_maxlen: bool,
    /// The rule's publish rate, with the rule's index (which names its bucket).
    pub publish_rate: Option<(usize, Rate)>,
}

/// The channel rules of a deployment, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<ChannelRule>,
}

impl Policy {
    /// Rules in the order they are tried.
    pub fn new(rules: Vec<ChannelRule>) -> Policy {
        Policy { rules }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[ChannelRule] {
        &self.rules
    }

    /// What a connection with `grants` (`None`: not authenticated) may do on `channel`.
    pub fn verdict(&self, channel: &str, grants: Option<&[Grant]>) -> Verdict {
        let Some((index, rule)) = self.rules.iter().enumerate().find(|(_, rule)| rule.pattern.matches(channel)) else {
            return Verdict { ops: Ops::NONE, maxlen: None, client_maxlen: false, publish_rate: None };
        };
        let ops = match grants {
            None => rule.anonymous,
            Some(grants) => {
                let own = grants.iter().find(|g| g.pattern.matches(channel)).map_or(Ops::NONE, |g| g.allow);
                rule.anonymous.union(rule.authenticated).union(own)
            }
        };
        let publish_rate = rule.publish_rate.map(|rate| (index, rate));
        Verdict { ops, maxlen: rule.maxlen, client_maxlen: rule.client_maxlen, publish_rate }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, anonymous: &[Op], authenticated: &[Op]) -> ChannelRule {
        ChannelRule {
            pattern: Glob::new(pattern).unwrap(),
            anonymous: anonymous.iter().copied().collect(),
            authenticated: authenticated.iter().copied().collect(),
            maxlen: None,
            client_maxlen: false,
            publish_rate: None,
        }
    }

    #[test]
    fn first_rule_wins_and_unmatched_channels_allow_nothing() {
        let policy =
            Policy::new(vec![rule("public:*", &[Op::Subscribe, Op::History], &[Op::Publish]), rule("*", &[], &[])]);
        let anon = policy.verdict("public:news", None).ops;
        assert!(anon.allows(Op::Subscribe) && anon.allows(Op::History) && !anon.allows(Op::Publish));
        let user = policy.verdict("public:news", Some(&[])).ops;
        assert!(user.allows(Op::Publish) && !user.allows(Op::Consume));
        assert_eq!(policy.verdict("secret", Some(&[])).ops, Ops::NONE);
        assert_eq!(Policy::new(vec![rule("a", &[Op::Subscribe], &[])]).verdict("b", None).ops, Ops::NONE);
    }

    #[test]
    fn token_grants_add_to_the_rule_and_name_the_user() {
        let policy = Policy::new(vec![rule("*", &[], &[])]);
        let grants = [
            Grant::new("user:{sub}", "ann", [Op::Subscribe, Op::History].into_iter().collect()).unwrap(),
            Grant::new("jobs", "ann", [Op::Consume].into_iter().collect()).unwrap(),
            Grant::new("*", "ann", [Op::Subscribe].into_iter().collect()).unwrap(),
        ];
        assert!(policy.verdict("user:ann", Some(&grants)).ops.allows(Op::History));
        assert!(!policy.verdict("user:bob", Some(&grants)).ops.allows(Op::History), "only her own");
        assert!(policy.verdict("user:bob", Some(&grants)).ops.allows(Op::Subscribe), "the catch-all grant");
        let jobs = policy.verdict("jobs", Some(&grants)).ops;
        assert!(jobs.allows(Op::Consume) && !jobs.allows(Op::Subscribe), "first matching grant wins");
        assert_eq!(policy.verdict("jobs", None).ops, Ops::NONE, "grants need a token");
    }

    #[test]
    fn ops_parse_and_print() {
        assert_eq!("history".parse::<Op>(), Ok(Op::History));
        assert!("delete".parse::<Op>().unwrap_err().contains("unknown op"));
        assert_eq!(Ops::ALL.to_string(), "[subscribe, history, publish, consume]");
    }
}
