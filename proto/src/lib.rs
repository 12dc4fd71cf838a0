//! The cpis gRPC contracts, generated from the `.proto` files beside this crate.
//!
//! `cpis.gateway.v1` is the public API integrators generate clients from (names fixed by
//! API.md); `cpis.flag.v1`, `cpis.attendance.v1` and `cpis.access.v1` are the internal APIs
//! the gateway calls. The encoded descriptor set feeds server reflection.

#![allow(clippy::all, missing_docs)]

pub mod cpis {
    pub mod gateway {
        pub mod v1 {
            tonic::include_proto!("cpis.gateway.v1");
        }
    }
    pub mod flag {
        pub mod v1 {
            tonic::include_proto!("cpis.flag.v1");
        }
    }
    pub mod attendance {
        pub mod v1 {
            tonic::include_proto!("cpis.attendance.v1");
        }
    }
    pub mod access {
        pub mod v1 {
            tonic::include_proto!("cpis.access.v1");
        }
    }
}

pub use cpis::access::v1 as access;
pub use cpis::attendance::v1 as attendance;
pub use cpis::flag::v1 as flag;
pub use cpis::gateway::v1 as gateway;

/// Every cpis file descriptor, encoded: what server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cpis_descriptor");

/// Fully qualified names of the public services, as reflection lists them.
pub mod service_names {
    pub const CHILD_PROTECTION: &str = "cpis.gateway.v1.ChildProtection";
    pub const LOCAL_AUTHORITY: &str = "cpis.gateway.v1.LocalAuthority";
    pub const AUDIT: &str = "cpis.gateway.v1.Audit";
    pub const ADMINISTRATION: &str = "cpis.gateway.v1.Administration";
    pub const FLAG_REGISTRY: &str = "cpis.flag.v1.FlagRegistry";
    pub const ATTENDANCE_LOG: &str = "cpis.attendance.v1.AttendanceLog";
    pub const ACCESS_CONTROL: &str = "cpis.access.v1.AccessControl";
}
