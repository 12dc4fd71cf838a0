//! The `attendance-service` binary: serves, or with `migrate` applies its migrations and exits.

fn main() -> std::process::ExitCode {
    platform::runtime::main::<attendance_service::AttendanceService>()
}
