//! `eventsd endpoints …` and `eventsd deliveries …`: WebhookService from the terminal.
//!
//! Every command prints JSON on stdout in the proto3 JSON form the HTTP routes use
//! (`views::endpoints`): one object for a single endpoint or delivery, one line per item for
//! the listings (`deliveries list` follows every page). A secret of the caller's own is read
//! from `EVENTSD_ENDPOINT_SECRET`, never from a flag, so it stays out of process listings.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{api_key, closed_output_is_ok, connect_channel, print_json, BearerAuth, ClientError};
use crate::config::{ConnectArgs, DeliveriesCommand, EndpointFormatArg, EndpointsCommand};
use crate::proto::replay_endpoint_request::Start;
use crate::proto::webhook_service_client::WebhookServiceClient;
use crate::proto::{
    CreateEndpointRequest, DeleteEndpointRequest, DeliveryStatus, Endpoint, EndpointFormat,
    GetEndpointRequest, ListDeliveriesRequest, ListEndpointsRequest, ReplayEndpointRequest,
    RetryDeliveryRequest, RotateEndpointSecretRequest, UpdateEndpointRequest,
};
use crate::views::endpoints::{delivery_json, endpoint_json};

/// The environment variable holding a secret of the caller's own.
pub const SECRET_ENV: &str = "EVENTSD_ENDPOINT_SECRET";

type Webhooks = WebhookServiceClient<InterceptedService<Channel, BearerAuth>>;

async fn client(connect: &ConnectArgs) -> Result<Webhooks, ClientError> {
    let (channel, auth) = connect_channel(&connect.addr, api_key()?.as_deref()).await?;
    Ok(WebhookServiceClient::with_interceptor(channel, auth))
}

fn secret() -> Result<String, ClientError> {
    match std::env::var(SECRET_ENV) {
        Ok(secret) => Ok(secret),
        Err(std::env::VarError::NotPresent) => Ok(String::new()),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ClientError::input(SECRET_ENV, "is not valid UTF-8"))
        }
    }
}

fn format(arg: Option<EndpointFormatArg>) -> i32 {
    match arg {
        None => EndpointFormat::Unspecified as i32,
        Some(EndpointFormatArg::EventJson) => EndpointFormat::EventJson as i32,
        Some(EndpointFormatArg::CloudeventJson) => EndpointFormat::CloudeventJson as i32,
        Some(EndpointFormatArg::Omise) => EndpointFormat::Omise as i32,
    }
}

fn print_endpoint(endpoint: &Endpoint) -> Result<(), ClientError> {
    closed_output_is_ok(print_json(&endpoint_json(endpoint)))
}

/// Runs `eventsd endpoints …`.
pub async fn endpoints(command: EndpointsCommand) -> Result<(), ClientError> {
    match command {
        EndpointsCommand::Create(args) => {
            let mut client = client(&args.connect).await?;
            let request = CreateEndpointRequest {
                url: args.url,
                types: args.types,
                livemode: args.livemode,
                description: args.description,
                secret: secret()?,
                format: format(args.format),
                max_in_flight: args.max_in_flight.unwrap_or(0),
            };
            print_endpoint(&client.create_endpoint(request).await?.into_inner())
        }
        EndpointsCommand::List(args) => {
            let mut client = client(&args.connect).await?;
            let listed = client.list_endpoints(ListEndpointsRequest {}).await?.into_inner();
            for endpoint in &listed.endpoints {
                print_endpoint(endpoint)?;
            }
            Ok(())
        }
        EndpointsCommand::Get(args) => {
            let mut client = client(&args.connect).await?;
            print_endpoint(
                &client.get_endpoint(GetEndpointRequest { id: args.id }).await?.into_inner(),
            )
        }
        EndpointsCommand::Update(args) => {
            let mut client = client(&args.connect).await?;
            let mut paths = Vec::new();
            let mut endpoint = Endpoint { id: args.id, ..Endpoint::default() };
            if let Some(url) = args.url {
                endpoint.url = url;
                paths.push("url");
            }
            if let Some(types) = args.types {
                endpoint.types = types;
                paths.push("types");
            }
            if let Some(livemode) = args.livemode {
                endpoint.livemode = Some(livemode);
                paths.push("livemode");
            }
            if let Some(description) = args.description {
                endpoint.description = description;
                paths.push("description");
            }
            if let Some(disabled) = args.disabled {
                endpoint.disabled = disabled;
                paths.push("disabled");
            }
            if args.format.is_some() {
                endpoint.format = format(args.format);
                paths.push("format");
            }
            if let Some(max) = args.max_in_flight {
                endpoint.max_in_flight = max;
                paths.push("max_in_flight");
            }
            if paths.is_empty() {
                return Err(ClientError::input(
                    "update",
                    "give at least one of --url, --type, --livemode, --description, --disabled, --format, --max-in-flight",
                ));
            }
            let update_mask =
                prost_types::FieldMask { paths: paths.into_iter().map(str::to_owned).collect() };
            let request =
                UpdateEndpointRequest { endpoint: Some(endpoint), update_mask: Some(update_mask) };
            print_endpoint(&client.update_endpoint(request).await?.into_inner())
        }
        EndpointsCommand::Delete(args) => {
            let mut client = client(&args.connect).await?;
            client.delete_endpoint(DeleteEndpointRequest { id: args.id.clone() }).await?;
            closed_output_is_ok(print_json(&serde_json::json!({ "id": args.id, "deleted": true })))
        }
        EndpointsCommand::Rotate(args) => {
            let mut client = client(&args.connect).await?;
            let request = RotateEndpointSecretRequest { id: args.id, secret: secret()? };
            print_endpoint(&client.rotate_endpoint_secret(request).await?.into_inner())
        }
        EndpointsCommand::Replay(args) => {
            let mut client = client(&args.connect).await?;
            let start = match (args.after_sequence, args.from_created) {
                (Some(after), _) => Start::AfterSequence(after),
                (None, Some(created)) => Start::FromCreated(created),
                (None, None) => {
                    return Err(ClientError::input(
                        "--after-sequence",
                        "or --from-created is required",
                    ))
                }
            };
            let request = ReplayEndpointRequest { endpoint_id: args.id, start: Some(start) };
            print_endpoint(&client.replay_endpoint(request).await?.into_inner())
        }
    }
}

/// Runs `eventsd deliveries …`.
pub async fn deliveries(command: DeliveriesCommand) -> Result<(), ClientError> {
    match command {
        DeliveriesCommand::List(args) => {
            let mut client = client(&args.connect).await?;
            let status = match args.status.as_deref() {
                Some("pending") => DeliveryStatus::Pending,
                Some("succeeded") => DeliveryStatus::Succeeded,
                Some("failed") => DeliveryStatus::Failed,
                _ => DeliveryStatus::Unspecified,
            };
            let mut request = ListDeliveriesRequest {
                endpoint_id: args.endpoint,
                event_id: args.event_id.unwrap_or_default(),
                status: status as i32,
                limit: 1000,
                page_token: String::new(),
            };
            loop {
                let page = client.list_deliveries(request.clone()).await?.into_inner();
                for delivery in &page.deliveries {
                    closed_output_is_ok(print_json(&delivery_json(delivery)))?;
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                request.page_token = page.next_page_token;
            }
        }
        DeliveriesCommand::Retry(args) => {
            let mut client = client(&args.connect).await?;
            let delivery =
                client.retry_delivery(RetryDeliveryRequest { id: args.id }).await?.into_inner();
            closed_output_is_ok(print_json(&delivery_json(&delivery)))
        }
    }
}
