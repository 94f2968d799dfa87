//! `eventsd publish`: one PublishEvent call from flags, printing the stored event as one JSON
//! object (the `event_to_json` shape).
//!
//! `data` comes from `--data`, `--data-file` (`-` for stdin) or stdin when neither is given.
//! It must be a JSON object, and it is converted exactly as the HTTP paths convert it
//! (`object_to_struct`): an integer beyond 2^53, which a double cannot hold, is refused with
//! the path of the field rather than rounded. Nothing is sent until the data converts.

use std::io::{IsTerminal, Read};

use prost_types::Struct;
use serde_json::Value as Json;

use super::{api_key, closed_output_is_ok, connect, print_json, ClientError};
use crate::config::PublishArgs;
use crate::event::json::{event_to_json, object_to_struct};
use crate::proto::PublishEventRequest;

/// Runs `eventsd publish`.
pub async fn publish(args: PublishArgs) -> Result<(), ClientError> {
    let data = read_data(&args)?;
    let request = PublishEventRequest {
        id: args.id.unwrap_or_default(),
        r#type: args.event_type,
        data: Some(data),
        created: args.created,
        livemode: args.livemode,
        api_version: args.api_version.unwrap_or_default(),
        source: args.source.unwrap_or_default(),
    };
    let mut client = connect(&args.connect.addr, api_key()?.as_deref()).await?;
    let event = client.publish_event(request).await?.into_inner();
    closed_output_is_ok(print_json(&event_to_json(&event)))
}

/// The data from whichever input the flags name.
fn read_data(args: &PublishArgs) -> Result<Struct, ClientError> {
    match (&args.data, &args.data_file) {
        (Some(text), _) => parse_data("--data", text),
        (None, Some(path)) if path.as_os_str() == "-" => parse_data("--data-file", &read_stdin()?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ClientError::input("--data-file", format!("cannot read {}: {e}", path.display()))
            })?;
            parse_data("--data-file", &text)
        }
        (None, None) => parse_data("--data (read from stdin)", &read_stdin()?),
    }
}

fn read_stdin() -> Result<String, ClientError> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("eventsd publish: reading the data (a JSON object) from stdin; end with ctrl-d");
    }
    let mut text = String::new();
    stdin
        .read_to_string(&mut text)
        .map_err(|e| ClientError::input("--data (read from stdin)", format!("cannot read: {e}")))?;
    Ok(text)
}

/// Parses `data` as a JSON object and converts it exactly; errors name `flag`.
fn parse_data(flag: &str, text: &str) -> Result<Struct, ClientError> {
    let json: Json = serde_json::from_str(text)
        .map_err(|e| ClientError::input(flag, format!("is not valid JSON ({e})")))?;
    let Json::Object(map) = json else {
        return Err(ClientError::input(
            flag,
            format!("must be a JSON object such as {{\"amount\": 100}}, not {}", kind(&json)),
        ));
    };
    object_to_struct(&map)
        .map_err(|e| ClientError::input(flag, format!("{}: {}", e.path("data"), e.reason)))
}

fn kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_must_be_a_json_object_and_errors_name_the_flag() {
        assert!(parse_data("--data", r#"{"amount": 100, "nested": {"x": [1, 2.5]}}"#).is_ok());
        for (text, expected) in [
            ("[1, 2]", "--data: must be a JSON object such as {\"amount\": 100}, not an array"),
            ("\"x\"", "--data: must be a JSON object such as {\"amount\": 100}, not a string"),
        ] {
            assert_eq!(parse_data("--data", text).unwrap_err().to_string(), expected);
        }
        let err = parse_data("--data", "{oops").unwrap_err().to_string();
        assert!(err.starts_with("--data: is not valid JSON"), "{err}");
    }

    #[test]
    fn integers_beyond_2_pow_53_are_refused_with_their_path() {
        let err = parse_data("--data", r#"{"card": {"number": 9007199254740993}}"#).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("--data: data.card.number: integer 9007199254740993"), "{text}");
        assert!(parse_data("--data", r#"{"n": 9007199254740992}"#).is_ok());
    }
}
