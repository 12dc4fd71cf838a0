//! `cpis lookup`: one child, as a clinician needs to read it at a glance: flagged or not, each
//! plan in words with its dates, who to phone (emergency duty first), and how often the child
//! was seen in unscheduled care lately.

use crate::connect::{Gateway, GatewayArgs};
use crate::failure::{CliResult, Failure};
use crate::json;
use clap::Args;
use cpis_proto::gateway as pb;
use cpis_proto::gateway::child_protection_client::ChildProtectionClient;
use platform::domain::{AccessKind, SettingType};
use std::fmt::Write as _;

#[derive(Args, Debug)]
pub struct LookupArgs {
    /// The NHS number (10 digits, spaces allowed if quoted).
    pub nhs_number: String,
    /// The ODS code of the site where the child is seen (your organisation's, or one of its
    /// sites).
    #[arg(long)]
    pub setting: String,
    /// The kind of setting, such as emergency-department, minor-injury-unit, nhs-111,
    /// gp-practice, health-visiting (case-insensitive; the full enum name is also accepted).
    #[arg(long, value_parser = parse_setting_type)]
    pub setting_type: SettingType,
    /// A silent read from scheduled care (activity B0170): no attendance recorded, nobody
    /// notified. Without it the lookup is a notifying one (B0107).
    #[arg(long)]
    pub silent: bool,
    /// An idempotency key: a retry with the same key records nothing twice.
    #[arg(long, default_value = "")]
    pub request_id: String,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

pub fn parse_setting_type(input: &str) -> Result<SettingType, String> {
    SettingType::parse(input).ok_or_else(|| {
        let all: Vec<String> = SettingType::ALL
            .iter()
            .map(|s| s.as_str().to_ascii_lowercase().replace('_', "-"))
            .collect();
        format!("unknown setting type; one of: {}", all.join(", "))
    })
}

pub async fn run(args: LookupArgs) -> CliResult {
    let gateway = Gateway::connect(&args.gateway)?;
    let access_kind = if args.silent {
        AccessKind::Scheduled
    } else {
        AccessKind::Unscheduled
    };
    let request = pb::LookupChildRequest {
        nhs_number: args.nhs_number.clone(),
        access_kind: access_kind.into(),
        setting: Some(pb::Setting {
            ods_code: args.setting.clone(),
            setting_type: args.setting_type.into(),
        }),
        request_id: args.request_id.clone(),
    };
    let answer = ChildProtectionClient::new(gateway.channel.clone())
        .lookup_child(gateway.request(request)?)
        .await
        .map_err(Failure::needing(access_kind.required_activity()))?
        .into_inner();
    if args.json {
        json::print(&json::lookup(&answer));
    } else {
        print!("{}", summary(&answer));
    }
    Ok(())
}

/// A plan's type spelled out.
pub fn flag_type_in_words(value: i32) -> &'static str {
    match pb::FlagType::try_from(value) {
        Ok(pb::FlagType::Cpp) => "Child Protection Plan",
        Ok(pb::FlagType::Lac) => "Looked After Child",
        Ok(pb::FlagType::Ucpp) => "Unborn Child Protection Plan",
        _ => "Unknown flag type",
    }
}

pub fn setting_type_in_words(value: i32) -> String {
    SettingType::from_wire(value).map_or_else(
        || "unknown setting".to_owned(),
        |s| s.as_str().to_ascii_lowercase().replace('_', " "),
    )
}

/// `9434765919` as `943 476 5919`, the way it is printed on NHS letters.
pub fn spaced_nhs_number(n: &str) -> String {
    if n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()) {
        format!("{} {} {}", &n[..3], &n[3..6], &n[6..])
    } else {
        n.to_owned()
    }
}

pub fn local_time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(platform::domain::from_timestamp).map_or_else(
        || "(unknown time)".to_owned(),
        |t| {
            t.with_timezone(&chrono_tz::Europe::London)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string()
        },
    )
}

/// The answer as text a clinician can read at a glance.
pub fn summary(r: &pb::LookupChildResponse) -> String {
    let mut out = String::new();
    let nhs = spaced_nhs_number(&r.nhs_number);
    if r.flagged {
        let _ = writeln!(
            out,
            "NHS number {nhs}: FLAGGED - {} child protection flag{}",
            r.flags.len(),
            if r.flags.len() == 1 { "" } else { "s" }
        );
        if r.flags_truncated {
            let _ = writeln!(
                out,
                "MORE FLAGS THAN SHOWN: the registry holds more flags than one answer carries;                  every local authority holding one is listed below - phone them for the rest"
            );
        }
    } else {
        let _ = writeln!(
            out,
            "NHS number {nhs}: not flagged - no local authority holds a child protection plan \
             or looked-after status on this NHS number"
        );
    }
    for f in &r.flags {
        let _ = writeln!(out);
        let state = if f.active { "ACTIVE" } else { "ENDED" };
        let _ = writeln!(out, "  {} - {state}", flag_type_in_words(f.flag_type));
        let mut dates = format!("started {}", f.start_date);
        if !f.end_date.is_empty() {
            let _ = write!(dates, ", ended {}", f.end_date);
        }
        if !f.due_date.is_empty() {
            let _ = write!(dates, ", baby due {}", f.due_date);
        }
        let _ = writeln!(out, "    {dates}");
        let la = f.local_authority.clone().unwrap_or_default();
        let _ = writeln!(out, "    {} ({})", la.name, la.ods_code);
        let _ = writeln!(out, "    emergency duty: {}", la.emergency_phone);
        if !la.office_hours_phone.is_empty() {
            let _ = writeln!(out, "    office hours:   {}", la.office_hours_phone);
        }
        if !la.email.is_empty() {
            let _ = writeln!(out, "    email:          {}", la.email);
        }
    }
    let _ = writeln!(out);
    match &r.attendance {
        Some(a) if a.available => {
            let _ = writeln!(
                out,
                "Unscheduled-care attendances before this lookup: {} in the last 30 days, {} in \
                 90 days, {} in 365 days",
                a.last_30_days, a.last_90_days, a.last_365_days
            );
            for x in &a.recent {
                let _ = writeln!(
                    out,
                    "  {}  {}  {} ({}), role {}",
                    local_time(x.attended_at.as_ref()),
                    setting_type_in_words(x.setting_type),
                    x.organisation_name,
                    x.ods_code,
                    x.role_code
                );
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "Attendance history unavailable: the attendance log could not be read (the \
                 flags above are complete)"
            );
        }
    }
    let _ = writeln!(
        out,
        "Lookup reference {} (quote it when you contact the local authority)",
        r.lookup_id
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(t: pb::FlagType, active: bool) -> pb::Flag {
        pb::Flag {
            nhs_number: "9434765919".into(),
            flag_type: t.into(),
            start_date: "2024-01-02".into(),
            end_date: if active { "" } else { "2025-01-01" }.into(),
            due_date: if t == pb::FlagType::Ucpp {
                "2024-08-01"
            } else {
                ""
            }
            .into(),
            active,
            local_authority: Some(pb::LocalAuthorityContact {
                ods_code: "706".into(),
                name: "Tower Hamlets".into(),
                emergency_phone: "020 7946 0001".into(),
                office_hours_phone: "020 7946 0002".into(),
                email: "mash@example.org".into(),
            }),
        }
    }

    #[test]
    fn a_flagged_summary_spells_out_plans_dates_and_emergency_duty_first() {
        let answer = pb::LookupChildResponse {
            nhs_number: "9434765919".into(),
            flagged: true,
            flags: vec![
                flag(pb::FlagType::Cpp, true),
                flag(pb::FlagType::Ucpp, false),
            ],
            attendance: Some(pb::AttendanceSummary {
                available: true,
                last_30_days: 1,
                last_90_days: 2,
                last_365_days: 3,
                recent: vec![pb::Attendance {
                    attended_at: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 0,
                    }),
                    ods_code: "RQX01".into(),
                    organisation_name: "Homerton".into(),
                    setting_type: pb::SettingType::EmergencyDepartment.into(),
                    role_code: "R8000".into(),
                }],
            }),
            lookup_id: "abc".into(),
            looked_up_at: None,
            flags_truncated: false,
        };
        let text = summary(&answer);
        assert!(text.contains("943 476 5919: FLAGGED - 2"), "{text}");
        assert!(text.contains("Child Protection Plan - ACTIVE"), "{text}");
        assert!(
            text.contains("Unborn Child Protection Plan - ENDED"),
            "{text}"
        );
        assert!(
            text.contains("ended 2025-01-01, baby due 2024-08-01"),
            "{text}"
        );
        let emergency = text.find("emergency duty").unwrap();
        assert!(emergency < text.find("office hours").unwrap());
        assert!(text.contains("1 in the last 30 days, 2 in 90 days, 3 in 365 days"));
        assert!(
            text.contains("emergency department  Homerton (RQX01)"),
            "{text}"
        );
    }

    #[test]
    fn an_unavailable_attendance_log_is_said_in_words() {
        let answer = pb::LookupChildResponse {
            nhs_number: "9434765919".into(),
            attendance: Some(pb::AttendanceSummary::default()),
            ..Default::default()
        };
        let text = summary(&answer);
        assert!(text.contains("not flagged"), "{text}");
        assert!(text.contains("Attendance history unavailable"), "{text}");
    }
}
