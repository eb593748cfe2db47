//! The least privilege the server needs in Redis: an ACL rule that allows exactly the commands it
//! sends, on its own keys only (`redistribute-server redis-acl` prints it).
//!
//! A server given a user with this rule cannot read or change other applications' keys, run
//! administrative commands (`CONFIG`, `FLUSHALL`, `KEYS`, `SHUTDOWN`, …) or use Pub/Sub, even if
//! it is compromised. Scripts are covered: Redis checks the commands a script calls against the
//! same rule. The integration tests run the server on a Redis whose user has only this rule, so a
//! command added to the server without being added here fails them.

use super::escape_glob;

/// Every command (or `command|subcommand`) the running server sends to Redis: stream reads and
/// writes, consumer groups, the idempotent-publish script (`EVAL`, which calls `GET`, `SET` and
/// `XADD`), transactions, `WAIT` for `--publish-replicas`, waking blocked readers
/// (`CLIENT ID`, `CLIENT UNBLOCK`), health checks, and the cluster's routing table.
const COMMANDS: &[&str] = &[
    "ping",
    "type",
    "exists",
    "get",
    "set",
    "eval",
    "multi",
    "exec",
    "wait",
    "xadd",
    "xrange",
    "xread",
    "xinfo|stream",
    "xgroup|create",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xpending",
    "client|id",
    "client|unblock",
    "cluster|slots",
];

/// The ACL rule (for `ACL SETUSER name on >password <rule>` or a `user` line of an ACL file)
/// that allows the server's commands on the keys under `key_prefix`, and nothing else. Keys
/// of a Redis Cluster (`<prefix>{<tag>}<channel>`) are under the prefix too. An empty prefix
/// allows every key, as the server then may touch any.
pub fn acl_rule(key_prefix: &str) -> String {
    let mut rule = format!("resetkeys ~{}* resetchannels -@all", escape_glob(key_prefix));
    for command in COMMANDS {
        rule.push_str(" +");
        rule.push_str(command);
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_covers_the_prefix_and_nothing_else() {
        let rule = acl_rule("rd:");
        assert!(rule.starts_with("resetkeys ~rd:* resetchannels -@all +ping "), "{rule}");
        assert!(rule.ends_with(" +client|unblock +cluster|slots"), "{rule}");
        assert!(acl_rule("a*b:").starts_with("resetkeys ~a\\*b:* "), "glob characters are escaped");
    }
}
