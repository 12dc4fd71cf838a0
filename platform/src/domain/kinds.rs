//! The closed vocabularies of the service: flag types, setting types, access kinds, and the
//! reasons an access is refused. Each converts from its wire enum (rejecting the zero value
//! and unknown numbers) and parses the spellings the command line accepts.

use cpis_proto::gateway;
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
        $name:ident, $wire:ident, $prefix:literal {
            $($variant:ident = $suffix:literal),+ $(,)?
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
                match gateway::$wire::try_from(value).ok()? {
                    $(gateway::$wire::$variant => Some($name::$variant),)+
                    _ => None,
                }
            }

            pub fn to_wire(self) -> gateway::$wire {
                match self {
                    $($name::$variant => gateway::$wire::$variant),+
                }
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
                v.to_wire() as i32
            }
        }
    };
}

vocabulary! {
    /// What a local authority's flag says about a child (DOMAIN.md "The three flag types").
    FlagType, FlagType, "FLAG_TYPE_" {
        Cpp = "CPP",
        Lac = "LAC",
        Ucpp = "UCPP",
    }
}

vocabulary! {
    /// Where the child is seen; each belongs to one access kind.
    SettingType, SettingType, "SETTING_TYPE_" {
        EmergencyDepartment = "EMERGENCY_DEPARTMENT",
        MinorInjuryUnit = "MINOR_INJURY_UNIT",
        WalkInCentre = "WALK_IN_CENTRE",
        UrgentTreatmentCentre = "URGENT_TREATMENT_CENTRE",
        OutOfHoursGp = "OUT_OF_HOURS_GP",
        Nhs111 = "NHS_111",
        Ambulance = "AMBULANCE",
        Maternity = "MATERNITY",
        PaediatricWard = "PAEDIATRIC_WARD",
        GpPractice = "GP_PRACTICE",
        HealthVisiting = "HEALTH_VISITING",
        SchoolNursing = "SCHOOL_NURSING",
        Camhs = "CAMHS",
        CommunityPaediatrics = "COMMUNITY_PAEDIATRICS",
        Dental = "DENTAL",
        SexualHealth = "SEXUAL_HEALTH",
    }
}

vocabulary! {
    /// A notifying read from unscheduled care, or a silent read from scheduled care.
    AccessKind, AccessKind, "ACCESS_KIND_" {
        Unscheduled = "UNSCHEDULED",
        Scheduled = "SCHEDULED",
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
    OrganisationNotOnboarded,
    SettingNotInOrganisation,
}

impl DenyReason {
    pub const ALL: &'static [DenyReason] = &[
        DenyReason::MissingActivity,
        DenyReason::OrganisationNotOnboarded,
        DenyReason::SettingNotInOrganisation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::MissingActivity => "MISSING_ACTIVITY",
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
