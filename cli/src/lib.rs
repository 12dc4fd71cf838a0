//! The `cpis` command line: `cpis dev` runs the whole system in one process on its embedded
//! default; `cpis token` mints development tokens; the other subcommands call a gateway.

pub mod dev;
pub mod devkeys;
pub mod token;
