//! The closed vocabularies of the service: flag types, setting types, access kinds,
//! organisation kinds, activities and the reasons an access is refused. Each converts from its
//! wire number (the `cpis.gateway.v1` enum value; the zero `_UNSPECIFIED` and unknown numbers
//! are rejected) and parses the spellings the command line accepts. `platform` checks that
//! these numbers are the proto's.

use std::fmt;

/// Parses an enum spelling case-insensitively: the suffix (`emergency-department`,
/// `EMERGENCY_DEPARTMENT`) or the full wire name (`SETTING_TYPE_EMERGENCY_DEPARTMENT`).
fn spelling_matches(input: &str, prefix: &str, suffix: &str) -> bool {
    let normal = input.trim().replace('-', "_").to_ascii_uppercase();
    normal == suffix || normal.strip_prefix(prefix).is_some_and(|s| s == suffix)
}

macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $prefix:literal {
            $($variant:ident = $suffix:literal = $number:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The enum suffix, such as `CPP` or `EMERGENCY_DEPARTMENT`: the stored form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $suffix),+
                }
            }

            /// From the wire: the zero (`_UNSPECIFIED`) value and unknown numbers are `None`.
            pub fn from_wire(value: i32) -> Option<Self> {
                match value {
                    $($number => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The wire number of this value in its `cpis.gateway.v1` enum.
            pub fn number(self) -> i32 {
                match self {
                    $($name::$variant => $number),+
                }
            }

            /// The full wire name, such as `FLAG_TYPE_CPP`.
            pub fn wire_name(self) -> String {
                format!("{}{}", $prefix, self.as_str())
            }

            /// Case-insensitive: the suffix with `_` or `-`, or the full wire name.
            pub fn parse(input: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| spelling_matches(input, $prefix, v.as_str()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for i32 {
            fn from(v: $name) -> i32 {
                v.number()
            }
        }
    };
}

vocabulary! {
    /// What a local authority's flag says about a child (DOMAIN.md "The three flag types").
    FlagType, "FLAG_TYPE_" {
        Cpp = "CPP" = 1,
        Lac = "LAC" = 2,
        Ucpp = "UCPP" = 3,
    }
}

vocabulary! {
    /// Where the child is seen; each belongs to one access kind.
    SettingType, "SETTING_TYPE_" {
        EmergencyDepartment = "EMERGENCY_DEPARTMENT" = 1,
        MinorInjuryUnit = "MINOR_INJURY_UNIT" = 2,
        WalkInCentre = "WALK_IN_CENTRE" = 3,
        UrgentTreatmentCentre = "URGENT_TREATMENT_CENTRE" = 4,
        OutOfHoursGp = "OUT_OF_HOURS_GP" = 5,
        Nhs111 = "NHS_111" = 6,
        Ambulance = "AMBULANCE" = 7,
        Maternity = "MATERNITY" = 8,
        PaediatricWard = "PAEDIATRIC_WARD" = 9,
        GpPractice = "GP_PRACTICE" = 10,
        HealthVisiting = "HEALTH_VISITING" = 11,
        SchoolNursing = "SCHOOL_NURSING" = 12,
        Camhs = "CAMHS" = 13,
        CommunityPaediatrics = "COMMUNITY_PAEDIATRICS" = 14,
        Dental = "DENTAL" = 15,
        SexualHealth = "SEXUAL_HEALTH" = 16,
    }
}

vocabulary! {
    /// What part an organisation plays: a local authority shares flags, a health organisation
    /// looks children up.
    OrganisationKind, "ORGANISATION_KIND_" {
        LocalAuthority = "LOCAL_AUTHORITY" = 1,
        Health = "HEALTH" = 2,
    }
}

vocabulary! {
    /// A notifying read from unscheduled care, or a silent read from scheduled care.
    AccessKind, "ACCESS_KIND_" {
        Unscheduled = "UNSCHEDULED" = 1,
        Scheduled = "SCHEDULED" = 2,
    }
}

impl SettingType {
    /// Unscheduled settings make notifying reads (`B0107`); scheduled ones silent reads.
    pub fn access_kind(self) -> AccessKind {
        use SettingType::*;
        match self {
            EmergencyDepartment
            | MinorInjuryUnit
            | WalkInCentre
            | UrgentTreatmentCentre
            | OutOfHoursGp
            | Nhs111
            | Ambulance
            | Maternity
            | PaediatricWard => AccessKind::Unscheduled,
            GpPractice | HealthVisiting | SchoolNursing | Camhs | CommunityPaediatrics | Dental
            | SexualHealth => AccessKind::Scheduled,
        }
    }
}

impl AccessKind {
    /// The national RBAC activity a lookup of this kind needs; holding one never grants the other.
    pub fn required_activity(self) -> Activity {
        match self {
            AccessKind::Unscheduled => Activity::NotifyingLookup,
            AccessKind::Scheduled => Activity::SilentLookup,
        }
    }

    /// Only unscheduled care records an attendance and notifies the local authority.
    pub fn notifies(self) -> bool {
        self == AccessKind::Unscheduled
    }
}

/// Activities a principal may hold (API.md "Who may call what"); none includes another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Activity {
    /// `B0107`: view a flag from unscheduled care; records the attendance, notifies the LA.
    NotifyingLookup,
    /// `B0170`: view a flag without notification, from scheduled care.
    SilentLookup,
    /// `CPIS_LA_MANAGE`: upload, end, delete and list own flags; read notifications.
    LaManage,
    /// `CPIS_AUDIT`: read and verify the audit log.
    Audit,
    /// `CPIS_ADMIN`: organisations, systems, restrictions, inactive numbers.
    Admin,
}

impl Activity {
    pub const ALL: &'static [Activity] = &[
        Activity::NotifyingLookup,
        Activity::SilentLookup,
        Activity::LaManage,
        Activity::Audit,
        Activity::Admin,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Activity::NotifyingLookup => "B0107",
            Activity::SilentLookup => "B0170",
            Activity::LaManage => "CPIS_LA_MANAGE",
            Activity::Audit => "CPIS_AUDIT",
            Activity::Admin => "CPIS_ADMIN",
        }
    }

    /// Exact codes only: an unknown activity string grants nothing.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|a| a.code() == code)
    }
}

/// The stable reasons of a refusal, carried in `google.rpc.ErrorInfo` (domain `cpis`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    MissingActivity,
    /// A lookup by a user who signed in less strongly than the deployment's minimum.
    InsufficientAssurance,
    OrganisationNotOnboarded,
    SettingNotInOrganisation,
}

impl DenyReason {
    pub const ALL: &'static [DenyReason] = &[
        DenyReason::MissingActivity,
        DenyReason::InsufficientAssurance,
        DenyReason::OrganisationNotOnboarded,
        DenyReason::SettingNotInOrganisation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::MissingActivity => "MISSING_ACTIVITY",
            DenyReason::InsufficientAssurance => "INSUFFICIENT_ASSURANCE",
            DenyReason::OrganisationNotOnboarded => "ORGANISATION_NOT_ONBOARDED",
            DenyReason::SettingNotInOrganisation => "SETTING_NOT_IN_ORGANISATION",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_are_case_insensitive_suffix_or_full_name() {
        for s in [
            "emergency-department",
            "EMERGENCY_DEPARTMENT",
            "setting_type_emergency_department",
        ] {
            assert_eq!(
                SettingType::parse(s),
                Some(SettingType::EmergencyDepartment),
                "{s}"
            );
        }
        assert_eq!(FlagType::parse("cpp"), Some(FlagType::Cpp));
        assert_eq!(FlagType::parse("FLAG_TYPE_UCPP"), Some(FlagType::Ucpp));
        assert_eq!(FlagType::parse("FLAG_TYPE_UNSPECIFIED"), None);
        assert_eq!(FlagType::parse("unspecified"), None);
        assert_eq!(FlagType::parse("XYZ"), None);
    }

    #[test]
    fn the_zero_value_and_unknown_numbers_are_never_valid_input() {
        assert_eq!(FlagType::from_wire(0), None);
        assert_eq!(FlagType::from_wire(99), None);
        assert_eq!(SettingType::from_wire(0), None);
        assert_eq!(AccessKind::from_wire(0), None);
        for t in FlagType::ALL {
            assert_eq!(FlagType::from_wire(i32::from(*t)), Some(*t));
        }
        for t in SettingType::ALL {
            assert_eq!(SettingType::from_wire(i32::from(*t)), Some(*t));
        }
    }

    #[test]
    fn nine_settings_are_unscheduled_and_seven_scheduled() {
        let unscheduled = SettingType::ALL
            .iter()
            .filter(|s| s.access_kind() == AccessKind::Unscheduled)
            .count();
        assert_eq!(unscheduled, 9);
        assert_eq!(SettingType::ALL.len() - unscheduled, 7);
        assert_eq!(SettingType::Nhs111.access_kind(), AccessKind::Unscheduled);
        assert_eq!(SettingType::Camhs.access_kind(), AccessKind::Scheduled);
    }

    #[test]
    fn each_access_kind_needs_its_own_activity() {
        assert_eq!(AccessKind::Unscheduled.required_activity().code(), "B0107");
        assert_eq!(AccessKind::Scheduled.required_activity().code(), "B0170");
        assert_eq!(Activity::from_code("b0107"), None);
    }
}
