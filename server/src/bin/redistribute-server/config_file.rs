//! `--config FILE`: the server's settings in TOML.
//!
//! Every command-line option may be set under its long name (`listen = "0.0.0.0:8080"`,
//! `redis = ["redis://a:6379", "redis://b:6379"]`, `open = true`); an option given on the command
//! line or in its environment variable overrides the file. `[[channels]]` entries are the channel
//! rules, tried in order:
//!
//! ```toml
//! [[channels]]
//! match = "public:*"                 # `*` matches any run of characters
//! anonymous = ["subscribe", "history"]
//! authenticated = ["publish"]        # on top of the token's own grants
//! maxlen = 10000                     # enforced on every publish to these channels
//! client_maxlen = false              # a client's own maxlen is refused (the default)
//! publish_rate = 5                   # publishes per second per connection to these channels
//! publish_burst = 10                 # at once after a pause (default: the rate, at least 1)
//! ```
//!
//! Unknown keys, bad values and bad patterns stop the server at start, naming the line.

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};
use redistribute::access::{ChannelRule, Glob, Ops};
use redistribute::rate::Rate;
use serde::Deserialize;
use std::ffi::OsString;
use std::path::Path;

/// What the file adds: options (as command-line arguments) and channel rules.
#[derive(Debug, Default)]
pub(crate) struct FileSettings {
    /// `--name value` pairs for the options the command line and environment left unset.
    pub(crate) args: Vec<OsString>,
    /// The `[[channels]]` rules, in order.
    pub(crate) channels: Vec<ChannelRule>,
}

/// The `[[channels]]` part of the file (its other keys are options, read as a plain table).
#[derive(Deserialize)]
struct Rules {
    #[serde(default)]
    channels: Vec<ChannelEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelEntry {
    #[serde(rename = "match")]
    pattern: toml::Spanned<String>,
    #[serde(default)]
    anonymous: Ops,
    #[serde(default)]
    authenticated: Ops,
    maxlen: Option<u64>,
    #[serde(default)]
    client_maxlen: bool,
    publish_rate: Option<f64>,
    publish_burst: Option<u32>,
}

/// Reads `path`. `command` and `matches` tell which options exist and which were set already.
pub(crate) fn load(path: &Path, command: &Command, matches: &ArgMatches) -> anyhow::Result<FileSettings> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    parse(&text, command, matches).with_context(|| format!("config file {}", path.display()))
}

fn parse(text: &str, command: &Command, matches: &ArgMatches) -> anyhow::Result<FileSettings> {
    let options: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rules: Rules = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let line = |span: std::ops::Range<usize>| text[..span.start.min(text.len())].lines().count().max(1);
    let mut settings = FileSettings::default();
    for (key, value) in options.iter().filter(|(key, _)| *key != "channels") {
        let at = line_of_key(text, key);
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(key.as_str())) else {
            bail!("line {at}: unknown setting {key:?} (settings are the long option names of --help)");
        };
        if key == "config" {
            bail!("line {at}: a config file cannot name another one");
        }
        let set_already = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if set_already {
            continue;
        }
        let flag = matches!(arg.get_action(), ArgAction::SetTrue);
        push_option(&mut settings.args, key, value, flag).map_err(|e| anyhow::anyhow!("line {at}: {e}"))?;
    }
    for entry in rules.channels {
        let at = line(entry.pattern.span());
        let pattern = Glob::new(entry.pattern.get_ref()).map_err(|e| anyhow::anyhow!("line {at}: {e}"))?;
        if entry.maxlen == Some(0) {
            bail!("line {at}: maxlen must be at least 1");
        }
        let publish_rate = match (entry.publish_rate, entry.publish_burst) {
            (Some(rate), burst) => {
                let burst = burst.unwrap_or((rate.ceil() as u32).max(1));
                Some(Rate::new(rate, burst).map_err(|e| anyhow::anyhow!("line {at}: publish_rate: {e}"))?)
            }
            (None, Some(_)) => bail!("line {at}: publish_burst needs a publish_rate"),
            (None, None) => None,
        };
        settings.channels.push(ChannelRule {
            pattern,
            anonymous: entry.anonymous,
            authenticated: entry.authenticated,
            maxlen: entry.maxlen,
            client_maxlen: entry.client_maxlen,
            publish_rate,
        });
    }
    Ok(settings)
}

/// The line where top-level `key` is set (options come before any `[[channels]]` table).
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let name = line.split('=').next().unwrap_or_default().trim().trim_matches('"');
            line.contains('=') && name == key
        })
        .map_or(1, |index| index + 1)
}

/// Appends `--key value…` for one setting.
fn push_option(args: &mut Vec<OsString>, key: &str, value: &toml::Value, flag: bool) -> Result<(), String> {
    let scalar = |value: &toml::Value| -> Result<String, String> {
        match value {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(x) => Ok(x.to_string()),
            other => Err(format!("{key} must be a string or a number, not {}", other.type_str())),
        }
    };
    match value {
        toml::Value::Boolean(on) if flag => {
            if *on {
                args.push(format!("--{key}").into());
            }
        }
        _ if flag => return Err(format!("{key} must be true or false")),
        toml::Value::Array(items) => {
            for item in items {
                args.push(format!("--{key}").into());
                args.push(scalar(item)?.into());
            }
        }
        other => {
            args.push(format!("--{key}").into());
            args.push(scalar(other)?.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn command() -> Command {
        Command::new("t")
            .arg(Arg::new("listen").long("listen").env("T_LISTEN_UNSET_IN_TESTS"))
            .arg(Arg::new("redis").long("redis").action(ArgAction::Append))
            .arg(Arg::new("open").long("open").action(ArgAction::SetTrue))
            .arg(Arg::new("config").long("config"))
    }

    fn parse_with(text: &str, cli: &[&str]) -> anyhow::Result<FileSettings> {
        let command = command();
        let matches = command.clone().try_get_matches_from(std::iter::once("t").chain(cli.iter().copied()))?;
        parse(text, &command, &matches)
    }

    fn args(settings: &FileSettings) -> Vec<String> {
        settings.args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn options_become_arguments_unless_given_on_the_command_line() {
        let text = "listen = \"0.0.0.0:9\"\nredis = [\"redis://a\", \"redis://b\"]\nopen = true\n";
        let settings = parse_with(text, &[]).unwrap();
        assert_eq!(
            args(&settings),
            ["--listen", "0.0.0.0:9", "--open", "--redis", "redis://a", "--redis", "redis://b"]
        );
        let settings = parse_with(text, &["--listen", "127.0.0.1:1"]).unwrap();
        assert_eq!(args(&settings), ["--open", "--redis", "redis://a", "--redis", "redis://b"], "the flag wins");
    }

    #[test]
    fn channel_rules_in_order() {
        let text = r#"
[[channels]]
match = "public:*"
anonymous = ["subscribe", "history"]
authenticated = ["publish"]
maxlen = 100
publish_rate = 0.5

[[channels]]
match = "*"
"#;
        let settings = parse_with(text, &[]).unwrap();
        assert_eq!(settings.channels.len(), 2);
        let public = &settings.channels[0];
        assert_eq!(public.pattern.as_str(), "public:*");
        assert_eq!(public.anonymous.to_string(), "[subscribe, history]");
        assert_eq!(public.maxlen, Some(100));
        assert!(!public.client_maxlen);
        assert_eq!(public.publish_rate, Some(Rate::new(0.5, 1).unwrap()), "the burst defaults to the rate, at least 1");
        assert_eq!(settings.channels[1].anonymous, Ops::NONE);
        assert_eq!(settings.channels[1].publish_rate, None);
    }

    #[test]
    fn bad_files_name_the_line() {
        let error = |text: &str| format!("{:#}", parse_with(text, &[]).unwrap_err());
        assert!(error("listen = \"a\"\nlisten2 = 1\n").contains("line 2: unknown setting \"listen2\""));
        assert!(error("open = \"yes\"\n").contains("line 1: open must be true or false"));
        assert!(error("\n\n[[channels]]\nmatch = \"\"\n").contains("line 4: a channel pattern must not be empty"));
        assert!(
            error("[[channels]]\nmatch = \"a\"\nanonymous = [\"delete\"]\n").contains("line 3"),
            "{}",
            error("[[channels]]\nmatch = \"a\"\nanonymous = [\"delete\"]\n")
        );
        assert!(error("[[channels]]\nmatch = \"a\"\nallow = []\n").contains("unknown field"));
        assert!(error("config = \"other.toml\"\n").contains("cannot name another"));
        assert!(error("[[channels]]\nmatch = \"a\"\npublish_rate = 0\n").contains("line 2: publish_rate"));
        assert!(error("[[channels]]\nmatch = \"a\"\npublish_burst = 3\n").contains("needs a publish_rate"));
        assert!(error("listen = [").contains("line 1"));
    }
}
