//! The reference of issue 12's CPU target: a stock teloxide multi-bot host with no database.
//!
//! Every token of a file gets a stock teloxide `Dispatcher` with its default long polling, one
//! shared HTTP client and a handler that answers each message with a fixed text — what a
//! multi-bot host without durability spends per update. `bench --daemon stock` spawns it from
//! next to itself and measures it the way it measures `botvisor serve`, so the two are
//! compared on the same machine (docs/performance.md, "The stock teloxide reference").
//!
//! ```text
//! stock_host <api-url> <tokens-file>   # one token per line; runs until killed
//! ```

use botvisor::tasks::Tasks;
use teloxide::prelude::*;
use tokio_util::sync::CancellationToken;

/// What every message is answered with.
const REPLY: &str = "Hello from a stock teloxide host";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(api), Some(file), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: stock_host <api-url> <tokens-file>");
        return std::process::ExitCode::from(2);
    };
    let api = match url::Url::parse(&api) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("stock_host: {api:?} is not a URL: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let tokens = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("stock_host: cannot read {file}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let client = match teloxide::net::default_reqwest_settings().build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stock_host: cannot build the HTTP client: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let spawner = Tasks::new(CancellationToken::new());
    let mut bots = Vec::new();
    for token in tokens.lines().map(str::trim).filter(|t| !t.is_empty()) {
        let bot = Bot::with_client(token, client.clone()).set_api_url(api.clone());
        let handler = Update::filter_message().endpoint(|bot: Bot, msg: Message| async move {
            bot.send_message(msg.chat.id, REPLY).await?;
            respond(())
        });
        bots.push(spawner.spawn("stock-dispatcher", async move {
            Dispatcher::builder(bot, handler)
                .default_handler(|_| async {})
                .build()
                .dispatch()
                .await;
        }));
    }
    if bots.is_empty() {
        eprintln!("stock_host: {file} holds no token");
        return std::process::ExitCode::from(2);
    }
    // A dispatcher only returns when it is shut down; the bench kills this process.
    futures::future::join_all(bots).await;
    std::process::ExitCode::SUCCESS
}
