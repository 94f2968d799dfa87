//! Client subcommands for people at a terminal. `tail` subscribes and prints each event as
//! one JSON line on stdout (notes go to stderr), and resumes by sequence after a dropped
//! connection or a server restart, so it never prints an event twice or skips one.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::Code;

use crate::config::TailArgs;
use crate::event::json::event_to_json;
use crate::proto::event_service_client::EventServiceClient;
use crate::proto::subscribe_events_request::Start;
use crate::proto::subscribe_events_response::Item;
use crate::proto::SubscribeEventsRequest;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs `eventsd tail` until interrupted; returns an error only for a request the server
/// rejects (a reconnect would fail the same way).
pub async fn tail(args: TailArgs) -> Result<(), tonic::Status> {
    let mut start = match (args.from_beginning, args.after) {
        (true, _) => Some(Start::FromBeginning(true)),
        (false, Some(seq)) => Some(Start::AfterSequence(seq)),
        (false, None) => None,
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        match follow(&args, start, &mut backoff).await {
            Ok(last) => {
                if let Some(seq) = last {
                    start = Some(Start::AfterSequence(seq));
                }
                eprintln!("eventsd tail: stream ended; reconnecting");
            }
            Err((last, status)) => {
                if let Some(seq) = last {
                    start = Some(Start::AfterSequence(seq));
                }
                if !matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ) {
                    return Err(status);
                }
                eprintln!("eventsd tail: {}; reconnecting in {backoff:?}", status.message());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Follows one connection; returns the last sequence it can resume after.
async fn follow(
    args: &TailArgs,
    start: Option<Start>,
    backoff: &mut Duration,
) -> Result<Option<u64>, (Option<u64>, tonic::Status)> {
    let mut last = match &start {
        Some(Start::AfterSequence(seq)) => Some(*seq),
        _ => None,
    };
    let channel = Channel::from_shared(args.addr.clone())
        .map_err(|e| (last, tonic::Status::invalid_argument(format!("--addr: {e}"))))?
        .connect()
        .await
        .map_err(|e| {
            (last, tonic::Status::unavailable(format!("cannot connect to {}: {e}", args.addr)))
        })?;
    let mut client = EventServiceClient::new(channel);
    let request =
        SubscribeEventsRequest { start, types: args.types.clone(), livemode: args.livemode };
    let mut stream = client.subscribe_events(request).await.map_err(|s| (last, s))?.into_inner();
    *backoff = Duration::from_millis(250);
    loop {
        let message = stream.message().await.map_err(|s| (last, s))?;
        let Some(message) = message else {
            return Ok(last);
        };
        match message.item {
            Some(Item::Event(event)) => {
                last = Some(event.sequence);
                println!("{}", event_to_json(&event));
            }
            Some(Item::CaughtUp(c)) => {
                last = Some(last.unwrap_or(0).max(c.sequence));
                eprintln!("eventsd tail: caught up at sequence {}; live", c.sequence);
            }
            Some(Item::Heartbeat(h)) => last = Some(last.unwrap_or(0).max(h.sequence)),
            None => {}
        }
    }
}
