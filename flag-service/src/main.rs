//! The `flag-service` binary: serves, or with `migrate` applies its migrations and exits.

fn main() -> std::process::ExitCode {
    platform::runtime::main::<flag_service::FlagService>()
}
