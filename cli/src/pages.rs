//! Paginated lists (AIP-158): follow next_page_token to the end (`--all`) or up to a limit.

use crate::failure::CliResult;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct PageArgs {
    /// Items per call (the server takes at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: i32,
    /// Follow every page to the end.
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// Stop after this many items.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// The items, and whether more were left on the server.
pub async fn collect<T>(
    args: &PageArgs,
    mut fetch: impl AsyncFnMut(String) -> CliResult<(Vec<T>, String)>,
) -> CliResult<(Vec<T>, bool)> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if !args.all && items.len() >= args.limit {
            let more = items.len() > args.limit || !next.is_empty();
            items.truncate(args.limit);
            return Ok((items, more));
        }
        if next.is_empty() {
            return Ok((items, false));
        }
        token = next;
    }
}

/// Tells the reader on stderr (never in the data on stdout) that the list was cut.
pub fn note_more(more: bool) {
    if more {
        eprintln!("(more on the server: raise --limit or pass --all)");
    }
}
