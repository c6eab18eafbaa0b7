//! `serve`'s flags for the providers of the registry, derived from each one's description:
//! `--NAME-api-base`, `--NAME-CREDENTIAL` (and `-file`), `--NAME-webhook-secret` and
//! `--NAME-rate-limit`, and one flag per extra setting of the provider (`--NAME-WORD`), each with
//! its environment variable.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::providers::connections::ProviderDefaults;
use crate::providers::registry::{ProviderSettings, ProviderSpec, REGISTRY};
use crate::providers::traffic::TrafficConfig;
use crate::secret::Secret;

/// What the command line said about each provider of the registry.
#[derive(Debug, Default)]
pub struct ProvidersArgs {
    given: Vec<Given>,
}

#[derive(Debug)]
struct Given {
    spec: &'static ProviderSpec,
    api_base: String,
    credential: Option<String>,
    credential_file: Option<PathBuf>,
    webhook_secrets: Vec<String>,
    rate_limit: u32,
    /// Extra settings given, by word.
    extra: Vec<(&'static str, String)>,
}

/// The argument ids (and long flags) of one provider.
struct Ids {
    api_base: String,
    credential: String,
    credential_file: String,
    webhook_secret: String,
    rate_limit: String,
}

impl Ids {
    fn of(spec: &ProviderSpec) -> Self {
        let name = spec.name;
        let credential = format!("{name}-{}", spec.credential);
        Self {
            api_base: format!("{name}-api-base"),
            credential_file: format!("{credential}-file"),
            credential,
            webhook_secret: format!("{name}-webhook-secret"),
            rate_limit: format!("{name}-rate-limit"),
        }
    }

    /// The argument id (and long flag) of an extra setting.
    fn extra(spec: &ProviderSpec, word: &str) -> String {
        format!("{}-{word}", spec.name)
    }
}

impl clap::Args for ProvidersArgs {
    fn augment_args(mut cmd: Command) -> Command {
        for spec in REGISTRY {
            let ids = Ids::of(spec);
            let env = |suffix: &str| format!("{}_{suffix}", spec.env_prefix);
            let credential_env = spec.credential.to_ascii_uppercase().replace('-', "_");
            let credential_words = spec.credential.replace('-', " ");
            cmd = cmd
                .arg(
                    Arg::new(ids.api_base.clone())
                        .long(ids.api_base)
                        .value_name("URL")
                        .env(env("API_BASE"))
                        .default_value(spec.default_api_base)
                        .help(format!("{}'s API base URL (e.g. a local fake for tests)", spec.title)),
                )
                .arg(
                    Arg::new(ids.credential.clone())
                        .long(ids.credential.clone())
                        .value_name(spec.credential.to_ascii_uppercase().replace('-', "_"))
                        .env(env(&credential_env))
                        .hide_env_values(true)
                        .conflicts_with(ids.credential_file.clone())
                        .help(format!(
                            "{} {credential_words}; the `{}` provider is enabled only when one is configured",
                            spec.title, spec.name
                        )),
                )
                .arg(
                    Arg::new(ids.credential_file.clone())
                        .long(ids.credential_file)
                        .value_name("PATH")
                        .env(env(&format!("{credential_env}_FILE")))
                        .value_parser(clap::value_parser!(PathBuf))
                        .help(format!(
                            "A file holding the {} {credential_words} (e.g. a mounted secret); surrounding whitespace is trimmed",
                            spec.title
                        )),
                )
                .arg(
                    Arg::new(ids.webhook_secret.clone())
                        .long(ids.webhook_secret)
                        .value_name("SECRETS")
                        .env(env("WEBHOOK_SECRET"))
                        .hide_env_values(true)
                        .value_delimiter(',')
                        .action(ArgAction::Append)
                        .help(format!(
                            "{}'s webhook signing {}, comma-separated: the current one and, while rotating, the previous one. Without one, POST /webhooks/{} answers 404",
                            spec.title, spec.webhook_signing, spec.name
                        )),
                )
                .arg(
                    Arg::new(ids.rate_limit.clone())
                        .long(ids.rate_limit)
                        .value_name("PER_SECOND")
                        .env(format!("REFUND_{}_RATE_LIMIT", spec.env_prefix))
                        .value_parser(clap::value_parser!(u32))
                        .default_value(spec.default_rate_limit.to_string())
                        .help(format!(
                            "Our own limit on calls per second to {}, for reads and for writes separately; 0 = unlimited",
                            spec.title
                        )),
                );
            for extra in spec.extra {
                let id = Ids::extra(spec, extra.word);
                let upper = extra.word.to_ascii_uppercase().replace('-', "_");
                let needed = if extra.required {
                    format!("; needed when the `{}` provider is enabled", spec.name)
                } else {
                    String::new()
                };
                cmd = cmd.arg(
                    Arg::new(id.clone())
                        .long(id)
                        .value_name(upper.clone())
                        .env(env(&upper))
                        .help(format!("{} {}{needed}", spec.title, extra.help)),
                );
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ProvidersArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = REGISTRY
            .iter()
            .map(|spec| {
                let ids = Ids::of(spec);
                Given {
                    spec,
                    api_base: matches
                        .get_one::<String>(&ids.api_base)
                        .cloned()
                        .unwrap_or_else(|| spec.default_api_base.to_owned()),
                    credential: matches.get_one::<String>(&ids.credential).cloned(),
                    credential_file: matches.get_one::<PathBuf>(&ids.credential_file).cloned(),
                    webhook_secrets: matches
                        .get_many::<String>(&ids.webhook_secret)
                        .map(|v| v.cloned().collect())
                        .unwrap_or_default(),
                    rate_limit: matches
                        .get_one::<u32>(&ids.rate_limit)
                        .copied()
                        .unwrap_or(spec.default_rate_limit),
                    extra: spec
                        .extra
                        .iter()
                        .filter_map(|x| {
                            matches
                                .get_one::<String>(&Ids::extra(spec, x.word))
                                .map(|v| (x.word, v.trim().to_owned()))
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Self { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl ProvidersArgs {
    /// Every provider's API base and traffic settings, configured or not: what accounts' own
    /// connections to it use.
    pub fn defaults(&self, traffic: &TrafficConfig) -> Vec<ProviderDefaults> {
        self.given
            .iter()
            .map(|given| ProviderDefaults {
                name: given.spec.name.to_owned(),
                api_base: given.api_base.clone(),
                traffic: TrafficConfig {
                    rate_per_sec: given.rate_limit,
                    ..traffic.clone()
                },
            })
            .collect()
    }

    /// The providers given a credential, with `traffic` (the sandbox's) at each one's own rate.
    pub fn into_settings(self, traffic: &TrafficConfig) -> anyhow::Result<Vec<ProviderSettings>> {
        let mut configured = Vec::new();
        for given in self.given {
            let spec = given.spec;
            let ids = Ids::of(spec);
            let credential_words = spec.credential.replace('-', " ");
            let credential = match (given.credential, given.credential_file) {
                (Some(value), _) => Some(value.trim().to_owned()),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| {
                            format!("cannot read --{} {}", ids.credential_file, path.display())
                        })?
                        .trim()
                        .to_owned(),
                ),
                (None, None) => None,
            };
            let Some(credential) = credential else {
                anyhow::ensure!(
                    given.webhook_secrets.is_empty(),
                    "--{} needs a {} {credential_words} (--{})",
                    ids.webhook_secret,
                    spec.title,
                    ids.credential
                );
                continue;
            };
            anyhow::ensure!(
                !credential.is_empty(),
                "the {} {credential_words} is empty",
                spec.title
            );
            for x in spec.extra {
                let given_value = given.extra.iter().find(|(w, _)| *w == x.word);
                anyhow::ensure!(
                    !x.required || given_value.is_some_and(|(_, v)| !v.is_empty()),
                    "the {} provider needs --{}",
                    spec.title,
                    Ids::extra(spec, x.word)
                );
            }
            configured.push(ProviderSettings {
                name: spec.name.to_owned(),
                api_base: given.api_base,
                credential: Secret::opaque(credential),
                traffic: TrafficConfig {
                    rate_per_sec: given.rate_limit,
                    ..traffic.clone()
                },
                webhook_secrets: super::secrets(
                    given.webhook_secrets,
                    &format!("--{}", ids.webhook_secret),
                )?,
                extra: given
                    .extra
                    .into_iter()
                    .map(|(w, v)| (w.to_owned(), v))
                    .collect(),
            });
        }
        Ok(configured)
    }
}
