//! The operator's subcommands that act on the database rather than serve: each is one SQL
//! statement on the tables, one a user could type in psql, so the tables stay the API and
//! the command line is only a shorthand for them. `main.rs` parses the command line and
//! prints; what each command does is here. Beside them: `demo` (the proxy, three backends
//! and their rows, to try the product in one command) and `healthcheck` (`GET /readyz` as
//! an exit status, for containers).

pub mod demo;
pub mod healthcheck;
pub mod workers;
