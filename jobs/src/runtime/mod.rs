//! The engine's long-running services: the workers (with the one list of job kinds they run),
//! the dispatcher, the sweeper that fires the scheduled sweeps, the clock that starts
//! scheduled campaigns, and the clock that runs automations' steps when they come due.
//!
//! Adding a kind: a file in [`kinds`](crate::kinds) implementing
//! [`JobKind`](crate::engine::JobKind), and one line in the list below.

mod automation_clock;
mod campaign_clock;
mod dispatcher;
mod sweeper;
mod workers;

pub use automation_clock::{AutomationClock, Looked};
pub use campaign_clock::CampaignClock;
pub use dispatcher::{DispatchConfig, Dispatcher, Pass, Step};
pub use sweeper::{Sweeper, schedule};
pub use workers::Workers;

use crate::{
    domain::{UnknownValue, Words},
    engine::{JobKind, StoredBy},
    kinds::{
        bulk_send::BulkSend, campaign_feed::CampaignFeed, import_csv::ImportCsv,
        send_message::SendMessage, sweep::Sweep,
    },
};

/// Declares the list: the [`Kind`] enum (one variant per kind, named like its type) and the
/// start of one worker per kind.
macro_rules! job_kinds {
    ($($kind:ident),+ $(,)?) => {
        /// Every job kind this build runs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kind {
            $($kind),+
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind),+];

            /// The kind's stable name ([`JobKind::NAME`]).
            pub fn name(self) -> &'static str {
                match self {
                    $(Kind::$kind => <$kind as JobKind>::NAME),+
                }
            }

            /// Who stores the kind's jobs ([`JobKind::STORED_BY`]).
            pub fn stored_by(self) -> StoredBy {
                match self {
                    $(Kind::$kind => <$kind as JobKind>::STORED_BY),+
                }
            }
        }

        impl Workers {
            /// Starts one supervised worker per kind.
            fn start_all(
                &self,
                set: &mut tokio::task::JoinSet<anyhow::Result<()>>,
                cancel: &tokio_util::sync::CancellationToken,
            ) {
                $(if self.runs(Kind::$kind) {
                    self.start(set, $kind::new(self.deps()), cancel);
                })+
            }
        }
    };
}

job_kinds![ImportCsv, SendMessage, BulkSend, CampaignFeed, Sweep];

impl Kind {
    /// The kind of a stored name; any other name is an error that says so.
    pub fn parse(raw: &str) -> Result<Kind, UnknownValue> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == raw)
            .ok_or_else(|| UnknownValue {
                what: "job kind",
                value: raw.to_owned(),
                expected: Kind::ALL
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl Kind {
    /// The kinds the `worker` role runs: those clients store.
    pub fn for_clients() -> Vec<Kind> {
        Kind::stored_by_all(StoredBy::Clients)
    }

    /// The kinds the `sweep` role runs: those the sweeper's schedule stores.
    pub fn scheduled() -> Vec<Kind> {
        Kind::stored_by_all(StoredBy::Schedule)
    }

    fn stored_by_all(by: StoredBy) -> Vec<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .filter(|k| k.stored_by() == by)
            .collect()
    }
}

impl Words for Kind {
    const NAME: &'static str = "JobKind";

    fn all() -> &'static [Self] {
        Kind::ALL
    }

    fn word(self) -> &'static str {
        self.name()
    }

    fn from_word(raw: &str) -> Result<Self, UnknownValue> {
        Kind::parse(raw)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_name_and_reads_back() {
        let names: std::collections::HashSet<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len(), "names are unique");
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Ok(*kind));
        }
        let mut roles = Kind::for_clients();
        roles.extend(Kind::scheduled());
        assert_eq!(roles.len(), Kind::ALL.len(), "every kind has one role");
        assert_eq!(Kind::scheduled(), [Kind::Sweep]);
        let err = Kind::parse("mystery").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown job kind \"mystery\" (expected one of: import_csv, send_message, bulk_send, campaign_feed, sweep)"
        );
    }
}
