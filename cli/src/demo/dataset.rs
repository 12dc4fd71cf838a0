//! The synthetic dataset: generated from a seed and a day, written as CSV files.

use crate::upload_csv;
use anyhow::Context;
use chrono::NaiveDate;
use cpis_proto::gateway as pb;
use platform::domain::{FlagType, NhsNumber, SettingType};
use platform::synthetic::SplitMix64;
use std::collections::HashSet;
use std::path::Path;

/// England has 152 local authorities with children's social care duties.
pub const NATIONAL_LAS: usize = 152;

#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub las: usize,
    pub trusts: usize,
    pub flags: usize,
    pub attendances: usize,
}

/// What `cpis dev --demo` loads: small enough to load in seconds.
pub const DEV_SIZES: Sizes = Sizes {
    las: 20,
    trusts: 5,
    flags: 200,
    attendances: 500,
};

#[derive(Debug, Clone, PartialEq)]
pub struct LocalAuthority {
    pub ods_code: String,
    pub name: String,
    pub flags: Vec<pb::FlagRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub ods_code: String,
    pub name: String,
    pub setting_type: SettingType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trust {
    pub ods_code: String,
    pub name: String,
    pub sites: Vec<Site>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoAttendance {
    pub nhs_number: String,
    pub trust: String,
    pub site: String,
    pub setting_type: SettingType,
    pub user_id: String,
    pub role_code: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub local_authorities: Vec<LocalAuthority>,
    pub trusts: Vec<Trust>,
    pub attendances: Vec<DemoAttendance>,
}

const PLACE_STARTS: [&str; 32] = [
    "Ash", "Beck", "Bram", "Brook", "Burn", "Calder", "Dun", "Elm", "Fair", "Fen", "Glen", "Hart",
    "Holm", "Kings", "Lang", "Marl", "Mill", "Nor", "Oak", "Pen", "Red", "Rose", "Sand", "Stan",
    "Stone", "Sud", "Thorn", "Wal", "West", "Whit", "Wick", "Wold",
];
const PLACE_ENDS: [&str; 18] = [
    "bury", "by", "caster", "chester", "dale", "field", "ford", "gate", "ham", "hampton", "ley",
    "mouth", "stead", "ton", "wick", "worth", "minster", "borough",
];
const LA_KINDS: [&str; 4] = [
    "County Council",
    "City Council",
    "Metropolitan Borough Council",
    "Borough Council",
];
const TRUST_KINDS: [&str; 3] = [
    "Hospitals NHS Foundation Trust",
    "University Hospitals NHS Trust",
    "and District NHS Foundation Trust",
];
const SITE_KINDS: [(SettingType, &str); 5] = [
    (
        SettingType::MinorInjuryUnit,
        "Community Hospital Minor Injury Unit",
    ),
    (
        SettingType::UrgentTreatmentCentre,
        "Urgent Treatment Centre",
    ),
    (SettingType::Maternity, "Maternity Unit"),
    (SettingType::PaediatricWard, "Children's Ward"),
    (SettingType::WalkInCentre, "Walk-in Centre"),
];
const ROLES: [&str; 3] = ["R8000", "R8003", "R0260"];
const SURNAMES: [&str; 12] = [
    "jones", "patel", "smith", "okafor", "williams", "khan", "brown", "evans", "taylor", "ahmed",
    "wilson", "murphy",
];
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The i-th local authority code: 3 digits.
pub fn la_code(i: usize) -> String {
    format!("{}", 101 + i * 5)
}

/// The i-th trust code: R and two letters or digits.
pub fn trust_code(i: usize) -> String {
    let first = ALNUM[(i / ALNUM.len()) % 26] as char;
    let second = ALNUM[i % ALNUM.len()] as char;
    format!("R{first}{second}")
}

fn slug(name: &str) -> String {
    name.split_whitespace()
        .next()
        .unwrap_or("council")
        .to_ascii_lowercase()
}

/// A synthetic national dataset; the same seed, sizes and day give the same dataset.
pub fn generate(seed: u64, sizes: Sizes, today: NaiveDate) -> Dataset {
    let mut rng = SplitMix64(seed);
    let mut places: Vec<String> = PLACE_STARTS
        .iter()
        .flat_map(|a| PLACE_ENDS.iter().map(move |b| format!("{a}{b}")))
        .collect();
    rng.shuffle(&mut places);
    let mut place = places.into_iter().cycle();
    let mut next_place = || place.next().unwrap_or_default();

    let las = sizes.las.min(180);
    let mut local_authorities: Vec<LocalAuthority> = (0..las)
        .map(|i| LocalAuthority {
            ods_code: la_code(i),
            name: format!("{} {}", next_place(), rng.pick(&LA_KINDS)),
            flags: Vec::new(),
        })
        .collect();
    let trusts: Vec<Trust> = (0..sizes.trusts.min(26 * ALNUM.len()))
        .map(|i| {
            let ods_code = trust_code(i);
            let town = next_place();
            let mut sites = vec![Site {
                ods_code: format!("{ods_code}01"),
                name: format!("{town} General Hospital Emergency Department"),
                setting_type: SettingType::EmergencyDepartment,
            }];
            for n in 0..rng.below(4) {
                let (setting_type, kind) = *rng.pick(&SITE_KINDS);
                sites.push(Site {
                    ods_code: format!("{ods_code}{:02}", n + 2),
                    name: format!("{town} {kind}"),
                    setting_type,
                });
            }
            Trust {
                name: format!("{town} {}", rng.pick(&TRUST_KINDS)),
                ods_code,
                sites,
            }
        })
        .collect();

    let mut used = HashSet::new();
    let mut fresh_number = |rng: &mut SplitMix64| loop {
        let candidate = NhsNumber::from_first_nine(999_000_000 + rng.below(1_000_000) as u32);
        if let Some(n) = candidate
            && used.insert(n)
        {
            return n.as_str().to_owned();
        }
    };
    let mut flagged = Vec::new();
    if !local_authorities.is_empty() {
        for _ in 0..sizes.flags {
            let la = rng.below(local_authorities.len() as u64) as usize;
            let nhs_number = fresh_number(&mut rng);
            let record = flag_record(&mut rng, nhs_number.clone(), today);
            flagged.push(nhs_number);
            local_authorities[la].flags.push(record);
        }
        for (i, la) in local_authorities.iter_mut().enumerate() {
            let contact = contact(i, &la.name);
            for f in &mut la.flags {
                (f.emergency_phone, f.office_hours_phone, f.email) = contact.clone();
            }
        }
    }

    // Unflagged children attend too; some of them more than once.
    let pool: Vec<String> = (0..(sizes.attendances / 3).max(1))
        .map(|_| fresh_number(&mut rng))
        .collect();
    let mut attendances = Vec::with_capacity(sizes.attendances);
    if !trusts.is_empty() {
        for _ in 0..sizes.attendances {
            let nhs_number = if !flagged.is_empty() && rng.percent(40) {
                rng.pick(&flagged).clone()
            } else {
                rng.pick(&pool).clone()
            };
            let trust = rng.pick(&trusts);
            let site = rng.pick(&trust.sites);
            attendances.push(DemoAttendance {
                nhs_number,
                trust: trust.ods_code.clone(),
                site: site.ods_code.clone(),
                setting_type: site.setting_type,
                user_id: format!("dr.{}", rng.pick(&SURNAMES)),
                role_code: (*rng.pick(&ROLES)).to_owned(),
            });
        }
    }
    Dataset {
        local_authorities,
        trusts,
        attendances,
    }
}

fn contact(i: usize, name: &str) -> (String, String, String) {
    (
        format!("01632 960{:03}", i % 1000),
        format!("020 7946 0{:03}", i % 1000),
        format!("childrens.services@{}.example", slug(name)),
    )
}

fn flag_record(rng: &mut SplitMix64, nhs_number: String, today: NaiveDate) -> pb::FlagRecord {
    let days = |n: u64| chrono::Days::new(n);
    let roll = rng.below(100);
    let flag_type = match roll {
        0..45 => FlagType::Cpp,
        45..90 => FlagType::Lac,
        _ => FlagType::Ucpp,
    };
    let mut record = pb::FlagRecord {
        nhs_number,
        flag_type: flag_type.into(),
        ..Default::default()
    };
    let fmt = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
    if flag_type == FlagType::Ucpp {
        let start = today - days(10 + rng.below(150));
        record.start_date = fmt(start);
        record.due_date = fmt(start + days(90 + rng.below(150)));
    } else {
        let start = today - days(30 + rng.below(1500));
        record.start_date = fmt(start);
        // One in five has ended, within the last year, so it still shows as ended.
        if rng.percent(20) {
            let span = (today - start).num_days().max(2) as u64;
            let end = start + days(1 + rng.below(span - 1));
            let end = end.max(today - days(300));
            record.end_date = fmt(end.max(start));
        }
    }
    record
}

impl Dataset {
    /// NHS numbers with an open CPP or LAC flag: visible whatever the day.
    pub fn open_flags(&self) -> impl Iterator<Item = (&LocalAuthority, &pb::FlagRecord)> {
        self.local_authorities.iter().flat_map(|la| {
            la.flags
                .iter()
                .filter(|f| f.end_date.is_empty() && f.due_date.is_empty())
                .map(move |f| (la, f))
        })
    }

    /// organisations.csv, sites.csv, flags/<ODS>.csv (upload format), attendances.csv.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir.join("flags"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut orgs = csv::Writer::from_path(dir.join("organisations.csv"))?;
        orgs.write_record(["ods_code", "name", "kind", "onboarded"])?;
        for la in &self.local_authorities {
            orgs.write_record([&la.ods_code, &la.name, "LOCAL_AUTHORITY", "true"])?;
        }
        for t in &self.trusts {
            orgs.write_record([&t.ods_code, &t.name, "HEALTH", "true"])?;
        }
        orgs.flush()?;
        let mut sites = csv::Writer::from_path(dir.join("sites.csv"))?;
        sites.write_record(["ods_code", "organisation_ods_code", "name", "setting_type"])?;
        for t in &self.trusts {
            for s in &t.sites {
                sites.write_record([&s.ods_code, &t.ods_code, &s.name, s.setting_type.as_str()])?;
            }
        }
        sites.flush()?;
        for la in &self.local_authorities {
            let bytes = upload_csv::write_upload_csv(&la.flags)?;
            std::fs::write(
                dir.join("flags").join(format!("{}.csv", la.ods_code)),
                bytes,
            )?;
        }
        let mut att = csv::Writer::from_path(dir.join("attendances.csv"))?;
        att.write_record([
            "nhs_number",
            "site_ods_code",
            "organisation_ods_code",
            "setting_type",
            "user_id",
            "role_code",
        ])?;
        for a in &self.attendances {
            att.write_record([
                &a.nhs_number,
                &a.site,
                &a.trust,
                a.setting_type.as_str(),
                &a.user_id,
                &a.role_code,
            ])?;
        }
        att.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 6, 1).unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_dataset_and_another_seed_another() {
        let sizes = Sizes {
            las: 30,
            trusts: 10,
            flags: 300,
            attendances: 200,
        };
        assert_eq!(generate(7, sizes, day()), generate(7, sizes, day()));
        assert_ne!(generate(7, sizes, day()), generate(8, sizes, day()));
    }

    #[test]
    fn a_national_dataset_has_152_las_with_unique_codes_and_names_and_fictional_phones() {
        let d = generate(
            1,
            Sizes {
                las: NATIONAL_LAS,
                trusts: 140,
                flags: 2000,
                attendances: 100,
            },
            day(),
        );
        assert_eq!(d.local_authorities.len(), 152);
        let codes: HashSet<_> = d.local_authorities.iter().map(|l| &l.ods_code).collect();
        let names: HashSet<_> = d.local_authorities.iter().map(|l| &l.name).collect();
        assert_eq!((codes.len(), names.len()), (152, 152));
        assert!(d.local_authorities.iter().all(|l| l.ods_code.len() == 3));
        let trust_codes: HashSet<_> = d.trusts.iter().map(|t| &t.ods_code).collect();
        assert_eq!(trust_codes.len(), 140);
        for t in &d.trusts {
            assert!(
                t.ods_code.starts_with('R') && t.ods_code.len() == 3,
                "{}",
                t.ods_code
            );
            assert_eq!(t.sites[0].setting_type, SettingType::EmergencyDepartment);
            for s in &t.sites {
                assert!(s.ods_code.starts_with(&t.ods_code) && s.ods_code.len() == 5);
            }
        }
        for la in &d.local_authorities {
            for f in &la.flags {
                assert!(
                    f.emergency_phone.starts_with("01632 960"),
                    "{}",
                    f.emergency_phone
                );
                assert!(f.office_hours_phone.starts_with("020 7946 0"));
            }
        }
        assert_eq!(d.local_authorities[0].ods_code, "101");
        assert_eq!(d.trusts[0].ods_code, "RAA");
        assert_eq!(d.trusts[0].sites[0].ods_code, "RAA01");
    }

    #[test]
    fn every_nhs_number_is_valid_and_in_the_999_test_range() {
        let d = generate(3, DEV_SIZES, day());
        let flags: Vec<_> = d.local_authorities.iter().flat_map(|l| &l.flags).collect();
        assert_eq!(flags.len(), 200);
        for n in flags
            .iter()
            .map(|f| &f.nhs_number)
            .chain(d.attendances.iter().map(|a| &a.nhs_number))
        {
            let parsed = NhsNumber::parse(n).unwrap();
            assert!(parsed.is_test_range(), "{n}");
        }
        assert_eq!(d.attendances.len(), 500);
    }

    #[test]
    fn flags_obey_the_date_rules_the_registry_applies() {
        let d = generate(5, DEV_SIZES, day());
        for f in d.local_authorities.iter().flat_map(|l| &l.flags) {
            let start = platform::domain::parse_date(&f.start_date).unwrap();
            if f.flag_type == i32::from(FlagType::Ucpp) {
                assert!(!f.due_date.is_empty());
            } else {
                assert!(f.due_date.is_empty());
            }
            if !f.end_date.is_empty() {
                assert!(platform::domain::parse_date(&f.end_date).unwrap() >= start);
            }
        }
        assert!(d.open_flags().count() > 50);
    }

    #[test]
    fn written_flag_files_parse_as_upload_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = generate(2, DEV_SIZES, day());
        d.write(dir.path()).unwrap();
        for la in &d.local_authorities {
            let bytes = std::fs::read(
                dir.path()
                    .join("flags")
                    .join(format!("{}.csv", la.ods_code)),
            )
            .unwrap();
            if la.flags.is_empty() {
                continue;
            }
            assert_eq!(upload_csv::parse_upload_csv(&bytes).unwrap(), la.flags);
        }
        let orgs = std::fs::read_to_string(dir.path().join("organisations.csv")).unwrap();
        assert_eq!(orgs.lines().count(), 1 + 20 + 5);
    }
}
