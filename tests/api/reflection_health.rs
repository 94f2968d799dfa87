//! The standard services beside EventService: gRPC health, and server reflection v1 and
//! v1alpha with the proto comments included (what `grpcurl describe` shows).

use prost::Message;
use prost_types::FileDescriptorProto;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::spawn_app;
use crate::support::{channel, HANG_GUARD};

const SERVICE: &str = "events.v1.EventService";

/// Asserts that the encoded descriptors hold `events/v1/events.proto` with the comment on
/// `Event`.
fn assert_event_descriptor_with_comments(files: &[Vec<u8>]) {
    let files: Vec<FileDescriptorProto> = files
        .iter()
        .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor"))
        .collect();
    let file = files
        .iter()
        .find(|f| f.message_type.iter().any(|m| m.name() == "Event"))
        .unwrap_or_else(|| {
            panic!(
                "no file defines Event: {:?}",
                files.iter().map(|f| f.name()).collect::<Vec<_>>()
            )
        });
    assert_eq!(file.package(), "events.v1");
    let info =
        file.source_code_info.as_ref().expect("source info is present, so comments reach clients");
    assert!(
        info.location.iter().any(|l| l.leading_comments().contains("Event is one stored event")),
        "the comment on Event is missing"
    );
}

#[tokio::test]
async fn health_answers_serving_for_the_server_and_for_the_event_service() {
    // Arrange
    let app = spawn_app().await;
    let mut health = HealthClient::new(channel(app.addr).await);

    for service in ["", SERVICE] {
        // Act
        let response = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .expect("health check")
            .into_inner();

        // Assert
        assert_eq!(response.status(), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_v1_lists_the_event_service_and_serves_its_commented_descriptor() {
    // Arrange
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(channel(app.addr).await);
    let requests = vec![
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("events.v1.Event".into())),
        },
    ];

    // Act
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection call")
        .into_inner();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = tokio::time::timeout(HANG_GUARD, responses.message())
            .await
            .expect("hang guard")
            .expect("reflection response")
            .expect("a response per request");
        answers.push(response.message_response.expect("message response set"));
    }
    let symbol = answers.pop().unwrap();
    let listed = answers.pop().unwrap();

    // Assert
    let MessageResponse::ListServicesResponse(listed) = listed else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&SERVICE), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let MessageResponse::FileDescriptorResponse(files) = symbol else {
        panic!("expected file descriptors, got {symbol:?}");
    };
    assert_event_descriptor_with_comments(&files.file_descriptor_proto);
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_event_service_and_serves_its_commented_descriptor() {
    // Arrange
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(channel(app.addr).await);
    let requests = vec![
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("events.v1.Event".into())),
        },
    ];

    // Act
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection call")
        .into_inner();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = tokio::time::timeout(HANG_GUARD, responses.message())
            .await
            .expect("hang guard")
            .expect("reflection response")
            .expect("a response per request");
        answers.push(response.message_response.expect("message response set"));
    }
    let symbol = answers.pop().unwrap();
    let listed = answers.pop().unwrap();

    // Assert
    let MessageResponse::ListServicesResponse(listed) = listed else {
        panic!("expected a service list, got {listed:?}");
    };
    let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&SERVICE), "{names:?}");
    let MessageResponse::FileDescriptorResponse(files) = symbol else {
        panic!("expected file descriptors, got {symbol:?}");
    };
    assert_event_descriptor_with_comments(&files.file_descriptor_proto);
}
