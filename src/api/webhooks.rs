//! The gRPC surface of outbound webhooks: `events.v1.WebhookService`, a thin adapter over
//! [`Webhooks`] (which validates, authorises and acts). Every RPC needs the `admin` scope.

use tonic::{Request, Response, Status};

use crate::api::principal;
use crate::delivery::endpoints::Webhooks;
use crate::proto::webhook_service_server::WebhookService;
use crate::proto::{
    CreateEndpointRequest, DeleteEndpointRequest, DeleteEndpointResponse, Delivery, Endpoint,
    GetEndpointRequest, ListDeliveriesRequest, ListDeliveriesResponse, ListEndpointsRequest,
    ListEndpointsResponse, ReplayEndpointRequest, RetryDeliveryRequest,
    RotateEndpointSecretRequest, UpdateEndpointRequest,
};

/// The WebhookService implementation.
#[derive(Clone)]
pub struct WebhooksApi {
    webhooks: Webhooks,
}

impl WebhooksApi {
    /// Builds the service.
    pub fn new(webhooks: Webhooks) -> Self {
        WebhooksApi { webhooks }
    }
}

#[tonic::async_trait]
impl WebhookService for WebhooksApi {
    async fn create_endpoint(
        &self,
        request: Request<CreateEndpointRequest>,
    ) -> Result<Response<Endpoint>, Status> {
        let caller = principal(&request)?;
        Ok(Response::new(self.webhooks.create(&caller, request.into_inner()).await?))
    }

    async fn get_endpoint(
        &self,
        request: Request<GetEndpointRequest>,
    ) -> Result<Response<Endpoint>, Status> {
        let caller = principal(&request)?;
        Ok(Response::new(self.webhooks.get(&caller, &request.into_inner().id).await?))
    }

    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        let caller = principal(&request)?;
        Ok(Response::new(ListEndpointsResponse { endpoints: self.webhooks.list(&caller).await? }))
    }

    async fn update_endpoint(
        &self,
        request: Request<UpdateEndpointRequest>,
    ) -> Result<Response<Endpoint>, Status> {
        let caller = principal(&request)?;
        Ok(Response::new(self.webhooks.update(&caller, request.into_inner()).await?))
    }

    async fn delete_endpoint(
        &self,
        request: Request<DeleteEndpointRequest>,
    ) -> Result<Response<DeleteEndpointResponse>, Status> {
        let caller = principal(&request)?;
        self.webhooks.delete(&caller, &request.into_inner().id).await?;
        Ok(Response::new(DeleteEndpointResponse {}))
    }

    async fn rotate_endpoint_secret(
        &self,
        request: Request<RotateEndpointSecretRequest>,
    ) -> Result<Response<Endpoint>, Status> {
        let caller = principal(&request)?;
        let RotateEndpointSecretRequest { id, secret } = request.into_inner();
        Ok(Response::new(self.webhooks.rotate(&caller, &id, &secret).await?))
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let caller = principal(&request)?;
        Ok(Response::new(self.webhooks.list_deliveries(&caller, request.into_inner()).await?))
    }

    async fn retry_delivery(
        &self,
        request: Request<RetryDeliveryRequest>,
    ) -> Result<Response<Delivery>, Status> {
        let caller = principal(&request)?;
        Ok(Response::new(self.webhooks.retry(&caller, &request.into_inner().id).await?))
    }

    async fn replay_endpoint(
        &self,
        request: Request<ReplayEndpointRequest>,
    ) -> Result<Response<Endpoint>, Status> {
        let caller = principal(&request)?;
        Ok(Response::new(self.webhooks.replay(&caller, request.into_inner()).await?))
    }
}
