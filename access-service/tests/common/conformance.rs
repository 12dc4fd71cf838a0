//! `rules/conformance.csv`, parsed: the rules as an information-governance reviewer reads them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use platform::domain::{AccessKind, Activity};

pub const TABLE: &str = include_str!("../../rules/conformance.csv");

#[derive(Clone, Debug)]
pub struct Row {
    pub line: usize,
    pub principal: String,
    pub activities: Vec<String>,
    pub organisation: String,
    /// `None` when the organisation is not registered.
    pub organisation_kind: Option<String>,
    pub onboarded: bool,
    pub action: String,
    pub access_kind: Option<AccessKind>,
    pub setting: String,
    pub allowed: bool,
    pub reason: String,
    pub obligation: bool,
    pub comment: String,
}

pub fn rows() -> Vec<Row> {
    let mut lines = TABLE.lines().enumerate();
    let (_, header) = lines.next().unwrap();
    assert!(header.starts_with("principal,activities,organisation,"));
    let rows: Vec<Row> = lines
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.splitn(12, ',').collect();
            assert_eq!(f.len(), 12, "line {}: 12 columns", i + 1);
            for a in f[1].split_whitespace() {
                assert!(
                    Activity::from_code(a).is_some(),
                    "line {}: activity {a}",
                    i + 1
                );
            }
            Row {
                line: i + 1,
                principal: f[0].into(),
                activities: f[1].split_whitespace().map(String::from).collect(),
                organisation: f[2].into(),
                organisation_kind: (f[3] != "UNREGISTERED").then(|| f[3].to_owned()),
                onboarded: f[4] == "yes",
                action: f[5].into(),
                access_kind: (!f[6].is_empty()).then(|| AccessKind::parse(f[6]).unwrap()),
                setting: f[7].into(),
                allowed: match f[8] {
                    "ALLOW" => true,
                    "DENY" => false,
                    other => panic!("line {}: expected is {other}", i + 1),
                },
                reason: f[9].into(),
                obligation: f[10] == "yes",
                comment: f[11].into(),
            }
        })
        .collect();
    // An organisation written UNREGISTERED must never be registered by another row.
    for r in rows.iter().filter(|r| r.organisation_kind.is_none()) {
        assert!(
            rows.iter()
                .all(|o| o.organisation != r.organisation || o.organisation_kind.is_none()),
            "line {}: {} is registered elsewhere",
            r.line,
            r.organisation
        );
    }
    rows
}
