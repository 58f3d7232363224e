//! The assistant's job: answers the queued questions of one bot.
//!
//! Loop: load the due requests (oldest first) → start a model call for each whose chat has
//! none in flight, at most [`MAX_CALLS`] at once → sleep until a call ends, an update queues
//! a question (`UpdateCx::wake_job`), a retry falls due, a reload, or stop. A call runs
//! outside any transaction with the typing indicator on; its result is committed in one short
//! transaction: the reply into the history (role `assistant`) and the outbox, and the request
//! marked done — or, after [`MAX_ATTEMPTS`] retryable failures or one fatal failure, the
//! failure text into the outbox. A retryable failure waits the provider's `Retry-After`, else
//! [`RETRY_START`] doubling. On stop, calls in flight are dropped: their requests stay pending
//! and the next run asks again (a question is answered once; the model may be asked twice).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use secrecy::SecretString;
use serde_json::json;
use teloxide::types::ChatId;
use tokio::time::Instant;

use super::client::{self, CallError};
use super::store::{self, PendingRequest};
use super::{AssistantSpec, DEFAULT_FAILURE, conversation, spec};
use crate::content::snapshot::Snapshot;
use crate::content::texts::{MAX_TEXT_LEN, Vars, render};
use crate::modules::history::store::{self as history, Role};
use crate::modules::{JobCx, ModuleError, Wake};
use crate::telegram::{Lane, Messenger, Request};

/// Model calls of one bot in flight at once (each for a different chat).
pub const MAX_CALLS: usize = 4;
/// Attempts at a question whose calls keep failing in a retryable way.
pub const MAX_ATTEMPTS: i32 = 3;
/// First wait after a retryable failure without `Retry-After` (doubles).
pub const RETRY_START: Duration = Duration::from_secs(1);
/// How often the typing indicator is renewed while the model works (Telegram shows it ~5 s).
const TYPING_EVERY: Duration = Duration::from_secs(4);
/// Pause before looking again after the bot database failed.
const DB_RETRY: Duration = Duration::from_secs(5);

type Call = (PendingRequest, Result<String, CallError>);

/// Runs until the job's stop token is cancelled.
pub async fn run(mut cx: JobCx) -> Result<(), ModuleError> {
    // One client for every bot's assistant (a client holds its TLS roots and pool; one per
    // bot was that much per bot).
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let http = HTTP.get_or_init(reqwest::Client::new).clone();
    let mut calls = FuturesUnordered::new();
    let mut busy: HashSet<i64> = HashSet::new();
    let mut flying: HashSet<i64> = HashSet::new();
    loop {
        let snapshot = cx.snapshot.borrow().clone();
        // The heavy steps are boxed: the job's idle state holds only its wait.
        let started = Box::pin(start_calls(&cx, &snapshot, &http, &mut busy, &mut flying)).await;
        let deadline = match started {
            Ok((started, next)) => {
                calls.extend(started);
                next.map(|d| Instant::now() + d)
            }
            Err(e) => {
                tracing::warn!(bot_id = cx.bot_id, error = %crate::mask::error_line(&e), "assistant: cannot read the queued questions; trying again");
                Some(Instant::now() + DB_RETRY)
            }
        };
        let idle = calls.is_empty();
        tokio::select! {
            Some((request, result)) = calls.next(), if !calls.is_empty() => {
                busy.remove(&request.chat_id);
                flying.remove(&request.id);
                if let Err(e) = Box::pin(finish(&cx, &snapshot, &request, result)).await {
                    // The request stays pending and is asked again.
                    tracing::warn!(bot_id = cx.bot_id, request = request.id, error = %crate::mask::error_line(&e), "assistant: cannot record an answer; asking again later");
                }
            }
            wake = cx.woken_as(deadline, idle) => {
                if wake == Wake::Stop {
                    return Ok(());
                }
            }
        }
    }
}

/// Starts a call for each due request whose chat is free; returns the calls and how long
/// until the next request falls due (None: none is waiting, or all wait for a call to end).
async fn start_calls(
    cx: &JobCx,
    snapshot: &Arc<Snapshot>,
    http: &reqwest::Client,
    busy: &mut HashSet<i64>,
    flying: &mut HashSet<i64>,
) -> Result<
    (
        Vec<futures::future::BoxFuture<'static, Call>>,
        Option<Duration>,
    ),
    ModuleError,
> {
    let Some(spec) = spec(snapshot) else {
        return Ok((Vec::new(), None));
    };
    let mut conn = cx.db.acquire().await?;
    let due = store::due_requests(&mut conn, 64).await?;
    let mut started: Vec<futures::future::BoxFuture<'static, Call>> = Vec::new();
    for request in due {
        if flying.contains(&request.id)
            || busy.contains(&request.chat_id)
            || busy.len() >= MAX_CALLS
        {
            continue;
        }
        let history = store::context(
            &mut conn,
            request.chat_id,
            request.until_message,
            i64::from(spec.max_context_messages),
        )
        .await?;
        let system = spec.system_prompt.as_deref().and_then(|key| {
            snapshot.render(key, request.language_code.as_deref(), &vars(snapshot))
        });
        let messages = conversation(
            system,
            &history,
            spec.max_context_messages as usize,
            spec.max_context_chars as usize,
        );
        let body = json!({
            "model": spec.model,
            "messages": messages,
            "max_tokens": spec.max_reply_tokens,
        });
        busy.insert(request.chat_id);
        flying.insert(request.id);
        match key(snapshot, spec) {
            Ok(key) => started.push(Box::pin(ask(
                cx.telegram.clone(),
                http.clone(),
                spec.base_url.clone(),
                key,
                body,
                Duration::from_secs(u64::from(spec.timeout_secs)),
                request,
            ))),
            Err(e) => started.push(Box::pin(async move { (request, Err(e)) })),
        }
    }
    let next = store::next_due_in(&mut conn)
        .await?
        .map(|s| Duration::from_secs_f64(s.max(0.0)));
    Ok((started, next))
}

/// The API key for a call: the bot's secret `api_key_secret` (None: no key is configured);
/// an error naming the secret (never its value) when the bot has no such secret.
fn key(snapshot: &Snapshot, spec: &AssistantSpec) -> Result<Option<SecretString>, CallError> {
    let Some(name) = spec.api_key_secret.as_deref() else {
        return Ok(None);
    };
    match snapshot.secret(name) {
        Some(key) => Ok(Some(key.clone())),
        None => Err(CallError::Fatal(format!(
            "the bot has no secret `{name}` (set it with `botvisor secret set <bot id> {name} --stdin`)"
        ))),
    }
}

/// Placeholders of texts the job renders: it knows no user, only the bot's panel name.
fn vars(snapshot: &Snapshot) -> Vars<'_> {
    Vars {
        first_name: "",
        username: "",
        bot_name: "",
        panel_name: &snapshot.panel_name,
    }
}

/// One model call with the typing indicator on in the request's chat.
async fn ask(
    telegram: Messenger,
    http: reqwest::Client,
    base_url: String,
    key: Option<SecretString>,
    body: serde_json::Value,
    timeout: Duration,
    request: PendingRequest,
) -> Call {
    let chat = ChatId(request.chat_id);
    let call = client::complete(&http, &base_url, key.as_ref(), &body, timeout);
    tokio::pin!(call);
    loop {
        let typing = async {
            telegram.typing(chat).await;
            tokio::time::sleep(TYPING_EVERY).await;
        };
        tokio::select! {
            result = &mut call => return (request, result),
            () = typing => {}
        }
    }
}

/// Commits what a call came to: the answer, a retry, or the failure text.
async fn finish(
    cx: &JobCx,
    snapshot: &Snapshot,
    request: &PendingRequest,
    result: Result<String, CallError>,
) -> Result<(), ModuleError> {
    let chat = ChatId(request.chat_id);
    let mut conn = cx.db.acquire().await?;
    let (texts, outcome, error) = match result {
        Ok(answer) => (split(&answer, MAX_TEXT_LEN), "answered", None),
        Err(CallError::Retryable {
            reason,
            retry_after,
        }) if request.attempts + 1 < MAX_ATTEMPTS => {
            let wait = retry_after.unwrap_or(RETRY_START * 2u32.pow(request.attempts as u32));
            tracing::warn!(bot_id = cx.bot_id, request = request.id, error = %reason, retry_in = ?wait, "assistant: the model call failed; retrying");
            let ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            store::retry_later(&mut conn, request.id, ms, &reason).await?;
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(bot_id = cx.bot_id, request = request.id, error = %e, attempts = request.attempts + 1, "assistant: the model gave no answer; the user gets the failure text");
            let key = spec(snapshot).and_then(|s| s.failure_text.as_deref());
            let text = key
                .and_then(|k| snapshot.render(k, request.language_code.as_deref(), &vars(snapshot)))
                .unwrap_or_else(|| render(DEFAULT_FAILURE, &vars(snapshot)));
            (vec![text], "failed", Some(e.to_string()))
        }
    };
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if !store::finish_request(&mut tx, request.id, outcome, error.as_deref()).await? {
        // Finished already (by a run that overlapped this one): answer once.
        return Ok(());
    }
    let answered = outcome == "answered";
    if answered {
        let content = texts.join("");
        history::add_message(
            &mut tx,
            request.chat_id,
            request.user_id,
            Role::Assistant,
            &content,
        )
        .await?;
    }
    for text in texts {
        let message = Request::SendMessage {
            text,
            reply_markup: None,
            message_thread_id: None,
            reply_to_message_id: None,
            // The answer is in the history already; the failure text is recorded as the
            // bot's once delivered.
            in_history: answered,
        };
        cx.queue(&mut tx, Lane::Reply, chat, request.user_id, &message)
            .await?;
    }
    tx.commit().await?;
    cx.wake_sender();
    Ok(())
}

/// Cuts `text` into pieces of at most `max` UTF-16 units, at a line break or a space where
/// one is near the end of a piece.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while crate::content::texts::utf16_len(rest) > max {
        let mut units = 0;
        let mut cut = 0;
        for (i, c) in rest.char_indices() {
            units += c.len_utf16();
            if units > max {
                break;
            }
            cut = i + c.len_utf8();
        }
        let head = &rest[..cut];
        let soft = head
            .rfind('\n')
            .or_else(|| head.rfind(' '))
            .filter(|&i| i >= cut / 2)
            .map_or(cut, |i| i + 1);
        pieces.push(rest[..soft].to_owned());
        rest = &rest[soft..];
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(rest.to_owned());
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_answers_are_split_within_telegrams_limit() {
        assert_eq!(split("short", 10), ["short"]);
        assert_eq!(split("aaaa bbbb cccc", 10), ["aaaa bbbb ", "cccc"]);
        assert_eq!(split("abcdefghijkl", 5), ["abcde", "fghij", "kl"]);
        // Emoji count two units each.
        assert_eq!(split("😀😀😀", 4), ["😀😀", "😀"]);
        let long = "word ".repeat(2000);
        let pieces = split(&long, MAX_TEXT_LEN);
        assert!(
            pieces
                .iter()
                .all(|p| crate::content::texts::utf16_len(p) <= MAX_TEXT_LEN)
        );
        assert_eq!(pieces.concat(), long);
    }
}
