//! Why a command failed, said as a person reads it, and the exit status a script acts on:
//! 1 the server refused (or another error), 2 bad usage or a malformed file (nothing was
//! sent), 3 the service is unavailable (retry later), 4 the call worked but reports a problem
//! (an upload with rejected records, an audit log that does not verify).

use crate::upload_csv::CsvProblems;
use platform::domain::{Activity, DenyReason};
use std::fmt::Write as _;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;
pub const EXIT_REPORTED_PROBLEM: u8 = 4;

/// Shown by `cpis --help`.
pub const EXIT_STATUS_HELP: &str = "Exit status: 0 done; 1 the server refused (or another \
error); 2 bad usage or a malformed upload file (nothing was sent); 3 the service is \
unavailable or overloaded, retry later; 4 done, but with a problem to act on (an upload with \
rejected records, an audit log that does not verify).";

#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or local input; nothing was sent.
    Usage(String),
    /// A malformed upload file; nothing was sent.
    Csv(CsvProblems),
    /// The server answered with an error; `needs` is the activity the call requires, to say
    /// which one a MISSING_ACTIVITY refusal is about.
    Refused {
        status: Status,
        needs: Option<Activity>,
    },
    /// The call worked and its result is printed, but it reports a problem (exit 4).
    Reported(String),
    Other(anyhow::Error),
}

pub type CliResult<T = ()> = Result<T, Failure>;

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::Usage(message.into())
    }

    /// Maps a status, naming the activity the call needs.
    pub fn needing(needs: Activity) -> impl Fn(Status) -> Failure {
        move |status| Failure::Refused {
            status,
            needs: Some(needs),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::Csv(_) => EXIT_USAGE,
            Failure::Refused { status, .. } => match status.code() {
                Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => {
                    EXIT_UNAVAILABLE
                }
                _ => EXIT_REFUSED,
            },
            Failure::Reported(_) => EXIT_REPORTED_PROBLEM,
            Failure::Other(_) => EXIT_REFUSED,
        }
    }

    /// The text printed on standard error.
    pub fn render(&self) -> String {
        match self {
            Failure::Usage(message) => format!("cpis: {message}"),
            Failure::Csv(problems) => render_csv(problems),
            Failure::Refused { status, needs } => render_status(status, *needs),
            Failure::Reported(message) => format!("cpis: {message}"),
            Failure::Other(e) => format!("cpis: {e:#}"),
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Refused {
            status,
            needs: None,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// At most this many problems are listed; a binary file would otherwise print thousands.
const CSV_PROBLEMS_SHOWN: usize = 50;

fn render_csv(problems: &CsvProblems) -> String {
    let mut out = format!(
        "cpis: the file is not a valid upload file ({} problem{}); nothing was sent:\n",
        problems.total,
        if problems.total == 1 { "" } else { "s" }
    );
    for p in problems.first.iter().take(CSV_PROBLEMS_SHOWN) {
        let _ = writeln!(out, "  {p}");
    }
    let shown = problems.first.len().min(CSV_PROBLEMS_SHOWN) as u64;
    if problems.total > shown {
        let _ = writeln!(out, "  ... and {} more", problems.total - shown);
    }
    out.trim_end().to_owned()
}

/// The status code in words, with what it means for the person who sent the request.
pub fn code_in_words(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::InvalidArgument => "the request is invalid",
        Code::Unauthenticated => {
            "not authenticated: the token is missing, invalid or expired (mint a new one)"
        }
        Code::PermissionDenied => "permission denied",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "the system is not in a state to do this",
        Code::Unavailable => "the service is unavailable",
        Code::ResourceExhausted => "the service is overloaded",
        Code::DeadlineExceeded => "no answer before the deadline",
        Code::Cancelled => "the call was cancelled",
        Code::Unimplemented => "this server does not offer the call",
        Code::Internal => "the server failed (an internal error)",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::DataLoss => "data loss",
        Code::Unknown => "an unknown error",
    }
}

fn render_status(status: &Status, needs: Option<Activity>) -> String {
    let mut out = format!(
        "cpis: {} ({:?})",
        code_in_words(status.code()),
        status.code()
    );
    let bad_request = status.get_details_bad_request();
    // The violations below say it better than the message, which repeats them in one line.
    if !status.message().is_empty() && bad_request.is_none() {
        let _ = write!(out, ": {}", status.message());
    }
    if let Some(bad) = bad_request {
        for v in &bad.field_violations {
            let _ = write!(out, "\n  {}: {}", v.field, v.description);
        }
    }
    if let Some(info) = status.get_details_error_info() {
        let advice = match DenyReason::parse(&info.reason) {
            Some(DenyReason::MissingActivity) => match needs {
                Some(activity) => format!(
                    "your role lacks activity {}: ask your RA manager to add it to your role \
                     profile",
                    activity.code()
                ),
                None => {
                    "your role lacks the activity this call needs: ask your RA manager".to_owned()
                }
            },
            Some(DenyReason::InsufficientAssurance) => {
                "lookups need a stronger sign-in (a smartcard, or an authenticator of the same \
                 assurance level): sign in again with it"
                    .to_owned()
            }
            Some(DenyReason::OrganisationNotOnboarded) => {
                "your organisation is not onboarded to CP-IS for this kind of call: ask a CP-IS \
                 administrator to onboard it (cpis org upsert)"
                    .to_owned()
            }
            Some(DenyReason::SettingNotInOrganisation) => {
                "the setting is not part of your organisation: give your organisation's ODS \
                 code, or a site code that starts with it"
                    .to_owned()
            }
            None => "see the reason above".to_owned(),
        };
        let _ = write!(out, "\n  reason {}: {advice}", info.reason);
    }
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        let _ = write!(out, "\n  retry after {:.1}s", delay.as_secs_f64());
    } else if status.code() == Code::Unavailable {
        out.push_str("\n  retry later");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::error::Error;

    #[test]
    fn missing_activity_names_the_activity_and_who_to_ask() {
        let status: Status = Error::denied(DenyReason::MissingActivity).into();
        let failure = Failure::needing(Activity::NotifyingLookup)(status);
        let text = failure.render();
        assert!(text.contains("permission denied"), "{text}");
        assert!(
            text.contains("your role lacks activity B0107: ask your RA manager"),
            "{text}"
        );
        assert_eq!(failure.exit_code(), EXIT_REFUSED);
    }

    #[test]
    fn field_violations_are_listed_one_per_line() {
        let mut v = platform::error::Violations::new();
        v.nhs_number("nhs_number", "123");
        v.ods_code("setting.ods_code", "!");
        let status: Status = v.finish().unwrap_err().into();
        let text = Failure::from(status).render();
        assert!(text.contains("\n  nhs_number: must be 10 digits"), "{text}");
        assert!(text.contains("\n  setting.ods_code: "), "{text}");
    }

    #[test]
    fn unavailable_exits_3_with_the_retry_delay() {
        let status: Status = Error::unavailable("flag registry").into();
        let failure = Failure::from(status);
        assert_eq!(failure.exit_code(), EXIT_UNAVAILABLE);
        assert!(failure.render().contains("retry after 1.0s"));
    }

    #[test]
    fn csv_problems_exit_2_and_are_capped() {
        // A file of 1,000 bad lines keeps only the first problems, and counts the rest.
        let problems = CsvProblems {
            first: (1..=100)
                .map(|line| crate::upload_csv::CsvProblem {
                    line,
                    message: "bad".into(),
                })
                .collect(),
            total: 1000,
        };
        let failure = Failure::Csv(problems);
        assert_eq!(failure.exit_code(), EXIT_USAGE);
        let text = failure.render();
        assert!(text.contains("line 50: bad"));
        assert!(!text.contains("line 51: bad"));
        assert!(text.contains("(1000 problems)"), "{text}");
        assert!(text.contains("and 950 more"), "{text}");
    }
}
