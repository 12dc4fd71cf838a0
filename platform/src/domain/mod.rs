//! Validated domain types. Everything that enters from the wire is parsed into one of these
//! first; a failure becomes a `google.rpc.BadRequest` field violation (see [`crate::error`]).
//! The types themselves live in the small `cpis-domain` crate; this adds the wire instants.

mod dates;

pub use cpis_domain::*;
pub use dates::{from_timestamp, to_timestamp};

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_proto::gateway;

    /// The domain crate carries the wire numbers itself; they must be the proto's.
    #[test]
    fn every_vocabulary_number_is_the_protos() {
        for v in FlagType::ALL {
            assert_eq!(
                gateway::FlagType::try_from(v.number())
                    .unwrap()
                    .as_str_name(),
                v.wire_name()
            );
        }
        for v in SettingType::ALL {
            assert_eq!(
                gateway::SettingType::try_from(v.number())
                    .unwrap()
                    .as_str_name(),
                v.wire_name()
            );
        }
        for v in AccessKind::ALL {
            assert_eq!(
                gateway::AccessKind::try_from(v.number())
                    .unwrap()
                    .as_str_name(),
                v.wire_name()
            );
        }
        for v in OrganisationKind::ALL {
            assert_eq!(
                gateway::OrganisationKind::try_from(v.number())
                    .unwrap()
                    .as_str_name(),
                v.wire_name()
            );
        }
        assert_eq!(
            gateway::SettingType::try_from(17).ok(),
            None,
            "a setting type was added to the proto only"
        );
        assert_eq!(
            gateway::FlagType::try_from(4).ok(),
            None,
            "a flag type was added to the proto only"
        );
    }
}
