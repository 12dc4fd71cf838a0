//! The `gateway` binary.

fn main() -> std::process::ExitCode {
    platform::runtime::main::<gateway::Gateway>()
}
